//! Per-target manifest: the state a target was left in by the last run that
//! ended `ok` (its entries and their digest), so that a run does not have to
//! connect to and list the target to know what is there.
//!
//! - Nothing changed in the source (the scan has the manifest's digest):
//!   nothing to do, no connection at all.
//! - The source changed: the plan is made against the manifest's entries
//!   instead of a fresh listing, then applied over a connection.
//!
//! Safety rules (a manifest never hides a source change, and never causes a
//! delete that a listing would not):
//! - every run scans the source in full; only the target side is taken
//!   from the manifest;
//! - it is removed before a run changes the target and written (atomically)
//!   only after a run that ended `ok` with no error; an interrupted or failed
//!   run leaves none, so the next run lists;
//! - it is bound to everything that shapes the plan (target, source, mode,
//!   compare, delete, excludes, owner and time handling): any change voids
//!   it;
//! - it is trusted for `verify_interval` (default 1m) after the last full
//!   listing; then a listing repairs whatever changed on the target behind
//!   syncjob's back (`syncjob run --verify` forces one);
//! - its header and its entries are checksummed; a damaged or foreign file
//!   is ignored.

use crate::config::Job;
use crate::plan::{Entry, EntryKind, Scan};
use crate::target::Target;
use sha2::{Digest, Sha256};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 8] = b"SJMANIF3";

/// The settings of a target connection that shape plans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    pub mtime_nanos: bool,
    pub symlink_times: bool,
    pub preserve_owner: bool,
}

impl Caps {
    fn to_byte(self) -> u8 {
        self.mtime_nanos as u8 | (self.symlink_times as u8) << 1 | (self.preserve_owner as u8) << 2
    }
    fn from_byte(b: u8) -> Caps {
        Caps {
            mtime_nanos: b & 1 != 0,
            symlink_times: b & 2 != 0,
            preserve_owner: b & 4 != 0,
        }
    }
}

pub fn path_for(state_dir: &Path, job: &Job, target: &Target) -> PathBuf {
    let h = Sha256::digest(target.to_string().as_bytes());
    let hex: String = h[..8].iter().map(|b| format!("{b:02x}")).collect();
    state_dir
        .join("manifests")
        .join(&job.name)
        .join(format!("{hex}.bin"))
}

/// Everything about the job and target that shapes a plan.
fn fingerprint(job: &Job, target: &Target, caps: Caps) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut put = |b: &[u8]| {
        h.update((b.len() as u64).to_le_bytes());
        h.update(b);
    };
    put(env!("CARGO_PKG_VERSION").as_bytes());
    put(target.to_string().as_bytes());
    put(job.source.as_os_str().as_bytes());
    put(job.mode.as_str().as_bytes());
    put(format!("{:?}", job.compare).as_bytes());
    put(&[
        job.delete as u8,
        caps.mtime_nanos as u8,
        caps.symlink_times as u8,
        caps.preserve_owner as u8,
    ]);
    for e in &job.exclude {
        put(e.as_bytes());
    }
    h.finalize().into()
}

/// Seconds since the Unix epoch (when a target was listed).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the target holds after a run that ended ok, serialized: the
/// source's entries (special files excluded, times as the target keeps
/// them), in path order.
fn serialize(scan: &Scan, caps: Caps, sink: &mut dyn FnMut(&[u8])) {
    let mut b = Vec::with_capacity(64 << 10);
    for (p, e) in scan.entries.iter() {
        if e.kind == EntryKind::Special {
            continue;
        }
        let name = p.as_os_str().as_bytes();
        b.extend_from_slice(&(name.len() as u32).to_le_bytes());
        b.extend_from_slice(name);
        b.push(kind_byte(e.kind));
        b.extend_from_slice(&e.size.to_le_bytes());
        b.extend_from_slice(&e.mtime.to_le_bytes());
        let ns = if caps.mtime_nanos { e.mtime_ns } else { 0 };
        b.extend_from_slice(&ns.to_le_bytes());
        b.extend_from_slice(&e.mode.to_le_bytes());
        b.extend_from_slice(&e.uid.to_le_bytes());
        b.extend_from_slice(&e.gid.to_le_bytes());
        match &e.link {
            Some(l) => {
                let l = l.as_os_str().as_bytes();
                b.extend_from_slice(&(l.len() as u32).to_le_bytes());
                b.extend_from_slice(l);
            }
            None => b.extend_from_slice(&u32::MAX.to_le_bytes()),
        }
        if b.len() >= 60 << 10 {
            sink(&b);
            b.clear();
        }
    }
    sink(&b);
}

/// The digest of the state a target is left in (streamed: nothing held).
pub fn digest(scan: &Scan, caps: Caps) -> [u8; 32] {
    let mut h = Sha256::new();
    serialize(scan, caps, &mut |b| h.update(b));
    h.finalize().into()
}

