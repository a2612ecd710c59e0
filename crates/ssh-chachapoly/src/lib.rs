//! ChaCha20 and Poly1305 for libssh2's `chacha20-poly1305@openssh.com`,
//! vectorised (AVX2/SSE2, picked at run time by the RustCrypto crates).
//!
//! libssh2 (vendored by `libssh2-sys`) implements that cipher over a
//! portable C ChaCha20 and Poly1305 (`chacha.c`, `poly1305.c` from
//! OpenSSH): about 60 % of syncjob's client CPU when it moves big files.
//! The four C functions below have exactly those files' names, signatures
//! and results; defined here, they are what the linker resolves libssh2's
//! calls to, and it never takes `chacha.o`/`poly1305.o` out of libssh2's
//! archive:
//! - this crate depends on `libssh2-sys` (`extern crate` below), so its
//!   objects come before libssh2's archive on the link line;
//! - [`ensure_linked`], called by syncjob's SSH code, makes the object
//!   that holds them part of the link before that archive is read.
//!
//! A crate of its own so that test builds compile it optimised too
//! (`[profile.dev.package.ssh-chachapoly]`): the cipher's generic code is
//! instantiated here, and unoptimised it made every SSH transfer of the
//! test suite CPU bound.
//!
//! Invariants:
//! - `chacha_ctx` keeps the reference layout (16 little-endian state words:
//!   constants, key, 64-bit block counter, 64-bit nonce) and
//!   `chacha_encrypt_bytes` advances the counter by one per started 64-byte
//!   block, as the reference does.
//! - Input and output may be the same buffer (libssh2 encrypts in place);
//!   a partial overlap is handled through a copy.
//! - A 128-bit key (the reference allows it; libssh2 never uses it) and a
//!   block counter that would wrap past 2^64 go through the scalar
//!   reference algorithm kept here (the vectorised cipher would stop).
//! - A wrong result would fail every SSH connection's MAC check: the unit
//!   tests hold them to RFC 7539 vectors and to the reference algorithm,
//!   and every SSH test runs through them against a real sshd.

extern crate libssh2_sys;

use chacha20::cipher::{KeyIvInit, StreamCipher, StreamCipherCoreWrapper};
use chacha20::{ChaCha20Legacy, ChaCha20LegacyCore};
use poly1305::Poly1305;
use poly1305::universal_hash::KeyInit;

/// libssh2's `struct chacha_ctx`.
#[repr(C)]
pub struct ChachaCtx {
    input: [u32; 16],
}

const SIGMA: &[u8; 16] = b"expand 32-byte k";
const TAU: &[u8; 16] = b"expand 16-byte k";

fn le_words(bytes: &[u8], out: &mut [u32]) {
    for (w, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
        *w = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}

fn words_le<const N: usize>(words: &[u32]) -> [u8; N] {
    let mut out = [0u8; N];
    for (c, w) in out.chunks_exact_mut(4).zip(words) {
        c.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Makes the SSH session code refer to the replacements, so that the
/// linker takes them from this crate before it reads libssh2's archive.
pub fn ensure_linked() {
    std::hint::black_box(chacha_keysetup as *const ());
    std::hint::black_box(chacha_ivsetup as *const ());
    std::hint::black_box(chacha_encrypt_bytes as *const ());
    std::hint::black_box(poly1305_auth as *const ());
}

/// `chacha_keysetup(ctx, key, kbits)`: a 256-bit key (or a 128-bit one,
/// repeated, with the "16-byte" constants).
///
/// # Safety
/// `x` points to a `chacha_ctx`; `k` to `kbits / 8` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn chacha_keysetup(x: *mut ChachaCtx, k: *const u8, kbits: u32) {
    let (n, constants) = if kbits == 256 { (32, SIGMA) } else { (16, TAU) };
    // SAFETY: the caller passes a key of kbits/8 bytes and a valid context
    let (key, ctx) = unsafe { (std::slice::from_raw_parts(k, n), &mut *x) };
    le_words(constants, &mut ctx.input[0..4]);
    le_words(&key[..16], &mut ctx.input[4..8]);
    le_words(&key[n - 16..], &mut ctx.input[8..12]);
}

/// `chacha_ivsetup(ctx, iv, counter)`: an 8-byte nonce and an optional
/// 8-byte little-endian block counter (zero when null).
///
/// # Safety
/// `x` points to a `chacha_ctx`; `iv` to 8 bytes; `counter` is null or
/// points to 8 bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn chacha_ivsetup(x: *mut ChachaCtx, iv: *const u8, counter: *const u8) {
    // SAFETY: the caller passes a valid context and an 8-byte nonce
    let (ctx, iv) = unsafe { (&mut *x, std::slice::from_raw_parts(iv, 8)) };
    if counter.is_null() {
        ctx.input[12..14].fill(0);
    } else {
        // SAFETY: a non-null counter points to 8 bytes
        let c = unsafe { std::slice::from_raw_parts(counter, 8) };
        le_words(c, &mut ctx.input[12..14]);
    }
    le_words(iv, &mut ctx.input[14..16]);
}

/// `chacha_encrypt_bytes(ctx, m, c, bytes)`: `c = m XOR keystream` from
/// the context's block counter, which then moves past the blocks used.
///
/// # Safety
/// `x` points to a `chacha_ctx` set up by the two functions above; `m` to
/// `bytes` readable bytes and `c` to `bytes` writable ones (may be `m`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn chacha_encrypt_bytes(
    x: *mut ChachaCtx,
    m: *const u8,
    c: *mut u8,
    bytes: usize,
) {
    if bytes == 0 {
        return;
    }
    // SAFETY: the caller passes a valid context
    let ctx = unsafe { &mut *x };
    // SAFETY: `c` holds `bytes` writable bytes; `m` is read before it only
    // when the two do not overlap
    let out = unsafe { std::slice::from_raw_parts_mut(c, bytes) };
    let overlap = (m as usize) < (c as usize) + bytes && (c as usize) < (m as usize) + bytes;
    let copied;
    let input: Option<&[u8]> = if std::ptr::eq(m, c) {
        None
    } else if overlap {
        // SAFETY: `m` holds `bytes` readable bytes (copied before writing)
        copied = unsafe { std::slice::from_raw_parts(m, bytes) }.to_vec();
        Some(&copied)
    } else {
        // SAFETY: `m` holds `bytes` readable bytes, disjoint from `out`
        Some(unsafe { std::slice::from_raw_parts(m, bytes) })
    };
    match (cipher_at(&ctx.input, bytes), input) {
        // one pass: read the input, write the output
        (Some(mut k), Some(input)) => k.apply_keystream_b2b(input, out),
        (Some(mut k), None) => k.apply_keystream(out),
        (None, input) => {
            if let Some(input) = input {
                out.copy_from_slice(input);
            }
            reference_xor(&ctx.input, out);
        }
    }
    let blocks = bytes.div_ceil(64) as u64;
    let counter = (u64::from(ctx.input[13]) << 32 | u64::from(ctx.input[12])).wrapping_add(blocks);
    ctx.input[12] = counter as u32;
    ctx.input[13] = (counter >> 32) as u32;
}

