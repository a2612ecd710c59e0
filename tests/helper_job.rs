//! The remote helper carries a whole job (protocol 3), over a real sshd:
//! a key whose forced command is `syncjob helper --root DIR` (with
//! `restrict`: no other command, no SFTP subsystem) syncs creates,
//! changes, deletes, symlinks and mode changes, and `--verify` lists
//! through it; a hostile client speaking to that forced command cannot
//! list, remove, chmod, create or read anything outside DIR; a one-byte
//! insertion at the start of a 64 MiB file sends less than 1 MiB.
//!
//! `SYNCJOB_TEST_BIN` (default: this build) names the binary used on both
//! ends, to check that these tests fail with an older build.

mod common;

use common::sshd::{Sshd, client_yaml, user};
use common::{BIN, Lab, listing, mode, mtime, rsync_diff, set_mtime};
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use syncjob::helper::proto::{self, GREETING};
use syncjob::helper::proto_tree::{self as pt, Attrs, Item};

fn bin() -> String {
    std::env::var("SYNCJOB_TEST_BIN").unwrap_or_else(|_| BIN.to_string())
}

/// `lab.run`, with [`bin`] as the client too.
fn run(lab: &Lab, args: &[&str]) -> common::Run {
    let mut c = lab.cmd();
    let mut cmd = Command::new(bin());
    cmd.args(c.get_args())
        .args(args)
        .current_dir(lab.dir.path());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    let _ = c.stdin(Stdio::null());
    common::Run::from(cmd.stdin(Stdio::null()).output().unwrap())
}

/// The key of `s` may run only `syncjob helper --root ROOT`.
fn force_helper(s: &Sshd, root: &Path) {
    let key = fs::read_to_string(s.dir.join("id_ed25519.pub")).unwrap();
    let forced = format!(
        "command=\"{} helper --root {}\",restrict {key}",
        bin(),
        root.display()
    );
    fs::write(s.dir.join("authorized_keys"), forced).unwrap();
}

/// `ssh` to `s` running `cmd` (the forced command runs instead), `input`
/// on its stdin; its stdout.
fn ssh_raw(s: &Sshd, cmd: &str, input: Vec<u8>) -> Vec<u8> {
    let mut child = Command::new("ssh")
        .args(["-T", "-o", "BatchMode=yes", "-o"])
        .arg(format!("UserKnownHostsFile={}", s.known_hosts.display()))
        .arg("-i")
        .arg(&s.key)
        .args(["-p", &s.port.to_string()])
        .arg(format!("{}@127.0.0.1", user()))
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let w = std::thread::spawn(move || {
        stdin.write_all(&input)?;
        stdin.flush()
    });
    let o = child.wait_with_output().unwrap();
    w.join().unwrap().unwrap();
    o.stdout
}

fn chmod(p: &Path, m: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
}

fn populate(lab: &Lab) {
    lab.write("index.html", b"<h1>hello</h1>\n");
    lab.write("css/site.css", b"body{}\n");
    lab.write("bin/run.sh", b"#!/bin/sh\necho run\n");
    chmod(&lab.src().join("bin/run.sh"), 0o755);
    lab.write("private/key.txt", b"secret\n");
    chmod(&lab.src().join("private/key.txt"), 0o600);
    chmod(&lab.src().join("private"), 0o750);
    lab.write("old/gone.txt", b"to be deleted\n");
    lab.write("with space.txt", b"space\n");
    lab.write("dir-to-file/a", b"a\n");
    symlink("index.html", lab.src().join("home")).unwrap();
    symlink("../nowhere", lab.src().join("css/dangling")).unwrap();
}

fn change(lab: &Lab) {
    let src = lab.src();
    lab.write("index.html", b"<h1>changed</h1>\n");
    lab.write("css/new.css", b"a{}\n");
    fs::remove_dir_all(src.join("old")).unwrap();
    fs::remove_file(src.join("with space.txt")).unwrap();
    fs::remove_dir_all(src.join("dir-to-file")).unwrap();
    lab.write("dir-to-file", b"now a file\n");
    fs::remove_file(src.join("home")).unwrap();
    symlink("css/site.css", src.join("home")).unwrap();
    chmod(&src.join("bin/run.sh"), 0o700);
    chmod(&src.join("private"), 0o700);
    chmod(&src.join("css/site.css"), 0o640);
}

/// A job `web` to `dst` on `s`, with the default `remote_helper: auto`
/// (the forced command answers whatever command is asked for).
fn job(lab: &Lab, s: &Sshd) {
    let y = format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: {}\n    delete: true\n    max_delete: 100%\n    {}\n",
        s.url(&lab.dst()),
        s.ssh_yaml()
    );
    lab.config(&y);
}

