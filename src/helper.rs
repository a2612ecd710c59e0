//! The remote helper: `syncjob helper`, run on an SSH target over an exec
//! channel when the job sets `ssh.remote_helper`. It receives files as one
//! stream and writes each one as SFTP would (a temporary name in the same
//! directory, mode and mtime set, then renamed into place), but without
//! five SFTP requests and replies per file: one record in, one reply out,
//! as rsync's receiving side does. Without `remote_helper` (the default),
//! files go over SFTP, which every OpenSSH server has.
//!
//! Confinement: `syncjob helper --root DIR` (the client passes its target
//! root; as an ssh forced command the operator fixes it) touches nothing
//! outside DIR. Every path in a record is relative to DIR, plain names only
//! (no `..`, not absolute), and is reached through directory handles that
//! never follow a symlink ([`Beneath`]); a temporary name must be a
//! `.syncjob-tmp.` name in the final name's directory; set-user-ID and
//! set-group-ID bits are refused unless the record sets the owner and the
//! helper runs as root; block hashes are given only for blocks of at least
//! [`MIN_BLOCK`], at most [`MAX_BLOCKS`] per file and [`MAX_HASHED`] files
//! awaiting their delta. Without `--root` the helper refuses to start.
//!
//! Protocol (all integers little-endian), after the helper's greeting line
//! [`GREETING`]:
//!
//! ```text
//! client → helper, per file:
//!   b'F'  u32 len, temporary path   u32 len, final path
//!         u32 mode  i64 mtime  u32 mtime_ns  u8 owner?  u32 uid  u32 gid
//!         chunks: u32 len (> 0), bytes …   then u32 0
//!         u8 commit (1) or abort (0: the source changed or could not be read)
//!   b'D'  the same, and the data may also say "copy from the file now at
//!         the final name": u32 0xFFFFFFFF, u64 offset, u32 len
//! helper → client, per file, in order:
//!   u8 0 (done)  |  u8 1, i32 errno (0: none, -1: aborted), u16 len, message
//!
//! block hashes of a file on the target (for a big changed file):
//!   b'H'  u32 len, final path   u32 block size
//!   reply: u8 0, u64 size, u32 count, count × SHA-256  |  an error reply
//! ```
//!
//! A `D` record is checked against the `H` hashes the helper gave for that
//! path: if the file changed on the target since (size, mtime, ctime,
//! inode), the record fails and nothing is renamed. Blocks are compared at
//! fixed offsets (no rolling checksum): appends and in-place changes, the
//! common cases for big files, send only the changed blocks.
//!
//! A file is at its final name only after a complete stream and a commit;
//! anything else (abort, error, the connection lost mid-file) removes the
//! temporary file (or leaves it to the next run's stale-temporary cleanup
//! if the helper itself is killed).

use crate::beneath::Beneath;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The first line the helper prints: protocol name and version. Version 2:
/// paths relative to `--root` (version 1 took absolute paths, unconfined).
pub const GREETING: &[u8] = b"syncjob-helper 2\n";
/// Smallest block size of a hashes request.
pub const MIN_BLOCK: u32 = 4 << 10;
/// Most block hashes given for one file.
pub const MAX_BLOCKS: u64 = 1 << 20;
/// Most files whose hashes were given and whose delta has not come yet.
pub const MAX_HASHED: usize = 4096;

/// The errno of a reply for a file the sender aborted.
const ABORTED: i32 = -1;
/// A chunk length that means "copy from the basis".
const COPY: u32 = u32::MAX;
/// Largest block size of a hashes request.
const MAX_BLOCK: u32 = 64 << 20;
/// Longest path accepted in a record.
const MAX_PATH: u32 = 64 << 10;
/// Longest data chunk accepted in a record.
pub const MAX_CHUNK: u32 = 1 << 20;

/// The header of one file record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader<'a> {
    /// a `D` record: data may be copied from the file at the final name
    pub basis: bool,
    pub tmp: &'a [u8],
    pub fin: &'a [u8],
    pub mode: u32,
    pub mtime: i64,
    pub mtime_ns: u32,
    pub owner: Option<(u32, u32)>,
}

