//! The source tree, walked and read relative to directory handles.
//!
//! Invariants:
//! - The root is opened once (the operator's path, symlinks in it allowed);
//!   every directory below is opened from its parent's handle with
//!   `O_NOFOLLOW|O_DIRECTORY`, so a name swapped for a symlink after it was
//!   stat'ed is never followed, and the directory opened must have the
//!   device and inode the scan saw (else: "changed during the scan", the
//!   path is unknown and nothing below it is deleted on targets).
//! - Files are copied from handles opened the same way at copy time
//!   ([`SourceTree`]), starting from the very root handle the scan used,
//!   each directory on the way checked against the scan's device and inode:
//!   a source owner who swaps `sub` for a symlink to a directory only root
//!   can read gets an error, never its files copied.

use crate::filter::Filter;
use crate::journal::PathError;
use crate::plan::{Entry, EntryKind, Scan, Sorted, display_path, is_temp_name};
use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

mod parallel;
pub use parallel::walk as walk_parallel;

/// The warning for an entry that vanished during the scan.
const VANISHED: &str = "vanished during the scan";
/// Vanished entries are listed while there are fewer warnings than this.
const VANISHED_SHOWN: usize = 200;

/// Device and inode of each directory the scan entered (the root too).
pub type DirIds = HashMap<PathBuf, (u64, u64)>;

/// The entry for a `stat` result (symlink target given separately).
// (`stat`'s field types differ between architectures: the casts are not
// all no-ops everywhere)
#[allow(clippy::unnecessary_cast)]
pub fn entry_of(st: &Stat, link: Option<PathBuf>) -> Entry {
    let kind = match FileType::from_raw_mode(st.st_mode as _) {
        FileType::RegularFile => EntryKind::File,
        FileType::Directory => EntryKind::Dir,
        FileType::Symlink => EntryKind::Symlink,
        _ => EntryKind::Special,
    };
    Entry {
        kind,
        size: if kind == EntryKind::File {
            st.st_size as u64
        } else {
            0
        },
        mtime: st.st_mtime as i64,
        mtime_ns: st.st_mtime_nsec as u32,
        mode: st.st_mode as u32 & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        link: link.map(Box::new),
    }
}

#[allow(clippy::unnecessary_cast)]
pub(crate) fn id(st: &Stat) -> (u64, u64) {
    (st.st_dev as u64, st.st_ino as u64)
}

fn read_dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// Open the source root for the scan; its entry and handle.
pub fn open_root(root: &Path) -> io::Result<(OwnedFd, Stat)> {
    let fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&fd)?;
    Ok((fd, st))
}

/// Record a path that could not be read: an error, and unknown (nothing
/// below it is deleted on targets).
fn fail(scan: &mut Scan, rel: PathBuf, msg: String) {
    scan.errors.push(PathError {
        path: display_path(&rel),
        message: msg,
    });
    scan.unknown.insert(rel);
}

/// An entry deleted while the walk reached it: a warning (counted, the
/// first 200 listed), not an error; nothing at or below it is deleted on
/// the target.
fn vanished(scan: &mut Scan, rel: PathBuf) {
    scan.vanished += 1;
    if scan.warnings.len() < VANISHED_SHOWN {
        scan.warnings.push(PathError {
            path: display_path(&rel),
            message: VANISHED.into(),
        });
    }
    scan.unknown.insert(rel);
}

/// `fail`, or `vanished` when the entry is gone.
fn fail_or_vanished(scan: &mut Scan, rel: PathBuf, gone: bool, msg: String) {
    if gone {
        vanished(scan, rel)
    } else {
        fail(scan, rel, msg)
    }
}

