//! File operations confined beneath a root directory, for trees whose
//! contents are not trusted (a target, the remote helper's root).
//!
//! Invariants:
//! - Every entry is reached from a handle on the root, one directory handle
//!   per parent, opened with `O_NOFOLLOW|O_DIRECTORY` a component at a time
//!   (or in one `openat2` call with `RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS`
//!   where the kernel has it). A symlink inside the tree is never traversed:
//!   meeting one where a directory is expected is an error
//!   ([`io::ErrorKind::NotADirectory`]) and nothing is done below it.
//! - Paths are relative, made only of normal components (no `..`, no `.`,
//!   not absolute); anything else is refused before any system call.
//! - The final component is acted on with `*at` calls on the parent's handle
//!   that never follow it (`unlinkat`, `renameat`, `symlinkat`, `mkdirat`,
//!   `O_NOFOLLOW|O_EXCL` creations, `AT_SYMLINK_NOFOLLOW`, `linkat` of an
//!   unnamed `O_TMPFILE` file, which never replaces); modes are set on
//!   a handle of the entry itself (checked not to be a symlink), never
//!   through a path.
//! - The root path itself is the operator's (trusted, may contain symlinks);
//!   it is opened on first use, so a root created later is found.
//! - Directory handles are cached (bounded) so that a batch of files in one
//!   directory does not re-open the chain; removing or creating a directory
//!   drops its cached handles.

pub mod walk;

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Directory handles kept at most (then the cache starts over).
const MAX_CACHED: usize = 1024;

/// Whether `openat2` answered ENOSYS (an old kernel, a seccomp filter).
static NO_OPENAT2: AtomicBool = AtomicBool::new(false);

/// Handles on directories beneath one root.
#[derive(Debug)]
pub struct Beneath {
    root_path: PathBuf,
    root: Option<OwnedFd>,
    cache: HashMap<PathBuf, OwnedFd>,
    /// Whether this instance tries `openat2` (tests turn it off to check
    /// the fallback without touching other instances).
    openat2: bool,
}

/// The error for a path that is not a plain relative name.
pub fn not_beneath(p: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "{}: not a relative path beneath the root (absolute, `..` or `.` refused)",
            p.display()
        ),
    )
}

/// Check that `p` is relative and made of normal components only.
pub fn check_relative(p: &Path) -> io::Result<()> {
    if p.components().all(|c| matches!(c, Component::Normal(_)))
        && !p.as_os_str().as_encoded_bytes().starts_with(b"/")
    {
        Ok(())
    } else {
        Err(not_beneath(p))
    }
}

