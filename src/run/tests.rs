//! `run` over the in-memory target: the manifest shortcut, planning from a
//! manifest, retries of transient failures (not of permanent ones), a lost
//! connection retried from a fresh listing, a dry run that changes nothing.

use super::*;
use crate::transport::memory::MemoryTarget;
use crate::transport::{OpenError, Retry};
use std::sync::Mutex;

struct Fixture {
    dir: tempfile::TempDir,
    job: Job,
    env: Env,
    target: MemoryTarget,
}

impl Fixture {
    fn new(extra: &str) -> Fixture {
        Fixture::with_remote("/nonexistent/target", extra)
    }

    fn with_remote(remote: &str, extra: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("a.txt"), b"alpha").unwrap();
        std::fs::write(src.join("d/b.txt"), b"beta").unwrap();
        let text = format!(
            "jobs:\n  j:\n    source: {}\n    remote: {remote}\n    retries: 2\n{extra}",
            src.display()
        );
        let cfg = crate::config::parse(&dir.path().join("jobs.yaml"), text.as_bytes()).unwrap();
        let env = Env {
            state_dir: dir.path().join("state"),
            log: dir.path().join("state/runs.jsonl"),
        };
        Fixture {
            job: cfg.jobs[0].clone(),
            env,
            dir,
            target: MemoryTarget::default(),
        }
    }

    fn src(&self, rel: &str) -> PathBuf {
        self.dir.path().join("src").join(rel)
    }

    fn run_with(&self, opts: &Options, open: &Opener) -> JobResult {
        run_job_with(&self.job, &self.env, opts, &AtomicBool::new(false), open)
    }

    fn run(&self, opts: &Options) -> JobResult {
        let t = self.target.clone();
        self.run_with(opts, &move |_: &Target, _: &TransportSettings| Ok(t.open()))
    }
}

/// An opener refused once (a transient error), then reachable; counts
/// its calls in `tries`.
fn refused_once<'a>(
    t: &'a MemoryTarget,
    tries: &'a Mutex<u32>,
) -> impl Fn(&Target, &TransportSettings) -> Result<Box<dyn Transport>, OpenError> + Sync + 'a {
    move |_, _| {
        let mut n = tries.lock().unwrap();
        *n += 1;
        if *n == 1 {
            let e = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
            return Err(OpenError::from(e));
        }
        Ok(t.open())
    }
}

fn opts() -> Options {
    Options {
        trigger: Trigger::Manual,
        dry_run: false,
        wait: Wait::No,
        verbose: false,
        quiet: true,
        progress: false,
        verify: false,
        scheduled_for: None,
        owner: None,
        inline_retries: true,
        lock_held: false,
        on_record: None,
        note: None,
    }
}

#[test]
fn a_run_copies_then_an_unchanged_source_needs_no_connection() {
    let fx = Fixture::new("");
    let r = fx.run(&opts());
    assert_eq!(r.status, Status::Ok, "{:?}", r.records);
    assert_eq!(r.records[0].files_transferred, 2);
    let files = fx.target.files();
    assert_eq!(files["a.txt"], b"alpha");
    assert_eq!(files["d/b.txt"], b"beta");
    assert_eq!(fx.target.state().opens, 1);

    // nothing changed: decided from the manifest, no connection at all
    let r = fx.run(&opts());
    assert_eq!(r.status, Status::Ok);
    assert_eq!(r.records[0].target_state.as_deref(), Some("manifest"));
    assert_eq!(fx.target.state().opens, 1);

    // a change: planned against the manifest (connected, not listed)
    std::fs::write(fx.src("a.txt"), b"ALPHA, longer").unwrap();
    let r = fx.run(&opts());
    assert_eq!(r.records[0].files_transferred, 1);
    let st = fx.target.state();
    assert_eq!((st.opens, st.lists), (2, 1));
    drop(st);
    assert_eq!(fx.target.files()["a.txt"], b"ALPHA, longer");

    // --verify lists the target again
    let r = fx.run(&Options {
        verify: true,
        ..opts()
    });
    assert_eq!(r.records[0].files_transferred, 0);
    assert_eq!(fx.target.state().lists, 2);
}

#[test]
fn a_permanent_failure_is_not_retried_and_a_transient_one_is() {
    let fx = Fixture::new("");
    let calls = Mutex::new(0);
    let permanent = |_: &Target, _: &TransportSettings| -> Result<Box<dyn Transport>, OpenError> {
        *calls.lock().unwrap() += 1;
        Err(OpenError::permanent(
            std::io::ErrorKind::PermissionDenied,
            "auth refused",
        ))
    };
    let r = fx.run_with(&opts(), &permanent);
    assert_eq!(r.status, Status::Failed);
    let reason = r.records[0].reason.clone().unwrap();
    assert_eq!(reason, "cannot reach target: auth refused (not retried)");
    assert_eq!(*calls.lock().unwrap(), 1);

    // refused once, then reachable: one retry, and the run is ok
    let tries = Mutex::new(0);
    let flaky = refused_once(&fx.target, &tries);
    let r = fx.run_with(&opts(), &flaky);
    assert_eq!(r.status, Status::Ok, "{:?}", r.records[0].reason);
    assert_eq!(*tries.lock().unwrap(), 2);
    assert_eq!(
        OpenError::from(std::io::Error::other("x")).retry,
        Retry::Transient
    );
}

