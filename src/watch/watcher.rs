//! inotify watches over one source tree, turned into changed paths.
//!
//! Invariants:
//! - every directory of the tree that is not excluded has a watch, added
//!   before it is scanned: a directory created later gets its watch when
//!   its creation is read, and is then reported whole ([`Change::Tree`]),
//!   so whatever was created inside it before the watch existed is picked
//!   up by the batch that scans it (`mkdir -p a/b/c; touch a/b/c/f`);
//! - excluded paths (and syncjob's own temporary names) are neither
//!   watched nor reported;
//! - a lost event never goes unnoticed: a queue overflow
//!   ([`Signal::Overflow`]) or a watch removed by the kernel without its
//!   directory being deleted ([`Signal::Lost`]) is reported, and so is the
//!   source root going away ([`Signal::RootGone`]);
//! - the watch limit (`ENOSPC` from `inotify_add_watch`) is a
//!   [`WatchError::Limit`] that names `fs.inotify.max_user_watches` and the
//!   number of watches the tree needs.
//!
//! Paths are relative to the source root (the root is `""`).

use crate::filter::Filter;
use crate::plan::is_temp_name;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Test-only knob: pretend the watch limit is this many watches
/// (`ENOSPC` past it), so the limit can be tested without changing the
/// machine's sysctl.
pub const TEST_MAX_WATCHES_ENV: &str = "SYNCJOB_TEST_MAX_WATCHES";

/// A changed path, as reported by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The entry at this path (its content, attributes, existence); for a
    /// directory, its own attributes only.
    Entry(PathBuf),
    /// The entry and everything below it (a directory created, moved in or
    /// out, deleted).
    Tree(PathBuf),
    /// The entry (and everything below it) was renamed from the first path
    /// to the second, both inside the tree and not excluded (an
    /// `IN_MOVED_FROM`/`IN_MOVED_TO` pair with one cookie).
    Move(PathBuf, PathBuf),
}

/// One raw event: watch, mask, cookie, name.
type Raw = (i32, EventMask, u32, Option<PathBuf>);

/// How far after an `IN_MOVED_FROM` its `IN_MOVED_TO` is looked for (the
/// kernel queues the two back to back; other events may slip between).
const PAIR_WINDOW: usize = 16;

/// Something that makes the changed paths incomplete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// The kernel's event queue overflowed: events were dropped.
    Overflow,
    /// A watch was removed by the kernel (unmount, ...): changes below this
    /// directory would go unseen.
    Lost(PathBuf),
    /// The source root was deleted or moved away.
    RootGone,
}

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error(
        "the inotify watch limit is reached: watching {root} needs {needed} watches (one per directory) and fs.inotify.max_user_watches is {max}; raise it, e.g. `sysctl fs.inotify.max_user_watches={suggest}` (and in /etc/sysctl.d/ to keep it)"
    )]
    Limit {
        root: String,
        needed: u64,
        max: u64,
        suggest: u64,
    },
    #[error("cannot watch {0}: {1}")]
    Io(String, io::Error),
}

/// Counters a caller (status, metrics) may read at any time.
#[derive(Debug, Default)]
pub struct Stats {
    pub watches: AtomicU64,
    pub overflows: AtomicU64,
    pub lost: AtomicU64,
}

pub struct Watcher {
    ino: Inotify,
    root: PathBuf,
    filter: Filter,
    by_wd: HashMap<i32, PathBuf>,
    by_path: HashMap<PathBuf, WatchDescriptor>,
    buf: Vec<u8>,
    max_watches: Option<usize>,
    stats: Arc<Stats>,
}

fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MODIFY
        | WatchMask::CLOSE_WRITE
        | WatchMask::ATTRIB
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
        | WatchMask::ONLYDIR
        | WatchMask::DONT_FOLLOW
        | WatchMask::EXCL_UNLINK
}

fn read_sysctl(name: &str) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/sys/fs/inotify/{name}"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

impl Watcher {
    pub fn new(root: &Path, filter: Filter) -> io::Result<Watcher> {
        let max_watches = std::env::var(TEST_MAX_WATCHES_ENV)
            .ok()
            .and_then(|v| v.parse().ok());
        Ok(Watcher {
            ino: Inotify::init()?,
            root: root.to_path_buf(),
            filter,
            by_wd: HashMap::new(),
            by_path: HashMap::new(),
            buf: vec![0; 64 << 10],
            max_watches,
            stats: Arc::new(Stats::default()),
        })
    }

    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    pub fn watch_count(&self) -> usize {
        self.by_wd.len()
    }

    /// Watch every directory of the tree (those already watched keep their
    /// watch). Returns the number of watches.
    pub fn watch_all(&mut self) -> Result<usize, WatchError> {
        self.watch_tree(Path::new(""), &mut |_| {})?;
        Ok(self.by_wd.len())
    }

    /// Remove every watch (the tree is watched again by `watch_all`).
    pub fn clear(&mut self) {
        for (_, wd) in self.by_path.drain() {
            let _ = self.ino.watches().remove(wd);
        }
        self.by_wd.clear();
        self.update_count();
    }