fn dir_flags() -> OFlags {
    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

/// What a symlink (or other entry) met where a directory is expected says.
fn not_a_dir(rel: &Path, e: rustix::io::Errno) -> io::Error {
    if e == rustix::io::Errno::LOOP || e == rustix::io::Errno::NOTDIR {
        io::Error::new(
            io::ErrorKind::NotADirectory,
            format!(
                "{} is not a directory on the target (a symlink there is not followed)",
                rel.display()
            ),
        )
    } else {
        e.into()
    }
}

impl Beneath {
    pub fn new(root: PathBuf) -> Beneath {
        Beneath {
            root_path: root,
            root: None,
            cache: HashMap::new(),
            openat2: true,
        }
    }

    pub fn root_path(&self) -> &Path {
        &self.root_path
    }

    /// Drop every handle (the root is opened again on next use).
    pub fn reset(&mut self) {
        self.root = None;
        self.cache.clear();
    }

    fn root(&mut self) -> io::Result<BorrowedFd<'_>> {
        if self.root.is_none() {
            let fd = rustix::fs::open(
                &self.root_path,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            self.root = Some(fd);
        }
        Ok(self.root.as_ref().unwrap().as_fd())
    }

    /// The handle of the directory `rel` (empty: the root).
    pub fn dir(&mut self, rel: &Path) -> io::Result<BorrowedFd<'_>> {
        if rel.as_os_str().is_empty() {
            return self.root();
        }
        check_relative(rel)?;
        if !self.cache.contains_key(rel) {
            let fd = self.open_dir(rel)?;
            if self.cache.len() >= MAX_CACHED {
                self.cache.clear();
            }
            // keys spelled canonically ("a/b", never "a//b/"): `forget`
            // compares them as bytes
            self.cache.insert(rel.components().collect(), fd);
        }
        Ok(self.cache[rel].as_fd())
    }

    /// Open `rel` from its nearest cached ancestor (or the root).
    fn open_dir(&mut self, rel: &Path) -> io::Result<OwnedFd> {
        let mut base = rel.parent();
        while let Some(b) = base {
            if b.as_os_str().is_empty() || self.cache.contains_key(b) {
                break;
            }
            base = b.parent();
        }
        let base = base.unwrap_or(Path::new(""));
        let rest = rel.strip_prefix(base).unwrap_or(rel);
        let try_openat2 = self.openat2 && !NO_OPENAT2.load(Ordering::Relaxed);
        let from = match self.cache.get(base) {
            Some(fd) => fd.as_fd(),
            None => self.root()?,
        };
        if try_openat2 {
            let resolve =
                ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
            match rustix::fs::openat2(from, rest, dir_flags(), Mode::empty(), resolve) {
                Ok(fd) => return Ok(fd),
                Err(e) if e == rustix::io::Errno::NOSYS || e == rustix::io::Errno::PERM => {
                    NO_OPENAT2.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(not_a_dir(rel, e)),
            }
        }
        // one component at a time, none followed
        let mut cur: Option<OwnedFd> = None;
        for c in rest.components() {
            let at = cur.as_ref().map_or(from, |f| f.as_fd());
            let next = rustix::fs::openat(at, c.as_os_str(), dir_flags(), Mode::empty())
                .map_err(|e| not_a_dir(rel, e))?;
            cur = Some(next);
        }
        cur.ok_or_else(|| not_beneath(rel))
    }

    /// The parent directory's handle and the final name of `rel` (not
    /// empty).
    pub fn parent<'a>(&mut self, rel: &'a Path) -> io::Result<(BorrowedFd<'_>, &'a OsStr)> {
        check_relative(rel)?;
        let name = rel.file_name().ok_or_else(|| not_beneath(rel))?;
        let parent = rel.parent().unwrap_or(Path::new(""));
        Ok((self.dir(parent)?, name))
    }

    /// Forget the handles of `rel` and below (it was removed or replaced).
    pub fn forget(&mut self, rel: &Path) {
        // compared as bytes (the keys are plain relative paths, see
        // `check_relative`): this runs for every directory made, against
        // every cached handle
        let rel: PathBuf = rel.components().collect();
        let r = rel.as_os_str().as_encoded_bytes();
        let below = |k: &PathBuf| {
            let k = k.as_os_str().as_encoded_bytes();
            r.is_empty() || (k.starts_with(r) && (k.len() == r.len() || k[r.len()] == b'/'))
        };
        if self.cache.keys().any(below) {
            self.cache.retain(|k, _| !below(k));
        }
    }

    /// Open the regular file `rel` for reading, never through a symlink.
    pub fn open_read(&mut self, rel: &Path) -> io::Result<File> {
        let (dir, name) = self.parent(rel)?;
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        let f = File::from(rustix::fs::openat(dir, name, flags, Mode::empty())?);
        if !f.metadata()?.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{}: not a regular file", rel.display()),
            ));
        }
        Ok(f)
    }

    /// Create a new file `name` in the directory `dir` (private: 0600),
    /// failing if anything exists there.
    pub fn create_new(&mut self, dir: &Path, name: &OsStr) -> io::Result<File> {
        let flags =
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let d = self.dir(dir)?;
        Ok(File::from(rustix::fs::openat(
            d,
            name,
            flags,
            Mode::from_raw_mode(0o600),
        )?))
    }

    /// A new unnamed file in the directory `dir` (`O_TMPFILE`, private:
    /// 0600), open for reading and writing. Nobody else can open it, and it
    /// is gone when closed unless [`Beneath::link_new`] names it.
    /// `Ok(None)`: the kernel or the filesystem has no `O_TMPFILE` (NFS,
    /// old kernels): use a named temporary file.
    pub fn create_unnamed(&mut self, dir: &Path) -> io::Result<Option<File>> {
        use rustix::io::Errno;
        let d = self.dir(dir)?;
        let flags = OFlags::RDWR | OFlags::TMPFILE | OFlags::CLOEXEC;
        match rustix::fs::openat(d, ".", flags, Mode::from_raw_mode(0o600)) {
            Ok(fd) => Ok(Some(File::from(fd))),
            // EISDIR: a kernel without O_TMPFILE opened the directory
            Err(e) if e == Errno::OPNOTSUPP || e == Errno::ISDIR || e == Errno::INVAL => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Give the unnamed file `f` (from [`Beneath::create_unnamed`]) the name
    /// `name` in the directory `dir`. Nothing there is replaced or followed:
    /// any entry at that name, a symlink too, gives `AlreadyExists`.
    pub fn link_new(&mut self, dir: &Path, f: &File, name: &OsStr) -> io::Result<()> {
        use rustix::io::Errno;
        let d = self.dir(dir)?;
        match rustix::fs::linkat(f, "", d, name, AtFlags::EMPTY_PATH) {
            Ok(()) => return Ok(()),
            // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; without it, ENOENT:
            // name the file through its descriptor's /proc entry instead
            Err(e) if e == Errno::NOENT || e == Errno::PERM => {}
            Err(e) => return Err(e.into()),
        }
        self.link_new_by_proc(dir, f, name)
    }

    /// [`Beneath::link_new`] without `CAP_DAC_READ_SEARCH`: through the
    /// descriptor's own entry in /proc (the link followed is this
    /// process's descriptor, not a name in the tree).
    pub fn link_new_by_proc(&mut self, dir: &Path, f: &File, name: &OsStr) -> io::Result<()> {
        let d = self.dir(dir)?;
        let own = format!("/proc/self/fd/{}", f.as_raw_fd());
        rustix::fs::linkat(
            rustix::fs::CWD,
            own.as_str(),
            d,
            name,
            AtFlags::SYMLINK_FOLLOW,
        )?;
        Ok(())
    }

    /// Rename `from` to `to`, both names in the directory `dir`.
    pub fn rename_in(&mut self, dir: &Path, from: &OsStr, to: &OsStr) -> io::Result<()> {
        let d = self.dir(dir)?;
        rustix::fs::renameat(d, from, d, to)?;
        Ok(())
    }

    /// Rename `from` to `to` (paths relative to the root) with `renameat`
    /// between their two parents, both opened beneath the root (no symlink
    /// on the way followed; renameat never follows the final names). The
    /// cached handles at and below both names are dropped. `to` inside
    /// `from`, or either the root itself, is refused.
    pub fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        if from.as_os_str().is_empty() || to.as_os_str().is_empty() || to.starts_with(from) {
            return Err(not_beneath(to));
        }
        let (fd, from_name) = self.parent(from)?;
        let from_dir = fd.try_clone_to_owned()?;
        let from_name = from_name.to_owned();
        let (to_dir, to_name) = self.parent(to)?;
        rustix::fs::renameat(&from_dir, &from_name, to_dir, to_name)?;
        self.forget(from);
        self.forget(to);
        Ok(())
    }

    /// Remove the name `name` of the directory `dir` (a file or a symlink;
    /// quietly nothing if it is gone).
    pub fn unlink_in(&mut self, dir: &Path, name: &OsStr) {
        if let Ok(d) = self.dir(dir) {
            let _ = rustix::fs::unlinkat(d, name, AtFlags::empty());
        }
    }

    /// Remove `rel`: an empty directory, or any other entry (a symlink is
    /// removed itself).
    pub fn remove(&mut self, rel: &Path, dir: bool) -> io::Result<()> {
        let flags = if dir {
            AtFlags::REMOVEDIR
        } else {
            AtFlags::empty()
        };
        let (d, name) = self.parent(rel)?;
        rustix::fs::unlinkat(d, name, flags)?;
        if dir {
            self.forget(rel);
        }
        Ok(())
    }

    pub fn mkdir(&mut self, rel: &Path) -> io::Result<()> {
        let (d, name) = self.parent(rel)?;
        rustix::fs::mkdirat(d, name, Mode::from_raw_mode(0o777))?;
        self.forget(rel);
        Ok(())
    }

    /// Create (or atomically replace) the symlink `rel` pointing at
    /// `target`, through the temporary name `tmp` in the same directory.
    pub fn symlink(
        &mut self,
        rel: &Path,
        tmp: &OsStr,
        target: &Path,
        mtime: Option<(i64, u32)>,
    ) -> io::Result<()> {
        let (d, name) = self.parent(rel)?;
        rustix::fs::symlinkat(target, d, tmp)?;
        let r = (|| {
            if let Some(t) = mtime {
                rustix::fs::utimensat(d, tmp, &times(t), AtFlags::SYMLINK_NOFOLLOW)?;
            }
            rustix::fs::renameat(d, tmp, d, name)
        })();
        if r.is_err() {
            let _ = rustix::fs::unlinkat(d, tmp, AtFlags::empty());
        }
        r.map_err(Into::into)
    }

    /// Set owner, mode and mtime of `rel` (empty: the root), which must be
    /// of the kind given (`Some(true)` a directory, `Some(false)` a regular
    /// file, `None` a symlink: its own attributes, never its target's).
    pub fn set_attrs(
        &mut self,
        rel: &Path,
        dir: Option<bool>,
        mode: Option<u32>,
        mtime: Option<(i64, u32)>,
        owner: Option<(u32, u32)>,
    ) -> io::Result<()> {
        let Some(want_dir) = dir else {
            let (d, name) = self.parent(rel)?;
            if let Some((u, g)) = owner {
                rustix::fs::chownat(d, name, uid(u), gid(g), AtFlags::SYMLINK_NOFOLLOW)?;
            }
            if let Some(t) = mtime {
                rustix::fs::utimensat(d, name, &times(t), AtFlags::SYMLINK_NOFOLLOW)?;
            }
            return Ok(());
        };
        // a handle of the entry itself, not followed, of the expected kind
        let fd = if rel.as_os_str().is_empty() {
            rustix::fs::openat(self.root()?, ".", dir_flags(), Mode::empty())?
        } else {
            let (d, name) = self.parent(rel)?;
            let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            rustix::fs::openat(d, name, flags, Mode::empty())?
        };
        let st = rustix::fs::fstat(&fd)?;
        let ft = rustix::fs::FileType::from_raw_mode(st.st_mode);
        let ok = if want_dir {
            ft == rustix::fs::FileType::Directory
        } else {
            ft == rustix::fs::FileType::RegularFile
        };
        if !ok {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the target entry changed type during the run",
            ));
        }
        if let Some((u, g)) = owner {
            rustix::fs::chownat(&fd, "", uid(u), gid(g), AtFlags::EMPTY_PATH)?;
        }
        on_handle(&fd, mode, mtime)
    }
}

