//! The scan's walk with the root's subdirectories shared among threads.
//!
//! The root is read and its names stat'ed here, as [`super::walk`] does;
//! each subdirectory's subtree is then walked by one of a few threads, with
//! the same [`super::walk`] (the same handles, checks and records), into a
//! part of its own. The parts are put back in name order as they come, so
//! the entries are exactly the sequential walk's, in the same `Path` order.
//!
//! Invariants:
//! - Every subtree is walked by the sequential code; only the root's names
//!   are looked at here. A thread holds one handle per level of depth of
//!   the subtree it walks, as the sequential walk does.
//! - The entries, directory ids, unknown paths and counts equal the
//!   sequential walk's (a unit test compares them); of the errors and
//!   warnings, the root's come first, then each subtree's in name order;
//!   vanished-entry warnings stay bounded as in the sequential walk.
//! - One thread (the sequential walk) where the machine has one core.

use super::{Child, DirIds, VANISHED_SHOWN, descend, sorted_names, stat_child};
use crate::filter::Filter;
use crate::plan::{Entry, Scan, Sorted};
use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// At most this many threads walk subtrees (and at most the cores).
const MAX_THREADS: usize = 4;

/// What one thread gathered below one subdirectory of the root.
#[derive(Default)]
struct Part {
    scan: Scan,
    found: Sorted,
    dirs: DirIds,
}

/// A subdirectory of the root to walk: its name, path and identity.
type Task = (OsString, PathBuf, (u64, u64));

