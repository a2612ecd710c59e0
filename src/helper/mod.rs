//! The remote helper: `syncjob helper`, run on an SSH target over an exec
//! channel (`ssh.remote_helper`, `auto` by default). It receives files as one
//! stream and writes each one unnamed in its directory (or under a
//! temporary name), sets mode and mtime, then names it (see [`land`]),
//! without five SFTP requests and replies per file: one record in, one
//! reply out, as rsync's receiving side does. Without a helper (`remote_helper:
//! none`, or none found), files go over SFTP, which every OpenSSH server
//! has.
//!
//! The wire format (records, replies, bounds) is in [`proto`] (files) and
//! [`proto_tree`] (protocol 3: listing, directories, symlinks, attributes,
//! removals, checksums, rolling signatures), shared with the SSH
//! transport's helper client; the tree records are served by `tree`. With
//! them the helper carries a whole job: a key whose forced command is the
//! helper needs nothing else on the remote.
//!
//! Confinement: `syncjob helper --root DIR` (the client passes its target
//! root; as an ssh forced command the operator fixes it) touches nothing
//! outside DIR. Every path in a record is relative to DIR, plain names only
//! (no `..`, not absolute), and is reached through directory handles that
//! never follow a symlink ([`Beneath`]); a temporary name must be a
//! `.syncjob-tmp.` name in the final name's directory; set-user-ID and
//! set-group-ID bits are refused unless the record sets the owner and the
//! helper runs as root; block hashes are given only for blocks of at least
//! [`proto::MIN_BLOCK`], at most [`proto::MAX_BLOCKS`] per file and
//! [`proto::MAX_HASHED`] files awaiting their delta. Without `--root` the
//! helper refuses to start.
//!
//! A file is at its final name only after a complete stream and a commit;
//! anything else (abort, error, the connection lost mid-file) drops the
//! unnamed file or removes the temporary one (a temporary name left by a
//! killed helper goes at the next run's stale-temporary cleanup).

mod copy;
mod land;
mod ordered;
pub mod proto;
pub mod proto_tree;
mod tree;

use crate::beneath::Beneath;
use proto::{
    ABORTED, COPY, MAX_BLOCK, MAX_BLOCKS, MAX_CHUNK, MAX_HASHED, MAX_PATH, MIN_BLOCK, block_sum,
    bytes_of, u32_of,
};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A file the helper could not write: errno (0: none) and message.
#[derive(Debug)]
pub(crate) struct Fail(i32, String);

pub(crate) fn reply(w: &mut dyn Write, r: &Result<(), Fail>) -> io::Result<()> {
    let mut b = Vec::new();
    match r {
        Ok(()) => proto::done(&mut b),
        Err(Fail(errno, msg)) => proto::failed(*errno, msg, &mut b),
    }
    w.write_all(&b)
}

/// Say what was being done, keeping the errno.
pub(crate) fn ctx(what: &str, e: io::Error) -> Fail {
    Fail(e.raw_os_error().unwrap_or(0), format!("{what}: {e}"))
}

/// Serve one client: read file records from `input`, write replies to
/// `output`, until end of input. Returns an error only for a broken stream.
pub fn serve<R: Read>(
    input: &mut io::BufReader<R>,
    output: &mut (dyn Write + Send),
    root: &Path,
) -> io::Result<()> {
    output.write_all(proto::GREETING)?;
    output.flush()?;
    let shared: ordered::Shared = std::sync::Mutex::new(output);
    std::thread::scope(|sc| {
        let mut out = ordered::Ordered::new(&shared, sc);
        let r = records(input, &mut out, root);
        let settled = out.settle();
        r.and(settled)
    })
}

