//! One shared SSH connection per target for `ssh.client: openssh`: the
//! `ssh` processes of one target's run (SFTP, listing, remote commands, the
//! helper's streams) go over one master connection instead of one TCP
//! connection, key exchange and authentication each.
//!
//! Invariants:
//! - Used only when the user's OpenSSH config sets no `ControlPath` for
//!   the target: a user's own ControlMaster/ControlPath/ControlPersist are
//!   left to ssh (syncjob passes nothing that overrides them).
//! - The socket lives in `STATE_DIR/ssh-mux/` (created 0700, refused if it
//!   is not a directory of the running user that no one else can enter),
//!   under a name of this process's own per destination (`PID-HASH`), so
//!   nothing another user or another process made is ever connected to.
//! - The first client of a destination starts the master (`ssh -f -N`,
//!   `ControlPersist`) before any other `ssh` of it runs, so the copy
//!   streams of a target share it instead of racing to make their own;
//!   it is told to exit (`ssh -O exit`) when the last client of the
//!   destination is dropped, and its socket is waited for to go (at most
//!   1 s: the master answers before it exits), with the destination's
//!   entry held: a new client of it in this process starts the next
//!   master only after that. The persist time bounds how long a master
//!   can outlive a killed run.
//! - A socket path too long for `sun_path` (ssh adds 17 bytes while it
//!   creates it) means no master: each `ssh` connects on its own.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// The idle time after which a master left behind exits by itself.
pub const PERSIST_SECS: u64 = 60;
/// The longest socket path used (108-byte `sun_path`, less ssh's suffix).
const MAX_PATH: usize = 90;

/// The masters of this process: socket path → clients using it. Each
/// entry has its own lock, held while its master starts, so the streams
/// of one target wait for one master instead of racing to make several.
type Masters = HashMap<PathBuf, Arc<Mutex<usize>>>;

fn masters() -> &'static Mutex<Masters> {
    static M: OnceLock<Mutex<Masters>> = OnceLock::new();
    M.get_or_init(|| Mutex::new(HashMap::new()))
}

/// One client's share of a target's master.
#[derive(Debug)]
pub struct Mux {
    pub path: PathBuf,
}

/// The private socket directory of `state_dir`, made if missing.
fn socket_dir(state_dir: &Path) -> io::Result<PathBuf> {
    let dir = state_dir.join("ssh-mux");
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let md = std::fs::symlink_metadata(&dir)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !md.is_dir() || md.uid() != me || md.mode() & 0o077 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not a private directory of this user", dir.display()),
        ));
    }
    Ok(dir)
}

/// `PID-HASH`: this process's socket for the destination `key`.
fn socket_name(key: &str) -> String {
    use sha2::{Digest, Sha256};
    let h: String = Sha256::digest(key.as_bytes())
        .iter()
        .take(6)
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("{}-{h}", std::process::id())
}

impl Mux {
    /// A share of the master for `key` (the target's ssh arguments) under
    /// `state_dir`; the first share starts it with `start(options)`, which
    /// runs `ssh` with them until the master is up (its error is
    /// returned, and the next share tries again). `None`: no usable place
    /// for the socket.
    pub fn acquire<E>(
        state_dir: &Path,
        key: &str,
        start: impl FnOnce(&[OsString]) -> Result<(), E>,
    ) -> Result<Option<Mux>, E> {
        let Ok(dir) = socket_dir(state_dir) else {
            return Ok(None);
        };
        let path = dir.join(socket_name(key));
        if path.as_os_str().len() > MAX_PATH {
            return Ok(None);
        }
        let entry = masters()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(path.clone())
            .or_default()
            .clone();
        let mut users = entry.lock().unwrap_or_else(|e| e.into_inner());
        let m = Mux { path };
        if *users == 0 || !m.path.exists() {
            start(&m.options())?;
        }
        *users += 1;
        Ok(Some(m))
    }

