//! The remote helper: `syncjob helper`, run on an SSH target over an exec
//! channel when the job sets `ssh.remote_helper`. It receives files as one
//! stream and writes each one as SFTP would (a temporary name in the same
//! directory, mode and mtime set, then renamed into place), but without
//! five SFTP requests and replies per file: one record in, one reply out,
//! as rsync's receiving side does. Without `remote_helper` (the default),
//! files go over SFTP, which every OpenSSH server has.
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
//! helper → client, per file, in order:
//!   u8 0 (done)  |  u8 1, i32 errno (0: none, -1: aborted), u16 len, message
//! ```
//!
//! A file is at its final name only after a complete stream and a commit;
//! anything else (abort, error, the connection lost mid-file) removes the
//! temporary file (or leaves it to the next run's stale-temporary cleanup
//! if the helper itself is killed).

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// The first line the helper prints: protocol name and version.
pub const GREETING: &[u8] = b"syncjob-helper 1\n";

/// The errno of a reply for a file the sender aborted.
const ABORTED: i32 = -1;
/// Longest path accepted in a record.
const MAX_PATH: u32 = 64 << 10;
/// Longest data chunk accepted in a record.
const MAX_CHUNK: u32 = 1 << 20;

/// The header of one file record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHeader<'a> {
    pub tmp: &'a [u8],
    pub fin: &'a [u8],
    pub mode: u32,
    pub mtime: i64,
    pub mtime_ns: u32,
    pub owner: Option<(u32, u32)>,
}

/// Encode a file record's header.
pub fn header(h: &FileHeader, out: &mut Vec<u8>) {
    out.push(b'F');
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
        1 => {
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
            Ok(Err(io::Error::new(kind, msg)))
        }
        x => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("remote helper: unexpected reply byte {x}"),
        )),
    }
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
pub fn serve<R: Read>(input: &mut io::BufReader<R>, output: &mut dyn Write) -> io::Result<()> {
    output.write_all(GREETING)?;
    output.flush()?;
    let mut buf = vec![0u8; MAX_CHUNK as usize];
    loop {
        let mut op = [0u8; 1];
        match input.read(&mut op) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if op[0] != b'F' {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unknown record {:#x}", op[0]),
            ));
        }
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
        let tmp_path = Path::new(OsStr::from_bytes(&tmp));
        let fin_path = Path::new(OsStr::from_bytes(&fin));
        // the temporary file is new (O_EXCL) and private until complete
        let mut file: Option<File> = None;
        let mut err: Option<Fail> = if tmp.is_empty() || fin.is_empty() {
            Some(Fail(libc::EINVAL, "empty path".into()))
        } else {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(tmp_path)
            {
                Ok(f) => {
                    file = Some(f);
                    None
                }
                Err(e) => Some(ctx("create temporary file", e)),
            }
        };
        // the data comes whatever happened: read it all
        let commit = match read_data(input, &mut buf, &mut file, &mut err) {
            Ok(c) => c,
            Err(e) => {
                // the stream broke mid-file: nothing stays behind
                if file.is_some() {
                    let _ = std::fs::remove_file(tmp_path);
                }
                return Err(e);
            }
        };
        let result = match (file, err) {
            (_, Some(e)) => Err(e),
            (None, None) => Err(Fail(0, "no file".into())),
            (Some(_), None) if !commit => Err(Fail(ABORTED, "aborted by the sender".into())),
            (Some(f), None) => finish(f, tmp_path, fin_path, mode, mtime, mtime_ns, owner),
        };
        if result.is_err() && !tmp.is_empty() {
            let _ = std::fs::remove_file(tmp_path);
        }
        reply(output, &result)?;
        // replies go out when the input has no more records queued
        if input.buffer().is_empty() {
            output.flush()?;
        }
    }
}

/// A file's data chunks, written to `file` until an error (kept in `err`);
/// returns whether the sender committed the file.
fn read_data(
    input: &mut dyn Read,
    buf: &mut [u8],
    file: &mut Option<File>,
    err: &mut Option<Fail>,
) -> io::Result<bool> {
    loop {
        let n = u32_of(input)?;
        if n == 0 {
            break;
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

/// Set the attributes of a complete temporary file and rename it into place.
fn finish(
    f: File,
    tmp: &Path,
    fin: &Path,
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
    std::fs::rename(tmp, fin).map_err(|e| ctx("rename into place", e))
}

/// `syncjob helper`: serve stdin/stdout.
pub fn main() -> io::Result<()> {
    let stdin = io::stdin();
    let mut input = io::BufReader::with_capacity(1 << 20, stdin.lock());
    let mut output = io::BufWriter::new(io::stdout().lock());
    serve(&mut input, &mut output)?;
    output.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn record(dir: &Path, name: &str, data: &[u8], commit: bool, out: &mut Vec<u8>) {
        let tmp = dir.join(format!(".syncjob-tmp.{name}"));
        let fin = dir.join(name);
        header(
            &FileHeader {
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
        record(d.path(), "a.txt", b"hello world", true, &mut input);
        record(d.path(), "old", b"half", false, &mut input);
        record(d.path(), "empty", b"", true, &mut input);
        // a directory that does not exist: the error comes back, the rest goes on
        record(&d.path().join("nodir"), "x", b"data", true, &mut input);
        record(d.path(), "last", b"z", true, &mut input);
        let mut out = Vec::new();
        serve(&mut io::BufReader::new(&input[..]), &mut out).unwrap();
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
        record(d.path(), "cut", b"0123456789", true, &mut input);
        input.truncate(input.len() - 8);
        let mut out = Vec::new();
        assert!(serve(&mut io::BufReader::new(&input[..]), &mut out).is_err());
        assert_eq!(
            std::fs::read_dir(d.path()).unwrap().count(),
            0,
            "no final, no temporary file"
        );
    }

    #[test]
    fn garbage_is_refused() {
        let mut out = Vec::new();
        let e = serve(&mut io::BufReader::new(&b"Xjunk"[..]), &mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let mut huge = vec![b'F'];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        let e = serve(&mut io::BufReader::new(&huge[..]), &mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }
}
