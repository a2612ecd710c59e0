//! The set of changed paths waiting for a batch, and when the batch is due.
//!
//! Invariants:
//! - a path is held once; a tree covers every path below it (those are
//!   dropped); the state sent is read when the batch runs, so the newest
//!   state of each path wins;
//! - the set is bounded: past [`MAX_PATHS`] it collapses into "a full sync
//!   is needed" (with that reason), never into a silent loss;
//! - a batch is due `delay` after the last change, or `max_delay` after
//!   the first one, whichever comes first;
//! - a rename inside the tree is kept as a move, in order: paths already
//!   held below its old name move with it (an edit just before a move is
//!   still sent), and its new name is a tree whose files are compared with
//!   what the target holds (moved there) rather than sent again ([`Paths::trusted`]);
//!   a move that cannot be told apart from other changes held (its old
//!   name inside a changed tree, say) is kept as two changed trees.

use super::watcher::Change;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Changed paths held at most; more at once make a full sync.
pub const MAX_PATHS: usize = 100_000;

/// Changed paths: path → whether the whole tree below it changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Paths {
    pub map: BTreeMap<PathBuf, bool>,
    /// a full sync is needed, and why
    pub full: Option<String>,
    /// renames inside the tree, in the order they happened
    pub moves: Vec<(PathBuf, PathBuf)>,
    /// where moved trees are now: compared, not sent again (unless a
    /// changed path covers them)
    pub moved: BTreeSet<PathBuf>,
}

/// `p` with its prefix `from` replaced by `to` (`None`: not below `from`).
fn rebase(p: &Path, from: &Path, to: &Path) -> Option<PathBuf> {
    let rest = p.strip_prefix(from).ok()?;
    Some(if rest.as_os_str().is_empty() {
        to.to_path_buf()
    } else {
        to.join(rest)
    })
}

