//! Rolling-checksum deltas (rsync's algorithm): the receiver describes its
//! old version as fixed blocks, each with a weak rolling checksum and a
//! BLAKE3; the sender slides a window over the new version one byte at a
//! time, and wherever the window's weak checksum is one of the receiver's
//! *and* its BLAKE3 is that block's, the block is copied from the old
//! version; everything else is sent literally. Unlike comparing blocks at
//! fixed offsets, an insertion or deletion costs about one block, not the
//! rest of the file.
//!
//! Invariants:
//! - A copy is emitted only after the strong hash (BLAKE3) of the source
//!   window equals the block's: the weak checksum only proposes.
//! - The ops, applied in order, rebuild the source exactly: copies and
//!   literals cover the source from offset 0 to its end without gap or
//!   overlap (unit tests check this on random edits).
//! - Memory is bounded: the source is streamed; at most two blocks plus
//!   [`LITERAL_MAX`] and a read's worth of it are held, whatever its size;
//!   a signature still coming is held as it comes (at most the whole one).
//!
//! - A 64 Ki-bit table of the weak sums' low bits is checked before the
//!   hash map, so that most non-matching offsets cost one bit test.
//!
//! Used by the remote helper's deltas (`helper::proto_tree`'s `W` record,
//! the SSH transport's helper client).

use std::collections::HashMap;
use std::io::{self, Read};

/// Literal data is handed out in pieces of at most this size.
pub const LITERAL_MAX: usize = 1 << 20;

/// The source is read this much at a time by a scan.
const READ: usize = 1 << 20;

/// The weak checksum of a window: a polynomial (Rabin–Karp) rolling hash
/// mod 2^32, `sum (x_i + 1) * B^(len-1-i)`. Not rsync's Adler-style sum of
/// bytes and of running sums: on periodic data (a repeated pattern, a
/// table) almost every offset collides with a block under that sum, and
/// each collision costs a BLAKE3 of a whole block (measured: 24 MiB of a
/// 251-byte pattern took 103 s to scan in a debug build); a polynomial hash
/// collides only where the windows are equal (or by chance, 2^-32).
///
/// Mod 2^32 (helper protocol 4; protocol 3 had mod 2^64) so that a whole
/// block's hash ([`Rolling::new`], the signature's cost beside BLAKE3) is
/// computed in 32-bit SIMD lanes: [`LANES`] interleaved Horner sums, each
/// over every `LANES`-th byte, combined at the end (see [`lanes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rolling {
    h: u32,
    /// `B^(len-1)`: the weight of the byte that leaves
    top: u32,
}

const B: u32 = 0x9E37_79B1;

/// Bytes a step of the lane-wise sum (64 lanes of u32: eight AVX2
/// registers, enough independent multiplies to hide their latency).
const LANES: usize = 64;

/// `B^e` mod 2^32.
fn pow(mut e: u64) -> u32 {
    let (mut r, mut base) = (1u32, B);
    while e > 0 {
        if e & 1 == 1 {
            r = r.wrapping_mul(base);
        }
        base = base.wrapping_mul(base);
        e >>= 1;
    }
    r
}

/// The polynomial of `data`'s first `LANES * k` bytes (all its whole
/// steps), as `LANES` lane sums: lane `j` is the Horner sum in `B^LANES`
/// of bytes `j, j + LANES, …`; the polynomial is `sum lane_j *
/// B^(LANES-1-j)`. Plain Rust that LLVM turns into vector multiplies
/// where the target has them (see [`lanes_avx2`]).
#[inline(always)]
fn lanes_generic(data: &[u8]) -> [u32; LANES] {
    let step = pow(LANES as u64);
    let mut acc = [0u32; LANES];
    for c in data.chunks_exact(LANES) {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = a.wrapping_mul(step).wrapping_add(x as u32 + 1);
        }
    }
    acc
}

/// [`lanes_generic`] compiled for AVX2 (8 lanes a multiply); called only
/// where the CPU has it.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn lanes_avx2(data: &[u8]) -> [u32; LANES] {
    lanes_generic(data)
}

