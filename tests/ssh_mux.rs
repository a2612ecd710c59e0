//! `ssh.client: openssh` shares one SSH connection per target and run (a
//! master in the state dir), or leaves the user's own ControlMaster setup
//! to ssh; against a real sshd whose log counts the logins.

mod common;
use common::sshd::{Sshd, user};
use common::*;
use std::fs;
use std::process::Command;
use std::time::Duration;

/// Logins the sshd accepted so far (its VERBOSE log).
fn logins(s: &Sshd) -> usize {
    fs::read_to_string(s.dir.join("sshd.log"))
        .unwrap_or_default()
        .matches("Accepted publickey")
        .count()
}

/// `ssh` processes still running whose command line mentions `needle`.
fn ssh_left(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = fs::read(e.path().join("cmdline")) {
            // `ssh` by any path, or a master that renamed itself `ssh: ...`
            let argv0 = c.split(|&b| b == 0).next().unwrap_or_default();
            let name = argv0.rsplit(|&b| b == b'/').next().unwrap_or_default();
            let is_ssh = name == b"ssh" || argv0.starts_with(b"ssh:");
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if is_ssh && c.contains(needle) {
                out.push(c);
            }
        }
    }
    out
}

fn job(lab: &Lab, s: &Sshd, more: &str) {
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: {}\n    verify_interval: 0\n    delete: true\n    \
         retries: 0\n    ssh: {{ identity: {}, known_hosts: {}, timeout: 10s, client: openssh, \
         remote_helper: {}{more} }}\n",
        s.url(&lab.dst()),
        s.key.display(),
        s.known_hosts.display(),
        BIN
    ));
}

#[test]
fn one_run_logs_in_once_and_leaves_no_master_behind() {
    let lab = Lab::new();
    let s = Sshd::start_with(&lab.path("sshd"), "LogLevel VERBOSE");
    for i in 0..50 {
        lab.write(&format!("d{}/f{i}.txt", i % 5), b"x\n");
    }
    std::os::unix::fs::symlink("d0", lab.src().join("link")).unwrap();
    job(&lab, &s, "");
    lab.run(&["run", "web"]).code(0);
    assert_eq!(rsync_diff(&lab.src(), &lab.dst(), &[]), "");
    // (sshd logs a login just after it answers it)
    until(Duration::from_secs(5), || logins(&s) >= 1);
    assert_eq!(logins(&s), 1, "the run's ssh processes share one login");
    // a changed tree: listing, helper streams, a delete, one login more
    lab.write("d1/new.txt", b"new\n");
    fs::remove_file(lab.src().join("d2/f2.txt")).unwrap();
    lab.run(&["run", "web"]).code(0);
    until(Duration::from_secs(5), || logins(&s) >= 2);
    assert_eq!(logins(&s), 2);
    assert_eq!(rsync_diff(&lab.src(), &lab.dst(), &[]), "");
    // the master exited with the run
    let state = lab.state();
    let mux = state.join("ssh-mux");
    assert!(
        until(Duration::from_secs(5), || fs::read_dir(&mux)
            .unwrap()
            .next()
            .is_none()),
        "a socket is left"
    );
    let needle = mux.display().to_string();
    assert!(gone(&needle), "a master runs: {:?}", ssh_left(&needle));
}

/// No `ssh` mentions `needle` within 5 s (a master that was told to exit
/// answers first and goes a moment later).
fn gone(needle: &str) -> bool {
    until(Duration::from_secs(5), || ssh_left(needle).is_empty())
}

#[test]
fn the_users_own_control_master_is_left_to_ssh() {
    let lab = Lab::new();
    let s = Sshd::start_with(&lab.path("sshd"), "LogLevel VERBOSE");
    lab.write("a.txt", b"a\n");
    let cm = lab.path("cm");
    fs::create_dir(&cm).unwrap();
    let config = lab.path("ssh_config");
    let path = cm.join("%C");
    fs::write(
        &config,
        format!(
            "Host *\n  ControlMaster auto\n  ControlPath {}\n  ControlPersist 30\n",
            path.display()
        ),
    )
    .unwrap();
    job(&lab, &s, &format!(", config: {}", config.display()));
    lab.run(&["run", "web"]).code(0);
    lab.write("b.txt", b"b\n");
    lab.run(&["run", "web"]).code(0);
    assert_eq!(fs::read(lab.dst().join("b.txt")).unwrap(), b"b\n");
    // the user's master serves both runs and is still up (ControlPersist)
    assert_eq!(logins(&s), 1);
    assert!(!lab.state().join("ssh-mux").exists());
    let check = |op: &str| {
        Command::new("ssh")
            .args(["-F"])
            .arg(&config)
            .args(["-p", &s.port.to_string(), "-l", &user()])
            .args(["-O", op, "127.0.0.1"])
            .output()
            .unwrap()
    };
    let c = check("check");
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    let e = check("exit");
    assert!(e.status.success(), "{}", String::from_utf8_lossy(&e.stderr));
    // `-O exit` returns once the master has been asked to stop; the master
    // process itself goes a moment later
    let needle = cm.display().to_string();
    assert!(
        gone(&needle),
        "the master still runs: {:?}",
        ssh_left(&needle)
    );
}
