//! Real-time watch, end to end: the real binary (`syncjob watch`,
//! `syncjob daemon`), the kernel's inotify, a real sshd; equality checked
//! with `rsync -anc --delete`. Bounds are seconds, never tight.

mod common;

use common::sshd::Sshd;
use common::watch::{Proc, WAIT, converges, watch_records};
use common::{Lab, is_root, set_mtime, until};
use std::fs;
use std::process::Stdio;
use std::time::Duration;

#[test]
fn every_kind_of_change_is_sent_and_excluded_paths_are_ignored() {
    let lab = Lab::new();
    lab.write("keep.txt", b"keep");
    lab.write("cache/old", b"excluded");
    lab.job("delete: true\nexclude: [\"/cache/\", \"*.tmp\"]\nwatch: {delay: 0}");
    let p = Proc::start(&lab, &["watch", "web"], &[]);
    p.wait_for("watching");
    let (src, dst) = (lab.src(), lab.dst());
    let ex = ["--exclude=/cache/", "--exclude=*.tmp"];
    converges(&src, &dst, &ex, &p);

    // create; a deep tree made at once
    lab.write("new.txt", b"new");
    fs::create_dir_all(src.join("a/b/c")).unwrap();
    fs::write(src.join("a/b/c/f"), b"deep").unwrap();
    converges(&src, &dst, &ex, &p);
    assert_eq!(fs::read(dst.join("a/b/c/f")).unwrap(), b"deep");

    // an edit that keeps the size and the mtime is still sent
    set_mtime(&src.join("keep.txt"), 1_600_000_000, 0);
    converges(&src, &dst, &ex, &p);
    fs::write(src.join("keep.txt"), b"KEEP").unwrap();
    set_mtime(&src.join("keep.txt"), 1_600_000_000, 0);
    assert!(until(WAIT, || fs::read(dst.join("keep.txt")).unwrap() == b"KEEP"));

    // delete, rename a file, rename a directory
    fs::remove_file(src.join("new.txt")).unwrap();
    fs::rename(src.join("keep.txt"), src.join("kept.txt")).unwrap();
    fs::rename(src.join("a"), src.join("z")).unwrap();
    converges(&src, &dst, &ex, &p);
    assert!(!dst.join("a").exists());

    // file -> directory -> symlink -> file
    fs::remove_file(src.join("kept.txt")).unwrap();
    fs::create_dir(src.join("kept.txt")).unwrap();
    fs::write(src.join("kept.txt/in"), b"in").unwrap();
    converges(&src, &dst, &ex, &p);
    fs::remove_dir_all(src.join("kept.txt")).unwrap();
    std::os::unix::fs::symlink("z/b", src.join("kept.txt")).unwrap();
    converges(&src, &dst, &ex, &p);
    assert!(
        fs::symlink_metadata(dst.join("kept.txt"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    fs::remove_file(src.join("kept.txt")).unwrap();
    fs::write(src.join("kept.txt"), b"a file again").unwrap();
    converges(&src, &dst, &ex, &p);

    // excluded paths: not sent, and no batch at all
    // (the last batch's record may still be on its way: settle first)
    let mut before = watch_records(&lab).len();
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(1000));
        let now = watch_records(&lab).len();
        if now == before {
            break;
        }
        before = now;
    }
    lab.write("cache/new", b"x");
    lab.write("z/junk.tmp", b"x");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        watch_records(&lab).len(),
        before,
        "{:?}",
        watch_records(&lab)
    );
    assert!(!dst.join("cache/new").exists() && !dst.join("z/junk.tmp").exists());
    assert!(!dst.join("cache").exists());

    let recs = watch_records(&lab);
    assert!(recs.iter().all(|r| r["status"] == "ok"), "{recs:?}");
    assert!(
        recs[0]["reason"]
            .as_str()
            .unwrap()
            .contains("full sync: start")
    );
}

#[test]
fn the_source_root_removed_deletes_nothing_and_its_return_is_synced() {
    let lab = Lab::new();
    for i in 0..20 {
        lab.write(&format!("d/{i}"), b"x");
    }
    // max_delete lifted: the end deletes 19 of 20 entries, past the default
    lab.job("delete: true\nmax_delete: 100%\nwatch: {delay: 50ms}");
    let p = Proc::start(&lab, &["watch", "web"], &[]);
    p.wait_for("watching");
    converges(&lab.src(), &lab.dst(), &[], &p);
    fs::remove_dir_all(lab.src()).unwrap();
    p.wait_for("is gone");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(fs::read_dir(lab.dst().join("d")).unwrap().count(), 20);
    // an emptied root is held back too
    fs::create_dir(lab.src()).unwrap();
    p.wait_for("the source is back");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(fs::read_dir(lab.dst().join("d")).unwrap().count(), 20);
    lab.write("d/0", b"only this one");
    converges(&lab.src(), &lab.dst(), &[], &p);
    assert!(
        lab.log()
            .iter()
            .all(|r| r["files_deleted"].as_u64() == Some(0) || r["status"] == "ok"),
        "{:?}",
        lab.log()
    );
}

