//! Prometheus metrics and health of a daemon (or of `syncjob watch`), and
//! `syncjob metrics` for node_exporter's textfile collector.
//!
//! Invariants: values change once per target outcome (`observe_run` with the
//! records of one run), once per scheduler-loop turn (`set_job`) and when
//! the watcher or the cluster reports, never per file, so the hot path of a
//! transfer never touches a metric. A family appears in the text only once a
//! value was set for it: nothing reports a value it did not measure (the
//! watch families stay absent until a watcher reports). Label values are a
//! job's name and a target's text from the jobs file (trusted); the text is
//! Prometheus' text format 0.0.4, which `promtool check metrics` accepts.

pub mod command;
pub mod health;
pub mod server;
pub mod textfile;

use crate::journal::{Record, Status};
use prometheus::{
    GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};
use std::sync::Mutex;

/// Run durations, seconds: 100 ms to 1 h.
const DURATION_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Every metric of one process.
pub struct Metrics {
    registry: Registry,
    runs: IntCounterVec,
    last_success: GaugeVec,
    duration: HistogramVec,
    bytes: IntCounterVec,
    files: IntCounterVec,
    deleted: IntCounterVec,
    next_run: GaugeVec,
    running: IntGaugeVec,
    watch: Watch,
    /// no labels; a Vec so that it appears only in cluster mode
    cluster_up: IntGaugeVec,
    cluster_owned: IntGaugeVec,
    health: Mutex<health::Health>,
}

/// The families of watched jobs (set by the watcher only).
struct Watch {
    pending: IntGaugeVec,
    lag: GaugeVec,
    watches: IntGaugeVec,
    overflows: IntCounterVec,
}

/// Register a family; the names are constants, so a failure is a bug.
fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique constants");
    c
}

fn counter(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    reg(
        r,
        IntCounterVec::new(Opts::new(name, help), labels).expect("valid"),
    )
}

fn igauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    reg(
        r,
        IntGaugeVec::new(Opts::new(name, help), labels).expect("valid"),
    )
}

fn gauge(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    reg(
        r,
        GaugeVec::new(Opts::new(name, help), labels).expect("valid"),
    )
}

const JT: &[&str] = &["job", "target"];
const J: &[&str] = &["job"];

impl Watch {
    fn new(r: &Registry) -> Watch {
        Watch {
            pending: igauge(
                r,
                "syncjob_watch_pending_paths",
                "Changed paths of a watched job not yet sent.",
                J,
            ),
            lag: gauge(
                r,
                "syncjob_watch_lag_seconds",
                "Age of the oldest unsent change of a watched job, seconds.",
                J,
            ),
            watches: igauge(
                r,
                "syncjob_watches",
                "Directory watches held for a watched job.",
                J,
            ),
            overflows: counter(
                r,
                "syncjob_watch_overflows_total",
                "Lost events (queue overflow, watch limit) turned into full syncs.",
                J,
            ),
        }
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let r = Registry::new();
        let hopts = HistogramOpts::new(
            "syncjob_run_duration_seconds",
            "Duration of a job's runs (all its targets), seconds.",
        )
        .buckets(DURATION_BUCKETS.to_vec());
        let info = igauge(
            &r,
            "syncjob_build_info",
            "Always 1; the version in a label.",
            &["version"],
        );
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Metrics {
            runs: counter(
                &r,
                "syncjob_runs_total",
                "Target outcomes by status (ok, failed, skipped, dry_run).",
                &["job", "target", "status"],
            ),
            last_success: gauge(
                &r,
                "syncjob_last_success_timestamp_seconds",
                "When a target last finished ok (Unix time).",
                JT,
            ),
            duration: reg(&r, HistogramVec::new(hopts, J).expect("valid")),
            bytes: counter(
                &r,
                "syncjob_bytes_transferred_total",
                "File data sent to a target, bytes.",
                JT,
            ),
            files: counter(
                &r,
                "syncjob_files_transferred_total",
                "Files sent to a target.",
                JT,
            ),
            deleted: counter(
                &r,
                "syncjob_files_deleted_total",
                "Entries deleted on a target.",
                JT,
            ),
            next_run: gauge(
                &r,
                "syncjob_next_run_timestamp_seconds",
                "The job's next scheduled firing (Unix time).",
                J,
            ),
            running: igauge(&r, "syncjob_running", "1 while the job runs here.", J),
            watch: Watch::new(&r),
            cluster_up: igauge(
                &r,
                "syncjob_cluster_etcd_up",
                "1 while this daemon reaches etcd and holds a live lease (cluster mode).",
                &[],
            ),
            cluster_owned: igauge(
                &r,
                "syncjob_cluster_owner",
                "1 for each job this daemon owns in the cluster.",
                J,
            ),
            health: Mutex::new(health::Health::new()),
            registry: r,
        }
    }

