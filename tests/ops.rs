//! Day-to-day operation (issue 12): closed pipes, one frozen target never
//! holding the others back, `check` knowing what can be known locally, a
//! default `max_delete`, vanished source files, temporary names, records.
mod common;

use common::daemon::DaemonProc;
use common::sshd;
use common::*;
use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

/// A pipe whose read end is already closed: every write to it is EPIPE.
fn closed_pipe() -> std::io::PipeWriter {
    let (r, w) = std::io::pipe().unwrap();
    drop(r);
    w
}

/// Run with stdout (or stderr) on a closed pipe; returns (code, stderr).
fn run_closed(lab: &Lab, args: &[&str], close_stderr: bool) -> (i32, String) {
    let mut c = lab.cmd();
    c.args(args);
    if close_stderr {
        c.stderr(closed_pipe()).stdout(Stdio::null());
    } else {
        c.stdout(closed_pipe()).stderr(Stdio::piped());
    }
    let out = c.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_closed_stdout_is_a_quiet_exit_never_a_panic() {
    let lab = Lab::new();
    for i in 0..50 {
        lab.write(&format!("d/f{i}"), b"x");
    }
    lab.job("schedule: \"*/2 * * * * *\"");
    for args in [
        &["next", "web", "-n", "100000"][..],
        &["check"],
        &["list"],
        &["run", "web", "--dry-run"],
        &["-v", "run", "web"],
        &["log"],
    ] {
        let (code, err) = run_closed(&lab, args, false);
        assert_ne!(code, 101, "{args:?} panicked: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    // the verbose run completed its transfer although nobody read its output
    assert_eq!(rsync_diff(&lab.src(), &lab.dst(), &[]), "");
    // a closed stderr too (a failing run prints its reason there)
    fs::remove_dir_all(lab.src()).unwrap();
    let (code, _) = run_closed(&lab, &["run", "web"], true);
    assert_eq!(code, 1);
}

#[test]
fn the_daemon_survives_a_closed_stderr() {
    let lab = Lab::new();
    lab.write("a", b"1");
    lab.job("schedule: \"* * * * * *\"\nlog_noop: true");
    let mut child = lab
        .cmd()
        .arg("daemon")
        .stdout(Stdio::null())
        .stderr(closed_pipe())
        .spawn()
        .unwrap();
    // it kept firing and logging
    assert!(
        until(Duration::from_secs(15), || lab.log().len() >= 2),
        "{:?}",
        lab.log()
    );
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon died when its stderr closed"
    );
    // SAFETY: kill has no memory preconditions; the pid is our child's.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            assert_eq!(st.code(), Some(0));
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_frozen_sshd_never_holds_the_other_targets_back() {
    let lab = Lab::new();
    let sshd = sshd::Sshd::start(&lab.path("sshd"));
    lab.write("f", b"v0");
    let local = lab.path("local");
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: [{}, {}]\n    {}\n    schedule: \"* * * * * *\"\n    retries: 3\n    verify_interval: 0\n",
        sshd.url(&lab.dst()),
        local.display(),
        sshd.ssh_yaml().replace("timeout: 10s", "timeout: 2s"),
    ));
    let mut d = DaemonProc::start(&lab);
    let both = |v: &[u8]| {
        fs::read(lab.dst().join("f")).ok().as_deref() == Some(v)
            && fs::read(local.join("f")).ok().as_deref() == Some(v)
    };
    assert!(
        until(Duration::from_secs(20), || both(b"v0")),
        "{}",
        d.err()
    );
    sshd.signal(libc::SIGSTOP);
    // every change reaches the healthy target at its next firings, while
    // the frozen one times out and is retried in the background
    for i in 1..=4 {
        let v = format!("v{i}");
        lab.write("f", v.as_bytes());
        let t = Instant::now();
        assert!(
            until(Duration::from_secs(4), || fs::read(local.join("f"))
                .ok()
                .as_deref()
                == Some(v.as_bytes())),
            "change {i} held back by the frozen target for {:?}\n{}",
            t.elapsed(),
            d.err()
        );
        std::thread::sleep(Duration::from_millis(1500));
    }
    let log = lab.log();
    let url = sshd.url(&lab.dst());
    let frozen: Vec<_> = log
        .iter()
        .filter(|r| r["target"] == url.as_str() && r["status"] == "failed")
        .collect();
    assert!(!frozen.is_empty(), "{log:#?}");
    for r in &frozen {
        // `timeout` bounds the whole opening (handshake included)
        assert!(r["duration_ms"].as_u64().unwrap() < 6000, "{r}");
    }
    // a busy or backing-off target is skipped for a firing (counted on its
    // next record in the compact log of a frequent job)
    assert!(
        log.iter().any(|r| r["target"] == url.as_str()
            && r["unlogged_skipped"].as_u64().unwrap_or(0) > 0),
        "{log:#?}"
    );
    sshd.signal(libc::SIGCONT);
    assert!(
        until(Duration::from_secs(60), || both(b"v4")),
        "{}",
        d.err()
    );
    assert_eq!(d.stop(), 0);
}

#[test]
fn check_reports_what_can_be_known_locally() {
    let lab = Lab::new();
    fs::write(lab.path("afile"), b"x").unwrap();
    lab.config(
        "jobs:\n  nosrc:\n    source: {dir}/missing\n    remote: {dst}\n  filesrc:\n    source: {dir}/afile\n    remote: {dst}\n  filedst:\n    source: {src}\n    remote: {dir}/afile/sub\n  nokey:\n    source: {src}\n    remote: me@127.0.0.1:/srv/x\n    ssh: {identity: {dir}/no-such-key}\n  good:\n    source: {src}\n    remote: {dst}\n",
    );
    let r = lab.run(&["check"]);
    r.code(1);
    for want in [
        "job nosrc: source",
        "missing does not exist",
        "job filesrc: source",
        "afile is not a directory",
        "job filedst: target",
        "job nokey: ssh.identity",
        "no-such-key",
    ] {
        assert!(r.stderr.contains(want), "{want}: {}", r.stderr);
    }
    assert!(!r.stderr.contains("job good"), "{}", r.stderr);
    lab.job("");
    lab.run(&["check"]).code(0);
}

#[test]
fn a_target_that_is_a_file_is_a_permanent_error_not_retried() {
    let lab = Lab::new();
    lab.write("a", b"1");
    fs::write(lab.dst(), b"i am a file").unwrap();
    lab.job("retries: 3");
    let t = Instant::now();
    let r = lab.run(&["run", "web"]);
    r.code(1);
    // three retries would have waited 1 + 2 + 4 s
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    let rec = lab.last();
    let reason = rec["reason"].as_str().unwrap();
    assert!(
        reason.contains("not a directory") && reason.contains("not retried"),
        "{reason}"
    );
    assert_eq!(fs::read(lab.dst()).unwrap(), b"i am a file");
}

#[test]
fn by_default_a_run_never_deletes_most_of_a_target() {
    // an unmounted mount point holding one stray file
    let lab = Lab::new();
    for i in 0..13 {
        lab.write(&format!("site/f{i}"), b"x");
    }
    lab.job("delete: true");
    lab.run(&["run", "web"]).code(0);
    fs::remove_dir_all(lab.src().join("site")).unwrap();
    lab.write("stray", b"s");
    let r = lab.run(&["run", "web"]);
    r.code(1);
    let reason = lab.last()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("max_delete (50%)"), "{reason}");
    assert!(reason.contains("nothing was deleted"), "{reason}");
    assert_eq!(fs::read_dir(lab.dst().join("site")).unwrap().count(), 13);
    assert_eq!(lab.last()["files_deleted"], 0);
    // a few deletions stay below the floor; `100%` lifts the guard
    lab.job("delete: true\nmax_delete: 100%");
    lab.run(&["run", "web"]).code(0);
    assert!(!lab.dst().join("site").exists());
    lab.job("delete: true\nmax_delete: 101%");
    let r = lab.run(&["check"]);
    r.code(2);
    assert!(
        r.stderr.contains("percentage from 0% to 100%"),
        "{}",
        r.stderr
    );
}

