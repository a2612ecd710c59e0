//! ProxyJump with the embedded client: a `direct-tcpip` channel from a jump
//! host's session to the next hop, carried over a socketpair whose other
//! end the next session uses as its "TCP" stream; a thread pumps bytes
//! between the channel and the socketpair.
//!
//! Invariants:
//! - The next hop's host key is checked and it authenticates exactly as a
//!   direct connection would (`session::handshake`); the jump host only
//!   relays encrypted bytes.
//! - The pump thread owns the jump host's session; it ends when either side
//!   closes or fails, or when the [`Tunnel`] is dropped (it is joined then;
//!   its waits are bounded by a 50 ms poll).
//! - A jump host refusing to forward (`AllowTcpForwarding no`) is a
//!   permanent error naming the jump host; a failed connection onward is
//!   transient.

use super::resolve::Hop;
use crate::transport::OpenError;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A running relay through one jump host.
pub struct Tunnel {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tunnel {
    /// Open a `direct-tcpip` channel on `sess` (the jump host `via`) to
    /// `next`, and start pumping; returns the tunnel and the stream the
    /// next session runs over.
    pub fn open(
        sess: ssh2::Session,
        next: &Hop,
        via: &str,
    ) -> Result<(Tunnel, UnixStream), OpenError> {
        let ch = sess
            .channel_direct_tcpip(&next.host, next.port, None)
            .map_err(|e| {
                let msg = format!(
                    "jump host {via} could not open a connection to {}:{}: {e}",
                    next.host, next.port
                );
                if e.to_string().contains("prohibited") {
                    OpenError::permanent(
                        io::ErrorKind::PermissionDenied,
                        format!("{msg} (does it allow TCP forwarding?)"),
                    )
                } else {
                    OpenError::from(io::Error::new(io::ErrorKind::ConnectionRefused, msg))
                }
            })?;
        let (a, b) = UnixStream::pair()?;
        b.set_nonblocking(true)?;
        sess.set_blocking(false);
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ssh-jump".into())
            .spawn(move || pump(sess, ch, b, &s2))?;
        Ok((
            Tunnel {
                stop,
                thread: Some(thread),
            },
            a,
        ))
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Relay between the channel (non-blocking session) and `b` until either
/// side ends or `stop`.
fn pump(sess: ssh2::Session, mut ch: ssh2::Channel, mut b: UnixStream, stop: &AtomicBool) {
    let mut down: Vec<u8> = Vec::new(); // from the next hop, to `b`
    let mut up: Vec<u8> = Vec::new(); // from `b`, to the next hop
    let mut buf = vec![0u8; 64 << 10];
    let mut remote_eof = false;
    while !stop.load(Ordering::Relaxed) {
        let mut moved = false;
        if down.is_empty() && !remote_eof {
            match ch.read(&mut buf) {
                Ok(0) => remote_eof = true,
                Ok(n) => {
                    down.extend_from_slice(&buf[..n]);
                    moved = true;
                }
                Err(e) if would_block(&e) => {}
                Err(_) => return,
            }
        }
        if !down.is_empty() {
            match b.write(&down) {
                Ok(n) => {
                    down.drain(..n);
                    moved |= n > 0;
                }
                Err(e) if would_block(&e) => {}
                Err(_) => return,
            }
        }
        if remote_eof && down.is_empty() {
            return; // the next session's transport is over
        }
        if up.is_empty() {
            match b.read(&mut buf) {
                Ok(0) => return, // the next session is gone
                Ok(n) => {
                    up.extend_from_slice(&buf[..n]);
                    moved = true;
                }
                Err(e) if would_block(&e) => {}
                Err(_) => return,
            }
        }
        if !up.is_empty() {
            match ch.write(&up) {
                Ok(n) => {
                    up.drain(..n);
                    moved |= n > 0;
                }
                Err(e) if would_block(&e) => {}
                Err(_) => return,
            }
        }
        if !moved {
            wait(&sess, &b, up.is_empty(), !down.is_empty());
        }
    }
}

/// Wait (at most 50 ms) until the jump host's socket or `b` can move data.
fn wait(sess: &ssh2::Session, b: &UnixStream, read_b: bool, write_b: bool) {
    let mut tcp_ev = libc::POLLIN;
    if sess.block_directions() == ssh2::BlockDirections::Outbound
        || sess.block_directions() == ssh2::BlockDirections::Both
    {
        tcp_ev |= libc::POLLOUT;
    }
    let mut b_ev = 0;
    if read_b {
        b_ev |= libc::POLLIN;
    }
    if write_b {
        b_ev |= libc::POLLOUT;
    }
    let mut fds = [
        libc::pollfd {
            fd: sess.as_raw_fd(),
            events: tcp_ev,
            revents: 0,
        },
        libc::pollfd {
            fd: b.as_raw_fd(),
            events: b_ev,
            revents: 0,
        },
    ];
    // SAFETY: fds is a valid array of 2 pollfd for the duration of the call.
    unsafe { libc::poll(fds.as_mut_ptr(), 2, 50) };
}
