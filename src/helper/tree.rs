//! The helper's tree operations (protocol 3, records in
//! [`super::proto_tree`]): listing, mkdir, symlink, attributes, removal,
//! creating the root, a file's SHA-256 and its rolling signature.
//!
//! Invariants:
//! - Everything is reached through directory handles beneath `--root`
//!   ([`Beneath`], and for the listing a walk from the root's handle): no
//!   `..`, no absolute name, no symlink followed. A symlink met where a
//!   directory is expected is an error for that path (the client's plan
//!   then replaces it); nothing below it is touched or listed.
//! - The listing is written as it is walked (pre-order: a directory before
//!   its entries), one open handle per level of depth; a directory whose
//!   device and inode changed between its `stat` and its opening is an
//!   error item, not listed.
//! - Set-user-ID and set-group-ID bits follow the file records' rule
//!   ([`super::check_mode`]).
//! - A rolling signature (`W`) is streamed by another thread while the
//!   following records are served (`super::ordered` keeps the replies in
//!   order); the delta that uses it checks the file's identity when it is
//!   complete, so a change during the hashing is never applied.

use super::ordered::{Shared, lock};
use super::proto_tree::{self as pt, Attrs};
use super::{Fail, Ident, ctx, names, open_regular};
use crate::beneath::{Beneath, check_relative};
use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

fn rel_of(p: &[u8]) -> Result<&Path, Fail> {
    let rel = Path::new(OsStr::from_bytes(p));
    check_relative(rel).map_err(|e| Fail(libc::EINVAL, e.to_string()))?;
    Ok(rel)
}

fn io_fail(what: &str) -> impl Fn(io::Error) -> Fail + '_ {
    move |e| ctx(what, e)
}

/// Serve one tree record (its op byte read); `Ok(false)`: not a tree
/// record.
pub(super) fn serve_op(
    op: u8,
    input: &mut dyn Read,
    output: &mut dyn Write,
    fs: &mut Beneath,
) -> io::Result<bool> {
    let r: Result<(), Fail> = match op {
        b'L' => {
            list(fs.root_path(), output)?;
            return Ok(true);
        }
        b'M' => {
            let p = pt::read_path(input)?;
            rel_of(&p).and_then(|rel| fs.mkdir(rel).map_err(io_fail("mkdir")))
        }
        b'R' => {
            let p = pt::read_path(input)?;
            let dir = pt::u8_of(input)? != 0;
            rel_of(&p).and_then(|rel| fs.remove(rel, dir).map_err(io_fail("remove")))
        }
        b'N' => {
            let (from, to) = (pt::read_path(input)?, pt::read_path(input)?);
            rel_of(&from)
                .and_then(|f| Ok((f, rel_of(&to)?)))
                .and_then(|(f, t)| fs.rename(f, t).map_err(io_fail("rename")))
        }
        b'S' => {
            let (p, tmp, link, t) = pt::read_symlink(input)?;
            names(&tmp, &p).and_then(|(_, t_name, _)| {
                let rel = Path::new(OsStr::from_bytes(&p));
                let target = Path::new(OsStr::from_bytes(&link));
                fs.symlink(rel, t_name, target, t)
                    .map_err(io_fail("symlink"))
            })
        }
        b'A' => {
            let (p, a) = pt::read_attrs(input)?;
            set_attrs(fs, &p, &a)
        }
        b'P' => std::fs::create_dir_all(fs.root_path())
            .map_err(io_fail("create the root"))
            .map(|()| fs.reset()),
        b'C' => {
            let p = pt::read_path(input)?;
            match file_sum(fs, &p) {
                Ok(s) => {
                    let mut b = Vec::new();
                    pt::sum_reply(&s, &mut b);
                    output.write_all(&b)?;
                    return Ok(true);
                }
                Err(f) => Err(f),
            }
        }
        _ => return Ok(false),
    };
    super::reply(output, &r)?;
    Ok(true)
}