/// The lane sums of `data` (see [`lanes_generic`]), with AVX2 where the
/// CPU has it (the same result: the same wrapping arithmetic).
fn lanes(data: &[u8]) -> [u32; LANES] {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2 (checked just above)
        return unsafe { lanes_avx2(data) };
    }
    lanes_generic(data)
}

impl Rolling {
    pub fn new(data: &[u8]) -> Rolling {
        Rolling::from_lanes(data, lanes(data))
    }

    /// [`Rolling::new`] given `data`'s lane sums `acc`.
    fn from_lanes(data: &[u8], acc: [u32; LANES]) -> Rolling {
        let whole = data.len() / LANES * LANES;
        let mut h = 0u32;
        if whole > 0 {
            // lane j's bytes sit LANES-1-j places before the step's end
            let mut w = 1u32;
            for a in acc.iter().rev() {
                h = h.wrapping_add(a.wrapping_mul(w));
                w = w.wrapping_mul(B);
            }
        }
        for &x in &data[whole..] {
            h = h.wrapping_mul(B).wrapping_add(x as u32 + 1);
        }
        Rolling {
            h,
            top: pow(data.len().saturating_sub(1) as u64),
        }
    }

    /// Slide the window one byte: `out` leaves, `inn` enters.
    pub fn roll(&mut self, out: u8, inn: u8) {
        let h = self.h.wrapping_sub(self.top.wrapping_mul(out as u32 + 1));
        self.h = h.wrapping_mul(B).wrapping_add(inn as u32 + 1);
    }

    /// The hash's bits well mixed (what goes on the wire; a bijection, so
    /// no collision is added).
    pub fn digest(&self) -> u32 {
        let mut x = self.h;
        x ^= x >> 16;
        x = x.wrapping_mul(0x85EB_CA6B);
        x ^= x >> 13;
        x = x.wrapping_mul(0xC2B2_AE35);
        x ^ (x >> 16)
    }
}

/// The receiver's description of its version: full blocks only (a short
/// last block is always sent literally).
#[derive(Debug, Clone, Default)]
pub struct Signature {
    pub block: usize,
    pub weak: Vec<u32>,
    pub strong: Vec<[u8; 32]>,
}

impl Signature {
    /// Describe `data` in blocks of `block` bytes.
    pub fn of(mut data: impl Read, block: usize) -> io::Result<Signature> {
        let mut s = Signature {
            block,
            ..Default::default()
        };
        let mut buf = vec![0u8; block];
        loop {
            let n = read_full(&mut data, &mut buf)?;
            if n < block {
                return Ok(s);
            }
            s.weak.push(Rolling::new(&buf).digest());
            s.strong.push(strong(&buf));
        }
    }

    /// [`Signature::of`] the first `len` bytes of `f` (read at offsets),
    /// computed in `threads` threads (see [`Signature::stream_file`]): the
    /// same result, in about `1 / threads` of the time where cores are free.
    pub fn of_file(
        f: &std::fs::File,
        len: u64,
        block: usize,
        threads: usize,
    ) -> io::Result<Signature> {
        let mut s = Signature {
            block,
            ..Default::default()
        };
        Signature::stream_file(f, len, block, threads, 16, |piece| {
            s.weak.extend(piece.iter().map(|b| b.0));
            s.strong.extend(piece.iter().map(|b| b.1));
            Ok(())
        })?;
        Ok(s)
    }

