//! The small HTTP server of `metrics: ADDR`: `GET /metrics` (Prometheus
//! text) and `GET /healthz` (200 or 503 with a short JSON body), on its own
//! threads, no async runtime.
//!
//! Written here rather than taken from a crate: `tiny_http` (tried first)
//! reads a request's header lines without any bound, so one client sending
//! an endless header grew the daemon by the bytes it sent (64 MiB in
//! `an_endless_request_header_does_not_grow_the_daemon_or_block_the_others`).
//! Two paths and one request per connection need little.
//!
//! Invariants (clients are untrusted): at most `MAX_CLIENTS` connections
//! are served at once, the others are closed at once; a request head is
//! read up to `MAX_HEAD` bytes within `READ_TIMEOUT`, else the connection is
//! closed; a body is never read; one request per connection
//! (`Connection: close`); only GET/HEAD of the two paths answer 200/503,
//! anything else 404/405/400. The server never takes the scheduler's state,
//! only the metrics' own locks, so a slow scraper cannot hold up a firing.

use super::Metrics;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const MAX_CLIENTS: usize = 16;
const MAX_HEAD: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub source: std::io::Error,
}

/// Listen on `addr` and answer on threads; returns the bound address
/// (port 0 picks a free one).
pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr, BindError> {
    let err = |source| BindError { addr, source };
    let listener = TcpListener::bind(addr).map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || accept_loop(listener, metrics))
        .map_err(err)?;
    Ok(bound)
}

fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>) {
    let busy = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(conn) = conn else {
            // out of descriptors and the like: do not spin
            std::thread::sleep(Duration::from_millis(50));
            continue;
        };
        if busy.fetch_add(1, Ordering::SeqCst) >= MAX_CLIENTS {
            busy.fetch_sub(1, Ordering::SeqCst);
            continue; // dropped: closed at once
        }
        let (m, b) = (metrics.clone(), busy.clone());
        let spawned = std::thread::Builder::new()
            .name("metrics-client".into())
            .spawn(move || {
                serve(conn, &m);
                b.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            busy.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Read the request head: up to the blank line, at most `MAX_HEAD` bytes,
/// within `READ_TIMEOUT` in all. `None` when it is not there in time.
fn read_head(conn: &mut TcpStream) -> Option<Vec<u8>> {
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let left = deadline.checked_duration_since(Instant::now())?;
        conn.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let n = conn.read(&mut buf).ok()?;
        if n == 0 || head.len() + n > MAX_HEAD {
            return None;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Some(head)
}

/// The answer to a request line: status, content type, body, and whether
/// to send the body (not for HEAD).
fn answer(head: &[u8], metrics: &Metrics) -> (u16, &'static str, String, bool) {
    let line = head.split(|b| *b == b'\n').next().unwrap_or(b"");
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return (400, "text/plain", "bad request\n".into(), true);
    };
    let path = target.split('?').next().unwrap_or("");
    let get = matches!(method, "GET" | "HEAD");
    let body = method != "HEAD";
    let (code, ctype, text) = match (get, path) {
        (false, "/metrics" | "/healthz") => (405, "text/plain", "method not allowed\n".into()),
        (true, "/metrics") => (
            200,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode(),
        ),
        (true, "/healthz") => {
            let (ok, text) = metrics.lock_health().body();
            (if ok { 200 } else { 503 }, "application/json", text + "\n")
        }
        _ => (
            404,
            "text/plain",
            "not found: try /metrics or /healthz\n".into(),
        ),
    };
    (code, ctype, text, body)
}

fn serve(mut conn: TcpStream, metrics: &Metrics) {
    let Some(head) = read_head(&mut conn) else {
        return;
    };
    let (code, ctype, text, with_body) = answer(&head, metrics);
    let reason = match code {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        _ => "Service Unavailable",
    };
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        text.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(text.as_bytes());
    }
    let _ = conn.set_write_timeout(Some(READ_TIMEOUT));
    // a client that went away is its own business
    let _ = conn.write_all(&out);
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_by_method_and_path() {
        let m = Metrics::new();
        m.lock_health().beat();
        let code = |h: &str| answer(h.as_bytes(), &m).0;
        assert_eq!(code("GET /metrics HTTP/1.1\r\n\r\n"), 200);
        assert_eq!(code("GET /healthz?x=1 HTTP/1.0\r\n\r\n"), 200);
        assert_eq!(code("POST /metrics HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(code("GET /etc/passwd HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(code("\r\n\r\n"), 400);
        assert!(!answer(b"HEAD /metrics HTTP/1.1\r\n\r\n", &m).3);
    }
}