    /// The records of one run of one job (one per target). Updates the
    /// counters, the last-success time, the duration histogram (once per
    /// real run: the longest target, as the targets start together) and the
    /// health state.
    pub fn observe_run(&self, records: &[Record]) {
        let mut longest: Option<(&str, u64)> = None;
        for r in records {
            self.observe_target(r);
            if !matches!(r.status, Status::Skipped | Status::DryRun) {
                let d = longest.map_or(0, |(_, d)| d).max(r.duration_ms);
                longest = Some((&r.job, d));
            }
        }
        if let Some((job, ms)) = longest {
            self.duration
                .with_label_values(&[job])
                .observe(ms as f64 / 1000.0);
        }
    }

    fn observe_target(&self, r: &Record) {
        let jt = [r.job.as_str(), r.target.as_str()];
        self.runs
            .with_label_values(&[&r.job, &r.target, r.status.as_str()])
            .inc();
        if r.status == Status::DryRun {
            return;
        }
        self.bytes
            .with_label_values(&jt)
            .inc_by(r.bytes_transferred);
        self.files
            .with_label_values(&jt)
            .inc_by(r.files_transferred);
        self.deleted.with_label_values(&jt).inc_by(r.files_deleted);
        let at = chrono::DateTime::parse_from_rfc3339(&r.finished_at)
            .map(|t| t.timestamp_millis() as f64 / 1000.0)
            .ok();
        if r.status == Status::Ok
            && let Some(at) = at
        {
            let g = self.last_success.with_label_values(&jt);
            g.set(g.get().max(at));
        }
        self.lock_health().outcome(r, at);
    }

    /// A last success known from before this process (the run log).
    pub fn seed_success(&self, job: &str, target: &str, at: f64) {
        let g = self.last_success.with_label_values(&[job, target]);
        g.set(g.get().max(at));
        self.lock_health().seed(job, target, at);
    }

    /// The scheduler's view of one job, set once per loop turn.
    pub fn set_job(&self, job: &str, next: Option<chrono::DateTime<chrono::Utc>>, running: bool) {
        match next {
            Some(t) => self
                .next_run
                .with_label_values(&[job])
                .set(t.timestamp_millis() as f64 / 1000.0),
            None => {
                let _ = self.next_run.remove_label_values(&[job]);
            }
        }
        self.running
            .with_label_values(&[job])
            .set(i64::from(running));
    }

    /// Forget a job that left the jobs file.
    pub fn remove_job(&self, job: &str) {
        let _ = self.next_run.remove_label_values(&[job]);
        let _ = self.running.remove_label_values(&[job]);
        let _ = self.cluster_owned.remove_label_values(&[job]);
        self.lock_health().remove(job);
    }

    /// Watch mode: changed paths not yet sent, and the age of the oldest.
    pub fn watch_backlog(&self, job: &str, pending: u64, oldest_age_secs: f64) {
        self.watch
            .pending
            .with_label_values(&[job])
            .set(pending.min(i64::MAX as u64) as i64);
        self.watch
            .lag
            .with_label_values(&[job])
            .set(oldest_age_secs);
    }

    /// Watch mode: directory watches held for the job.
    pub fn watch_count(&self, job: &str, watches: u64) {
        self.watch
            .watches
            .with_label_values(&[job])
            .set(watches.min(i64::MAX as u64) as i64);
    }

    /// Watch mode: one lost event (overflow, watch limit) → a full sync.
    pub fn watch_overflow(&self, job: &str) {
        self.watch_overflows(job, 1);
    }

