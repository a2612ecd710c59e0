//! The daemon's watched jobs: started with the daemon, restarted when
//! their settings change on reload, stopped when removed or at shutdown.
//!
//! Invariants: a watched job's scheduled firing becomes a full sync inside
//! its watcher (never a second, overlapping run); a job that cannot be
//! watched (another process watches it) is reported and left alone.

use super::cli::{stop_all, take_watch_lock};
use super::job::{self, Handle};
use crate::config::Job;
use crate::lock;
use crate::out::{Level, say};
use crate::run::Env;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub struct Watched {
    env: Env,
    /// job → its watcher, watch lock, and settings (to see changes)
    jobs: HashMap<String, (Handle, lock::Lock, String)>,
    /// job → its watcher's overflow count at the last `report`
    overflows_seen: HashMap<String, u64>,
}

impl Watched {
    pub fn new(env: Env) -> Watched {
        Watched {
            env,
            jobs: HashMap::new(),
            overflows_seen: HashMap::new(),
        }
    }

    /// Match the running watchers to `jobs` (the jobs file as loaded).
    pub fn sync(&mut self, jobs: &[Job], shutdown_timeout: Duration) {
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
        for (n, (j, fp)) in want {
            if self.jobs.contains_key(n) {
                continue;
            }
            match take_watch_lock(&self.env.state_dir, j) {
                Ok(l) => {
                    let h = job::spawn(Arc::new(j.clone()), self.env.clone());
                    h.live
                        .collect
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    self.overflows_seen.remove(n);
                    self.jobs.insert(n.to_string(), (h, l, fp));
                }
                Err(e) => say(Level::Error, &e),
            }
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        self.jobs.contains_key(name)
    }

    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
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
    pub fn report(&mut self, m: &crate::metrics::Metrics) {
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
    }
}