fn kind_byte(k: EntryKind) -> u8 {
    match k {
        EntryKind::File => 0,
        EntryKind::Dir => 1,
        EntryKind::Symlink => 2,
        EntryKind::Special => 3,
    }
}

/// Write the manifest atomically (temporary file, fsync, rename): the
/// state the target is left in (the scan's entries), streamed to the file
/// (nothing the size of the tree is held). `listed_at`: when the target was
/// last listed in full.
pub fn save(
    path: &Path,
    job: &Job,
    target: &Target,
    caps: Caps,
    listed_at: u64,
    scan: &Scan,
) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut b = Vec::with_capacity(HEADER);
    b.extend_from_slice(MAGIC);
    b.push(caps.to_byte());
    b.extend_from_slice(&fingerprint(job, target, caps));
    b.extend_from_slice(&listed_at.to_le_bytes());
    // the entries' integrity is their digest in the header
    b.extend_from_slice(&digest(scan, caps));
    let sum = Sha256::digest(&b);
    b.extend_from_slice(&sum);
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let r = (|| {
        let mut f = io::BufWriter::with_capacity(256 << 10, std::fs::File::create(&tmp)?);
        f.write_all(&b)?;
        let mut err = Ok(());
        serialize(scan, caps, &mut |chunk| {
            if err.is_ok() {
                err = f.write_all(chunk);
            }
        });
        err?;
        let f = f.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r
}

/// Forget the target's state (before changing it, or after a failure).
pub fn remove(path: &Path) {
    let _ = std::fs::remove_file(path);
}

const HEADER: usize = 8 + 1 + 32 + 8 + 32 + 32;

/// A target's manifest: its header is checked on load; its entries are
/// read only when a plan needs them.
pub struct Manifest {
    pub digest: [u8; 32],
    pub caps: Caps,
    /// when the target was last listed in full
    pub listed_at: u64,
    path: PathBuf,
}

/// A manifest usable now: same fingerprint, intact header, target listed
/// less than `max_age` ago.
pub fn load(path: &Path, job: &Job, target: &Target, max_age: Duration) -> Option<Manifest> {
    use std::io::Read;
    let mut b = [0u8; HEADER];
    std::fs::File::open(path).ok()?.read_exact(&mut b).ok()?;
    let (body, sum) = b.split_at(HEADER - 32);
    if Sha256::digest(body).as_slice() != sum || &body[..8] != MAGIC {
        return None;
    }
    let caps = Caps::from_byte(body[8]);
    if body[9..41] != fingerprint(job, target, caps) {
        return None;
    }
    let listed_at = u64::from_le_bytes(body[41..49].try_into().ok()?);
    let now = unix_now();
    if listed_at > now + 60 || now.saturating_sub(listed_at) >= max_age.as_secs() {
        return None;
    }
    Some(Manifest {
        digest: body[49..81].try_into().ok()?,
        caps,
        listed_at,
        path: path.to_path_buf(),
    })
}

impl Manifest {
    fn reader(&self) -> Option<Rd<io::BufReader<std::fs::File>>> {
        use std::io::{Seek, SeekFrom};
        let mut f = std::fs::File::open(&self.path).ok()?;
        f.seek(SeekFrom::Start(HEADER as u64)).ok()?;
        Some(Rd {
            inner: io::BufReader::with_capacity(256 << 10, f),
            hash: Sha256::new(),
            buf: Vec::new(),
        })
    }

    /// The target's entries as of the manifest, in path order, read as
    /// they are consumed; None if the entries are damaged (they are checked
    /// against the header's digest first, in a stream too).
    pub fn entries(&self) -> Option<ManifestEntries> {
        let mut r = self.reader()?;
        while r.entry()?.is_some() {}
        if r.hash.finalize().as_slice() != self.digest {
            return None;
        }
        Some(ManifestEntries(self.reader()?))
    }
}

/// A manifest's entries, read one at a time (see [`Manifest::entries`]).
pub struct ManifestEntries(Rd<io::BufReader<std::fs::File>>);

impl Iterator for ManifestEntries {
    type Item = (PathBuf, Entry);
    fn next(&mut self) -> Option<(PathBuf, Entry)> {
        // (checked whole before: a read error here ends the entries)
        self.0.entry().flatten()
    }
}

/// Reads the entries, hashing every byte read.
struct Rd<R> {
    inner: R,
    hash: Sha256,
    buf: Vec<u8>,
}
impl<R: io::Read> Rd<R> {
    /// The next entry; `Some(None)` at the end, `None` if damaged.
    fn entry(&mut self) -> Option<Option<(PathBuf, Entry)>> {
        // an entry begins with its name's length; none: the end
        let Some(len) = self.u32_or_end()? else {
            return Some(None);
        };
        let name = PathBuf::from(std::ffi::OsStr::from_bytes(self.take(len as usize)?));
        let kind = match self.take(1)?[0] {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            2 => EntryKind::Symlink,
            _ => return None,
        };
        let size = self.u64()?;
        let mtime = self.u64()? as i64;
        let mtime_ns = self.u32()?;
        let mode = self.u32()?;
        let uid = self.u32()?;
        let gid = self.u32()?;
        let ll = self.u32()?;
        let link = if ll == u32::MAX {
            None
        } else {
            Some(Box::new(PathBuf::from(std::ffi::OsStr::from_bytes(
                self.take(ll as usize)?,
            ))))
        };
        Some(Some((
            name,
            Entry {
                kind,
                size,
                mtime,
                mtime_ns,
                mode,
                uid,
                gid,
                link,
            },
        )))
    }
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        // a corrupt length could ask for gigabytes: read in steps
        self.buf.clear();
        let mut left = n;
        while left > 0 {
            let step = left.min(64 << 10);
            let at = self.buf.len();
            self.buf.resize(at + step, 0);
            self.inner.read_exact(&mut self.buf[at..]).ok()?;
            left -= step;
        }
        self.hash.update(&self.buf);
        Some(&self.buf)
    }
    fn u32_or_end(&mut self) -> Option<Option<u32>> {
        let mut b = [0u8; 4];
        let mut got = 0;
        while got < 4 {
            match self.inner.read(&mut b[got..]) {
                Ok(0) if got == 0 => return Some(None),
                Ok(0) => return None,
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
        self.hash.update(b);
        Some(Some(u32::from_le_bytes(b)))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(extra: &str) -> (tempfile::TempDir, Job, Scan) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/f"), b"data").unwrap();
        std::os::unix::fs::symlink("d/f", src.join("l")).unwrap();
        let text = format!(
            "jobs:\n  j:\n    source: {}\n    remote: /srv/t\n{extra}",
            src.display()
        );
        let job = crate::config::parse(&dir.path().join("jobs.yaml"), text.as_bytes())
            .unwrap()
            .jobs
            .remove(0);
        let scan = crate::plan::scan_source(&src, &job.filter).unwrap();
        (dir, job, scan)
    }

    const CAPS: Caps = Caps {
        mtime_nanos: true,
        symlink_times: false,
        preserve_owner: false,
    };
    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_saved_manifest_loads_with_the_scan_digest_and_entries() {
        let (dir, job, scan) = setup("");
        let target = &job.targets[0];
        let path = path_for(dir.path(), &job, target);
        save(&path, &job, target, CAPS, unix_now(), &scan).unwrap();
        let m = load(&path, &job, target, HOUR).expect("loads");
        assert_eq!(m.digest, digest(&scan, CAPS));
        assert_eq!(m.caps, CAPS);
        let back: Vec<(PathBuf, Entry)> = m.entries().unwrap().collect();
        let want: Vec<(PathBuf, Entry)> = scan
            .entries
            .iter()
            .map(|(p, e)| (p.to_path_buf(), e.clone()))
            .collect();
        assert_eq!(back.len(), want.len());
        for ((bp, be), (wp, we)) in back.iter().zip(&want) {
            assert_eq!(
                (bp, be.kind, be.size, be.mtime),
                (wp, we.kind, we.size, we.mtime)
            );
        }
        // a change in the source changes the digest
        std::fs::write(dir.path().join("src/d/f"), b"other data").unwrap();
        let scan2 = crate::plan::scan_source(&job.source, &job.filter).unwrap();
        assert_ne!(digest(&scan2, CAPS), m.digest);
    }

    #[test]
    fn a_manifest_is_void_when_settings_change_it_is_old_or_damaged() {
        let (dir, job, scan) = setup("");
        let target = &job.targets[0];
        let path = path_for(dir.path(), &job, target);
        save(&path, &job, target, CAPS, unix_now(), &scan).unwrap();
        // another setting that shapes the plan
        let (_d2, mut other, _) = setup("    delete: true\n");
        other.source = job.source.clone();
        assert!(load(&path, &other, target, HOUR).is_none());
        // listed too long ago
        save(&path, &job, target, CAPS, unix_now() - 7200, &scan).unwrap();
        assert!(load(&path, &job, target, HOUR).is_none());
        // one byte of the header flipped
        save(&path, &job, target, CAPS, unix_now(), &scan).unwrap();
        let mut b = std::fs::read(&path).unwrap();
        b[45] ^= 1;
        std::fs::write(&path, &b).unwrap();
        assert!(load(&path, &job, target, HOUR).is_none());
        remove(&path);
        assert!(!path.exists());
    }
}
