//! Security over SSH (issue 11): secrets (finding 7), against the real
//! sshd of tests/common/sshd.rs.

mod common;

use common::sshd::Sshd;
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn job_with(lab: &Lab, s: &Sshd, ssh: &str) {
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: {}\n    retries: 0\n    ssh: {{ {ssh}, known_hosts: {}, timeout: 10s }}\n",
        s.url(&lab.dst()),
        s.known_hosts.display(),
    ));
}

#[test]
fn the_key_passphrase_is_never_sent_as_a_password() {
    let lab = Lab::new();
    // the server logs every authentication request it receives
    let s = Sshd::start_with(
        &lab.path("sshd"),
        "Match all\n  LogLevel DEBUG3\n  PasswordAuthentication yes\n",
    );
    lab.write("a", b"a");
    // a key the server does not know, encrypted with the passphrase
    let key = lab.path("enc_key");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "s3cret-passphrase", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let pw = lab.path("pass");
    fs::write(&pw, "s3cret-passphrase\n").unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    job_with(
        &lab,
        &s,
        &format!("identity: {}, password_file: {}", key.display(), pw.display()),
    );
    lab.run(&["run", "web"]).code(1);
    let reason = lab.last()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("authentication refused"), "{reason}");
    let log = fs::read_to_string(s.dir.join("sshd.log")).unwrap();
    assert!(log.contains("method publickey"), "the server logs requests: {log}");
    assert!(
        !log.contains("method password"),
        "the passphrase was offered as the login password: {log}"
    );
}

#[test]
fn an_identity_readable_by_others_is_refused_as_ssh_does() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    lab.write("a", b"a");
    fs::set_permissions(&s.key, fs::Permissions::from_mode(0o644)).unwrap();
    job_with(&lab, &s, &format!("identity: {}", s.key.display()));
    lab.run(&["run", "web"]).code(1);
    let reason = lab.last()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("accessible by group or others"), "{reason}");
    assert!(reason.contains("not retried"), "{reason}");
    assert!(!lab.dst().join("a").exists());
    fs::set_permissions(&s.key, fs::Permissions::from_mode(0o600)).unwrap();
    lab.run(&["run", "web"]).code(0);
}

#[test]
fn a_password_file_owned_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to chown");
        return;
    }
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    lab.write("a", b"a");
    // another user's 0600 file: root can read it, its owner controls it
    let pw = lab.path("pass");
    fs::write(&pw, "secret\n").unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&pw, Some(65534), Some(65534)).unwrap();
    job_with(
        &lab,
        &s,
        &format!("identity: {}, password_file: {}", s.key.display(), pw.display()),
    );
    lab.run(&["run", "web"]).code(1);
    let reason = lab.last()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("owner uid 65534"), "{reason}");
    std::os::unix::fs::chown(&pw, Some(0), Some(0)).unwrap();
    lab.run(&["run", "web"]).code(0);
}