    /// The sums of each full `block` of the first `len` bytes of `f` (read
    /// at offsets), handed to `emit` in order, `piece` blocks at a time (the
    /// last piece may be shorter), as they are computed: pieces are shared
    /// among `threads` threads (taken in order, put back in order here), so
    /// that the first ones go out long before the last one is read. Stops
    /// at the first error, of a read or of `emit`. The pieces computed
    /// ahead of the one awaited are held: at most the whole signature.
    pub fn stream_file(
        f: &std::fs::File,
        len: u64,
        block: usize,
        threads: usize,
        piece: usize,
        mut emit: impl FnMut(&[BlockSum]) -> io::Result<()>,
    ) -> io::Result<()> {
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
        let (block, piece) = (block.max(1), piece.max(1) as u64);
        let pieces = (len / block as u64).div_ceil(piece);
        let (next, stop) = (AtomicU64::new(0), AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel::<(u64, io::Result<Vec<BlockSum>>)>();
        std::thread::scope(|sc| {
            for _ in 0..threads.clamp(1, 64) {
                let (tx, next, stop) = (tx.clone(), &next, &stop);
                sc.spawn(move || {
                    let mut buf = vec![0u8; block];
                    while !stop.load(Relaxed) {
                        let i = next.fetch_add(1, Relaxed);
                        if i >= pieces {
                            break;
                        }
                        let r = sums_of(f, len, block, i * piece..(i + 1) * piece, &mut buf);
                        if tx.send((i, r)).is_err() {
                            break;
                        }
                    }
                });
            }
            drop(tx);
            let mut held = std::collections::BTreeMap::new();
            let mut want = 0u64;
            let r = (|| {
                for (i, r) in &rx {
                    held.insert(i, r);
                    while let Some(r) = held.remove(&want) {
                        emit(&r?)?;
                        want += 1;
                    }
                }
                Ok(())
            })();
            stop.store(true, Relaxed);
            r
        })
    }
}

/// One block's sums: weak, BLAKE3.
pub type BlockSum = (u32, [u8; 32]);

/// The sums of blocks `range` (those of them that are full blocks of the
/// first `len` bytes of `f`).
fn sums_of(
    f: &std::fs::File,
    len: u64,
    block: usize,
    range: std::ops::Range<u64>,
    buf: &mut [u8],
) -> io::Result<Vec<BlockSum>> {
    use std::os::unix::fs::FileExt;
    let end = range.end.min(len / block as u64);
    let mut v = Vec::with_capacity(end.saturating_sub(range.start) as usize);
    for k in range.start..end {
        f.read_exact_at(buf, k * block as u64)?;
        v.push((Rolling::new(buf).digest(), strong(buf)));
    }
    Ok(v)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The strong hash of a block: BLAKE3 (a cryptographic hash, several
/// times faster than BLAKE3 where the CPU has no SHA extensions, and
/// faster with them too on whole blocks).
pub fn strong(data: &[u8]) -> [u8; 32] {
    blake3::hash(data).into()
}

/// The 16-bit tag of a weak sum (its two halves mixed).
fn tag(w: u32) -> usize {
    ((w ^ (w >> 16)) & 0xffff) as usize
}

/// One step of rebuilding the source.
#[derive(Debug, PartialEq, Eq)]
pub enum Op<'a> {
    /// `len` bytes from the old version at `offset` (whole blocks)
    Copy { offset: u64, len: u64 },
    /// these bytes of the source
    Literal(&'a [u8]),
}

/// Compute the delta of `src` against `sig`, handing each op to `emit` in
/// source order; returns the literal bytes.
pub fn delta(
    src: impl Read,
    sig: &Signature,
    emit: impl FnMut(Op) -> io::Result<()>,
) -> io::Result<u64> {
    delta_with(src, sig, &[], emit)
}

/// [`delta`], given the BLAKE3 of the source's blocks at offsets that are
/// multiples of the block size (`aligned[k]`: bytes `k*block..(k+1)*block`,
/// computed beforehand, e.g. while the signature was awaited): a window at
/// such an offset is not hashed again.
pub fn delta_with(
    src: impl Read,
    sig: &Signature,
    aligned: &[[u8; 32]],
    emit: impl FnMut(Op) -> io::Result<()>,
) -> io::Result<u64> {
    delta_from(src, 0, sig, aligned, emit)
}

/// How many blocks at the start of the source are the old version's
/// first blocks, in order, by their BLAKE3 (`aligned`, the source's):
/// these can be copied without reading the source again.
pub fn leading_run(sig: &Signature, aligned: &[[u8; 32]]) -> usize {
    sig.strong
        .iter()
        .zip(aligned)
        .take_while(|(a, b)| a == b)
        .count()
}

/// [`delta_with`] for the source from offset `start`, a multiple of the
/// block size (`src` reads from there): the blocks before it are the old
/// version's first `start / block` ones (see [`leading_run`]), copied by
/// the caller.
pub fn delta_from(
    src: impl Read,
    start: u64,
    sig: &Signature,
    aligned: &[[u8; 32]],
    emit: impl FnMut(Op) -> io::Result<()>,
) -> io::Result<u64> {
    scan(src, start, (Sigs::Whole(sig), 0), aligned, emit)
}

/// How far past a window (in the old version's bytes) a signature still
/// coming must have come before the window is matched: a block moved
/// further forward than this is found only where the signature came
/// sooner (else sent literally; the result is exact either way).
pub const LOOKAHEAD: u64 = 16 << 20;

/// [`delta_from`] against a signature still coming: `sig` holds the
/// blocks' sums that came, `total` the number announced; `more` reads the
/// next ones into it (`Ok(false)`: no more will come). The block expected
/// next (after a match) is awaited; before a window's weak sum is looked
/// up, the signature covers the old version up to `lookahead` bytes past
/// it (or is complete; [`LOOKAHEAD`] is the one to use). So the scan runs
/// right behind the signature while the rest of it is computed.
pub fn delta_growing(
    src: impl Read,
    start: u64,
    (sig, total, lookahead): (&mut Signature, usize, u64),
    more: &mut dyn FnMut(&mut Signature) -> io::Result<bool>,
    aligned: &[[u8; 32]],
    emit: impl FnMut(Op) -> io::Result<()>,
) -> io::Result<u64> {
    let ahead = (lookahead / sig.block.max(1) as u64) as usize + 1;
    let sigs = Sigs::Growing { sig, total, more };
    scan(src, start, (sigs, ahead), aligned, emit)
}

/// A scan's signature: whole, or still coming.
enum Sigs<'a> {
    Whole(&'a Signature),
    Growing {
        sig: &'a mut Signature,
        total: usize,
        more: &'a mut dyn FnMut(&mut Signature) -> io::Result<bool>,
    },
}

impl Sigs<'_> {
    fn get(&self) -> &Signature {
        match self {
            Sigs::Whole(s) => s,
            Sigs::Growing { sig, .. } => sig,
        }
    }

    fn total(&self) -> usize {
        match self {
            Sigs::Whole(s) => s.weak.len(),
            Sigs::Growing { total, .. } => *total,
        }
    }

    /// Read sums until the first `blocks` (or all) came.
    fn cover(&mut self, blocks: usize) -> io::Result<()> {
        if let Sigs::Growing { sig, total, more } = self {
            while sig.weak.len() < blocks.min(*total) {
                if !more(sig)? {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// The scan of [`delta_from`] and [`delta_growing`] (`ahead`: blocks the
/// signature must cover past the window, if it is still coming).
fn scan(
    mut src: impl Read,
    start: u64,
    (mut sigs, ahead): (Sigs, usize),
    aligned: &[[u8; 32]],
    mut emit: impl FnMut(Op) -> io::Result<()>,
) -> io::Result<u64> {
    let bl = sigs.get().block;
    let mut m = Matcher::new(aligned);
    m.next = Some((start / bl.max(1) as u64) as u32);
    // buf[lit..pos] is pending literal; buf[pos..pos + bl] the window;
    // buf[..end] was read (the buffer is never zeroed again: a reread
    // moves only what is left of it to the front)
    let mut buf: Vec<u8> = vec![0u8; LITERAL_MAX + 2 * bl + READ];
    let (mut lit, mut pos, mut end) = (0usize, 0usize, 0usize);
    let mut eof = false;
    let mut literal = 0u64;
    // the source offset of buf[0]
    let mut base = start;
    let mut flush = |buf: &[u8], emit: &mut dyn FnMut(Op) -> io::Result<()>| -> io::Result<()> {
        if !buf.is_empty() {
            literal += buf.len() as u64;
            emit(Op::Literal(buf))?;
        }
        Ok(())
    };
    loop {
        // keep a whole window available (or everything left)
        // (and one byte past it, to roll)
        if !eof && end <= pos + bl {
            buf.copy_within(lit..end, 0);
            base += lit as u64;
            (pos, end, lit) = (pos - lit, end - lit, 0);
            // (pos <= LITERAL_MAX: pending literal is flushed past that)
            let want = (pos + bl + READ).min(buf.len());
            let n = read_full(&mut src, &mut buf[end..want])?;
            eof = end + n < want;
            end += n;
        }
        if bl == 0 || end < pos + bl || sigs.total() == 0 {
            // no whole window left: the rest is literal
            flush(&buf[lit..end], &mut emit)?;
            return Ok(literal);
        }
        let at = base + pos as u64;
        if let Some(i) = m.find(&mut sigs, ahead, &buf[pos..pos + bl], at)? {
            m.matched(i);
            flush(&buf[lit..pos], &mut emit)?;
            emit(Op::Copy {
                offset: i as u64 * bl as u64,
                len: bl as u64,
            })?;
            pos += bl;
            lit = pos;
            continue;
        }
        if pos - lit >= LITERAL_MAX {
            flush(&buf[lit..pos], &mut emit)?;
            lit = pos;
        }
        if end > pos + bl {
            m.roll(buf[pos], buf[pos + bl]);
            pos += 1;
        } else {
            // at the end (the top read all there was): the rest is literal
            flush(&buf[lit..end], &mut emit)?;
            return Ok(literal);
        }
    }
}

/// Finds the block a window holds: the weak sums' table and tags (of the
/// blocks whose sums came), the window's rolling sum, the block expected
/// next.
struct Matcher<'a> {
    aligned: &'a [[u8; 32]],
    table: HashMap<u32, Vec<u32>>,
    tags: Vec<u64>,
    /// the blocks in the table
    known: usize,
    /// the window's weak sum (`None` right after a match: not computed)
    roll: Option<Rolling>,
    /// the block after the last one matched
    next: Option<u32>,
}

impl<'a> Matcher<'a> {
    fn new(aligned: &'a [[u8; 32]]) -> Matcher<'a> {
        Matcher {
            aligned,
            table: HashMap::new(),
            tags: vec![0u64; 1 << 10],
            known: 0,
            roll: None,
            next: Some(0),
        }
    }

    /// Put the blocks of `sig` not yet known in the table.
    fn absorb(&mut self, sig: &Signature) {
        for (i, w) in sig.weak.iter().enumerate().skip(self.known) {
            self.table.entry(*w).or_default().push(i as u32);
            let t = tag(*w);
            self.tags[t >> 6] |= 1 << (t & 63);
        }
        self.known = sig.weak.len();
    }

    /// The BLAKE3 of the window at source offset `at` (blocks of `bl`).
    fn strong(&self, bl: usize, at: u64, window: &[u8]) -> [u8; 32] {
        let bl = bl.max(1) as u64;
        match self.aligned.get((at / bl) as usize) {
            Some(s) if at.is_multiple_of(bl) => *s,
            _ => strong(window),
        }
    }

    /// The block `window` (at source offset `at`) holds, if any: the
    /// expected block by its BLAKE3, else by the weak sum. A signature still
    /// coming is read until the expected block came, and for a weak sum's
    /// lookup up to `ahead` blocks past the window.
    fn find(
        &mut self,
        sigs: &mut Sigs,
        ahead: usize,
        window: &[u8],
        at: u64,
    ) -> io::Result<Option<u32>> {
        if let Some(j) = self.expected() {
            sigs.cover(j as usize + 1)?;
        }
        let (hit, strong_here) = self.by_next(sigs.get(), window, at);
        if hit.is_some() {
            return Ok(hit);
        }
        if self.known < sigs.total() {
            let bl = sigs.get().block.max(1) as u64;
            sigs.cover((at / bl) as usize + ahead)?;
            self.absorb(sigs.get());
        }
        Ok(self.by_weak(sigs.get(), window, at, strong_here))
    }

    /// The block tried first (right after a match, or at the start, before
    /// any weak sum is computed), if any.
    fn expected(&self) -> Option<u32> {
        self.next.filter(|_| self.roll.is_none())
    }

    /// Whether `window` (at source offset `at`) holds the expected block,
    /// by its BLAKE3; and that BLAKE3, if it was computed.
    fn by_next(&self, sig: &Signature, window: &[u8], at: u64) -> (Option<u32>, Option<[u8; 32]>) {
        match self.expected().filter(|&j| (j as usize) < sig.strong.len()) {
            Some(j) => {
                let s = self.strong(sig.block, at, window);
                ((sig.strong[j as usize] == s).then_some(j), Some(s))
            }
            None => (None, None),
        }
    }

    /// The block `window` (at source offset `at`) holds among those in the
    /// table: its weak sum (rolled), then its BLAKE3 (`strong_here` if it
    /// was computed).
    fn by_weak(
        &mut self,
        sig: &Signature,
        window: &[u8],
        at: u64,
        strong_here: Option<[u8; 32]>,
    ) -> Option<u32> {
        let d = self
            .roll
            .get_or_insert_with(|| Rolling::new(window))
            .digest();
        let t = tag(d);
        if self.tags[t >> 6] & (1 << (t & 63)) == 0 {
            return None;
        }
        let cands = self.table.get(&d)?;
        let strong = strong_here.unwrap_or_else(|| self.strong(sig.block, at, window));
        cands
            .iter()
            .copied()
            .find(|&i| sig.strong[i as usize] == strong)
    }

    /// Block `i` was found: the next one is expected.
    fn matched(&mut self, i: u32) {
        self.next = Some(i + 1);
        self.roll = None;
    }

    /// The window moves one byte (after `find` found nothing).
    fn roll(&mut self, out: u8, inn: u8) {
        if let Some(r) = self.roll.as_mut() {
            r.roll(out, inn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Append what `op` stands for (a copy of `old`'s bytes, or literal
    /// data) to `out`.
    fn rebuild(old: &[u8], out: &mut Vec<u8>, op: Op) {
        match op {
            Op::Copy { offset, len } => {
                out.extend_from_slice(&old[offset as usize..(offset + len) as usize])
            }
            Op::Literal(d) => out.extend_from_slice(d),
        }
    }

    /// Apply ops to `old`: the rebuilt file.
    fn apply(old: &[u8], new: &[u8], sig: &Signature) -> (Vec<u8>, u64) {
        let mut out = Vec::new();
        let lit = delta(new, sig, |op| {
            rebuild(old, &mut out, op);
            Ok(())
        })
        .unwrap();
        (out, lit)
    }

    fn pseudo(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        let mut v: Vec<u8> = Vec::with_capacity(n + 8);
        while v.len() < n {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            v.extend_from_slice(&x.to_le_bytes());
        }
        v.truncate(n);
        v
    }

    #[test]
    fn precomputed_aligned_sums_give_the_same_ops() {
        let old = pseudo(100_000, 5);
        let mut new = old.clone();
        new[50_000] ^= 1;
        new.extend_from_slice(b"tail");
        let sig = Signature::of(&old[..], 4096).unwrap();
        let aligned: Vec<[u8; 32]> = new.chunks_exact(4096).map(strong).collect();
        let ops = |aligned: &[[u8; 32]]| {
            let mut v = Vec::new();
            delta_with(&new[..], &sig, aligned, |op| {
                v.push(format!("{op:?}"));
                Ok(())
            })
            .unwrap();
            v
        };
        assert_eq!(ops(&aligned), ops(&[]));
    }

    #[test]
    fn a_delta_from_the_end_of_the_leading_run_rebuilds_exactly() {
        let old = pseudo(100_000, 9);
        let mut new = old.clone();
        new[70_000] ^= 1;
        new.extend_from_slice(b"more");
        let sig = Signature::of(&old[..], 4096).unwrap();
        let aligned: Vec<[u8; 32]> = new.chunks_exact(4096).map(strong).collect();
        let run = leading_run(&sig, &aligned);
        assert_eq!(run, 70_000 / 4096);
        let start = run * 4096;
        let mut out = old[..start].to_vec();
        let lit = delta_from(&new[start..], start as u64, &sig, &aligned, |op| {
            rebuild(&old, &mut out, op);
            Ok(())
        })
        .unwrap();
        assert!(out == new);
        assert_eq!(lit, 4096 + (100_000 % 4096) as u64 + 4);
    }

    #[test]
    fn a_file_signature_in_threads_is_the_streamed_one() {
        let d = pseudo(10 * 4096 + 100, 4);
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &d).unwrap();
        let one = Signature::of(&d[..], 4096).unwrap();
        for threads in [1, 2, 3, 16] {
            let s = Signature::of_file(&f, d.len() as u64, 4096, threads).unwrap();
            assert_eq!((&s.weak, &s.strong), (&one.weak, &one.strong), "{threads}");
        }
        let s = Signature::of_file(&f, 4000, 4096, 2).unwrap();
        assert!(s.weak.is_empty());
        // in pieces of 1, 3, 4 and 11 blocks: the same sums, in order
        for (threads, piece) in [(1, 1), (2, 3), (3, 4), (2, 11)] {
            let mut got: Vec<BlockSum> = Vec::new();
            let mut sizes = Vec::new();
            Signature::stream_file(&f, d.len() as u64, 4096, threads, piece, |p| {
                sizes.push(p.len());
                got.extend_from_slice(p);
                Ok(())
            })
            .unwrap();
            let want: Vec<BlockSum> = one.weak.iter().copied().zip(one.strong.clone()).collect();
            assert!(got == want, "{threads} threads, pieces of {piece}");
            assert!(sizes.iter().all(|&n| n == piece || n == 10 % piece));
        }
        // an error of `emit` stops the stream and is returned
        let mut calls = 0;
        let r = Signature::stream_file(&f, d.len() as u64, 4096, 2, 1, |_| {
            calls += 1;
            Err(std::io::Error::other("stop"))
        });
        assert!(r.is_err() && calls == 1);
    }

    /// The definition, one byte at a time.
    fn naive(d: &[u8]) -> u32 {
        d.iter()
            .fold(0u32, |h, &x| h.wrapping_mul(B).wrapping_add(x as u32 + 1))
    }

    #[test]
    fn the_lane_wise_hash_is_the_polynomial_at_every_length() {
        let d = pseudo(3 * LANES + 7, 11);
        for n in 0..d.len() {
            assert_eq!(Rolling::new(&d[..n]).h, naive(&d[..n]), "len {n}");
        }
        let d = pseudo(128 << 10, 12);
        assert_eq!(Rolling::new(&d).h, naive(&d));
        // the top weight is B^(len-1)
        assert_eq!(
            Rolling::new(&d[..5]).top,
            B.wrapping_mul(B).wrapping_mul(B).wrapping_mul(B)
        );
    }

    #[test]
    fn the_simd_and_the_plain_lane_sums_agree() {
        for n in [0, 1, LANES - 1, LANES, 5 * LANES + 3, 128 << 10] {
            let d = pseudo(n, n as u64 + 1);
            let plain = lanes_generic(&d);
            assert_eq!(lanes(&d), plain, "len {n}");
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx2") {
                // SAFETY: the CPU has AVX2
                assert_eq!(unsafe { lanes_avx2(&d) }, plain, "len {n}");
            }
        }
    }

    #[test]
    fn periodic_data_collides_only_where_the_windows_are_equal() {
        // a 251-byte pattern: windows at offsets that differ by a multiple
        // of 251 are equal; no other two of the first 251 offsets collide
        let pat = pseudo(251, 13);
        let d: Vec<u8> = pat.iter().copied().cycle().take(8192 + 600).collect();
        let mut r = Rolling::new(&d[..8192]);
        let mut seen = std::collections::HashSet::new();
        for i in 0..251 {
            assert!(seen.insert(r.digest()), "offset {i} collides");
            r.roll(d[i], d[i + 8192]);
        }
        assert_eq!(r.digest(), Rolling::new(&d[..8192]).digest());
    }

    #[test]
    fn rolling_equals_fresh() {
        let d = pseudo(5000, 3);
        let mut r = Rolling::new(&d[..1000]);
        for i in 0..4000 {
            r.roll(d[i], d[i + 1000]);
            assert_eq!(r, Rolling::new(&d[i + 1..i + 1001]), "at {i}");
        }
    }

    /// `len` pseudo-random bytes, and a copy with one edit chosen by
    /// `seed` (an insertion, a deletion, a replacement, or one byte put
    /// first), at an offset picked with `salt` and `stride`.
    fn random_edit(len: usize, seed: u64, salt: u64, stride: usize) -> (Vec<u8>, Vec<u8>) {
        let old = pseudo(len, seed);
        let mut new = old.clone();
        let r = pseudo(8, seed + salt);
        let at = (r[0] as usize * stride) % new.len();
        let (range, with) = match seed % 4 {
            0 => (at..at, pseudo(r[1] as usize + 1, seed)),
            1 => (at..(at + r[1] as usize).min(new.len()), vec![]),
            2 => (at..(at + 3).min(new.len()), pseudo(9, seed)),
            _ => (0..0, vec![r[2]]),
        };
        new.splice(range, with);
        (old, new)
    }

    #[test]
    fn random_edits_rebuild_exactly() {
        for seed in 1..40u64 {
            let (old, new) = random_edit(20_000 + seed as usize * 37, seed, 100, 61);
            let sig = Signature::of(&old[..], 512).unwrap();
            let (got, _) = apply(&old, &new, &sig);
            assert!(got == new, "seed {seed}");
        }
        // empty cases
        let sig = Signature::of(&b""[..], 512).unwrap();
        assert_eq!(apply(b"", b"abc", &sig).0, b"abc");
        let sig = Signature::of(&b"abc"[..], 512).unwrap();
        assert_eq!(apply(b"abc", b"", &sig).0, b"");
    }

    /// Rebuild `new` from `old` with the signature coming in pieces of
    /// `piece` blocks as the scan asks for them (`lookahead` bytes):
    /// (rebuilt, literal bytes, the pieces read when the first op came).
    fn apply_growing(
        old: &[u8],
        new: &[u8],
        block: usize,
        piece: usize,
        lookahead: u64,
    ) -> (Vec<u8>, u64, Option<usize>) {
        let whole = Signature::of(old, block).unwrap();
        let mut sig = Signature {
            block,
            ..Default::default()
        };
        let pieces = std::cell::Cell::new(0);
        let mut more = |s: &mut Signature| {
            let at = s.weak.len();
            let end = (at + piece).min(whole.weak.len());
            s.weak.extend_from_slice(&whole.weak[at..end]);
            s.strong.extend_from_slice(&whole.strong[at..end]);
            pieces.set(pieces.get() + 1);
            Ok(end > at)
        };
        let (mut out, mut first) = (Vec::new(), None);
        let total = whole.weak.len();
        let lit = delta_growing(new, 0, (&mut sig, total, lookahead), &mut more, &[], |op| {
            first.get_or_insert(pieces.get());
            rebuild(old, &mut out, op);
            Ok(())
        })
        .unwrap();
        (out, lit, first)
    }

    #[test]
    fn a_signature_still_coming_rebuilds_exactly_and_is_read_as_needed() {
        for seed in 1..30u64 {
            let (old, new) = random_edit(40_000 + seed as usize * 53, seed, 200, 151);
            let sig = Signature::of(&old[..], 512).unwrap();
            let (_, want_lit) = apply(&old, &new, &sig);
            for (piece, ahead) in [(1, 0), (3, 1024), (7, 4096), (1000, 0)] {
                let (got, lit, _) = apply_growing(&old, &new, 512, piece, ahead);
                assert!(got == new, "seed {seed} piece {piece} ahead {ahead}");
                // nothing moved further than 256 bytes here: with that
                // much signature ahead, the same literal data as whole
                if ahead >= 1024 {
                    assert_eq!(lit, want_lit, "seed {seed} piece {piece}");
                }
            }
        }
        // one byte inserted at the start: the first ops come long before
        // the last of 200 pieces of 1 block
        let old = pseudo(200 * 512, 77);
        let mut new = vec![b'!'];
        new.extend_from_slice(&old);
        let (got, lit, first) = apply_growing(&old, &new, 512, 1, 2048);
        assert!(got == new);
        assert_eq!(lit, 1);
        assert!(first.unwrap() < 10, "first op after {first:?} pieces");
    }

    /// The case: one byte inserted at the start of a 64 MiB file
    /// costs well under 1 MiB of literal data (about one block).
    #[test]
    fn one_byte_inserted_at_the_start_of_64_mib_sends_under_1_mib() {
        let old = pseudo(64 << 20, 7);
        let sig = Signature::of(&old[..], 128 << 10).unwrap();
        let mut new = Vec::with_capacity(old.len() + 1);
        new.push(b'!');
        new.extend_from_slice(&old);
        let (got, literal) = apply(&old, &new, &sig);
        assert!(got == new, "rebuilt exactly");
        assert!(literal < 1 << 20, "literal {literal}");
        assert_eq!(literal, 1);
    }
}
