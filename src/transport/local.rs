//! A target directory on this machine. Its contents are not trusted:
//! every change is made relative to directory handles opened beneath the
//! root without following symlinks ([`Beneath`]), so nothing is written,
//! removed, chmod-ed or chown-ed through a symlink in the target.

use super::{
    CopyCtx, Listing, Transport, copy_cancellable, open_source, temp_name, verify_unchanged,
};
use crate::beneath::{Beneath, walk};
use crate::filter::Filter;
use crate::journal::PathError;
use crate::plan::source::{SourceTree, entry_of};
use crate::plan::{EntryKind, TreeBuilder, display_path, is_temp_name};
use std::fs::{self, File, FileTimes};
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub struct Local {
    root: PathBuf,
    /// every change goes through directory handles beneath the root
    fs: Beneath,
}

impl Local {
    pub fn new(root: PathBuf) -> Local {
        Local {
            fs: Beneath::new(root.clone()),
            root,
        }
    }
}

pub fn system_time(secs: i64, nanos: u32) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::new(secs as u64, nanos)
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos as u64)
    }
}

fn same_bytes(a: &mut File, b: &mut File) -> io::Result<bool> {
    let mut ba = vec![0u8; 256 * 1024];
    let mut bb = vec![0u8; 256 * 1024];
    loop {
        let n = read_full(a, &mut ba)?;
        let m = read_full(b, &mut bb)?;
        if n != m || ba[..n] != bb[..m] {
            return Ok(false);
        }
        if n == 0 {
            return Ok(true);
        }
    }
}

fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

impl Transport for Local {
    fn mtime_nanos(&self) -> bool {
        true
    }

    /// The walk of `list_stream`, held.
    fn list(&mut self, filter: &Filter) -> io::Result<Listing> {
        let mut l = self.list_stream(filter).expect("local targets stream")?;
        if let Some(st) = l.stream.take() {
            let mut tree = TreeBuilder::default();
            for (p, e) in st.entries {
                tree.push(&p, e);
            }
            l.tree = Some(tree.finish());
            l.errors.extend(st.errors.take());
        }
        Ok(l)
    }

    /// The walk of [`crate::beneath::walk`]: through directory handles
    /// beneath the root, never through a symlink, in path order, streamed.
    fn list_stream(&mut self, filter: &Filter) -> Option<io::Result<Listing>> {
        let (fd, st) = match walk::open_root(&self.root) {
            Ok(Some(root)) => root,
            Ok(None) => return Some(Ok(Listing::default())),
            Err(e) => return Some(Err(e)),
        };
        let errors = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
        let sink = errors.clone();
        let filter = filter.clone();
        let keep =
            move |rel: &Path, is_dir: bool| is_temp_name(rel) || !filter.excluded(rel, is_dir);
        let entries = walk::Walk::new(fd, st, keep).filter_map(move |item| match item {
            Ok((rel, st, link)) => Some((rel, entry_of(&st, link))),
            Err(e) => {
                sink.borrow_mut().push(PathError {
                    path: display_path(&e.path),
                    message: format!("cannot list target: {}", e.error),
                });
                None
            }
        });
        Some(Ok(Listing {
            tree: None,
            stream: Some(super::Stream {
                entries: Box::new(entries),
                errors,
            }),
            errors: Vec::new(),
        }))
    }

    fn ensure_root(&mut self) -> io::Result<()> {
        fs::create_dir_all(&self.root)?;
        self.fs.reset();
        Ok(())
    }

    fn same_content(
        &mut self,
        rel: &Path,
        src: &Path,
        source: Option<&SourceTree>,
    ) -> io::Result<bool> {
        let (mut a, _) = open_source(src, source)?;
        let mut b = self.fs.open_read(rel)?;
        if a.metadata()?.len() != b.metadata()?.len() {
            return Ok(false);
        }
        same_bytes(&mut a, &mut b)
    }

    fn mkdir(&mut self, rel: &Path) -> io::Result<()> {
        self.fs.mkdir(rel)
    }