    /// Give this share back; the last one runs `stop` (tell the master to
    /// exit and wait for it) with the destination's entry held, so a new
    /// share of it starts the next master only once this one is gone.
    /// `true` when this was the last share. (Entries stay in the map: one
    /// per destination a process talks to.)
    pub fn release(&self, stop: impl FnOnce()) -> bool {
        let Some(entry) = masters()
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.path)
            .cloned()
        else {
            return false;
        };
        let mut users = entry.lock().unwrap_or_else(|e| e.into_inner());
        *users = users.saturating_sub(1);
        if *users == 0 {
            stop();
            return true;
        }
        false
    }

    /// The `-o` options that make `ssh` share this master.
    pub fn options(&self) -> Vec<OsString> {
        let mut path = OsString::from("ControlPath=");
        path.push(&self.path);
        vec![
            "-o".into(),
            "ControlMaster=auto".into(),
            "-o".into(),
            path,
            "-o".into(),
            format!("ControlPersist={PERSIST_SECS}").into(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A share taken while the last one stops the master waits for it: two
    /// masters never race for one socket path.
    #[test]
    fn a_new_master_starts_only_after_the_old_one_stopped() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let d = tempfile::tempdir().unwrap();
        let ok = |_: &[OsString]| -> Result<(), ()> { Ok(()) };
        let a = Mux::acquire(d.path(), "race", ok).unwrap().unwrap();
        let stopped = AtomicBool::new(false);
        let stopping = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                a.release(|| {
                    stopping.store(true, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(200));
                    stopped.store(true, Ordering::SeqCst);
                })
            });
            while !stopping.load(Ordering::SeqCst) {
                std::thread::yield_now();
            }
            let b = Mux::acquire(d.path(), "race", |_| -> Result<(), ()> {
                assert!(stopped.load(Ordering::SeqCst), "started beside the old");
                Ok(())
            });
            assert!(b.unwrap().unwrap().release(|| {}));
        });
    }

    #[test]
    fn sockets_go_in_a_private_directory_one_master_per_destination() {
        let d = tempfile::tempdir().unwrap();
        // (a closure over a shared Cell is Copy: one counter for all starts)
        let started = std::cell::Cell::new(0);
        let start = |_: &[OsString]| -> Result<(), ()> {
            started.set(started.get() + 1);
            Ok(())
        };
        let a = Mux::acquire(d.path(), "k1", start).unwrap().unwrap();
        let md = std::fs::metadata(d.path().join("ssh-mux")).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o700);
        assert!(a.path.starts_with(d.path().join("ssh-mux")));
        assert!(a.options().iter().any(|o| o == "ControlMaster=auto"));
        // (no socket was made here, so each share would start it again)
        std::fs::write(&a.path, b"").unwrap();
        let b = Mux::acquire(d.path(), "k1", start).unwrap().unwrap();
        let c = Mux::acquire(d.path(), "k2", start).unwrap().unwrap();
        assert_eq!(started.get(), 2);
        // a master that fails to start is an error, and tried again next
        assert!(Mux::acquire(d.path(), "k3", |_| Err(())).is_err());
        let e = Mux::acquire(d.path(), "k3", start);
        assert!(e.unwrap().unwrap().release(|| {}));
        assert_eq!(started.get(), 3);
        assert_eq!(a.path, b.path);
        assert_ne!(a.path, c.path);
        let mut stopped = 0;
        assert!(!a.release(|| stopped += 1));
        assert_eq!(stopped, 0, "a share is left");
        assert!(b.release(|| stopped += 1));
        assert_eq!(stopped, 1, "the last share stops the master");
        assert!(c.release(|| {}));
        // a share after the last one starts the master again
        let a2 = Mux::acquire(d.path(), "k1", start);
        assert!(a2.unwrap().unwrap().release(|| {}));
        assert_eq!(started.get(), 4);
        let none = |_: &[OsString]| -> Result<(), ()> { panic!("not started") };
        // opened up, or a symlink planted there: not used
        let open = tempfile::tempdir().unwrap();
        let p = open.path().join("ssh-mux");
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(Mux::acquire(open.path(), "k", none).unwrap().is_none());
        let link = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(d.path().join("ssh-mux"), link.path().join("ssh-mux")).unwrap();
        assert!(Mux::acquire(link.path(), "k", none).unwrap().is_none());
        // too long for a socket name
        let deep = d.path().join("x".repeat(100));
        std::fs::create_dir(&deep).unwrap();
        assert!(Mux::acquire(&deep, "k", none).unwrap().is_none());
    }
}
