//! The helper's tree records (protocol 3), beside the file records of
//! [`super::proto`]: with them the helper carries a whole job, so that a key
//! whose forced command is `syncjob helper --root DIR` needs no `find`, no
//! SFTP and no other command.
//!
//! ```text
//! client → helper                                   reply
//!   b'L'                 list the root              see below
//!   b'M' path            mkdir                      done | failed
//!   b'S' path tmp link   u8 t? i64 s u32 ns         done | failed
//!                        symlink (through tmp, atomic)
//!   b'A' path u8 kind u8 what u32 mode i64 s u32 ns u32 uid u32 gid
//!                        set attributes             done | failed
//!   b'R' path u8 dir     remove (a dir only empty)  done | failed
//!   b'N' path path       rename (renameat, both     done | failed
//!                        parents beneath the root)
//!   b'P'                 create the root            done | failed
//!   b'C' path            SHA-256 of a file          u8 0, 32 bytes | failed
//!   b'W' path u32 block  rolling signature          u8 0, u64 size, u32 n,
//!                                                   pieces, u32 0, status
//!                                                   | failed
//!        (protocol 4) a piece: u32 k (1..=MAX_PIECE), k × (u32 weak,
//!        32 BLAKE3), the next k of the n full blocks in order, sent as
//!        they are computed; the status after the pieces: done (all n were
//!        sent) | failed (the file changed or could not be read meanwhile)
//! list reply: u8 2 (no root) | failed | u8 0, then items:
//!   b'e' u8 type u64 size i64 s u32 ns u32 mode u32 uid u32 gid
//!        u32 len name  u32 len link      (pre-order: a directory first)
//!   b'x' u32 len path  u16 len message   (an entry that could not be read)
//!   b'.'                                  end
//! ```
//!
//! Paths are u32-length-prefixed bytes. Invariant: every length and count
//! read here is checked against its bound ([`MAX_NAME`], [`MAX_BLOCK_SUMS`],
//! [`MAX_PIECE`], [`super::proto::MAX_PATH`]) before anything is allocated for it; what the
//! reader cannot trust (the names' safety, the order) is checked by the
//! caller (the client's listing parser).

use super::proto::{MAX_PATH, bytes_of, u32_of};
use std::io::{self, Read};

/// Longest name or link target in a listing item.
pub const MAX_NAME: u32 = crate::relname::MAX_PATH as u32;
/// Most blocks in a rolling signature (full blocks only).
pub const MAX_BLOCK_SUMS: u32 = 1 << 20;

/// `what` bits of an `A` record.
pub const SET_MODE: u8 = 1;
pub const SET_MTIME: u8 = 2;
pub const SET_OWNER: u8 = 4;

fn path(p: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(p.len() as u32).to_le_bytes());
    out.extend_from_slice(p);
}

/// `L`: list the root.
pub fn list_request(out: &mut Vec<u8>) {
    out.push(b'L');
}

/// `M`, `C` or `P` (no path: pass an empty one, which is not sent for `P`).
pub fn path_request(op: u8, p: &[u8], out: &mut Vec<u8>) {
    out.push(op);
    if op != b'P' {
        path(p, out);
    }
}

/// `R`: remove an entry (`dir`: an empty directory).
pub fn remove_request(p: &[u8], dir: bool, out: &mut Vec<u8>) {
    out.push(b'R');
    path(p, out);
    out.push(dir as u8);
}

/// `N`: rename `from` to `to`.
pub fn rename_request(from: &[u8], to: &[u8], out: &mut Vec<u8>) {
    out.push(b'N');
    path(from, out);
    path(to, out);
}

/// `S`: a symlink at `p` pointing at `link`, made at `tmp` and renamed.
pub fn symlink_request(
    p: &[u8],
    tmp: &[u8],
    link: &[u8],
    t: Option<(i64, u32)>,
    out: &mut Vec<u8>,
) {
    out.push(b'S');
    path(p, out);
    path(tmp, out);
    path(link, out);
    let (s, ns) = t.unwrap_or((0, 0));
    out.push(t.is_some() as u8);
    out.extend_from_slice(&s.to_le_bytes());
    out.extend_from_slice(&ns.to_le_bytes());
}

/// The attributes an `A` record sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attrs {
    /// 0 regular file, 1 directory, 2 symlink
    pub kind: u8,
    pub mode: Option<u32>,
    pub mtime: Option<(i64, u32)>,
    pub owner: Option<(u32, u32)>,
}