/// An `A` record: the kind must match what is there (a symlink's own
/// attributes only, never its target's).
fn set_attrs(fs: &mut Beneath, p: &[u8], a: &Attrs) -> Result<(), Fail> {
    let rel = Path::new(OsStr::from_bytes(p));
    if !rel.as_os_str().is_empty() {
        rel_of(p)?;
    }
    if let Some(m) = a.mode {
        super::check_mode(m, a.owner)?;
    }
    let kind = match a.kind {
        0 => Some(false),
        1 => Some(true),
        2 => None,
        _ => return Err(Fail(libc::EINVAL, "unknown entry kind".into())),
    };
    let mode = if kind.is_some() {
        a.mode.map(|m| m & 0o7777)
    } else {
        None
    };
    fs.set_attrs(rel, kind, mode, a.mtime, a.owner)
        .map_err(io_fail("set attributes"))
}

/// The SHA-256 of the regular file `p`.
fn file_sum(fs: &mut Beneath, p: &[u8]) -> Result<[u8; 32], Fail> {
    use sha2::Digest;
    let rel = rel_of(p)?;
    let mut f = fs.open_read(rel).map_err(io_fail("open"))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = f.read(&mut buf).map_err(io_fail("read"))?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

/// Threads that compute a rolling signature, at most.
const SIGNATURE_THREADS: usize = 4;

/// A signature's pieces are about this many bytes of the file.
const PIECE_BYTES: u32 = 1 << 20;

/// A `W` record: the weak and strong sums of each full block of the file,
/// streamed by another thread in pieces as they are computed (see
/// `super::ordered`) while the records that follow are served; the
/// file's identity is kept for the delta that follows (as for `H`), which
/// checks it again when it is complete.
pub(super) fn signature(
    input: &mut dyn Read,
    out: &mut super::ordered::Ordered,
    fs: &mut Beneath,
    hashed: &mut HashMap<Vec<u8>, Ident>,
) -> io::Result<()> {
    let (p, block) = pt::read_signature_request(input)?;
    // one signature at a time: the previous one ends first
    out.settle()?;
    match open_for_signature(fs, &p, block, hashed) {
        Err(f) => super::reply(out, &Err(f)),
        Ok((f, id)) => {
            let mut b = Vec::new();
            pt::signature_head(id.size, (id.size / block as u64) as u32, &mut b);
            out.write_all(&b)?;
            out.flush()?;
            hashed.insert(p, id);
            out.spawn(move |w| stream_signature(f, id, block, w))
        }
    }
}

/// The file a signature is asked for, checked against the bounds.
fn open_for_signature(
    fs: &mut Beneath,
    p: &[u8],
    block: u32,
    hashed: &HashMap<Vec<u8>, Ident>,
) -> Result<(File, Ident), Fail> {
    if hashed.len() >= super::proto::MAX_HASHED && !hashed.contains_key(p) {
        return Err(Fail(
            libc::EINVAL,
            "too many files awaiting their delta".into(),
        ));
    }
    use super::proto::{MAX_BLOCK, MIN_BLOCK};
    if !(MIN_BLOCK..=MAX_BLOCK).contains(&block) {
        let m = format!("block size {block} refused ({MIN_BLOCK}..={MAX_BLOCK})");
        return Err(Fail(libc::EINVAL, m));
    }
    let (f, md) = open_regular(fs, rel_of(p)?)?;
    let id = Ident::of(&md);
    if id.size / block as u64 > pt::MAX_BLOCK_SUMS as u64 {
        let m = format!("more than {} blocks of {block} bytes", pt::MAX_BLOCK_SUMS);
        return Err(Fail(libc::EINVAL, m));
    }
    Ok((f, id))
}

/// The pieces of a signature (in up to [`SIGNATURE_THREADS`] threads:
/// the signature is the delta's critical path), each written out as soon
/// as it is in order, then the end and a status: done, or why the sums
/// are not to be used (a read error, the file changed meanwhile).
/// `Err`: a write failed (the stream broke).
fn stream_signature(f: File, id: Ident, block: u32, w: &Shared) -> io::Result<()> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = threads.min(SIGNATURE_THREADS);
    let piece = (PIECE_BYTES / block).max(1) as usize;
    let mut broke: Option<io::Error> = None;
    let read = crate::rolling::Signature::stream_file(
        &f,
        id.size,
        block as usize,
        threads,
        piece,
        |sums| {
            let mut b = Vec::with_capacity(4 + sums.len() * 36);
            pt::signature_piece(sums, &mut b);
            let mut w = lock(w);
            let r = w.write_all(&b).and_then(|()| w.flush());
            r.map_err(|e| {
                let again = io::Error::new(e.kind(), e.to_string());
                broke = Some(e);
                again
            })
        },
    );
    if let Some(e) = broke {
        return Err(e);
    }
    let status = read.map_err(io_fail("read")).and_then(|()| {
        let now = f.metadata().map_err(io_fail("stat"))?;
        if Ident::of(&now) != id {
            return Err(Fail(0, "changed while its blocks were hashed".into()));
        }
        Ok(())
    });
    let mut b = Vec::new();
    pt::signature_end(&mut b);
    let mut w = lock(w);
    w.write_all(&b)?;
    super::reply(&mut **w, &status)?;
    w.flush()
}