#[track_caller]
fn equal(lab: &Lab) {
    assert_eq!(rsync_diff(&lab.src(), &lab.dst(), &["-c"]), "");
    let left: Vec<_> = listing(&lab.dst())
        .into_iter()
        .filter(|n| n.contains(".syncjob-tmp"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
}

/// Issue 11 (finding 1/4 remainder): a key whose forced command is the
/// helper carries a whole job; nothing else runs there.
#[test]
fn a_forced_command_helper_carries_a_whole_job() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    force_helper(&s, &lab.dst());
    // the key runs nothing but the helper: `find` and `ls` are not run
    let said = ssh_raw(&s, "find / -maxdepth 1", Vec::new());
    assert!(
        said.starts_with(b"syncjob-helper "),
        "{:?}",
        String::from_utf8_lossy(&said)
    );
    populate(&lab);
    job(&lab, &s);
    run(&lab, &["run", "web"]).code(0);
    let rec = lab.last();
    assert_eq!(rec["status"], "ok", "{rec}");
    equal(&lab);
    assert_eq!(mode(&lab.dst().join("private")), 0o750);
    change(&lab);
    run(&lab, &["run", "web"]).code(0);
    let rec = lab.last();
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(rec["files_transferred"], 3, "{rec}");
    equal(&lab);
    assert_eq!(mode(&lab.dst().join("bin/run.sh")), 0o700);
    // changes behind the job's back: found by a listing (--verify)
    fs::write(lab.dst().join("index.html"), b"<h1>tampered</h1>\n").unwrap();
    fs::write(lab.dst().join("stray.txt"), b"stray\n").unwrap();
    chmod(&lab.dst().join("css/new.css"), 0o600);
    run(&lab, &["run", "--verify", "web"]).code(0);
    let rec = lab.last();
    assert_eq!(rec["status"], "ok", "{rec}");
    equal(&lab);
    // and a verified run with nothing to do does nothing
    run(&lab, &["run", "--verify", "web"]).code(0);
    assert_eq!(lab.last()["files_transferred"], 0, "{}", lab.last());
}

/// A root with a planted symlink to an outside directory, a secret file.
fn attack_lab() -> (Lab, PathBuf, PathBuf) {
    let lab = Lab::new();
    let root = lab.path("root");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("inside.txt"), vec![1u8; 10_000]).unwrap();
    let out = lab.path("outside");
    fs::create_dir(&out).unwrap();
    fs::write(out.join("gone.txt"), b"outside: must stay").unwrap();
    fs::write(out.join("keep.txt"), b"outside: keep").unwrap();
    chmod(&out.join("keep.txt"), 0o600);
    fs::write(lab.path("secret"), b"secret").unwrap();
    chmod(&lab.path("secret"), 0o600);
    symlink(&out, root.join("link")).unwrap();
    (lab, root, out)
}

/// Names, modes, mtimes and contents of everything under `dir` (and it).
fn state(dir: &Path) -> Vec<(String, u32, i64, Vec<u8>)> {
    use std::os::unix::fs::MetadataExt;
    let mut names = listing(dir);
    names.push(String::new());
    let mut v: Vec<_> = names
        .into_iter()
        .map(|n| {
            let p = if n.is_empty() {
                dir.to_path_buf()
            } else {
                dir.join(&n)
            };
            let md = fs::symlink_metadata(&p).unwrap();
            let data = if md.is_file() {
                fs::read(&p).unwrap()
            } else {
                vec![]
            };
            (n, md.mode(), md.mtime(), data)
        })
        .collect();
    v.sort();
    v
}