/// `A`: set attributes of `p`.
pub fn attrs_request(p: &[u8], a: &Attrs, out: &mut Vec<u8>) {
    out.push(b'A');
    path(p, out);
    out.push(a.kind);
    let what = a.mode.map_or(0, |_| SET_MODE)
        | a.mtime.map_or(0, |_| SET_MTIME)
        | a.owner.map_or(0, |_| SET_OWNER);
    out.push(what);
    let (s, ns) = a.mtime.unwrap_or((0, 0));
    let (u, g) = a.owner.unwrap_or((0, 0));
    out.extend_from_slice(&a.mode.unwrap_or(0).to_le_bytes());
    out.extend_from_slice(&s.to_le_bytes());
    out.extend_from_slice(&ns.to_le_bytes());
    out.extend_from_slice(&u.to_le_bytes());
    out.extend_from_slice(&g.to_le_bytes());
}

/// Read an `A` record (after its op byte): the path and the attributes.
pub fn read_attrs(r: &mut dyn Read) -> io::Result<(Vec<u8>, Attrs)> {
    let p = bytes_of(r, MAX_PATH)?;
    let mut f = [0u8; 2 + 4 + 8 + 4 + 4 + 4];
    r.read_exact(&mut f)?;
    let u = |i: usize| u32::from_le_bytes(f[i..i + 4].try_into().unwrap());
    let what = f[1];
    let s = i64::from_le_bytes(f[6..14].try_into().unwrap());
    Ok((
        p,
        Attrs {
            kind: f[0],
            mode: (what & SET_MODE != 0).then(|| u(2)),
            mtime: (what & SET_MTIME != 0).then(|| (s, u(14))),
            owner: (what & SET_OWNER != 0).then(|| (u(18), u(22))),
        },
    ))
}

/// Read an `S` record (after its op byte): path, tmp, link, mtime.
pub type SymlinkRecord = (Vec<u8>, Vec<u8>, Vec<u8>, Option<(i64, u32)>);

pub fn read_symlink(r: &mut dyn Read) -> io::Result<SymlinkRecord> {
    let p = bytes_of(r, MAX_PATH)?;
    let tmp = bytes_of(r, MAX_PATH)?;
    let link = bytes_of(r, MAX_NAME)?;
    let mut f = [0u8; 13];
    r.read_exact(&mut f)?;
    let s = i64::from_le_bytes(f[1..9].try_into().unwrap());
    let ns = u32::from_le_bytes(f[9..13].try_into().unwrap());
    Ok((p, tmp, link, (f[0] != 0).then_some((s, ns))))
}

/// `W`: the rolling signature of `p` in blocks of `block`.
pub fn signature_request(p: &[u8], block: u32, out: &mut Vec<u8>) {
    out.push(b'W');
    path(p, out);
    out.extend_from_slice(&block.to_le_bytes());
}

/// Most block sums in one piece of a signature reply.
pub const MAX_PIECE: u32 = 4096;