/// Encode a file record's header.
pub fn header(h: &FileHeader, out: &mut Vec<u8>) {
    out.push(if h.basis { b'D' } else { b'F' });
    for p in [h.tmp, h.fin] {
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(p);
    }
    out.extend_from_slice(&h.mode.to_le_bytes());
    out.extend_from_slice(&h.mtime.to_le_bytes());
    out.extend_from_slice(&h.mtime_ns.to_le_bytes());
    let (uid, gid) = h.owner.unwrap_or((0, 0));
    out.push(h.owner.is_some() as u8);
    out.extend_from_slice(&uid.to_le_bytes());
    out.extend_from_slice(&gid.to_le_bytes());
}

/// Encode one data chunk (`data` not empty).
pub fn chunk(data: &[u8], out: &mut Vec<u8>) {
    debug_assert!(!data.is_empty() && data.len() <= MAX_CHUNK as usize);
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(data);
}

/// Encode "copy `len` bytes at `offset` of the basis" (in a `D` record).
pub fn copy(offset: u64, len: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&COPY.to_le_bytes());
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
}

/// Encode a request for the block hashes of the file at `fin`.
pub fn hashes_request(fin: &[u8], block: u32, out: &mut Vec<u8>) {
    out.push(b'H');
    out.extend_from_slice(&(fin.len() as u32).to_le_bytes());
    out.extend_from_slice(fin);
    out.extend_from_slice(&block.to_le_bytes());
}

/// The block hashes of a file on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hashes {
    pub size: u64,
    pub block: u32,
    pub sums: Vec<[u8; 32]>,
}

/// Read the reply to a hashes request: the hashes, or why there are none
/// (no such file, not a regular file, …).
pub fn read_hashes(r: &mut dyn Read, block: u32) -> io::Result<io::Result<Hashes>> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    match b[0] {
        0 => {}
        1 => return Ok(Err(read_fail(r)?)),
        x => return Err(bad_reply(x)),
    }
    let mut h = [0u8; 12];
    r.read_exact(&mut h)?;
    let size = u64::from_le_bytes(h[..8].try_into().unwrap());
    let count = u32::from_le_bytes(h[8..].try_into().unwrap());
    if count as u64 != size.div_ceil(block.max(1) as u64) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "remote helper: wrong number of block hashes",
        ));
    }
    let mut sums = vec![[0u8; 32]; count as usize];
    for s in sums.iter_mut() {
        r.read_exact(s)?;
    }
    Ok(Ok(Hashes { size, block, sums }))
}

/// The SHA-256 of one block.
pub fn block_sum(data: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(data).into()
}

/// Encode the end of a file's data: commit it, or abort it.
pub fn end(commit: bool, out: &mut Vec<u8>) {
    out.extend_from_slice(&0u32.to_le_bytes());
    out.push(commit as u8);
}

/// Read one reply: `Ok(())` or the helper's error for that file.
pub fn read_reply(r: &mut dyn Read) -> io::Result<io::Result<()>> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    match b[0] {
        0 => Ok(Ok(())),
        1 => Ok(Err(read_fail(r)?)),
        x => Err(bad_reply(x)),
    }
}

fn bad_reply(x: u8) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("remote helper: unexpected reply byte {x}"),
    )
}

/// The rest of an error reply.
fn read_fail(r: &mut dyn Read) -> io::Result<io::Error> {
    let mut e = [0u8; 6];
    r.read_exact(&mut e)?;
    let errno = i32::from_le_bytes(e[..4].try_into().unwrap());
    let len = u16::from_le_bytes(e[4..].try_into().unwrap()) as usize;
    let mut msg = vec![0u8; len];
    r.read_exact(&mut msg)?;
    let msg = String::from_utf8_lossy(&msg).into_owned();
    let kind = match errno {
        ABORTED => io::ErrorKind::Interrupted,
        e if e > 0 => io::Error::from_raw_os_error(e).kind(),
        _ => io::ErrorKind::Other,
    };
    Ok(io::Error::new(kind, msg))
}

/// A file the helper could not write: errno (0: none) and message.
struct Fail(i32, String);

