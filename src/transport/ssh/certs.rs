//! Which OpenSSH user certificates the embedded client offers with a key.
//!
//! As `ssh` does: each `CertificateFile` of the configuration (in order)
//! whose certified public key is the key's own, then `KEY-cert.pub` beside
//! the key. A configured certificate is matched to a key by comparing the
//! public key inside the certificate with the key's `KEY.pub`, so no
//! authentication attempt is spent on a pair that cannot work (servers
//! allow few: `MaxAuthTries` 6 by default); without a `KEY.pub` a
//! configured certificate of the key's type is offered.
//!
//! Invariants: files are read bounded (64 KiB) and their base64 decoded
//! with the lengths inside checked; a file that does not parse is skipped.

use base64::Engine;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The longest certificate or public key file read.
const MAX_FILE: u64 = 64 * 1024;

/// The certificates to offer with the private key `key`, in order.
pub fn for_key(key: &Path, configured: &[PathBuf]) -> Vec<PathBuf> {
    let public = read_blob(&with_suffix(key, ".pub"));
    let mut out: Vec<PathBuf> = configured
        .iter()
        .filter(|c| {
            let Some(cert) = read_blob(c) else {
                return false;
            };
            match &public {
                Some(p) => certifies(&cert, p),
                None => is_certificate(&cert),
            }
        })
        .cloned()
        .collect();
    let beside = with_suffix(key, "-cert.pub");
    if beside.is_file() && !out.contains(&beside) {
        out.push(beside);
    }
    out
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// The decoded blob of an OpenSSH one-line key or certificate file
/// (`TYPE BASE64 [comment]`).
fn read_blob(p: &Path) -> Option<Vec<u8>> {
    let mut text = Vec::new();
    std::fs::File::open(p)
        .ok()?
        .take(MAX_FILE)
        .read_to_end(&mut text)
        .ok()?;
    let text = String::from_utf8(text).ok()?;
    let b64 = text.split_whitespace().nth(1)?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// An SSH wire `string` at the start of `b`: its bytes and the rest.
fn string(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let n = u32::from_be_bytes(b.get(..4)?.try_into().ok()?) as usize;
    let s = b.get(4..4 + n)?;
    Some((s, &b[4 + n..]))
}

/// Whether the certificate blob `cert` certifies the public key blob
/// `public`: a certificate is `string type, string nonce` followed by the
/// key's own fields, which in a public key follow its `string type`.
fn certifies(cert: &[u8], public: &[u8]) -> bool {
    let parse = || {
        let (ctype, rest) = string(cert)?;
        let (_nonce, fields) = string(rest)?;
        let (ptype, pfields) = string(public)?;
        let ctype = std::str::from_utf8(ctype).ok()?;
        let ptype = std::str::from_utf8(ptype).ok()?;
        Some(
            ctype.strip_suffix("-cert-v01@openssh.com") == Some(ptype)
                && !pfields.is_empty()
                && fields.starts_with(pfields),
        )
    };
    parse().unwrap_or(false)
}

/// Without the key's `.pub` the pair cannot be checked here: any
/// certificate is offered (the server refuses a wrong pair, at the cost of
/// one attempt).
fn is_certificate(cert: &[u8]) -> bool {
    string(cert).is_some_and(|(t, _)| t.ends_with(b"-cert-v01@openssh.com"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(b: &[u8]) -> Vec<u8> {
        let mut v = (b.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }

    #[test]
    fn a_certificate_matches_only_its_own_key() {
        let key_a = [s(b"ssh-ed25519"), s(&[1u8; 32])].concat();
        let key_b = [s(b"ssh-ed25519"), s(&[2u8; 32])].concat();
        let cert_a = [
            s(b"ssh-ed25519-cert-v01@openssh.com"),
            s(&[9u8; 32]),
            s(&[1u8; 32]),
            s(b"rest"),
        ]
        .concat();
        assert!(certifies(&cert_a, &key_a));
        assert!(!certifies(&cert_a, &key_b));
        assert!(!certifies(&key_a, &key_a));
        assert!(!certifies(&cert_a[..10], &key_a));
        let rsa = [s(b"ssh-rsa"), s(&[1u8; 32])].concat();
        assert!(!certifies(&cert_a, &rsa));
    }

    #[test]
    fn configured_certificates_first_then_the_one_beside_the_key() {
        let d = tempfile::tempdir().unwrap();
        let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
        let key = d.path().join("id");
        let public = [s(b"ssh-ed25519"), s(&[1u8; 32])].concat();
        std::fs::write(
            with_suffix(&key, ".pub"),
            format!("ssh-ed25519 {} me", b64(&public)),
        )
        .unwrap();
        let cert = |k: u8| {
            [
                s(b"ssh-ed25519-cert-v01@openssh.com"),
                s(&[9u8; 32]),
                s(&[k; 32]),
            ]
            .concat()
        };
        let mine = d.path().join("mine-cert.pub");
        let other = d.path().join("other-cert.pub");
        let line = |b: Vec<u8>| format!("ssh-ed25519-cert-v01@openssh.com {}\n", b64(&b));
        std::fs::write(&mine, line(cert(1))).unwrap();
        std::fs::write(&other, line(cert(2))).unwrap();
        std::fs::write(with_suffix(&key, "-cert.pub"), line(cert(1))).unwrap();
        let got = for_key(&key, &[other.clone(), d.path().join("none"), mine.clone()]);
        assert_eq!(got, [mine, with_suffix(&key, "-cert.pub")]);
    }
}