#[test]
fn the_watch_limit_is_a_clear_error_and_falls_back_to_full_syncs() {
    let lab = Lab::new();
    for i in 0..5 {
        lab.write(&format!("d{i}/f"), b"x");
    }
    lab.job("watch: true");
    let p = Proc::start(
        &lab,
        &["watch", "web"],
        &[("SYNCJOB_TEST_MAX_WATCHES", "2")],
    );
    p.wait_for("fs.inotify.max_user_watches");
    assert!(p.stderr().contains("needs 6 watches"), "{}", p.stderr());
    assert!(p.stderr().contains("falling back to a full sync every 60s"));
    // it did not stop: the start's full sync happened
    converges(&lab.src(), &lab.dst(), &[], &p);
    let shown = until(WAIT, || lab.run(&["status"]).stdout.contains("fallback"));
    assert!(shown, "{}", lab.run(&["status"]).stdout);
}

#[test]
fn a_stopped_ssh_target_catches_up_and_the_other_keeps_syncing() {
    let lab = Lab::new();
    let mut s = Sshd::start(&lab.path("sshd"));
    lab.write("a", b"1");
    let local = lab.path("local");
    let y = format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: [{}, {}]\n    {}\n    delete: true\n    watch: {{delay: 0}}\n",
        s.url(&lab.dst()),
        local.display(),
        s.ssh_yaml()
    );
    lab.config(&y);
    let p = Proc::start(&lab, &["watch", "web"], &[]);
    p.wait_for("watching");
    converges(&lab.src(), &lab.dst(), &[], &p);
    converges(&lab.src(), &local, &[], &p);
    // over ssh too: an edit keeping size and mtime is sent
    set_mtime(&lab.src().join("a"), 1_600_000_000, 0);
    converges(&lab.src(), &lab.dst(), &[], &p);
    fs::write(lab.src().join("a"), b"2").unwrap();
    set_mtime(&lab.src().join("a"), 1_600_000_000, 0);
    assert!(until(WAIT, || fs::read(lab.dst().join("a")).unwrap() == b"2"));
    // (and its mtime: the batch is over before the target goes down)
    converges(&lab.src(), &lab.dst(), &[], &p);

    s.kill();
    lab.write("b/new", b"while down");
    fs::remove_file(lab.src().join("a")).unwrap();
    converges(&lab.src(), &local, &[], &p);
    let down = until(WAIT, || {
        watch_records(&lab).iter().any(|r| {
            r["status"] == "failed" && r["reason"].as_str().unwrap_or("").contains("cannot reach")
        })
    });
    assert!(down, "{:?}", watch_records(&lab));
    assert!(lab.dst().join("a").exists());
    // still down: the local target keeps up with every change
    lab.write("c", b"more");
    converges(&lab.src(), &local, &[], &p);
    s.restart();
    converges(&lab.src(), &lab.dst(), &[], &p);
    // the target's state held while it was down (nothing was sent): its
    // pending paths were sent, no full sync was needed
    let fulls: Vec<_> = watch_records(&lab)
        .into_iter()
        .filter(|r| {
            r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("a batch failed"))
        })
        .collect();
    assert!(fulls.is_empty(), "{fulls:?}");
}

#[test]
fn kill_9_mid_batch_then_a_restart_converges() {
    let lab = Lab::new();
    lab.write("seed", b"x");
    lab.job("delete: true\nwatch: {delay: 0}");
    let mut p = Proc::start(&lab, &["watch", "web"], &[]);
    p.wait_for("watching");
    converges(&lab.src(), &lab.dst(), &[], &p);
    for i in 0..4000 {
        lab.write(&format!("many/{}/{i}", i % 40), &vec![b'z'; 2048]);
    }
    // killed while the batch is being applied
    assert!(until(WAIT, || lab.dst().join("many").exists()));
    p.kill9();
    // more changes while it is dead
    fs::remove_file(lab.src().join("seed")).unwrap();
    lab.write("after", b"after");
    let p = Proc::start(&lab, &["watch", "web"], &[]);
    p.wait_for("watching");
    converges(&lab.src(), &lab.dst(), &[], &p);
}