    fn put_file(
        &mut self,
        rel: &Path,
        src: &Path,
        preserve_owner: bool,
        ctx: &CopyCtx,
    ) -> io::Result<u64> {
        let (mut input, before) = open_source(src, ctx.source)?;
        let (dir, name) = split(rel)?;
        let tmp = temp_name(rel);
        let tmp = tmp.file_name().unwrap_or_default();
        let mut out = self.fs.create_new(dir, tmp)?;
        let result = (|| {
            let n = copy_cancellable(&mut input, &mut out, ctx)?;
            verify_unchanged(&input, &before, n)?;
            use std::os::unix::fs::MetadataExt;
            if preserve_owner {
                std::os::unix::fs::fchown(&out, Some(before.uid()), Some(before.gid()))?;
            }
            out.set_permissions(fs::Permissions::from_mode(before.mode() & 0o7777))?;
            let mtime = system_time(before.mtime(), before.mtime_nsec() as u32);
            out.set_times(FileTimes::new().set_modified(mtime))?;
            drop(out);
            self.fs.rename_in(dir, tmp, name)?;
            Ok(n)
        })();
        if result.is_err() {
            self.fs.unlink_in(dir, tmp);
        }
        result
    }

    fn symlink_times(&self) -> bool {
        true
    }

    fn symlink(&mut self, rel: &Path, target: &Path, mtime: Option<(i64, u32)>) -> io::Result<()> {
        let tmp = temp_name(rel);
        self.fs
            .symlink(rel, tmp.file_name().unwrap_or_default(), target, mtime)
    }

    fn set_attrs(
        &mut self,
        rel: &Path,
        kind: EntryKind,
        mode: Option<u32>,
        mtime: Option<(i64, u32)>,
        owner: Option<(u32, u32)>,
    ) -> io::Result<()> {
        // the entry is checked (on a handle of its own) to still be what
        // the plan expects, so a symlink swapped in meanwhile is never
        // followed
        let dir = match kind {
            EntryKind::Symlink => None,
            EntryKind::Dir => Some(true),
            EntryKind::File => Some(false),
            EntryKind::Special => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the target entry changed type during the run",
                ));
            }
        };
        let mode = if kind == EntryKind::Symlink {
            None
        } else {
            mode
        };
        self.fs.set_attrs(rel, dir, mode, mtime, owner)
    }

    fn remove(&mut self, rel: &Path, kind: EntryKind) -> io::Result<()> {
        self.fs.remove(rel, kind == EntryKind::Dir)
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        self.fs.rename(from, to)
    }
}

/// The parent directory and final name of a path relative to the root.
fn split(rel: &Path) -> io::Result<(&Path, &std::ffi::OsStr)> {
    let name = rel
        .file_name()
        .ok_or_else(|| crate::beneath::not_beneath(rel))?;
    Ok((rel.parent().unwrap_or(Path::new("")), name))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Entry;

    #[test]
    fn list_holds_what_list_stream_yields_in_path_order() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("t");
        for p in ["a/x", "a-b", "b/c/d", "skip/y"] {
            let f = root.join(p);
            fs::create_dir_all(f.parent().unwrap()).unwrap();
            fs::write(&f, p).unwrap();
        }
        fs::write(root.join(".syncjob-tmp.1.2.z"), b"stale").unwrap();
        std::os::unix::fs::symlink("a-b", root.join("l")).unwrap();
        let filter = Filter::new(&["/skip/"]).unwrap();
        let mut t = Local::new(root.clone());
        let streamed: Vec<(PathBuf, Entry)> = t
            .list_stream(&filter)
            .unwrap()
            .unwrap()
            .stream
            .unwrap()
            .entries
            .collect();
        let names: Vec<&Path> = streamed.iter().map(|(p, _)| p.as_path()).collect();
        assert_eq!(
            names,
            [
                "",
                ".syncjob-tmp.1.2.z",
                "a",
                "a/x",
                "a-b",
                "b",
                "b/c",
                "b/c/d",
                "l"
            ]
            .map(Path::new),
            "path order, excluded directory pruned, stale temporary kept"
        );
        let held = t.list(&filter).unwrap().tree.unwrap();
        let held: Vec<(PathBuf, Entry)> = held
            .iter()
            .map(|(p, e)| (p.to_path_buf(), e.clone()))
            .collect();
        assert_eq!(held, streamed);
        assert_eq!(
            streamed[8].1.link.as_deref().map(PathBuf::as_path),
            Some(Path::new("a-b"))
        );
        // a missing root: nothing, and no error
        let mut gone = Local::new(d.path().join("none"));
        assert!(!gone.list(&filter).unwrap().exists());
    }
}
