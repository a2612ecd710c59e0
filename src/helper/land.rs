//! Where a received file is written, and how it reaches its final name.
//!
//! Where the filesystem has `O_TMPFILE`, the file is written unnamed in
//! its final directory: nobody can open it, and if the transfer fails or
//! the helper dies, it vanishes with its descriptor (no temporary file is
//! left behind). Complete, with its attributes set, it is named with
//! `linkat` straight at its final name when nothing is there (a new file:
//! one system call where a temporary name costs a create and a rename),
//! or at the temporary name, then renamed over the old version, when
//! something is. Without `O_TMPFILE` (NFS, old kernels), a named temporary
//! file (`O_EXCL`, 0600) is written and renamed, as SFTP does.
//!
//! Invariants:
//! - A file has its final name only once its data and attributes are
//!   complete; an existing entry there is replaced only by `rename` (never
//!   written through, never followed: `linkat` does not replace).
//! - On failure nothing new stays at the final name: a name given by
//!   `linkat` whose close then failed is removed again.

use super::{Fail, ctx};
use crate::beneath::Beneath;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// A file being received.
pub(crate) struct Landing {
    pub(crate) file: File,
    /// unnamed (`O_TMPFILE`) rather than at the temporary name
    pub(crate) unnamed: bool,
}

/// The attributes a complete file gets.
pub(crate) struct Attrs {
    pub(crate) mode: u32,
    pub(crate) mtime: i64,
    pub(crate) mtime_ns: u32,
    pub(crate) owner: Option<(u32, u32)>,
}

/// Start a file in `dir`: unnamed where possible, else at `tmp` (new,
/// private).
pub(crate) fn start(fs: &mut Beneath, dir: &Path, tmp: &OsStr) -> io::Result<Landing> {
    if let Some(file) = fs.create_unnamed(dir)? {
        return Ok(Landing {
            file,
            unnamed: true,
        });
    }
    Ok(Landing {
        file: fs.create_new(dir, tmp)?,
        unnamed: false,
    })
}

/// Set the attributes of a complete file and give it its final name
/// (`at`: directory, temporary name, final name). On failure, anything at
/// the temporary name is the caller's to remove.
pub(crate) fn commit(
    fs: &mut Beneath,
    l: Landing,
    (dir, tmp, name): (&Path, &OsStr, &OsStr),
    a: &Attrs,
) -> Result<(), Fail> {
    set_attrs(&l.file, a)?;
    if l.unnamed {
        match fs.link_new(dir, &l.file, name) {
            Ok(()) => {
                return close(l.file).inspect_err(|_| fs.unlink_in(dir, name));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if fs.link_new(dir, &l.file, tmp).is_err() {
                    name_by_copy(fs, &l.file, (dir, tmp), a)?;
                }
            }
            // no way to name it (no /proc, …): its data goes to a named file
            Err(_) => name_by_copy(fs, &l.file, (dir, tmp), a)?,
        }
    }
    close(l.file)?;
    fs.rename_in(dir, tmp, name)
        .map_err(|e| ctx("rename into place", e))
}

/// Copy the unnamed file `f` to a new file at `tmp` (complete, with its
/// attributes, closed): for when `f` itself cannot be named.
fn name_by_copy(
    fs: &mut Beneath,
    f: &File,
    (dir, tmp): (&Path, &OsStr),
    a: &Attrs,
) -> Result<(), Fail> {
    let len = f.metadata().map_err(|e| ctx("stat", e))?.len();
    let mut out = fs
        .create_new(dir, tmp)
        .map_err(|e| ctx("create temporary file", e))?;
    let mut buf = vec![0u8; 256 << 10];
    super::copy::copy_range(f, 0, len, &mut out, &mut buf)?;
    set_attrs(&out, a)?;
    close(out)
}

/// Owner, mode and mtime, set on the file's own descriptor.
fn set_attrs(f: &File, a: &Attrs) -> Result<(), Fail> {
    use std::os::fd::AsRawFd;
    if let Some((uid, gid)) = a.owner {
        std::os::unix::fs::fchown(f, Some(uid), Some(gid)).map_err(|e| ctx("set owner", e))?;
    }
    // after fchown, which may clear set-id bits
    f.set_permissions(std::fs::Permissions::from_mode(a.mode & 0o7777))
        .map_err(|e| ctx("set mode", e))?;
    let ts = libc::timespec {
        tv_sec: a.mtime as libc::time_t,
        tv_nsec: a.mtime_ns as libc::c_long,
    };
    // SAFETY: a valid descriptor and two valid timespecs
    if unsafe { libc::futimens(f.as_raw_fd(), [ts, ts].as_ptr()) } != 0 {
        return Err(ctx("set mtime", io::Error::last_os_error()));
    }
    Ok(())
}