/// The names of a directory, excluded ones left out (not even stat'ed);
/// a name of the form of syncjob's temporary files is left out with a
/// warning (the target would take it for a stale temporary and remove it).
fn read_names(
    d: &mut rustix::fs::Dir,
    rel: &Path,
    filter: &Filter,
    scan: &mut Scan,
) -> Vec<OsString> {
    let mut names: Vec<OsString> = Vec::new();
    while let Some(e) = d.read() {
        match e {
            Ok(e) => {
                let name = OsStr::from_bytes(e.file_name().to_bytes());
                if name == "." || name == ".." {
                    continue;
                }
                let child = rel.join(name);
                let is_dir = e.file_type() == FileType::Directory;
                if filter.excluded(&child, is_dir) {
                    continue;
                }
                if is_temp_name(&child) {
                    scan.warnings.push(PathError {
                        path: display_path(&child),
                        message: "not copied: the name has the form of syncjob's temporary files (.syncjob-tmp.<pid>.<n>.<name>)".into(),
                    });
                    continue;
                }
                names.push(name.to_os_string());
            }
            Err(e) => {
                fail(scan, rel.to_path_buf(), e.to_string());
                break;
            }
        }
    }
    names
}

/// What the scan makes of one name of a directory.
enum Child {
    /// nothing to list (a problem recorded, or a special file)
    Skip,
    Leaf(Entry),
    /// a directory: its entry and its device and inode
    Dir(Entry, (u64, u64)),
}

/// Stat the name `name` of the directory `fd` (the path `child`), symlinks
/// never followed; problems and special files are recorded in `scan`.
fn stat_child(fd: BorrowedFd, name: &OsStr, child: &Path, scan: &mut Scan) -> Child {
    let st = match rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(err) => {
            let gone = err == rustix::io::Errno::NOENT;
            let msg = format!("cannot stat: {err}");
            fail_or_vanished(scan, child.to_path_buf(), gone, msg);
            return Child::Skip;
        }
    };
    match FileType::from_raw_mode(st.st_mode as _) {
        FileType::Fifo | FileType::Socket | FileType::BlockDevice | FileType::CharacterDevice => {
            scan.warnings.push(PathError {
                path: display_path(child),
                message: "special file (fifo, socket or device) skipped".into(),
            });
            scan.unknown.insert(child.to_path_buf());
            Child::Skip
        }
        FileType::Symlink => match rustix::fs::readlinkat(fd, name, Vec::new()) {
            Ok(l) => {
                let l = PathBuf::from(OsStr::from_bytes(l.as_bytes()));
                Child::Leaf(entry_of(&st, Some(l)))
            }
            Err(err) => {
                let gone = err == rustix::io::Errno::NOENT;
                let msg = format!("cannot read link: {err}");
                fail_or_vanished(scan, child.to_path_buf(), gone, msg);
                Child::Skip
            }
        },
        FileType::Directory => Child::Dir(entry_of(&st, None), id(&st)),
        _ => Child::Leaf(entry_of(&st, None)),
    }
}

/// The subtree of the subdirectory `name` of `fd` (the path `child`, the
/// directory `want`), its entry already pushed: opened as checked, walked.
fn descend(
    fd: BorrowedFd,
    name: &OsStr,
    child: PathBuf,
    want: (u64, u64),
    filter: &Filter,
    acc: (&mut Scan, &mut Sorted, &mut DirIds),
) {
    let (scan, found, dirs) = acc;
    match open_checked(fd, name, want) {
        Ok(sub) => {
            dirs.insert(child.clone(), want);
            walk(sub, &child, filter, scan, found, dirs);
        }
        Err(e) => {
            let gone = e.kind() == io::ErrorKind::NotFound;
            fail_or_vanished(scan, child, gone, e.to_string())
        }
    }
}

/// The names of the directory `dir` (the path `rel`), sorted, and the
/// directory read; `None` where it cannot be read (recorded in `scan`).
fn sorted_names(
    dir: OwnedFd,
    rel: &Path,
    filter: &Filter,
    scan: &mut Scan,
) -> Option<(rustix::fs::Dir, Vec<OsString>)> {
    let mut d = match rustix::fs::Dir::new(dir) {
        Ok(d) => d,
        Err(e) => {
            let gone = e == rustix::io::Errno::NOENT;
            fail_or_vanished(scan, rel.to_path_buf(), gone, e.to_string());
            return None;
        }
    };
    let mut names = read_names(&mut d, rel, filter, scan);
    names.sort_unstable();
    Some((d, names))
}

