//! `known_hosts` files read and matched as OpenSSH does (sshd(8) "SSH_KNOWN_HOSTS
//! FILE FORMAT"), instead of libssh2's matcher.
//!
//! Invariants:
//! - the name looked up is `host` for port 22 and `[host]:port` otherwise,
//!   so a plain `host` entry only vouches for port 22;
//! - host patterns are comma-separated, with `*` and `?` wildcards, `!`
//!   negation (a negated match excludes the line), case-insensitive;
//!   hashed names (`|1|salt|hash`, HMAC-SHA1) are matched too;
//! - a key listed on a `@revoked` line is refused whatever else says;
//! - `@cert-authority` lines vouch only for host certificates, which this
//!   client does not negotiate: they never make a plain key known, and a
//!   host they cover is never added by `accept-new`;
//! - a key of the host's listed type that differs from the listed one is
//!   "changed"; a host listed only with other key types is not "changed"
//!   (the host key algorithms known for the host are preferred in the
//!   handshake, as OpenSSH does, so the server presents a known type);
//! - the user file (or `ssh.known_hosts`) and the global file
//!   (`/etc/ssh/ssh_known_hosts`, or `ssh.global_known_hosts`) are both
//!   read; each at most [`MAX_FILE`] bytes.

use hmac::{KeyInit, Mac};
use std::io::{self, Read};
use std::path::Path;

/// The largest known_hosts file read.
pub const MAX_FILE: u64 = 16 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    None,
    Revoked,
    CertAuthority,
}

#[derive(Debug, Clone)]
struct Line {
    marker: Marker,
    hosts: String,
    keytype: String,
    key: Vec<u8>,
    /// where it was read (for messages)
    at: String,
}

/// The lines of the known_hosts files, parsed.
#[derive(Debug, Default)]
pub struct KnownHosts {
    lines: Vec<Line>,
}

/// What the files say of a host and the key it presented.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// the key is listed for the host
    Known,
    /// the key is on a `@revoked` line (file:line)
    Revoked(String),
    /// another key of the same type is listed for the host (file:line)
    Changed(String),
    /// the host is listed only with keys of other types (those types)
    OtherTypes(Vec<String>),
    /// the host is covered only by `@cert-authority` lines (file:line)
    CertAuthority(String),
    /// the host is not listed
    Unknown,
}

/// `host` for port 22, else `[host]:port`.
pub fn lookup_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let s = s.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for c in s.chunks(4) {
        let mut n = 0u32;
        for (i, b) in c.iter().enumerate() {
            n |= val(*b)? << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..c.len()]);
    }
    Some(out)
}

/// `*` and `?` wildcards, ASCII case-insensitive.
fn wildcard(pat: &[u8], s: &[u8]) -> bool {
    let (mut p, mut i) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while i < s.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p].eq_ignore_ascii_case(&s[i])) {
            p += 1;
            i += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some(p);
            mark = i;
            p += 1;
        } else if let Some(sp) = star {
            p = sp + 1;
            mark += 1;
            i = mark;
        } else {
            return false;
        }
    }
    pat[p..].iter().all(|c| *c == b'*')
}

/// `|1|salt|hash`: HMAC-SHA1 of the name keyed by the salt.
fn hashed_match(entry: &str, name: &str) -> bool {
    let mut parts = entry.strip_prefix("|1|").unwrap_or("").split('|');
    let (Some(salt), Some(hash)) = (parts.next().and_then(b64_decode), parts.next()) else {
        return false;
    };
    let Ok(mut mac) = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt) else {
        return false;
    };
    mac.update(name.as_bytes());
    b64_decode(hash).is_some_and(|h| mac.verify_slice(&h).is_ok())
}

/// Whether a line's host field names `name` (negations win).
fn hosts_match(field: &str, name: &str) -> bool {
    if field.starts_with("|1|") {
        return hashed_match(field, name);
    }
    let mut yes = false;
    for pat in field.split(',') {
        match pat.strip_prefix('!') {
            Some(neg) if wildcard(neg.as_bytes(), name.as_bytes()) => return false,
            Some(_) => {}
            None => yes |= wildcard(pat.as_bytes(), name.as_bytes()),
        }
    }
    yes
}

