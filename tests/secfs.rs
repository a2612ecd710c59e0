//! Attacks on the file system through symlinks and races, each performed
//! for real (issue 11, findings 1, 2 and 4): a hostile target tree, a
//! hostile source owner (the `nobody` user when the tests run as root), a
//! hostile holder of a helper's ssh key. Nothing outside the roots may be
//! written, deleted, chmod-ed or read.

mod common;

use common::sshd::{Sshd, ssh_job_helper};
use common::{BIN, Lab, is_root, listing, mode, rsync_diff, snapshot};
use std::fs;
use std::io::Write;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// An outside directory and a 0600 secret beside the lab's trees.
fn outside(lab: &Lab) -> (PathBuf, PathBuf) {
    let out = lab.path("outside");
    fs::create_dir_all(&out).unwrap();
    fs::write(out.join("gone.txt"), b"outside: must stay").unwrap();
    fs::write(out.join("keep.txt"), b"outside: keep").unwrap();
    let secret = lab.path("secret");
    fs::write(&secret, b"secret: 0600").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    (out, secret)
}

/// Finding 1: after a run, `dst/sub` becomes a symlink to a directory
/// outside and `dst/conf.txt` a symlink to a 0600 file; the source changes
/// (files in `sub` rewritten, added, deleted; `conf.txt` chmod-ed); the
/// next run, planned from a fresh listing or from the manifest, must not
/// write, delete or chmod anything outside, and a later run converges.
#[test]
fn symlinks_planted_in_the_target_are_never_written_through() {
    for extra in ["verify_interval: 0", "verify_interval: 1h"] {
        let lab = Lab::new();
        lab.job(&format!("delete: true\n{extra}"));
        lab.write("sub/a.txt", b"a1");
        lab.write("sub/gone.txt", b"to delete");
        lab.write("sub/deep/d.txt", b"d");
        lab.write("conf.txt", b"conf");
        lab.run(&["run", "web"]).code(0);
        let (out, secret) = outside(&lab);
        let before = snapshot(&out);
        let dst = lab.dst();
        fs::rename(dst.join("sub"), lab.path("sub.was")).unwrap();
        symlink(&out, dst.join("sub")).unwrap();
        fs::remove_file(dst.join("conf.txt")).unwrap();
        symlink(&secret, dst.join("conf.txt")).unwrap();

        lab.write("sub/a.txt", b"a2, longer");
        lab.write("sub/new.txt", b"new");
        lab.write("sub/deep/e.txt", b"e");
        fs::remove_file(lab.src().join("sub/gone.txt")).unwrap();
        let conf = lab.src().join("conf.txt");
        fs::set_permissions(&conf, fs::Permissions::from_mode(0o666)).unwrap();
        let r = lab.run(&["run", "web"]);

        assert_eq!(
            snapshot(&out),
            before,
            "{extra}: outside changed\n{}",
            r.stderr
        );
        assert_eq!(fs::read(&secret).unwrap(), b"secret: 0600", "{extra}");
        assert_eq!(mode(&secret), 0o600, "{extra}: the secret was chmod-ed");
        // the target converges (the symlinks are replaced, not followed)
        lab.run(&["run", "web"]);
        lab.run(&["run", "web"]).code(0);
        assert_eq!(rsync_diff(&lab.src(), &dst, &[]), "", "{extra}");
        assert!(fs::symlink_metadata(dst.join("sub")).unwrap().is_dir());
        assert_eq!(snapshot(&out), before, "{extra}");
        assert_eq!(mode(&secret), 0o600);
    }
}

/// Swap `dir/sub` for a symlink to `to` and back, again and again, until
/// `stop`; returns how many swaps were made.
fn swapper(dir: PathBuf, to: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let sub = dir.join("sub");
        let held = dir.with_file_name("sub.held");
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            if fs::symlink_metadata(&sub).is_ok_and(|m| m.is_dir())
                && fs::rename(&sub, &held).is_ok()
            {
                let _ = symlink(&to, &sub);
                n += 1;
                std::thread::sleep(Duration::from_micros(300));
                let _ = fs::remove_file(&sub);
                let _ = fs::rename(&held, &sub);
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        n
    })
}

fn many_files(lab: &Lab, n: usize) {
    for i in 0..n {
        lab.write(
            &format!("sub/f{i:05}.txt"),
            format!("file {i}\n").as_bytes(),
        );
    }
}

/// Run the job in the background while `dst/sub` is swapped for a symlink
/// to `out`; at the end nothing at all is in `out`.
fn race_target(lab: &Lab, out: &Path) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut child = lab.spawn(&["run", "web"]);
    // the racer starts once the run made `sub`
    let t = Instant::now();
    while !lab.dst().join("sub").exists() && t.elapsed() < Duration::from_secs(60) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let racer = swapper(lab.dst(), out.to_path_buf(), stop.clone());
    child.wait().unwrap();
    stop.store(true, Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    assert!(swaps > 0, "the racer never swapped");
    let leaked = listing(out);
    assert!(
        leaked.is_empty(),
        "{} entries written outside the target in {swaps} swaps, e.g. {:?}",
        leaked.len(),
        &leaked[..leaked.len().min(5)]
    );
}