/// Run `web` while deleting `z/` from the source once the big file's copy
/// has begun; returns the run's record.
fn run_while_files_vanish(lab: &Lab) -> serde_json::Value {
    let f = fs::File::create(lab.src().join("a_big")).unwrap();
    f.set_len(1 << 30).unwrap();
    for i in 0..20 {
        lab.write(&format!("z/f{i}"), b"x");
    }
    let mut child = lab.spawn(&["run", "web"]);
    await_temp_file(&lab.dst(), Duration::from_secs(30));
    fs::remove_dir_all(lab.src().join("z")).unwrap();
    child.wait().unwrap();
    lab.last()
}

#[test]
fn vanished_source_files_are_a_counted_warning_not_a_failure() {
    let lab = Lab::new();
    lab.job("streams: 1");
    let rec = run_while_files_vanish(&lab);
    assert_eq!(rec["status"], "ok", "{rec:#}");
    assert_eq!(rec["files_vanished"], 20, "{rec:#}");
    assert!(rec["errors"].as_array().unwrap().is_empty(), "{rec:#}");
    assert!(
        rec["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["message"].as_str().unwrap().contains("vanished")),
        "{rec:#}"
    );
    // configurable: `vanished: fail`
    let lab = Lab::new();
    lab.job("streams: 1\nvanished: fail");
    let rec = run_while_files_vanish(&lab);
    assert_eq!(rec["status"], "failed", "{rec:#}");
    assert!(
        rec["reason"]
            .as_str()
            .unwrap()
            .contains("20 source file(s) vanished")
    );
}

#[test]
fn temporary_names_never_collide_with_real_names() {
    let lab = Lab::new();
    lab.write(".syncjob-tmp.fake", b"a real file");
    lab.write("d/.syncjob-tmp.notes", b"another");
    lab.write(".syncjob-tmp.1.2.x", b"looks like a temporary file");
    lab.job("delete: true");
    lab.run(&["run", "web"]).code(0);
    assert_eq!(
        fs::read(lab.dst().join(".syncjob-tmp.fake")).unwrap(),
        b"a real file"
    );
    assert_eq!(
        fs::read(lab.dst().join("d/.syncjob-tmp.notes")).unwrap(),
        b"another"
    );
    // the one name of the temporary form is not copied, and said so
    assert!(!lab.dst().join(".syncjob-tmp.1.2.x").exists());
    let rec = lab.last();
    assert!(
        rec["warnings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["path"] == ".syncjob-tmp.1.2.x"),
        "{rec:#}"
    );
    // a second run keeps the real files (not taken for stale temporaries)
    lab.run(&["run", "web", "--verify"]).code(0);
    assert!(lab.dst().join(".syncjob-tmp.fake").exists());
    assert_eq!(lab.last()["files_deleted"], 0);
}

#[test]
fn a_removed_stale_temporary_is_not_a_deletion() {
    let lab = Lab::new();
    lab.write("a", b"1");
    lab.job("delete: true");
    lab.run(&["run", "web"]).code(0);
    fs::write(lab.dst().join(".syncjob-tmp.999.0.a"), b"left by kill -9").unwrap();
    lab.run(&["run", "web", "--verify"]).code(0);
    assert!(!lab.dst().join(".syncjob-tmp.999.0.a").exists());
    assert_eq!(lab.last()["files_deleted"], 0, "{:#}", lab.last());
}

#[test]
fn skipped_firings_carry_scheduled_for_and_each_target_line_has_its_own_level() {
    let lab = Lab::new();
    lab.write("a", b"1");
    fs::write(lab.path("afile"), b"x").unwrap();
    let ok_dst = lab.dst();
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: [{}, {{dir}}/afile]\n    schedule: \"* * * * * *\"\n    before: sleep 1.5\n",
        ok_dst.display()
    ));
    let mut d = DaemonProc::start(&lab);
    // a run (1.5 s long) finished and a firing during it was skipped
    let seen = |st: &str| lab.log().iter().any(|r| r["status"] == st);
    assert!(until(Duration::from_secs(20), || seen("skipped") && seen("ok")));
    assert_eq!(d.stop(), 0);
    let log = lab.log();
    let skipped: Vec<_> = log.iter().filter(|r| r["status"] == "skipped").collect();
    assert!(!skipped.is_empty(), "{log:#?}");
    for r in &skipped {
        assert!(r["scheduled_for"].is_string(), "{r:#}");
    }
    let err = d.err();
    let ok_line = err
        .lines()
        .find(|l| l.contains(&format!("-> {}: ok", ok_dst.display())))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(ok_line.contains(" INFO "), "{err}");
    let failed_line = err
        .lines()
        .find(|l| l.contains("afile: failed"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(failed_line.contains(" ERROR "), "{err}");
}

#[test]
fn pre_1970_mtimes_survive_ssh_and_are_not_sent_again() {
    let lab = Lab::new();
    let sshd = sshd::Sshd::start(&lab.path("sshd"));
    lab.write("old.txt", b"from 1960");
    lab.write("d/older", b"from 1901");
    set_mtime(&lab.src().join("old.txt"), -315_619_200, 0);
    set_mtime(&lab.src().join("d/older"), -2_145_916_800, 500_000_000);
    sshd::ssh_job(&lab, &sshd, "");
    lab.run(&["run", "web"]).code(0);
    assert_eq!(mtime(&lab.dst().join("old.txt")).0, -315_619_200);
    assert_eq!(mtime(&lab.dst().join("d/older")).0, -2_145_916_800);
    lab.run(&["run", "web", "--verify"]).code(0);
    assert_eq!(lab.last()["files_transferred"], 0, "{:#}", lab.last());
}

/// Over SFTP a file that changed while it was copied is sent again alone
/// (not in a batch); an mtime SFTP cannot carry survives that path too.
#[test]
fn a_pre_1970_mtime_survives_the_retry_of_a_file_that_changed_while_copied() {
    let lab = Lab::new();
    let sshd = sshd::Sshd::start(&lab.path("sshd"));
    let big = lab.src().join("big");
    fs::File::create(&big).unwrap().set_len(512 << 20).unwrap();
    set_mtime(&big, -315_619_200, 0);
    sshd::ssh_job(&lab, &sshd, "streams: 1");
    let mut child = lab.spawn(&["run", "web"]);
    await_temp_file(&lab.dst(), Duration::from_secs(30));
    set_mtime(&big, -2_145_916_800, 0);
    child.wait().unwrap();
    let rec = lab.last();
    assert_eq!(rec["status"], "ok", "{rec:#}");
    let retried = rec["warnings"].as_array().unwrap().iter().any(|w| {
        let m = w["message"].as_str().unwrap();
        m.contains("changed while being copied; copied again")
    });
    assert!(retried, "the file was not sent again: {rec:#}");
    assert_eq!(mtime(&lab.dst().join("big")).0, -2_145_916_800);
    lab.run(&["run", "web", "--verify"]).code(0);
    assert_eq!(lab.last()["files_transferred"], 0, "{:#}", lab.last());
}

#[test]
fn messages_say_what_is_wrong_once_and_what_to_do() {
    let lab = Lab::new();
    lab.write("a", b"1");
    // a byte-order mark is dropped
    let yaml = format!(
        "\u{feff}jobs:\n  web:\n    source: {}\n    remote: {}\n",
        lab.src().display(),
        lab.dst().display()
    );
    fs::write(lab.path("jobs.yaml"), yaml).unwrap();
    lab.run(&["check"]).code(0);
    let bad = |extra: &str| {
        lab.job(extra);
        let r = lab.run(&["check"]);
        r.code(2);
        r.stderr
    };
    let e = bad("retries: -1");
    assert!(
        e.contains("`retries` must be a whole number (0 or more), found -1"),
        "{e}"
    );
    let e = bad("schedule: \"-1 * * * *\"");
    assert!(
        e.contains("minute field: \"-1\": negative values do not exist"),
        "{e}"
    );
    let e = bad("delet: true");
    assert!(
        e.contains("job web: unknown key `delet`; did you mean `delete`?"),
        "{e}"
    );
    assert_eq!(e.matches("web").count(), 1, "{e}");
    lab.job("");
    let r = lab.run(&["run"]);
    r.code(2);
    assert!(r.stderr.contains("--all"), "{}", r.stderr);
    let r = lab.run(&["log", "nosuchjob"]);
    r.code(2);
    assert!(
        r.stderr.contains("no job named \"nosuchjob\""),
        "{}",
        r.stderr
    );
    lab.run(&["log", "web"]).code(0);
}

#[test]
fn records_list_and_dry_runs_tell_the_real_story() {
    use std::os::unix::ffi::OsStrExt;
    let lab = Lab::new();
    lab.write("a", b"12345");
    lab.write("b", b"678");
    // two fifos (skipped with a warning naming them) whose names differ
    // only in a byte that is not UTF-8
    for name in [&b"caf\xe9"[..], b"caf\xff"] {
        let p = lab.src().join(std::ffi::OsStr::from_bytes(name));
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: c is a NUL-terminated path that outlives the call.
        let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
        assert_eq!(rc, 0);
    }
    let ok_dst = lab.dst();
    fs::write(lab.path("afile"), b"x").unwrap();
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: [{}, {{dir}}/afile]\n",
        ok_dst.display()
    ));
    // a dry run counts what it would transfer
    lab.run(&["run", "web", "--dry-run"]);
    let dry = lab
        .log()
        .into_iter()
        .find(|r| r["target"] == ok_dst.to_str().unwrap())
        .unwrap();
    assert_eq!(dry["status"], "dry_run");
    assert!(dry["files_transferred"].as_u64().unwrap() >= 2, "{dry:#}");
    assert!(dry["bytes_transferred"].as_u64().unwrap() >= 8, "{dry:#}");
    // a real run: one target ok, one failed
    lab.run(&["run", "web"]).code(1);
    // later firings skipped: `list` still shows the last real outcomes
    fs::create_dir_all(lab.state().join("locks")).unwrap();
    let held = fs::File::create(lab.state().join("locks/web.lock")).unwrap();
    held.lock().unwrap();
    lab.run(&["run", "web"]).code(75);
    drop(held);
    assert_eq!(lab.last()["status"], "skipped");
    let r = lab.run(&["list", "--json"]);
    r.code(0);
    let row: serde_json::Value = serde_json::from_str(r.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(row["last_status"], "failed", "{row:#}");
    assert_eq!(
        row["last_by_target"][ok_dst.to_str().unwrap()],
        "ok",
        "{row:#}"
    );
    // names that are not UTF-8 stay distinct and their bytes recoverable
    let text = fs::read_to_string(lab.log_path()).unwrap();
    assert!(text.contains("caf\\\\#351"), "{text}");
    assert!(text.contains("caf\\\\#377"), "{text}");
    assert!(!text.contains('\u{fffd}'), "{text}");
}

#[test]
fn a_target_may_carry_its_own_ssh_settings() {
    let lab = Lab::new();
    let sshd = sshd::Sshd::start(&lab.path("sshd"));
    lab.write("a", b"1");
    let other_key = lab.path("other_key");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&other_key)
        .status()
        .unwrap();
    assert!(st.success());
    let plain = sshd.url(&lab.path("plain"));
    let own = sshd.url(&lab.dst());
    // the job's key is not authorized; one target names the right one
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote:\n      - {plain}\n      - {{url: \"{own}\", ssh: {{identity: {}}}}}\n    ssh: {{identity: {}, known_hosts: {}, timeout: 10s}}\n",
        sshd.key.display(),
        other_key.display(),
        sshd.known_hosts.display(),
    ));
    lab.run(&["check"]).code(0);
    lab.run(&["run", "web"]).code(1);
    assert_eq!(fs::read(lab.dst().join("a")).unwrap(), b"1");
    assert!(!lab.path("plain").exists());
    let failed: Vec<_> = lab
        .log()
        .into_iter()
        .filter(|r| r["status"] == "failed")
        .collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["target"], plain.as_str());
    // a map without url, and ssh settings on a local target, are refused
    lab.config("jobs:\n  web:\n    source: {src}\n    remote:\n      - {ssh: {port: 22}}\n      - {url: {dst}, ssh: {port: 22}}\n");
    let r = lab.run(&["check"]);
    r.code(2);
    assert!(r.stderr.contains("needs `url`"), "{}", r.stderr);
    assert!(
        r.stderr.contains("`ssh` settings do not apply"),
        "{}",
        r.stderr
    );
}
