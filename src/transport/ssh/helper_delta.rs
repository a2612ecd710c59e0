//! The delta side of the remote helper's client (`super::helper_client`).
//!
//! Big changed files (>= 8 MiB) that exist on the target go as rolling
//! deltas (`crate::rolling`, rsync's algorithm): the helper returns a weak
//! rolling checksum and a BLAKE3 hash for each block of its version; the
//! source is scanned at every byte offset, and a window whose weak sum
//! and BLAKE3 hash match a block is sent as "copy that block", the rest as
//! literal data. An insertion or deletion costs about one block, not the
//! rest of the file. Each copy is verified by its block's strong hash
//! (found here on the source's window, given there for the target's
//! block) and the helper checks that the target's file is the one it
//! hashed (device, inode, size, mtime, ctime), when the delta starts and
//! when it is complete; the literal data is the source's bytes.
//!
//! The signature streams (protocol 4): the helper sends it in pieces as it
//! computes them and applies the delta meanwhile. Of a batch's big files,
//! the last one asked is sent first and its pieces are read as they are
//! needed: its leading blocks are compared (source hashed here block by
//! block) and copied as they come, then the rolling scan runs right behind
//! the signature (`rolling::delta_growing`); the other files' signatures
//! are read whole first. Every signature is read to its end whatever
//! happens to its file, so that the stream stays in step, and before the
//! file's record ends (the helper's next reply waits for it).

use super::helper_client::{DELTA_MIN, FLUSH, Opened, helper_lost};
use super::openssh::Pipe;
use crate::helper::proto;
use crate::helper::proto_tree::SignatureStream;
use crate::transport::CopyCtx;
use std::io;

/// The block size of a delta: 128 KiB, more for files over 8 GiB (at most
/// 65536 blocks).
fn delta_block(size: u64) -> u32 {
    (128u64 << 10)
        .max(size.div_ceil(65536).next_power_of_two())
        .min(64 << 20) as u32
}

/// Adjacent copies are merged up to this length, and a copy this long is
/// written out at once, so that the helper copies while the source is
/// still hashed or scanned here.
const COPY_EAGER: u64 = 16 << 20;

/// The ops of a delta, written out as they come: copies of the target's
/// blocks (adjacent ones merged) and literal data; and the pieces of its
/// signature still coming, read as they are needed.
struct Emit<'a> {
    ch: &'a mut Box<dyn Pipe>,
    out: &'a mut Vec<u8>,
    ctx: &'a CopyCtx<'a>,
    pending: Option<(u64, u64)>,
    /// the stream broke (a write or read failed)
    broke: Option<io::Error>,
    /// the blocks the signature announced
    count: u32,
    /// the signature's end came: done, or the helper's reason not to use it
    ended: Option<Option<io::Error>>,
}

/// A copy of an error (the original is kept).
fn again(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

impl Emit<'_> {
    fn op(&mut self, op: crate::rolling::Op) -> io::Result<()> {
        use crate::rolling::Op;
        use std::io::Write;
        if self.ctx.cancelled() {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "aborted by shutdown",
            ));
        }
        let mut now = false;
        match op {
            Op::Copy { offset, len } => {
                self.ctx.add_progress(len);
                now = push_copy(&mut self.pending, (offset, len), self.out);
            }
            Op::Literal(d) => {
                if let Some((at, l)) = self.pending.take() {
                    proto::copy(at, l as u32, self.out);
                }
                for c in d.chunks(proto::MAX_CHUNK as usize) {
                    proto::chunk(c, self.out);
                }
                self.ctx.add_progress(d.len() as u64);
            }
        }
        if self.out.len() >= FLUSH || now {
            if let Err(e) = self.ch.write_all(self.out) {
                let failed = again(&e);
                self.broke = Some(e);
                return Err(failed);
            }
            self.out.clear();
        }
        Ok(())
    }

    /// Read the next piece of the signature into `sig`; `Ok(false)`: it
    /// ended (all its sums came); `Err`: the helper's reason not to use
    /// it, or the stream broke.
    fn more(&mut self, sig: &mut crate::rolling::Signature) -> io::Result<bool> {
        use crate::helper::proto_tree::{Piece, read_piece};
        match &self.ended {
            Some(None) => return Ok(false),
            Some(Some(f)) => return Err(again(f)),
            None => {}
        }
        match read_piece(self.ch, self.count, sig) {
            Ok(Piece::Sums) => Ok(true),
            Ok(Piece::Done) => {
                self.ended = Some(None);
                Ok(false)
            }
            Ok(Piece::Failed(f)) => {
                let failed = again(&f);
                self.ended = Some(Some(f));
                Err(failed)
            }
            Err(e) => {
                let failed = again(&e);
                self.broke = Some(e);
                Err(failed)
            }
        }
    }

    /// The copy still pending, written to `out`.
    fn finish(&mut self) {
        if let Some((at, l)) = self.pending.take() {
            proto::copy(at, l as u32, self.out);
        }
    }
}

