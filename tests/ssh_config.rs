//! Targets resolved through the OpenSSH client configuration (`ssh -G`),
//! and ProxyJump with the embedded client, against real sshd processes.

mod common;
use common::sshd::{Sshd, client_yaml, user};
use common::*;
use std::fs;
use std::path::Path;

/// `Host NAME` block reaching `s` (HostName, User, Port, IdentityFile,
/// UserKnownHostsFile) plus more lines.
fn host_block(name: &str, s: &Sshd, more: &str) -> String {
    format!(
        "Host {name}\n  HostName 127.0.0.1\n  User {}\n  Port {}\n  IdentityFile {}\n  \
         UserKnownHostsFile {}\n{more}",
        user(),
        s.port,
        s.key.display(),
        s.known_hosts.display()
    )
}

fn run_home(lab: &Lab, home: &Path, args: &[&str]) -> Run {
    Run::from(lab.cmd().env("HOME", home).args(args).output().unwrap())
}

/// A job `web` to `remote` with `ssh:` keys (`SYNCJOB_TEST_SSH_CLIENT`
/// picks the client, see `common::sshd`).
fn job(lab: &Lab, remote: &str, keys: &str) {
    let keys = if keys.is_empty() {
        String::new()
    } else {
        format!(", {keys}")
    };
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: {remote}\n    retries: 0\n    \
         ssh: {{ timeout: 10s{keys}{} }}\n",
        client_yaml()
    ));
}

#[test]
fn host_alias_from_the_users_ssh_config_under_home() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    lab.write("index.html", b"hello\n");
    lab.write("css/a.css", b"a\n");
    let home = lab.path("home");
    fs::create_dir_all(home.join(".ssh")).unwrap();
    fs::write(home.join(".ssh/config"), host_block("web3", &s, "")).unwrap();
    let remote = format!("web3:{}", lab.dst().display());
    job(&lab, &remote, "");

    let c = run_home(&lab, &home, &["check"]);
    c.code(0);
    let want = format!("web3 = {}@127.0.0.1:{}", user(), s.port);
    assert!(c.stdout.contains(&want), "{}", c.stdout);

    run_home(&lab, &home, &["run", "web"]).code(0);
    assert_eq!(fs::read(lab.dst().join("index.html")).unwrap(), b"hello\n");
    assert_eq!(rsync_diff(&lab.src(), &lab.dst(), &[]), "");
    assert_eq!(lab.last()["status"], "ok");

    // without an `ssh` binary on PATH syncjob reads the file itself (the
    // embedded client needs nothing installed)
    if client_yaml().is_empty() {
        let no_ssh = |args: &[&str]| {
            Run::from(
                lab.cmd()
                    .env("HOME", &home)
                    .env("PATH", "/nonexistent")
                    .args(args)
                    .output()
                    .unwrap(),
            )
        };
        let c = no_ssh(&["check"]);
        c.code(0);
        assert!(c.stdout.contains(&want), "{}", c.stdout);
        lab.write("css/b.css", b"b\n");
        no_ssh(&["run", "web"]).code(0);
        assert_eq!(fs::read(lab.dst().join("css/b.css")).unwrap(), b"b\n");
    }

    // the same HOME without reading the config: `web3` means nothing
    job(&lab, &remote, "config: none");
    lab.write("index.html", b"changed\n");
    let r = run_home(&lab, &home, &["run", "web"]);
    assert_ne!(r.code, 0, "{}", r.stderr);
    assert_eq!(fs::read(lab.dst().join("index.html")).unwrap(), b"hello\n");

    // `ssh.config: FILE` names another file; the job's keys override it
    let other = lab.path("other_config");
    fs::write(
        &other,
        host_block("web3", &s, "").replace(&s.port.to_string(), "1"),
    )
    .unwrap();
    job(
        &lab,
        &remote,
        &format!("config: {}, port: {}", other.display(), s.port),
    );
    let empty_home = lab.path("empty_home");
    fs::create_dir_all(&empty_home).unwrap();
    run_home(&lab, &empty_home, &["run", "web"]).code(0);
    assert_eq!(
        fs::read(lab.dst().join("index.html")).unwrap(),
        b"changed\n"
    );
}