/// One directory of the scan (open as `dir`), then its subdirectories:
/// entries sorted by name, each stat'ed relative to the directory's handle,
/// symlinks never followed. One handle is held per level of depth.
pub fn walk(
    dir: OwnedFd,
    rel: &Path,
    filter: &Filter,
    scan: &mut Scan,
    found: &mut Sorted,
    dirs: &mut DirIds,
) {
    let Some((d, names)) = sorted_names(dir, rel, filter, scan) else {
        return;
    };
    let Ok(fd) = d.fd() else { return };
    for name in names {
        let child = rel.join(&name);
        match stat_child(fd, &name, &child, scan) {
            Child::Skip => {}
            Child::Leaf(e) => found.push(&child, e),
            Child::Dir(e, want) => {
                found.push(&child, e);
                descend(fd, &name, child, want, filter, (scan, found, dirs));
            }
        }
    }
}

/// Open the directory `name` of `dir` without following a symlink, and
/// check that it is the directory `want` (device, inode).
pub(crate) fn open_checked(dir: BorrowedFd, name: &OsStr, want: (u64, u64)) -> io::Result<OwnedFd> {
    let sub = rustix::fs::openat(dir, name, read_dir_flags(), Mode::empty()).map_err(|e| {
        if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
            io::Error::new(
                io::ErrorKind::NotADirectory,
                "changed during the scan: no longer a directory (a symlink is not followed)",
            )
        } else {
            e.into()
        }
    })?;
    if id(&rustix::fs::fstat(&sub)?) != want {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "changed during the scan: another directory is at this name",
        ));
    }
    Ok(sub)
}

/// Source files opened for copying: relative to the scan's root handle,
/// through directories that must be the ones scanned. Shared by the copy
/// threads of a run (through `CopyCtx`); directory handles are cached
/// (bounded).
#[derive(Debug)]
pub struct SourceTree {
    root_path: PathBuf,
    root: Arc<OwnedFd>,
    ids: Arc<DirIds>,
    cache: Mutex<HashMap<PathBuf, Arc<OwnedFd>>>,
}

const MAX_CACHED: usize = 1024;

impl SourceTree {
    /// The tree of a scan (`None`: the scan kept no root handle).
    pub fn of(scan: &Scan) -> Option<SourceTree> {
        Some(SourceTree {
            root_path: scan.root.clone(),
            root: scan.root_fd.clone()?,
            ids: scan.dir_ids.clone(),
            cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// The handle of the scanned directory `rel`.
    fn dir(&self, rel: &Path) -> io::Result<Arc<OwnedFd>> {
        if rel.as_os_str().is_empty() {
            return Ok(self.root.clone());
        }
        if let Some(fd) = self.cache.lock().unwrap().get(rel) {
            return Ok(fd.clone());
        }
        let parent = self.dir(rel.parent().unwrap_or(Path::new("")))?;
        let name = rel
            .file_name()
            .ok_or_else(|| crate::beneath::not_beneath(rel))?;
        let want = *self.ids.get(rel).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "not a directory of the scan")
        })?;
        let fd = Arc::new(open_checked(parent.as_fd(), name, want)?);
        let mut c = self.cache.lock().unwrap();
        if c.len() >= MAX_CACHED {
            c.clear();
        }
        c.insert(rel.to_path_buf(), fd.clone());
        Ok(fd)
    }

    /// Open the regular file `rel` for reading, never through a symlink.
    pub fn open(&self, rel: &Path) -> io::Result<File> {
        crate::beneath::check_relative(rel)?;
        let dir = self.dir(rel.parent().unwrap_or(Path::new("")))?;
        let name = rel
            .file_name()
            .ok_or_else(|| crate::beneath::not_beneath(rel))?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        Ok(File::from(rustix::fs::openat(
            dir.as_fd(),
            name,
            flags,
            Mode::empty(),
        )?))
    }
}
