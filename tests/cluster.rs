//! Several real daemons sharing one jobs file through a real etcd: each
//! firing runs exactly once, a killed daemon's jobs move within ttl + 3 s
//! (ttl + 2 and a second of slack for a loaded box), and nothing starts
//! while etcd is down.

mod common;
use common::daemon::{DaemonProc, http_get, sample};
use common::etcd::{Etcd, Proxy};
use common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

const TTL: i64 = 3;

/// `${ETCD_URL}` for the CLI runs of the partition test (its daemons get
/// their own in their environment).
static ETCD_URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn cluster_config(lab: &Lab, etcd: &str, jobs: usize) {
    cluster_config_ttl(lab, etcd, jobs, TTL)
}

fn cluster_config_ttl(lab: &Lab, etcd: &str, jobs: usize, ttl: i64) {
    let mut y = format!(
        "metrics: 127.0.0.1:0\ncluster:\n  etcd: [{etcd}]\n  ttl: {ttl}s\n  prefix: /syncjob/test\njobs:\n"
    );
    // every firing is logged (the run log proves each ran exactly once)
    for i in 0..jobs {
        y.push_str(&format!(
            "  j{i}:\n    source: {{src}}\n    remote: {{dir}}/dst{i}\n    schedule: \"* * * * * *\"\n    log_noop: true\n"
        ));
    }
    lab.config(&y);
}

fn start(lab: &Lab, n: usize) -> Vec<DaemonProc> {
    (0..n)
        .map(|i| {
            DaemonProc::start_with(
                lab,
                &lab.path(&format!("state{i}")),
                &lab.log_path(),
                &i.to_string(),
                &[],
            )
        })
        .collect()
}

