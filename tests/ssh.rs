//! The SSH transport against a real OpenSSH sshd started by the test.

mod common;
use common::sshd::{Sshd, ssh_job, ssh_job_helper};
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn populate(lab: &Lab) {
    lab.write("index.html", b"<h1>hello</h1>\n");
    lab.write("css/site.css", b"body{}\n");
    lab.write("with space.txt", b"space\n");
    lab.write("\u{fc}n\u{ef}c\u{f6}d\u{e9}.txt", b"unicode\n");
    lab.write("-leading-dash", b"dash\n");
    lab.write("new\nline", b"newline in name\n");
    lab.write("it's \"quoted\" $(x).txt", b"shell metacharacters\n");
    lab.write("bin/run.sh", b"#!/bin/sh\necho hi\n");
    fs::set_permissions(
        lab.src().join("bin/run.sh"),
        fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    lab.write("big.bin", &vec![7u8; 3 << 20]);
    lab.write("cache.gz", b"excluded");
    fs::create_dir_all(lab.src().join("empty/dir")).unwrap();
    std::os::unix::fs::symlink("index.html", lab.src().join("home.html")).unwrap();
    set_mtime(&lab.src().join("index.html"), 1_600_000_000, 0);
    set_mtime(&lab.src().join("home.html"), 1_400_000_000, 0);
    set_mtime(&lab.src().join("css"), 1_200_000_000, 0);
}

/// What `populate` wrote, as it must be on the target (`*.gz` excluded).
fn check_populated(dst: &Path) {
    assert_eq!(
        fs::read(dst.join("new\nline")).unwrap(),
        b"newline in name\n"
    );
    assert_eq!(
        fs::read(dst.join("it's \"quoted\" $(x).txt")).unwrap(),
        b"shell metacharacters\n"
    );
    assert_eq!(fs::read(dst.join("big.bin")).unwrap(), vec![7u8; 3 << 20]);
    assert_eq!(mode(&dst.join("bin/run.sh")), 0o750);
    assert_eq!(mtime(&dst.join("index.html")).0, 1_600_000_000);
    assert_eq!(mtime(&dst.join("css")).0, 1_200_000_000);
    assert_eq!(
        fs::read_link(dst.join("home.html")).unwrap(),
        Path::new("index.html")
    );
    assert!(dst.join("empty/dir").is_dir());
    assert!(!dst.join("cache.gz").exists());
}

#[test]
fn full_copy_incremental_delete_excludes_over_ssh() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    populate(&lab);
    ssh_job(&lab, &s, "delete: true\nexclude: [\"*.gz\"]");
    lab.run(&["run", "web"]).code(0);
    let dst = lab.dst();
    check_populated(&dst);
    assert_eq!(rsync_diff(&lab.src(), &dst, &["--exclude", "*.gz"]), "");
    let rec = lab.last();
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(rec["files_transferred"], 9);
    assert!(rec["target"].as_str().unwrap().starts_with("ssh://"));

    // no-op
    lab.run(&["run", "web"]).code(0);
    assert_eq!(lab.last()["files_transferred"], 0, "{}", lab.last());
    // incremental: one changed, one added, one deleted on the source; one extra on the target
    lab.write("index.html", b"<h1>changed</h1>\n");
    lab.write("css/new.css", b"new\n");
    fs::remove_file(lab.src().join("with space.txt")).unwrap();
    fs::write(dst.join("target-only"), b"x").unwrap();
    fs::write(dst.join("kept.gz"), b"excluded on target").unwrap();
    // (entries added on the target behind syncjob's back are seen by a full
    // listing: --verify, or the next one after verify_interval)
    lab.run(&["run", "web", "--verify"]).code(0);
    let rec = lab.last();
    assert_eq!(rec["files_transferred"], 2);
    assert_eq!(rec["files_deleted"], 2);
    assert!(dst.join("kept.gz").exists());
    assert_eq!(rsync_diff(&lab.src(), &dst, &["--exclude", "*.gz"]), "");
    assert!(listing(&dst).iter().all(|n| !n.contains(".syncjob-tmp.")));

    // dry run lists only
    lab.write("later.txt", b"l");
    let r = lab.run(&["run", "web", "--dry-run"]);
    r.code(0);
    assert!(r.stdout.contains(">f+++++++++ later.txt"), "{}", r.stdout);
    assert!(!dst.join("later.txt").exists());
}

