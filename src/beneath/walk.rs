//! A listing of a tree whose contents are not trusted (a local target),
//! walked through directory handles beneath its root.
//!
//! Invariants:
//! - The root path is the operator's (trusted, may contain symlinks) and is
//!   opened once; every directory below is opened from its parent's handle
//!   with `O_NOFOLLOW|O_DIRECTORY` and must have the device and inode its
//!   `fstatat(AT_SYMLINK_NOFOLLOW)` showed. A name swapped for a symlink (or
//!   for another directory) between the stat and the open is an error for
//!   that path and nothing below it is listed: no name from outside the
//!   root is ever yielded.
//! - Names are read with `getdents` on the handle and stat'ed with
//!   `fstatat` relative to it; a symlink's target is read with
//!   `readlinkat`, never followed.
//! - Entries come in path order (a directory, then its contents; names
//!   sorted bytewise at each level), as they are read: only the sorted
//!   names of the directories on the current path are held, and one handle
//!   per level of depth.
//! - An entry that vanishes between `getdents` and its stat is absent, not
//!   an error (the tree is live).

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One listed entry: its path relative to the root (empty: the root), its
/// own `stat` (never a symlink's target's) and, for a symlink, its target.
pub type Found = (PathBuf, Stat, Option<PathBuf>);

/// A path that could not be listed, and why.
#[derive(Debug)]
pub struct WalkError {
    pub path: PathBuf,
    pub error: io::Error,
}

/// The walk: an iterator of entries and errors in path order.
pub struct Walk<F> {
    root: Option<Found>,
    stack: Vec<Frame>,
    /// an error to yield after the entry just yielded
    pending: Option<WalkError>,
    /// `keep(rel, is_dir)`: whether to list (and enter) an entry
    keep: F,
}

/// One directory being listed: its handle and the names still to yield.
struct Frame {
    dir: Dir,
    rel: PathBuf,
    /// sorted; `Some(is_dir)` when `getdents` gave the type
    names: std::vec::IntoIter<(OsString, Option<bool>)>,
}

#[allow(clippy::unnecessary_cast)]
fn id(st: &Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

fn is_dir(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode as _) == FileType::Directory
}

fn read_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Open the root (`Ok(None)`: it does not exist).
pub fn open_root(root: &Path) -> io::Result<Option<(OwnedFd, Stat)>> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(root, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::NOTDIR) => {
            return Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!("target {} is not a directory", root.display()),
            ));
        }
        Err(e) => return Err(e.into()),
    };
    let st = rustix::fs::fstat(&fd)?;
    Ok(Some((fd, st)))
}

/// Open the directory `name` of `parent` without following a symlink and
/// check it is the one stat'ed (`want`: device, inode).
fn open_checked(parent: BorrowedFd, name: &OsStr, want: (u64, u64)) -> io::Result<OwnedFd> {
    let fd = rustix::fs::openat(parent, name, read_flags(), Mode::empty()).map_err(|e| {
        if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
            io::Error::new(
                io::ErrorKind::NotADirectory,
                "changed during the listing: no longer a directory (a symlink is not followed)",
            )
        } else {
            e.into()
        }
    })?;
    if id(&rustix::fs::fstat(&fd)?) != want {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "changed during the listing: another directory is at this name",
        ));
    }
    Ok(fd)
}

impl<F: FnMut(&Path, bool) -> bool> Walk<F> {
    /// The walk of the directory open as `fd` (its `stat` given), which is
    /// yielded first with the empty path. The root's names are read here;
    /// everything below as the walk reaches it.
    pub fn new(fd: OwnedFd, st: Stat, keep: F) -> Walk<F> {
        let mut w = Walk {
            root: Some((PathBuf::new(), st, None)),
            stack: Vec::new(),
            pending: None,
            keep,
        };
        w.enter(fd, PathBuf::new());
        w
    }

    /// Read and sort the names of the directory open as `fd`, and make it
    /// the current one. Names whose type `getdents` gave are filtered here
    /// (an excluded name is not even stat'ed). A read error is kept to be
    /// yielded (the names read before it are listed).
    fn enter(&mut self, fd: OwnedFd, rel: PathBuf) {
        let fail = |rel: &Path, e: rustix::io::Errno| WalkError {
            path: rel.to_path_buf(),
            error: e.into(),
        };
        let mut dir = match Dir::new(fd) {
            Ok(d) => d,
            Err(e) => return self.pending = Some(fail(&rel, e)),
        };
        let mut names = Vec::new();
        while let Some(e) = dir.read() {
            match e {
                Ok(e) => {
                    let name = OsStr::from_bytes(e.file_name().to_bytes());
                    if name == "." || name == ".." {
                        continue;
                    }
                    let ty = match e.file_type() {
                        FileType::Unknown => None,
                        t => Some(t == FileType::Directory),
                    };
                    if let Some(d) = ty
                        && !(self.keep)(&rel.join(name), d)
                    {
                        continue;
                    }
                    names.push((name.to_os_string(), ty));
                }
                Err(e) => {
                    self.pending = Some(fail(&rel, e));
                    break;
                }
            }
        }
        names.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        self.stack.push(Frame {
            dir,
            rel,
            names: names.into_iter(),
        });
    }