/// The `L` reply: no root, an error, or the whole tree as items.
fn list(root: &Path, out: &mut dyn Write) -> io::Result<()> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    let fd = match rustix::fs::open(root, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return out.write_all(&[pt::LIST_NO_ROOT]),
        Err(e) => return super::reply(out, &Err(ctx("open the root", e.into()))),
    };
    let st = rustix::fs::fstat(&fd)?;
    out.write_all(&[pt::LIST_ITEMS])?;
    let mut b = Vec::new();
    pt::entry_item(b"", &crate::plan::source::entry_of(&st, None), &mut b);
    out.write_all(&b)?;
    walk(fd, Path::new(""), out)?;
    out.write_all(b".")
}

fn join(rel: &Path, name: &OsStr) -> PathBuf {
    if rel.as_os_str().is_empty() {
        PathBuf::from(name)
    } else {
        rel.join(name)
    }
}

fn error_item(out: &mut dyn Write, rel: &Path, msg: &str) -> io::Result<()> {
    let mut b = Vec::new();
    pt::error_item(rel.as_os_str().as_bytes(), msg, &mut b);
    out.write_all(&b)
}

/// List the directory open as `fd` (at `rel`): each entry, and each
/// subdirectory's contents right after its own entry.
#[allow(clippy::unnecessary_cast)]
fn walk(fd: OwnedFd, rel: &Path, out: &mut dyn Write) -> io::Result<()> {
    let mut d = match rustix::fs::Dir::new(fd) {
        Ok(d) => d,
        Err(e) => return error_item(out, rel, &e.to_string()),
    };
    let mut names: Vec<Vec<u8>> = Vec::new();
    while let Some(e) = d.read() {
        match e {
            Ok(e) => {
                let n = e.file_name().to_bytes();
                if n != b"." && n != b".." {
                    names.push(n.to_vec());
                }
            }
            Err(e) => {
                error_item(out, rel, &e.to_string())?;
                break;
            }
        }
    }
    let Ok(fd) = d.fd() else { return Ok(()) };
    let mut b = Vec::new();
    for name in names {
        let name = OsStr::from_bytes(&name);
        let child = join(rel, name);
        let st = match rustix::fs::statat(fd, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(rustix::io::Errno::NOENT) => continue,
            Err(e) => {
                error_item(out, &child, &format!("cannot stat: {e}"))?;
                continue;
            }
        };
        let ft = FileType::from_raw_mode(st.st_mode as _);
        let link = if ft == FileType::Symlink {
            match rustix::fs::readlinkat(fd, name, Vec::new()) {
                Ok(l) => Some(PathBuf::from(OsStr::from_bytes(l.as_bytes()))),
                Err(e) => {
                    error_item(out, &child, &format!("cannot read link: {e}"))?;
                    continue;
                }
            }
        } else {
            None
        };
        b.clear();
        let entry = crate::plan::source::entry_of(&st, link);
        pt::entry_item(child.as_os_str().as_bytes(), &entry, &mut b);
        out.write_all(&b)?;
        if ft != FileType::Directory {
            continue;
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let sub = match rustix::fs::openat(fd, name, flags, Mode::empty()) {
            Ok(sub) => sub,
            Err(e) => {
                error_item(out, &child, &format!("cannot open: {e}"))?;
                continue;
            }
        };
        match rustix::fs::fstat(&sub) {
            Ok(now) if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino) => {
                walk(sub, &child, out)?;
            }
            _ => error_item(out, &child, "changed while it was listed")?,
        }
    }
    Ok(())
}