    fn update_count(&self) {
        self.stats
            .watches
            .store(self.by_wd.len() as u64, Ordering::Relaxed);
    }

    fn add_one(&mut self, rel: &Path) -> io::Result<()> {
        if self
            .max_watches
            .is_some_and(|m| self.by_wd.len() >= m && !self.by_path.contains_key(rel))
        {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let wd = self.ino.watches().add(self.root.join(rel), mask())?;
        if let Some(old) = self
            .by_wd
            .insert(wd.get_watch_descriptor_id(), rel.to_path_buf())
            && old != rel
        {
            // the same directory seen under a new name (moved): forget the old
            self.by_path.remove(&old);
        }
        self.by_path.insert(rel.to_path_buf(), wd);
        Ok(())
    }

    /// Watch `rel` and every directory below it (watch first, then read
    /// the directory, so nothing created meanwhile is missed); `found` is
    /// called with each directory watched.
    fn watch_tree(&mut self, rel: &Path, found: &mut dyn FnMut(&Path)) -> Result<(), WatchError> {
        let mut stack = vec![rel.to_path_buf()];
        while let Some(d) = stack.pop() {
            match self.add_one(&d) {
                Ok(()) => found(&d),
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                    self.update_count();
                    return Err(self.limit_error());
                }
                // vanished or replaced meanwhile: its own event says so
                Err(e)
                    if d.as_os_str().is_empty()
                        || !matches!(
                            e.raw_os_error(),
                            Some(libc::ENOENT | libc::ENOTDIR | libc::EACCES)
                        ) =>
                {
                    self.update_count();
                    return Err(WatchError::Io(self.root.join(&d).display().to_string(), e));
                }
                Err(_) => continue,
            }
            let Ok(rd) = std::fs::read_dir(self.root.join(&d)) else {
                continue;
            };
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let child = d.join(e.file_name());
                    if !is_temp_name(&child) && !self.filter.excluded(&child, true) {
                        stack.push(child);
                    }
                }
            }
        }
        self.update_count();
        Ok(())
    }

    fn limit_error(&self) -> WatchError {
        let max = self
            .max_watches
            .map(|m| m as u64)
            .or_else(|| read_sysctl("max_user_watches"))
            .unwrap_or(0);
        let needed = count_dirs(&self.root, &self.filter);
        WatchError::Limit {
            root: self.root.display().to_string(),
            needed,
            max,
            suggest: (needed + needed / 2).max(max * 2).next_power_of_two(),
        }
    }

    /// Forget the watches at and below `rel` (removed from the kernel too
    /// when `remove`).
    fn forget_tree(&mut self, rel: &Path, remove: bool) {
        let gone: Vec<PathBuf> = self
            .by_path
            .keys()
            .filter(|p| p.starts_with(rel))
            .cloned()
            .collect();
        for p in gone {
            if let Some(wd) = self.by_path.remove(&p) {
                self.by_wd.remove(&wd.get_watch_descriptor_id());
                if remove {
                    let _ = self.ino.watches().remove(wd);
                }
            }
        }
        self.update_count();
    }

    /// Wait until events can be read, at most `timeout`.
    pub fn wait(&self, timeout: Duration) -> bool {
        let mut fds = [libc::pollfd {
            fd: self.ino.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }];
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, ms) };
        n > 0
    }

    /// Read the events queued now (never blocks) into changes and signals.
    pub fn read(
        &mut self,
        changes: &mut dyn FnMut(Change),
        signals: &mut dyn FnMut(Signal),
    ) -> Result<(), WatchError> {
        // everything queued now, so that a move's two halves meet
        let mut events: Vec<Raw> = Vec::new();
        loop {
            let mut buf = std::mem::take(&mut self.buf);
            let before = events.len();
            match self.ino.read_events(&mut buf) {
                Ok(evs) => events.extend(evs.map(|e| {
                    (
                        e.wd.get_watch_descriptor_id(),
                        e.mask,
                        e.cookie,
                        e.name.map(|n: &OsStr| PathBuf::from(n)),
                    )
                })),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    self.buf = buf;
                    return Err(WatchError::Io(self.root.display().to_string(), e));
                }
            }
            self.buf = buf;
            if events.len() == before {
                break;
            }
        }
        let mut paired = vec![false; events.len()];
        for i in 0..events.len() {
            if paired[i] {
                continue;
            }
            let (wd, m, cookie, name) = events[i].clone();
            if m.contains(EventMask::MOVED_FROM)
                && let Some(j) = (i + 1..events.len().min(i + 1 + PAIR_WINDOW))
                    .find(|&j| events[j].1.contains(EventMask::MOVED_TO) && events[j].2 == cookie)
                && let Some(c) = self.moved(&events[i], &events[j])
            {
                paired[j] = true;
                changes(c);
                continue;
            }
            self.event(wd, m, name, changes, signals)?;
        }
        Ok(())
    }

    /// A rename inside the tree, both names not excluded: the watches at
    /// and below the old name now carry the new one. `None`: not such a
    /// move (each half is then an event of its own).
    fn moved(&mut self, from: &Raw, to: &Raw) -> Option<Change> {
        let old = self.by_wd.get(&from.0)?.join(from.3.as_ref()?);
        let new = self.by_wd.get(&to.0)?.join(to.3.as_ref()?);
        let is_dir = from.1.contains(EventMask::ISDIR);
        let skip = |w: &Watcher, p: &Path| {
            p.as_os_str().is_empty() || is_temp_name(p) || w.filter.excluded_with_parents(p, is_dir)
        };
        if skip(self, &old) || skip(self, &new) || new.starts_with(&old) {
            return None;
        }
        if is_dir {
            self.rename_watches(&old, &new);
            // what the new place's excludes let in is watched too
            if self.watch_tree(&new, &mut |_| {}).is_err() {
                return None;
            }
        }
        Some(Change::Move(old, new))
    }

    /// The watches at and below `old` are now at and below `new`.
    fn rename_watches(&mut self, old: &Path, new: &Path) {
        // whatever was watched at the new name was replaced
        self.forget_tree(new, true);
        let moved: Vec<PathBuf> = self
            .by_path
            .keys()
            .filter(|p| p.starts_with(old))
            .cloned()
            .collect();
        for p in moved {
            let Some(wd) = self.by_path.remove(&p) else {
                continue;
            };
            let q = match p.strip_prefix(old) {
                Ok(rest) if !rest.as_os_str().is_empty() => new.join(rest),
                _ => new.to_path_buf(),
            };
            self.by_wd.insert(wd.get_watch_descriptor_id(), q.clone());
            self.by_path.insert(q, wd);
        }
        self.update_count();
    }

    fn event(
        &mut self,
        wd: i32,
        m: EventMask,
        name: Option<PathBuf>,
        changes: &mut dyn FnMut(Change),
        signals: &mut dyn FnMut(Signal),
    ) -> Result<(), WatchError> {
        if m.contains(EventMask::Q_OVERFLOW) {
            self.stats.overflows.fetch_add(1, Ordering::Relaxed);
            signals(Signal::Overflow);
            return Ok(());
        }
        let Some(dir) = self.by_wd.get(&wd).cloned() else {
            // a watch already forgotten (its directory deleted or moved)
            return Ok(());
        };
        let Some(name) = name else {
            return self.self_event(&dir, m, changes, signals);
        };
        let rel = dir.join(&name);
        let is_dir = m.contains(EventMask::ISDIR);
        if is_temp_name(&rel) || self.filter.excluded_with_parents(&rel, is_dir) {
            return Ok(());
        }
        if !is_dir {
            changes(Change::Entry(rel));
            return Ok(());
        }
        if m.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
            // watch it before its contents are read by the batch
            self.watch_tree(&rel, &mut |_| {})?;
            changes(Change::Tree(rel));
        } else if m.intersects(EventMask::MOVED_FROM | EventMask::DELETE) {
            self.forget_tree(&rel, m.contains(EventMask::MOVED_FROM));
            changes(Change::Tree(rel));
        } else {
            changes(Change::Entry(rel));
        }
        Ok(())
    }

    /// An event about a watched directory itself.
    fn self_event(
        &mut self,
        dir: &Path,
        m: EventMask,
        changes: &mut dyn FnMut(Change),
        signals: &mut dyn FnMut(Signal),
    ) -> Result<(), WatchError> {
        let root = dir.as_os_str().is_empty();
        if m.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF) {
            if root {
                self.clear();
                signals(Signal::RootGone);
            } else if m.contains(EventMask::DELETE_SELF) {
                // its parent reports the deletion too
                self.forget_tree(dir, false);
                changes(Change::Tree(dir.to_path_buf()));
            }
            // a moved directory: its parent's MOVED_FROM/MOVED_TO say where
        } else if m.contains(EventMask::IGNORED) || m.contains(EventMask::UNMOUNT) {
            self.forget_tree(dir, false);
            self.stats.lost.fetch_add(1, Ordering::Relaxed);
            if root {
                self.clear();
                signals(Signal::RootGone);
            } else {
                signals(Signal::Lost(dir.to_path_buf()));
            }
        } else if m.contains(EventMask::ATTRIB) {
            changes(Change::Entry(dir.to_path_buf()));
        }
        Ok(())
    }
}

/// Directories of the tree that would be watched (not excluded).
fn count_dirs(root: &Path, filter: &Filter) -> u64 {
    let mut n = 0;
    let walk = walkdir::WalkDir::new(root)
        .follow_links(false)
        .into_iter()
        .filter_entry(|e| {
            let rel = e.path().strip_prefix(root).unwrap_or(e.path());
            rel.as_os_str().is_empty() || !filter.excluded(rel, e.file_type().is_dir())
        });
    for e in walk.flatten() {
        if e.file_type().is_dir() {
            n += 1;
        }
    }
    n
}

#[cfg(test)]
mod tests;