#[test]
fn the_daemon_runs_watched_jobs_and_status_shows_them() {
    let lab = Lab::new();
    lab.write("a", b"1");
    lab.job("delete: true\nwatch: {delay: 0}\nschedule: \"*/2 * * * * *\"");
    let mut d = Proc::start(&lab, &["daemon"], &[]);
    d.wait_for("watching");
    converges(&lab.src(), &lab.dst(), &[], &d);
    lab.write("b", b"2");
    converges(&lab.src(), &lab.dst(), &[], &d);
    // a second watcher of the same job is refused
    let second = lab.run(&["watch", "web"]);
    assert_ne!(second.code, 0);
    assert!(
        second.stderr.contains("already watched"),
        "{}",
        second.stderr
    );
    let st = lab.run(&["status"]);
    assert!(
        until(WAIT, || lab
            .run(&["status"])
            .stdout
            .contains("watch web: watching")),
        "{}",
        st.stdout
    );
    let list = lab.run(&["list", "--json"]);
    let row: serde_json::Value = serde_json::from_str(list.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(row["watch"]["delay_ms"], 0);
    assert!(
        row["watch"]["watching"]["watches"].as_u64().unwrap() >= 1,
        "{row}"
    );
    // the schedule beside watch: periodic full verification in the watcher
    let verified = until(WAIT, || {
        watch_records(&lab).iter().any(|r| {
            r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("periodic full verification"))
        })
    });
    assert!(verified, "{:?}", lab.log());
    assert!(
        lab.log().iter().all(|r| r["trigger"] == "watch"),
        "{:?}",
        lab.log()
    );
    assert_eq!(d.term(), Some(0));
}

/// sersync's own way of working: changes pushed to an rsync daemon module
/// as they happen (issue 15), through the same batches as other targets.
#[test]
fn watch_batches_reach_an_rsync_daemon_target() {
    let lab = Lab::new();
    let d = common::rsyncd::Rsyncd::start(&lab.path("rsyncd"));
    lab.write("index.html", b"<h1>v1</h1>\n");
    lab.write("gone.txt", b"to be deleted");
    common::rsyncd::rsync_job(&lab, &d, "delete: true\nwatch: {delay: 0}");
    let p = Proc::start(&lab, &["watch", "web"], &[]);
    p.wait_for("watching");
    let (src, dst) = (lab.src(), d.module.join("web"));
    converges(&src, &dst, &[], &p);
    let before = watch_records(&lab).len();

    // an edit, a deep new tree and a delete, each sent by a batch
    lab.write("index.html", b"<h1>v2</h1>\n");
    lab.write("release/a/b/c.txt", b"deep");
    fs::remove_file(src.join("gone.txt")).unwrap();
    converges(&src, &dst, &[], &p);
    assert_eq!(fs::read(dst.join("index.html")).unwrap(), b"<h1>v2</h1>\n");
    assert!(!dst.join("gone.txt").exists());
    // the record is appended once the batch is done (just after the files)
    let more = until(WAIT, || watch_records(&lab).len() > before);
    let recs = watch_records(&lab);
    assert!(more, "no batch record: {recs:?}");
    let last = recs.last().unwrap();
    assert_eq!(last["target"], d.url("web"), "{last}");
    assert_eq!(last["status"], "ok", "{last}");
}

/// Records appended after the first `n`, of batches (not full syncs).
fn batches_after(lab: &Lab, n: usize) -> Vec<serde_json::Value> {
    watch_records(lab)
        .into_iter()
        .skip(n)
        .filter(|r| {
            !r["reason"]
                .as_str()
                .is_some_and(|s| s.contains("full sync"))
        })
        .collect()
}

/// A renamed directory (many files and a big one) is renamed on each
/// target, local and over ssh, not sent again; a file moved and edited
/// just before still arrives; a move out of the tree deletes, one into
/// it creates.
#[test]
fn a_moved_directory_is_renamed_on_the_targets_not_sent_again() {
    moved_directory_renamed(false)
}

/// The same with the remote helper carrying the SSH target (`N` record).
#[test]
fn a_moved_directory_is_renamed_through_the_remote_helper() {
    moved_directory_renamed(true)
}

