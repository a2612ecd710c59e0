//! The helper's output while a rolling signature is streamed by another
//! thread (protocol 4): the signature's pieces go out as they are computed
//! while the main thread goes on reading records (the delta that follows
//! is applied meanwhile: its copies overlap the hashing).
//!
//! Invariants:
//! - Replies stay in record order: a write from the main thread first
//!   waits for the streaming thread to end (the signature's pieces and its
//!   status come whole before anything after them). A flush does not wait
//!   (the streaming thread flushes each of its writes itself).
//! - At most one streaming thread at a time ([`Ordered::spawn`] settles
//!   the previous one first); a failed write of that thread (the stream
//!   broke) is returned by the next settle.

use std::io::{self, Write};
use std::sync::{Mutex, MutexGuard};
use std::thread::{Scope, ScopedJoinHandle};

/// The output, shared by the main thread and a streaming thread.
pub(crate) type Shared<'e> = Mutex<&'e mut (dyn Write + Send)>;

/// Lock the shared output (a panicked writer leaves it usable: every write
/// is whole records, or the stream is given up anyway).
pub(crate) fn lock<'a, 'e>(w: &'a Shared<'e>) -> MutexGuard<'a, &'e mut (dyn Write + Send)> {
    w.lock().unwrap_or_else(|e| e.into_inner())
}

/// The main thread's side of the output.
pub(crate) struct Ordered<'s, 'e> {
    shared: &'s Shared<'e>,
    scope: &'s Scope<'s, 'e>,
    pending: Option<ScopedJoinHandle<'s, io::Result<()>>>,
}

impl<'s, 'e> Ordered<'s, 'e> {
    pub(crate) fn new(shared: &'s Shared<'e>, scope: &'s Scope<'s, 'e>) -> Self {
        Ordered {
            shared,
            scope,
            pending: None,
        }
    }

    /// Wait for the streaming thread, if any, to end; its error (a broken
    /// stream) is returned.
    pub(crate) fn settle(&mut self) -> io::Result<()> {
        match self.pending.take() {
            None => Ok(()),
            Some(h) => h
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("signature thread panicked"))),
        }
    }

    /// Run `f` in a thread that writes to the output through the lock it is
    /// given, after the previous one ended; the main thread's next write
    /// waits for it.
    pub(crate) fn spawn<F>(&mut self, f: F) -> io::Result<()>
    where
        F: FnOnce(&Shared<'e>) -> io::Result<()> + Send + 's,
    {
        self.settle()?;
        let shared = self.shared;
        self.pending = Some(self.scope.spawn(move || f(shared)));
        Ok(())
    }
}

impl Write for Ordered<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.settle()?;
        lock(self.shared).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.pending.is_some() {
            // nothing of this thread's is buffered (its writes wait for the
            // streaming thread), and that thread flushes what it writes:
            // no wait here for a write of that thread blocked on a full pipe
            return Ok(());
        }
        lock(self.shared).flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_waits_for_the_streaming_thread_and_a_flush_does_not() {
        let mut v: Vec<u8> = Vec::new();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        {
            let shared: Shared = Mutex::new(&mut v);
            std::thread::scope(|sc| {
                let mut out = Ordered::new(&shared, sc);
                out.spawn(move |w| {
                    // the output held (as by a write blocked on a full
                    // pipe) until the main thread has flushed
                    let mut g = lock(w);
                    g.write_all(b"piece1 ")?;
                    go_rx.recv().unwrap();
                    g.write_all(b"piece2 ")
                })
                .unwrap();
                out.flush().unwrap();
                go_tx.send(()).unwrap();
                out.write_all(b"reply").unwrap();
                out.settle().unwrap();
            });
        }
        assert_eq!(v, b"piece1 piece2 reply");
    }
}
