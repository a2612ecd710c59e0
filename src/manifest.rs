//! Per-target manifest: the state a target was left in by the last run that
//! ended `ok`, so that a run in which nothing changed in the source can skip
//! connecting to and listing the target.
//!
//! Safety rules (a manifest can never cause a missed source change or a
//! wrong delete):
//! - it holds a digest of the target's state; it is only used to decide
//!   that there is *nothing to do* (the source scan gives the same digest);
//!   any run with work to do connects and lists the target as usual;
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
use crate::plan::{EntryKind, Scan};
use crate::target::Target;
use sha2::{Digest, Sha256};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const MAGIC: &[u8; 8] = b"SJMANIF2";

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

/// A digest of what the target holds after a run that ended ok: the
/// source's entries (special files excluded, times as the target keeps
/// them). Equal digests mean a plan against that state is empty.
pub fn digest(scan: &Scan, caps: Caps) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut b = Vec::with_capacity(64 << 10);
    for (p, e) in &scan.entries {
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
            h.update(&b);
            b.clear();
        }
    }
    h.update(&b);
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

/// Write the manifest atomically (temporary file, fsync, rename).
/// `listed_at`: when the target was last listed in full.
pub fn save(
    path: &Path,
    job: &Job,
    target: &Target,
    caps: Caps,
    listed_at: u64,
    state: &[u8; 32],
) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let mut b = Vec::with_capacity(128);
    b.extend_from_slice(MAGIC);
    b.push(caps.to_byte());
    b.extend_from_slice(&fingerprint(job, target, caps));
    b.extend_from_slice(&listed_at.to_le_bytes());
    b.extend_from_slice(state);
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

/// A manifest usable now: same fingerprint, intact, listed less than
/// `max_age` ago. Returns the target state's digest and the target's
/// capabilities it was made with.
pub fn load(
    path: &Path,
    job: &Job,
    target: &Target,
    max_age: Duration,
) -> Option<([u8; 32], Caps)> {
    let b = std::fs::read(path).ok()?;
    if b.len() != MAGIC.len() + 1 + 32 + 8 + 32 + 32 {
        return None;
    }
    let (body, sum) = b.split_at(b.len() - 32);
    if Sha256::digest(body).as_slice() != sum || &body[..8] != MAGIC {
        return None;
    }
    let caps = Caps::from_byte(body[8]);
    if body[9..41] != fingerprint(job, target, caps) {
        return None;
    }
    let listed_at = u64::from_le_bytes(body[41..49].try_into().ok()?);
    let now = now_secs();
    if listed_at > now + 60 || now.saturating_sub(listed_at) >= max_age.as_secs() {
        return None;
    }
    Some((body[49..81].try_into().ok()?, caps))
}

pub fn unix_now() -> u64 {
    now_secs()
}