/// The records of one client (see [`serve`]).
fn records<R: Read>(
    input: &mut io::BufReader<R>,
    output: &mut ordered::Ordered,
    root: &Path,
) -> io::Result<()> {
    let mut fs = Beneath::new(root.to_path_buf());
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
                    Err(Fail(
                        libc::EINVAL,
                        "too many files awaiting their delta".into(),
                    ))
                } else {
                    hash_blocks(&mut fs, &fin, block, &mut buf)
                };
                match r {
                    Ok((id, sums)) => {
                        let mut b = Vec::new();
                        proto::hashes_reply(id.size, &sums, &mut b);
                        output.write_all(&b)?;
                        hashed.insert(fin, id);
                    }
                    Err(f) => reply(output, &Err(f))?,
                }
            }
            b'W' => tree::signature(input, output, &mut fs, &mut hashed)?,
            b'F' | b'D' => {
                let delta = op[0] == b'D';
                receive(input, output, &mut fs, &mut buf, delta, &mut hashed)?
            }
            x => {
                if !tree::serve_op(x, input, output, &mut fs)? {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("unknown record {x:#x}"),
                    ));
                }
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
pub(crate) struct Ident {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Ident {
    pub(crate) fn of(md: &std::fs::Metadata) -> Ident {
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

pub(crate) fn open_regular(
    fs: &mut Beneath,
    path: &Path,
) -> Result<(File, std::fs::Metadata), Fail> {
    let f = fs.open_read(path).map_err(|e| ctx("open", e))?;
    let md = f.metadata().map_err(|e| ctx("stat", e))?;
    Ok((f, md))
}

/// The directory, temporary name and final name of a record: the final
/// name relative to the root, the temporary one a `.syncjob-tmp.` name
/// beside it.
pub(crate) fn names<'a>(
    tmp: &'a [u8],
    fin: &'a [u8],
) -> Result<(&'a Path, &'a OsStr, &'a OsStr), Fail> {
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

/// Write the next `n` bytes of `input` to `file` (until an error, kept in
/// `err`; then they are only read), straight from the reader's buffer: no
/// copy through another one.
fn write_from(
    input: &mut dyn BufRead,
    mut n: usize,
    file: &mut Option<File>,
    err: &mut Option<Fail>,
) -> io::Result<()> {
    while n > 0 {
        let avail = input.fill_buf()?;
        if avail.is_empty() {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let k = avail.len().min(n);
        if let (Some(f), None) = (file.as_mut(), err.as_ref())
            && let Err(e) = f.write_all(&avail[..k])
        {
            *err = Some(ctx("write", e));
        }
        input.consume(k);
        n -= k;
    }
    Ok(())
}

/// Set-user-ID and set-group-ID bits are set only on a file whose owner the
/// record sets, by a helper running as root.
pub(crate) fn check_mode(mode: u32, owner: Option<(u32, u32)>) -> Result<(), Fail> {
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
    let proto::ReceivedHeader {
        tmp,
        fin,
        mode,
        mtime,
        mtime_ns,
        owner,
    } = proto::read_header(input)?;
    let fin_path = Path::new(OsStr::from_bytes(&fin));
    let (mut err, at) = match names(&tmp, &fin).and_then(|n| check_mode(mode, owner).map(|()| n)) {
        Ok(n) => (None, Some(n)),
        Err(f) => (Some(f), None),
    };
    let mut basis: Option<(File, Ident)> = None;
    if err.is_none() && delta {
        match delta_basis(fs, hashed.remove(&fin), fin_path) {
            Ok(b) => basis = Some(b),
            Err(f) => err = Some(f),
        }
    }
    // the file is new and private (unnamed, or a new temporary name)
    // until complete
    let mut file: Option<File> = None;
    let mut unnamed = false;
    if let (None, Some((dir, t, _))) = (&err, at) {
        match land::start(fs, dir, t) {
            Ok(l) => (file, unnamed) = (Some(l.file), l.unnamed),
            Err(e) => err = Some(ctx("create temporary file", e)),
        }
    }
    let created = file.is_some();
    // the data comes whatever happened: read it all
    let commit = match read_data(
        input,
        buf,
        &mut file,
        &mut err,
        delta,
        basis.as_ref().map(|b| &b.0),
    ) {
        Ok(c) => c,
        Err(e) => {
            // the stream broke mid-file: nothing stays behind
            if let (true, Some((dir, t, _))) = (created, at) {
                fs.unlink_in(dir, t);
            }
            return Err(e);
        }
    };
    if let (Some(b), None) = (&basis, &err) {
        err = basis_unchanged(b).err();
    }
    let result = match (file, err) {
        (_, Some(e)) => Err(e),
        (None, None) => Err(Fail(0, "no file".into())),
        (Some(_), None) if !commit => Err(Fail(ABORTED, "aborted by the sender".into())),
        (Some(file), None) => {
            let attrs = land::Attrs {
                mode,
                mtime,
                mtime_ns,
                owner,
            };
            let l = land::Landing { file, unnamed };
            land::commit(fs, l, at.expect("names checked"), &attrs)
        }
    };
    if let (true, true, Some((dir, t, _))) = (result.is_err(), created, at) {
        fs.unlink_in(dir, t);
    }
    reply(output, &result)
}

/// A delta's basis: the file at the final name, as it was hashed (`id`),
/// with that identity (checked again when the delta is complete: its
/// signature may have been computed while the delta came, see `tree`).
fn delta_basis(fs: &mut Beneath, id: Option<Ident>, fin: &Path) -> Result<(File, Ident), Fail> {
    let Some(id) = id else {
        return Err(Fail(libc::EINVAL, "delta without block hashes".into()));
    };
    let (f, md) = open_regular(fs, fin)?;
    if Ident::of(&md) != id {
        let m = "the file on the target changed since its blocks were hashed";
        return Err(Fail(0, m.into()));
    }
    Ok((f, id))
}

/// A complete delta's basis is still the version that was hashed (a change
/// while its blocks were hashed or copied: nothing is renamed).
fn basis_unchanged((f, id): &(File, Ident)) -> Result<(), Fail> {
    let now = f.metadata().map_err(|e| ctx("stat the old version", e))?;
    if Ident::of(&now) != *id {
        let m = "the file on the target changed while the delta was applied";
        return Err(Fail(0, m.into()));
    }
    Ok(())
}

/// A file's data chunks (and, with a basis, copies from it), written to
/// `file` until an error (kept in `err`); returns whether the sender
/// committed the file.
fn read_data(
    input: &mut dyn BufRead,
    buf: &mut [u8],
    file: &mut Option<File>,
    err: &mut Option<Fail>,
    delta: bool,
    basis: Option<&File>,
) -> io::Result<bool> {
    loop {
        let n = u32_of(input)?;
        if n == 0 {
            break;
        }
        if n == COPY {
            let (off, len) = proto::read_copy(input)?;
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
            if let (Some(f), None) = (file.as_mut(), err.as_ref())
                && let Err(e) = copy::copy_range(b, off, len as u64, f, buf)
            {
                *err = Some(e);
            }
            continue;
        }
        if n > MAX_CHUNK {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("data chunk of {n} bytes"),
            ));
        }
        write_from(input, n as usize, file, err)?;
    }
    let mut commit = [0u8; 1];
    input.read_exact(&mut commit)?;
    Ok(commit[0] == 1)
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
    // stdout as a plain file (a copy of its descriptor): the stream is
    // binary, std's line buffering would split its writes at each 0x0A
    use std::os::fd::AsFd;
    let stdout = File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let mut output = io::BufWriter::new(stdout);
    serve(&mut input, &mut output, root)?;
    output.flush()
}

#[cfg(test)]
mod tests {
    use super::proto::*;
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A record for `dir/name` (relative to the helper's root).
    fn record(dir: &Path, name: &str, data: &[u8], commit: bool, out: &mut Vec<u8>) {
        let tmp = dir.join(format!(".syncjob-tmp.1.1.{name}"));
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
        let tmp = Path::new(".syncjob-tmp.1.1.big");
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
        // a copy beyond the end of the old version: refused, not renamed
        let mut input = Vec::new();
        hashes_request(fin_b, 4096, &mut input);
        delta_header(&mut input);
        copy(new.len() as u64 - 10, 4096, &mut input);
        end(true, &mut input);
        let mut out = Vec::new();
        serve(&mut io::BufReader::new(&input[..]), &mut out, &root).unwrap();
        let mut r = &out[GREETING.len()..];
        read_hashes(&mut r, 4096).unwrap().unwrap();
        let e = read_reply(&mut r).unwrap().unwrap_err();
        assert!(e.to_string().contains("beyond the end"), "{e}");
        assert_eq!(std::fs::read(&fin).unwrap(), new, "untouched");
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

    /// A helper served over a socket pair: (its input, its output, the
    /// server thread).
    type Served = (
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
        std::thread::JoinHandle<io::Result<()>>,
    );

    fn served(root: &Path) -> Served {
        let (tx_in, rx_in) = std::os::unix::net::UnixStream::pair().unwrap();
        let (tx_out, mut rx_out) = std::os::unix::net::UnixStream::pair().unwrap();
        let root = root.to_path_buf();
        let server = std::thread::spawn(move || {
            let mut w = tx_out;
            serve(&mut io::BufReader::new(rx_in), &mut w, &root)
        });
        let mut g = vec![0u8; GREETING.len()];
        rx_out.read_exact(&mut g).unwrap();
        (tx_in, rx_out, server)
    }

    #[test]
    fn a_delta_is_applied_while_its_signature_streams_and_a_change_meanwhile_is_refused() {
        use super::proto_tree::{Piece, read_piece, read_signature_head, signature_request};
        let d = tempfile::tempdir().unwrap();
        let fin = d.path().join("big");
        let tmp = Path::new(".syncjob-tmp.1.1.big");
        let old: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        std::fs::write(&fin, &old).unwrap();
        let blocks = old.len() / 4096;
        let delta_header = |input: &mut Vec<u8>| {
            let h = FileHeader {
                basis: true,
                tmp: tmp.as_os_str().as_bytes(),
                fin: b"big",
                mode: 0o600,
                mtime: 0,
                mtime_ns: 0,
                owner: None,
            };
            header(&h, input)
        };
        // the rest of a signature, and whether it ended well
        let rest = |r: &mut std::os::unix::net::UnixStream, st: &mut _| loop {
            match read_piece(r, blocks as u32, st).unwrap() {
                Piece::Sums => {}
                Piece::Done => return true,
                Piece::Failed(_) => return false,
            }
        };
        for change in [false, true] {
            let (mut tx, mut rx, server) = served(d.path());
            let mut input = Vec::new();
            signature_request(b"big", 4096, &mut input);
            // the delta goes before any piece of the signature is read
            delta_header(&mut input);
            copy(0, 40_960, &mut input);
            tx.write_all(&input).unwrap();
            let mut st = read_signature_head(&mut rx, 4096).unwrap().unwrap();
            assert_eq!((st.size, st.count as usize), (old.len() as u64, blocks));
            // the copy was made: the delta's start was checked
            let t = d.path().join(tmp);
            while being_written(d.path()).max(std::fs::metadata(&t).map_or(0, |m| m.len())) < 40_960
            {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            if change {
                let mut f = std::fs::OpenOptions::new().append(true).open(&fin).unwrap();
                f.write_all(b"changed on the target").unwrap();
            }
            // (a client reads the whole signature before the delta ends)
            let ok = rest(&mut rx, &mut st.sig);
            let mut input = Vec::new();
            chunk(b"new tail", &mut input);
            end(true, &mut input);
            tx.write_all(&input).unwrap();
            let r = read_reply(&mut rx).unwrap();
            drop(tx);
            server.join().unwrap().unwrap();
            assert!(!t.exists());
            if !change {
                assert!(ok && r.is_ok(), "{r:?}");
                assert_eq!(
                    st.sig.strong[3],
                    crate::rolling::strong(&old[3 * 4096..4 * 4096])
                );
                let mut want = old[..40_960].to_vec();
                want.extend_from_slice(b"new tail");
                assert!(std::fs::read(&fin).unwrap() == want);
                std::fs::write(&fin, &old).unwrap();
            } else {
                // (the signature may or may not have seen the change)
                let _ = ok;
                let e = r.unwrap_err();
                assert!(e.to_string().contains("changed while the delta"), "{e}");
                let mut want = old.clone();
                want.extend_from_slice(b"changed on the target");
                assert!(std::fs::read(&fin).unwrap() == want, "not replaced");
            }
        }
    }

    /// The size of the biggest unnamed file (`O_TMPFILE`) this process has
    /// open in `dir` (the helper writes its files so, see `land`).
    fn being_written(dir: &Path) -> u64 {
        let prefix = format!("{}/#", dir.display());
        std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with(&prefix))
            })
            .filter_map(|e| std::fs::metadata(e.path()).ok())
            .map(|m| m.len())
            .max()
            .unwrap_or(0)
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