/// The vectorised keystream the state stands at (key, nonce, block
/// counter), for `bytes` bytes. `None` where the crate's cipher does not
/// apply and the scalar reference is used: a 128-bit key's constants
/// (never used by libssh2), or a counter that would wrap past 2^64 (the
/// crate's cipher stops there; libssh2's counters are 0 and 1).
fn cipher_at(state: &[u32; 16], bytes: usize) -> Option<ChaCha20Legacy> {
    let counter = u64::from(state[13]) << 32 | u64::from(state[12]);
    counter.checked_add(bytes.div_ceil(64) as u64)?;
    if words_le::<16>(&state[0..4]) != *SIGMA {
        return None;
    }
    let key: [u8; 32] = words_le(&state[4..12]);
    let nonce: [u8; 8] = words_le(&state[14..16]);
    let mut core = ChaCha20LegacyCore::new(&key.into(), &nonce.into());
    core.set_block_pos(counter);
    Some(StreamCipherCoreWrapper::from_core(core))
}

/// The reference algorithm, one 64-byte block at a time (D. J. Bernstein's
/// ChaCha20 with a 64-bit counter in words 12-13).
fn reference_xor(state: &[u32; 16], buf: &mut [u8]) {
    let mut s = *state;
    for chunk in buf.chunks_mut(64) {
        let mut x = s;
        for _ in 0..10 {
            for [a, b, c, d] in [
                [0, 4, 8, 12],
                [1, 5, 9, 13],
                [2, 6, 10, 14],
                [3, 7, 11, 15],
                [0, 5, 10, 15],
                [1, 6, 11, 12],
                [2, 7, 8, 13],
                [3, 4, 9, 14],
            ] {
                quarter_round(&mut x, a, b, c, d);
            }
        }
        for (i, byte) in chunk.iter_mut().enumerate() {
            let w = x[i / 4].wrapping_add(s[i / 4]);
            *byte ^= w.to_le_bytes()[i % 4];
        }
        s[12] = s[12].wrapping_add(1);
        if s[12] == 0 {
            s[13] = s[13].wrapping_add(1);
        }
    }
}

fn quarter_round(x: &mut [u32; 16], a: usize, b: usize, c: usize, d: usize) {
    x[a] = x[a].wrapping_add(x[b]);
    x[d] = (x[d] ^ x[a]).rotate_left(16);
    x[c] = x[c].wrapping_add(x[d]);
    x[b] = (x[b] ^ x[c]).rotate_left(12);
    x[a] = x[a].wrapping_add(x[b]);
    x[d] = (x[d] ^ x[a]).rotate_left(8);
    x[c] = x[c].wrapping_add(x[d]);
    x[b] = (x[b] ^ x[c]).rotate_left(7);
}

/// `poly1305_auth(out, m, inlen, key)`: the one-time authenticator of
/// `m` under a 32-byte key.
///
/// # Safety
/// `out` points to 16 writable bytes, `m` to `inlen` readable bytes and
/// `key` to 32 readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn poly1305_auth(out: *mut u8, m: *const u8, inlen: usize, key: *const u8) {
    // SAFETY: the caller passes a 32-byte key and an inlen-byte message
    let (key, msg) = unsafe {
        let key: &[u8; 32] = &*(key as *const [u8; 32]);
        let msg = if inlen == 0 {
            &[][..]
        } else {
            std::slice::from_raw_parts(m, inlen)
        };
        (key, msg)
    };
    let tag = Poly1305::new(key.into()).compute_unpadded(msg);
    // SAFETY: `out` holds 16 writable bytes; `tag` is a separate value
    unsafe { std::ptr::copy_nonoverlapping(tag.as_ptr(), out, 16) };
}

#[cfg(test)]
mod tests;