/// [`super::walk`] of the root `dir` (the path `rel`), its subdirectories'
/// subtrees walked by up to [`MAX_THREADS`] threads.
pub fn walk(
    dir: OwnedFd,
    rel: &Path,
    filter: &Filter,
    scan: &mut Scan,
    found: &mut Sorted,
    dirs: &mut DirIds,
) {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_THREADS);
    if threads < 2 {
        return super::walk(dir, rel, filter, scan, found, dirs);
    }
    let Some((d, names)) = sorted_names(dir, rel, filter, scan) else {
        return;
    };
    let Ok(fd) = d.fd() else { return };
    // the root's entries in name order; a subdirectory's subtree is task k
    let mut items: Vec<(PathBuf, Entry, Option<usize>)> = Vec::with_capacity(names.len());
    let mut tasks: Vec<Task> = Vec::new();
    for name in names {
        let child = rel.join(&name);
        match stat_child(fd, &name, &child, scan) {
            Child::Skip => {}
            Child::Leaf(e) => items.push((child, e, None)),
            Child::Dir(e, want) => {
                items.push((child.clone(), e, Some(tasks.len())));
                tasks.push((name, child, want));
            }
        }
    }
    let next = AtomicUsize::new(0);
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Part)>();
    std::thread::scope(|sc| {
        for _ in 0..threads.min(tasks.len()) {
            let (tx, next, tasks) = (tx.clone(), &next, &tasks);
            sc.spawn(move || {
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    let Some((name, child, want)) = tasks.get(k) else {
                        break;
                    };
                    let mut p = Part::default();
                    let acc = (&mut p.scan, &mut p.found, &mut p.dirs);
                    descend(fd, name, child.clone(), *want, filter, acc);
                    if tx.send((k, p)).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        assemble(items, &rx, (scan, found, dirs));
    });
}

/// Push the root's entries in order, each subdirectory's part after its
/// entry (parts that come early are held until their turn).
fn assemble(
    items: Vec<(PathBuf, Entry, Option<usize>)>,
    rx: &std::sync::mpsc::Receiver<(usize, Part)>,
    acc: (&mut Scan, &mut Sorted, &mut DirIds),
) {
    let (scan, found, dirs) = acc;
    let mut held: HashMap<usize, Part> = HashMap::new();
    for (child, e, task) in items {
        found.push(&child, e);
        let Some(k) = task else { continue };
        let part = loop {
            if let Some(p) = held.remove(&k) {
                break p;
            }
            match rx.recv() {
                Ok((i, p)) => {
                    held.insert(i, p);
                }
                // every thread ended without this part: one panicked, and
                // the scope raises that panic as soon as this returns
                Err(_) => return,
            }
        };
        merge(part, scan, found, dirs);
    }
}

fn merge(p: Part, scan: &mut Scan, found: &mut Sorted, dirs: &mut DirIds) {
    found.append(p.found);
    dirs.extend(p.dirs);
    scan.errors.extend(p.scan.errors);
    for w in p.scan.warnings {
        if w.message == super::VANISHED && scan.warnings.len() >= VANISHED_SHOWN {
            continue;
        }
        scan.warnings.push(w);
    }
    scan.vanished += p.scan.vanished;
    scan.unknown.extend(p.scan.unknown);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    /// A tree with files at the root and in nested directories, symlinks
    /// (one dangling, one to a directory), a fifo, an excluded directory,
    /// an empty one and a name of syncjob's temporary form.
    fn tree(r: &Path) {
        for top in ["a", "b", "c", "d", "e.d", "z"] {
            for (k, sub) in ["", "x", "x/y", "w"].iter().enumerate() {
                let d = r.join(top).join(sub);
                fs::create_dir_all(&d).unwrap();
                for f in 0..(3 + k * 5) {
                    fs::write(d.join(format!("f{f}")), format!("{top}{sub}{f}")).unwrap();
                }
            }
        }
        fs::write(r.join("root.txt"), "r").unwrap();
        fs::write(r.join("a.txt"), "between a and b").unwrap();
        symlink("a/x", r.join("link-to-dir")).unwrap();
        symlink("nowhere", r.join("b/dangling")).unwrap();
        fs::create_dir_all(r.join("cache/deep")).unwrap();
        fs::write(r.join("cache/deep/big"), "skipped").unwrap();
        fs::create_dir(r.join("empty")).unwrap();
        fs::write(r.join("c/.syncjob-tmp.1.2.f"), "x").unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            r.join("d/x/pipe").as_path(),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    }

    /// Entries, directory ids (sorted) and the rest of the scan.
    type Walked = (Vec<(PathBuf, Entry)>, Vec<(PathBuf, (u64, u64))>, Scan);

    fn run(r: &Path, par: bool) -> Walked {
        let filter = Filter::new(&["/cache/"]).unwrap();
        let (fd, _) = super::super::open_root(r).unwrap();
        let mut scan = Scan::default();
        let (mut found, mut dirs) = (Sorted::default(), DirIds::new());
        if par {
            walk(fd, Path::new(""), &filter, &mut scan, &mut found, &mut dirs);
        } else {
            super::super::walk(fd, Path::new(""), &filter, &mut scan, &mut found, &mut dirs);
        }
        let entries = found
            .iter()
            .map(|(p, e)| (p.to_path_buf(), e.clone()))
            .collect();
        let mut ids: Vec<_> = dirs.into_iter().collect();
        ids.sort();
        (entries, ids, scan)
    }

    #[test]
    fn the_parallel_walk_finds_exactly_what_the_sequential_one_does() {
        let d = tempfile::tempdir().unwrap();
        tree(d.path());
        let (se, sd, ss) = run(d.path(), false);
        let (pe, pd, ps) = run(d.path(), true);
        assert!(se.len() > 100, "{} entries", se.len());
        assert_eq!(se, pe);
        assert_eq!(sd, pd);
        assert_eq!(ss.unknown, ps.unknown);
        assert!(ps.unknown.contains(Path::new("d/x/pipe")));
        assert_eq!(ss.vanished, ps.vanished);
        let msgs = |s: &Scan| {
            let mut v: Vec<String> = s
                .errors
                .iter()
                .chain(&s.warnings)
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect();
            v.sort();
            v
        };
        assert_eq!(msgs(&ss), msgs(&ps));
        assert_eq!(msgs(&ps).len(), 2, "{:?}", msgs(&ps));
        let paths: Vec<&Path> = pe.iter().map(|(p, _)| p.as_path()).collect();
        assert!(paths.windows(2).all(|w| w[0] < w[1]), "in Path order");
        assert!(!paths.iter().any(|p| p.starts_with("cache")));
    }

    /// A root without subdirectories (no task), and an empty one.
    #[test]
    fn a_root_with_only_files_or_nothing_walks_too() {
        let d = tempfile::tempdir().unwrap();
        for n in 0..5 {
            fs::write(d.path().join(format!("f{n}")), "x").unwrap();
        }
        let (se, _, _) = run(d.path(), false);
        let (pe, _, _) = run(d.path(), true);
        assert_eq!(se, pe);
        let e = tempfile::tempdir().unwrap();
        let (pe, pd, ps) = run(e.path(), true);
        assert!(pe.is_empty() && pd.is_empty() && ps.errors.is_empty());
    }
}