/// The hostile records: each reaches outside the root (through the
/// planted `link`, `..`, an absolute name) or asks for a set-id mode; the
/// last two are legitimate.
fn hostile_records(out: &Path, secret: &Path) -> Vec<Vec<u8>> {
    let abs = |p: &Path| p.as_os_str().as_encoded_bytes().to_vec();
    let mut v = Vec::new();
    let mut rec = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = Vec::new();
        f(&mut b);
        v.push(b);
    };
    let attrs = |kind, mode| Attrs {
        kind,
        mode: Some(mode),
        mtime: Some((1, 0)),
        owner: None,
    };
    rec(&|b| pt::remove_request(b"link/gone.txt", false, b));
    rec(&|b| pt::remove_request(b"../outside/gone.txt", false, b));
    rec(&|b| pt::remove_request(&abs(&out.join("gone.txt")), false, b));
    rec(&|b| pt::remove_request(b"", true, b));
    rec(&|b| pt::remove_request(b"link", true, b));
    rec(&|b| pt::attrs_request(b"link/keep.txt", &attrs(0, 0o666), b));
    rec(&|b| pt::attrs_request(b"link", &attrs(1, 0o777), b));
    rec(&|b| pt::attrs_request(b"../outside", &attrs(1, 0o777), b));
    rec(&|b| pt::attrs_request(&abs(out), &attrs(1, 0o777), b));
    rec(&|b| pt::attrs_request(b"inside.txt", &attrs(0, 0o4755), b));
    rec(&|b| pt::path_request(b'M', b"link/newdir", b));
    rec(&|b| pt::path_request(b'M', b"../newdir", b));
    rec(&|b| pt::symlink_request(b"link/x", b"link/.syncjob-tmp.1.1.x", b"/etc", None, b));
    rec(&|b| pt::symlink_request(b"x", b"../.syncjob-tmp.1.1.x", b"/etc", None, b));
    rec(&|b| pt::rename_request(b"link/keep.txt", b"stolen.txt", b));
    rec(&|b| pt::rename_request(b"inside.txt", b"link/planted.txt", b));
    rec(&|b| pt::rename_request(b"../outside/gone.txt", b"stolen.txt", b));
    rec(&|b| pt::rename_request(b"inside.txt", &abs(&out.join("planted.txt")), b));
    rec(&|b| pt::rename_request(b"", b"x", b));
    // the legitimate: the link's own mtime, a directory inside
    rec(&|b| {
        let a = Attrs {
            kind: 2,
            mode: Some(0o777),
            mtime: Some((1_000_000, 0)),
            owner: None,
        };
        pt::attrs_request(b"link", &a, b)
    });
    rec(&|b| pt::path_request(b'M', b"newdir", b));
    let _ = secret;
    v
}

/// Read and check the replies to `L`, [`hostile_records`], then three
/// reads (`C` through the link, `C` of an absolute secret, `W` through
/// the link).
fn check_replies(mut r: &[u8], n: usize) {
    assert!(
        r.starts_with(GREETING),
        "greeting: {:?}",
        String::from_utf8_lossy(&r[..r.len().min(40)])
    );
    r = &r[GREETING.len()..];
    // the listing: the link itself, nothing through it
    assert!(pt::read_list_head(&mut r).unwrap().unwrap(), "a root");
    let mut names = Vec::new();
    loop {
        match pt::read_item(&mut r).unwrap() {
            Item::End => break,
            Item::Entry { name, entry } => {
                names.push((String::from_utf8(name).unwrap(), entry.kind))
            }
            Item::Error { path, message } => panic!("{path:?}: {message}"),
        }
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let got: Vec<String> = names.iter().map(|(n, k)| format!("{n}:{k:?}")).collect();
    assert_eq!(got, [":Dir", "inside.txt:File", "link:Symlink"]);
    for k in 0..n - 2 {
        let e = proto::read_reply(&mut r).unwrap();
        assert!(e.is_err(), "hostile record {k} was accepted");
    }
    for k in n - 2..n {
        proto::read_reply(&mut r)
            .unwrap()
            .unwrap_or_else(|e| panic!("record {k}: {e}"));
    }
    assert!(
        pt::read_sum(&mut r).unwrap().is_err(),
        "a checksum through the link"
    );
    assert!(
        pt::read_sum(&mut r).unwrap().is_err(),
        "a checksum of the secret"
    );
    assert!(
        pt::read_signature(&mut r, 4096).unwrap().is_err(),
        "a signature through the link"
    );
    assert!(r.is_empty(), "{} bytes more", r.len());
}

/// Issue 11: a hostile client of the forced-command helper asks to list,
/// remove, chmod, mkdir, symlink and read through a planted symlinked
/// directory, `..` and absolute names: every one is refused, nothing
/// outside the root changes.
#[test]
fn a_hostile_client_of_the_forced_helper_reaches_nothing_outside_its_root() {
    let (lab, root, out) = attack_lab();
    let before = state(&out);
    let s = Sshd::start(&lab.path("sshd"));
    force_helper(&s, &root);
    let secret = lab.path("secret");
    let records = hostile_records(&out, &secret);
    let n = records.len();
    let mut input = Vec::new();
    pt::list_request(&mut input);
    for r in records {
        input.extend_from_slice(&r);
    }
    pt::path_request(b'C', b"link/keep.txt", &mut input);
    pt::path_request(b'C', secret.as_os_str().as_encoded_bytes(), &mut input);
    pt::signature_request(b"link/keep.txt", 4096, &mut input);
    // the client asks for a root of its own: the forced one stands
    let said = ssh_raw(&s, &format!("{} helper --root /", bin()), input);
    check_replies(&said, n);
    assert_eq!(state(&out), before, "outside changed");
    assert_eq!(mode(&secret), 0o600);
    assert!(!lab.path("newdir").exists() && !lab.path("x").exists());
    assert_eq!(listing(&root), ["inside.txt", "link", "newdir"]);
    assert_eq!(mode(&root.join("inside.txt")) & 0o7000, 0);
}

/// A TCP relay to `to` counting the bytes sent from the client side.
fn counting_relay(to: u16) -> (u16, Arc<AtomicU64>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(down) = conn else { return };
            let Ok(up) = std::net::TcpStream::connect(("127.0.0.1", to)) else {
                return;
            };
            let (mut d2, mut u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
            let c = c.clone();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                let mut down = down;
                let mut up = up;
                while let Ok(n) = down.read(&mut buf) {
                    if n == 0 || up.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    c.fetch_add(n as u64, Ordering::Relaxed);
                }
                let _ = up.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut u2, &mut d2);
                let _ = d2.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (port, count)
}

fn pseudo(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v: Vec<u8> = Vec::with_capacity(n + 8);
    while v.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(n);
    v
}

/// Issue 14 item 6: one byte inserted at the start of a 64 MiB file sends
/// less than 1 MiB, counted on the wire (a relay between the client and
/// sshd) and in the run record; the result is the new file, exactly.
#[test]
fn one_byte_inserted_at_the_start_of_64_mib_sends_under_1_mib_over_ssh() {
    const MIB: u64 = 1 << 20;
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    let (port, sent) = counting_relay(s.port);
    let known = lab.path("known_hosts_relay");
    fs::write(&known, format!("[127.0.0.1]:{port} {}\n", s.host_pub())).unwrap();
    let big = pseudo(64 << 20, 11);
    lab.write("big.bin", &big);
    let y = format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: ssh://{}@127.0.0.1:{port}{}\n    \
         ssh: {{ identity: {}, known_hosts: {}, timeout: 30s, remote_helper: {}{} }}\n",
        user(),
        lab.dst().display(),
        s.key.display(),
        known.display(),
        bin(),
        client_yaml()
    );
    lab.config(&y);
    run(&lab, &["run", "web"]).code(0);
    assert!(
        sent.load(Ordering::Relaxed) > 64 * MIB,
        "the first copy goes whole"
    );
    let mut new = Vec::with_capacity(big.len() + 1);
    new.push(b'!');
    new.extend_from_slice(&big);
    drop(big);
    lab.write("big.bin", &new);
    let before = sent.load(Ordering::Relaxed);
    run(&lab, &["run", "web"]).code(0);
    let wire = sent.load(Ordering::Relaxed) - before;
    let rec = lab.last();
    assert_eq!(rec["files_transferred"], 1, "{rec}");
    let literal = rec["bytes_transferred"].as_u64().unwrap();
    assert!(literal < MIB, "literal data: {literal} bytes");
    assert!(wire < MIB, "on the wire: {wire} bytes");
    assert!(fs::read(lab.dst().join("big.bin")).unwrap() == new, "exact");
}

