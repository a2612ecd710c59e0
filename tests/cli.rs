//! The command line: config errors, exit codes, locks between real
//! processes, the run log under concurrent writers, `next`, `log`, `list`.

mod common;
use common::*;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn check_reports_every_problem_with_file_line_column_and_job() {
    let lab = Lab::new();
    lab.config(
        "jobs:\n  web:\n    source: {src}\n    remote: {dst}\n    delet: true\n  api:\n    source: {src}\n    remote: host:/\n    schedule: \"*/0 * * * *\"\n  img:\n    source: {src}\n    remote: {dir}/img\n    exclude: [\"*.tmp\", \"[abc\"]\n",
    );
    let r = lab.run(&["check"]);
    r.code(2);
    let f = lab.path("jobs.yaml");
    let f = f.display();
    assert!(
        r.stderr.contains(&format!(
            "{f}:5:5: job web: unknown key `delet` in job web; did you mean `delete`?"
        )),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("{f}:8:13: job api: bad target")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains(&format!("{f}:9:15: job api: bad schedule")),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr.contains(&format!("{f}:13:24: job img: ")) && r.stderr.contains("[abc"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("4 problem(s)"), "{}", r.stderr);
    // nothing runs from an invalid file
    lab.run(&["run", "--all"]).code(2);
    assert!(!lab.dst().exists());
    assert!(lab.log().is_empty());
}

#[test]
fn check_ok_prints_a_summary() {
    let lab = Lab::new();
    lab.job("schedule: \"0 2 * * 1-5\"\ntimezone: Asia/Shanghai");
    let r = lab.run(&["check"]);
    r.code(0);
    assert!(r.stdout.contains("web: "), "{}", r.stdout);
    assert!(
        r.stdout.contains("0 2 * * 1-5 (Asia/Shanghai), next: "),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("1 job(s) ok"));
}

#[test]
fn yaml_syntax_error_and_missing_file() {
    let lab = Lab::new();
    fs::write(lab.path("jobs.yaml"), "jobs:\n  web:\n    source: [oops\n").unwrap();
    let r = lab.run(&["check"]);
    r.code(2);
    assert!(r.stderr.contains("jobs.yaml:"), "{}", r.stderr);
    assert!(r.stderr.contains("YAML syntax error"), "{}", r.stderr);

    let r = Command::new(BIN)
        .arg("check")
        .current_dir(lab.dir.path().join("src"))
        .env_remove("SYNCJOB_CONFIG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    if !std::path::Path::new("/etc/syncjob/jobs.yaml").exists() {
        assert_eq!(r.status.code(), Some(2));
        for want in ["$SYNCJOB_CONFIG", "./jobs.yaml", "/etc/syncjob/jobs.yaml"] {
            assert!(stderr.contains(want), "{stderr}");
        }
    }
    // $SYNCJOB_CONFIG is used when -c is absent
    lab.job("");
    let r = Command::new(BIN)
        .arg("check")
        .env("SYNCJOB_CONFIG", lab.path("jobs.yaml"))
        .output()
        .unwrap();
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
}

#[test]
fn target_root_slash_is_refused_at_check() {
    let lab = Lab::new();
    lab.config("jobs:\n  web:\n    source: {src}\n    remote: /\n");
    let r = lab.run(&["check"]);
    r.code(2);
    assert!(r.stderr.contains("`/` is refused"), "{}", r.stderr);
}

#[test]
fn usage_errors_exit_2() {
    let lab = Lab::new();
    lab.job("");
    lab.run(&["run"]).code(2);
    lab.run(&["frobnicate"]).code(2);
    lab.run(&["next", "--spec", "61 * * * *"]).code(2);
    lab.run(&["run", "web", "--wait=soon"]).code(2);
}

fn flock_holder(lock: &std::path::Path) -> std::process::Child {
    fs::create_dir_all(lock.parent().unwrap()).unwrap();
    // --no-fork: flock execs `sleep` itself, so the pid we kill holds the lock
    let child = Command::new("flock")
        .arg("--no-fork")
        .arg(lock)
        .args(["sleep", "60"])
        .spawn()
        .expect("flock(1) from util-linux");
    // wait until the lock is really held
    let t = Instant::now();
    loop {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(lock)
            .unwrap();
        match f.try_lock() {
            Err(std::fs::TryLockError::WouldBlock) => break,
            _ => {
                drop(f);
                assert!(
                    t.elapsed() < Duration::from_secs(10),
                    "flock never took the lock"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    child
}

#[test]
fn a_held_lock_exits_75_and_logs_skipped_and_dies_with_its_holder() {
    let lab = Lab::new();
    lab.write("a", b"a");
    lab.job("");
    let lock = lab.state().join("locks/web.lock");
    let mut holder = flock_holder(&lock);
    let r = lab.run(&["run", "web"]);
    r.code(75);
    assert!(r.stderr.contains("already running"), "{}", r.stderr);
    let rec = lab.last();
    assert_eq!(rec["status"], "skipped");
    assert_eq!(rec["reason"], "locked");
    assert!(!lab.dst().exists(), "a skipped run changes nothing");

    // --wait=SECS gives up after SECS
    let t = Instant::now();
    lab.run(&["run", "web", "--wait=1"]).code(75);
    assert!(t.elapsed() >= Duration::from_secs(1));

    // --wait (forever) proceeds as soon as the holder dies, even by kill -9
    let mut waiter = lab
        .cmd()
        .args(["run", "web", "--wait"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(waiter.try_wait().unwrap().is_none(), "still waiting");
    // SAFETY: kill(2) takes plain integers; a stale pid is ESRCH
    unsafe { libc::kill(holder.id() as i32, libc::SIGKILL) };
    holder.wait().unwrap();
    let st = waiter.wait().unwrap();
    assert_eq!(st.code(), Some(0));
    assert!(lab.dst().join("a").exists());
    lab.run(&["run", "web"]).code(0);
}

#[test]
fn two_concurrent_runs_of_one_job_never_both_transfer() {
    let lab = Lab::new();
    for i in 0..1500 {
        lab.write(&format!("d{}/f{i}", i % 30), format!("file {i}").as_bytes());
    }
    lab.job("");
    let a = lab
        .cmd()
        .args(["run", "web"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let b = lab
        .cmd()
        .args(["run", "web"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let ca = a.wait_with_output().unwrap().status.code().unwrap();
    let cb = b.wait_with_output().unwrap().status.code().unwrap();
    let mut codes = [ca, cb];
    codes.sort();
    assert!(codes == [0, 0] || codes == [0, 75], "{codes:?}");
    let log = lab.log();
    let transferred: u64 = log
        .iter()
        .map(|r| r["files_transferred"].as_u64().unwrap())
        .sum();
    assert_eq!(transferred, 1500, "each file transferred exactly once");
    let runs_with_transfers = log
        .iter()
        .filter(|r| r["files_transferred"].as_u64().unwrap() > 0)
        .count();
    assert_eq!(runs_with_transfers, 1);
}

#[test]
fn fifty_concurrent_processes_append_whole_lines() {
    let lab = Lab::new();
    lab.write("a", b"a");
    // three targets per run, so 150 records; dry runs take no lock, so all
    // fifty processes write at the same time
    lab.config("jobs:\n  web:\n    source: {src}\n    remote: [{dir}/t1, {dir}/t2, {dir}/t3]\n");
    let children: Vec<_> = (0..50)
        .map(|_| {
            lab.cmd()
                .args(["run", "web", "--dry-run", "-q"])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        assert_eq!(c.wait_with_output().unwrap().status.code(), Some(0));
    }
    let text = fs::read_to_string(lab.log_path()).unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 150);
    let mut run_ids = std::collections::HashSet::new();
    for l in lines {
        let v: serde_json::Value = serde_json::from_str(l).expect("a whole JSON object per line");
        for field in [
            "ts",
            "job",
            "run_id",
            "trigger",
            "target",
            "mode",
            "status",
            "reason",
            "started_at",
            "finished_at",
            "duration_ms",
            "files_scanned",
            "files_transferred",
            "bytes_transferred",
            "files_deleted",
            "errors",
            "host",
            "pid",
            "version",
        ] {
            assert!(v.get(field).is_some(), "field {field} in {l}");
        }
        run_ids.insert(v["run_id"].as_str().unwrap().to_string());
    }
    assert_eq!(run_ids.len(), 50, "one run id per process");
}

#[test]
fn next_prints_rfc3339_instants() {
    let lab = Lab::new();
    lab.job("schedule: \"30 2 * * *\"\ntimezone: America/New_York");
    let r = lab.run(&[
        "next",
        "web",
        "--from",
        "2026-03-07T12:00:00-05:00",
        "-n",
        "2",
    ]);
    r.code(0);
    assert_eq!(
        r.stdout,
        "2026-03-08T03:00:00-04:00\n2026-03-09T02:30:00-04:00\n"
    );
    let r = lab.run(&[
        "next",
        "--spec",
        "0 2 * * 1-5",
        "--tz",
        "UTC",
        "--from",
        "2026-11-21T00:00:00Z",
        "-n",
        "3",
    ]);
    r.code(0);
    assert_eq!(
        r.stdout,
        "2026-11-23T02:00:00+00:00\n2026-11-24T02:00:00+00:00\n2026-11-25T02:00:00+00:00\n"
    );
    lab.run(&["next", "--spec", "* * * * *", "--tz", "Mars/Olympus"])
        .code(2);
    lab.run(&["next", "--spec", "* * * * *", "--from", "yesterday"])
        .code(2);
}

#[test]
fn log_and_list_show_outcomes() {
    let lab = Lab::new();
    lab.write("a", b"a");
    lab.config(
        "jobs:\n  web:\n    source: {src}\n    remote: {dst}\n    schedule: \"@hourly\"\n  api:\n    source: {dir}/missing\n    remote: {dir}/api\n",
    );
    lab.run(&["run", "web"]).code(0);
    lab.run(&["run", "api"]).code(1);
    lab.run(&["run", "web"]).code(0);
    let r = lab.run(&["log", "--json", "-n", "2"]);
    r.code(0);
    let text = fs::read_to_string(lab.log_path()).unwrap();
    let raw: Vec<&str> = text.lines().collect();
    assert_eq!(
        r.stdout.lines().collect::<Vec<_>>(),
        raw[1..],
        "records passed through unchanged"
    );
    let r = lab.run(&["log", "web", "--json"]);
    assert_eq!(r.stdout.lines().count(), 2);
    let r = lab.run(&["log", "--status", "failed"]);
    r.code(0);
    assert!(
        r.stdout.contains("api") && !r.stdout.contains(" web "),
        "{}",
        r.stdout
    );
    let r = lab.run(&["list", "--json"]);
    r.code(0);
    let rows: Vec<serde_json::Value> = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows[0]["job"], "web");
    assert_eq!(rows[0]["last_status"], "ok");
    assert!(rows[0]["next"].as_str().unwrap().ends_with(":00:00+00:00"));
    assert_eq!(rows[1]["last_status"], "failed");
    assert!(rows[1]["next"].is_null());
    let r = lab.run(&["status", "--json"]);
    r.code(0);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["daemon"].is_null());
    assert_eq!(v["running"].as_array().unwrap().len(), 0);
}
