//! Operator experience: list/status/log on real runs, progress on a terminal,
//! include files and ${ENV}, man page and completions, packaging.

mod common;
use common::*;
use std::fs;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn json_lines(s: &str) -> Vec<serde_json::Value> {
    s.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn status_shows_a_running_job_with_pid_and_trigger() {
    let lab = Lab::new();
    lab.write("a", b"a");
    lab.job("before: sleep 3");
    let mut child = lab.spawn(&["run", "web"]);
    let t = Instant::now();
    let v = loop {
        let r = lab.run(&["status", "--json"]);
        r.code(0);
        let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
        if !v["running"].as_array().unwrap().is_empty() {
            break v;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "never seen running");
        std::thread::sleep(Duration::from_millis(50));
    };
    let run = &v["running"][0];
    assert_eq!(run["job"], "web");
    assert_eq!(run["pid"], child.id());
    assert_eq!(run["trigger"], "manual");
    assert!(chrono::DateTime::parse_from_rfc3339(run["since"].as_str().unwrap()).is_ok());
    let human = lab.run(&["status"]);
    assert!(
        human.stdout.contains("web") && human.stdout.contains(&child.id().to_string()),
        "{}",
        human.stdout
    );
    assert!(
        human.stdout.contains("daemon: not running"),
        "{}",
        human.stdout
    );
    assert!(child.wait().unwrap().success());
    let v: serde_json::Value =
        serde_json::from_str(&lab.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(v["running"].as_array().unwrap().len(), 0, "lock released");
}

/// A record as the binary writes it, with its times moved.
fn record_at(template: &serde_json::Value, ts: &str, job: &str, status: &str) -> String {
    let mut r = template.clone();
    r["ts"] = ts.into();
    r["started_at"] = ts.into();
    r["finished_at"] = ts.into();
    r["job"] = job.into();
    r["status"] = status.into();
    r.to_string()
}

#[test]
fn log_filters_by_job_status_and_since_and_reads_a_big_log_from_the_end() {
    let lab = Lab::new();
    lab.write("a", b"a");
    lab.job("");
    lab.run(&["run", "web"]).code(0);
    let template = lab.last();
    // 1M old records, then four recent ones
    let old = record_at(&template, "2020-01-01T00:00:00.000000+00:00", "old", "ok");
    {
        let mut f = std::io::BufWriter::new(fs::File::create(lab.log_path()).unwrap());
        for _ in 0..1_000_000 {
            f.write_all(old.as_bytes()).unwrap();
            f.write_all(b"\n").unwrap();
        }
        let now = chrono::Utc::now();
        for (i, (job, st)) in [
            ("web", "ok"),
            ("api", "failed"),
            ("web", "failed"),
            ("api", "ok"),
        ]
        .iter()
        .enumerate()
        {
            let ts = (now - chrono::Duration::minutes(10 - i as i64))
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, false);
            writeln!(f, "{}", record_at(&template, &ts, job, st)).unwrap();
        }
    }
    let lines = |args: &[&str]| {
        let r = lab.run(args);
        r.code(0);
        json_lines(&r.stdout)
    };
    let recent = lines(&["log", "--json", "--since", "1h", "-n", "100"]);
    assert_eq!(recent.len(), 4, "only the recent records");
    assert_eq!(recent[0]["job"], "web");
    assert_eq!(recent[3]["job"], "api", "newest last");
    let web_failed = lines(&["log", "--json", "--job", "web", "--status", "failed"]);
    assert_eq!(web_failed.len(), 1);
    assert_eq!(web_failed[0]["job"], "web");
    assert_eq!(web_failed[0]["status"], "failed");
    let since = lines(&[
        "log",
        "--json",
        "--since",
        "2019-12-31T00:00:00Z",
        "-n",
        "6",
    ]);
    assert_eq!(since.len(), 6);
    assert_eq!(since[0]["job"], "old");

    // reading from the end: the last records of a 1M-line log come without
    // reading the whole file into memory (peak RSS of the child, which
    // wait4 reaps)
    #[allow(clippy::zombie_processes)]
    let mut child = lab
        .cmd()
        .args(["log", "-n", "3"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut out).unwrap();
    let mut status = 0;
    // SAFETY: rusage is plain integers, for which all zeroes is valid
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: plain wait4 on our own child with valid out-pointers.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut ru) };
    assert_eq!(pid, child.id() as i32);
    let log_mb = fs::metadata(lab.log_path()).unwrap().len() >> 20;
    let rss_mb = ru.ru_maxrss as u64 / 1024;
    assert!(log_mb > 200, "the log is big: {log_mb} MiB");
    assert!(rss_mb < 40, "peak RSS {rss_mb} MiB for a {log_mb} MiB log");
    assert_eq!(out.lines().count(), 4, "header and 3 rows:\n{out}");
    // the last three: api failed, web failed, api ok
    assert!(out.lines().nth(1).unwrap().contains(" api "), "{out}");
    assert!(out.lines().nth(2).unwrap().contains(" web "), "{out}");
    assert!(out.lines().nth(3).unwrap().contains(" ok "), "{out}");
}

