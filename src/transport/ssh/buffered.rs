//! A [`Pipe`] whose reads go through a buffer. The remote helper's replies
//! are a few bytes each, read one after another; on an ssh2 channel every
//! read also polls the session's socket (a `recvfrom` that mostly finds
//! nothing), so one read per reply cost a system call per file. Through
//! the buffer, the replies of a batch cost about one.
//!
//! Invariants: bytes come out in the order they arrived, none dropped or
//! repeated; a read at least as big as the buffer goes straight to the
//! pipe once the buffer is empty; writes, `finish` and end of stream are
//! the pipe's own.

use super::openssh::Pipe;
use std::io::{self, Read, Write};
use std::time::Duration;

const SIZE: usize = 64 << 10;

pub struct Buffered {
    inner: Box<dyn Pipe>,
    buf: Box<[u8]>,
    /// `buf[pos..len]` is unread
    pos: usize,
    len: usize,
}

impl Buffered {
    pub fn new(inner: Box<dyn Pipe>) -> Buffered {
        Buffered {
            inner,
            buf: vec![0u8; SIZE].into_boxed_slice(),
            pos: 0,
            len: 0,
        }
    }
}

impl Read for Buffered {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.len {
            if out.len() >= self.buf.len() {
                return self.inner.read(out);
            }
            self.len = self.inner.read(&mut self.buf)?;
            self.pos = 0;
        }
        let n = out.len().min(self.len - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

impl Write for Buffered {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.inner.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl Pipe for Buffered {
    fn finish(&mut self) -> (i32, Vec<u8>) {
        self.inner.finish()
    }
    fn readable_within(&mut self, d: Duration) -> bool {
        self.pos < self.len || self.inner.readable_within(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe that hands out its data in the given pieces.
    struct Pieces(Vec<Vec<u8>>);
    impl Read for Pieces {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return Ok(0);
            }
            let p = &mut self.0[0];
            let n = out.len().min(p.len());
            out[..n].copy_from_slice(&p[..n]);
            p.drain(..n);
            if p.is_empty() {
                self.0.remove(0);
            }
            Ok(n)
        }
    }
    impl Write for Pieces {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Pipe for Pieces {
        fn finish(&mut self) -> (i32, Vec<u8>) {
            (0, Vec::new())
        }
    }

    #[test]
    fn small_and_large_reads_see_every_byte_once_in_order() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let pieces = data.chunks(40_000).map(|c| c.to_vec()).collect();
        let mut b = Buffered::new(Box::new(Pieces(pieces)));
        let mut got = Vec::new();
        let sizes = [1usize, 3, 100_000, 7, 65_536, 2, 200_000];
        for s in sizes.iter().cycle() {
            let mut chunk = vec![0u8; *s];
            let n = b.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(got, data);
    }
}