#[test]
fn strict_host_key_checking_no_in_the_config_is_refused() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    lab.write("a", b"a\n");
    let home = lab.path("home");
    fs::create_dir_all(home.join(".ssh")).unwrap();
    fs::write(
        home.join(".ssh/config"),
        host_block("web3", &s, "  StrictHostKeyChecking no\n"),
    )
    .unwrap();
    job(&lab, &format!("web3:{}", lab.dst().display()), "");
    let c = run_home(&lab, &home, &["check"]);
    c.code(2);
    assert!(
        c.stdout.contains("StrictHostKeyChecking no"),
        "{}",
        c.stdout
    );
    let r = run_home(&lab, &home, &["run", "web"]);
    assert_ne!(r.code, 0);
    let reason = lab.last()["reason"].to_string();
    assert!(reason.contains("StrictHostKeyChecking no"), "{reason}");
    assert!(!lab.dst().join("a").exists());
    // the job says so itself: accepted
    job(
        &lab,
        &format!("web3:{}", lab.dst().display()),
        "strict_host_key_checking: no",
    );
    run_home(&lab, &home, &["run", "web"]).code(0);
    assert!(lab.dst().join("a").exists());
}

#[test]
fn proxy_jump_through_a_bastion_checks_every_host_key() {
    let lab = Lab::new();
    // the bastion forwards TCP and logs each direct-tcpip request
    let bastion = Sshd::start_with(
        &lab.path("bastion"),
        "AllowTcpForwarding yes\nLogLevel DEBUG1",
    );
    let fin = Sshd::start(&lab.path("final"));
    lab.write("index.html", b"through the bastion\n");
    let home = lab.path("home");
    fs::create_dir_all(home.join(".ssh")).unwrap();
    let cfg = format!(
        "{}{}",
        host_block("web9", &fin, "  ProxyJump bast\n"),
        host_block("bast", &bastion, "")
    );
    fs::write(home.join(".ssh/config"), &cfg).unwrap();
    job(&lab, &format!("web9:{}", lab.dst().display()), "");

    let c = run_home(&lab, &home, &["check"]);
    c.code(0);
    let want = format!(
        "web9 = {u}@127.0.0.1:{} via {u}@127.0.0.1:{}",
        fin.port,
        bastion.port,
        u = user()
    );
    assert!(c.stdout.contains(&want), "{}", c.stdout);

    run_home(&lab, &home, &["run", "web"]).code(0);
    assert_eq!(
        fs::read(lab.dst().join("index.html")).unwrap(),
        b"through the bastion\n"
    );
    let log = fs::read_to_string(bastion.dir.join("sshd.log")).unwrap();
    let asked = format!("target 127.0.0.1 port {}", fin.port);
    assert!(
        log.contains("direct-tcpip") && log.contains(&asked),
        "the bastion relayed the connection: {log}"
    );

    // the final host's key is checked through the jump too: an unknown key
    // there is refused
    fs::write(&fin.known_hosts, "").unwrap();
    lab.write("index.html", b"changed\n");
    let r = run_home(&lab, &home, &["run", "web"]);
    assert_ne!(r.code, 0);
    let reason = lab.last()["reason"].to_string();
    assert!(reason.contains("is unknown"), "{reason}");
    assert_eq!(
        fs::read(lab.dst().join("index.html")).unwrap(),
        b"through the bastion\n"
    );
}

/// With `ssh.client: openssh` too, a remote command's output is bounded: a
/// `sha256sum` that never stops printing fails the target (run under a
/// 1 GiB address-space limit, which an unbounded read would exhaust).
#[test]
fn openssh_client_bounds_what_a_remote_command_prints() {
    use std::os::unix::process::CommandExt;
    let lab = Lab::new();
    lab.write("a", b"a");
    fs::create_dir_all(lab.dst()).unwrap();
    fs::write(lab.dst().join("a"), b"b").unwrap();
    let bin = lab.path("evil-bin");
    fs::create_dir_all(&bin).unwrap();
    fs::write(bin.join("sha256sum"), "#!/bin/sh\nexec yes\n").unwrap();
    fs::set_permissions(
        bin.join("sha256sum"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let s = Sshd::start_with(
        &lab.path("sshd"),
        &format!("SetEnv PATH={}:/usr/bin:/bin", bin.display()),
    );
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: {}\n    retries: 0\n    compare: checksum\n    \
         ssh: {{ identity: {}, known_hosts: {}, client: openssh, remote_helper: none }}\n",
        s.url(&lab.dst()),
        s.key.display(),
        s.known_hosts.display()
    ));
    let mut c = lab.cmd();
    c.args(["run", "web"]);
    // SAFETY: pre_exec runs in the forked child before exec; setrlimit is
    // async-signal-safe and only reads `r`.
    unsafe {
        c.pre_exec(|| {
            let r = libc::rlimit {
                rlim_cur: 1 << 30,
                rlim_max: 1 << 30,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Run::from(c.output().unwrap()).code(1);
    let rec = lab.last();
    assert!(rec.to_string().contains("printed more than"), "{rec}");
}