fn reply(w: &mut dyn Write, r: &Result<(), Fail>) -> io::Result<()> {
    match r {
        Ok(()) => w.write_all(&[0]),
        Err(Fail(errno, msg)) => {
            let mut b = vec![1u8];
            b.extend_from_slice(&errno.to_le_bytes());
            let msg = &msg.as_bytes()[..msg.len().min(512)];
            b.extend_from_slice(&(msg.len() as u16).to_le_bytes());
            b.extend_from_slice(msg);
            w.write_all(&b)
        }
    }
}

fn u32_of(r: &mut dyn Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn bytes_of(r: &mut dyn Read, max: u32) -> io::Result<Vec<u8>> {
    let n = u32_of(r)?;
    if n > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("record field of {n} bytes"),
        ));
    }
    let mut v = vec![0u8; n as usize];
    r.read_exact(&mut v)?;
    Ok(v)
}

/// Say what was being done, keeping the errno.
fn ctx(what: &str, e: io::Error) -> Fail {
    Fail(e.raw_os_error().unwrap_or(0), format!("{what}: {e}"))
}

/// Serve one client: read file records from `input`, write replies to
/// `output`, until end of input. Returns an error only for a broken stream.
pub fn serve<R: Read>(
    input: &mut io::BufReader<R>,
    output: &mut dyn Write,
    root: &Path,
) -> io::Result<()> {
    let mut fs = Beneath::new(root.to_path_buf());
    output.write_all(GREETING)?;
    output.flush()?;
    let mut buf = vec![0u8; MAX_CHUNK as usize];
    // the files whose block hashes were given, as they were then
    let mut hashed: HashMap<Vec<u8>, Ident> = HashMap::new();
    loop {
        let mut op = [0u8; 1];
        match input.read(&mut op) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        match op[0] {
            b'H' => {
                let fin = bytes_of(input, MAX_PATH)?;
                let block = u32_of(input)?;
                let r = if hashed.len() >= MAX_HASHED && !hashed.contains_key(&fin) {
                    Err(Fail(libc::EINVAL, "too many files awaiting their delta".into()))
                } else {
                    hash_blocks(&mut fs, &fin, block, &mut buf)
                };
                match r {
                    Ok((id, sums)) => {
                        let mut b = vec![0u8];
                        b.extend_from_slice(&id.size.to_le_bytes());
                        b.extend_from_slice(&(sums.len() as u32).to_le_bytes());
                        for s in &sums {
                            b.extend_from_slice(s);
                        }
                        output.write_all(&b)?;
                        hashed.insert(fin, id);
                    }
                    Err(f) => reply(output, &Err(f))?,
                }
            }
            b'F' | b'D' => {
                let delta = op[0] == b'D';
                receive(input, output, &mut fs, &mut buf, delta, &mut hashed)?
            }
            x => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("unknown record {x:#x}"),
                ));
            }
        }
        // replies go out when the input has no more records queued
        if input.buffer().is_empty() {
            output.flush()?;
        }
    }
}

/// What identifies a file's version: if any of it changes, the file did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ident {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Ident {
    fn of(md: &std::fs::Metadata) -> Ident {
        use std::os::unix::fs::MetadataExt;
        Ident {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime: (md.mtime(), md.mtime_nsec()),
            ctime: (md.ctime(), md.ctime_nsec()),
        }
    }
}

fn open_regular(fs: &mut Beneath, path: &Path) -> Result<(File, std::fs::Metadata), Fail> {
    let f = fs.open_read(path).map_err(|e| ctx("open", e))?;
    let md = f.metadata().map_err(|e| ctx("stat", e))?;
    Ok((f, md))
}

/// The directory, temporary name and final name of a record: the final
/// name relative to the root, the temporary one a `.syncjob-tmp.` name
/// beside it.
fn names<'a>(tmp: &'a [u8], fin: &'a [u8]) -> Result<(&'a Path, &'a OsStr, &'a OsStr), Fail> {
    let tmp = Path::new(OsStr::from_bytes(tmp));
    let fin = Path::new(OsStr::from_bytes(fin));
    crate::beneath::check_relative(fin).map_err(|e| Fail(libc::EINVAL, e.to_string()))?;
    let dir = fin.parent().unwrap_or(Path::new(""));
    match (fin.file_name(), tmp.file_name()) {
        (Some(f), Some(t))
            if tmp.parent() == Some(dir) && crate::plan::is_temp_name(Path::new(t)) =>
        {
            Ok((dir, t, f))
        }
        _ => Err(Fail(
            libc::EINVAL,
            format!(
                "{}: not a temporary name beside {}",
                tmp.display(),
                fin.display()
            ),
        )),
    }
}

