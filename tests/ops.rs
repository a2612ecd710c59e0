//! Day-to-day operation (issue 12): closed pipes, one frozen target never
//! holding the others back, `check` knowing what can be known locally, a
//! default `max_delete`, vanished source files, temporary names, records.
mod common;

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
    lab.job("schedule: \"* * * * * *\"");
    let mut child = lab
        .cmd()
        .arg("daemon")
        .stdout(Stdio::null())
        .stderr(closed_pipe())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the daemon died when its stderr closed"
    );
    // it kept firing and logging
    assert!(lab.log().len() >= 2, "{:?}", lab.log());
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
