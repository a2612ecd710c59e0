//! `ssh.remote_helper: auto` (the default) against a real sshd whose PATH
//! has a compatible `syncjob`, none, or one of another protocol version.
//! Which path copied a file shows in its mtime: the helper sets the
//! nanoseconds, SFTP v3 whole seconds only.

mod common;
use common::sshd::{Sshd, ssh_job};
use common::*;
use std::fs;
use std::path::Path;

/// An sshd whose sessions get `bin` first on PATH.
fn sshd_with_path(lab: &Lab, bin: &Path) -> Sshd {
    fs::create_dir_all(bin).unwrap();
    Sshd::start_with(
        &lab.path("sshd"),
        &format!("SetEnv PATH={}:/usr/bin:/bin", bin.display()),
    )
}

fn cached(lab: &Lab) -> String {
    let dir = lab.state().join("remote-helper");
    let mut out = String::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        out.push_str(&fs::read_to_string(e.path()).unwrap());
    }
    out
}

fn copy_one(lab: &Lab, s: &Sshd) -> i64 {
    lab.write("a.txt", b"auto\n");
    set_mtime(&lab.src().join("a.txt"), 1_600_000_000, 123_456_789);
    ssh_job(lab, s, "");
    lab.run(&["run", "web"]).code(0);
    assert_eq!(fs::read(lab.dst().join("a.txt")).unwrap(), b"auto\n");
    mtime(&lab.dst().join("a.txt")).1
}

#[test]
fn a_compatible_syncjob_on_the_remote_path_is_used() {
    let lab = Lab::new();
    let bin = lab.path("bin");
    let s = sshd_with_path(&lab, &bin);
    std::os::unix::fs::symlink(BIN, bin.join("syncjob")).unwrap();
    assert_eq!(copy_one(&lab, &s), 123_456_789, "copied by the helper");
    assert_eq!(cached(&lab), "present\n");
}

#[test]
fn without_syncjob_on_the_remote_sftp_is_used_and_remembered() {
    let lab = Lab::new();
    let bin = lab.path("bin");
    let s = sshd_with_path(&lab, &bin);
    assert_eq!(copy_one(&lab, &s), 0, "copied over SFTP");
    assert_eq!(cached(&lab), "absent\n");
    // installed later: the cached "absent" holds for a while (no probe), so
    // this run still uses SFTP
    std::os::unix::fs::symlink(BIN, bin.join("syncjob")).unwrap();
    lab.write("b.txt", b"b\n");
    set_mtime(&lab.src().join("b.txt"), 1_600_000_000, 5);
    lab.run(&["run", "web"]).code(0);
    assert_eq!(mtime(&lab.dst().join("b.txt")).1, 0);
    // once the cache is gone (or stale), it is probed and found
    fs::remove_dir_all(lab.state().join("remote-helper")).unwrap();
    lab.write("c.txt", b"c\n");
    set_mtime(&lab.src().join("c.txt"), 1_600_000_000, 7);
    lab.run(&["run", "web"]).code(0);
    assert_eq!(mtime(&lab.dst().join("c.txt")).1, 7);
    assert_eq!(cached(&lab), "present\n");
}

#[test]
fn a_syncjob_of_another_protocol_version_means_sftp() {
    let lab = Lab::new();
    let bin = lab.path("bin");
    let s = sshd_with_path(&lab, &bin);
    let fake = bin.join("syncjob");
    fs::write(
        &fake,
        "#!/bin/sh\nprintf 'syncjob-helper 9\\n'\ncat >/dev/null\n",
    )
    .unwrap();
    fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    assert_eq!(copy_one(&lab, &s), 0, "copied over SFTP");
    assert_eq!(cached(&lab), "absent\n");
    // `none` never probes; an explicit path that is wrong fails the run
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: {}\n    {}\n",
        s.url(&lab.dst()),
        s.ssh_yaml_with(&format!(", remote_helper: {}", fake.display()))
    ));
    lab.write("a.txt", b"changed\n");
    lab.run(&["run", "web"]).code(1);
    let reason = lab.last()["reason"].as_str().unwrap().to_string();
    assert!(
        reason.contains("not a syncjob helper of this version"),
        "{reason}"
    );
}