impl Paths {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty() && self.full.is_none() && self.moves.is_empty()
    }
    pub fn len(&self) -> usize {
        self.map.len() + self.moves.len()
    }

    /// Whether the file at `p` can be compared with the target's state
    /// instead of sent again: it lies in a moved tree, and no changed path
    /// holds it.
    pub fn trusted(&self, p: &Path) -> bool {
        p.ancestors().any(|a| self.moved.contains(a))
            && !self.map.contains_key(p)
            && !self.covered(p)
    }

    /// A rename from `from` to `to` (see the module's invariants).
    fn add_move(&mut self, from: PathBuf, to: PathBuf) {
        let tangled = self.covered(&from)
            || self.map.get(&from) == Some(&true)
            || self.covered(&to)
            || self.map.contains_key(&to);
        if tangled {
            self.add(Change::Tree(from));
            self.add(Change::Tree(to));
            return;
        }
        let below: Vec<(PathBuf, bool)> = self
            .map
            .range::<Path, _>((
                std::ops::Bound::Included(from.as_path()),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(k, _)| k.starts_with(&from))
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        for (k, v) in below {
            self.map.remove(&k);
            if let Some(n) = rebase(&k, &from, &to) {
                self.map.insert(n, v);
            }
        }
        let moved: Vec<PathBuf> = self
            .moved
            .iter()
            .filter(|m| m.starts_with(&from))
            .cloned()
            .collect();
        for m in moved {
            self.moved.remove(&m);
            if let Some(n) = rebase(&m, &from, &to) {
                self.moved.insert(n);
            }
        }
        self.moved.insert(to.clone());
        self.moves.push((from, to));
    }

    /// Whether `p` is inside a tree already held (strictly above it).
    fn covered(&self, p: &Path) -> bool {
        p.ancestors()
            .skip(1)
            .any(|a| self.map.get(a).copied().unwrap_or(false))
    }

    pub fn add(&mut self, c: Change) {
        if self.full.is_some() {
            return;
        }
        let (p, tree) = match c {
            Change::Entry(p) => (p, false),
            Change::Tree(p) => (p, true),
            Change::Move(from, to) => return self.add_move(from, to),
        };
        if self.covered(&p) {
            return;
        }
        if tree {
            // drop what the tree now covers
            let below: Vec<PathBuf> = self
                .map
                .range::<Path, _>((
                    std::ops::Bound::Excluded(p.as_path()),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(k, _)| k.starts_with(&p))
                .map(|(k, _)| k.clone())
                .collect();
            for k in below {
                self.map.remove(&k);
            }
        }
        let e = self.map.entry(p).or_insert(false);
        *e |= tree;
        if self.map.len() + self.moves.len() > MAX_PATHS {
            self.set_full(format!("more than {MAX_PATHS} paths changed at once"));
        }
    }

    pub fn set_full(&mut self, reason: String) {
        self.map.clear();
        self.moves.clear();
        self.moved.clear();
        if self.full.is_none() {
            self.full = Some(reason);
        }
    }

    /// Add all of `other`.
    pub fn merge(&mut self, other: Paths) {
        if let Some(r) = other.full {
            self.set_full(r);
        }
        // (other's paths are named as after its moves; ours as before them)
        for (from, to) in other.moves {
            self.add(Change::Move(from, to));
        }
        if self.full.is_none() {
            self.moved.extend(other.moved);
        }
        for (p, tree) in other.map {
            self.add(if tree {
                Change::Tree(p)
            } else {
                Change::Entry(p)
            });
        }
    }
}

/// The changes gathered since the last batch, with their timing.
#[derive(Debug, Default)]
pub struct Gather {
    pub paths: Paths,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Gather {
    pub fn add(&mut self, c: Change, now: Instant) {
        self.paths.add(c);
        self.touch(now);
    }
    pub fn full(&mut self, reason: String, now: Instant) {
        self.paths.set_full(reason);
        self.touch(now);
    }
    fn touch(&mut self, now: Instant) {
        self.first.get_or_insert(now);
        self.last = Some(now);
    }

    /// When the batch is due (`None`: nothing gathered).
    pub fn due(&self, delay: Duration, max_delay: Duration) -> Option<Instant> {
        let (first, last) = (self.first?, self.last?);
        Some((last + delay).min(first + max_delay))
    }

    pub fn take(&mut self) -> Paths {
        self.first = None;
        self.last = None;
        std::mem::take(&mut self.paths)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn a_tree_covers_what_is_below_it() {
        let mut d = Paths::default();
        d.add(Change::Entry(p("a/b/f")));
        d.add(Change::Entry(p("a-b")));
        d.add(Change::Tree(p("a")));
        d.add(Change::Entry(p("a/c")));
        assert_eq!(
            d.map.into_iter().collect::<Vec<_>>(),
            vec![(p("a"), true), (p("a-b"), false)]
        );
    }

    #[test]
    fn a_move_carries_the_paths_below_it_and_its_tree_is_trusted() {
        let mut d = Paths::default();
        d.add(Change::Entry(p("a/f")));
        d.add(Change::Move(p("a"), p("b")));
        // the edit before the move is now at the new name, still sent
        assert_eq!(d.map.get(Path::new("b/f")), Some(&false));
        assert!(!d.map.contains_key(Path::new("a/f")));
        assert!(!d.trusted(Path::new("b/f")));
        assert!(d.trusted(Path::new("b/g")));
        assert!(!d.trusted(Path::new("c")));
        // moved on again: one trusted tree at the last name
        d.add(Change::Move(p("b"), p("c")));
        assert_eq!(d.moves, vec![(p("a"), p("b")), (p("b"), p("c"))]);
        assert!(d.trusted(Path::new("c/g")) && !d.trusted(Path::new("b/g")));
        // a change inside the moved tree afterwards is sent
        d.add(Change::Tree(p("c/sub")));
        assert!(!d.trusted(Path::new("c/sub/x")));
        // a move out of a tree created in this batch: two changed trees
        let mut e = Paths::default();
        e.add(Change::Tree(p("new")));
        e.add(Change::Move(p("new"), p("old")));
        assert!(e.moves.is_empty());
        assert_eq!(e.map.get(Path::new("old")), Some(&true));
        // merged: the moves replay, in order
        let mut m = Paths::default();
        m.add(Change::Entry(p("a/f")));
        m.merge(d.clone());
        assert_eq!(m.moves, d.moves);
        assert_eq!(m.map.get(Path::new("c/f")), Some(&false));
    }

    #[test]
    fn too_many_paths_become_a_full_sync() {
        let mut d = Paths::default();
        for i in 0..=MAX_PATHS {
            d.add(Change::Entry(p(&format!("f{i}"))));
        }
        assert!(d.map.is_empty());
        assert!(d.full.as_deref().unwrap().contains("paths changed at once"));
    }

    #[test]
    fn due_after_quiet_or_max_delay() {
        let t0 = Instant::now();
        let mut g = Gather::default();
        assert_eq!(
            g.due(Duration::from_millis(100), Duration::from_secs(2)),
            None
        );
        g.add(Change::Entry(p("x")), t0);
        let d = Duration::from_millis(100);
        let m = Duration::from_secs(2);
        assert_eq!(g.due(d, m), Some(t0 + d));
        // events every 50 ms keep pushing the quiet point, up to max_delay
        for i in 1..100 {
            g.add(Change::Entry(p("x")), t0 + Duration::from_millis(50 * i));
        }
        assert_eq!(g.due(d, m), Some(t0 + m));
        let taken = g.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(g.due(d, m), None);
    }
}
