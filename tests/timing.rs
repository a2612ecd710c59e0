//! The daemon's timing with every-second jobs: firings on time, one record
//! per firing, the compact log of frequent jobs. In a test binary of their
//! own, so that no sibling test's bulk copy (daemon.rs and ops.rs copy
//! GiBs) competes with their runs for the disk while they are measured.

mod common;
use common::daemon::DaemonProc;
use common::*;
use std::fs;
use std::time::Duration;

#[test]
fn every_second_job_fires_on_each_second_and_carries_changes() {
    let lab = Lab::new();
    lab.write("a.txt", b"one");
    // a record for every firing (not the compact log of frequent jobs)
    lab.job("schedule: \"* * * * * *\"\nlog_noop: true");
    let mut d = DaemonProc::start(&lab);
    std::thread::sleep(Duration::from_millis(2500));
    lab.write("b.txt", b"two");
    std::thread::sleep(Duration::from_millis(2500));
    d.signal(libc::SIGTERM);
    assert_eq!(d.wait(Duration::from_secs(10)), 0);

    assert_eq!(fs::read(lab.dst().join("a.txt")).unwrap(), b"one");
    assert_eq!(
        fs::read(lab.dst().join("b.txt")).unwrap(),
        b"two",
        "the change arrived"
    );
    let mut log = lab.log();
    assert!(log.len() >= 4, "{} firings", log.len());
    // in firing order (a skip is logged at once, the run it overlapped
    // when it ends)
    log.sort_by_key(|r| parse_ts(r["scheduled_for"].as_str().unwrap()));
    let mut prev: Option<i64> = None;
    let mut lateness = Vec::new();
    for r in &log {
        assert_eq!(r["trigger"], "schedule");
        // a run that outlasted its second on a loaded box turns the next
        // firing into a logged skip; any other outcome is a failure
        let skipped = r["status"] == "skipped" && r["reason"] == "overlap";
        assert!(r["status"] == "ok" || skipped, "{r}");
        let due = parse_ts(r["scheduled_for"].as_str().unwrap());
        let started = parse_ts(r["started_at"].as_str().unwrap());
        assert_eq!(due.timestamp_subsec_nanos(), 0, "due on a second boundary");
        if let Some(p) = prev {
            assert_eq!(
                due.timestamp(),
                p + 1,
                "one record per second, none missed or doubled"
            );
        }
        prev = Some(due.timestamp());
        let late = (started - due).num_microseconds().unwrap();
        assert!(late >= 0, "never early: {late} µs");
        if !skipped {
            lateness.push(late);
        }
    }
    assert!(
        log.len() - lateness.len() <= 1,
        "at most one firing skipped for overlap: {log:?}"
    );
    // generous bounds for a loaded CI box (a coarse tick would still show
    // in the median); the benchmark reports real figures
    lateness.sort_unstable();
    let worst = *lateness.last().unwrap();
    assert!(worst < 750_000, "firing lateness {lateness:?} µs");
    let median = lateness[lateness.len() / 2];
    assert!(median < 150_000, "firing lateness {lateness:?} µs");
    let transfers: Vec<u64> = log
        .iter()
        .map(|r| r["files_transferred"].as_u64().unwrap())
        .collect();
    assert_eq!(transfers.iter().sum::<u64>(), 2, "{transfers:?}");
}

#[test]
fn frequent_jobs_log_compactly_and_log_noop_restores_every_record() {
    let lab = Lab::new();
    lab.write("a", b"1");
    lab.job("schedule: \"* * * * * *\"");
    let mut d = DaemonProc::start(&lab);
    // the first run (it carries `a`) is logged; two no-op firings after it
    assert!(until(Duration::from_secs(15), || !lab.log().is_empty()));
    std::thread::sleep(Duration::from_millis(2600));
    lab.write("b", b"2");
    assert!(until(Duration::from_secs(5), || lab
        .dst()
        .join("b")
        .exists()));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(d.stop(), 0);
    let log = lab.log();
    // the first run and the one that carried `b`: no-op firings counted
    let changed: Vec<_> = log
        .iter()
        .filter(|r| r["files_transferred"].as_u64() > Some(0))
        .collect();
    assert_eq!(changed.len(), 2, "{log:#?}");
    assert!(
        changed[1]["unlogged_noop"].as_u64().unwrap() >= 2,
        "{log:#?}"
    );
    assert!(log.len() <= 3, "{log:#?}");

    // log_noop: true appends every firing
    let lab = Lab::new();
    lab.write("a", b"1");
    lab.job("schedule: \"* * * * * *\"\nlog_noop: true");
    let mut d = DaemonProc::start(&lab);
    assert!(
        until(Duration::from_secs(15), || lab.log().len() >= 3),
        "{:#?}",
        lab.log()
    );
    assert_eq!(d.stop(), 0);
}
