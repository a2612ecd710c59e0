//! OpenSSH certificates against a real sshd: a user certificate signed by
//! a CA the server trusts (`TrustedUserCAKeys`, no authorized_keys entry);
//! a host certificate (`@cert-authority` in known_hosts).

mod common;
use common::sshd::{Sshd, client_yaml, ssh_job, user};
use common::*;
use std::fs;
use std::path::Path;
use std::process::Command;

fn keygen(args: &[&str]) {
    let st = Command::new("ssh-keygen").args(args).status().unwrap();
    assert!(st.success(), "ssh-keygen {args:?}");
}

fn ca(dir: &Path) -> std::path::PathBuf {
    let ca = dir.join("ca");
    keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "test-ca",
        "-f",
        ca.to_str().unwrap(),
    ]);
    ca
}

#[test]
fn a_user_certificate_signed_by_a_trusted_ca_authenticates() {
    let lab = Lab::new();
    let d = lab.path("cadir");
    fs::create_dir_all(&d).unwrap();
    let ca = ca(&d);
    let s = Sshd::start_with(
        &lab.path("sshd"),
        &format!("TrustedUserCAKeys {}.pub", ca.display()),
    );
    // the client key itself is no longer authorized: only its certificate
    fs::write(s.dir.join("authorized_keys"), "").unwrap();
    lab.write("a", b"cert\n");
    ssh_job(&lab, &s, "retries: 0");
    lab.run(&["run", "web"]).code(1);
    // signed for this user: `id_ed25519-cert.pub` beside the key is used
    keygen(&[
        "-q",
        "-s",
        ca.to_str().unwrap(),
        "-I",
        "syncjob-test",
        "-n",
        &user(),
        "-V",
        "-5m:+1h",
        &format!("{}.pub", s.key.display()),
    ]);
    assert!(s.dir.join("id_ed25519-cert.pub").exists());
    lab.run(&["run", "web"]).code(0);
    assert_eq!(fs::read(lab.dst().join("a")).unwrap(), b"cert\n");
}

#[test]
fn a_host_certificate_is_accepted_or_refused_with_a_pointer_to_openssh() {
    let lab = Lab::new();
    let d = lab.path("cadir");
    fs::create_dir_all(&d).unwrap();
    let ca = ca(&d);
    let sshd_dir = lab.path("sshd");
    fs::create_dir_all(&sshd_dir).unwrap();
    // the host key is made here so that it can be signed before sshd starts
    let hk = sshd_dir.join("host_key");
    keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-C",
        "test-host",
        "-f",
        hk.to_str().unwrap(),
    ]);
    keygen(&[
        "-q",
        "-s",
        ca.to_str().unwrap(),
        "-h",
        "-I",
        "test-host",
        "-n",
        "127.0.0.1",
        "-V",
        "-5m:+1h",
        &format!("{}.pub", hk.display()),
    ]);
    let s = Sshd::start_with(
        &sshd_dir,
        &format!("HostCertificate {}-cert.pub", hk.display()),
    );
    // known_hosts trusts the CA only, not the host's plain key
    let ca_pub = fs::read_to_string(format!("{}.pub", ca.display())).unwrap();
    fs::write(
        &s.known_hosts,
        format!("@cert-authority [127.0.0.1]:{} {ca_pub}", s.port),
    )
    .unwrap();
    lab.write("a", b"host cert\n");
    ssh_job(&lab, &s, "retries: 0");
    let r = lab.run(&["run", "web"]);
    if client_yaml().contains("openssh") {
        // ssh checks the host certificate against the CA itself
        r.code(0);
        assert_eq!(fs::read(lab.dst().join("a")).unwrap(), b"host cert\n");
    } else {
        // libssh2 cannot verify host certificates: refused, pointing to
        // the client that can
        r.code(1);
        let reason = lab.last()["reason"].as_str().unwrap().to_string();
        assert!(reason.contains("@cert-authority"), "{reason}");
        assert!(reason.contains("ssh.client: openssh"), "{reason}");
        assert!(!lab.dst().join("a").exists());
    }
}

/// Sign `key.pub` with `ca` for the test user, writing `key-cert.pub`.
fn sign(ca: &Path, key: &Path) {
    keygen(&[
        "-q",
        "-s",
        ca.to_str().unwrap(),
        "-I",
        "syncjob-test",
        "-n",
        &user(),
        "-V",
        "-5m:+1h",
        &format!("{}.pub", key.display()),
    ]);
}

/// `CertificateFile` in the OpenSSH config (a certificate kept apart from
/// its key, after one for another key): used by both clients, through
/// `ssh -G` and, without an `ssh` binary, the built-in parser.
#[test]
fn a_certificate_file_named_in_the_ssh_config_authenticates() {
    let lab = Lab::new();
    let d = lab.path("cadir");
    fs::create_dir_all(&d).unwrap();
    let ca = ca(&d);
    let s = Sshd::start_with(
        &lab.path("sshd"),
        &format!("TrustedUserCAKeys {}.pub", ca.display()),
    );
    fs::write(s.dir.join("authorized_keys"), "").unwrap();
    // the key's certificate and another key's, both away from the key
    sign(&ca, &s.key);
    let other = d.join("other");
    keygen(&[
        "-q",
        "-t",
        "ed25519",
        "-N",
        "",
        "-f",
        other.to_str().unwrap(),
    ]);
    sign(&ca, &other);
    let certs = lab.path("certs");
    fs::create_dir_all(&certs).unwrap();
    let mine = certs.join("deploy-cert.pub");
    fs::rename(s.dir.join("id_ed25519-cert.pub"), &mine).unwrap();
    let theirs = certs.join("other-cert.pub");
    fs::rename(d.join("other-cert.pub"), &theirs).unwrap();
    let block = |cert_lines: &str| {
        format!(
            "Host web3\n  HostName 127.0.0.1\n  User {}\n  Port {}\n  IdentityFile {}\n  \
             UserKnownHostsFile {}\n{cert_lines}",
            user(),
            s.port,
            s.key.display(),
            s.known_hosts.display()
        )
    };
    let config = lab.path("ssh_config");
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: web3:{}\n    retries: 0\n    \
         ssh: {{ timeout: 10s, config: {}{} }}\n",
        lab.dst().display(),
        config.display(),
        client_yaml()
    ));
    lab.write("a", b"cert file\n");
    // without the certificate: refused (the key alone is not authorized)
    fs::write(&config, block("")).unwrap();
    lab.run(&["run", "web"]).code(1);
    assert!(!lab.dst().join("a").exists());
    let lines = format!(
        "  CertificateFile {}\n  CertificateFile {}\n",
        theirs.display(),
        mine.display()
    );
    fs::write(&config, block(&lines)).unwrap();
    let r = lab.run(&["run", "web"]);
    r.code(0);
    assert_eq!(fs::read(lab.dst().join("a")).unwrap(), b"cert file\n");
    if client_yaml().is_empty() {
        // the built-in parser (no `ssh` binary) reads it too
        lab.write("b", b"parsed\n");
        let r = Run::from(
            lab.cmd()
                .env("PATH", "/nonexistent")
                .args(["run", "web"])
                .output()
                .unwrap(),
        );
        r.code(0);
        assert_eq!(fs::read(lab.dst().join("b")).unwrap(), b"parsed\n");
    }
}
