//! The small HTTP server of `metrics: ADDR`: `GET /metrics` (Prometheus
//! text) and `GET /healthz` (200 or 503 with a short JSON body), on its own
//! thread (tiny_http; no async runtime).
//!
//! Invariants: only these two paths answer (anything else is 404, a method
//! other than GET/HEAD is 405); a request body is never read; the server
//! never takes the scheduler's state, only the metrics' own locks, so a
//! slow scraper cannot hold up a firing.

use super::Metrics;
use std::net::SocketAddr;
use std::sync::Arc;
use tiny_http::{Header, Method, Response, Server};

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for metrics on {addr}: {message}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub message: String,
}

/// Listen on `addr` and answer on a thread; returns the bound address
/// (port 0 picks a free one).
pub fn start(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr, BindError> {
    let server = Server::http(addr).map_err(|e| BindError {
        addr,
        message: e.to_string(),
    })?;
    let bound = server.server_addr().to_ip().unwrap_or(addr);
    std::thread::Builder::new()
        .name("metrics-http".into())
        .spawn(move || serve(server, metrics))
        .map_err(|e| BindError {
            addr,
            message: e.to_string(),
        })?;
    Ok(bound)
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes()).expect("constant header")
}

fn serve(server: Server, metrics: Arc<Metrics>) {
    for req in server.incoming_requests() {
        let path = req.url().split('?').next().unwrap_or("").to_string();
        let get = matches!(req.method(), Method::Get | Method::Head);
        let (code, ctype, body) = match (get, path.as_str()) {
            (false, "/metrics" | "/healthz") => {
                (405, "text/plain", "method not allowed\n".to_string())
            }
            (true, "/metrics") => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                metrics.encode(),
            ),
            (true, "/healthz") => {
                let (ok, body) = metrics.lock_health().body();
                (if ok { 200 } else { 503 }, "application/json", body + "\n")
            }
            _ => (
                404,
                "text/plain",
                "not found: try /metrics or /healthz\n".into(),
            ),
        };
        let resp = Response::from_string(body)
            .with_status_code(code)
            .with_header(header("Content-Type", ctype));
        // a client that went away is its own business
        let _ = req.respond(resp);
    }
}