    /// Watch mode: `n` more lost events (0 makes the series appear).
    pub fn watch_overflows(&self, job: &str, n: u64) {
        self.watch.overflows.with_label_values(&[job]).inc_by(n);
    }

    /// Cluster mode: whether etcd is reachable (with the reason when not).
    pub fn cluster_state(&self, up: bool, why: Option<String>) {
        self.cluster_up
            .with_label_values::<&str>(&[])
            .set(i64::from(up));
        self.lock_health().cluster = Some(why.filter(|_| !up));
    }

    /// Cluster mode: whether this daemon owns `job`.
    pub fn cluster_owner(&self, job: &str, mine: bool) {
        self.cluster_owned
            .with_label_values(&[job])
            .set(i64::from(mine));
        self.lock_health().owned(job, mine);
    }

    /// The health state, for the scheduler to update and /healthz to read.
    pub fn lock_health(&self) -> std::sync::MutexGuard<'_, health::Health> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Everything, in Prometheus' text format.
    pub fn encode(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn rec(job: &str, target: &str, status: &str, bytes: u64, ms: u64) -> Record {
        Record {
            ts: "2026-11-27T05:00:01.000000+00:00".into(),
            job: job.into(),
            run_id: "r1".into(),
            trigger: crate::journal::Trigger::Schedule,
            target: target.into(),
            mode: crate::journal::Mode::Incremental,
            status: match status {
                "ok" => Status::Ok,
                "failed" => Status::Failed,
                "skipped" => Status::Skipped,
                _ => Status::DryRun,
            },
            reason: (status == "failed").then(|| "boom".into()),
            started_at: "2026-11-27T05:00:00.000000+00:00".into(),
            finished_at: "2026-11-27T05:00:01.000000+00:00".into(),
            duration_ms: ms,
            files_scanned: 3,
            files_transferred: 2,
            bytes_transferred: bytes,
            files_deleted: 1,
            files_vanished: 0,
            errors: vec![],
            warnings: vec![],
            scheduled_for: None,
            hooks: vec![],
            target_state: None,
            owner: None,
            lock_revision: None,
            unlogged_noop: 0,
            unlogged_skipped: 0,
            compact: false,
            retry: false,
            host: "h".into(),
            pid: 1,
            version: "0".into(),
        }
    }

    #[test]
    fn the_watch_api_sets_the_watch_families() {
        let m = Metrics::new();
        m.watch_backlog("site", 12, 0.25);
        m.watch_count("site", 340);
        m.watch_overflow("site");
        m.watch_overflow("site");
        let t = m.encode();
        assert!(
            t.contains("syncjob_watch_pending_paths{job=\"site\"} 12"),
            "{t}"
        );
        assert!(t.contains("syncjob_watch_lag_seconds{job=\"site\"} 0.25"));
        assert!(t.contains("syncjob_watches{job=\"site\"} 340"));
        assert!(t.contains("syncjob_watch_overflows_total{job=\"site\"} 2"));
    }

    #[test]
    fn one_run_counts_once_per_target_and_once_in_the_histogram() {
        let m = Metrics::new();
        m.observe_run(&[
            rec("web", "/a", "ok", 10, 1500),
            rec("web", "/b", "failed", 5, 300),
        ]);
        let t = m.encode();
        assert!(
            t.contains("syncjob_runs_total{job=\"web\",status=\"ok\",target=\"/a\"} 1"),
            "{t}"
        );
        assert!(t.contains("syncjob_runs_total{job=\"web\",status=\"failed\",target=\"/b\"} 1"));
        assert!(t.contains("syncjob_bytes_transferred_total{job=\"web\",target=\"/a\"} 10"));
        assert!(t.contains("syncjob_run_duration_seconds_count{job=\"web\"} 1"));
        assert!(t.contains("syncjob_run_duration_seconds_sum{job=\"web\"} 1.5"));
        assert!(t.contains(
            "syncjob_last_success_timestamp_seconds{job=\"web\",target=\"/a\"} 1795755601"
        ));
        assert!(!t.contains("last_success_timestamp_seconds{job=\"web\",target=\"/b\"}"));
        assert!(t.contains("syncjob_build_info{version="));
        assert!(
            !t.contains("syncjob_watch_"),
            "no watch values unless a watcher reports"
        );
    }
}