    /// The next name of the current directory, stat'ed (`None`: the
    /// directory is done).
    fn next_in_top(&mut self) -> Option<Result<Option<Found>, WalkError>> {
        let top = self.stack.last_mut()?;
        let Some((name, ty)) = top.names.next() else {
            self.stack.pop();
            return Some(Ok(None));
        };
        let rel = top.rel.join(&name);
        let fd = top.dir.fd().ok()?;
        let st = match rustix::fs::statat(fd, &name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => return Some(Ok(None)),
            Err(e) => {
                return Some(Err(WalkError {
                    path: rel,
                    error: e.into(),
                }));
            }
        };
        if ty.is_none() && !(self.keep)(&rel, is_dir(&st)) {
            return Some(Ok(None));
        }
        let found = match FileType::from_raw_mode(st.st_mode as _) {
            FileType::Symlink => match rustix::fs::readlinkat(fd, &name, Vec::new()) {
                Ok(l) => {
                    let l = PathBuf::from(OsStr::from_bytes(l.as_bytes()));
                    (rel, st, Some(l))
                }
                Err(rustix::io::Errno::NOENT) => return Some(Ok(None)),
                Err(e) => {
                    return Some(Err(WalkError {
                        path: rel,
                        error: e.into(),
                    }));
                }
            },
            // listed even when it cannot be entered (the error follows it)
            FileType::Directory => {
                match open_checked(fd, &name, id(&st)) {
                    Ok(sub) => self.enter(sub, rel.clone()),
                    // gone since its stat: absent
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Some(Ok(None)),
                    Err(error) => {
                        self.pending = Some(WalkError {
                            path: rel.clone(),
                            error,
                        })
                    }
                }
                (rel, st, None)
            }
            _ => (rel, st, None),
        };
        Some(Ok(Some(found)))
    }
}

impl<F: FnMut(&Path, bool) -> bool> Iterator for Walk<F> {
    type Item = Result<Found, WalkError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(root) = self.root.take() {
            return Some(Ok(root));
        }
        if let Some(e) = self.pending.take() {
            return Some(Err(e));
        }
        loop {
            match self.next_in_top()? {
                Ok(Some(found)) => return Some(Ok(found)),
                Ok(None) => continue,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::fd::AsFd;

    fn names(root: &Path) -> (Vec<String>, Vec<String>) {
        let (fd, st) = open_root(root).unwrap().unwrap();
        let (mut ok, mut bad) = (vec![], vec![]);
        for item in Walk::new(fd, st, |rel: &Path, _| rel != Path::new("skip")) {
            match item {
                Ok((rel, _, link)) => ok.push(format!(
                    "{}{}",
                    rel.display(),
                    link.map(|l| format!(" -> {}", l.display()))
                        .unwrap_or_default()
                )),
                Err(e) => bad.push(format!("{}: {}", e.path.display(), e.error)),
            }
        }
        (ok, bad)
    }

    #[test]
    fn path_order_symlinks_not_entered_excluded_pruned() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("r");
        let out = d.path().join("out");
        for p in ["a/x", "a-b", "b/c/d", "skip/y"] {
            let f = root.join(p);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(&f, p).unwrap();
        }
        fs::create_dir(&out).unwrap();
        fs::write(out.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(&out, root.join("l")).unwrap();
        let (ok, bad) = names(&root);
        let l = format!("l -> {}", out.display());
        assert_eq!(ok, ["", "a", "a/x", "a-b", "b", "b/c", "b/c/d", &l]);
        assert!(bad.is_empty(), "{bad:?}");
        assert!(open_root(&d.path().join("none")).unwrap().is_none());
        let e = open_root(&root.join("a-b")).err().unwrap();
        assert_eq!(e.kind(), io::ErrorKind::NotADirectory);
    }

    #[test]
    fn a_directory_is_entered_only_if_it_is_the_one_stat_ed() {
        let d = tempfile::tempdir().unwrap();
        fs::create_dir_all(d.path().join("x")).unwrap();
        fs::create_dir_all(d.path().join("y")).unwrap();
        std::os::unix::fs::symlink("x", d.path().join("l")).unwrap();
        let (fd, _) = open_root(d.path()).unwrap().unwrap();
        let x = rustix::fs::statat(&fd, "x", AtFlags::SYMLINK_NOFOLLOW).unwrap();
        assert!(open_checked(fd.as_fd(), OsStr::new("x"), id(&x)).is_ok());
        let e = open_checked(fd.as_fd(), OsStr::new("y"), id(&x)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{e}");
        let e = open_checked(fd.as_fd(), OsStr::new("l"), id(&x)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotADirectory, "{e}");
    }
}