/// The data of a rolling delta against the target's signature `basis`:
/// copies of its blocks and literal data, written out as they come. A
/// signature still coming is compared block by block at aligned offsets
/// as its pieces arrive, and the leading blocks that are the target's own
/// are copied at once (the helper copies while it still hashes); from the
/// first block that differs the source is scanned, the signature's pieces
/// read as the scan needs them (see `rolling::delta_growing`). Returns
/// the literal bytes and the file's own failure (a read error, a
/// shutdown, the helper's reason not to use its signature), if any;
/// `Err`: the stream broke. The whole signature is read whatever happens
/// to the file (the stream stays in step).
pub(super) fn send_rolling(
    ch: &mut Box<dyn Pipe>,
    out: &mut Vec<u8>,
    input: &std::fs::File,
    basis: Basis,
    ctx: &CopyCtx,
) -> io::Result<(u64, Option<io::Error>)> {
    use std::io::Seek;
    // (a whole signature has ended; the end of one still coming is read)
    let (mut sig, count, ended) = match basis {
        Basis::Whole(sig) => {
            let n = sig.weak.len() as u32;
            (sig, n, Some(None))
        }
        Basis::Streamed(st) => (st.sig, st.count, None),
    };
    let e = std::cell::RefCell::new(Emit {
        ch,
        out,
        ctx,
        pending: None,
        broke: None,
        count,
        ended,
    });
    let (aligned, run, r) = leading_blocks(&mut e.borrow_mut(), input, &mut sig);
    let start = run as u64 * sig.block as u64;
    let r = r
        .and_then(|()| (&*input).seek(io::SeekFrom::Start(start)))
        .and_then(|_| {
            let mut more = |s: &mut crate::rolling::Signature| e.borrow_mut().more(s);
            crate::rolling::delta_growing(
                input,
                start,
                (&mut sig, count as usize, crate::rolling::LOOKAHEAD),
                &mut more,
                &aligned,
                |op| e.borrow_mut().op(op),
            )
        });
    let mut e = e.into_inner();
    // (a failed file: the rest of the signature is read all the same)
    while e.broke.is_none() && e.ended.is_none() && e.more(&mut sig).is_ok() {}
    if let Some(b) = e.broke {
        return Err(helper_lost(b));
    }
    e.finish();
    match r {
        Ok(literal) => Ok((literal, None)),
        Err(f) => Ok((0, Some(f))),
    }
}