#[test]
fn unknown_and_changed_host_keys_are_refused_without_retry() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    lab.write("a", b"a");
    // unknown: an empty known_hosts
    fs::write(&s.known_hosts, "").unwrap();
    ssh_job(&lab, &s, "retries: 3");
    let t = Instant::now();
    let r = lab.run(&["run", "web"]);
    r.code(1);
    assert!(t.elapsed() < Duration::from_secs(5), "not retried");
    let reason = lab.last()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("is unknown"), "{reason}");
    if common::sshd::client_yaml().is_empty() {
        // (ssh itself does not print the fingerprint of an unknown key)
        assert!(reason.contains("SHA256:"), "{reason}");
    }
    assert!(
        reason.contains(&format!("ssh-keyscan -p {}", s.port)),
        "{reason}"
    );
    assert!(reason.contains("not retried"), "{reason}");
    assert!(!lab.dst().exists());

    // changed: another key recorded for this host
    let other = lab.path("other");
    fs::create_dir_all(&other).unwrap();
    Command_keygen(&other.join("k"));
    let other_pub = fs::read_to_string(other.join("k.pub")).unwrap();
    let other_pub: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    fs::write(
        &s.known_hosts,
        format!("[127.0.0.1]:{} {}\n", s.port, other_pub.join(" ")),
    )
    .unwrap();
    lab.run(&["run", "web"]).code(1);
    let reason = lab.last()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("HOST KEY CHANGED"), "{reason}");
    assert!(!lab.dst().exists());

    // accept-new adds an unknown key and proceeds, but never a changed one
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: {}\n    ssh: {{ identity: {}, known_hosts: {}, strict_host_key_checking: accept-new }}\n",
        s.url(&lab.dst()),
        s.key.display(),
        s.known_hosts.display()
    ));
    lab.run(&["run", "web"]).code(1);
    assert!(
        lab.last()["reason"]
            .as_str()
            .unwrap()
            .contains("HOST KEY CHANGED")
    );
    fs::write(&s.known_hosts, "").unwrap();
    lab.run(&["run", "web"]).code(0);
    let kh = fs::read_to_string(&s.known_hosts).unwrap();
    assert_eq!(
        kh.trim(),
        format!("[127.0.0.1]:{} {}", s.port, s.host_pub())
    );
    assert_eq!(fs::read(lab.dst().join("a")).unwrap(), b"a");
}

#[allow(non_snake_case)]
fn Command_keygen(p: &Path) {
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(p)
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn wrong_client_key_is_refused_without_a_retry_storm() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    lab.write("a", b"a");
    let wrong = lab.path("wrong_key");
    Command_keygen(&wrong);
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: {}\n    retries: 5\n    ssh: {{ identity: {}, known_hosts: {} }}\n",
        s.url(&lab.dst()),
        wrong.display(),
        s.known_hosts.display()
    ));
    let t = Instant::now();
    lab.run(&["run", "web"]).code(1);
    assert!(t.elapsed() < Duration::from_secs(5), "not retried");
    let reason = lab.last()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("authentication refused"), "{reason}");
    assert!(reason.contains("not retried"), "{reason}");
    // exactly one connection attempt reached the server's log? at least no dst
    assert!(!lab.dst().exists());
}

#[test]
fn a_password_file_readable_by_others_is_refused() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    lab.write("a", b"a");
    let pw = lab.path("pass");
    fs::write(&pw, "secret\n").unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o644)).unwrap();
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: {}\n    ssh: {{ identity: {}, known_hosts: {}, password_file: {} }}\n",
        s.url(&lab.dst()),
        s.key.display(),
        s.known_hosts.display(),
        pw.display()
    ));
    lab.run(&["run", "web"]).code(1);
    assert!(
        lab.last()["reason"].as_str().unwrap().contains("chmod 600"),
        "{}",
        lab.last()
    );
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    lab.run(&["run", "web"]).code(0);
}

