//! The real daemon process: firing on time, reload, shutdown.

mod common;
use common::daemon::DaemonProc;
use common::*;
use std::fs;
use std::io::Write;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn a_second_daemon_on_the_same_state_dir_refuses_to_start() {
    let lab = Lab::new();
    lab.job("schedule: \"@hourly\"");
    let mut d = DaemonProc::start(&lab);
    let r = lab.run(&["daemon"]);
    r.code(2);
    assert!(
        r.stderr.contains("another daemon already runs"),
        "{}",
        r.stderr
    );
    let s = lab.run(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&s.stdout).unwrap();
    assert_eq!(v["daemon"]["pid"], d.child.id());
    d.signal(libc::SIGINT);
    assert_eq!(d.wait(Duration::from_secs(10)), 0);
}

#[test]
fn sighup_reloads_and_an_invalid_file_keeps_the_old_jobs() {
    let lab = Lab::new();
    lab.write("a.txt", b"a");
    lab.job("schedule: \"* * * * * *\"\nlog_noop: true");
    let mut d = DaemonProc::start(&lab);
    // an invalid file: refused, old job keeps firing
    let good = fs::read_to_string(lab.path("jobs.yaml")).unwrap();
    fs::write(lab.path("jobs.yaml"), good.replace("schedule", "schedul")).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for("reload refused", Duration::from_secs(5));
    assert!(d.err().contains("unknown key `schedul`"), "{}", d.err());
    let n = lab.log().len();
    assert!(
        until(Duration::from_secs(10), || lab.log().len() >= n + 2),
        "old job still fires"
    );
    // a valid file: a new target from now on
    let dst = lab.dst().display().to_string();
    let dst2 = lab.path("dst2").display().to_string();
    fs::write(lab.path("jobs.yaml"), good.replace(&dst, &dst2)).unwrap();
    d.signal(libc::SIGHUP);
    d.wait_for("reloaded", Duration::from_secs(5));
    let dst2 = lab.path("dst2/a.txt");
    assert!(
        until(Duration::from_secs(10), || fs::read(&dst2)
            .is_ok_and(|c| c == b"a")),
        "the reloaded job syncs to its new target"
    );
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(10)), 0);
}

fn big_file(lab: &Lab, name: &str, mib: usize) -> Vec<u8> {
    let mut block = vec![0u8; 1 << 20];
    for (i, b) in block.iter_mut().enumerate() {
        *b = (i * 7 + i / 251) as u8;
    }
    let mut f = fs::File::create(lab.src().join(name)).unwrap();
    for i in 0..mib {
        block[0] = i as u8;
        f.write_all(&block).unwrap();
    }
    block
}

#[test]
fn sigterm_mid_run_lets_the_transfer_finish_within_shutdown_timeout() {
    let lab = Lab::new();
    big_file(&lab, "big.bin", 256);
    lab.config("shutdown_timeout: 60s\njobs:\n  web:\n    source: {src}\n    remote: {dst}\n    schedule: \"* * * * * *\"\n");
    let mut d = DaemonProc::start(&lab);
    await_temp_file(&lab.dst(), Duration::from_secs(10));
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(60)), 0);
    let got = fs::metadata(lab.dst().join("big.bin")).unwrap().len();
    assert_eq!(got, 256 << 20, "the running transfer completed");
    assert!(
        listing(&lab.dst())
            .iter()
            .all(|n| !n.contains(".syncjob-tmp."))
    );
    assert_eq!(lab.last()["status"], "ok");
    assert!(d.err().contains("daemon stopped"));
}

#[test]
fn sigterm_past_shutdown_timeout_aborts_cleanly() {
    let lab = Lab::new();
    big_file(&lab, "big.bin", 768);
    lab.config("shutdown_timeout: 0s\njobs:\n  web:\n    source: {src}\n    remote: {dst}\n    schedule: \"* * * * * *\"\n");
    let mut d = DaemonProc::start(&lab);
    await_temp_file(&lab.dst(), Duration::from_secs(10));
    let t = Instant::now();
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(15)), 0);
    // the file is whole at its final name or absent; no temporary is left
    match fs::metadata(lab.dst().join("big.bin")) {
        Ok(m) => assert_eq!(m.len(), 768 << 20),
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound),
    }
    assert!(
        listing(&lab.dst())
            .iter()
            .all(|n| !n.contains(".syncjob-tmp.")),
        "{:?}",
        listing(&lab.dst())
    );
    let rec = lab.last();
    assert_eq!(rec["status"], "failed", "{rec}");
    assert!(
        rec["reason"].as_str().unwrap().contains("shutdown"),
        "{rec}"
    );
    assert!(t.elapsed() < Duration::from_secs(5), "aborted promptly");
}

