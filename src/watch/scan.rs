//! The part of the source a batch looks at: the changed paths, widened so
//! that a plan over them alone is the plan a full run would make there.
//!
//! Invariants:
//! - a changed path brings its parent directory (as an entry only): the
//!   parent's mtime moves when an entry is created or removed in it;
//! - an entry is looked at alone only when it is a directory on both sides
//!   (source and target state); otherwise its whole tree is (a type change
//!   or a removal must see what the target holds below it);
//! - the region scanned in the source and the region taken from the
//!   target's state are exactly the same paths, so nothing outside the
//!   changed paths is ever planned, and nothing inside is missed;
//! - no path is read through a symlink: the regions are read relative to
//!   directory handles opened from the root a component at a time with
//!   `O_NOFOLLOW`, each checked to be the directory just stat'ed (device,
//!   inode), and the batch's copies open their files through those same
//!   directories (`SourceTree`); a path whose parent is not a real
//!   directory (replaced by a symlink meanwhile) is not read, and is
//!   reported unknown (nothing there is deleted);
//! - a moved tree (see `dirty`) is a tree region whose files are compared
//!   with the target's state by size and mtime instead of sent again.

use super::dirty::Paths;
use crate::filter::Filter;
use crate::journal::PathError;
use crate::plan::source::{self, DirIds};
use crate::plan::{Entry, EntryKind, Scan, Sorted, TreeBuilder, display_path};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::collections::{BTreeMap, HashMap};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The regions of a batch: path → whether its whole tree is included.
pub type Regions = BTreeMap<PathBuf, bool>;

fn source_kind(root: &Path, rel: &Path) -> Option<EntryKind> {
    let md = std::fs::symlink_metadata(root.join(rel)).ok()?;
    Some(Entry::from_metadata(&md, None).kind)
}

/// Widen the changed paths into regions (see the module's invariants).
pub fn regions(paths: &Paths, root: &Path, state: &BTreeMap<PathBuf, Entry>) -> Regions {
    let mut items: BTreeMap<PathBuf, bool> = BTreeMap::new();
    let moves = paths
        .moves
        .iter()
        .flat_map(|(f, t)| [(f, &true), (t, &true)]);
    for (p, tree) in paths.map.iter().chain(moves) {
        *items.entry(p.clone()).or_default() |= *tree;
        if let Some(parent) = p.parent() {
            items.entry(parent.to_path_buf()).or_default();
        }
    }
    let mut out = Paths::default();
    for (p, tree) in items {
        let both_dirs = source_kind(root, &p) == Some(EntryKind::Dir)
            && state.get(&p).is_some_and(|e| e.kind == EntryKind::Dir);
        out.add(if tree || !both_dirs {
            super::watcher::Change::Tree(p)
        } else {
            super::watcher::Change::Entry(p)
        });
    }
    out.map
}

/// Directory handles of one batch's scan, opened from the root handle a
/// component at a time (`O_NOFOLLOW`, device and inode checked against a
/// `statat` of the name just before), cached for the batch.
struct Dirs {
    open: HashMap<PathBuf, Arc<OwnedFd>>,
    ids: DirIds,
}

/// Why a region's parent could not be opened.
enum NoParent {
    /// not a directory (a symlink swapped in, a file), gone, or swapped
    /// meanwhile: its own event covers it
    Changed,
    /// it cannot be read (permissions)
    Io(PathBuf, std::io::Error),
}

impl Dirs {
    fn get(&mut self, rel: &Path) -> Result<Arc<OwnedFd>, NoParent> {
        if let Some(fd) = self.open.get(rel) {
            return Ok(fd.clone());
        }
        let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
            return Err(NoParent::Changed);
        };
        let pfd = self.get(parent)?;
        let st = match rustix::fs::statat(&*pfd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode as _) == FileType::Directory => st,
            Ok(_) => return Err(NoParent::Changed),
            Err(e) if e == rustix::io::Errno::NOENT => return Err(NoParent::Changed),
            Err(e) => return Err(NoParent::Io(rel.to_path_buf(), e.into())),
        };
        let fd = match source::open_checked(pfd.as_fd(), name, source::id(&st)) {
            Ok(fd) => Arc::new(fd),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(NoParent::Io(rel.to_path_buf(), e));
            }
            Err(_) => return Err(NoParent::Changed),
        };
        if self.open.len() >= 1024 {
            self.open.retain(|k, _| k.as_os_str().is_empty());
        }
        self.ids.insert(rel.to_path_buf(), source::id(&st));
        self.open.insert(rel.to_path_buf(), fd.clone());
        Ok(fd)
    }
}