#[test]
fn one_dead_target_does_not_stop_the_other_and_converges_later() {
    let lab = Lab::new();
    let mut a = Sshd::start(&lab.path("sshd-a"));
    let b = Sshd::start(&lab.path("sshd-b"));
    // b trusts a's client key too, so one identity serves both
    fs::copy(&a.key, &b.key).unwrap();
    fs::copy(a.dir.join("id_ed25519.pub"), b.dir.join("authorized_keys")).unwrap();
    let kh = lab.path("known_hosts");
    fs::write(
        &kh,
        format!(
            "{}{}",
            fs::read_to_string(&a.known_hosts).unwrap(),
            fs::read_to_string(&b.known_hosts).unwrap()
        ),
    )
    .unwrap();
    lab.write("big.bin", &vec![1u8; 150 << 20]);
    for i in 0..50 {
        lab.write(&format!("small/{i}.txt"), format!("{i}").as_bytes());
    }
    let (da, db) = (lab.path("dst-a"), lab.path("dst-b"));
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: [{}, {}]\n    retries: 1\n    parallel: 2\n    ssh: {{ identity: {}, known_hosts: {}, timeout: 5s }}\n",
        a.url(&da),
        b.url(&db),
        a.key.display(),
        kh.display()
    ));
    let child = lab
        .cmd()
        .args(["run", "web"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // kill a's sshd (and its sessions) while the big file is on its way
    let t = Instant::now();
    while !listing(&da).iter().any(|n| n.contains(".syncjob-tmp.")) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "no transfer to a seen"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    a.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let log = lab.log();
    assert_eq!(log.len(), 2, "one record per target");
    let ra = log
        .iter()
        .find(|r| r["target"].as_str().unwrap().contains(&a.port.to_string()))
        .unwrap();
    let rb = log
        .iter()
        .find(|r| r["target"].as_str().unwrap().contains(&b.port.to_string()))
        .unwrap();
    assert_eq!(rb["status"], "ok", "{rb}");
    assert_eq!(rsync_diff(&lab.src(), &db, &[]), "");
    assert_eq!(ra["status"], "failed", "{ra}");
    let reason = ra["reason"].as_str().unwrap();
    assert!(
        reason.contains("after 1 retries") || reason.contains("refused"),
        "{reason}"
    );
    // the final name never holds a partial file
    if let Ok(m) = fs::metadata(da.join("big.bin")) {
        assert_eq!(m.len(), 150 << 20);
    }
    // back up: the next run converges and removes the stale temporary file
    a.restart();
    lab.run(&["run", "web"]).code(0);
    assert_eq!(rsync_diff(&lab.src(), &da, &[]), "");
    assert!(
        listing(&da).iter().all(|n| !n.contains(".syncjob-tmp.")),
        "{:?}",
        listing(&da)
    );
}

#[test]
fn an_unchanged_source_does_not_connect_until_a_change_or_verify() {
    let lab = Lab::new();
    let mut s = Sshd::start(&lab.path("sshd"));
    populate(&lab);
    ssh_job(&lab, &s, "delete: true\nretries: 0");
    lab.run(&["run", "web"]).code(0);
    lab.run(&["run", "web"]).code(0);
    let rec = lab.last();
    assert_eq!(rec["target_state"], "manifest", "{rec}");
    // the no-op needs no connection: it holds with the server down
    s.kill();
    lab.run(&["run", "web"]).code(0);
    assert_eq!(lab.last()["target_state"], "manifest");
    // a full listing or a change does connect, and reports the dead target
    lab.run(&["run", "web", "--verify"]).code(1);
    assert!(
        lab.last()["reason"]
            .as_str()
            .unwrap()
            .contains("cannot reach target")
    );
    s.restart();
    lab.write("index.html", b"<h1>changed</h1>\n");
    lab.run(&["run", "web"]).code(0);
    let rec = lab.last();
    assert_eq!(rec["status"], "ok");
    assert_eq!(rec["files_transferred"], 1);
    assert_eq!(rsync_diff(&lab.src(), &lab.dst(), &["-c"]), "");
}

#[test]
fn many_files_spread_over_several_connections_arrive_intact() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    for i in 0..700 {
        let body: Vec<u8> = (0..(i * 37 % 5000)).map(|k| (k * i % 251) as u8).collect();
        lab.write(&format!("d{}/f{i}.dat", i % 7), &body);
    }
    lab.write("big/one.bin", &vec![9u8; 70 << 20]);
    ssh_job(&lab, &s, "streams: 3");
    lab.run(&["run", "web"]).code(0);
    let rec = lab.last();
    assert_eq!(rec["files_transferred"], 701, "{rec}");
    assert_eq!(rsync_diff(&lab.src(), &lab.dst(), &["-c"]), "");
}