/// Close, reporting what close reports (a full disk may show only when
/// the data is flushed at close).
fn close(f: File) -> Result<(), Fail> {
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    // SAFETY: `fd` was owned by `f`, which gave it up: it is closed
    // exactly once, here
    if unsafe { libc::close(fd) } != 0 {
        return Err(ctx("close", io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::MetadataExt;

    fn attrs() -> Attrs {
        Attrs {
            mode: 0o640,
            mtime: 1_600_000_000,
            mtime_ns: 5,
            owner: None,
        }
    }

    fn check(p: &Path, data: &[u8]) {
        let md = std::fs::symlink_metadata(p).unwrap();
        assert!(md.is_file(), "{} is a regular file", p.display());
        assert_eq!(std::fs::read(p).unwrap(), data);
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_600_000_000, 5));
    }

    fn names<'a>() -> (&'a Path, &'a OsStr, &'a OsStr) {
        (
            Path::new("d"),
            OsStr::new(".syncjob-tmp.1.1.f"),
            OsStr::new("f"),
        )
    }

    /// A root holding an empty directory `d`, and the helper's view of it.
    fn root_with_d() -> (tempfile::TempDir, Beneath) {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("d")).unwrap();
        let fs = Beneath::new(root.path().to_path_buf());
        (root, fs)
    }

    #[test]
    fn a_new_file_is_written_unnamed_and_named_only_when_complete() {
        let (root, mut fs) = root_with_d();
        let mut l = start(&mut fs, Path::new("d"), names().1).unwrap();
        assert!(l.unnamed, "tmpfs and ext4 have O_TMPFILE");
        l.file.write_all(b"data").unwrap();
        // nothing in the directory while it is written
        assert_eq!(std::fs::read_dir(root.path().join("d")).unwrap().count(), 0);
        commit(&mut fs, l, names(), &attrs()).unwrap_or_else(|f| panic!("{}", f.1));
        check(&root.path().join("d/f"), b"data");
        assert_eq!(std::fs::read_dir(root.path().join("d")).unwrap().count(), 1);
    }

    #[test]
    fn a_symlink_at_the_final_name_is_replaced_never_written_through() {
        let (root, mut fs) = root_with_d();
        let outside = tempfile::tempdir().unwrap();
        let secret = outside.path().join("secret");
        std::fs::write(&secret, b"keep").unwrap();
        std::os::unix::fs::symlink(&secret, root.path().join("d/f")).unwrap();
        let mut l = start(&mut fs, Path::new("d"), names().1).unwrap();
        l.file.write_all(b"new").unwrap();
        commit(&mut fs, l, names(), &attrs()).unwrap_or_else(|f| panic!("{}", f.1));
        check(&root.path().join("d/f"), b"new");
        assert_eq!(std::fs::read(&secret).unwrap(), b"keep");
        // the temporary name was renamed away
        assert_eq!(std::fs::read_dir(root.path().join("d")).unwrap().count(), 1);
    }

    #[test]
    fn an_unnamed_file_that_cannot_be_linked_is_copied_to_a_named_one() {
        let (root, mut fs) = root_with_d();
        let mut f = fs.create_unnamed(Path::new("d")).unwrap().unwrap();
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 253) as u8).collect();
        f.write_all(&data).unwrap();
        let (dir, tmp, name) = names();
        name_by_copy(&mut fs, &f, (dir, tmp), &attrs()).unwrap_or_else(|f| panic!("{}", f.1));
        fs.rename_in(dir, tmp, name).unwrap();
        check(&root.path().join("d/f"), &data);
    }

    #[test]
    fn without_the_capability_the_file_is_named_through_its_proc_entry() {
        let (root, mut fs) = root_with_d();
        std::fs::write(root.path().join("d/taken"), b"old").unwrap();
        let mut f = fs.create_unnamed(Path::new("d")).unwrap().unwrap();
        f.write_all(b"via proc").unwrap();
        let d = Path::new("d");
        let e = fs.link_new_by_proc(d, &f, OsStr::new("taken")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(root.path().join("d/taken")).unwrap(), b"old");
        fs.link_new_by_proc(d, &f, OsStr::new("f")).unwrap();
        assert_eq!(std::fs::read(root.path().join("d/f")).unwrap(), b"via proc");
    }

    #[test]
    fn linking_never_replaces_an_entry() {
        let (root, mut fs) = root_with_d();
        std::fs::write(root.path().join("d/f"), b"old").unwrap();
        let f = fs.create_unnamed(Path::new("d")).unwrap().unwrap();
        let e = fs
            .link_new(Path::new("d"), &f, OsStr::new("f"))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read(root.path().join("d/f")).unwrap(), b"old");
    }
}