/// Set-user-ID and set-group-ID bits are set only on a file whose owner the
/// record sets, by a helper running as root.
fn check_mode(mode: u32, owner: Option<(u32, u32)>) -> Result<(), Fail> {
    if mode & 0o6000 != 0 && (owner.is_none() || !rustix::process::geteuid().is_root()) {
        return Err(Fail(
            libc::EPERM,
            format!(
                "mode {:o} refused: set-user-ID/set-group-ID bits need preserve_owner and a helper running as root",
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// The SHA-256 of each `block`-sized piece of the file at `fin`.
fn hash_blocks(
    fs: &mut Beneath,
    fin: &[u8],
    block: u32,
    buf: &mut [u8],
) -> Result<(Ident, Vec<[u8; 32]>), Fail> {
    use std::os::unix::fs::FileExt;
    if !(MIN_BLOCK..=MAX_BLOCK).contains(&block) {
        return Err(Fail(
            libc::EINVAL,
            format!("block size {block} refused ({MIN_BLOCK}..={MAX_BLOCK})"),
        ));
    }
    let (f, md) = open_regular(fs, Path::new(OsStr::from_bytes(fin)))?;
    let id = Ident::of(&md);
    if id.size.div_ceil(block as u64) > MAX_BLOCKS {
        return Err(Fail(
            libc::EINVAL,
            format!("more than {MAX_BLOCKS} blocks of {block} bytes"),
        ));
    }
    let mut sums = Vec::with_capacity(id.size.div_ceil(block as u64) as usize);
    let mut off = 0u64;
    let mut big = Vec::new();
    while off < id.size {
        let len = (id.size - off).min(block as u64) as usize;
        let data = if len <= buf.len() {
            &mut buf[..len]
        } else {
            big.resize(len, 0);
            &mut big[..]
        };
        f.read_exact_at(data, off).map_err(|e| ctx("read", e))?;
        sums.push(block_sum(data));
        off += len as u64;
    }
    // a file that changed while it was read gives no hashes
    let now = f.metadata().map_err(|e| ctx("stat", e))?;
    if Ident::of(&now) != id {
        return Err(Fail(0, "changed while its blocks were hashed".into()));
    }
    Ok((id, sums))
}

/// One `F` or `D` record: the file is written under its temporary name,
/// then set and renamed into place, or removed.
fn receive<R: Read>(
    input: &mut io::BufReader<R>,
    output: &mut dyn Write,
    fs: &mut Beneath,
    buf: &mut [u8],
    delta: bool,
    hashed: &mut HashMap<Vec<u8>, Ident>,
) -> io::Result<()> {
    let tmp = bytes_of(input, MAX_PATH)?;
    let fin = bytes_of(input, MAX_PATH)?;
    let mut fixed = [0u8; 4 + 8 + 4 + 1 + 4 + 4];
    input.read_exact(&mut fixed)?;
    let mode = u32::from_le_bytes(fixed[0..4].try_into().unwrap());
    let mtime = i64::from_le_bytes(fixed[4..12].try_into().unwrap());
    let mtime_ns = u32::from_le_bytes(fixed[12..16].try_into().unwrap());
    let owner = (fixed[16] != 0).then(|| {
        (
            u32::from_le_bytes(fixed[17..21].try_into().unwrap()),
            u32::from_le_bytes(fixed[21..25].try_into().unwrap()),
        )
    });
    let fin_path = Path::new(OsStr::from_bytes(&fin));
    let (mut err, at) = match names(&tmp, &fin).and_then(|n| check_mode(mode, owner).map(|()| n)) {
        Ok(n) => (None, Some(n)),
        Err(f) => (Some(f), None),
    };
    // a delta's basis: the file at the final name, as it was hashed
    let mut basis: Option<File> = None;
    if err.is_none() && delta {
        match (hashed.remove(&fin), open_regular(fs, fin_path)) {
            (Some(id), Ok((f, md))) if Ident::of(&md) == id => basis = Some(f),
            (None, _) => err = Some(Fail(libc::EINVAL, "delta without block hashes".into())),
            (_, Err(f)) => err = Some(f),
            (Some(_), Ok(_)) => {
                err = Some(Fail(
                    0,
                    "the file on the target changed since its blocks were hashed".into(),
                ))
            }
        }
    }
    // the temporary file is new (O_EXCL) and private until complete
    let mut file: Option<File> = None;
    if let (None, Some((dir, t, _))) = (&err, at) {
        match fs.create_new(dir, t) {
            Ok(f) => file = Some(f),
            Err(e) => err = Some(ctx("create temporary file", e)),
        }
    }
    let created = file.is_some();
    // the data comes whatever happened: read it all
    let commit = match read_data(input, buf, &mut file, &mut err, delta, basis.as_ref()) {
        Ok(c) => c,
        Err(e) => {
            // the stream broke mid-file: nothing stays behind
            if let (true, Some((dir, t, _))) = (created, at) {
                fs.unlink_in(dir, t);
            }
            return Err(e);
        }
    };
    let result = match (file, err) {
        (_, Some(e)) => Err(e),
        (None, None) => Err(Fail(0, "no file".into())),
        (Some(_), None) if !commit => Err(Fail(ABORTED, "aborted by the sender".into())),
        (Some(f), None) => finish(f, mode, mtime, mtime_ns, owner).and_then(|()| {
            let (dir, t, name) = at.expect("names checked");
            fs.rename_in(dir, t, name)
                .map_err(|e| ctx("rename into place", e))
        }),
    };
    if let (true, true, Some((dir, t, _))) = (result.is_err(), created, at) {
        fs.unlink_in(dir, t);
    }
    reply(output, &result)
}

/// A file's data chunks (and, with a basis, copies from it), written to
/// `file` until an error (kept in `err`); returns whether the sender
/// committed the file.
fn read_data(
    input: &mut dyn Read,
    buf: &mut [u8],
    file: &mut Option<File>,
    err: &mut Option<Fail>,
    delta: bool,
    basis: Option<&File>,
) -> io::Result<bool> {
    use std::os::unix::fs::FileExt;
    loop {
        let n = u32_of(input)?;
        if n == 0 {
            break;
        }
        if n == COPY {
            let mut c = [0u8; 12];
            input.read_exact(&mut c)?;
            let mut off = u64::from_le_bytes(c[..8].try_into().unwrap());
            let mut left = u32::from_le_bytes(c[8..].try_into().unwrap()) as usize;
            let Some(b) = basis else {
                if delta {
                    // the basis could not be used: the file already failed
                    continue;
                }
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "copy in a record without a basis",
                ));
            };
            while left > 0 && err.is_none() {
                let step = left.min(buf.len());
                let data = &mut buf[..step];
                if let Err(e) = b.read_exact_at(data, off) {
                    *err = Some(ctx("read the old version", e));
                    break;
                }
                if let Some(f) = file.as_mut()
                    && let Err(e) = f.write_all(data)
                {
                    *err = Some(ctx("write", e));
                }
                off += step as u64;
                left -= step;
            }
            continue;
        }
        if n > MAX_CHUNK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("data chunk of {n} bytes"),
            ));
        }
        let data = &mut buf[..n as usize];
        input.read_exact(data)?;
        if let (Some(f), None) = (file.as_mut(), err.as_ref())
            && let Err(e) = f.write_all(data)
        {
            *err = Some(ctx("write", e));
        }
    }
    let mut commit = [0u8; 1];
    input.read_exact(&mut commit)?;
    Ok(commit[0] == 1)
}

