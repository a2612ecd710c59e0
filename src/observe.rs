//! What the daemon does beside scheduling: metrics, health, the textfile
//! for node_exporter, and the cluster lock of each firing. The daemon calls
//! it at start, reload (`loaded`), each loop turn (`turn`), before a run
//! (`claim`), after a run or a skipped firing (`finished`) and at exit
//! (`stop`). `syncjob watch` can use it the same way.
//!
//! Invariants: without `cluster:` every claim succeeds at once and carries
//! the daemon's own cancel flag; with it, a claim succeeds only as
//! `cluster::Cluster::claim` allows. Metrics are always kept (cheap); the
//! HTTP server and the textfile writer run only when configured.

use crate::cluster::{self, Cluster, Refusal};
use crate::config::Config;
use crate::metrics::{Metrics, server, textfile};
use crate::run::{Env, JobResult};
use chrono::{DateTime, Utc};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often `metrics_textfile` is rewritten.
const TEXTFILE_EVERY: Duration = Duration::from_secs(5);

pub struct Observer {
    pub metrics: Arc<Metrics>,
    cluster: Option<Cluster>,
    known: Mutex<Vec<String>>,
    stop: Arc<AtomicBool>,
    /// a run ended since the textfile was written
    dirty: Arc<AtomicBool>,
    /// the settings the daemon started with (a reload does not change them)
    started: crate::config::Observe,
}

/// A run may start: the flag it must watch, and its cluster lock if any.
pub struct Permit {
    pub cancel: Arc<AtomicBool>,
    pub owner: Option<cluster::Owner>,
    _ticket: Option<cluster::Ticket>,
}

fn log(error: bool, msg: &str) {
    use crate::out::{Level, say};
    say(if error { Level::Error } else { Level::Info }, msg);
}

impl Observer {
    /// Start the HTTP server, the textfile writer and the cluster thread as
    /// configured. Fails when the metrics address cannot be bound.
    pub fn start(cfg: &Config, env: &Env) -> Result<Observer, String> {
        let metrics = Arc::new(Metrics::new());
        textfile::know_jobs(&metrics, cfg);
        textfile::seed_last_success(&metrics, cfg, &env.log);
        if let Some(addr) = cfg.observe.metrics {
            let bound = server::start(addr, metrics.clone()).map_err(|e| e.to_string())?;
            log(
                false,
                &format!("metrics on http://{bound}/metrics, health on http://{bound}/healthz"),
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let dirty = Arc::new(AtomicBool::new(false));
        if let Some(dir) = cfg.observe.metrics_textfile.clone() {
            spawn_textfile(dir, metrics.clone(), stop.clone(), dirty.clone());
        }
        let names: Vec<String> = cfg.jobs.iter().map(|j| j.name.clone()).collect();
        let cluster = cfg.observe.cluster.as_ref().map(|c| {
            let cl = Cluster::start(c, names.clone(), metrics.clone(), log);
            log(
                false,
                &format!(
                    "cluster: joining as {} (etcd {}, ttl {} s, prefix {})",
                    cl.id(),
                    c.etcd.join(" "),
                    c.ttl.as_secs(),
                    c.prefix
                ),
            );
            cl
        });
        Ok(Observer {
            metrics,
            cluster,
            known: Mutex::new(names),
            stop,
            dirty,
            started: cfg.observe.clone(),
        })
    }

    /// The jobs file was reloaded.
    pub fn loaded(&self, cfg: &Config) {
        textfile::know_jobs(&self.metrics, cfg);
        let names: Vec<String> = cfg.jobs.iter().map(|j| j.name.clone()).collect();
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        for gone in known.iter().filter(|n| !names.contains(n)) {
            self.metrics.remove_job(gone);
        }
        *known = names.clone();
        if let Some(c) = &self.cluster {
            c.set_jobs(names);
        }
        if cfg.observe != self.started {
            log(
                true,
                "reload: `metrics`, `metrics_textfile` or `cluster` changed; that takes a restart of the daemon (the jobs are reloaded)",
            );
        }
    }

    /// One turn of the scheduler loop: each job's next firing and state.
    pub fn turn<'a>(&self, jobs: impl Iterator<Item = (&'a str, Option<DateTime<Utc>>, bool)>) {
        for (name, next, running) in jobs {
            self.metrics.set_job(name, next, running);
        }
        self.metrics.lock_health().beat();
    }

    /// May a firing of `job` start here? `None`: not here (another daemon
    /// owns it, or etcd cannot be reached; the cluster logs why).
    pub fn claim(&self, job: &str, global: &Arc<AtomicBool>) -> Option<Permit> {
        let Some(c) = &self.cluster else {
            return Some(Permit {
                cancel: global.clone(),
                owner: None,
                _ticket: None,
            });
        };
        match c.claim(job, global) {
            Ok(t) => Some(Permit {
                cancel: t.cancel.clone(),
                owner: Some(t.owner.clone()),
                _ticket: Some(t),
            }),
            Err(Refusal::NotOwner) | Err(Refusal::Unreachable(_)) => None,
        }
    }

    /// A run ended: its records (one per target) into the metrics.
    pub fn finished(&self, res: &JobResult) {
        self.metrics.observe_run(&res.records);
        self.dirty.store(true, Ordering::SeqCst);
    }

    /// The daemon stops: leave the cluster (its jobs move at once), write
    /// the textfile a last time.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(c) = &self.cluster {
            c.stop();
        }
    }
}

/// Rewrite the textfile after each run (at most every 100 ms) and every
/// `TEXTFILE_EVERY` (next firings change without runs).
fn spawn_textfile(
    dir: PathBuf,
    metrics: Arc<Metrics>,
    stop: Arc<AtomicBool>,
    dirty: Arc<AtomicBool>,
) {
    let _ = std::thread::Builder::new()
        .name("metrics-textfile".into())
        .spawn(move || {
            let mut failing = false;
            loop {
                match textfile::write(&dir, &metrics.encode()) {
                    Ok(_) => failing = false,
                    Err(e) if !failing => {
                        failing = true;
                        log(
                            true,
                            &format!("metrics_textfile: cannot write into {}: {e}", dir.display()),
                        );
                    }
                    Err(_) => {}
                }
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let t = std::time::Instant::now();
                while t.elapsed() < TEXTFILE_EVERY
                    && !stop.load(Ordering::SeqCst)
                    && !dirty.swap(false, Ordering::SeqCst)
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
}