/// Mode and mtime of the entry an `O_PATH` handle holds (checked not to be
/// a symlink): through its `/proc/self/fd` name, which names that very
/// inode; without /proc, through a read-only handle of it.
fn on_handle(fd: &OwnedFd, mode: Option<u32>, mtime: Option<(i64, u32)>) -> io::Result<()> {
    if mode.is_none() && mtime.is_none() {
        return Ok(());
    }
    let proc_name = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let via_proc = (|| {
        if let Some(m) = mode {
            rustix::fs::chmodat(
                rustix::fs::CWD,
                &proc_name,
                Mode::from_raw_mode(m),
                AtFlags::empty(),
            )?;
        }
        if let Some(t) = mtime {
            rustix::fs::utimensat(rustix::fs::CWD, &proc_name, &times(t), AtFlags::empty())?;
        }
        Ok::<(), rustix::io::Errno>(())
    })();
    match via_proc {
        Err(rustix::io::Errno::NOENT) => {
            let flags = OFlags::RDONLY | OFlags::NONBLOCK | OFlags::CLOEXEC;
            let f = rustix::fs::openat(fd, "", flags, Mode::empty())
                .or_else(|_| rustix::fs::open(&proc_name, flags, Mode::empty()))?;
            if let Some(m) = mode {
                rustix::fs::fchmod(&f, Mode::from_raw_mode(m))?;
            }
            if let Some(t) = mtime {
                rustix::fs::futimens(&f, &times(t))?;
            }
            Ok(())
        }
        r => r.map_err(Into::into),
    }
}