fn moved_directory_renamed(helper: bool) {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    for i in 0..300 {
        lab.write(&format!("rel/v1/f{i}"), &vec![b'a' + (i % 26) as u8; 8192]);
    }
    lab.write("rel/v1/big.bin", &vec![7u8; 24 << 20]);
    lab.write("rel/v1/sub/deep.txt", b"deep");
    lab.write("other/x", b"x");
    let local = lab.path("local");
    let y = format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: [{}, {}]\n    {}\n    delete: true\n    watch: {{delay: 50ms}}\n",
        s.url(&lab.dst()),
        local.display(),
        if helper {
            s.ssh_yaml_with(&format!(
                ", remote_helper: {}",
                env!("CARGO_BIN_EXE_syncjob")
            ))
        } else {
            s.ssh_yaml()
        }
    );
    lab.config(&y);
    let p = Proc::start(&lab, &["watch", "web"], &[]);
    p.wait_for("watching");
    let (src, dst) = (lab.src(), lab.dst());
    converges(&src, &dst, &[], &p);
    converges(&src, &local, &[], &p);
    let before = watch_records(&lab).len();
    let moved_bytes = 300 * 8192 + (24 << 20);

    // the release directory renamed; a file inside edited (same size)
    // just before: the edit must still arrive
    fs::write(src.join("rel/v1/f0"), vec![b'Z'; 8192]).unwrap();
    fs::rename(src.join("rel/v1"), src.join("rel/v2")).unwrap();
    converges(&src, &dst, &[], &p);
    converges(&src, &local, &[], &p);
    assert_eq!(fs::read(dst.join("rel/v2/f0")).unwrap(), vec![b'Z'; 8192]);
    assert!(!dst.join("rel/v1").exists() && !local.join("rel/v1").exists());
    let done = until(WAIT, || batches_after(&lab, before).len() >= 2);
    let recs = batches_after(&lab, before);
    assert!(done, "{recs:?}");
    assert!(recs.iter().all(|r| r["status"] == "ok"), "{recs:?}");
    let sent: u64 = recs
        .iter()
        .map(|r| r["bytes_transferred"].as_u64().unwrap())
        .sum();
    assert!(
        sent < moved_bytes / 100,
        "{sent} bytes sent for a move of {moved_bytes}: {recs:?}\n{}",
        p.stderr()
    );

    // moved out of the tree: deleted (delete: true); moved in: created
    let before = watch_records(&lab).len();
    fs::rename(src.join("other"), lab.path("outside")).unwrap();
    converges(&src, &dst, &[], &p);
    converges(&src, &local, &[], &p);
    fs::rename(lab.path("outside"), src.join("back")).unwrap();
    converges(&src, &dst, &[], &p);
    converges(&src, &local, &[], &p);
    assert_eq!(fs::read(local.join("back/x")).unwrap(), b"x");
    let recs = batches_after(&lab, before);
    assert!(recs.iter().all(|r| r["status"] == "ok"), "{recs:?}");
}

/// `syncjob watch` as the `nobody` user (the lab handed over to it).
/// The lab given to `nobody`, then `prepare` (as root), then `syncjob
/// ARGS` started as `nobody`.
fn start_as_nobody(lab: &Lab, args: &[&str], prepare: impl FnOnce()) -> Proc {
    let chown = std::process::Command::new("chown")
        .args(["-R", "nobody:nogroup"])
        .arg(lab.dir.path())
        .status()
        .unwrap();
    assert!(chown.success());
    prepare();
    let inner = lab.cmd();
    let err = lab.path("stderr-nobody.log");
    let mut c = std::process::Command::new("setpriv");
    c.args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .arg(inner.get_program())
        .args(inner.get_args())
        .args(args)
        .env_remove("SYNCJOB_CONFIG")
        .env("TZ", "UTC")
        .current_dir(lab.dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err).unwrap());
    Proc {
        child: c.spawn().unwrap(),
        err,
    }
}

