//! Metrics and health of a real daemon, scraped over HTTP, checked with
//! `promtool check metrics` and against the run log; `syncjob metrics`.

mod common;
use common::daemon::{DaemonProc, http_get, promtool_check, sample};
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const TWO_JOBS: &str = "metrics: 127.0.0.1:0
metrics_textfile: {dir}/textfile
jobs:
  web:
    source: {src}
    remote: {dst}
    schedule: \"* * * * * *\"
    stale_after: 1h
    log_noop: true
  broken:
    source: {dir}/missing
    remote: {dir}/dst2
    schedule: \"* * * * * *\"
    log_noop: true
";

/// Poll `/healthz` until its status is `want`; returns the body.
fn healthz_until(addr: &str, want: u16, limit: Duration) -> String {
    let t = Instant::now();
    loop {
        let (code, body) = http_get(addr, "/healthz");
        if code == want {
            return body;
        }
        assert!(t.elapsed() < limit, "/healthz stayed {code}: {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn scrape_after_ok_and_failed_runs_matches_the_run_log() {
    let lab = Lab::new();
    lab.write("a.txt", b"hello");
    std::fs::create_dir(lab.path("textfile")).unwrap();
    lab.config(TWO_JOBS);
    let mut d = DaemonProc::start(&lab);
    let addr = d.metrics_addr();
    std::thread::sleep(Duration::from_millis(1500));
    lab.write("b.txt", b"more data");
    std::thread::sleep(Duration::from_millis(1500));
    // stop the firings (manual-only jobs), let the last runs end
    lab.config(&TWO_JOBS.replace("    schedule: \"* * * * * *\"\n", ""));
    d.signal(libc::SIGHUP);
    d.wait_for("reloaded", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(1500));

    let (code, text) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    promtool_check(&text);

    // every counter equals the sum over the run log's records
    let log = lab.log();
    let mut runs: BTreeMap<(String, String, String), f64> = BTreeMap::new();
    let mut sums: BTreeMap<(String, String), [f64; 3]> = BTreeMap::new();
    let mut run_ids: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in &log {
        let (job, target, status) = (
            r["job"].as_str().unwrap().to_string(),
            r["target"].as_str().unwrap().to_string(),
            r["status"].as_str().unwrap().to_string(),
        );
        *runs
            .entry((job.clone(), target.clone(), status.clone()))
            .or_default() += 1.0;
        let s = sums.entry((job.clone(), target)).or_default();
        for (i, k) in ["bytes_transferred", "files_transferred", "files_deleted"]
            .iter()
            .enumerate()
        {
            s[i] += r[k].as_u64().unwrap() as f64;
        }
        if status != "skipped" {
            run_ids
                .entry(job)
                .or_default()
                .insert(r["run_id"].as_str().unwrap().into());
        }
    }
    assert!(
        runs.keys().any(|(j, _, s)| j == "web" && s == "ok"),
        "{log:?}"
    );
    assert!(runs.keys().any(|(j, _, s)| j == "broken" && s == "failed"));
    for ((job, target, status), n) in &runs {
        let series =
            format!("syncjob_runs_total{{job=\"{job}\",status=\"{status}\",target=\"{target}\"}}");
        assert_eq!(sample(&text, &series), Some(*n), "{series}\n{text}");
    }
    for ((job, target), s) in &sums {
        for (i, name) in ["bytes_transferred", "files_transferred", "files_deleted"]
            .iter()
            .enumerate()
        {
            let series = format!("syncjob_{name}_total{{job=\"{job}\",target=\"{target}\"}}");
            assert_eq!(sample(&text, &series), Some(s[i]), "{series}");
        }
    }
    let web_bytes = sums[&("web".to_string(), lab.dst().display().to_string())][0];
    assert_eq!(web_bytes, 14.0, "hello + more data, each sent once");
    for (job, ids) in &run_ids {
        let series = format!("syncjob_run_duration_seconds_count{{job=\"{job}\"}}");
        assert_eq!(sample(&text, &series), Some(ids.len() as f64), "{series}");
    }
    let last = sample(
        &text,
        &format!(
            "syncjob_last_success_timestamp_seconds{{job=\"web\",target=\"{}\"}}",
            lab.dst().display()
        ),
    )
    .expect("web succeeded");
    let now = chrono::Utc::now().timestamp() as f64;
    assert!((now - 10.0..=now + 1.0).contains(&last), "{last} vs {now}");
    assert!(!text.contains("last_success_timestamp_seconds{job=\"broken\""));
    assert_eq!(sample(&text, "syncjob_running{job=\"web\"}"), Some(0.0));
    assert_eq!(
        sample(&text, "syncjob_next_run_timestamp_seconds{job=\"web\"}"),
        None,
        "manual-only now"
    );
    assert_eq!(
        sample(
            &text,
            &format!(
                "syncjob_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )
        ),
        Some(1.0)
    );
    assert!(
        !text.contains("syncjob_watch_"),
        "no watched job, no watch values"
    );
    assert!(
        !text.contains("syncjob_cluster"),
        "no cluster, no cluster values"
    );

    // the failed job makes the daemon unhealthy, with the reason
    let (code, body) = http_get(&addr, "/healthz");
    assert_eq!(code, 503, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "unhealthy");
    let reasons = v["reasons"].to_string();
    assert!(reasons.contains("job broken"), "{reasons}");
    assert!(
        reasons.contains("does not exist") || reasons.contains("missing"),
        "{reasons}"
    );
    assert!(!reasons.contains("job web"), "{reasons}");
    assert_eq!(http_get(&addr, "/nothing").0, 404);

    // metrics_textfile: the same families, for node_exporter
    let tf = std::fs::read_to_string(lab.path("textfile/syncjob.prom")).unwrap();
    promtool_check(&tf);
    assert!(tf.contains("syncjob_runs_total{job=\"web\",status=\"ok\""));
    d.stop();
    assert_eq!(
        listing(&lab.path("textfile")),
        ["syncjob.prom"],
        "no temporary left"
    );
}

#[test]
fn healthz_turns_503_on_failure_and_when_stale() {
    let lab = Lab::new();
    lab.write("a.txt", b"x");
    let cfg = "metrics: 127.0.0.1:0\njobs:\n  web:\n    source: {src}\n    remote: {dst}\n    stale_after: 3s\n    schedule: \"* * * * * *\"\n";
    lab.config(cfg);
    let d = DaemonProc::start(&lab);
    let addr = d.metrics_addr();
    let body = healthz_until(&addr, 200, Duration::from_secs(5));
    assert!(body.contains("\"status\":\"ok\""), "{body}");

    // the source vanishes: the runs fail
    std::fs::rename(lab.src(), lab.path("away")).unwrap();
    let body = healthz_until(&addr, 503, Duration::from_secs(5));
    assert!(
        body.contains("job web") && body.contains("last run failed"),
        "{body}"
    );
    std::fs::rename(lab.path("away"), lab.src()).unwrap();
    healthz_until(&addr, 200, Duration::from_secs(5));

    // no more firings: 3 s after the last success the job is stale
    lab.config(&cfg.replace("    schedule: \"* * * * * *\"\n", ""));
    d.signal(libc::SIGHUP);
    d.wait_for("reloaded", Duration::from_secs(5));
    let t = Instant::now();
    let body = healthz_until(&addr, 503, Duration::from_secs(8));
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "not stale at once: {body}"
    );
    assert!(
        body.contains("last success") && body.contains("stale_after 3 s"),
        "{body}"
    );
}

#[test]
fn metrics_command_rebuilds_the_metrics_from_the_run_log() {
    let lab = Lab::new();
    lab.write("a.txt", b"abc");
    lab.config(
        "jobs:\n  web:\n    source: {src}\n    remote: {dst}\n  broken:\n    source: {dir}/missing\n    remote: {dir}/d2\n",
    );
    lab.run(&["run", "web"]).code(0);
    lab.run(&["run", "web"]).code(0);
    lab.run(&["run", "broken"]).code(1);
    let dir = lab.path("tf");
    std::fs::create_dir(&dir).unwrap();
    lab.run(&["metrics", "--textfile", dir.to_str().unwrap()])
        .code(0);
    let text = std::fs::read_to_string(dir.join("syncjob.prom")).unwrap();
    promtool_check(&text);
    let dst = lab.dst().display().to_string();
    let ok = format!("syncjob_runs_total{{job=\"web\",status=\"ok\",target=\"{dst}\"}}");
    assert_eq!(sample(&text, &ok), Some(2.0), "{text}");
    let bytes = format!("syncjob_bytes_transferred_total{{job=\"web\",target=\"{dst}\"}}");
    assert_eq!(sample(&text, &bytes), Some(3.0));
    assert_eq!(
        sample(&text, "syncjob_run_duration_seconds_count{job=\"web\"}"),
        Some(2.0)
    );
    assert_eq!(sample(&text, "syncjob_running{job=\"web\"}"), Some(0.0));
    assert!(text.contains("syncjob_runs_total{job=\"broken\",status=\"failed\""));
    assert_eq!(listing(&dir), ["syncjob.prom"]);
    // without --textfile: the same text on stdout
    let out = lab.run(&["metrics"]);
    out.code(0);
    assert_eq!(sample(&out.stdout, &ok), Some(2.0));
}

#[test]
fn check_refuses_bad_metrics_and_cluster_settings() {
    let lab = Lab::new();
    lab.config(
        "metrics: localhost\ncluster:\n  etcd: [https://e:2379, http://e]\n  ttl: 1s\n  prefix: nope\njobs:\n  web:\n    source: {src}\n    remote: {dst}\n    stale_after: soon\n",
    );
    let r = lab.run(&["check"]);
    r.code(2);
    for want in [
        "jobs.yaml:1:10: `metrics`: \"localhost\" is not an address",
        "jobs.yaml:3:10: `cluster.etcd`: \"https://e:2379\"",
        "jobs.yaml:3:26: `cluster.etcd`: \"http://e\"",
        "jobs.yaml:4:8: `cluster.ttl`",
        "jobs.yaml:5:11: `cluster.prefix`",
        "jobs.yaml:10:18: job web: `stale_after`",
    ] {
        assert!(r.stderr.contains(want), "missing {want:?} in\n{}", r.stderr);
    }
    lab.config(
        "metrics: 127.0.0.1:9750\ncluster: {etcd: http://127.0.0.1:2379, ttl: 5s, prefix: /syncjob/shop}\njobs:\n  web:\n    source: {src}\n    remote: {dst}\n    stale_after: 10m\n",
    );
    lab.run(&["check"]).code(0);
}

#[test]
fn a_metrics_address_in_use_stops_the_daemon_with_a_clear_error() {
    let lab = Lab::new();
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    lab.config(&format!(
        "metrics: 127.0.0.1:{port}\njobs:\n  web:\n    source: {{src}}\n    remote: {{dst}}\n"
    ));
    let r = lab.run(&["daemon"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("cannot listen for metrics on 127.0.0.1:{port}")),
        "{}",
        r.stderr
    );
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn an_endless_request_header_does_not_grow_the_daemon_or_block_the_others() {
    use std::io::Write;
    let lab = Lab::new();
    lab.config("metrics: 127.0.0.1:0\njobs:\n  web:\n    source: {src}\n    remote: {dst}\n");
    let d = DaemonProc::start(&lab);
    let addr = d.metrics_addr();
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    let before = rss_kib(d.child.id());
    // a header line that never ends: 64 MiB without a newline
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nX-Long: ").unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    for _ in 0..64 {
        if s.write_all(&chunk).is_err() {
            break; // the server closed the connection: as it should
        }
        sent += chunk.len();
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss_kib(d.child.id()).saturating_sub(before);
    assert!(
        grown < 16 * 1024,
        "daemon grew by {grown} KiB after {sent} bytes of header"
    );
    // the others are still served meanwhile
    assert_eq!(http_get(&addr, "/healthz").0, 200);
}

/// A watched job reports into the daemon's metrics: its watches, backlog
/// and lag, and its batches' records (runs, files, last success).
#[test]
fn a_watched_job_reports_watches_backlog_and_batches() {
    let lab = Lab::new();
    lab.write("a.txt", b"x");
    lab.write("d/e/f.txt", b"y");
    let cfg = "metrics: 127.0.0.1:0\njobs:\n  web:\n    source: {src}\n    remote: {dst}\n    watch: {delay: 0}\n    stale_after: 1h\n";
    lab.config(cfg);
    let d = DaemonProc::start(&lab);
    let addr = d.metrics_addr();
    let dst = lab.dst().display().to_string();
    let ok = format!("syncjob_runs_total{{job=\"web\",status=\"ok\",target=\"{dst}\"}}");
    let files = format!("syncjob_files_transferred_total{{job=\"web\",target=\"{dst}\"}}");
    let until = |what: &dyn Fn(&str) -> bool| {
        let t = Instant::now();
        loop {
            let (_, text) = http_get(&addr, "/metrics");
            if what(&text) {
                return text;
            }
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "never:\n{text}\n{}",
                d.err()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    // the start's full sync: 2 files; the root, d and d/e are watched
    let text = until(&|t| sample(t, &files) == Some(2.0));
    assert!(
        sample(&text, "syncjob_watches{job=\"web\"}") >= Some(3.0),
        "{text}"
    );
    let runs = sample(&text, &ok).unwrap();
    // a change: a batch sends it (and may send again what shares its
    // directory), nothing is left pending
    lab.write("d/new.txt", b"z");
    let text = until(&|t| sample(t, &files) >= Some(3.0));
    assert_eq!(std::fs::read(lab.dst().join("d/new.txt")).unwrap(), b"z");
    assert!(sample(&text, &ok) > Some(runs), "{text}");
    let text = until(&|t| sample(t, "syncjob_watch_pending_paths{job=\"web\"}") == Some(0.0));
    assert_eq!(
        sample(&text, "syncjob_watch_overflows_total{job=\"web\"}"),
        Some(0.0)
    );
    assert!(sample(&text, "syncjob_watch_lag_seconds{job=\"web\"}").is_some());
    promtool_check(&text);
    let (code, body) = http_get(&addr, "/healthz");
    assert_eq!(code, 200, "{body}");
}