fn uid(u: u32) -> Option<rustix::fs::Uid> {
    Some(rustix::fs::Uid::from_raw(u))
}

fn gid(g: u32) -> Option<rustix::fs::Gid> {
    Some(rustix::fs::Gid::from_raw(g))
}

/// Access time and modification time both set to `(secs, nanos)`.
pub fn times((s, ns): (i64, u32)) -> rustix::fs::Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: s,
        tv_nsec: ns as _,
    };
    rustix::fs::Timestamps {
        last_access: t,
        last_modification: t,
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn forgetting_a_directory_drops_its_handles_and_those_below_only() {
        let root = tempfile::tempdir().unwrap();
        for d in ["a/b/c", "a/bc", "a/b-x", "z"] {
            std::fs::create_dir_all(root.path().join(d)).unwrap();
        }
        let mut b = Beneath::new(root.path().to_path_buf());
        for d in ["a//b/", "a/b/c", "a/bc", "a/b-x", "z"] {
            b.dir(Path::new(d)).unwrap();
        }
        b.forget(Path::new("a/b"));
        let mut left: Vec<String> = b.cache.keys().map(|k| k.display().to_string()).collect();
        left.sort();
        assert_eq!(left, ["a/b-x", "a/bc", "z"]);
        b.forget(Path::new(""));
        assert!(b.cache.is_empty());
    }
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn nothing_goes_through_a_symlink_or_outside() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("root");
        let out = d.path().join("out");
        std::fs::create_dir_all(root.join("real")).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("f"), b"outside").unwrap();
        std::fs::set_permissions(out.join("f"), std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&out, root.join("sub")).unwrap();
        std::os::unix::fs::symlink(out.join("f"), root.join("conf")).unwrap();
        for openat2 in [true, false] {
            let mut b = Beneath::new(root.clone());
            b.openat2 = openat2;
            for p in ["../out/f", "/etc/passwd", "real/../sub/f", "./x", ""] {
                let e = b.remove(Path::new(p), false).unwrap_err();
                assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{p}: {e}");
            }
            let e = b.remove(Path::new("sub/f"), false).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::NotADirectory, "{e}");
            assert!(b.create_new(Path::new("sub"), OsStr::new("n")).is_err());
            assert!(b.mkdir(Path::new("sub/d")).is_err());
            assert!(b.open_read(Path::new("conf")).is_err());
            let e = b
                .set_attrs(Path::new("conf"), Some(false), Some(0o666), None, None)
                .unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            // a symlink's own attributes only
            b.set_attrs(Path::new("conf"), None, None, Some((1, 0)), None)
                .unwrap();
            b.set_attrs(
                Path::new("real"),
                Some(true),
                Some(0o700),
                Some((5, 6)),
                None,
            )
            .unwrap();
            assert_eq!(
                std::fs::metadata(root.join("real"))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777,
                0o700
            );
        }
        assert_eq!(std::fs::read(out.join("f")).unwrap(), b"outside");
        let md = std::fs::metadata(out.join("f")).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 1);
        // the link itself is removed, not what it points at
        let mut b = Beneath::new(root.clone());
        b.remove(Path::new("sub"), false).unwrap();
        assert!(out.join("f").exists());
    }
}
