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
//! - no path is read through a symlink: a path whose parent is not a real
//!   directory (replaced by a symlink meanwhile) is not read, and is
//!   reported unknown (nothing there is deleted).

use super::dirty::Paths;
use crate::filter::Filter;
use crate::journal::PathError;
use crate::plan::{Entry, EntryKind, Scan, TreeBuilder, display_path, is_temp_name};
use std::collections::BTreeMap;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// The regions of a batch: path → whether its whole tree is included.
pub type Regions = BTreeMap<PathBuf, bool>;

fn source_kind(root: &Path, rel: &Path) -> Option<EntryKind> {
    let md = std::fs::symlink_metadata(root.join(rel)).ok()?;
    Some(Entry::from_metadata(&md, None).kind)
}

/// Widen the changed paths into regions (see the module's invariants).
pub fn regions(paths: &Paths, root: &Path, state: &BTreeMap<PathBuf, Entry>) -> Regions {
    let mut items: BTreeMap<PathBuf, bool> = BTreeMap::new();
    for (p, tree) in &paths.map {
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

/// Whether every parent of `rel` below the root is a real directory.
fn parents_are_dirs(root: &Path, rel: &Path) -> bool {
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        cur.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(md) if md.file_type().is_dir() => {}
            _ => return false,
        }
    }
    true
}

/// Scan the regions of the source, in path order.
pub fn scan(root: &Path, regions: &Regions, filter: &Filter) -> Scan {
    let mut scan = Scan {
        root: root.to_path_buf(),
        ..Default::default()
    };
    let mut b = TreeBuilder::default();
    for (p, tree) in regions {
        if !parents_are_dirs(root, p) {
            // a parent was replaced meanwhile: its own event covers it
            scan.unknown.insert(p.clone());
            continue;
        }
        let abs = root.join(p);
        let md = match std::fs::symlink_metadata(&abs) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                fail(&mut scan, p, format!("cannot stat: {e}"));
                continue;
            }
        };
        if let Some(e) = entry(&mut scan, p, &abs, &md) {
            let is_dir = e.kind == EntryKind::Dir;
            b.push(p, e);
            if *tree && is_dir {
                walk(&abs, p, filter, &mut scan, &mut b);
            }
        }
    }
    scan.entries = b.finish();
    scan
}

fn fail(scan: &mut Scan, rel: &Path, msg: String) {
    scan.errors.push(PathError {
        path: display_path(rel),
        message: msg,
    });
    scan.unknown.insert(rel.to_path_buf());
}

/// The entry for one path (`None`: special file or unreadable link,
/// recorded as unknown).
fn entry(scan: &mut Scan, rel: &Path, abs: &Path, md: &std::fs::Metadata) -> Option<Entry> {
    let ft = md.file_type();
    if ft.is_fifo() || ft.is_socket() || ft.is_block_device() || ft.is_char_device() {
        scan.warnings.push(PathError {
            path: display_path(rel),
            message: "special file (fifo, socket or device) skipped".into(),
        });
        scan.unknown.insert(rel.to_path_buf());
        return None;
    }
    let link = if ft.is_symlink() {
        match std::fs::read_link(abs) {
            Ok(l) => Some(l),
            Err(e) => {
                fail(scan, rel, format!("cannot read link: {e}"));
                return None;
            }
        }
    } else {
        None
    };
    Some(Entry::from_metadata(md, link))
}

/// Everything below one directory, in path order (names sorted, depth
/// first), symlinks not followed, excluded entries skipped.
fn walk(abs: &Path, rel: &Path, filter: &Filter, scan: &mut Scan, b: &mut TreeBuilder) {
    let rd = match std::fs::read_dir(abs) {
        Ok(rd) => rd,
        Err(e) => {
            fail(scan, rel, e.to_string());
            return;
        }
    };
    let mut names: Vec<(std::ffi::OsString, bool)> = Vec::new();
    for e in rd {
        match e {
            Ok(e) => {
                let child = rel.join(e.file_name());
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                if !is_temp_name(&child) && !filter.excluded(&child, is_dir) {
                    names.push((e.file_name(), is_dir));
                }
            }
            Err(e) => fail(scan, rel, e.to_string()),
        }
    }
    names.sort_unstable();
    for (name, _) in names {
        let (cabs, crel) = (abs.join(&name), rel.join(&name));
        let md = match std::fs::symlink_metadata(&cabs) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                fail(scan, &crel, format!("cannot stat: {e}"));
                continue;
            }
        };
        if let Some(e) = entry(scan, &crel, &cabs, &md) {
            let is_dir = e.kind == EntryKind::Dir;
            b.push(&crel, e);
            if is_dir {
                walk(&cabs, &crel, filter, scan, b);
            }
        }
    }
}

/// The target's entries in the regions, in path order. Files are given an
/// impossible mtime, so that every file in a changed region is sent again
/// (an event means the path is checked for real: an edit that keeps the
/// size and the mtime is still sent).
pub fn target_side(regions: &Regions, state: &BTreeMap<PathBuf, Entry>) -> Vec<(PathBuf, Entry)> {
    let mut out = Vec::new();
    let mut push = |p: &Path, e: &Entry| {
        let mut e = e.clone();
        if e.kind == EntryKind::File {
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
        let t = target_side(&reg, &state);
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