/// The head of a signature reply: the file's size and its number of full
/// blocks; the sums follow in pieces ([`signature_piece`]), then
/// [`signature_end`] and a status.
pub fn signature_head(size: u64, count: u32, out: &mut Vec<u8>) {
    out.push(0);
    out.extend_from_slice(&size.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
}

/// A piece of a signature reply: the next blocks' sums, in pieces of at
/// most [`MAX_PIECE`].
pub fn signature_piece(sums: &[crate::rolling::BlockSum], out: &mut Vec<u8>) {
    for p in sums.chunks(MAX_PIECE as usize) {
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        for (w, s) in p {
            out.extend_from_slice(&w.to_le_bytes());
            out.extend_from_slice(s);
        }
    }
}

/// The end of a signature's pieces (a status reply follows: done, or why
/// the sums are not to be used).
pub fn signature_end(out: &mut Vec<u8>) {
    out.extend_from_slice(&0u32.to_le_bytes());
}

/// A whole signature reply (head, one piece, end, done).
pub fn signature_reply(size: u64, sums: &[crate::rolling::BlockSum], out: &mut Vec<u8>) {
    signature_head(size, sums.len() as u32, out);
    signature_piece(sums, out);
    signature_end(out);
    super::proto::done(out);
}

/// A signature reply being read: what its head announced, what came.
#[derive(Debug)]
pub struct SignatureStream {
    pub size: u64,
    /// the full blocks announced
    pub count: u32,
    /// the blocks read so far (in `sig`)
    pub sig: crate::rolling::Signature,
}

/// What [`read_piece`] read.
#[derive(Debug)]
pub enum Piece {
    /// more sums (appended to the signature)
    Sums,
    /// the end, every block's sums read
    Done,
    /// the end: the helper's reason not to use the sums
    Failed(io::Error),
}

/// Read the head of a signature reply for blocks of `block`, or the
/// helper's error. The count must be the size's number of full blocks.
pub fn read_signature_head(
    r: &mut dyn Read,
    block: u32,
) -> io::Result<io::Result<SignatureStream>> {
    if let Err(e) = status(r)? {
        return Ok(Err(e));
    }
    let mut h = [0u8; 12];
    r.read_exact(&mut h)?;
    let size = u64::from_le_bytes(h[..8].try_into().unwrap());
    let count = u32::from_le_bytes(h[8..].try_into().unwrap());
    if count > MAX_BLOCK_SUMS || count as u64 != size / block.max(1) as u64 {
        return Err(crate::violation::violation(format!(
            "remote helper: {count} block hashes announced for {size} bytes in blocks of {block} (at most {MAX_BLOCK_SUMS}, one per full block); refused"
        )));
    }
    let sig = crate::rolling::Signature {
        block: block as usize,
        weak: Vec::with_capacity(count.min(4096) as usize),
        strong: Vec::with_capacity(count.min(4096) as usize),
    };
    Ok(Ok(SignatureStream { size, count, sig }))
}

/// Read the next piece of a signature reply (or its end) into `sig`, of
/// `count` blocks announced; more sums than announced, or fewer at a
/// successful end, are refused.
pub fn read_piece(
    r: &mut dyn Read,
    count: u32,
    sig: &mut crate::rolling::Signature,
) -> io::Result<Piece> {
    let k = u32_of(r)?;
    let have = sig.weak.len() as u64;
    if k == 0 {
        return match status(r)? {
            Err(e) => Ok(Piece::Failed(e)),
            Ok(()) if have == count as u64 => Ok(Piece::Done),
            Ok(()) => Err(bad(format!(
                "{have} block hashes sent of {count} announced"
            ))),
        };
    }
    if k > MAX_PIECE || have + k as u64 > count as u64 {
        return Err(bad(format!(
            "a piece of {k} block hashes after {have} of {count} announced (at most {MAX_PIECE} a piece)"
        )));
    }
    for _ in 0..k {
        let mut b = [0u8; 36];
        r.read_exact(&mut b)?;
        sig.weak
            .push(u32::from_le_bytes(b[..4].try_into().unwrap()));
        sig.strong.push(b[4..].try_into().unwrap());
    }
    Ok(Piece::Sums)
}

/// Read a whole signature reply for blocks of `block`: (size,
/// signature), or the helper's error.
pub fn read_signature(
    r: &mut dyn Read,
    block: u32,
) -> io::Result<io::Result<(u64, crate::rolling::Signature)>> {
    let mut st = match read_signature_head(r, block)? {
        Ok(st) => st,
        Err(e) => return Ok(Err(e)),
    };
    loop {
        match read_piece(r, st.count, &mut st.sig)? {
            Piece::Sums => {}
            Piece::Done => return Ok(Ok((st.size, st.sig))),
            Piece::Failed(e) => return Ok(Err(e)),
        }
    }
}

/// The reply to `C`: a SHA-256.
pub fn sum_reply(sum: &[u8; 32], out: &mut Vec<u8>) {
    out.push(0);
    out.extend_from_slice(sum);
}

pub fn read_sum(r: &mut dyn Read) -> io::Result<io::Result<[u8; 32]>> {
    if let Err(e) = status(r)? {
        return Ok(Err(e));
    }
    let mut s = [0u8; 32];
    r.read_exact(&mut s)?;
    Ok(Ok(s))
}

/// `Ok(Ok)`: a success byte; `Ok(Err)`: the helper's error reply.
fn status(r: &mut dyn Read) -> io::Result<io::Result<()>> {
    super::proto::read_reply(r)
}

/// The first byte of a list reply: the root exists and items follow.
pub const LIST_ITEMS: u8 = 0;
/// The first byte of a list reply: there is no root.
pub const LIST_NO_ROOT: u8 = 2;

/// One item of a listing, as read.
#[derive(Debug, PartialEq, Eq)]
pub enum Item {
    Entry {
        name: Vec<u8>,
        entry: crate::plan::Entry,
    },
    Error {
        path: Vec<u8>,
        message: String,
    },
    End,
}

/// Encode a listing entry.
pub fn entry_item(name: &[u8], e: &crate::plan::Entry, out: &mut Vec<u8>) {
    use crate::plan::EntryKind;
    out.push(b'e');
    out.push(match e.kind {
        EntryKind::File => b'f',
        EntryKind::Dir => b'd',
        EntryKind::Symlink => b'l',
        EntryKind::Special => b's',
    });
    out.extend_from_slice(&e.size.to_le_bytes());
    out.extend_from_slice(&e.mtime.to_le_bytes());
    out.extend_from_slice(&e.mtime_ns.to_le_bytes());
    for v in [e.mode, e.uid, e.gid] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    path(name, out);
    let link = e
        .link
        .as_deref()
        .map_or(&b""[..], |l| l.as_os_str().as_encoded_bytes());
    path(link, out);
}

/// Encode an unreadable entry.
pub fn error_item(p: &[u8], msg: &str, out: &mut Vec<u8>) {
    out.push(b'x');
    path(p, out);
    let m = &msg.as_bytes()[..msg.len().min(512)];
    out.extend_from_slice(&(m.len() as u16).to_le_bytes());
    out.extend_from_slice(m);
}

/// Read one listing item, every length bounded.
pub fn read_item(r: &mut dyn Read) -> io::Result<Item> {
    use crate::plan::{Entry, EntryKind};
    let mut t = [0u8; 1];
    r.read_exact(&mut t)?;
    match t[0] {
        b'.' => Ok(Item::End),
        b'x' => {
            let path = bytes_of(r, MAX_NAME)?;
            let mut l = [0u8; 2];
            r.read_exact(&mut l)?;
            let mut m = vec![0u8; u16::from_le_bytes(l) as usize];
            r.read_exact(&mut m)?;
            let message = String::from_utf8_lossy(&m).into_owned();
            Ok(Item::Error { path, message })
        }
        b'e' => {
            let mut f = [0u8; 1 + 8 + 8 + 4 + 12];
            r.read_exact(&mut f)?;
            let kind = match f[0] {
                b'f' => EntryKind::File,
                b'd' => EntryKind::Dir,
                b'l' => EntryKind::Symlink,
                b's' => EntryKind::Special,
                x => return Err(bad(format!("listing entry of type {x:#x}"))),
            };
            let u = |i: usize| u32::from_le_bytes(f[i..i + 4].try_into().unwrap());
            let name = bytes_of(r, MAX_NAME)?;
            let link = bytes_of(r, MAX_NAME)?;
            let entry = Entry {
                kind,
                size: if kind == EntryKind::File {
                    u64::from_le_bytes(f[1..9].try_into().unwrap())
                } else {
                    0
                },
                mtime: i64::from_le_bytes(f[9..17].try_into().unwrap()),
                mtime_ns: u(17).min(999_999_999),
                mode: u(21) & 0o7777,
                uid: u(25),
                gid: u(29),
                link: (kind == EntryKind::Symlink).then(|| {
                    use std::os::unix::ffi::OsStringExt;
                    Box::new(std::ffi::OsString::from_vec(link).into())
                }),
            };
            Ok(Item::Entry { name, entry })
        }
        x => Err(bad(format!("listing item {x:#x}"))),
    }
}

fn bad(msg: String) -> io::Error {
    crate::violation::violation(format!("remote helper: {msg}; refused"))
}

/// Read a list reply's first byte: `Ok(Ok(true))` items follow,
/// `Ok(Ok(false))` no root, `Ok(Err)` the helper's error.
pub fn read_list_head(r: &mut dyn Read) -> io::Result<io::Result<bool>> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    match b[0] {
        LIST_ITEMS => Ok(Ok(true)),
        LIST_NO_ROOT => Ok(Ok(false)),
        1 => Ok(Err(super::proto::read_fail(r)?)),
        x => Err(bad(format!("list reply {x:#x}"))),
    }
}