#[test]
fn a_remote_without_gnu_find_is_listed_over_sftp() {
    // the sessions of this sshd find a `find` without -printf first in PATH
    // (as on busybox systems); listing falls back to SFTP readdir
    let lab = Lab::new();
    let bin = lab.path("fakebin");
    fs::create_dir_all(&bin).unwrap();
    let called = lab.path("fake-find-called");
    fs::write(
        bin.join("find"),
        format!(
            "#!/bin/sh\ntouch {}\necho \"find: unrecognized: -printf\" >&2\nexit 1\n",
            called.display()
        ),
    )
    .unwrap();
    fs::set_permissions(
        bin.join("find"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let s = Sshd::start_with(
        &lab.path("sshd"),
        &format!("SetEnv PATH={}:/usr/bin:/bin", bin.display()),
    );
    populate(&lab);
    ssh_job(&lab, &s, "delete: true\nexclude: [\"*.gz\"]");
    lab.run(&["run", "web"]).code(0);
    let dst = lab.dst();
    assert_eq!(rsync_diff(&lab.src(), &dst, &["--exclude", "*.gz"]), "");
    // a full listing (over SFTP) of the synced target finds nothing to do
    lab.run(&["run", "web", "--verify"]).code(0);
    assert!(called.exists(), "the remote ran the fake find");
    let rec = lab.last();
    assert_eq!(rec["files_transferred"], 0, "{rec}");
    assert_eq!(rec["files_deleted"], 0, "{rec}");
    // changes, deletions and entries added on the target, seen over SFTP
    lab.write("index.html", b"<h1>changed again</h1>\n");
    fs::remove_file(lab.src().join("with space.txt")).unwrap();
    fs::write(dst.join("target-only"), b"x").unwrap();
    fs::create_dir_all(dst.join("extra/dir")).unwrap();
    fs::write(dst.join("extra/dir/f"), b"y").unwrap();
    fs::write(dst.join("kept.gz"), b"excluded on target").unwrap();
    lab.run(&["run", "web", "--verify"]).code(0);
    let rec = lab.last();
    assert_eq!(rec["files_transferred"], 1, "{rec}");
    assert!(dst.join("kept.gz").exists());
    assert!(!dst.join("target-only").exists() && !dst.join("extra").exists());
    assert_eq!(rsync_diff(&lab.src(), &dst, &["--exclude", "*.gz"]), "");
}

/// `ssh.remote_helper`: the same result as SFTP (contents, modes, mtimes to
/// the nanosecond, odd names, symlinks, deletes, excludes), files sent
/// through `syncjob helper` on the remote.
#[test]
fn the_remote_helper_copies_what_sftp_would() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    populate(&lab);
    set_mtime(&lab.src().join("bin/run.sh"), 1_500_000_000, 987_654_321);
    ssh_job_helper(&lab, &s, "delete: true\nexclude: [\"*.gz\"]");
    lab.run(&["run", "web"]).code(0);
    let dst = lab.dst();
    let rec = lab.last();
    assert_eq!(rec["status"], "ok", "{rec}");
    check_populated(&dst);
    assert_eq!(mtime(&dst.join("bin/run.sh")), (1_500_000_000, 987_654_321));
    assert_eq!(
        rsync_diff(&lab.src(), &dst, &["--exclude", "*.gz", "-c"]),
        ""
    );
    // changes, additions and deletions
    lab.write("index.html", b"<h1>changed</h1>\n");
    lab.write("css/new.css", b"a{}\n");
    fs::remove_file(lab.src().join("with space.txt")).unwrap();
    lab.run(&["run", "web"]).code(0);
    assert_eq!(lab.last()["files_transferred"], 2, "{}", lab.last());
    assert_eq!(
        rsync_diff(&lab.src(), &dst, &["--exclude", "*.gz", "-c"]),
        ""
    );
    let left: Vec<_> = listing(&dst)
        .into_iter()
        .filter(|n| n.contains(".syncjob-tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// A remote helper that is not there: a clear error before anything is
/// changed, not retried.
#[test]
fn a_missing_remote_helper_is_a_clear_error_and_changes_nothing() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    lab.write("a.txt", b"a");
    let yaml = format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: {}\n    retries: 3\n    {}\n",
        s.url(&lab.dst()),
        s.ssh_yaml_with(", remote_helper: /nonexistent/syncjob")
    );
    lab.config(&yaml);
    let t0 = Instant::now();
    lab.run(&["run", "web"]).code(1);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "not retried with backoff"
    );
    let rec = lab.last();
    let reason = rec["reason"].as_str().unwrap();
    assert!(reason.contains("remote helper"), "{reason}");
    assert!(reason.contains("/nonexistent/syncjob"), "{reason}");
    assert!(reason.contains("not retried"), "{reason}");
    assert!(!lab.dst().join("a.txt").exists());
}

/// A big file changed in place and at its end goes through the remote
/// helper as a delta: only the changed blocks are sent (`bytes_transferred`
/// counts the data sent), and the result is the new file byte for byte.
#[test]
fn the_remote_helper_sends_only_the_changed_blocks_of_a_big_file() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    const MIB: usize = 1 << 20;
    let mut big: Vec<u8> = (0..24 * MIB).map(|i| (i * 7 % 251) as u8).collect();
    lab.write("big.bin", &big);
    lab.write("small.txt", b"small");
    ssh_job_helper(&lab, &s, "");
    lab.run(&["run", "web"]).code(0);
    assert_eq!(lab.last()["bytes_transferred"], (24 * MIB + 5) as u64);
    // 8 bytes in the middle, the last MiB rewritten, 100 KiB appended
    big[10 * MIB..10 * MIB + 8].copy_from_slice(b"CHANGED!");
    for b in &mut big[23 * MIB..] {
        *b = b.wrapping_add(1);
    }
    big.extend(std::iter::repeat_n(5u8, 100 << 10));
    lab.write("big.bin", &big);
    set_mtime(&lab.src().join("big.bin"), 1_700_000_000, 5);
    lab.run(&["run", "web"]).code(0);
    let rec = lab.last();
    assert_eq!(rec["files_transferred"], 1, "{rec}");
    let sent = rec["bytes_transferred"].as_u64().unwrap();
    assert!(
        sent < 2 * MIB as u64,
        "only the changed blocks are sent: {sent} bytes"
    );
    assert!(sent > MIB as u64, "the changed MiB is sent: {sent} bytes");
    let dst = lab.dst().join("big.bin");
    assert!(
        fs::read(&dst).unwrap() == big,
        "the new version, byte for byte"
    );
    assert_eq!(mtime(&dst), (1_700_000_000, 5));
    assert_eq!(rsync_diff(&lab.src(), &lab.dst(), &["-c"]), "");
    // shrunk: the same, and still exact
    big.truncate(12 * MIB + 3);
    lab.write("big.bin", &big);
    lab.run(&["run", "web"]).code(0);
    assert!(fs::read(&dst).unwrap() == big);
    assert_eq!(
        lab.last()["bytes_transferred"],
        3,
        "a shrunk file: every block copied there but the last 3 bytes"
    );
}