/// Scan the regions of the source, in path order, relative to directory
/// handles from the root (as the full scan does): the scan keeps its root
/// handle and the directories' identities, so the batch's copies open
/// their files through the very directories scanned
/// ([`crate::plan::source::SourceTree`]).
pub fn scan(root: &Path, regions: &Regions, filter: &Filter) -> Scan {
    let mut scan = Scan {
        root: root.to_path_buf(),
        ..Default::default()
    };
    let (fd, st) = match source::open_root(root) {
        Ok(x) => x,
        Err(e) => {
            fail(
                &mut scan,
                Path::new(""),
                format!("cannot open the source: {e}"),
            );
            return scan;
        }
    };
    let fd = Arc::new(fd);
    let mut dirs = Dirs {
        open: HashMap::from([(PathBuf::new(), fd.clone())]),
        ids: DirIds::from([(PathBuf::new(), source::id(&st))]),
    };
    let mut b = TreeBuilder::default();
    for (p, tree) in regions {
        if p.as_os_str().is_empty() {
            b.push(p, source::entry_of(&st, None));
            if *tree {
                let here = rustix::fs::openat(&*fd, ".", read_dir_flags(), Mode::empty());
                match here {
                    Ok(d) => walk_into(d, p, filter, &mut scan, &mut b, &mut dirs.ids),
                    Err(e) => fail(&mut scan, p, e.to_string()),
                }
            }
            continue;
        }
        let name = p.file_name().unwrap_or_default();
        let pfd = match dirs.get(p.parent().unwrap_or(Path::new(""))) {
            Ok(fd) => fd,
            Err(NoParent::Changed) => {
                // a parent was replaced meanwhile: its own event covers it
                scan.unknown.insert(p.clone());
                continue;
            }
            Err(NoParent::Io(at, e)) => {
                fail(&mut scan, &at, e.to_string());
                scan.unknown.insert(p.clone());
                continue;
            }
        };
        one(
            &pfd,
            name,
            p,
            *tree,
            filter,
            &mut scan,
            &mut b,
            &mut dirs.ids,
        );
    }
    scan.entries = b.finish();
    scan.root_fd = Some(fd);
    scan.dir_ids = Arc::new(dirs.ids);
    scan
}

/// A path that could not be read: an error, and unknown (nothing at or
/// below it is deleted on the target, and the target's state there is
/// kept).
fn fail(scan: &mut Scan, rel: &Path, msg: String) {
    scan.errors.push(PathError {
        path: display_path(rel),
        message: msg,
    });
    scan.unknown.insert(rel.to_path_buf());
}

fn read_dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// One region: the entry `name` of the directory `pfd` (and, for a tree,
/// everything below it).
#[allow(clippy::too_many_arguments)]
fn one(
    pfd: &OwnedFd,
    name: &std::ffi::OsStr,
    rel: &Path,
    tree: bool,
    filter: &Filter,
    scan: &mut Scan,
    b: &mut TreeBuilder,
    ids: &mut DirIds,
) {
    let st = match rustix::fs::statat(pfd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(e) if e == rustix::io::Errno::NOENT => return,
        Err(e) => return fail(scan, rel, format!("cannot stat: {e}")),
    };
    match FileType::from_raw_mode(st.st_mode as _) {
        FileType::RegularFile => b.push(rel, source::entry_of(&st, None)),
        FileType::Symlink => match rustix::fs::readlinkat(pfd, name, Vec::new()) {
            Ok(l) => {
                let l = PathBuf::from(std::ffi::OsStr::from_bytes(l.as_bytes()));
                b.push(rel, source::entry_of(&st, Some(l)));
            }
            Err(e) => fail(scan, rel, format!("cannot read link: {e}")),
        },
        FileType::Directory => {
            b.push(rel, source::entry_of(&st, None));
            if !tree {
                return;
            }
            match source::open_checked(pfd.as_fd(), name, source::id(&st)) {
                Ok(d) => {
                    ids.insert(rel.to_path_buf(), source::id(&st));
                    walk_into(d, rel, filter, scan, b, ids);
                }
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                    fail(scan, rel, e.to_string())
                }
                // replaced meanwhile: its own event covers it
                Err(_) => {
                    scan.unknown.insert(rel.to_path_buf());
                }
            }
        }
        _ => {
            scan.warnings.push(PathError {
                path: display_path(rel),
                message: "special file (fifo, socket or device) skipped".into(),
            });
            scan.unknown.insert(rel.to_path_buf());
        }
    }
}

/// Everything below the directory `d` (the full scan's handle-based walk).
fn walk_into(
    d: OwnedFd,
    rel: &Path,
    filter: &Filter,
    scan: &mut Scan,
    b: &mut TreeBuilder,
    ids: &mut DirIds,
) {
    let mut found = Sorted::default();
    source::walk(d, rel, filter, scan, &mut found, ids);
    for (p, e) in found.iter() {
        b.push(p, e.clone());
    }
}

/// The target's entries in the regions, in path order. Files are given an
/// impossible mtime, so that every file in a changed region is sent again
/// (an event means the path is checked for real: an edit that keeps the
/// size and the mtime is still sent), except those `trusted` (moved there
/// on the target, unchanged since).
pub fn target_side(
    regions: &Regions,
    state: &BTreeMap<PathBuf, Entry>,
    trusted: &dyn Fn(&Path) -> bool,
) -> Vec<(PathBuf, Entry)> {
    let mut out = Vec::new();
    let mut push = |p: &Path, e: &Entry| {
        let mut e = e.clone();
        if e.kind == EntryKind::File && !trusted(p) {
            e.mtime = i64::MIN;
        }
        out.push((p.to_path_buf(), e));
    };
    for (p, tree) in regions {
        if *tree {
            for (k, e) in state.range::<Path, _>((
                std::ops::Bound::Included(p.as_path()),
                std::ops::Bound::Unbounded,
            )) {
                if !k.starts_with(p) {
                    break;
                }
                push(k, e);
            }
        } else if let Some(e) = state.get(p) {
            push(p, e);
        }
    }
    out
}