/// Several big changed files in one batch (with small ones between): the
/// last one's signature streams while its delta is sent, the others' are
/// read whole first; each file lands exact and only the changes are sent.
#[test]
fn several_big_files_in_one_run_go_as_deltas_and_land_exact() {
    const MIB: usize = 1 << 20;
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    force_helper(&s, &lab.dst());
    job(&lab, &s);
    let mut files: Vec<Vec<u8>> = (0..3)
        .map(|k| pseudo(9 * MIB + k * 1000, 20 + k as u64))
        .collect();
    for (k, f) in files.iter().enumerate() {
        lab.write(&format!("big{k}.bin"), f);
        lab.write(&format!("small{k}.txt"), format!("small {k}").as_bytes());
    }
    run(&lab, &["run", "web"]).code(0);
    equal(&lab);
    // one byte inserted at the start, the tail rewritten, a middle change
    files[0].insert(0, b'!');
    for b in &mut files[1][8 * MIB..] {
        *b = b.wrapping_add(1);
    }
    files[2][4 * MIB..4 * MIB + 5].copy_from_slice(b"HELLO");
    for (k, f) in files.iter().enumerate() {
        let big = format!("big{k}.bin");
        let (secs, _) = mtime(&lab.src().join(&big));
        lab.write(&big, f);
        lab.write(&format!("small{k}.txt"), format!("changed {k}").as_bytes());
        // over SSH the quick check compares whole seconds (as rsync's does):
        // a same-size rewrite in the first run's second would be skipped
        set_mtime(&lab.src().join(&big), secs + 10, 0);
    }
    run(&lab, &["run", "web"]).code(0);
    let rec = lab.last();
    assert_eq!(rec["files_transferred"], 6, "{rec}");
    let sent = rec["bytes_transferred"].as_u64().unwrap();
    assert!(
        sent < (2 * MIB) as u64,
        "only the changes are sent: {sent} bytes"
    );
    equal(&lab);
}
