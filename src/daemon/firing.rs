//! The daemon's firing logic, with no threads and no I/O: which job fires
//! when, given the instant it is told (the daemon's [`crate::clock::Clock`]).
//!
//! Invariants: a job's next deadline follows from its *scheduled* instant,
//! not from when it ran (no drift); firings already past are not replayed;
//! a job never runs twice at once (a firing while it runs is skipped, or
//! queued once with `overlap: queue`); a failed run is retried after
//! `retry_interval` only when that comes before the next scheduled firing.
//!
//! Targets progress independently ([`Targets`]): a firing runs the
//! targets that are free and skips those still busy from an earlier firing
//! or backing off after a transient failure, so one frozen or dead target
//! never holds the others back; a transient failure is retried in the
//! background (`Trigger::Retry`, that target alone, 1 s, 2 s, 4 s … up to
//! `retries` times). A job "runs" while any of its targets does; its runs
//! never share a target.

use crate::config::{Job, Overlap};
use crate::journal::{Record, Trigger};
use crate::target::Target;
use crate::target_state::{NotFree, Targets};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;

/// One job's place in the schedule.
pub(super) struct JobState {
    pub job: Arc<Job>,
    pub next: Option<DateTime<Utc>>,
    /// Some run of the job is going (`runs > 0`).
    pub running: bool,
    /// Runs of the job going, each on other targets.
    pub runs: usize,
    /// Each target busy or backing off.
    pub targets: Targets,
    pub queued: bool,
    /// A failed run is retried at this instant (`retry_interval`), when
    /// that comes before the next scheduled firing.
    pub retry_at: Option<DateTime<Utc>>,
}

/// What the daemon is to do.
#[derive(Debug)]
pub(super) enum Fire {
    /// Start a run of the job on `job.targets` (the free targets; they are
    /// marked busy).
    Start {
        job: Arc<Job>,
        due: Option<DateTime<Utc>>,
        trigger: Trigger,
    },
    /// The job was due at `at` while `job.targets` were busy (`overlap`)
    /// or backing off (`backoff`): log them skipped.
    Skip {
        job: Arc<Job>,
        at: DateTime<Utc>,
        reason: &'static str,
    },
}

/// `job` with only `targets`.
fn with_targets(job: &Job, targets: Vec<Target>) -> Arc<Job> {
    let mut j = job.clone();
    j.targets = targets;
    Arc::new(j)
}

/// Every job's state, and how many runs are going.
#[derive(Default)]
pub(super) struct Firing {
    pub jobs: HashMap<String, JobState>,
    pub running: usize,
}

impl Firing {
    /// (Re)compute every deadline from `now` for the jobs of a (new) file;
    /// running, queued and retry states carry over by name. Jobs removed
    /// from the file but still running are kept until they end.
    pub fn schedule_all(&mut self, jobs: &[Job], now: DateTime<Utc>) {
        let mut old = std::mem::take(&mut self.jobs);
        for j in jobs {
            let next = j.schedule.as_ref().and_then(|s| s.next_after(now, j.tz()));
            let (runs, mut targets, queued, retry_at) = old
                .remove(&j.name)
                .map(|s| (s.runs, s.targets, s.queued, s.retry_at))
                .unwrap_or_default();
            let retry_at = retry_at.filter(|_| j.retry_interval.is_some());
            targets.retain_for(j);
            let job = Arc::new(j.clone());
            let st = JobState {
                job,
                next,
                running: runs > 0,
                runs,
                targets,
                queued,
                retry_at,
            };
            self.jobs.insert(j.name.clone(), st);
        }
        for (name, s) in old {
            if s.running {
                let st = JobState {
                    next: None,
                    queued: false,
                    retry_at: None,
                    ..s
                };
                self.jobs.insert(name, st);
            }
        }
    }

    /// Start a run of the job's free targets (all of them, or `only` for
    /// a background retry); a scheduled firing (`due`) also says which
    /// targets it skips.
    pub fn start(
        &mut self,
        name: &str,
        due: Option<DateTime<Utc>>,
        trigger: Trigger,
        only: Option<&[String]>,
        now: DateTime<Utc>,
    ) -> Vec<Fire> {
        let mut fires = Vec::new();
        let Some(st) = self.jobs.get_mut(name) else {
            return fires;
        };
        let (mut free, mut busy, mut backing_off) = (Vec::new(), Vec::new(), Vec::new());
        for t in &st.job.targets {
            let n = t.to_string();
            if only.is_some_and(|o| !o.contains(&n)) {
                continue;
            }
            match st.targets.state(&n, now) {
                Ok(()) => free.push(t.clone()),
                Err(NotFree::Backoff) if only.is_some() => free.push(t.clone()),
                Err(NotFree::Busy) => busy.push(t.clone()),
                Err(NotFree::Backoff) => backing_off.push(t.clone()),
            }
        }
        if let Some(at) = due {
            for (ts, reason) in [(busy, "overlap"), (backing_off, "backoff")] {
                if !ts.is_empty() {
                    let job = with_targets(&st.job, ts);
                    fires.push(Fire::Skip { job, at, reason });
                }
            }
        }
        if free.is_empty() {
            return fires;
        }
        for t in &free {
            st.targets.set_busy(&t.to_string());
        }
        st.running = true;
        st.runs += 1;
        st.retry_at = None;
        self.running += 1;
        let job = with_targets(&st.job, free);
        fires.push(Fire::Start { job, due, trigger });
        fires
    }