/// Replace the regions of `state` with what the scan found there.
pub fn update_state(state: &mut BTreeMap<PathBuf, Entry>, regions: &Regions, scan: &Scan) {
    for (p, tree) in regions {
        if *tree {
            let gone: Vec<PathBuf> = state
                .range::<Path, _>((
                    std::ops::Bound::Included(p.as_path()),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(k, _)| k.starts_with(p))
                .map(|(k, _)| k.clone())
                .collect();
            for k in gone {
                state.remove(&k);
            }
        } else {
            state.remove(p);
        }
    }
    for (p, e) in scan.entries.iter() {
        if e.kind != EntryKind::Special {
            state.insert(p.to_path_buf(), e.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn st(root: &Path) -> BTreeMap<PathBuf, Entry> {
        let s = crate::plan::scan_source(root, &Filter::default()).unwrap();
        s.entries
            .iter()
            .map(|(p, e)| (p.to_path_buf(), e.clone()))
            .collect()
    }

    #[test]
    fn regions_widen_type_changes_and_add_parents() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("a/b")).unwrap();
        fs::write(r.join("a/b/f"), "x").unwrap();
        fs::write(r.join("a/g"), "x").unwrap();
        let state = st(r);
        let mut paths = Paths::default();
        paths.map.insert(PathBuf::from("a/b"), false);
        paths.map.insert(PathBuf::from("a/g"), false);
        // dir on both sides: entry only; its parent as an entry
        let reg = regions(&paths, r, &state);
        assert_eq!(reg.get(Path::new("a/b")), Some(&false));
        assert_eq!(reg.get(Path::new("a")), Some(&false));
        // now a/b is a file in the source: the tree of the state's a/b
        fs::remove_dir_all(r.join("a/b")).unwrap();
        fs::write(r.join("a/b"), "now a file").unwrap();
        let reg = regions(&paths, r, &state);
        assert_eq!(reg.get(Path::new("a/b")), Some(&true));
        let t = target_side(&reg, &state, &|_| false);
        let names: Vec<_> = t.iter().map(|(p, _)| p.to_str().unwrap()).collect();
        assert_eq!(names, vec!["a", "a/b", "a/b/f", "a/g"]);
        assert!(
            t.iter()
                .filter(|(_, e)| e.kind == EntryKind::File)
                .all(|(_, e)| e.mtime == i64::MIN)
        );
        let s = scan(r, &reg, &Filter::default());
        let names: Vec<_> = s
            .entries
            .iter()
            .map(|(p, _)| p.to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, vec!["a", "a/b", "a/g"]);
    }

    #[test]
    fn a_new_tree_is_scanned_whole_and_excludes_hold() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("n/b/c")).unwrap();
        fs::create_dir_all(r.join("n/cache")).unwrap();
        fs::write(r.join("n/b/c/f"), "x").unwrap();
        fs::write(r.join("n/cache/x"), "x").unwrap();
        fs::write(r.join("n/b/.syncjob-tmp.1.2.f"), "x").unwrap();
        let mut paths = Paths::default();
        paths.map.insert(PathBuf::from("n"), true);
        let reg = regions(&paths, r, &BTreeMap::new());
        let s = scan(r, &reg, &Filter::new(&["cache/"]).unwrap());
        let names: Vec<_> = s
            .entries
            .iter()
            .map(|(p, _)| p.to_str().unwrap().to_string())
            .collect();
        assert_eq!(names, vec!["", "n", "n/b", "n/b/c", "n/b/c/f"]);
    }

    #[test]
    fn nothing_is_read_through_a_symlinked_parent() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "s").unwrap();
        let r = d.path().join("src");
        fs::create_dir(&r).unwrap();
        std::os::unix::fs::symlink(outside.path(), r.join("a")).unwrap();
        let mut paths = Paths::default();
        paths.map.insert(PathBuf::from("a/secret"), false);
        let reg = regions(&paths, &r, &BTreeMap::new());
        let s = scan(&r, &reg, &Filter::default());
        assert!(s.entries.iter().all(|(p, _)| p != Path::new("a/secret")));
        assert_eq!(
            s.entries.get(Path::new("a")).unwrap().kind,
            EntryKind::Symlink
        );
        // a deeper path under the link is not read either
        let mut deep = BTreeMap::new();
        deep.insert(PathBuf::from("a/secret"), false);
        let s = scan(&r, &deep, &Filter::default());
        assert!(s.entries.is_empty());
        assert!(s.unknown.contains(Path::new("a/secret")));
    }
}