impl KnownHosts {
    /// Read the files that exist (a missing one is empty).
    pub fn load(files: &[&Path]) -> io::Result<KnownHosts> {
        let mut kh = KnownHosts::default();
        for f in files {
            let mut text = String::new();
            match std::fs::File::open(f) {
                Ok(h) => {
                    let mut b = Vec::new();
                    h.take(MAX_FILE).read_to_end(&mut b)?;
                    text = String::from_utf8_lossy(&b).into_owned();
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("cannot read {}: {e}", f.display()),
                    ));
                }
            }
            kh.parse(&text, f);
        }
        Ok(kh)
    }

    fn parse(&mut self, text: &str, file: &Path) {
        for (n, l) in text.lines().enumerate() {
            let mut w = l.split_whitespace();
            let Some(mut first) = w.next() else { continue };
            if first.starts_with('#') {
                continue;
            }
            let marker = match first {
                "@revoked" => Marker::Revoked,
                "@cert-authority" => Marker::CertAuthority,
                m if m.starts_with('@') => continue,
                _ => Marker::None,
            };
            if marker != Marker::None {
                let Some(h) = w.next() else { continue };
                first = h;
            }
            let (Some(kt), Some(key)) = (w.next(), w.next().and_then(b64_decode)) else {
                continue;
            };
            self.lines.push(Line {
                marker,
                hosts: first.to_string(),
                keytype: kt.to_string(),
                key,
                at: format!("{}:{}", file.display(), n + 1),
            });
        }
    }

    /// The key types listed (unmarked) for `name`, in file order.
    pub fn types_for(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        for l in &self.lines {
            if l.marker == Marker::None && hosts_match(&l.hosts, name) && !v.contains(&l.keytype) {
                v.push(l.keytype.clone());
            }
        }
        v
    }

    /// What the files say of `name` presenting `key` of type `keytype`.
    pub fn check(&self, name: &str, keytype: &str, key: &[u8]) -> Verdict {
        // a revoked key is refused whichever host it is listed for
        if let Some(l) = self
            .lines
            .iter()
            .find(|l| l.marker == Marker::Revoked && l.key == key)
        {
            return Verdict::Revoked(l.at.clone());
        }
        let plain: Vec<&Line> = self
            .lines
            .iter()
            .filter(|l| l.marker == Marker::None && hosts_match(&l.hosts, name))
            .collect();
        if plain.iter().any(|l| l.key == key) {
            return Verdict::Known;
        }
        if let Some(l) = plain.iter().find(|l| l.keytype == keytype) {
            return Verdict::Changed(l.at.clone());
        }
        if !plain.is_empty() {
            return Verdict::OtherTypes(self.types_for(name));
        }
        match self
            .lines
            .iter()
            .find(|l| l.marker == Marker::CertAuthority && hosts_match(&l.hosts, name))
        {
            Some(l) => Verdict::CertAuthority(l.at.clone()),
            None => Verdict::Unknown,
        }
    }
}

/// The libssh2 host key algorithms for a known_hosts key type.
fn algorithms(keytype: &str) -> &'static [&'static str] {
    match keytype {
        "ssh-ed25519" => &["ssh-ed25519"],
        "ecdsa-sha2-nistp256" => &["ecdsa-sha2-nistp256"],
        "ecdsa-sha2-nistp384" => &["ecdsa-sha2-nistp384"],
        "ecdsa-sha2-nistp521" => &["ecdsa-sha2-nistp521"],
        "ssh-rsa" => &["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"],
        "ssh-dss" => &["ssh-dss"],
        _ => &[],
    }
}