/// Finding 1, racing: a target directory swapped for a symlink while
/// thousands of files are copied into it gets nothing outside the root.
#[test]
fn a_target_directory_swapped_during_a_big_copy_gets_nothing_outside() {
    let lab = Lab::new();
    lab.job("verify_interval: 0");
    many_files(&lab, 4000);
    let out = lab.path("outside");
    fs::create_dir(&out).unwrap();
    race_target(&lab, &out);
    // the run after the race converges
    lab.run(&["run", "web"]).code(0);
    assert_eq!(rsync_diff(&lab.src(), &lab.dst(), &[]), "");
    assert!(listing(&out).is_empty());
}

/// The same race against `syncjob helper` over a real sshd.
#[test]
fn a_target_directory_swapped_during_a_copy_through_the_remote_helper_gets_nothing_outside() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    ssh_job_helper(&lab, &s, "verify_interval: 0");
    many_files(&lab, 3000);
    let out = lab.path("outside");
    fs::create_dir(&out).unwrap();
    race_target(&lab, &out);
}

/// Finding 2: the owner of the source (the `nobody` user) swaps `sub` for
/// a symlink to a directory only root can read while root copies the tree.
#[test]
fn a_source_directory_swapped_by_its_owner_leaks_no_root_only_file() {
    if !is_root() {
        eprintln!("skipped: needs root (the attacker is the `nobody` user)");
        return;
    }
    let lab = Lab::new();
    fs::set_permissions(lab.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    // one stream: the files are copied in path order, one at a time
    lab.job("verify_interval: 0\nstreams: 1");
    // a big file first keeps the copy busy while `sub` is swapped
    let big = vec![7u8; 512 << 20];
    lab.write("a_big", &big);
    lab.write("sub/secret.txt", b"decoy");
    let private = common::root_only_secret(&lab);
    common::give_to_nobody(&lab.src());
    // the attacker, ready: renames `sub` and plants the link when told
    let script = common::ATTACKER_READY.to_string()
        + "os.rename(sys.argv[1] + '/sub', sys.argv[1] + '/sub.old')\nos.symlink(sys.argv[2], sys.argv[1] + '/sub')\n";
    let mut attacker = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", &script])
        .arg(lab.src())
        .arg(&private)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    common::await_ready(&mut attacker);
    let mut child = lab.spawn(&["run", "web"]);
    // once the big file is being written, `sub` becomes the link
    let t = Instant::now();
    let busy = || {
        fs::read_dir(lab.dst()).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".syncjob-tmp."))
        })
    };
    while !busy() && t.elapsed() < Duration::from_secs(60) {}
    attacker.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(
        attacker.wait().unwrap().success(),
        "the swap as nobody failed"
    );
    child.wait().unwrap();
    let got = fs::read(lab.dst().join("sub/secret.txt")).ok();
    assert_ne!(got.as_deref(), Some(&b"TOPSECRET"[..]), "the secret leaked");
    assert_ne!(
        got.as_deref(),
        Some(&b"decoy"[..]),
        "the swap came after the copy: the test proves nothing"
    );
    for n in listing(&lab.dst()) {
        let p = lab.dst().join(&n);
        if p.is_file() && !p.is_symlink() && n != "a_big" {
            assert_ne!(fs::read(&p).unwrap(), b"TOPSECRET", "{n} leaked");
        }
    }
    // also the scan: a run now sees `sub` as the link it is, copies it as one
    lab.run(&["run", "web"]).code(0);
    assert!(
        fs::symlink_metadata(lab.dst().join("sub"))
            .unwrap()
            .is_symlink()
    );
}

/// Records of the helper protocol for `fin` (relative to its root).
fn record(tmp: &[u8], fin: &[u8], mode: u32, owner: Option<(u32, u32)>, out: &mut Vec<u8>) {
    use syncjob::helper::proto::{FileHeader, chunk, end, header};
    header(
        &FileHeader {
            basis: false,
            tmp,
            fin,
            mode,
            mtime: 1_600_000_000,
            mtime_ns: 0,
            owner,
        },
        out,
    );
    chunk(b"attacker data", out);
    end(true, out);
}

