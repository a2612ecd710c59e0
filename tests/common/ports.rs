//! Loopback ports for the servers the tests start (sshd, etcd, rsyncd),
//! which must be told their port before they bind it.
//!
//! Invariant: a port handed out is below the kernel's ephemeral range, so
//! no outgoing connection (the tests make many, in parallel) and no
//! `bind(127.0.0.1:0)` can take it between now and the server's own bind;
//! each port is handed out at most once per test process, and only after a
//! bind to it succeeded (nothing else listens there).

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out.
const FIRST: u32 = 10_000;

/// The low end of the ephemeral range (`ip_local_port_range`).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .filter(|&low| low > FIRST + 1000)
        .unwrap_or(32_768)
}

/// A port no one listens on and no one else will be given.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = ephemeral_low() - FIRST;
    // test processes of one `cargo test` run one after another; a
    // different start per process keeps a lingering server's port apart
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (FIRST + (start + k) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {FIRST}..{}", FIRST + span);
}