/// `syncjob status --json`'s owners, as the CLI reads them from etcd.
fn owners(lab: &Lab) -> BTreeMap<String, String> {
    let r = Run::from(
        lab.cmd()
            .env("ETCD_URL", ETCD_URL.get().map(String::as_str).unwrap_or(""))
            .args(["status", "--json"])
            .output()
            .unwrap(),
    );
    r.code(0);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    v["cluster"]
        .as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(j, o)| Some((j.clone(), o["owner"].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

/// Wait until every job has an owner and the owners stay the same for 2 s.
fn settled(lab: &Lab, jobs: usize) -> BTreeMap<String, String> {
    let t = Instant::now();
    let mut last = BTreeMap::new();
    let mut since = Instant::now();
    loop {
        let o = owners(lab);
        if o != last {
            last = o;
            since = Instant::now();
        } else if last.len() == jobs && since.elapsed() > Duration::from_secs(2) {
            return last;
        }
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "owners never settled: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn ts(v: &serde_json::Value, k: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(v[k].as_str().unwrap())
        .unwrap()
        .timestamp()
}

/// Scheduled runs per (job, due second), with their owners.
fn firings(lab: &Lab) -> BTreeMap<(String, i64), Vec<String>> {
    let mut m: BTreeMap<(String, i64), Vec<String>> = BTreeMap::new();
    for r in lab.log() {
        if r["trigger"] != "schedule" || r["status"] == "skipped" {
            continue;
        }
        assert_eq!(r["status"], "ok", "{r}");
        let owner = r["owner"]
            .as_str()
            .expect("cluster records carry the owner");
        assert!(r["lock_revision"].as_i64().unwrap() > 0, "{r}");
        m.entry((
            r["job"].as_str().unwrap().to_string(),
            ts(&r, "scheduled_for"),
        ))
        .or_default()
        .push(owner.to_string());
    }
    m
}

fn assert_no_double(f: &BTreeMap<(String, i64), Vec<String>>) {
    for (k, owners) in f {
        assert_eq!(
            owners.len(),
            1,
            "firing {k:?} ran {} times: {owners:?}",
            owners.len()
        );
    }
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[test]
fn each_firing_runs_once_across_three_daemons_and_a_killed_ones_jobs_move() {
    let lab = Lab::new();
    lab.write("a.txt", b"x");
    let etcd = Etcd::start(lab.dir.path());
    const JOBS: usize = 8;
    cluster_config(&lab, &etcd.url, JOBS);
    let mut ds = start(&lab, 3);
    let owned = settled(&lab, JOBS);
    let ids: BTreeSet<&String> = owned.values().collect();
    assert!(ids.len() >= 2, "jobs spread over the daemons: {owned:?}");

    // a window of whole seconds: every job fires once per second, once in all
    let from = now() + 1;
    std::thread::sleep(Duration::from_secs(6));
    let to = now() - 1;
    let f = firings(&lab);
    assert_no_double(&f);
    // a firing skipped because the previous run outlasted its second (a
    // loaded box) was handled too
    let overlapped: BTreeSet<(String, i64)> = lab
        .log()
        .iter()
        .filter(|r| r["status"] == "skipped" && r["reason"] == "overlap")
        .map(|r| {
            (
                r["job"].as_str().unwrap().to_string(),
                ts(r, "scheduled_for"),
            )
        })
        .collect();
    for i in 0..JOBS {
        let mut skips = 0;
        for s in from..to {
            let key = (format!("j{i}"), s);
            skips += usize::from(overlapped.contains(&key));
            assert!(
                f.contains_key(&key) || overlapped.contains(&key),
                "j{i} did not run for second {s} (window {from}..{to})"
            );
        }
        assert!(skips <= 1, "j{i}: {skips} firings skipped for overlap");
    }
    // list shows the same owners as status
    let r = lab.run(&["list", "--json"]);
    for line in r.stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let job = v["job"].as_str().unwrap();
        assert_eq!(
            v["owner"]["owner"].as_str(),
            Some(owned[job].as_str()),
            "{v}"
        );
        assert!(v["owner"]["lock_revision"].as_i64().unwrap() > 0);
    }
    // status and the records agree on the owner
    for ((job, s), o) in &f {
        if (from..to).contains(s) {
            assert_eq!(&o[0], &owned[job], "{job} at {s}");
        }
    }

    // kill -9 the daemon owning the most jobs
    let mut count: BTreeMap<&String, usize> = BTreeMap::new();
    for o in owned.values() {
        *count.entry(o).or_default() += 1;
    }
    let (victim, _) = count.iter().max_by_key(|(_, c)| **c).unwrap();
    let victim = victim.to_string();
    let pid: u32 = victim.rsplit(':').next().unwrap().parse().unwrap();
    let vi = ds.iter().position(|d| d.child.id() == pid).unwrap();
    let killed_at = now();
    // SAFETY: kill(2) on a daemon this test started has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    ds[vi].child.wait().unwrap();
    std::thread::sleep(Duration::from_secs((TTL + 4) as u64));

    let f = firings(&lab);
    assert_no_double(&f);
    let moved: Vec<&String> = owned
        .iter()
        .filter(|(_, o)| **o == victim)
        .map(|(j, _)| j)
        .collect();
    assert!(!moved.is_empty());
    for job in moved {
        let first = f
            .iter()
            .filter(|((j, s), o)| j == job && *s > killed_at && o[0] != victim)
            .map(|((_, s), _)| *s)
            .min()
            .unwrap_or_else(|| panic!("{job} never ran again after the kill"));
        assert!(
            first <= killed_at + TTL + 3,
            "{job} resumed at {first}, killed at {killed_at}, ttl {TTL}"
        );
    }
    // no record from the dead daemon after its death
    assert!(
        !f.iter()
            .any(|((_, s), o)| *s > killed_at + 1 && o[0] == victim)
    );
    for (i, d) in ds.iter_mut().enumerate() {
        if i != vi {
            d.stop();
        }
    }
}

#[test]
fn nothing_starts_while_etcd_is_down_and_jobs_resume_when_it_is_back() {
    let lab = Lab::new();
    lab.write("a.txt", b"x");
    let mut etcd = Etcd::start(lab.dir.path());
    const JOBS: usize = 3;
    cluster_config(&lab, &etcd.url, JOBS);
    let mut ds = start(&lab, 2);
    settled(&lab, JOBS);
    let addr = ds[0].metrics_addr();
    let (code, text) = http_get(&addr, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        sample(&text, "syncjob_cluster_etcd_up"),
        Some(1.0),
        "{text}"
    );

    etcd.kill();
    let down = Instant::now();
    let down_at = chrono::Utc::now();
    // within FRESH (2 s) + a tick both daemons stop starting jobs
    std::thread::sleep(Duration::from_secs(3));
    // (1 s for a decision made in time to be stamped on a loaded box)
    let grace = down_at + chrono::Duration::milliseconds(3000);
    std::thread::sleep(Duration::from_secs(4));
    let late: Vec<serde_json::Value> = lab
        .log()
        .into_iter()
        .filter(|r| {
            chrono::DateTime::parse_from_rfc3339(r["started_at"].as_str().unwrap()).unwrap() > grace
        })
        .collect();
    assert!(late.is_empty(), "runs started with etcd down: {late:?}");
    for d in &ds {
        assert!(
            d.err().contains("no cluster job starts here"),
            "{}",
            d.err()
        );
    }
    let (code, body) = http_get(&addr, "/healthz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("cluster:"), "{body}");
    let (_, text) = http_get(&addr, "/metrics");
    assert_eq!(sample(&text, "syncjob_cluster_etcd_up"), Some(0.0));
    let r = lab.run(&["list"]);
    assert!(
        r.stdout.contains("owners unknown: etcd unreachable"),
        "{}",
        r.stdout
    );

    etcd.restart();
    let back = now();
    let t = Instant::now();
    loop {
        let f = firings(&lab);
        let resumed = (0..JOBS)
            .filter(|i| f.keys().any(|(j, s)| *j == format!("j{i}") && *s > back))
            .count();
        if resumed == JOBS {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "jobs did not resume: {resumed}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(down.elapsed() > Duration::from_secs(7));
    assert_no_double(&firings(&lab));
    assert_eq!(http_get(&addr, "/healthz").0, 200);
    for d in ds.iter_mut() {
        d.stop();
    }
}

#[test]
fn a_daemon_cut_off_from_etcd_stops_and_its_jobs_move_without_a_double_run() {
    let lab = Lab::new();
    lab.write("a.txt", b"x");
    let etcd = Etcd::start(lab.dir.path());
    let proxy = Proxy::start(&etcd.url);
    const JOBS: usize = 10;
    // one jobs file; the etcd URL comes from each daemon's environment
    cluster_config(&lab, "\"${ETCD_URL}\"", JOBS);
    let mut cut = DaemonProc::start_with(
        &lab,
        &lab.path("state-cut"),
        &lab.log_path(),
        "cut",
        &[("ETCD_URL", &proxy.url)],
    );
    let mut other = DaemonProc::start_with(
        &lab,
        &lab.path("state-other"),
        &lab.log_path(),
        "other",
        &[("ETCD_URL", &etcd.url)],
    );
    ETCD_URL.set(etcd.url.clone()).unwrap();
    let owned = settled(&lab, JOBS);
    let cut_id = format!(
        "{}:{}",
        owned.values().next().unwrap().rsplit_once(':').unwrap().0,
        cut.child.id()
    );
    let cut_jobs: Vec<&String> = owned
        .iter()
        .filter(|(_, o)| **o == cut_id)
        .map(|(j, _)| j)
        .collect();
    assert!(
        !cut_jobs.is_empty() && cut_jobs.len() < JOBS,
        "spread: {owned:?}"
    );

    proxy.set_cut(true);
    let cut_at = chrono::Utc::now();
    let cut_sec = cut_at.timestamp();
    std::thread::sleep(Duration::from_secs((TTL + 4) as u64));
    let f = firings(&lab);
    assert_no_double(&f);
    // FRESH (2 s), and 1 s for a decision made in time to be stamped on
    // a loaded box
    let grace = cut_at + chrono::Duration::milliseconds(3000);
    for r in lab.log() {
        let started =
            chrono::DateTime::parse_from_rfc3339(r["started_at"].as_str().unwrap()).unwrap();
        assert!(
            !(r["owner"] == cut_id.as_str() && started > grace),
            "the cut-off daemon started a run: {r}"
        );
    }
    for job in &cut_jobs {
        let first = f
            .iter()
            .filter(|((j, s), o)| j == *job && *s > cut_sec && o[0] != cut_id)
            .map(|((_, s), _)| *s)
            .min()
            .unwrap_or_else(|| panic!("{job} never moved"));
        assert!(
            first <= cut_sec + TTL + 3,
            "{job} moved at {first}, cut at {cut_sec}"
        );
    }
    assert!(
        cut.err().contains("no cluster job starts here"),
        "{}",
        cut.err()
    );
    let (code, body) = http_get(&cut.metrics_addr(), "/healthz");
    assert_eq!(code, 503, "{body}");
    assert_eq!(http_get(&other.metrics_addr(), "/healthz").0, 200);

    // healed: the cut-off daemon gets a new lease and its share back
    proxy.set_cut(false);
    let t = Instant::now();
    loop {
        let o = owners(&lab);
        if o.len() == JOBS && o.values().any(|x| *x == cut_id) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "no job came back: {o:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert_no_double(&firings(&lab));
    cut.stop();
    other.stop();
}

#[test]
fn a_daemon_stopped_with_sigterm_hands_its_jobs_over_at_once() {
    let lab = Lab::new();
    lab.write("a.txt", b"x");
    let etcd = Etcd::start(lab.dir.path());
    const JOBS: usize = 6;
    // a long ttl: the jobs must move long before the lease would expire
    // and a dead endpoint first: the client goes on to the next one
    cluster_config_ttl(&lab, &format!("http://127.0.0.1:9, {}", etcd.url), JOBS, 20);
    let mut ds = start(&lab, 2);
    let owned = settled(&lab, JOBS);
    let pid = |o: &str| -> u32 { o.rsplit(':').next().unwrap().parse().unwrap() };
    let first = owned.values().next().unwrap().clone();
    let (gone, stay): (Vec<_>, Vec<_>) = ds.iter_mut().partition(|d| d.child.id() == pid(&first));
    let stopped_at = Instant::now();
    gone.into_iter().next().unwrap().stop();
    assert!(stopped_at.elapsed() < Duration::from_secs(10));
    let stayed = stay.into_iter().next().unwrap();
    let t = Instant::now();
    loop {
        let o = owners(&lab);
        if o.len() == JOBS && o.values().all(|x| pid(x) == stayed.child.id()) {
            break;
        }
        // well before the lease could expire unrevoked (ttl 20 s, its
        // keepalive every ttl/3)
        assert!(
            t.elapsed() < Duration::from_secs(8) && stopped_at.elapsed() < Duration::from_secs(12),
            "jobs did not move at once (ttl 20 s): {o:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    stayed.stop();
}

#[test]
fn jobs_go_on_when_the_etcd_member_in_use_dies_in_a_three_member_cluster() {
    let lab = Lab::new();
    lab.write("a.txt", b"x");
    let mut members = Etcd::start_cluster(lab.dir.path(), 3);
    const JOBS: usize = 4;
    let urls: Vec<&str> = members.iter().map(|m| m.url.as_str()).collect();
    cluster_config(&lab, &urls.join(", "), JOBS);
    let mut ds = start(&lab, 2);
    settled(&lab, JOBS);
    // the daemons talk to the first endpoint: kill that member
    members[0].kill();
    let killed = now();
    std::thread::sleep(Duration::from_secs((TTL + 4) as u64));
    let f = firings(&lab);
    assert_no_double(&f);
    for i in 0..JOBS {
        let job = format!("j{i}");
        let resumed = f
            .keys()
            .filter(|(j, s)| *j == job && *s > killed)
            .map(|(_, s)| *s)
            .min();
        let at = resumed.unwrap_or_else(|| panic!("{job} stopped with one member of three down"));
        assert!(
            at <= killed + TTL + 3,
            "{job} resumed at {at}, member killed at {killed}"
        );
    }
    for d in ds.iter_mut() {
        d.stop();
    }
}

/// A watched job is watched by one daemon only: the one holding its etcd
/// lock; when that daemon dies, another takes the lock and the watch, and
/// changes flow again.
#[test]
fn a_watched_job_is_watched_by_its_owner_only_and_moves_when_it_dies() {
    let lab = Lab::new();
    lab.write("a.txt", b"x");
    let etcd = Etcd::start(lab.dir.path());
    lab.config(&format!(
        "cluster:\n  etcd: [{}]\n  ttl: {TTL}s\n  prefix: /syncjob/test\njobs:\n  w:\n    source: {{src}}\n    remote: {{dst}}\n    watch: {{delay: 0}}\n",
        etcd.url
    ));
    let mut ds = start(&lab, 2);
    let owned = settled(&lab, 1);
    let owner = owned["w"].clone();
    let pid: u32 = owner.rsplit(':').next().unwrap().parse().unwrap();
    let oi = ds.iter().position(|d| d.child.id() == pid).unwrap();
    ds[oi].wait_for("watching", Duration::from_secs(20));
    let watchers = |lab: &Lab| -> BTreeSet<u64> {
        lab.log()
            .iter()
            .filter(|r| r["reason"] == "full sync: start")
            .filter_map(|r| r["pid"].as_u64())
            .collect()
    };
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        watchers(&lab),
        BTreeSet::from([pid as u64]),
        "{}",
        ds[1 - oi].err()
    );
    lab.write("b.txt", b"by the owner");
    let sent = |name: &str, want: &[u8]| {
        let t = Instant::now();
        while std::fs::read(lab.dst().join(name)).ok().as_deref() != Some(want) {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{name} never arrived"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    sent("b.txt", b"by the owner");

    // the owner dies: the other daemon takes the lock and the watch
    // SAFETY: kill(2) on a daemon this test started has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    ds[oi].child.wait().unwrap();
    let other = ds[1 - oi].child.id() as u64;
    let t = Instant::now();
    while !watchers(&lab).contains(&other) {
        assert!(
            t.elapsed() < Duration::from_secs((TTL + 10) as u64),
            "the watch never moved: {}",
            ds[1 - oi].err()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.write("c.txt", b"after the move");
    sent("c.txt", b"after the move");
}