#[test]
fn overlapping_firings_are_skipped_or_queued() {
    // each run takes 1.5 s (its before hook sleeps), the job fires every second
    let lab = Lab::new();
    lab.write("a.txt", b"a");
    lab.job("schedule: \"* * * * * *\"\nbefore: sleep 1.5");
    let mut d = DaemonProc::start(&lab);
    std::thread::sleep(Duration::from_millis(4200));
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(60)), 0);
    let log = lab.log();
    let skipped: Vec<_> = log.iter().filter(|r| r["status"] == "skipped").collect();
    assert!(!skipped.is_empty(), "{log:#?}");
    assert!(skipped.iter().all(|r| r["reason"] == "overlap"));
    // never two runs at once: the ok runs do not overlap in time
    let mut runs: Vec<_> = log
        .iter()
        .filter(|r| r["status"] == "ok")
        .map(|r| {
            (
                parse_ts(r["started_at"].as_str().unwrap()),
                parse_ts(r["finished_at"].as_str().unwrap()),
            )
        })
        .collect();
    assert!(runs.len() >= 2, "{log:#?}");
    runs.sort();
    for w in runs.windows(2) {
        assert!(w[0].1 <= w[1].0, "runs overlapped: {w:?}");
    }

    // queue: a firing during a run runs once right after it, nothing skipped
    let lab = Lab::new();
    lab.write("a.txt", b"a");
    lab.job("schedule: \"* * * * * *\"\nbefore: sleep 1.5\noverlap: queue");
    let mut d = DaemonProc::start(&lab);
    std::thread::sleep(Duration::from_millis(4200));
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(60)), 0);
    let log = lab.log();
    assert!(log.iter().all(|r| r["status"] != "skipped"), "{log:#?}");
    let queued = log
        .iter()
        .filter(|r| r["status"] == "ok" && r.get("scheduled_for").is_none())
        .count();
    assert!(queued >= 1, "a queued run followed: {log:#?}");
}

#[test]
fn catch_up_runs_a_missed_firing_at_start() {
    for catch_up in [false, true] {
        // the daemon below lives 1.5 s: not across a full hour, when
        // @hourly would fire on its own
        let into_hour = chrono::Utc::now().timestamp() % 3600;
        if into_hour > 3600 - 5 {
            std::thread::sleep(Duration::from_secs((3600 - into_hour + 1) as u64));
        }
        let lab = Lab::new();
        lab.write("a.txt", b"a");
        lab.job(&format!(
            "schedule: \"@hourly\"\ntimezone: UTC\ncatch_up: {catch_up}"
        ));
        // the last logged run was three hours ago: hourly firings were missed
        lab.run(&["run", "web", "--dry-run"]).code(0);
        let mut rec = lab.last();
        let then = (chrono::Utc::now() - chrono::Duration::hours(3)).to_rfc3339();
        rec["started_at"] = then.clone().into();
        rec["ts"] = then.into();
        fs::write(lab.log_path(), format!("{rec}\n")).unwrap();
        let mut d = DaemonProc::start(&lab);
        std::thread::sleep(Duration::from_millis(1500));
        d.signal(libc::SIGTERM);
        assert_eq!(d.wait(Duration::from_secs(10)), 0);
        assert_eq!(
            lab.dst().join("a.txt").exists(),
            catch_up,
            "catch_up: {catch_up}"
        );
        if catch_up {
            assert!(d.err().contains("running it now (catch_up)"));
        }
    }
}

#[test]
fn notifies_systemd_ready_when_notify_socket_is_set() {
    let lab = Lab::new();
    lab.job("schedule: \"@hourly\"");
    let sock_path = lab.path("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut child = lab
        .cmd()
        .arg("daemon")
        .env("NOTIFY_SOCKET", &sock_path)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    // SAFETY: kill(2) takes plain integers; a stale pid is ESRCH
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

#[test]
fn a_failed_run_is_retried_after_retry_interval() {
    let lab = Lab::new();
    lab.write("a.txt", b"one");
    let marker = lab.path("ready");
    // fire once, four to five seconds from now (a daily spec at that
    // second): time for the daemon to start first, even on a busy machine
    let at = chrono::Utc::now() + chrono::Duration::seconds(5);
    let spec = at.format("%S %M %H * * *").to_string();
    lab.job(&format!(
        "schedule: \"{spec}\"\ntimezone: UTC\nretry_interval: 1s\nbefore: test -e {}",
        marker.display()
    ));
    let mut d = DaemonProc::start(&lab);
    let t = Instant::now();
    while lab.log().is_empty() {
        assert!(t.elapsed() < Duration::from_secs(15), "{}", d.err());
        std::thread::sleep(Duration::from_millis(20));
    }
    fs::write(&marker, b"").unwrap();
    while lab.log().len() < 2 {
        assert!(t.elapsed() < Duration::from_secs(20), "{}", d.err());
        std::thread::sleep(Duration::from_millis(20));
    }
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(10)), 0);
    let log = lab.log();
    assert_eq!(log.len(), 2, "{log:?}");
    assert_eq!(log[0]["trigger"], "schedule");
    assert_eq!(log[0]["status"], "failed");
    assert_eq!(log[1]["trigger"], "retry");
    assert_eq!(log[1]["status"], "ok", "{}", log[1]);
    let gap = parse_ts(log[1]["started_at"].as_str().unwrap())
        - parse_ts(log[0]["finished_at"].as_str().unwrap());
    assert!(
        gap >= chrono::Duration::milliseconds(900),
        "retried after the interval, not at once: {gap}"
    );
    assert_eq!(fs::read(lab.dst().join("a.txt")).unwrap(), b"one");
}