/// libssh2's ChaCha20 and Poly1305 are replaced by vectorised ones
/// (`crates/ssh-chachapoly`): with the server offering only
/// chacha20-poly1305, files of many odd sizes (packets of every length,
/// partial blocks) go both ways intact: written over SFTP and through the
/// helper, listed and compared back.
#[test]
fn data_moves_intact_under_chacha20_poly1305_only() {
    let lab = Lab::new();
    let s = Sshd::start_with(&lab.path("sshd"), "Ciphers chacha20-poly1305@openssh.com");
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for (i, size) in [
        0usize,
        1,
        63,
        64,
        65,
        4095,
        32_700,
        32_768,
        70_001,
        1 << 20,
        (3 << 20) + 17,
    ]
    .into_iter()
    .enumerate()
    {
        let data: Vec<u8> = (0..size)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        lab.write(&format!("d/f{i}.bin"), &data);
    }
    let dst = lab.dst();
    for helper in [false, true] {
        if helper {
            fs::remove_dir_all(&dst).unwrap();
            ssh_job_helper(&lab, &s, "delete: true");
        } else {
            let sftp = format!("{}\n", s.ssh_yaml_with(", remote_helper: none"));
            let url = s.url(&dst);
            lab.config(&format!("jobs:\n  web:\n    source: {{src}}\n    remote: {url}\n    {sftp}    delete: true\n"));
        }
        // --verify: the target is listed (the state dir's manifest is
        // the previous round's)
        lab.run(&["run", "web", "--verify"]).code(0);
        assert_eq!(lab.last()["files_transferred"], 11, "{}", lab.last());
        assert_eq!(
            rsync_diff(&lab.src(), &dst, &["-c"]),
            "",
            "helper: {helper}"
        );
        // the target listed back through the cipher: no changes
        lab.run(&["run", "web", "--verify"]).code(0);
        assert_eq!(lab.last()["files_transferred"], 0, "{}", lab.last());
    }
}

