//! A target held in memory, for unit tests of `executor`, `run` and the
//! planner without a disk target or an sshd. It keeps the transport
//! contract (a file appears whole at its final name or not at all, a
//! directory is removed only when empty, a missing entry is `NotFound`)
//! and counts what it was asked, and it can be told to fail: lose the
//! connection at the n-th copy, refuse a directory, see a source change
//! during a copy.

use super::{ChangedDuringCopy, CopyCtx, Listing, Transport};
use crate::filter::Filter;
use crate::plan::{Entry, EntryKind, TreeBuilder};
use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// One entry on the fake target; a file's bytes in `data`.
#[derive(Debug, Clone)]
pub struct MemEntry {
    pub entry: Entry,
    pub data: Vec<u8>,
}

/// The target's state, and what the tests asked of it.
#[derive(Debug, Default)]
pub struct MemoryState {
    /// Entries by path; the root is `""` (absent: no root yet).
    pub entries: BTreeMap<PathBuf, MemEntry>,
    /// Connections opened, listings made, files copied.
    pub opens: u32,
    pub lists: u32,
    pub puts: u32,
    /// The copy with this number (counting from 1 over all copies) fails
    /// with a broken pipe, as a lost connection does.
    pub lose_at_put: Option<u32>,
    /// `mkdir` of these paths is refused.
    pub refuse_mkdir: BTreeSet<PathBuf>,
    /// Copies of these paths see the source change this many more times.
    pub changing: BTreeMap<PathBuf, u32>,
}

/// A handle on one fake target, shared by its connections and the test.
#[derive(Debug, Clone, Default)]
pub struct MemoryTarget(pub Arc<Mutex<MemoryState>>);

impl MemoryTarget {
    /// A new connection to the target.
    pub fn open(&self) -> Box<dyn Transport> {
        self.0.lock().unwrap().opens += 1;
        Box::new(Memory(self.0.clone(), false))
    }

    /// The files' contents by path (directories and symlinks left out).
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let st = self.0.lock().unwrap();
        st.entries
            .iter()
            .filter(|(_, e)| e.entry.kind == EntryKind::File)
            .map(|(p, e)| (p.to_string_lossy().into_owned(), e.data.clone()))
            .collect()
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.0.lock().unwrap()
    }
}

/// One connection to a [`MemoryTarget`] (once lost, every copy on it
/// fails).
pub struct Memory(Arc<Mutex<MemoryState>>, bool);

fn not_found(p: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("{}: no such entry", p.display()),
    )
}

impl Memory {
    fn st(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.0.lock().unwrap()
    }
}

impl Transport for Memory {
    fn mtime_nanos(&self) -> bool {
        true
    }

    fn symlink_times(&self) -> bool {
        true
    }

    fn list(&mut self, _filter: &Filter) -> io::Result<Listing> {
        let mut st = self.st();
        st.lists += 1;
        if !st.entries.contains_key(Path::new("")) {
            return Ok(Listing::default());
        }
        let mut tree = TreeBuilder::default();
        for (p, e) in &st.entries {
            tree.push(p, e.entry.clone());
        }
        Ok(Listing {
            tree: Some(tree.finish()),
            ..Default::default()
        })
    }

    fn ensure_root(&mut self) -> io::Result<()> {
        let root = MemEntry {
            entry: Entry {
                mode: 0o755,
                ..Entry::blank(EntryKind::Dir)
            },
            data: Vec::new(),
        };
        self.st().entries.entry(PathBuf::new()).or_insert(root);
        Ok(())
    }

    fn same_content(
        &mut self,
        rel: &Path,
        src: &Path,
        _source: Option<&crate::plan::source::SourceTree>,
    ) -> io::Result<bool> {
        let data = std::fs::read(src)?;
        let st = self.st();
        let e = st.entries.get(rel).ok_or_else(|| not_found(rel))?;
        Ok(e.data == data)
    }

    fn mkdir(&mut self, rel: &Path) -> io::Result<()> {
        let mut st = self.st();
        if st.refuse_mkdir.contains(rel) {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "mkdir refused",
            ));
        }
        let dir = MemEntry {
            entry: Entry {
                mode: 0o700,
                ..Entry::blank(EntryKind::Dir)
            },
            data: Vec::new(),
        };
        st.entries.insert(rel.to_path_buf(), dir);
        Ok(())
    }

    fn put_file(
        &mut self,
        rel: &Path,
        src: &Path,
        preserve_owner: bool,
        ctx: &CopyCtx,
    ) -> io::Result<u64> {
        let lost = || io::Error::new(io::ErrorKind::BrokenPipe, "connection lost");
        if self.1 {
            return Err(lost());
        }
        let mut st = self.0.lock().unwrap();
        st.puts += 1;
        if st.lose_at_put == Some(st.puts) {
            self.1 = true;
            return Err(lost());
        }
        if ctx.cancelled() {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "aborted by shutdown",
            ));
        }
        if let Some(n) = st.changing.get_mut(rel).filter(|n| **n > 0) {
            *n -= 1;
            return Err(io::Error::other(ChangedDuringCopy));
        }
        let md = std::fs::symlink_metadata(src)?;
        let data = std::fs::read(src)?;
        let mut entry = Entry::from_metadata(&md, None);
        if !preserve_owner {
            (entry.uid, entry.gid) = (0, 0);
        }
        ctx.add_progress(data.len() as u64);
        let n = data.len() as u64;
        st.entries
            .insert(rel.to_path_buf(), MemEntry { entry, data });
        Ok(n)
    }

    fn symlink(&mut self, rel: &Path, target: &Path, mtime: Option<(i64, u32)>) -> io::Result<()> {
        let (s, ns) = mtime.unwrap_or((0, 0));
        let entry = Entry {
            mtime: s,
            mtime_ns: ns,
            mode: 0o777,
            link: Some(Box::new(target.to_path_buf())),
            ..Entry::blank(EntryKind::Symlink)
        };
        let e = MemEntry {
            entry,
            data: Vec::new(),
        };
        self.st().entries.insert(rel.to_path_buf(), e);
        Ok(())
    }

    fn set_attrs(
        &mut self,
        rel: &Path,
        _kind: EntryKind,
        mode: Option<u32>,
        mtime: Option<(i64, u32)>,
        owner: Option<(u32, u32)>,
    ) -> io::Result<()> {
        let mut st = self.st();
        let e = &mut st.entries.get_mut(rel).ok_or_else(|| not_found(rel))?.entry;
        if let Some(m) = mode {
            e.mode = m;
        }
        if let Some((s, ns)) = mtime {
            (e.mtime, e.mtime_ns) = (s, ns);
        }
        if let Some((u, g)) = owner {
            (e.uid, e.gid) = (u, g);
        }
        Ok(())
    }

    fn remove(&mut self, rel: &Path, kind: EntryKind) -> io::Result<()> {
        let mut st = self.st();
        let has_children = st
            .entries
            .keys()
            .any(|p| p != rel && p.starts_with(rel) && !rel.as_os_str().is_empty());
        match st.entries.get(rel) {
            None => Err(not_found(rel)),
            Some(_) if kind == EntryKind::Dir && has_children => Err(io::Error::new(
                io::ErrorKind::DirectoryNotEmpty,
                "directory not empty",
            )),
            Some(_) => {
                st.entries.remove(rel);
                Ok(())
            }
        }
    }
}
