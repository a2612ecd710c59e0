//! The daemon's observability and HA keys at the top of the jobs file:
//! `metrics: ADDR`, `metrics_textfile: DIR` and `cluster: {etcd, ttl,
//! prefix}`.
//!
//! Invariants: a `metrics` value is a socket address (`127.0.0.1:9750`,
//! `[::1]:9750`, or `:9750` for every interface); etcd endpoints are plain
//! `http://host:port` URLs (kept without a trailing `/`); `ttl` is whole
//! seconds between 2 s and 1 h; `prefix` starts with `/`, has no trailing
//! `/` and no `\0`. Every problem is reported at its position.

use super::raw::Ctx;
use crate::units::parse_duration;
use crate::yaml::{Kind, Node};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `cluster:` — several daemons share the jobs through etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// etcd client URLs, `http://host:port`, no trailing slash.
    pub etcd: Vec<String>,
    /// Lease time: a dead owner's jobs move after about this.
    pub ttl: Duration,
    /// Keys live under it (no trailing slash).
    pub prefix: String,
}

/// The top-level keys this module parses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observe {
    pub metrics: Option<SocketAddr>,
    pub metrics_textfile: Option<PathBuf>,
    pub cluster: Option<ClusterConfig>,
}

pub(super) const KEYS: &[&str] = &["metrics", "metrics_textfile", "cluster"];
const CLUSTER_KEYS: &[&str] = &["etcd", "ttl", "prefix"];

/// Parse a `metrics:` address; `:PORT` listens on every interface.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    full.parse::<SocketAddr>().map_err(|_| {
        format!("`metrics`: {s:?} is not an address such as 127.0.0.1:9750, [::1]:9750 or :9750")
    })
}

/// Check one etcd endpoint URL; returns it without a trailing `/`.
fn parse_endpoint(s: &str) -> Result<String, String> {
    let rest = s.strip_prefix("http://").ok_or_else(|| {
        format!("`cluster.etcd`: {s:?} must be an http://host:port URL (https is not supported)")
    })?;
    let hostport = rest.trim_end_matches('/');
    let bad = hostport.is_empty()
        || hostport.contains(['/', '?', '#', '@', ' '])
        || !hostport
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
    if bad {
        return Err(format!(
            "`cluster.etcd`: {s:?} must be http://host:port (e.g. http://10.0.0.5:2379)"
        ));
    }
    Ok(format!("http://{hostport}"))
}

/// One top-level key of this module.
pub(super) fn parse_key(ctx: &mut Ctx, key: &str, v: &Node, out: &mut Observe) {
    match key {
        "metrics" => match v.as_str().map(parse_addr) {
            Some(Ok(a)) => out.metrics = Some(a),
            Some(Err(e)) => ctx.err(v.pos, None, e),
            None => ctx.err(
                v.pos,
                None,
                "`metrics` must be an address such as 127.0.0.1:9750",
            ),
        },
        "metrics_textfile" => match v.as_str() {
            Some(s) if !s.is_empty() => out.metrics_textfile = Some(PathBuf::from(s)),
            _ => ctx.err(v.pos, None, "`metrics_textfile` must be a directory path"),
        },
        "cluster" => out.cluster = parse_cluster(ctx, v),
        _ => {}
    }
}

/// Relative paths resolved against the jobs file's directory.
pub(super) fn resolved(mut o: Observe, base: &Path) -> Observe {
    o.metrics_textfile = o.metrics_textfile.map(|p| base.join(p));
    o
}

fn parse_cluster(ctx: &mut Ctx, v: &Node) -> Option<ClusterConfig> {
    let before = ctx.problems.len();
    let mut c = ClusterConfig {
        etcd: Vec::new(),
        ttl: Duration::from_secs(10),
        prefix: "/syncjob".into(),
    };
    let mut seen_etcd = false;
    for (k, n, _) in ctx.map(v, "cluster", CLUSTER_KEYS, None) {
        match k {
            "etcd" => {
                seen_etcd = true;
                let items: Vec<&Node> = match &n.kind {
                    Kind::Seq(items) => items.iter().collect(),
                    _ => vec![n],
                };
                for item in items {
                    match item.as_str().map(parse_endpoint) {
                        Some(Ok(u)) => c.etcd.push(u),
                        Some(Err(e)) => ctx.err(item.pos, None, e),
                        None => ctx.err(item.pos, None, "`cluster.etcd` lists URLs"),
                    }
                }
            }
            "ttl" => match n.scalar().map(parse_duration) {
                Some(Ok(d)) if d.subsec_nanos() == 0 && (2..=3600).contains(&d.as_secs()) => {
                    c.ttl = d
                }
                Some(Err(e)) => ctx.err(n.pos, None, format!("`cluster.ttl`: {e}")),
                _ => ctx.err(
                    n.pos,
                    None,
                    "`cluster.ttl` must be whole seconds between 2s and 1h",
                ),
            },
            "prefix" => match n.as_str() {
                Some(p) if p.starts_with('/') && p.len() > 1 && !p.contains('\0') => {
                    c.prefix = p.trim_end_matches('/').to_string()
                }
                _ => ctx.err(
                    n.pos,
                    None,
                    "`cluster.prefix` must be a key path such as /syncjob/shop",
                ),
            },
            _ => {}
        }
    }
    if !seen_etcd || (c.etcd.is_empty() && ctx.problems.len() == before) {
        ctx.err(v.pos, None, "`cluster` needs `etcd:` with at least one URL");
    }
    (ctx.problems.len() == before).then_some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            parse_addr("127.0.0.1:9750").unwrap(),
            "127.0.0.1:9750".parse().unwrap()
        );
        assert_eq!(
            parse_addr(":9750").unwrap(),
            "0.0.0.0:9750".parse().unwrap()
        );
        assert!(parse_addr("[::1]:0").is_ok());
        for bad in ["localhost", "127.0.0.1", "1.2.3.4:99999", "http://x:1", ""] {
            assert!(parse_addr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints() {
        assert_eq!(parse_endpoint("http://e1:2379/").unwrap(), "http://e1:2379");
        assert_eq!(
            parse_endpoint("http://[::1]:2379").unwrap(),
            "http://[::1]:2379"
        );
        for bad in [
            "https://e:2379",
            "e:2379",
            "http://e",
            "http://e:2379/x",
            "http://:1",
        ] {
            assert!(parse_endpoint(bad).is_err(), "{bad}");
        }
    }
}