/// Read a path field of a record (bounded).
pub fn read_path(r: &mut dyn Read) -> io::Result<Vec<u8>> {
    bytes_of(r, MAX_PATH)
}

/// Read one byte.
pub fn u8_of(r: &mut dyn Read) -> io::Result<u8> {
    let mut b = [0u8; 1];
    r.read_exact(&mut b)?;
    Ok(b[0])
}

/// Read a `W` record (after its op byte): path and block size.
pub fn read_signature_request(r: &mut dyn Read) -> io::Result<(Vec<u8>, u32)> {
    let p = bytes_of(r, MAX_PATH)?;
    Ok((p, u32_of(r)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Entry, EntryKind};

    #[test]
    fn records_and_items_read_back_and_are_bounded() {
        let a = Attrs {
            kind: 1,
            mode: Some(0o750),
            mtime: Some((-3, 7)),
            owner: None,
        };
        let mut out = Vec::new();
        attrs_request(b"d/e", &a, &mut out);
        assert_eq!(out[0], b'A');
        assert_eq!(read_attrs(&mut &out[1..]).unwrap(), (b"d/e".to_vec(), a));
        let mut out = Vec::new();
        symlink_request(b"l", b".syncjob-tmp.1.1.l", b"../x", Some((5, 6)), &mut out);
        let (p, t, l, m) = read_symlink(&mut &out[1..]).unwrap();
        assert_eq!(
            (&p[..], &t[..], &l[..], m),
            (
                &b"l"[..],
                &b".syncjob-tmp.1.1.l"[..],
                &b"../x"[..],
                Some((5, 6))
            )
        );
        let mut e = Entry::blank(EntryKind::Symlink);
        e.link = Some(Box::new("t".into()));
        e.mtime = 9;
        let mut out = Vec::new();
        entry_item(b"a/l", &e, &mut out);
        error_item(b"a/x", "no", &mut out);
        out.push(b'.');
        let mut r = &out[..];
        assert_eq!(
            read_item(&mut r).unwrap(),
            Item::Entry {
                name: b"a/l".to_vec(),
                entry: e
            }
        );
        assert!(matches!(read_item(&mut r).unwrap(), Item::Error { .. }));
        assert_eq!(read_item(&mut r).unwrap(), Item::End);
        // a name longer than MAX_NAME is refused before it is read
        let mut big = vec![b'e', b'f'];
        big.extend_from_slice(&[0u8; 32]);
        big.extend_from_slice(&(MAX_NAME + 1).to_le_bytes());
        assert!(read_item(&mut &big[..]).is_err());
        // a signature whose count does not fit the size is refused
        let mut s = Vec::new();
        signature_reply(10_000, &[(1, [0u8; 32]); 3], &mut s);
        assert!(read_signature(&mut &s[..], 4096).is_err());
        let mut s = Vec::new();
        signature_reply(10_000, &[(1, [0u8; 32]), (2, [0u8; 32])], &mut s);
        let (size, sig) = read_signature(&mut &s[..], 4096).unwrap().unwrap();
        assert_eq!((size, sig.weak), (10_000, vec![1, 2]));
    }

    #[test]
    fn a_signature_in_pieces_reads_back_and_its_counts_are_bounded() {
        let sums: Vec<crate::rolling::BlockSum> = (0..5u32).map(|i| (i, [i as u8; 32])).collect();
        let head = |count: u32| {
            let mut s = Vec::new();
            signature_head(count as u64 * 4096 + 7, count, &mut s);
            s
        };
        // in pieces of 2, 2 and 1: the same as in one
        let mut s = head(5);
        for p in sums.chunks(2) {
            signature_piece(p, &mut s);
        }
        signature_end(&mut s);
        super::super::proto::done(&mut s);
        let (size, sig) = read_signature(&mut &s[..], 4096).unwrap().unwrap();
        assert_eq!(size, 5 * 4096 + 7);
        assert_eq!(sig.weak, vec![0, 1, 2, 3, 4]);
        assert_eq!(sig.strong[4], [4u8; 32]);
        // fewer sums than announced at a successful end: refused
        let mut s = head(5);
        signature_piece(&sums[..4], &mut s);
        signature_end(&mut s);
        super::super::proto::done(&mut s);
        assert!(read_signature(&mut &s[..], 4096).is_err());
        // more than announced: refused before they are read
        let mut s = head(3);
        s.extend_from_slice(&4u32.to_le_bytes());
        assert!(read_signature(&mut &s[..], 4096).is_err());
        // a piece over MAX_PIECE: refused
        let mut s = head(MAX_PIECE + 1);
        s.extend_from_slice(&(MAX_PIECE + 1).to_le_bytes());
        assert!(read_signature(&mut &s[..], 4096).is_err());
        // the helper's failure after some pieces: its reason
        let mut s = head(5);
        signature_piece(&sums[..2], &mut s);
        signature_end(&mut s);
        super::super::proto::failed(0, "changed while its blocks were hashed", &mut s);
        let e = read_signature(&mut &s[..], 4096).unwrap().unwrap_err();
        assert!(e.to_string().contains("changed while"), "{e}");
    }
}
