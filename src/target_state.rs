//! The daemon's view of each target of a job: busy (a run including it is
//! still going) or backing off after a transient failure.
//!
//! Invariants: a target is in at most one run at a time; a firing runs the
//! targets that are free and skips the busy or backing-off ones, so one
//! frozen or dead target never holds the others back; a transient failure
//! is retried in the background (1 s, 2 s, 4 s … at most 30 s, `retries`
//! times), a permanent one waits for the next firing.

use crate::config::Job;
use crate::journal::Record;
use crate::journal::Status;
use chrono::{DateTime, Utc};
use std::collections::HashMap;

/// Why a target is not run at a firing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotFree {
    /// Still running from an earlier firing.
    Busy,
    /// Waiting for its background retry.
    Backoff,
}

#[derive(Debug, Default, Clone)]
struct One {
    busy: bool,
    /// Background retries done since the last success.
    failures: u32,
    backoff_until: Option<DateTime<Utc>>,
}

/// The targets of one job, by their display form.
#[derive(Debug, Default)]
pub struct Targets {
    by_name: HashMap<String, One>,
}

/// Wait before background retry number `n` (0-based): 1 s, 2 s, 4 s … 30 s.
pub fn backoff(n: u32) -> chrono::Duration {
    chrono::Duration::seconds((1i64 << n.min(5)).min(30))
}

impl Targets {
    /// Whether `target` can run now; `retry`: only targets whose backoff is
    /// over count (a background retry), else only those not backing off.
    pub fn state(&self, target: &str, now: DateTime<Utc>) -> Result<(), NotFree> {
        match self.by_name.get(target) {
            Some(t) if t.busy => Err(NotFree::Busy),
            Some(t) if t.backoff_until.is_some_and(|b| b > now) => Err(NotFree::Backoff),
            _ => Ok(()),
        }
    }

    /// The targets whose background retry is due.
    pub fn retry_due(&self, now: DateTime<Utc>) -> Vec<String> {
        self.by_name
            .iter()
            .filter(|(_, t)| !t.busy && t.backoff_until.is_some_and(|b| b <= now))
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The earliest background retry.
    pub fn next_retry(&self) -> Option<DateTime<Utc>> {
        self.by_name
            .values()
            .filter(|t| !t.busy)
            .filter_map(|t| t.backoff_until)
            .min()
    }

    pub fn set_busy(&mut self, target: &str) {
        let t = self.by_name.entry(target.to_string()).or_default();
        t.busy = true;
        t.backoff_until = None;
    }

    /// A target's run ended with `rec`. Returns whether it failed for good
    /// (no background retry left).
    pub fn finished(&mut self, job: &Job, rec: &Record, now: DateTime<Utc>) -> bool {
        let t = self.by_name.entry(rec.target.clone()).or_default();
        t.busy = false;
        match rec.status {
            Status::Failed if rec.retry && t.failures < job.retries => {
                t.backoff_until = Some(now + backoff(t.failures));
                t.failures += 1;
                false
            }
            Status::Failed => {
                t.failures = 0;
                t.backoff_until = None;
                true
            }
            Status::Skipped => false,
            _ => {
                t.failures = 0;
                t.backoff_until = None;
                false
            }
        }
    }

    /// When the target of a record that never ran (skipped) is released.
    pub fn release(&mut self, target: &str) {
        if let Some(t) = self.by_name.get_mut(target) {
            t.busy = false;
        }
    }

    /// Keep only the targets `job` still has (after a reload).
    pub fn retain_for(&mut self, job: &Job) {
        let names: Vec<String> = job.targets.iter().map(|t| t.to_string()).collect();
        self.by_name
            .retain(|n, t| t.busy || names.iter().any(|x| x == n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_30s() {
        let s: Vec<i64> = (0..7).map(|n| backoff(n).num_seconds()).collect();
        assert_eq!(s, [1, 2, 4, 8, 16, 30, 30]);
    }

    #[test]
    fn busy_and_backing_off_targets_are_not_free() {
        let mut t = Targets::default();
        let now = Utc::now();
        assert_eq!(t.state("a", now), Ok(()));
        t.set_busy("a");
        assert_eq!(t.state("a", now), Err(NotFree::Busy));
        t.by_name.get_mut("a").unwrap().busy = false;
        t.by_name.get_mut("a").unwrap().backoff_until = Some(now + backoff(0));
        assert_eq!(t.state("a", now), Err(NotFree::Backoff));
        assert!(t.retry_due(now).is_empty());
        assert_eq!(t.retry_due(now + backoff(1)), ["a"]);
    }
}