/// A relay to `to` that forwards the key exchange and the client's first
/// encrypted packet (its request for the authentication service), then
/// closes the connection at the client's next one (its first
/// authentication request): the server vanishes during authentication.
/// Counts the connections it cut.
fn relay_cut_at_auth(to: u16) -> (u16, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let cut = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let c = cut.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut down) = conn else { return };
            let Ok(mut up) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                return;
            };
            let (mut u2, mut d2) = (up.try_clone().unwrap(), down.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut d2);
            });
            // the client's banner line, then cleartext packets up to NEWKEYS
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while !line.ends_with(b"\n") && down.read_exact(&mut b).is_ok() {
                line.push(b[0]);
            }
            up.write_all(&line).unwrap();
            loop {
                let mut len = [0u8; 4];
                if down.read_exact(&mut len).is_err() {
                    break;
                }
                let n = u32::from_be_bytes(len) as usize;
                assert!(n < 64 << 10, "cleartext packet of {n} bytes");
                let mut body = vec![0u8; n];
                down.read_exact(&mut body).unwrap();
                up.write_all(&len).unwrap();
                up.write_all(&body).unwrap();
                if body[1] == 21 {
                    break; // SSH_MSG_NEWKEYS: what follows is encrypted
                }
            }
            // the request for the authentication service (answered before
            // the client goes on) passes; the first authentication request
            // does not
            let mut buf = vec![0u8; 64 << 10];
            if let Ok(k) = down.read(&mut buf) {
                let _ = up.write_all(&buf[..k]);
            }
            let _ = down.read(&mut buf);
            // counted before the client can see the cut
            c.fetch_add(1, Ordering::SeqCst);
            let _ = down.shutdown(std::net::Shutdown::Both);
            let _ = up.shutdown(std::net::Shutdown::Both);
        }
    });
    (port, cut)
}

/// A server that goes away during authentication is a lost connection,
/// tried again (`retries`), not an "authentication refused" that no retry
/// can fix (which it was taken for).
#[test]
fn a_connection_lost_during_authentication_is_retried_not_refused() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    let (port, cut) = relay_cut_at_auth(s.port);
    let kh = lab.path("known_hosts_relay");
    fs::write(&kh, format!("[127.0.0.1]:{port} {}\n", s.host_pub())).unwrap();
    lab.write("a.txt", b"a");
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: ssh://{}@127.0.0.1:{port}{}\n    \
         retries: 1\n    retry_interval: 1s\n    \
         ssh: {{ identity: {}, known_hosts: {}, timeout: 10s{} }}\n",
        common::sshd::user(),
        lab.dst().display(),
        s.key.display(),
        kh.display(),
        common::sshd::client_yaml()
    ));
    lab.run(&["run", "web"]).code(1);
    let rec = lab.last();
    let reason = rec["reason"].as_str().unwrap_or_default();
    assert!(!reason.contains("refused"), "{reason}");
    assert!(!reason.contains("not retried"), "{reason}");
    assert!(reason.contains("after 1 retries"), "{reason}");
    assert_eq!(cut.load(std::sync::atomic::Ordering::SeqCst), 2, "{reason}");
}