/// A root-only file in the source of a watcher running as `nobody`:
/// logged once with its backoff, never a full sync, the other changes
/// keep flowing (the unreadable path goes with each batch), and once it
/// can be read it arrives.
#[test]
fn an_unreadable_source_file_is_retried_by_backoff_never_by_full_syncs() {
    if !is_root() {
        eprintln!("skipped: needs root (the watcher runs as `nobody`)");
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new();
    fs::set_permissions(lab.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    lab.write("a", b"1");
    lab.write("locked.txt", b"root only");
    lab.job("delete: true\nwatch: {delay: 0}");
    // root owns it, 0600: nobody cannot read it, from the start
    let locked = lab.src().join("locked.txt");
    let p = start_as_nobody(&lab, &["watch", "web"], || {
        std::os::unix::fs::chown(&locked, Some(0), Some(0)).unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o600)).unwrap();
    });
    p.wait_for("watching");
    p.wait_for("cannot be read");
    // (the test writes as root, the watcher as nobody: owners differ)
    let ex = ["--no-o", "--no-g", "--exclude=/locked.txt"];
    converges(&lab.src(), &lab.dst(), &ex, &p);
    // one made unreadable later, in a batch
    lab.write("later.txt", b"later");
    let later = lab.src().join("later.txt");
    fs::set_permissions(&later, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&later, Some(0), Some(0)).unwrap();
    for i in 0..5 {
        lab.write(&format!("n{i}"), b"new");
        std::thread::sleep(Duration::from_millis(300));
    }
    let ex = [
        "--no-o",
        "--no-g",
        "--exclude=/locked.txt",
        "--exclude=/later.txt",
    ];
    converges(&lab.src(), &lab.dst(), &ex, &p);
    assert!(!lab.dst().join("locked.txt").exists());
    // readable again: it arrives
    fs::set_permissions(&locked, fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&later, fs::Permissions::from_mode(0o644)).unwrap();
    converges(&lab.src(), &lab.dst(), &["--no-o", "--no-g"], &p);
    p.wait_for("could not be read are sent now");
    // each full sync says so on stderr: only the start's
    let fulls = p.stderr().matches("full sync:").count();
    assert_eq!(fulls, 1, "{}", p.stderr());
    let logged = p.stderr().matches("cannot be read").count();
    assert!(logged <= 3, "logged {logged} times:\n{}", p.stderr());
}

/// Issue 11, finding 2, for batches: the source's owner (`nobody`) swaps
/// a directory of a batch for a symlink to a root-only directory while
/// the batch (run by root) copies a big file first. Nothing from behind
/// the link reaches the target: the batch reads its paths through the
/// directory handles it scanned.
#[test]
fn a_dirty_directory_swapped_during_a_batch_leaks_no_root_only_file() {
    if !is_root() {
        eprintln!("skipped: needs root (the attacker is the `nobody` user)");
        return;
    }
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let lab = Lab::new();
    fs::set_permissions(lab.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    lab.write("seed", b"x");
    let private = common::root_only_secret(&lab);
    let staging = lab.path("staging");
    fs::create_dir_all(staging.join("sub")).unwrap();
    fs::write(staging.join("a_big"), vec![7u8; 512 << 20]).unwrap();
    fs::write(staging.join("sub/secret.txt"), b"decoy").unwrap();
    for d in [lab.src(), staging.clone()] {
        common::give_to_nobody(&d);
    }
    // one stream: path order, the big file first; delete off, so that a
    // leaked file would stay
    lab.job("streams: 1\nwatch: {delay: 300ms}");
    let p = Proc::start(&lab, &["watch", "web"], &[]);
    p.wait_for("watching");
    converges(&lab.src(), &lab.dst(), &["--no-o", "--no-g"], &p);
    let script = common::ATTACKER_READY.to_string()
        + "os.rename(sys.argv[1] + '/sub', sys.argv[1] + '/sub.old')\nos.symlink(sys.argv[2], sys.argv[1] + '/sub')\n";
    let mut attacker = std::process::Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", &script])
        .arg(lab.src())
        .arg(&private)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    common::await_ready(&mut attacker);
    // both moved in at once: one batch, `a_big` copied before `sub/...`
    fs::rename(staging.join("sub"), lab.src().join("sub")).unwrap();
    fs::rename(staging.join("a_big"), lab.src().join("a_big")).unwrap();
    let busy = || {
        fs::read_dir(lab.dst()).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".syncjob-tmp."))
        })
    };
    assert!(until(WAIT, busy), "the big copy never started");
    attacker.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(attacker.wait().unwrap().success(), "the swap failed");
    // the swap's own batch (or full sync) has run
    until(WAIT, || lab.dst().join("sub.old/secret.txt").exists());
    for n in common::listing(&lab.dst()) {
        let f = lab.dst().join(&n);
        let md = fs::symlink_metadata(&f).unwrap();
        if md.is_file() && n != "a_big" {
            assert_ne!(fs::read(&f).unwrap(), b"TOPSECRET", "{n} leaked");
        }
    }
    converges(&lab.src(), &lab.dst(), &["--no-o", "--no-g"], &p);
    // the batch met the swap (else the test proves nothing)
    let met = watch_records(&lab).iter().any(|r| {
        r["errors"]
            .as_array()
            .is_some_and(|es| es.iter().any(|e| e["path"] == "sub/secret.txt"))
    });
    assert!(
        met,
        "the swap came after the batch: {:?}",
        watch_records(&lab)
    );
}
