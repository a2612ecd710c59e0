//! The daemon's firing logic, with no threads and no I/O: which job fires
//! when, given the instant it is told (the daemon's [`crate::clock::Clock`]).
//!
//! Invariants: a job's next deadline follows from its *scheduled* instant,
//! not from when it ran (no drift); firings already past are not replayed;
//! a job never runs twice at once (a firing while it runs is skipped, or
//! queued once with `overlap: queue`); a failed run is retried after
//! `retry_interval` only when that comes before the next scheduled firing.

use crate::config::{Job, Overlap};
use crate::journal::Trigger;
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::sync::Arc;

/// One job's place in the schedule.
pub(super) struct JobState {
    pub job: Arc<Job>,
    pub next: Option<DateTime<Utc>>,
    pub running: bool,
    pub queued: bool,
    /// A failed run is retried at this instant (`retry_interval`), when
    /// that comes before the next scheduled firing.
    pub retry_at: Option<DateTime<Utc>>,
}

/// What the daemon is to do.
#[derive(Debug)]
pub(super) enum Fire {
    /// Start a run of the job (it is marked running).
    Start {
        job: Arc<Job>,
        due: Option<DateTime<Utc>>,
        trigger: Trigger,
    },
    /// The job was due at `at` while still running: log a skipped run.
    SkipOverlap { job: Arc<Job>, at: DateTime<Utc> },
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
            let (running, queued, retry_at) = old
                .remove(&j.name)
                .map(|s| (s.running, s.queued, s.retry_at))
                .unwrap_or((false, false, None));
            let retry_at = retry_at.filter(|_| j.retry_interval.is_some());
            let job = Arc::new(j.clone());
            let st = JobState {
                job,
                next,
                running,
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

    /// Mark a job running; what to start.
    pub fn start(
        &mut self,
        name: &str,
        due: Option<DateTime<Utc>>,
        trigger: Trigger,
    ) -> Option<Fire> {
        let st = self.jobs.get_mut(name)?;
        st.running = true;
        st.retry_at = None;
        self.running += 1;
        Some(Fire::Start {
            job: st.job.clone(),
            due,
            trigger,
        })
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
            if st.running {
                match job.overlap {
                    Overlap::Skip => fires.push(Fire::SkipOverlap { job, at }),
                    Overlap::Queue => st.queued = true,
                }
                continue;
            }
            fires.extend(self.start(&name, Some(at), Trigger::Schedule));
        }
        let retries: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, s)| !s.running && s.retry_at.is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in retries {
            fires.extend(self.start(&name, None, Trigger::Retry));
        }
        fires
    }

    /// A run ended at `now`. A failed run is retried after
    /// `retry_interval` unless the schedule fires before; a queued firing
    /// starts now (not when `stopping`); a job no longer `configured` is
    /// forgotten.
    pub fn finished(
        &mut self,
        name: &str,
        failed: bool,
        now: DateTime<Utc>,
        configured: bool,
        stopping: bool,
    ) -> Option<Fire> {
        self.running = self.running.saturating_sub(1);
        let st = self.jobs.get_mut(name)?;
        st.running = false;
        st.retry_at = match (failed, st.job.retry_interval) {
            (true, Some(iv)) => {
                let at = now + chrono::Duration::from_std(iv).unwrap_or_default();
                (st.next.is_none_or(|n| at < n)).then_some(at)
            }
            _ => None,
        };
        let queued = std::mem::take(&mut st.queued);
        if !configured {
            self.jobs.remove(name);
            None
        } else if queued && !stopping {
            self.start(name, None, Trigger::Schedule)
        } else {
            None
        }
    }

    /// A run ended during shutdown.
    pub fn stopped(&mut self, name: &str) {
        self.running = self.running.saturating_sub(1);
        if let Some(s) = self.jobs.get_mut(name) {
            s.running = false;
        }
    }

    /// The earliest instant something is due (a deadline, or the retry of
    /// a job that is not running).
    pub fn next_wakeup(&self) -> Option<DateTime<Utc>> {
        self.jobs
            .values()
            .flat_map(|s| [s.next, s.retry_at.filter(|_| !s.running)])
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
        assert!(f.finished("a", false, clock.now(), true, false).is_none());
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
        assert!(matches!(&skipped[..], [Fire::SkipOverlap { at, .. }] if *at == at_20()));
        assert_eq!(f.running, 1, "no second run of the same job");

        let mut q = Firing::default();
        q.schedule_all(&jobs("    overlap: queue\n"), at("2026-05-01T10:00:05Z"));
        assert_eq!(started(&q.due(t)).len(), 1);
        assert!(q.due(at("2026-05-01T10:00:20Z")).is_empty());
        assert!(q.due(at("2026-05-01T10:00:30Z")).is_empty(), "queued once");
        let again = q.finished("a", false, at("2026-05-01T10:00:31Z"), true, false);
        assert!(matches!(again, Some(Fire::Start { due: None, .. })));
        assert!(
            q.finished("a", false, at("2026-05-01T10:00:32Z"), true, false)
                .is_none()
        );
        // a queued firing does not start during shutdown
        assert_eq!(started(&q.due(at("2026-05-01T10:00:40Z"))).len(), 1);
        assert!(q.due(at("2026-05-01T10:00:50Z")).is_empty());
        assert!(
            q.finished("a", false, at("2026-05-01T10:00:51Z"), true, true)
                .is_none()
        );
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
        f.finished("a", true, at("2026-05-01T10:00:12Z"), true, false);
        assert_eq!(f.jobs["a"].retry_at, Some(at("2026-05-01T10:00:15Z")));
        assert_eq!(f.next_wakeup(), Some(at("2026-05-01T10:00:15Z")));
        let fired = started(&f.due(at("2026-05-01T10:00:15Z")));
        assert_eq!(fired, vec![("a".to_string(), None, Trigger::Retry)]);
        // failing again at 19s: 22s is after the 20s firing, no retry
        f.finished("a", true, at("2026-05-01T10:00:19Z"), true, false);
        assert_eq!(f.jobs["a"].retry_at, None);
        // a success clears any retry
        f.due(at("2026-05-01T10:00:20Z"));
        f.finished("a", false, at("2026-05-01T10:00:21Z"), true, false);
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
            f.finished("a", false, at("2026-05-01T10:00:21Z"), false, false)
                .is_none()
        );
        assert!(f.jobs.is_empty());
        assert_eq!(f.running, 0);
        assert_eq!(f.next_wakeup(), None);
    }
}