    /// Every job whose deadline (or retry) has come at `now`.
    pub fn due(&mut self, now: DateTime<Utc>) -> Vec<Fire> {
        let mut fires = Vec::new();
        let due: Vec<(String, DateTime<Utc>)> = self
            .jobs
            .iter()
            .filter_map(|(n, s)| s.next.filter(|t| *t <= now).map(|t| (n.clone(), t)))
            .collect();
        for (name, at) in due {
            let st = self.jobs.get_mut(&name).unwrap();
            let job = st.job.clone();
            let tz = job.tz();
            // the next deadline follows from the scheduled instant (no drift);
            // if that is already past, the missed firings are not replayed
            let sched = job.schedule.as_ref().unwrap();
            let mut next = sched.next_after(at, tz);
            if next.is_some_and(|n| n <= now) {
                next = sched.next_after(now, tz);
            }
            st.next = next;
            if st.running && job.overlap == Overlap::Queue {
                st.queued = true;
                continue;
            }
            fires.extend(self.start(&name, Some(at), Trigger::Schedule, None, now));
        }
        // background retries of targets whose backoff is over
        let backoffs: Vec<(String, Vec<String>)> = self
            .jobs
            .iter()
            .map(|(n, s)| (n.clone(), s.targets.retry_due(now)))
            .filter(|(_, t)| !t.is_empty())
            .collect();
        for (name, targets) in backoffs {
            fires.extend(self.start(&name, None, Trigger::Retry, Some(&targets), now));
        }
        let retries: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, s)| !s.running && s.retry_at.is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in retries {
            fires.extend(self.start(&name, None, Trigger::Retry, None, now));
        }
        fires
    }

    /// A run ended at `now` with `records` (one per target it ran). A
    /// target that failed transiently is retried in the background; a run
    /// failed for good is retried after `retry_interval` unless the
    /// schedule fires before; a queued firing starts now (not when
    /// `stopping`); a job no longer `configured` is forgotten once no run
    /// of it is going.
    pub fn finished(
        &mut self,
        name: &str,
        records: &[Record],
        now: DateTime<Utc>,
        configured: bool,
        stopping: bool,
    ) -> Vec<Fire> {
        self.running = self.running.saturating_sub(1);
        let Some(st) = self.jobs.get_mut(name) else {
            return Vec::new();
        };
        st.runs = st.runs.saturating_sub(1);
        st.running = st.runs > 0;
        let mut failed = false;
        for r in records {
            failed |= st.targets.finished(&st.job, r, now);
        }
        st.retry_at = match (failed, st.job.retry_interval) {
            (true, Some(iv)) => {
                let at = now + chrono::Duration::from_std(iv).unwrap_or_default();
                (st.next.is_none_or(|n| at < n)).then_some(at)
            }
            _ => None,
        };
        let queued = std::mem::take(&mut st.queued);
        if !configured {
            if st.runs == 0 {
                self.jobs.remove(name);
            }
            Vec::new()
        } else if queued && !stopping {
            self.start(name, None, Trigger::Schedule, None, now)
        } else {
            Vec::new()
        }
    }

    /// A run that was decided but not started (in cluster mode this
    /// daemon does not own the job, or etcd does not answer): its targets
    /// are free again for the next firing, and nothing is logged.
    pub fn not_started(&mut self, job: &Job) {
        self.stopped(&job.name);
        if let Some(st) = self.jobs.get_mut(&job.name) {
            for t in &job.targets {
                st.targets.release(&t.to_string());
            }
        }
    }

    /// A run ended during shutdown.
    pub fn stopped(&mut self, name: &str) {
        self.running = self.running.saturating_sub(1);
        if let Some(s) = self.jobs.get_mut(name) {
            s.runs = s.runs.saturating_sub(1);
            s.running = s.runs > 0;
        }
    }

    /// The earliest instant something is due (a deadline, or the retry of
    /// a job that is not running).
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        self.jobs
            .values()
            .flat_map(|s| {
                [
                    s.next,
                    s.retry_at.filter(|_| !s.running),
                    s.targets.next_retry(),
                ]
            })
            .flatten()
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, ManualClock};
    use std::time::Duration;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn jobs(extra: &str) -> Vec<Job> {
        let text = format!(
            "jobs:\n  a:\n    source: /srv/a\n    remote: /srv/b\n    schedule: \"*/10 * * * * *\"\n    timezone: UTC\n{extra}"
        );
        crate::config::parse(std::path::Path::new("/etc/jobs.yaml"), text.as_bytes())
            .unwrap()
            .jobs
    }

    fn started(f: &[Fire]) -> Vec<(String, Option<DateTime<Utc>>, Trigger)> {
        f.iter()
            .filter_map(|f| match f {
                Fire::Start { job, due, trigger } => Some((job.name.clone(), *due, *trigger)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn deadlines_follow_the_schedule_not_the_run_and_missed_ones_are_not_replayed() {
        let clock = ManualClock::new(at("2026-05-01T10:00:03Z"));
        let mut f = Firing::default();
        f.schedule_all(&jobs(""), clock.now());
        assert_eq!(f.next_wakeup(), Some(at("2026-05-01T10:00:10Z")));
        assert!(f.due(clock.now()).is_empty(), "nothing is due before 10s");
        // woken 400 ms late: fires for 10s, next deadline 20s (no drift)
        clock.set(at("2026-05-01T10:00:10.400Z"));
        let fired = started(&f.due(clock.now()));
        let due10 = Some(at("2026-05-01T10:00:10Z"));
        assert_eq!(fired, vec![("a".to_string(), due10, Trigger::Schedule)]);
        assert_eq!(f.jobs["a"].next, Some(at("2026-05-01T10:00:20Z")));
        assert_eq!(f.running, 1);
        assert!(
            f.finished("a", &[rec("ok")], clock.now(), true, false)
                .is_empty()
        );
        // the machine slept through 20s..50s: one firing, not four
        clock.set(at("2026-05-01T10:00:55Z"));
        let fired = started(&f.due(clock.now()));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].1, Some(at("2026-05-01T10:00:20Z")));
        assert_eq!(f.jobs["a"].next, Some(at("2026-05-01T10:01:00Z")));
    }

    #[test]
    fn a_firing_while_running_is_skipped_or_queued_once() {
        let t = at("2026-05-01T10:00:10Z");
        let mut f = Firing::default();
        f.schedule_all(&jobs(""), at("2026-05-01T10:00:05Z"));
        assert_eq!(started(&f.due(t)).len(), 1);
        let skipped = f.due(at("2026-05-01T10:00:20Z"));
        assert!(
            matches!(&skipped[..], [Fire::Skip { at, reason: "overlap", .. }] if *at == at_20())
        );
        assert_eq!(f.running, 1, "no second run of the same job");

        let mut q = Firing::default();
        q.schedule_all(&jobs("    overlap: queue\n"), at("2026-05-01T10:00:05Z"));
        assert_eq!(started(&q.due(t)).len(), 1);
        assert!(q.due(at("2026-05-01T10:00:20Z")).is_empty());
        assert!(q.due(at("2026-05-01T10:00:30Z")).is_empty(), "queued once");
        let again = q.finished("a", &[rec("ok")], at("2026-05-01T10:00:31Z"), true, false);
        assert!(matches!(&again[..], [Fire::Start { due: None, .. }]));
        assert!(
            q.finished("a", &[rec("ok")], at("2026-05-01T10:00:32Z"), true, false)
                .is_empty()
        );
        // a queued firing does not start during shutdown
        assert_eq!(started(&q.due(at("2026-05-01T10:00:40Z"))).len(), 1);
        assert!(q.due(at("2026-05-01T10:00:50Z")).is_empty());
        assert!(
            q.finished("a", &[rec("ok")], at("2026-05-01T10:00:51Z"), true, true)
                .is_empty()
        );
    }

    /// A record of target `/srv/b` (a failed one is failed for good: not
    /// retried in the background).
    fn rec(status: &str) -> Record {
        serde_json::from_value(serde_json::json!({
            "ts": "2026-05-01T10:00:12Z", "job": "a", "run_id": "r", "trigger": "schedule",
            "target": "/srv/b", "mode": "incremental", "status": status, "reason": "x",
            "started_at": "2026-05-01T10:00:10Z", "finished_at": "2026-05-01T10:00:12Z",
            "duration_ms": 1, "files_scanned": 0, "files_transferred": 0,
            "bytes_transferred": 0, "files_deleted": 0, "errors": [], "host": "h",
            "pid": 1, "version": "0"
        }))
        .unwrap()
    }

    #[test]
    fn a_busy_or_backing_off_target_is_skipped_while_the_others_run() {
        let mut js = jobs("");
        js[0]
            .targets
            .push(crate::target::Target::Local("/srv/c".into()));
        let mut f = Firing::default();
        f.schedule_all(&js, at("2026-05-01T10:00:05Z"));
        assert_eq!(started(&f.due(at("2026-05-01T10:00:10Z"))).len(), 1);
        // /srv/c is done, /srv/b still busy at the next firing
        let mut c = rec("ok");
        c.target = "/srv/c".into();
        f.finished(
            "a",
            std::slice::from_ref(&c),
            at("2026-05-01T10:00:11Z"),
            true,
            false,
        );
        let fires = f.due(at("2026-05-01T10:00:20Z"));
        let starts: Vec<Vec<String>> = fires
            .iter()
            .filter_map(|x| match x {
                Fire::Start { job, .. } => {
                    Some(job.targets.iter().map(|t| t.to_string()).collect())
                }
                _ => None,
            })
            .collect();
        assert_eq!(starts, vec![vec!["/srv/c".to_string()]]);
        assert!(
            fires
                .iter()
                .any(|x| matches!(x, Fire::Skip { reason: "overlap", job, .. }
            if job.targets.len() == 1 && job.targets[0].to_string() == "/srv/b"))
        );
        // /srv/b fails transiently: retried alone in the background after 1 s,
        // skipped (backoff) by a firing before that
        let mut b = rec("failed");
        b.retry = true;
        f.finished("a", &[b, c], at("2026-05-01T10:00:29.500Z"), true, false);
        let fires = f.due(at("2026-05-01T10:00:30Z"));
        assert!(fires.iter().any(|x| matches!(
            x,
            Fire::Skip {
                reason: "backoff",
                ..
            }
        )));
        let mut c = rec("ok");
        c.target = "/srv/c".into();
        f.finished("a", &[c], at("2026-05-01T10:00:30.2Z"), true, false);
        assert_eq!(f.next_wakeup(), Some(at("2026-05-01T10:00:30.5Z")));
        let retry = started(&f.due(at("2026-05-01T10:00:30.5Z")));
        assert_eq!(retry, vec![("a".to_string(), None, Trigger::Retry)]);
    }

    fn at_20() -> DateTime<Utc> {
        at("2026-05-01T10:00:20Z")
    }

    #[test]
    fn a_failed_run_is_retried_only_before_the_next_firing() {
        let mut f = Firing::default();
        let js = jobs("    retry_interval: 3s\n");
        f.schedule_all(&js, at("2026-05-01T10:00:05Z"));
        f.due(at("2026-05-01T10:00:10Z"));
        f.finished(
            "a",
            &[rec("failed")],
            at("2026-05-01T10:00:12Z"),
            true,
            false,
        );
        assert_eq!(f.jobs["a"].retry_at, Some(at("2026-05-01T10:00:15Z")));
        assert_eq!(f.next_wakeup(), Some(at("2026-05-01T10:00:15Z")));
        let fired = started(&f.due(at("2026-05-01T10:00:15Z")));
        assert_eq!(fired, vec![("a".to_string(), None, Trigger::Retry)]);
        // failing again at 19s: 22s is after the 20s firing, no retry
        f.finished(
            "a",
            &[rec("failed")],
            at("2026-05-01T10:00:19Z"),
            true,
            false,
        );
        assert_eq!(f.jobs["a"].retry_at, None);
        // a success clears any retry
        f.due(at("2026-05-01T10:00:20Z"));
        f.finished("a", &[rec("ok")], at("2026-05-01T10:00:21Z"), true, false);
        assert_eq!(f.jobs["a"].retry_at, None);
        assert_eq!(js[0].retry_interval, Some(Duration::from_secs(3)));
    }

    #[test]
    fn a_reload_keeps_running_state_and_forgets_removed_jobs_when_they_end() {
        let mut f = Firing::default();
        f.schedule_all(&jobs(""), at("2026-05-01T10:00:05Z"));
        f.due(at("2026-05-01T10:00:10Z"));
        // reloaded with the job gone: kept while it runs, never fired
        f.schedule_all(&[], at("2026-05-01T10:00:11Z"));
        assert!(f.jobs["a"].running && f.jobs["a"].next.is_none());
        assert!(f.due(at("2026-05-01T10:00:20Z")).is_empty());
        assert!(
            f.finished("a", &[rec("ok")], at("2026-05-01T10:00:21Z"), false, false)
                .is_empty()
        );
        assert!(f.jobs.is_empty());
        assert_eq!(f.running, 0);
        assert_eq!(f.next_wakeup(), None);
    }
}