#[test]
fn a_connection_lost_midway_is_retried_from_a_fresh_listing() {
    let fx = Fixture::new("");
    fx.target.state().lose_at_put = Some(2);
    let r = fx.run(&opts());
    assert_eq!(r.status, Status::Ok, "{:?}", r.records[0].reason);
    assert_eq!(fx.target.files().len(), 2);
    let st = fx.target.state();
    // the second attempt listed the target and copied only what was missing
    assert_eq!((st.opens, st.lists, st.puts), (2, 2, 3));
}

#[test]
fn a_dry_run_changes_nothing_and_keeps_no_manifest() {
    let fx = Fixture::new("");
    let r = fx.run(&Options {
        dry_run: true,
        ..opts()
    });
    assert_eq!(r.status, Status::DryRun);
    assert!(fx.target.files().is_empty());
    assert_eq!(fx.target.state().puts, 0);
    // so the next real run connects and copies
    assert_eq!(fx.run(&opts()).records[0].files_transferred, 2);
}

#[test]
fn records_are_appended_with_the_typed_fields() {
    let fx = Fixture::new("");
    fx.run(&opts());
    let log = std::fs::read_to_string(&fx.env.log).unwrap();
    let v: serde_json::Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["trigger"], "manual");
    assert_eq!(v["mode"], "incremental");
    assert_eq!(v["target"], "/nonexistent/target");
}

#[test]
fn a_run_under_a_cluster_lock_records_its_owner_and_revision() {
    let fx = Fixture::new("");
    fx.run(&opts());
    let mut o = opts();
    o.owner = Some(crate::cluster::Owner {
        owner: "web1:42".into(),
        revision: 17,
    });
    fx.run(&o);
    let log = std::fs::read_to_string(&fx.env.log).unwrap();
    let recs: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        recs[0].get("owner").is_none(),
        "no cluster, no field: {}",
        recs[0]
    );
    assert!(recs[0].get("lock_revision").is_none());
    assert_eq!(recs[1]["owner"], "web1:42");
    assert_eq!(recs[1]["lock_revision"], 17);
}

#[test]
fn a_remote_target_is_connected_once_per_run_that_needs_it_and_never_otherwise() {
    // remote: connected during the scan when it will be listed
    let fx = Fixture::with_remote("ssh://u@127.0.0.1:2222/srv/t", "");
    let opens = || fx.target.state().opens;
    let lists = || fx.target.state().lists;
    // first run, no manifest: one connection (the one made during the
    // scan is the first attempt's, not an extra one)
    assert_eq!(fx.run(&opts()).status, Status::Ok);
    assert_eq!((opens(), lists()), (1, 1));
    // unchanged: no connection at all
    assert_eq!(
        fx.run(&opts()).records[0].target_state.as_deref(),
        Some("manifest")
    );
    assert_eq!(opens(), 1);
    // changed, manifest kept: connected once, not listed
    std::fs::write(fx.src("a.txt"), b"changed").unwrap();
    assert_eq!(fx.run(&opts()).records[0].files_transferred, 1);
    assert_eq!((opens(), lists()), (2, 1));
    // --verify: connected (during the scan) and listed, once
    let verify = Options {
        verify: true,
        ..opts()
    };
    assert_eq!(fx.run(&verify).status, Status::Ok);
    assert_eq!((opens(), lists()), (3, 2));
}

#[test]
fn a_failed_scan_drops_the_early_connection_and_a_failed_early_connection_is_retried() {
    let fx = Fixture::with_remote("ssh://u@127.0.0.1:2222/srv/t", "");
    // the source is gone: the run fails on it, nothing is copied
    std::fs::rename(fx.src(""), fx.dir.path().join("moved")).unwrap();
    let r = fx.run(&opts());
    assert_eq!(r.status, Status::Failed);
    assert!(
        r.records[0].reason.as_deref().unwrap().contains("source"),
        "{:?}",
        r.records[0].reason
    );
    assert_eq!(fx.target.state().puts, 0);
    std::fs::rename(fx.dir.path().join("moved"), fx.src("")).unwrap();
    // the connection made during the scan fails (transient): it counts as
    // the first attempt, the retry connects again
    let tries = Mutex::new(0);
    let flaky = refused_once(&fx.target, &tries);
    let r = fx.run_with(&opts(), &flaky);
    assert_eq!(r.status, Status::Ok, "{:?}", r.records[0].reason);
    assert_eq!(*tries.lock().unwrap(), 2);
    assert_eq!(r.records[0].files_transferred, 2);
}
