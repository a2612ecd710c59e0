//! Copies of a delta's basis into the new version (the `COPY` ops of a
//! file record).
//!
//! Invariants:
//! - A copy appends exactly `len` bytes of the basis from `off` at the
//!   file's current position and leaves the position at its end; reading
//!   past the basis's end is an error (a short basis is never padded).
//! - Every read and write is positional (`pread`/`pwrite`, or
//!   `copy_file_range` with both offsets given), so that a long copy can be
//!   split between two threads: each writes its own range of the new,
//!   still private, file; both must succeed before the copy does.

use super::{Fail, ctx};
use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileExt;

/// A copy at least this long is done by two threads (halves); on two
/// cores the tail of a delta, where the helper copies alone, takes half
/// the time (measured: see the README's benchmark notes).
const SPLIT_MIN: u64 = 4 << 20;

/// The most asked of the kernel (or read through the buffer) at once.
const STEP: u64 = 64 << 20;

fn short() -> Fail {
    Fail(
        libc::EINVAL,
        "copy beyond the end of the old version".into(),
    )
}

/// Append `len` bytes of `basis` at `off` to `f`: in the kernel
/// (`copy_file_range`: no copy through this process; a reflink where the
/// filesystem shares blocks), else read and written. Where the two
/// offsets differ within a page (an insertion shifted the data), read and
/// written: the kernel's copy of pages that do not line up cost more
/// (measured on tmpfs, 255 MiB: 0.27 s of CPU, against 0.20 s through a
/// buffer and 0.17 s for pages that line up).
pub(super) fn copy_range(
    basis: &File,
    off: u64,
    len: u64,
    f: &mut File,
    buf: &mut [u8],
) -> Result<(), Fail> {
    let at = f.stream_position().map_err(|e| ctx("write", e))?;
    if len >= SPLIT_MIN {
        // the second half starts on a page of both files, as the first does
        let half = (len / 2) & !4095;
        let f: &File = f;
        let size = buf.len().max(4096);
        let (first, second) = std::thread::scope(|s| {
            let second = s.spawn(move || {
                let mut own = vec![0u8; size];
                copy_at(basis, off + half, f, at + half, len - half, &mut own)
            });
            let first = copy_at(basis, off, f, at, half, buf);
            (first, second.join())
        });
        first?;
        second.map_err(|_| Fail(libc::EIO, "copy thread panicked".into()))??;
    } else {
        copy_at(basis, off, f, at, len, buf)?;
    }
    f.seek(SeekFrom::Start(at + len))
        .map_err(|e| ctx("write", e))?;
    Ok(())
}

/// `len` bytes of `basis` at `off` written to `f` at `at`.
fn copy_at(
    basis: &File,
    mut off: u64,
    f: &File,
    mut at: u64,
    mut len: u64,
    buf: &mut [u8],
) -> Result<(), Fail> {
    let mut in_kernel = at % 4096 == off % 4096;
    while len > 0 {
        let step = len.min(STEP) as usize;
        if in_kernel {
            let (mut i, mut o) = (off, at);
            match rustix::fs::copy_file_range(basis, Some(&mut i), f, Some(&mut o), step) {
                Ok(0) => return Err(short()),
                Ok(n) => {
                    (off, at, len) = (off + n as u64, at + n as u64, len - n as u64);
                    continue;
                }
                Err(rustix::io::Errno::INTR) => continue,
                // not on this filesystem (or kernel): read and write
                Err(_) => in_kernel = false,
            }
        }
        let n = step.min(buf.len());
        let data = &mut buf[..n];
        basis.read_exact_at(data, off).map_err(|e| match e.kind() {
            io::ErrorKind::UnexpectedEof => short(),
            _ => ctx("read the old version", e),
        })?;
        f.write_all_at(data, at).map_err(|e| ctx("write", e))?;
        let n = n as u64;
        (off, at, len) = (off + n, at + n, len - n);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn pseudo(n: usize, seed: u64) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// Copies long enough to be split, at offsets that line up within a
    /// page and that do not, after a literal, land exactly.
    #[test]
    fn split_copies_land_exactly_aligned_or_shifted() {
        let d = tempfile::tempdir().unwrap();
        let old = pseudo((9 << 20) + 777, 3);
        std::fs::write(d.path().join("old"), &old).unwrap();
        let basis = File::open(d.path().join("old")).unwrap();
        for (lit, off, len) in [
            (0usize, 0u64, old.len() as u64),
            (1, 0, old.len() as u64),
            (4096, 4096, (5 << 20) + 3),
            (3, 777, SPLIT_MIN),
            (0, 5, SPLIT_MIN - 1),
        ] {
            let p = d.path().join("new");
            let mut f = File::create(&p).unwrap();
            f.write_all(&vec![b'!'; lit]).unwrap();
            let mut buf = vec![0u8; 256 << 10];
            copy_range(&basis, off, len, &mut f, &mut buf).unwrap();
            f.write_all(b"end").unwrap();
            drop(f);
            let mut want = vec![b'!'; lit];
            want.extend_from_slice(&old[off as usize..(off + len) as usize]);
            want.extend_from_slice(b"end");
            let mut got = Vec::new();
            File::open(&p).unwrap().read_to_end(&mut got).unwrap();
            assert!(got == want, "literal {lit}, copy {off}+{len}");
        }
    }

    /// A copy past the basis's end fails, whichever half reaches it.
    #[test]
    fn a_copy_beyond_the_end_fails_in_either_half() {
        let d = tempfile::tempdir().unwrap();
        let old = pseudo(6 << 20, 4);
        std::fs::write(d.path().join("old"), &old).unwrap();
        let basis = File::open(d.path().join("old")).unwrap();
        for (off, len) in [(1u64, 6u64 << 20), (0, 7 << 20), (0, 64 << 20)] {
            let mut f = File::create(d.path().join("new")).unwrap();
            let mut buf = vec![0u8; 64 << 10];
            let e = copy_range(&basis, off, len, &mut f, &mut buf).unwrap_err();
            assert!(e.1.contains("beyond the end"), "{off}+{len}: {}", e.1);
        }
    }
}
