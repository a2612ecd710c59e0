//! The set of changed paths waiting for a batch, and when the batch is due.
//!
//! Invariants:
//! - a path is held once; a tree covers every path below it (those are
//!   dropped); the state sent is read when the batch runs, so the newest
//!   state of each path wins;
//! - the set is bounded: past [`MAX_PATHS`] it collapses into "a full sync
//!   is needed" (with that reason), never into a silent loss;
//! - a batch is due `delay` after the last change, or `max_delay` after
//!   the first one, whichever comes first.

use super::watcher::Change;
use std::collections::BTreeMap;
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
}

impl Paths {
    pub fn is_empty(&self) -> bool {
        self.map.is_empty() && self.full.is_none()
    }
    pub fn len(&self) -> usize {
        self.map.len()
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
        if self.map.len() > MAX_PATHS {
            self.set_full(format!("more than {MAX_PATHS} paths changed at once"));
        }
    }

    pub fn set_full(&mut self, reason: String) {
        self.map.clear();
        if self.full.is_none() {
            self.full = Some(reason);
        }
    }

    /// Add all of `other`.
    pub fn merge(&mut self, other: Paths) {
        if let Some(r) = other.full {
            self.set_full(r);
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