/// Set the attributes of a complete temporary file and close it.
fn finish(
    f: File,
    mode: u32,
    mtime: i64,
    mtime_ns: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), Fail> {
    use std::os::fd::AsRawFd;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::fchown(&f, Some(uid), Some(gid)).map_err(|e| ctx("set owner", e))?;
    }
    // after fchown, which may clear set-id bits
    f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
        .map_err(|e| ctx("set mode", e))?;
    let ts = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: mtime_ns as libc::c_long,
    };
    // SAFETY: a valid descriptor and two valid timespecs
    if unsafe { libc::futimens(f.as_raw_fd(), [ts, ts].as_ptr()) } != 0 {
        return Err(ctx("set mtime", io::Error::last_os_error()));
    }
    // a full disk may show only when the data is flushed at close
    // SAFETY: the descriptor is owned by `f` and closed exactly once here
    let fd = std::os::fd::IntoRawFd::into_raw_fd(f);
    if unsafe { libc::close(fd) } != 0 {
        return Err(ctx("close", io::Error::last_os_error()));
    }
    Ok(())
}

/// `syncjob helper --root DIR`: serve stdin/stdout, confined to DIR.
pub fn main(root: Option<&Path>) -> io::Result<()> {
    let Some(root) = root else {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--root DIR is required (the directory every path is confined to; \
             a syncjob client passes its target's path)",
        ));
    };
    let stdin = io::stdin();
    let mut input = io::BufReader::with_capacity(1 << 20, stdin.lock());
    let mut output = io::BufWriter::new(io::stdout().lock());
    serve(&mut input, &mut output, root)?;
    output.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A record for `dir/name` (relative to the helper's root).
    fn record(dir: &Path, name: &str, data: &[u8], commit: bool, out: &mut Vec<u8>) {
        let tmp = dir.join(format!(".syncjob-tmp.{name}"));
        let fin = dir.join(name);
        header(
            &FileHeader {
                basis: false,
                tmp: tmp.as_os_str().as_bytes(),
                fin: fin.as_os_str().as_bytes(),
                mode: 0o640,
                mtime: 1_500_000_000,
                mtime_ns: 123_456_789,
                owner: None,
            },
            out,
        );
        for c in data.chunks(3) {
            chunk(c, out);
        }
        end(commit, out);
    }

    #[test]
    fn files_land_whole_with_attributes_or_not_at_all() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("old"), b"old content").unwrap();
        let mut input = Vec::new();
        let here = Path::new("");
        record(here, "a.txt", b"hello world", true, &mut input);
        record(here, "old", b"half", false, &mut input);
        record(here, "empty", b"", true, &mut input);
        // a directory that does not exist: the error comes back, the rest goes on
        record(Path::new("nodir"), "x", b"data", true, &mut input);
        record(here, "last", b"z", true, &mut input);
        let mut out = Vec::new();
        serve(&mut io::BufReader::new(&input[..]), &mut out, d.path()).unwrap();
        assert!(out.starts_with(GREETING));
        let mut r = &out[GREETING.len()..];
        assert!(read_reply(&mut r).unwrap().is_ok());
        let aborted = read_reply(&mut r).unwrap().unwrap_err();
        assert_eq!(aborted.kind(), io::ErrorKind::Interrupted);
        assert!(read_reply(&mut r).unwrap().is_ok());
        let missing = read_reply(&mut r).unwrap().unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound, "{missing}");
        assert!(missing.to_string().contains("create temporary file"));
        assert!(read_reply(&mut r).unwrap().is_ok());
        assert!(r.is_empty());

        let a = d.path().join("a.txt");
        assert_eq!(std::fs::read(&a).unwrap(), b"hello world");
        let md = std::fs::metadata(&a).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o640);
        assert_eq!((md.mtime(), md.mtime_nsec()), (1_500_000_000, 123_456_789));
        assert_eq!(std::fs::read(d.path().join("old")).unwrap(), b"old content");
        assert_eq!(std::fs::read(d.path().join("empty")).unwrap(), b"");
        let left: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with(".syncjob"))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
    }

    #[test]
    fn a_stream_cut_mid_file_leaves_nothing_at_the_final_name() {
        let d = tempfile::tempdir().unwrap();
        let mut input = Vec::new();
        record(Path::new(""), "cut", b"0123456789", true, &mut input);
        input.truncate(input.len() - 8);
        let mut out = Vec::new();
        assert!(serve(&mut io::BufReader::new(&input[..]), &mut out, d.path()).is_err());
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "no final, no temporary file"
        );
    }

    #[test]
    fn a_delta_rebuilds_the_file_from_its_old_blocks_and_new_data() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().to_path_buf();
        let fin = d.path().join("big");
        let tmp = Path::new(".syncjob-tmp.big");
        let old: Vec<u8> = (0..10_000u32).flat_map(|i| i.to_le_bytes()).collect();
        std::fs::write(&fin, &old).unwrap();
        let fin_b = b"big";
        // 1. the hashes of the old version, in blocks of 4096
        let mut input = Vec::new();
        hashes_request(fin_b, 4096, &mut input);
        let mut out = Vec::new();
        serve(&mut io::BufReader::new(&input[..]), &mut out, &root).unwrap();
        let mut r = &out[GREETING.len()..];
        let h = read_hashes(&mut r, 4096).unwrap().unwrap();
        assert_eq!((h.size, h.sums.len()), (40_000, 10));
        assert_eq!(h.sums[0], block_sum(&old[..4096]));
        assert_eq!(h.sums[9], block_sum(&old[36_864..]));
        let delta_header = |input: &mut Vec<u8>| {
            header(
                &FileHeader {
                    basis: true,
                    tmp: tmp.as_os_str().as_bytes(),
                    fin: fin_b,
                    mode: 0o600,
                    mtime: 0,
                    mtime_ns: 0,
                    owner: None,
                },
                input,
            )
        };
        // 2. the new version: block 2 changed, 100 bytes appended
        let mut new = old.clone();
        new[8192..8200].copy_from_slice(b"CHANGED!");
        new.extend_from_slice(&[9u8; 100]);
        let mut input = Vec::new();
        hashes_request(fin_b, 4096, &mut input);
        delta_header(&mut input);
        copy(0, 8192, &mut input);
        chunk(&new[8192..12288], &mut input);
        copy(12288, 40_000 - 12288, &mut input);
        chunk(&new[40_000..], &mut input);
        end(true, &mut input);
        let mut out = Vec::new();
        serve(&mut io::BufReader::new(&input[..]), &mut out, &root).unwrap();
        let mut r = &out[GREETING.len()..];
        read_hashes(&mut r, 4096).unwrap().unwrap();
        read_reply(&mut r).unwrap().unwrap();
        assert_eq!(std::fs::read(&fin).unwrap(), new);
        assert!(!d.path().join(tmp).exists());
        // 3. a delta without hashes taken by this helper: refused
        let mut input = Vec::new();
        delta_header(&mut input);
        copy(0, 100, &mut input);
        end(true, &mut input);
        let mut out = Vec::new();
        serve(&mut io::BufReader::new(&input[..]), &mut out, &root).unwrap();
        let e = read_reply(&mut &out[GREETING.len()..])
            .unwrap()
            .unwrap_err();
        assert!(e.to_string().contains("without block hashes"), "{e}");
        assert_eq!(std::fs::read(&fin).unwrap(), new, "untouched");
        assert!(!d.path().join(tmp).exists());
        // hashes taken, then the file rewritten on the target, then the
        // delta: refused, nothing renamed
        let mut input = Vec::new();
        hashes_request(fin_b, 4096, &mut input);
        let (tx_in, rx_in) = std::os::unix::net::UnixStream::pair().unwrap();
        let (tx_out, mut rx_out) = std::os::unix::net::UnixStream::pair().unwrap();
        let server = std::thread::spawn(move || {
            let mut w = tx_out;
            serve(&mut io::BufReader::new(rx_in), &mut w, &root)
        });
        let mut tx = tx_in;
        tx.write_all(&input).unwrap();
        let mut g = vec![0u8; GREETING.len()];
        rx_out.read_exact(&mut g).unwrap();
        read_hashes(&mut rx_out, 4096).unwrap().unwrap();
        std::fs::write(&fin, b"changed behind our back").unwrap();
        let mut input = Vec::new();
        delta_header(&mut input);
        copy(0, 10, &mut input);
        end(true, &mut input);
        tx.write_all(&input).unwrap();
        let e = read_reply(&mut rx_out).unwrap().unwrap_err();
        assert!(e.to_string().contains("changed since"), "{e}");
        drop(tx);
        server.join().unwrap().unwrap();
        assert_eq!(std::fs::read(&fin).unwrap(), b"changed behind our back");
        assert!(!d.path().join(tmp).exists());
    }

    #[test]
    fn garbage_is_refused() {
        let mut out = Vec::new();
        let root = Path::new("/nonexistent");
        let e = serve(&mut io::BufReader::new(&b"Xjunk"[..]), &mut out, root).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let mut huge = vec![b'F'];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        let e = serve(&mut io::BufReader::new(&huge[..]), &mut out, root).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
