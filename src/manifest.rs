//! Per-target manifest: the state a target was left in by the last run that
//! ended `ok`, so that a run in which nothing changed in the source can skip
//! connecting to and listing the target.
//!
//! Safety rules (a manifest can never cause a missed source change or a
//! wrong delete):
//! - it is only used to decide that there is *nothing to do*; any run with
//!   work to do connects and lists the target as usual;
//! - it is removed before a run changes the target and written (atomically)
//!   only after a run that ended `ok` with no error;
//! - it is bound to everything that shapes the plan (target, source, mode,
//!   compare, delete, excludes, owner and time handling): any change makes
//!   it unusable;
//! - it is trusted for `verify_interval`  after the listing it
//!   stems from (default 1m); then a full listing repairs whatever drifted on the target
//!   (and `syncjob run --verify` forces one);
//! - it carries a checksum; a damaged or foreign file is ignored.

use crate::config::Job;
use crate::plan::{Entry, EntryKind, Scan, Tree};
use crate::target::Target;
use sha2::{Digest, Sha256};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 8] = b"SJMANIF1";

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

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What the target holds after a run that ended ok: the source's entries
/// (special files excluded, times as the target keeps them).
pub fn expected_target(scan: &Scan, caps: Caps) -> Tree {
    scan.entries
        .iter()
        .filter(|(_, e)| e.kind != EntryKind::Special)
        .map(|(p, e)| {
            let mut e = e.clone();
            if !caps.mtime_nanos {
                e.mtime_ns = 0;
            }
            (p.clone(), e)
        })
        .collect()
}

fn kind_byte(k: EntryKind) -> u8 {
    match k {
        EntryKind::File => 0,
        EntryKind::Dir => 1,
        EntryKind::Symlink => 2,
        EntryKind::Special => 3,
    }
}

/// Write the manifest atomically (temporary file, fsync, rename).
/// `listed_at`: when the target state it extends was last listed in full.
pub fn save(
    path: &Path,
    job: &Job,
    target: &Target,
    caps: Caps,
    listed_at: u64,
    tree: &Tree,
) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut b = Vec::with_capacity(64 + tree.len() * 48);
    b.extend_from_slice(MAGIC);
    b.push(caps.to_byte());
    b.extend_from_slice(&fingerprint(job, target, caps));
    b.extend_from_slice(&listed_at.to_le_bytes());
    b.extend_from_slice(&(tree.len() as u64).to_le_bytes());
    for (p, e) in tree {
        let name = p.as_os_str().as_bytes();
        b.extend_from_slice(&(name.len() as u32).to_le_bytes());
        b.extend_from_slice(name);
        b.push(kind_byte(e.kind));
        b.extend_from_slice(&e.size.to_le_bytes());
        b.extend_from_slice(&e.mtime.to_le_bytes());
        b.extend_from_slice(&e.mtime_ns.to_le_bytes());
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
    }
    let sum = Sha256::digest(&b);
    b.extend_from_slice(&sum);
    let tmp = dir.join(format!(
        ".{}.tmp.{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&b)?;
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

struct Rd<'a>(&'a [u8]);
impl<'a> Rd<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

/// A manifest usable now: same fingerprint, intact, listed less than
/// `max_age` ago. Returns the tree, the target's capabilities it was made
/// with, and when the target was last listed in full.
pub fn load(
    path: &Path,
    job: &Job,
    target: &Target,
    max_age: Duration,
) -> Option<(Tree, Caps, u64)> {
    let b = std::fs::read(path).ok()?;
    if b.len() < MAGIC.len() + 1 + 32 + 16 + 32 {
        return None;
    }
    let (body, sum) = b.split_at(b.len() - 32);
    if Sha256::digest(body).as_slice() != sum {
        return None;
    }
    let mut r = Rd(body);
    if r.take(8)? != MAGIC {
        return None;
    }
    let caps = Caps::from_byte(r.take(1)?[0]);
    if r.take(32)? != fingerprint(job, target, caps) {
        return None;
    }
    let listed_at = r.u64()?;
    let age = now_secs().saturating_sub(listed_at);
    if listed_at > now_secs() + 60 || age >= max_age.as_secs() {
        return None;
    }
    let n = r.u64()?;
    let mut tree = Tree::new();
    for _ in 0..n {
        let len = r.u32()? as usize;
        let name = PathBuf::from(std::ffi::OsStr::from_bytes(r.take(len)?));
        let kind = match r.take(1)?[0] {
            0 => EntryKind::File,
            1 => EntryKind::Dir,
            2 => EntryKind::Symlink,
            _ => EntryKind::Special,
        };
        let size = r.u64()?;
        let mtime = r.u64()? as i64;
        let mtime_ns = r.u32()?;
        let mode = r.u32()?;
        let uid = r.u32()?;
        let gid = r.u32()?;
        let ll = r.u32()?;
        let link = if ll == u32::MAX {
            None
        } else {
            Some(PathBuf::from(std::ffi::OsStr::from_bytes(
                r.take(ll as usize)?,
            )))
        };
        tree.insert(
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
        );
    }
    r.0.is_empty().then_some((tree, caps, listed_at))
}

pub fn unix_now() -> u64 {
    now_secs()
}
