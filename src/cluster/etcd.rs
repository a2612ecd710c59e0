//! A small blocking client for etcd v3 through its HTTP/JSON gateway
//! (`/v3/lease/grant`, `/v3/lease/keepalive`, `/v3/lease/revoke`,
//! `/v3/kv/range`, `/v3/kv/put`, `/v3/kv/txn`), enough for lease-backed locks.
//!
//! Invariants: every request has a timeout; keys and values go base64
//! encoded, 64-bit numbers as decimal strings (as the gateway writes them);
//! a response body is read up to 4 MiB and parsed as JSON, anything else is
//! an error; on a transport error the next endpoint is tried, each once per
//! call. Nothing read from etcd is trusted beyond its type: a missing field
//! reads as etcd's zero value.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The largest response read (a range over a prefix of thousands of jobs
/// fits easily).
const MAX_BODY: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("etcd unreachable ({0})")]
    Unreachable(String),
    #[error("etcd answered {status}: {message}")]
    Refused { status: u16, message: String },
    #[error("etcd sent an unexpected answer: {0}")]
    Garbled(String),
}

/// One key as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub create_revision: i64,
    pub lease: i64,
}

pub struct Etcd {
    endpoints: Vec<String>,
    current: AtomicUsize,
    agent: ureq::Agent,
}

fn b64(s: &str) -> String {
    B64.encode(s.as_bytes())
}

fn unb64(v: &Value) -> String {
    v.as_str()
        .and_then(|s| B64.decode(s).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// A 64-bit number as the gateway writes it (a string), or a plain number.
fn num(v: &Value) -> i64 {
    match v {
        Value::String(s) => s.parse().unwrap_or(0),
        Value::Number(n) => n.as_i64().unwrap_or(0),
        _ => 0,
    }
}

/// The end of the range of keys starting with `prefix` (etcd's convention:
/// the prefix with its last byte incremented).
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl Etcd {
    pub fn new(endpoints: &[String], timeout: Duration) -> Etcd {
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Etcd {
            endpoints: endpoints.to_vec(),
            current: AtomicUsize::new(0),
            agent,
        }
    }

    /// POST `body` to `path`, trying each endpoint once from the current one.
    fn call(&self, path: &str, body: &Value) -> Result<Value, EtcdError> {
        let n = self.endpoints.len().max(1);
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::from("no endpoint");
        for i in 0..n {
            let idx = (start + i) % n;
            let Some(base) = self.endpoints.get(idx) else {
                break;
            };
            let url = format!("{base}{path}");
            let resp = self
                .agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.to_string());
            let mut resp = match resp {
                Ok(r) => r,
                Err(e) => {
                    last = format!("{base}: {e}");
                    continue;
                }
            };
            self.current.store(idx, Ordering::Relaxed);
            let status = resp.status().as_u16();
            let text = resp
                .body_mut()
                .with_config()
                .limit(MAX_BODY)
                .read_to_string()
                .map_err(|e| EtcdError::Unreachable(format!("{base}: {e}")))?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| EtcdError::Garbled(format!("{path}: {e}")))?;
            if status != 200 {
                let message = v
                    .get("message")
                    .or_else(|| v.get("error"))
                    .and_then(|m| m.as_str())
                    .unwrap_or("")
                    .to_string();
                return Err(EtcdError::Refused { status, message });
            }
            return Ok(v);
        }
        Err(EtcdError::Unreachable(last))
    }

    /// A new lease of `ttl` seconds: its id.
    pub fn grant(&self, ttl: u64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/grant", &json!({ "TTL": ttl.to_string() }))?;
        match num(&v["ID"]) {
            0 => Err(EtcdError::Garbled("lease grant without an ID".into())),
            id => Ok(id),
        }
    }

    /// Renew a lease: its TTL now, 0 when it is gone (expired or revoked).
    pub fn keepalive(&self, lease: i64) -> Result<i64, EtcdError> {
        let v = self.call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))?;
        let r = v.get("result").unwrap_or(&v);
        Ok(num(&r["TTL"]))
    }

    pub fn revoke(&self, lease: i64) -> Result<(), EtcdError> {
        self.call("/v3/lease/revoke", &json!({ "ID": lease.to_string() }))
            .map(|_| ())
    }

    /// Put `key` bound to `lease` (unconditionally).
    pub fn put(&self, key: &str, value: &str, lease: i64) -> Result<(), EtcdError> {
        let body = json!({ "key": b64(key), "value": b64(value), "lease": lease.to_string() });
        self.call("/v3/kv/put", &body).map(|_| ())
    }

    /// Create `key` bound to `lease` if it does not exist: the revision it
    /// was created at, or `None` when it exists.
    pub fn create(&self, key: &str, value: &str, lease: i64) -> Result<Option<i64>, EtcdError> {
        let body = json!({
            "compare": [{"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
            "success": [{"request_put": {"key": b64(key), "value": b64(value), "lease": lease.to_string()}}],
        });
        let v = self.call("/v3/kv/txn", &body)?;
        if v["succeeded"].as_bool() == Some(true) {
            match num(&v["header"]["revision"]) {
                0 => Err(EtcdError::Garbled("txn without a revision".into())),
                rev => Ok(Some(rev)),
            }
        } else {
            Ok(None)
        }
    }

    /// Delete `key` if it is still the one created at `revision`.
    pub fn delete_if(&self, key: &str, revision: i64) -> Result<bool, EtcdError> {
        let body = json!({
            "compare": [{"key": b64(key), "result": "EQUAL", "target": "CREATE", "create_revision": revision.to_string()}],
            "success": [{"request_delete_range": {"key": b64(key)}}],
        });
        let v = self.call("/v3/kv/txn", &body)?;
        Ok(v["succeeded"].as_bool() == Some(true))
    }

    /// Every key under `prefix`.
    pub fn range_prefix(&self, prefix: &str) -> Result<Vec<Kv>, EtcdError> {
        let body = json!({
            "key": b64(prefix),
            "range_end": B64.encode(prefix_end(prefix)),
        });
        let v = self.call("/v3/kv/range", &body)?;
        let kvs = match &v["kvs"] {
            Value::Array(a) => a.as_slice(),
            Value::Null => &[],
            _ => return Err(EtcdError::Garbled("range: kvs is not a list".into())),
        };
        Ok(kvs
            .iter()
            .map(|kv| Kv {
                key: unb64(&kv["key"]),
                value: unb64(&kv["value"]),
                create_revision: num(&kv["create_revision"]),
                lease: num(&kv["lease"]),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(num(&json!("123")), 123);
        assert_eq!(num(&json!(5)), 5);
        assert_eq!(num(&Value::Null), 0);
        assert_eq!(unb64(&json!(b64("x/y"))), "x/y");
    }
}
