//! `/healthz`: healthy while the scheduler loop turns, no target's latest
//! outcome is a failure, no job with `stale_after` has a target whose last
//! success is older than that, and (in cluster mode) etcd is reachable.
//!
//! Invariants: a target that never succeeded counts from the moment this
//! process learnt of its job (a fresh daemon is not stale at once); a
//! skipped or dry run changes neither the failure nor the success state;
//! the reasons are listed in a stable order (jobs, then targets, by name);
//! in cluster mode a job owned by another daemon is that daemon's to
//! report (its runs are not seen here), and a job taken over counts from
//! the moment it was taken.

use crate::journal::{Record, Status};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The loop must turn at least this often (it sleeps at most 30 s).
const LOOP_DEADLINE: Duration = Duration::from_secs(65);

#[derive(Debug, Default, Clone)]
struct TargetState {
    last_success: Option<f64>,
    /// The latest outcome failed: its reason.
    failed: Option<String>,
}

#[derive(Debug, Clone)]
struct JobState {
    stale_after: Option<Duration>,
    /// When this process learnt of the job (Unix time).
    known_since: f64,
    /// Cluster mode: when this daemon took the job over.
    taken_at: Option<f64>,
    targets: BTreeMap<String, TargetState>,
}

#[derive(Debug)]
pub struct Health {
    jobs: BTreeMap<String, JobState>,
    /// The last turn of the scheduler loop; `None` before the first.
    heartbeat: Option<Instant>,
    /// Cluster mode: `Some(None)` reachable, `Some(Some(why))` not.
    pub(super) cluster: Option<Option<String>>,
    /// Cluster mode: jobs not owned here.
    elsewhere: std::collections::BTreeSet<String>,
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Health {
    pub fn new() -> Health {
        Health {
            jobs: BTreeMap::new(),
            heartbeat: None,
            cluster: None,
            elsewhere: Default::default(),
        }
    }

    /// The jobs of the (re)loaded jobs file, with their targets.
    pub fn set_job(&mut self, job: &str, targets: &[String], stale_after: Option<Duration>) {
        let now = unix_now();
        let st = self
            .jobs
            .entry(job.to_string())
            .or_insert_with(|| JobState {
                stale_after,
                known_since: now,
                taken_at: None,
                targets: BTreeMap::new(),
            });
        st.stale_after = stale_after;
        st.targets.retain(|t, _| targets.contains(t));
        for t in targets {
            st.targets.entry(t.clone()).or_default();
        }
    }

    /// Cluster mode: whether this daemon owns `job` now.
    pub(super) fn owned(&mut self, job: &str, mine: bool) {
        if mine {
            if self.elsewhere.remove(job)
                && let Some(j) = self.jobs.get_mut(job)
            {
                // taken over: its staleness counts from now, its old
                // failures were another daemon's
                j.taken_at = Some(unix_now());
                j.targets.values_mut().for_each(|t| t.failed = None);
            }
        } else {
            self.elsewhere.insert(job.to_string());
        }
    }

    pub fn remove(&mut self, job: &str) {
        self.jobs.remove(job);
    }

    /// The scheduler loop turned.
    pub fn beat(&mut self) {
        self.heartbeat = Some(Instant::now());
    }

    pub(super) fn seed(&mut self, job: &str, target: &str, at: f64) {
        if let Some(t) = self
            .jobs
            .get_mut(job)
            .and_then(|j| j.targets.get_mut(target))
        {
            t.last_success = Some(t.last_success.map_or(at, |x| x.max(at)));
        }
    }

    pub(super) fn outcome(&mut self, r: &Record, at: Option<f64>) {
        let Some(t) = self
            .jobs
            .get_mut(&r.job)
            .and_then(|j| j.targets.get_mut(&r.target))
        else {
            return;
        };
        match r.status {
            Status::Ok => {
                t.failed = None;
                let at = at.unwrap_or_else(unix_now);
                t.last_success = Some(t.last_success.map_or(at, |x| x.max(at)));
            }
            Status::Failed => t.failed = Some(r.reason.clone().unwrap_or_else(|| "failed".into())),
            _ => {}
        }
    }

    /// Whether all is well, and why not.
    pub fn check(&self) -> (bool, Vec<String>) {
        let mut reasons = Vec::new();
        match self.heartbeat {
            None => reasons.push("the scheduler loop has not started".to_string()),
            Some(h) if h.elapsed() > LOOP_DEADLINE => reasons.push(format!(
                "the scheduler loop has not turned for {} s",
                h.elapsed().as_secs()
            )),
            _ => {}
        }
        if let Some(Some(why)) = &self.cluster {
            reasons.push(format!("cluster: {why}; no cluster job starts here"));
        }
        let now = unix_now();
        for (name, j) in self
            .jobs
            .iter()
            .filter(|(n, _)| !self.elsewhere.contains(*n))
        {
            for (target, t) in &j.targets {
                if let Some(why) = &t.failed {
                    reasons.push(format!("job {name} -> {target}: last run failed: {why}"));
                }
                let Some(limit) = j.stale_after else {
                    continue;
                };
                let since = t
                    .last_success
                    .unwrap_or(j.known_since)
                    .max(j.taken_at.unwrap_or(0.0));
                let age = now - since;
                if age > limit.as_secs_f64() {
                    let what = if t.last_success.is_some() {
                        "last success"
                    } else {
                        "no success since start"
                    };
                    reasons.push(format!(
                        "job {name} -> {target}: {what} {age:.0} s ago (stale_after {} s)",
                        limit.as_secs()
                    ));
                }
            }
        }
        (reasons.is_empty(), reasons)
    }

    /// The `/healthz` body: `{"status":"ok"|"unhealthy","reasons":[...],...}`.
    pub fn body(&self) -> (bool, String) {
        let (ok, reasons) = self.check();
        let v = serde_json::json!({
            "status": if ok { "ok" } else { "unhealthy" },
            "reasons": reasons,
            "jobs": self.jobs.len(),
            "version": env!("CARGO_PKG_VERSION"),
        });
        (ok, v.to_string())
    }
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_and_failed_targets_are_reasons() {
        let mut h = Health::new();
        assert!(!h.check().0, "no loop yet");
        h.beat();
        h.set_job("web", &["/a".into()], Some(Duration::from_secs(60)));
        assert_eq!(h.check(), (true, vec![]));
        let mut r = crate::metrics::tests::rec("web", "/a", "failed", 0, 0);
        h.outcome(&r, None);
        let (ok, why) = h.check();
        assert!(!ok);
        assert!(why[0].contains("last run failed: boom"), "{why:?}");
        r.status = Status::Ok;
        h.outcome(&r, Some(unix_now() - 120.0));
        let (ok, why) = h.check();
        assert!(!ok);
        // 120 s, or a little more when this thread was held up meanwhile
        let age = why[0]
            .split_once("last success ")
            .and_then(|(_, rest)| rest.split_once(" s ago (stale_after 60 s)"))
            .and_then(|(n, _)| n.parse::<u32>().ok());
        assert!(age.is_some_and(|a| (120..=130).contains(&a)), "{why:?}");
        h.outcome(&r, Some(unix_now()));
        assert!(h.check().0);
        // cluster: a job owned elsewhere is not this daemon's to report
        h.outcome(&r, Some(unix_now() - 120.0));
        let mut f = r.clone();
        f.status = Status::Failed;
        h.outcome(&f, None);
        assert!(!h.check().0);
        h.owned("web", false);
        assert!(h.check().0, "{:?}", h.check());
        h.owned("web", true);
        assert!(
            h.check().0,
            "taken over: counts from now, old failure dropped"
        );
        h.cluster = Some(Some("etcd unreachable".into()));
        assert!(h.check().1[0].starts_with("cluster: etcd unreachable"));
    }
}