/// The attacks of a client holding a key whose forced command is the
/// helper: one stream, one reply per record (an error each but the last).
fn hostile_stream(outside: &Path, secret: &Path) -> Vec<u8> {
    let mut s = Vec::new();
    let abs = outside.join("abs.txt");
    let abs_tmp = outside.join(".syncjob-tmp.1.1.abs.txt");
    let os = |p: &Path| p.as_os_str().as_encoded_bytes().to_vec();
    record(&os(&abs_tmp), &os(&abs), 0o644, None, &mut s);
    record(
        b"../.syncjob-tmp.1.1.x",
        b"../escaped.txt",
        0o644,
        None,
        &mut s,
    );
    record(
        b"d/../../.syncjob-tmp.1.1.x",
        b"d/../../escaped.txt",
        0o644,
        None,
        &mut s,
    );
    // through a symlink the attacker planted (or found) in the root
    record(
        b"link/.syncjob-tmp.1.1.x",
        b"link/via-link.txt",
        0o644,
        None,
        &mut s,
    );
    // a temporary name elsewhere than beside the final name
    record(b"../.syncjob-tmp.1.1.t", b"ok.txt", 0o644, None, &mut s);
    record(b"suid.syncjob", b"suid", 0o644, None, &mut s);
    record(b".syncjob-tmp.1.1.s", b"suid", 0o4755, None, &mut s);
    record(
        b".syncjob-tmp.1.1.g",
        b"sgid",
        0o2755,
        Some((0, 0)).filter(|_| !is_root()),
        &mut s,
    );
    // block hashes of any readable file, byte by byte
    syncjob::helper::proto::hashes_request(&os(secret), 4096, &mut s);
    syncjob::helper::proto::hashes_request(b"inside.txt", 1, &mut s);
    syncjob::helper::proto::hashes_request(b"link/keep.txt", 4096, &mut s);
    // and a plain file, which works
    record(b".syncjob-tmp.1.1.fine", b"fine.txt", 0o644, None, &mut s);
    s
}

/// Read the replies to [`hostile_stream`]: every attack refused, the last
/// record done.
fn check_refused(mut r: &[u8]) {
    use syncjob::helper::proto::{GREETING, read_hashes, read_reply};
    assert!(r.starts_with(GREETING), "{}", String::from_utf8_lossy(r));
    r = &r[GREETING.len()..];
    for k in 0..8 {
        let e = read_reply(&mut r).unwrap();
        assert!(e.is_err(), "record {k} was accepted");
    }
    for (k, block) in [4096, 1, 4096].into_iter().enumerate() {
        let h = read_hashes(&mut r, block).unwrap();
        assert!(h.is_err(), "hashes request {k} was answered");
    }
    read_reply(&mut r).unwrap().unwrap();
    assert!(r.is_empty());
}

fn helper_lab() -> (Lab, PathBuf, PathBuf, PathBuf) {
    let lab = Lab::new();
    let root = lab.path("root");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("inside.txt"), vec![1u8; 10_000]).unwrap();
    let (out, secret) = outside(&lab);
    symlink(&out, root.join("link")).unwrap();
    (lab, root, out, secret)
}

fn check_untouched(lab: &Lab, root: &Path, out: &Path, before: &[(String, Vec<u8>, u32)]) {
    assert_eq!(snapshot(out), before, "outside changed");
    assert!(!lab.path("escaped.txt").exists());
    assert_eq!(mode(&lab.path("secret")), 0o600);
    let inside = listing(root);
    assert_eq!(inside, ["fine.txt", "inside.txt", "link"], "{inside:?}");
}

/// Finding 4: `syncjob helper --root DIR` refuses paths outside DIR,
/// through symlinks, set-id modes and tiny hash blocks; without `--root`
/// it does not start.
#[test]
fn the_helper_refuses_escapes_setid_modes_and_tiny_blocks() {
    let (lab, root, out, secret) = helper_lab();
    let before = snapshot(&out);
    let mut child = Command::new(BIN)
        .args(["helper", "--root"])
        .arg(&root)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let input = hostile_stream(&out, &secret);
    let mut stdin = child.stdin.take().unwrap();
    let w = std::thread::spawn(move || stdin.write_all(&input));
    let o = child.wait_with_output().unwrap();
    w.join().unwrap().unwrap();
    assert!(o.status.success());
    check_refused(&o.stdout);
    check_untouched(&lab, &root, &out, &before);
    // no root, no helper
    let o = Command::new(BIN)
        .arg("helper")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--root"));
}

/// The same attacks through a real sshd where the key's forced command is
/// `syncjob helper --root DIR`, whatever command the client asks for.
#[test]
fn a_forced_command_helper_confines_a_hostile_client_over_ssh() {
    let (lab, root, out, secret) = helper_lab();
    let before = snapshot(&out);
    let s = Sshd::start(&lab.path("sshd"));
    let key = fs::read_to_string(s.dir.join("id_ed25519.pub")).unwrap();
    let forced = format!(
        "command=\"{BIN} helper --root {}\",restrict {key}",
        root.display()
    );
    fs::write(s.dir.join("authorized_keys"), forced).unwrap();
    let mut child = Command::new("ssh")
        .args(["-T", "-o", "BatchMode=yes", "-o"])
        .arg(format!("UserKnownHostsFile={}", s.known_hosts.display()))
        .arg("-i")
        .arg(&s.key)
        .args(["-p", &s.port.to_string()])
        .arg(format!("{}@127.0.0.1", common::sshd::user()))
        .arg(format!("{BIN} helper --root /"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input = hostile_stream(&out, &secret);
    let mut stdin = child.stdin.take().unwrap();
    let w = std::thread::spawn(move || {
        stdin.write_all(&input)?;
        stdin.flush()
    });
    let o = child.wait_with_output().unwrap();
    w.join().unwrap().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    check_refused(&o.stdout);
    check_untouched(&lab, &root, &out, &before);
}