/// The host key algorithm preference for a host: the types listed for it
/// first (so the server presents a key that can be checked), then the
/// others `supported`.
pub fn preference(known: &[String], supported: &[&str]) -> String {
    let mut v: Vec<&str> = Vec::new();
    for t in known {
        for a in algorithms(t) {
            if supported.contains(a) && !v.contains(a) {
                v.push(a);
            }
        }
    }
    for a in supported {
        if !v.contains(a) {
            v.push(a);
        }
    }
    v.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIEJ5ZnRlcy1vZi1hLWZha2Uta2V5LWZvci10ZXN0cw==";
    const K2: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIE90aGVyLWJ5dGVzLW9mLWEtZmFrZS1rZXktdGVzdA==";

    fn kh(text: &str) -> KnownHosts {
        let mut k = KnownHosts::default();
        k.parse(text, Path::new("kh"));
        k
    }

    #[test]
    fn patterns_ports_negation_and_hashes() {
        let k1 = b64_decode(K1).unwrap();
        let k = kh(&format!(
            "*.example.com,!bad.example.com ssh-ed25519 {K1}\n"
        ));
        assert_eq!(
            k.check("web.example.com", "ssh-ed25519", &k1),
            Verdict::Known
        );
        assert_eq!(
            k.check("WEB.Example.com", "ssh-ed25519", &k1),
            Verdict::Known
        );
        assert_eq!(
            k.check("bad.example.com", "ssh-ed25519", &k1),
            Verdict::Unknown
        );
        // a plain host entry only vouches for port 22
        let k = kh(&format!("web ssh-ed25519 {K1}\n"));
        assert_eq!(
            k.check(&lookup_name("web", 22), "ssh-ed25519", &k1),
            Verdict::Known
        );
        assert_eq!(
            k.check(&lookup_name("web", 2222), "ssh-ed25519", &k1),
            Verdict::Unknown
        );
        // `ssh-keygen -H` of "web": salt and HMAC-SHA1
        let salt = [7u8; 20];
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(&salt).unwrap();
        mac.update(b"web");
        let h = mac.finalize().into_bytes();
        let enc = |b: &[u8]| crate::transport::ssh::base64(b, true);
        let k = kh(&format!("|1|{}|{} ssh-ed25519 {K1}\n", enc(&salt), enc(&h)));
        assert_eq!(k.check("web", "ssh-ed25519", &k1), Verdict::Known);
        assert_eq!(k.check("web2", "ssh-ed25519", &k1), Verdict::Unknown);
    }

    #[test]
    fn revoked_changed_other_types_and_cert_authorities() {
        let (k1, k2) = (b64_decode(K1).unwrap(), b64_decode(K2).unwrap());
        let k = kh(&format!(
            "web ssh-ed25519 {K1}\n@revoked * ssh-ed25519 {K1}\n"
        ));
        assert!(matches!(k.check("web", "ssh-ed25519", &k1), Verdict::Revoked(at) if at == "kh:2"));
        let k = kh(&format!("* ssh-ed25519 {K1}\n"));
        assert!(matches!(
            k.check("web", "ssh-ed25519", &k2),
            Verdict::Changed(_)
        ));
        let k = kh(&format!("web ecdsa-sha2-nistp256 {K1}\n"));
        assert_eq!(
            k.check("web", "ssh-ed25519", &k2),
            Verdict::OtherTypes(vec!["ecdsa-sha2-nistp256".into()])
        );
        let k = kh(&format!("@cert-authority *.example.com ssh-ed25519 {K1}\n"));
        assert!(matches!(
            k.check("web.example.com", "ssh-ed25519", &k1),
            Verdict::CertAuthority(_)
        ));
    }

    #[test]
    fn known_types_come_first_in_the_preference() {
        let sup = [
            "ssh-ed25519",
            "ecdsa-sha2-nistp256",
            "rsa-sha2-512",
            "rsa-sha2-256",
            "ssh-rsa",
        ];
        assert_eq!(
            preference(&["ssh-rsa".into()], &sup),
            "rsa-sha2-512,rsa-sha2-256,ssh-rsa,ssh-ed25519,ecdsa-sha2-nistp256"
        );
        assert_eq!(preference(&[], &sup), sup.join(","));
    }

    #[test]
    fn wildcards() {
        assert!(wildcard(b"*", b"anything"));
        assert!(wildcard(b"[127.0.0.*]:22?2", b"[127.0.0.1]:2222"));
        assert!(!wildcard(b"web?", b"web"));
        assert!(wildcard(b"a*b*c", b"aXXbYYc"));
        assert!(!wildcard(b"a*b*c", b"aXXbYY"));
    }
}