/// Run under a pseudo-terminal with util-linux `script`.
fn on_tty(lab: &Lab, args: &str) -> String {
    let cmd = format!(
        "{BIN} -c {} --state-dir {} {args}",
        lab.path("jobs.yaml").display(),
        lab.state().display()
    );
    let out = Command::new("script")
        .args(["-qefc", &cmd, "/dev/null"])
        .env("TZ", "UTC")
        .stdin(Stdio::null())
        .output()
        .expect("script(1) from util-linux");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn progress_bar_on_a_terminal_only() {
    let lab = Lab::new();
    lab.write("a", &vec![7u8; 300_000]);
    lab.write("d/b", b"b");
    lab.job("");
    let tty = on_tty(&lab, "run web");
    assert!(
        tty.contains("2/2 files"),
        "bar with files done/total:\n{tty}"
    );
    assert!(tty.contains("ETA"), "{tty}");
    assert!(
        tty.contains("ok, 2 transferred"),
        "summary at the end:\n{tty}"
    );

    lab.write("c", b"c");
    let quiet = on_tty(&lab, "-q run web");
    assert!(!quiet.contains("files"), "no bar with -q:\n{quiet}");

    lab.write("e", b"e");
    let piped = lab.run(&["run", "web"]);
    piped.code(0);
    assert!(!piped.stdout.contains("ETA") && !piped.stderr.contains("ETA"));
    assert!(
        piped.stdout.contains("ok, 1 transferred"),
        "{}",
        piped.stdout
    );
}

#[test]
fn env_expansion_and_includes_work_end_to_end() {
    let lab = Lab::new();
    lab.write("a", b"a");
    fs::create_dir(lab.path("jobs.d")).unwrap();
    fs::write(
        lab.path("jobs.d/extra.yaml"),
        format!(
            "jobs:\n  extra:\n    source: {}\n    remote: ${{EXTRA_DST}}\n",
            lab.src().display()
        ),
    )
    .unwrap();
    lab.config("include: jobs.d/*.yaml\njobs:\n  web:\n    source: {src}\n    remote: {dst}\n");
    let dst2 = lab.path("extra-dst");
    let r = lab
        .cmd()
        .args(["run", "extra"])
        .env("EXTRA_DST", &dst2)
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(0), "{r:?}");
    assert_eq!(fs::read(dst2.join("a")).unwrap(), b"a");
    // unset: a clear error at the value, with the included file's name
    let r = lab.run(&["check"]);
    r.code(2);
    assert!(
        r.stderr.contains("jobs.d/extra.yaml:4:13: job extra")
            || r.stderr.contains("extra.yaml:4:13: "),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("EXTRA_DST is not set"), "{}", r.stderr);
}

#[test]
fn man_page_and_completions_are_generated_from_the_cli() {
    let lab = Lab::new();
    let out = lab.path("gen");
    let r = Command::new(BIN)
        .args(["generate", "--dir"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{r:?}");
    let man = fs::read_to_string(out.join("syncjob.1")).unwrap();
    assert!(
        man.starts_with(".ie") || man.contains(".TH syncjob"),
        "{man}"
    );
    for sub in ["run", "daemon", "check", "list", "next", "log", "status"] {
        assert!(man.contains(sub), "man page lists {sub}");
        let page = fs::read_to_string(out.join(format!("syncjob-{sub}.1"))).unwrap();
        assert!(page.contains(&format!("syncjob-{sub}")));
    }
    let bash = fs::read_to_string(out.join("syncjob.bash")).unwrap();
    assert!(bash.contains("complete") && bash.contains("--dry-run"));
    let zsh = fs::read_to_string(out.join("_syncjob")).unwrap();
    assert!(zsh.starts_with("#compdef syncjob"));
    let fish = fs::read_to_string(out.join("syncjob.fish")).unwrap();
    assert!(fish.contains("complete -c syncjob"));
    // the bash completion is valid bash
    let st = Command::new("bash")
        .arg("-n")
        .arg(out.join("syncjob.bash"))
        .status()
        .unwrap();
    assert!(st.success());
}
