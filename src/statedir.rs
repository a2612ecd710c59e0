//! The state directory (locks, manifests, the default run log) kept private.
//!
//! Invariants, checked before a run or the daemon writes anything there:
//! - the state dir is a directory owned by the running user and not
//!   writable by group or others; it is created 0700 when missing;
//! - every directory above it (of its canonical path) is owned by root or
//!   the running user and is not writable by group or others unless it has
//!   the sticky bit (as `/tmp`): nobody else can rename or replace any part
//!   of the path;
//! - `locks/` and `manifests/` are real directories (never symlinks) owned
//!   by the running user, mode 0700;
//! - files are opened with `O_NOFOLLOW` (a symlink at a file's name is
//!   refused, never followed), `O_NONBLOCK` (a fifo planted there cannot
//!   hang the process) and created 0600; a file that is not a regular file
//!   owned by the running user is refused.
//!
//! Temporary files (manifests being written) get unpredictable names and
//! are created with `O_EXCL` (the `tempfile` crate).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Why a state dir (or a file in it) is refused.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("state dir {0}: {1}")]
    Io(PathBuf, io::Error),
    #[error(
        "state dir {dir} is owned by uid {owner}, not by the user running syncjob (uid {me}); \
         refusing to use it (another user could plant files or links there)"
    )]
    NotOwned { dir: PathBuf, owner: u32, me: u32 },
    #[error(
        "state dir {dir} is writable by group or others (mode {mode:04o}); refusing to use it: \
         chmod 700 {dir}"
    )]
    Writable { dir: PathBuf, mode: u32 },
    #[error(
        "state dir {state}: its parent {dir} (owner uid {owner}, mode {mode:04o}) can be changed by \
         another user; put the state dir under a directory only root or you can write"
    )]
    UnsafeParent {
        state: PathBuf,
        dir: PathBuf,
        owner: u32,
        mode: u32,
    },
    #[error("{0} is not a directory (a symlink or another file is refused there)")]
    NotADir(PathBuf),
}

pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Create (0700) and check the state dir; returns its canonical path,
/// which is what every later path is built from (a symlink in the given
/// path cannot be repointed afterwards).
pub fn prepare(dir: &Path) -> Result<PathBuf, StateDirError> {
    let io_err = |e| StateDirError::Io(dir.to_path_buf(), e);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_err)?;
    let canon = dir.canonicalize().map_err(io_err)?;
    let me = euid();
    for a in canon.ancestors().skip(1) {
        let md = std::fs::metadata(a).map_err(io_err)?;
        let mode = md.mode() & 0o7777;
        let others_write = mode & 0o022 != 0 && mode & 0o1000 == 0;
        if (md.uid() != 0 && md.uid() != me) || others_write {
            return Err(StateDirError::UnsafeParent {
                state: canon.clone(),
                dir: a.to_path_buf(),
                owner: md.uid(),
                mode,
            });
        }
    }
    let md = std::fs::metadata(&canon).map_err(io_err)?;
    if md.uid() != me {
        return Err(StateDirError::NotOwned {
            dir: canon,
            owner: md.uid(),
            me,
        });
    }
    if md.mode() & 0o022 != 0 {
        return Err(StateDirError::Writable {
            dir: canon,
            mode: md.mode() & 0o7777,
        });
    }
    for sub in ["locks", "manifests"] {
        private_dir(&canon.join(sub))?;
    }
    Ok(canon)
}

/// A directory of the state dir: created 0700 if missing, refused if it
/// is not a real directory owned by the running user, tightened to 0700.
pub fn private_dir(dir: &Path) -> Result<(), StateDirError> {
    let io_err = |e| StateDirError::Io(dir.to_path_buf(), e);
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err(e)),
    }
    let md = std::fs::symlink_metadata(dir).map_err(io_err)?;
    if !md.is_dir() {
        return Err(StateDirError::NotADir(dir.to_path_buf()));
    }
    if md.uid() != euid() {
        return Err(StateDirError::NotOwned {
            dir: dir.to_path_buf(),
            owner: md.uid(),
            me: euid(),
        });
    }
    if md.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_err)?;
    }
    Ok(())
}

/// How a state file is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    /// read and write, created 0600 when missing, not truncated
    ReadWrite,
    /// append, created 0600 when missing
    Append,
}

/// Open a file of the state dir (or the run log) without following a
/// symlink at its name; refuse anything but a regular file owned by the
/// running user (for reading: owned by the user or root).
pub fn open(path: &Path, access: Access) -> io::Result<File> {
    let mut o = OpenOptions::new();
    match access {
        Access::Read => o.read(true),
        Access::ReadWrite => o.read(true).write(true).create(true).truncate(false),
        Access::Append => o.append(true).create(true),
    };
    o.mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC);
    let f = o.open(path).map_err(|e| {
        if e.raw_os_error() == Some(libc::ELOOP) {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is a symlink; refusing to follow it", path.display()),
            )
        } else {
            e
        }
    })?;
    let md = f.metadata()?;
    if !md.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file; refusing it", path.display()),
        ));
    }
    let me = euid();
    let ok_owner = md.uid() == me || (access == Access::Read && md.uid() == 0);
    if !ok_owner {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is owned by uid {}, not by the running user (uid {me}); refusing it",
                path.display(),
                md.uid()
            ),
        ));
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_private_and_subdirs_tightened() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("a/state");
        let c = prepare(&s).unwrap();
        assert_eq!(c, s.canonicalize().unwrap());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
        assert_eq!(mode(&s), 0o700);
        std::fs::set_permissions(s.join("locks"), std::fs::Permissions::from_mode(0o755)).unwrap();
        prepare(&s).unwrap();
        assert_eq!(mode(&s.join("locks")), 0o700);
        assert_eq!(mode(&s.join("manifests")), 0o700);
    }

    #[test]
    fn writable_by_others_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("state");
        std::fs::create_dir(&s).unwrap();
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare(&s).unwrap_err().to_string();
        assert!(e.contains("writable by group or others"), "{e}");
        // an unsafe parent: group/other-writable without the sticky bit
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = prepare(&s).unwrap_err().to_string();
        assert!(e.contains("can be changed by another user"), "{e}");
        std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        prepare(&s).unwrap();
    }

    #[test]
    fn a_symlinked_subdir_or_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("state");
        std::fs::create_dir(&s).unwrap();
        std::os::unix::fs::symlink(d.path(), s.join("locks")).unwrap();
        assert!(matches!(prepare(&s), Err(StateDirError::NotADir(..))));
        std::fs::remove_file(s.join("locks")).unwrap();
        prepare(&s).unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(&victim, s.join("runs.jsonl")).unwrap();
        for a in [Access::Read, Access::ReadWrite, Access::Append] {
            let e = open(&s.join("runs.jsonl"), a).unwrap_err().to_string();
            assert!(e.contains("symlink"), "{e}");
        }
        assert_eq!(std::fs::read(&victim).unwrap(), b"keep");
        let f = s.join("new");
        open(&f, Access::Append).unwrap();
        assert_eq!(std::fs::metadata(&f).unwrap().mode() & 0o777, 0o600);
    }
}
