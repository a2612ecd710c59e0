//! Prompt TCP acknowledgements for the embedded client's sessions.
//!
//! OpenSSH's sshd turns Nagle's algorithm off only for interactive
//! sessions. For ours it holds a small packet back until the one before it
//! is acknowledged, and Linux delays the acknowledgement of a lone small
//! segment by up to 40 ms: every connection stalled ~43 ms in its
//! authentication (seen with `tcpdump -i lo`: the server's 272 bytes, 43 ms
//! of silence, the client's bare ACK, then the server's next 200 bytes).
//! So the session's receive function is replaced by one that asks for an
//! immediate ACK (`TCP_QUICKACK`, which Linux does not keep: it is asked
//! again after every read that brought data).
//!
//! Invariants:
//! - Installed only on TCP sockets (a jump host's tunnel is a socketpair),
//!   before the handshake, through libssh2's documented callback API.
//! - The function keeps libssh2's own receive contract (`ssh2_recv` in its
//!   misc.c): the byte count, or `-errno`, with `EINTR` and `EWOULDBLOCK`
//!   as `-EAGAIN`. A failure to ask for the ACK is ignored (it only costs
//!   the wait it would have saved).

use std::ffi::{c_int, c_void};
use std::os::fd::RawFd;

/// `LIBSSH2_CALLBACK_RECV` (libssh2.h).
const CALLBACK_RECV: c_int = 6;

unsafe extern "C" {
    // libssh2 >= 1.11.1 (the vendored one is 1.11.x); not declared by
    // libssh2-sys, which the `ssh2` crate links
    fn libssh2_session_callback_set2(
        session: *mut c_void,
        cbtype: c_int,
        callback: Option<unsafe extern "C" fn()>,
    ) -> Option<unsafe extern "C" fn()>;
}

fn ask_ack(fd: RawFd) -> bool {
    let one: c_int = 1;
    // SAFETY: a plain setsockopt with a pointer to a live c_int and its size
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&one as *const c_int).cast(),
            std::mem::size_of::<c_int>() as libc::socklen_t,
        )
    };
    r == 0
}

/// libssh2's receive, then an immediate ACK of what came.
unsafe extern "C" fn recv_acking(
    fd: c_int,
    buf: *mut c_void,
    len: libc::size_t,
    flags: c_int,
    _abstract: *mut *mut c_void,
) -> libc::ssize_t {
    // SAFETY: libssh2 passes a buffer of `len` writable bytes
    let rc = unsafe { libc::recv(fd, buf, len, flags) };
    if rc < 0 {
        let e = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        if e == libc::EINTR || e == libc::EWOULDBLOCK || e == libc::EAGAIN {
            return -(libc::EAGAIN as libc::ssize_t);
        }
        return -(e as libc::ssize_t);
    }
    if rc > 0 {
        ask_ack(fd);
    }
    rc
}

/// Install the acknowledging receive on `sess`, whose socket is `fd`;
/// `false` (nothing changed) where `fd` is not a TCP socket.
pub(super) fn install(sess: &ssh2::Session, fd: RawFd) -> bool {
    if !ask_ack(fd) {
        return false;
    }
    let mut raw = sess.raw();
    let p = &mut *raw as *mut _ as *mut c_void;
    type Recv = unsafe extern "C" fn(
        c_int,
        *mut c_void,
        libc::size_t,
        c_int,
        *mut *mut c_void,
    ) -> libc::ssize_t;
    // SAFETY: libssh2 stores the pointer and calls it with the signature
    // of LIBSSH2_RECV_FUNC, which `Recv` is; the session is live (guarded)
    unsafe {
        let f: unsafe extern "C" fn() =
            std::mem::transmute::<Recv, unsafe extern "C" fn()>(recv_acking);
        libssh2_session_callback_set2(p, CALLBACK_RECV, Some(f));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn only_tcp_sockets_take_it() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let s = ssh2::Session::new().unwrap();
        assert!(install(&s, c.as_raw_fd()));
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let s = ssh2::Session::new().unwrap();
        assert!(!install(&s, a.as_raw_fd()));
    }

    /// The receive function keeps libssh2's contract: data, `-EAGAIN` for
    /// nothing yet on a non-blocking socket, 0 at the end.
    #[test]
    fn receives_as_libssh2_does() {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (srv, _) = l.accept().unwrap();
        srv.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 16];
        let fd = srv.as_raw_fd();
        let p = buf.as_mut_ptr().cast();
        // SAFETY: a live socket and a 16-byte buffer
        let rc = unsafe { recv_acking(fd, p, 16, 0, std::ptr::null_mut()) };
        assert_eq!(rc, -(libc::EAGAIN as isize));
        c.write_all(b"hello").unwrap();
        srv.set_nonblocking(false).unwrap();
        // SAFETY: as above
        let rc = unsafe { recv_acking(fd, p, 16, 0, std::ptr::null_mut()) };
        assert_eq!(rc, 5);
        assert_eq!(&buf[..5], b"hello");
        drop(c);
        // SAFETY: as above
        let rc = unsafe { recv_acking(fd, p, 16, 0, std::ptr::null_mut()) };
        assert_eq!(rc, 0);
    }
}