/// Compare the source's aligned blocks with the target's as the pieces of
/// its signature come, copying the leading ones that are equal (by
/// BLAKE3; each source block hashed while the helper hashes its next
/// pieces). Returns the source's aligned sums computed (up to the first
/// block that differs), the number of leading blocks copied (the scan
/// starts after them) and the file's own failure, if any.
fn leading_blocks(
    e: &mut Emit,
    input: &std::fs::File,
    sig: &mut crate::rolling::Signature,
) -> (Vec<[u8; 32]>, usize, io::Result<()>) {
    use std::os::unix::fs::FileExt;
    let bl = sig.block;
    let full = input.metadata().map_or(0, |m| m.len()) / bl as u64;
    let mut buf = vec![0u8; bl];
    let mut aligned: Vec<[u8; 32]> = Vec::new();
    let mut k = 0usize;
    while (k as u64) < full.min(e.count as u64) {
        if let Err(err) = input.read_exact_at(&mut buf, k as u64 * bl as u64) {
            return (aligned, k, Err(err));
        }
        aligned.push(crate::rolling::strong(&buf));
        while sig.strong.len() <= k {
            match e.more(sig) {
                Ok(true) => {}
                Ok(false) => break,
                Err(err) => return (aligned, k, Err(err)),
            }
        }
        if sig.strong.get(k) != aligned.last() {
            break;
        }
        let copy = crate::rolling::Op::Copy {
            offset: k as u64 * bl as u64,
            len: bl as u64,
        };
        if let Err(err) = e.op(copy) {
            return (aligned, k, Err(err));
        }
        k += 1;
    }
    (aligned, k, Ok(()))
}

/// Merge a copy into `pending` or write `pending` out to `out`; `true`
/// when a copy of [`COPY_EAGER`] was written (to be sent at once).
fn push_copy(
    pending: &mut Option<(u64, u64)>,
    (offset, len): (u64, u64),
    out: &mut Vec<u8>,
) -> bool {
    *pending = match *pending {
        Some((at, l)) if at + l == offset && l + len <= COPY_EAGER => Some((at, l + len)),
        Some((at, l)) => {
            proto::copy(at, l as u32, out);
            Some((offset, len))
        }
        None => Some((offset, len)),
    };
    match *pending {
        Some((at, l)) if l >= COPY_EAGER => {
            proto::copy(at, l as u32, out);
            *pending = None;
            true
        }
        _ => false,
    }
}

/// The target's rolling signature of a file: read whole, or still coming
/// (the batch's last one asked: its pieces are read while its delta is
/// sent, and the helper applies that delta while it still hashes).
pub(super) enum Basis {
    Whole(crate::rolling::Signature),
    Streamed(SignatureStream),
}

/// Big files: the rolling signatures of their versions on the target,
/// all but the last one asked read whole; the last one's head only (the
/// index of that file is returned: it must be sent first, its pieces
/// read as it is sent). `None` for a file with none there (a new file,
/// …): it is sent whole.
pub(super) fn ask_hashes(
    ch: &mut Box<dyn Pipe>,
    paths: &[(Vec<u8>, Vec<u8>)],
    opened: &[Option<Opened>],
    out: &mut Vec<u8>,
) -> io::Result<(Vec<Option<Basis>>, Option<usize>)> {
    use crate::helper::proto_tree::{read_signature, read_signature_head, signature_request};
    use std::io::Write;
    let mut sigs: Vec<Option<Basis>> = opened.iter().map(|_| None).collect();
    let mut asked = Vec::new();
    for (k, o) in opened.iter().enumerate() {
        if let Some((_, md)) = o
            && md.len() >= DELTA_MIN
        {
            let block = delta_block(md.len());
            signature_request(&paths[k].1, block, out);
            asked.push((k, block));
        }
    }
    let Some(&(last, last_block)) = asked.last() else {
        return Ok((sigs, None));
    };
    ch.write_all(out).map_err(helper_lost)?;
    out.clear();
    for &(k, block) in &asked[..asked.len() - 1] {
        if let Ok((_, sig)) = read_signature(ch, block).map_err(helper_lost)? {
            sigs[k] = Some(Basis::Whole(sig));
        }
    }
    match read_signature_head(ch, last_block).map_err(helper_lost)? {
        Ok(st) => {
            sigs[last] = Some(Basis::Streamed(st));
            Ok((sigs, Some(last)))
        }
        Err(_) => Ok((sigs, None)),
    }
}
