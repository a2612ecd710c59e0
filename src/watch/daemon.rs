//! The daemon's watched jobs: started with the daemon, restarted when
//! their settings change on reload, stopped when removed or at shutdown.
//!
//! Invariants: a watched job's scheduled firing becomes a full sync inside
//! its watcher (never a second, overlapping run); a job that cannot be
//! watched (another process watches it) is reported and left alone. With
//! `cluster:` a job is watched only while this daemon holds its etcd lock
//! (`Observer::claim`): the permit is held for the watch's whole life, the
//! watch stops when the lock is lost, and a job owned elsewhere is claimed
//! again every second (`report`).

use super::cli::{stop_all, take_watch_lock};
use super::job::{self, Handle};
use crate::config::Job;
use crate::lock;
use crate::observe::{Observer, Permit};
use crate::out::{Level, say};
use crate::run::Env;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub struct Watched {
    env: Env,
    /// job → its watcher, watch lock, and settings (to see changes)
    jobs: HashMap<String, (Handle, lock::Lock, String)>,
    /// job → its watcher's overflow count at the last `report`
    overflows_seen: HashMap<String, u64>,
    /// job → the cluster permit its watch runs under (and its settings)
    permits: HashMap<String, (Permit, Job)>,
    /// watched jobs of the jobs file that this daemon does not hold (in
    /// cluster mode: owned elsewhere, or etcd unreachable), and settings
    waiting: HashMap<String, (Job, String)>,
    shutdown_timeout: Duration,
}

impl Watched {
    pub fn new(env: Env) -> Watched {
        Watched {
            env,
            jobs: HashMap::new(),
            overflows_seen: HashMap::new(),
            permits: HashMap::new(),
            waiting: HashMap::new(),
            shutdown_timeout: Duration::from_secs(30),
        }
    }

    /// Match the running watchers to `jobs` (the jobs file as loaded).
    pub fn sync(
        &mut self,
        jobs: &[Job],
        shutdown_timeout: Duration,
        obs: &Observer,
        cancel: &Arc<AtomicBool>,
    ) {
        self.shutdown_timeout = shutdown_timeout;
        let want: HashMap<&str, (&Job, String)> = jobs
            .iter()
            .filter(|j| j.watch.is_some())
            .map(|j| (j.name.as_str(), (j, format!("{j:?}"))))
            .collect();
        let stale: Vec<String> = self
            .jobs
            .iter()
            .filter(|(n, (_, _, fp))| want.get(n.as_str()).is_none_or(|(_, w)| w != fp))
            .map(|(n, _)| n.clone())
            .collect();
        let mut stopping = Vec::new();
        for n in stale {
            if let Some((h, l, _)) = self.jobs.remove(&n) {
                say(
                    Level::Info,
                    &format!("job {n}: watch stopped (removed or changed)"),
                );
                stopping.push((h, l));
            }
        }
        stop_all(stopping, shutdown_timeout);
        let jobs = &self.jobs;
        self.permits.retain(|k, _| jobs.contains_key(k));
        self.waiting.clear();
        for (n, (j, fp)) in want {
            if !self.jobs.contains_key(n) {
                self.start(j, fp, obs, cancel);
            }
        }
    }

    /// Watch `j` if this daemon may (its cluster lock), else wait for it.
    fn start(&mut self, j: &Job, fp: String, obs: &Observer, cancel: &Arc<AtomicBool>) {
        let n = j.name.clone();
        let Some(permit) = obs.claim(&n, cancel) else {
            self.waiting.insert(n, (j.clone(), fp));
            return;
        };
        match take_watch_lock(&self.env.state_dir, j) {
            Ok(l) => {
                let h = job::spawn(Arc::new(j.clone()), self.env.clone());
                h.live.collect.store(true, Ordering::Relaxed);
                self.overflows_seen.remove(&n);
                self.permits.insert(n.clone(), (permit, j.clone()));
                self.jobs.insert(n, (h, l, fp));
            }
            Err(e) => say(Level::Error, &e),
        }
    }

    /// Cluster mode, every second: stop the watches whose lock was lost
    /// (their permit's cancel flag; not the daemon's own shutdown), and
    /// claim the jobs waiting for their lock.
    fn follow_cluster(&mut self, obs: &Observer, cancel: &Arc<AtomicBool>) {
        if cancel.load(Ordering::Relaxed) {
            return;
        }
        let lost: Vec<String> = self
            .permits
            .iter()
            .filter(|(_, (p, _))| p.cancel.load(Ordering::Relaxed))
            .map(|(n, _)| n.clone())
            .collect();
        let mut stopping = Vec::new();
        for n in lost {
            let job = self.permits.remove(&n).map(|(_, j)| j);
            if let (Some((h, l, fp)), Some(j)) = (self.jobs.remove(&n), job) {
                say(
                    Level::Warning,
                    &format!("job {n}: cluster lock lost; watch stopped"),
                );
                self.waiting.insert(n, (j, fp));
                stopping.push((h, l));
            }
        }
        stop_all(stopping, self.shutdown_timeout);
        let waiting: Vec<(Job, String)> = self.waiting.drain().map(|(_, v)| v).collect();
        for (j, fp) in waiting {
            self.start(&j, fp, obs, cancel);
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.jobs.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// No job watched here nor waiting for its cluster lock.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.waiting.is_empty()
    }

    /// A full sync inside the job's watcher (its scheduled verification).
    pub fn full_sync(&self, name: &str, why: &str) {
        if let Some((h, _, _)) = self.jobs.get(name) {
            h.full_sync(why);
        }
    }

    /// Their live figures into the metrics: the records of their batches
    /// and full syncs (runs, bytes, last success), pending paths, lag,
    /// watches, and the overflows since the last report.
    /// In cluster mode, also follow the jobs' etcd locks (`follow_cluster`).
    pub fn report(&mut self, obs: &Observer, cancel: &Arc<AtomicBool>) {
        self.follow_cluster(obs, cancel);
        let m = &obs.metrics;
        for (name, (h, _, _)) in &self.jobs {
            let live = &h.live;
            let records = live.take_records();
            if !records.is_empty() {
                m.observe_run(&records);
            }
            m.watch_backlog(name, live.pending_paths(), live.lag().as_secs_f64());
            m.watch_count(name, live.watch_count());
            let seen = self.overflows_seen.entry(name.clone()).or_insert(0);
            let now = live.overflow_count();
            m.watch_overflows(name, now.saturating_sub(*seen));
            *seen = now;
        }
    }

    /// Stop them all (transfers aborted after `timeout`).
    pub fn stop(&mut self, timeout: Duration) {
        let all = self.jobs.drain().map(|(_, (h, l, _))| (h, l)).collect();
        stop_all(all, timeout);
        // the watches are stopped: their cluster locks go
        self.permits.clear();
    }
}
