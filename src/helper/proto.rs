//! The remote helper's wire format, used by both ends: `crate::helper`
//! (the receiving side, on the target) and the SSH transport's helper
//! client. Every record, reply and bound is encoded and decoded here.
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
//! Every length and count read is bounded ([`MAX_PATH`], [`MAX_CHUNK`],
//! [`MAX_BLOCK`], [`MAX_HASHES`]) before anything is allocated for it.
//! Paths are relative to the helper's `--root`; a temporary path is a
//! `.syncjob-tmp.` name beside its final path; hashes are asked for blocks
//! of [`MIN_BLOCK`]..=[`MAX_BLOCK`].

use std::io::{self, Read};

/// The first line the helper prints: protocol name and version. Version 4:
/// the weak rolling checksum of `W` signatures is mod 2^32 (computed in
/// SIMD lanes, see `crate::rolling::Rolling`), not mod 2^64. Version 3:
/// the tree records of [`super::proto_tree`] (a helper carries a whole
/// job) and rolling-checksum deltas (`W` signatures).
/// Version 2: paths relative to the helper's `--root`, no tree records.
/// Version 1 took absolute paths, unconfined.
pub const GREETING: &[u8] = b"syncjob-helper 4\n";
/// Smallest block size of a hashes request.
pub const MIN_BLOCK: u32 = 4 << 10;
/// Most block hashes given for one file.
pub const MAX_BLOCKS: u64 = 1 << 20;
/// Most files whose hashes were given and whose delta has not come yet.
pub const MAX_HASHED: usize = 4096;

/// The errno of a reply for a file the sender aborted.
pub const ABORTED: i32 = -1;
/// A chunk length that means "copy from the basis".
pub const COPY: u32 = u32::MAX;
/// Largest block size of a hashes request.
pub const MAX_BLOCK: u32 = 64 << 20;
/// Longest path accepted in a record.
pub const MAX_PATH: u32 = 64 << 10;
/// Longest data chunk accepted in a record.
pub const MAX_CHUNK: u32 = 1 << 20;
/// Most block hashes accepted in a reply (32 MiB of hashes: a 128 GiB
/// file at 128 KiB blocks; the client asks for bigger blocks past 8 GiB).
pub const MAX_HASHES: u32 = 1 << 20;

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
        return Err(crate::violation::violation(
            "remote helper: wrong number of block hashes",
        ));
    }
    if count > MAX_HASHES {
        return Err(crate::violation::violation(format!(
            "remote helper: {count} block hashes announced (at most {MAX_HASHES}); refused"
        )));
    }
    // allocated as they arrive, not as announced
    let mut sums = Vec::with_capacity(count.min(4096) as usize);
    for _ in 0..count {
        let mut s = [0u8; 32];
        r.read_exact(&mut s)?;
        sums.push(s);
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
pub(crate) fn read_fail(r: &mut dyn Read) -> io::Result<io::Error> {
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

/// Encode the reply "this file is done".
pub fn done(out: &mut Vec<u8>) {
    out.push(0);
}

/// Encode the reply "this file failed": errno (0: none, [`ABORTED`]) and
/// a message (cut at 512 bytes).
pub fn failed(errno: i32, msg: &str, out: &mut Vec<u8>) {
    out.push(1);
    out.extend_from_slice(&errno.to_le_bytes());
    let msg = &msg.as_bytes()[..msg.len().min(512)];
    out.extend_from_slice(&(msg.len() as u16).to_le_bytes());
    out.extend_from_slice(msg);
}

/// Encode the reply to a hashes request: the file's size and block sums.
pub fn hashes_reply(size: u64, sums: &[[u8; 32]], out: &mut Vec<u8>) {
    out.push(0);
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&(sums.len() as u32).to_le_bytes());
    for s in sums {
        out.extend_from_slice(s);
    }
}

/// Read one little-endian u32.
pub fn u32_of(r: &mut dyn Read) -> io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

/// Read a length-prefixed byte string of at most `max` bytes.
pub fn bytes_of(r: &mut dyn Read, max: u32) -> io::Result<Vec<u8>> {
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

/// A file record's header as received (owned paths).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedHeader {
    pub tmp: Vec<u8>,
    pub fin: Vec<u8>,
    pub mode: u32,
    pub mtime: i64,
    pub mtime_ns: u32,
    pub owner: Option<(u32, u32)>,
}

/// Read a file record's header (after its `F`/`D` byte).
pub fn read_header(r: &mut dyn Read) -> io::Result<ReceivedHeader> {
    let tmp = bytes_of(r, MAX_PATH)?;
    let fin = bytes_of(r, MAX_PATH)?;
    let mut fixed = [0u8; 4 + 8 + 4 + 1 + 4 + 4];
    r.read_exact(&mut fixed)?;
    let u32_at = |i: usize| u32::from_le_bytes(fixed[i..i + 4].try_into().unwrap());
    Ok(ReceivedHeader {
        tmp,
        fin,
        mode: u32_at(0),
        mtime: i64::from_le_bytes(fixed[4..12].try_into().unwrap()),
        mtime_ns: u32_at(12),
        owner: (fixed[16] != 0).then(|| (u32_at(17), u32_at(21))),
    })
}

/// Read the offset and length of a copy from the basis (after [`COPY`]).
pub fn read_copy(r: &mut dyn Read) -> io::Result<(u64, u32)> {
    let mut c = [0u8; 12];
    r.read_exact(&mut c)?;
    Ok((
        u64::from_le_bytes(c[..8].try_into().unwrap()),
        u32::from_le_bytes(c[8..].try_into().unwrap()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_reads_back_as_written() {
        let h = FileHeader {
            basis: true,
            tmp: b"d/.syncjob-tmp.1.2.f",
            fin: b"d/f",
            mode: 0o640,
            mtime: -5,
            mtime_ns: 999_999_999,
            owner: Some((7, 8)),
        };
        let mut out = Vec::new();
        header(&h, &mut out);
        assert_eq!(out[0], b'D');
        let got = read_header(&mut &out[1..]).unwrap();
        assert_eq!((got.tmp.as_slice(), got.fin.as_slice()), (h.tmp, h.fin));
        assert_eq!(
            (got.mode, got.mtime, got.mtime_ns),
            (0o640, -5, 999_999_999)
        );
        assert_eq!(got.owner, Some((7, 8)));
    }

    #[test]
    fn replies_read_back_and_lengths_are_bounded() {
        let mut out = Vec::new();
        done(&mut out);
        failed(libc::ENOSPC, "write: no space", &mut out);
        failed(ABORTED, "aborted by the sender", &mut out);
        let mut r = &out[..];
        assert!(read_reply(&mut r).unwrap().is_ok());
        let e = read_reply(&mut r).unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::StorageFull);
        assert_eq!(e.to_string(), "write: no space");
        let e = read_reply(&mut r).unwrap().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        assert!(r.is_empty());
        // a path longer than MAX_PATH is refused before it is read
        let mut big = (MAX_PATH + 1).to_le_bytes().to_vec();
        big.extend_from_slice(b"xyz");
        assert!(bytes_of(&mut &big[..], MAX_PATH).is_err());
        // a hashes reply whose count does not fit the size is refused
        let mut h = Vec::new();
        hashes_reply(300, &[[0u8; 32]], &mut h);
        assert!(read_hashes(&mut &h[..], 100).is_err());
        let mut h = Vec::new();
        hashes_reply(300, &[[1u8; 32]; 3], &mut h);
        assert_eq!(
            read_hashes(&mut &h[..], 100).unwrap().unwrap().sums.len(),
            3
        );
    }
}
