//! Per-job exclusive locks (and the daemon's single-instance lock) as files
//! in the state dir, held with `flock(2)` through std's `File::try_lock`.
//! The kernel drops the lock when its process dies, `kill -9` included, so
//! there is never a stale lock to clean up. The holder writes its pid, start
//! time and trigger into the file for `syncjob status`.

use crate::statedir::{self, Access};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub since: String,
    pub trigger: String,
}

/// A held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct Lock {
    file: File,
    path: PathBuf,
}

impl Lock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        // Clear the holder record first so `status` never shows a dead holder.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

pub fn job_lock_path(state_dir: &Path, job: &str) -> PathBuf {
    state_dir.join("locks").join(format!("{job}.lock"))
}

pub fn daemon_lock_path(state_dir: &Path) -> PathBuf {
    state_dir.join("daemon.lock")
}

/// The lock file, created 0600, never through a symlink (see `statedir`).
fn open(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    statedir::open(path, Access::ReadWrite)
}

fn record(mut file: File, path: &Path, trigger: &str) -> std::io::Result<Lock> {
    let h = Holder {
        pid: std::process::id(),
        since: crate::journal::now_rfc3339(),
        trigger: trigger.to_string(),
    };
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(serde_json::to_string(&h).unwrap_or_default().as_bytes())?;
    Ok(Lock {
        file,
        path: path.to_path_buf(),
    })
}

/// Take the lock if it is free; `Ok(None)` when another process holds it.
pub fn try_acquire(path: &Path, trigger: &str) -> std::io::Result<Option<Lock>> {
    let file = open(path)?;
    match file.try_lock() {
        Ok(()) => record(file, path, trigger).map(Some),
        Err(std::fs::TryLockError::WouldBlock) => Ok(None),
        Err(std::fs::TryLockError::Error(e)) => Err(e),
    }
}

/// Wait for the lock: forever with `None`, else up to `timeout`.
pub fn acquire_wait(
    path: &Path,
    trigger: &str,
    timeout: Option<Duration>,
) -> std::io::Result<Option<Lock>> {
    match timeout {
        None => {
            let file = open(path)?;
            file.lock()?;
            record(file, path, trigger).map(Some)
        }
        Some(t) => {
            let deadline = Instant::now() + t;
            loop {
                if let Some(l) = try_acquire(path, trigger)? {
                    return Ok(Some(l));
                }
                if Instant::now() >= deadline {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Who holds the lock at `path`, if anyone. Reads the holder record and
/// checks that its process lives; it never takes the lock itself, so asking
/// cannot make a run starting at that moment see the lock as held.
pub fn holder(path: &Path) -> Option<Holder> {
    let mut s = String::new();
    statedir::open(path, Access::Read)
        .ok()?
        .take(4096)
        .read_to_string(&mut s)
        .ok()?;
    let h: Holder = serde_json::from_str(&s).ok()?;
    pid_alive(h.pid).then_some(h)
}

pub fn pid_alive(pid: u32) -> bool {
    if pid == 0 {
        return false;
    }
    // SAFETY: kill with signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid as libc::pid_t, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquire_is_refused_until_drop() {
        let d = tempfile::tempdir().unwrap();
        let p = job_lock_path(d.path(), "web");
        let a = try_acquire(&p, "manual").unwrap().expect("free");
        // flock locks are per open file description: a second open conflicts
        assert!(try_acquire(&p, "manual").unwrap().is_none());
        let h = holder(&p).expect("held");
        assert_eq!(h.pid, std::process::id());
        assert_eq!(h.trigger, "manual");
        drop(a);
        assert!(holder(&p).is_none());
        assert!(try_acquire(&p, "schedule").unwrap().is_some());
    }

    #[test]
    fn wait_times_out() {
        let d = tempfile::tempdir().unwrap();
        let p = job_lock_path(d.path(), "web");
        let _a = try_acquire(&p, "manual").unwrap().unwrap();
        let t = Instant::now();
        assert!(
            acquire_wait(&p, "manual", Some(Duration::from_millis(200)))
                .unwrap()
                .is_none()
        );
        assert!(t.elapsed() >= Duration::from_millis(200));
    }
}
