//! One run of one job: lock, walk the source once, then plan, apply and log
//! each target (several targets concurrently, bounded by `parallel`).
//!
//! Rooms: `job` (lock → `before` → scan → targets → `after`), `target` (one
//! target in named steps: manifest shortcut → connect with retry → plan →
//! apply → conclude), `dry_run` (the plan printer), `progress` (the bars of
//! an interactive run), `record` (run records and appending them),
//! `report` (the lines printed for people). Every outcome becomes one
//! record per target in the run log.

mod compact;
mod dry_run;
mod job;
mod preconnect;
mod progress;
mod record;
pub mod report;
mod target;
#[cfg(test)]
mod tests;

pub use crate::journal::{Status, Trigger};
pub use record::new_run_id;
pub use target::transport_settings;

use crate::config::Job;
use crate::executor::Outcome;
use crate::journal::{self, Record};
use crate::target::Target;
use crate::transport::{self, OpenError, Transport, TransportSettings};
use record::{RecordBase, append_all};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Env {
    pub state_dir: PathBuf,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    No,
    Forever,
    Upto(Duration),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub trigger: Trigger,
    pub dry_run: bool,
    pub wait: Wait,
    pub verbose: bool,
    pub quiet: bool,
    /// Draw a progress bar per target (an interactive `syncjob run`).
    pub progress: bool,
    /// List every target in full, whatever its manifest says.
    pub verify: bool,
    /// The instant a scheduled firing was due.
    pub scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
    /// Cluster mode: the etcd lock the run is under (into the records).
    pub owner: Option<crate::cluster::Owner>,
    /// Retry a transient failure within the run (with backoff). The daemon
    /// says false: the target's record is `failed` with `retry` set, and
    /// the daemon retries it in the background, so that a dead target
    /// never keeps the run (and its hooks) waiting.
    pub inline_retries: bool,
    /// The caller holds the job's lock already (the daemon, while runs of
    /// the job on other targets are still going; a watcher's full syncs).
    pub lock_held: bool,
    /// Called with each target's record as soon as that target is done.
    pub on_record: Option<fn(&Record)>,
    /// Why this run happens, put in its records' `reason` when they have
    /// none (a watcher's full sync: start, queue overflow, ...).
    pub note: Option<String>,
}

#[derive(Debug)]
pub struct JobResult {
    pub job: String,
    /// The worst status over the targets.
    pub status: Status,
    pub records: Vec<Record>,
    /// the records are in the run log already
    pub appended: bool,
    /// `Options::on_record` was called for every record already
    pub reported: bool,
}

/// Write records for a run that did not happen (lock held, overlap, ...).
pub fn log_skipped(
    job: &Job,
    env: &Env,
    trigger: Trigger,
    scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
    reason: &str,
) -> JobResult {
    let base = RecordBase::new(job, trigger, scheduled_for);
    let started = (journal::now_rfc3339(), Instant::now());
    let records: Vec<Record> = job
        .targets
        .iter()
        .map(|t| {
            base.record(
                t,
                Status::Skipped,
                Some(reason.into()),
                started.clone(),
                0,
                &Outcome::default(),
            )
        })
        .collect();
    append_all(env, &records);
    JobResult {
        job: job.name.clone(),
        status: Status::Skipped,
        records,
        appended: true,
        reported: false,
    }
}

/// Run one job now. Prints the dry-run plan or a summary per target to
/// stdout (unless quiet) and appends one record per target to the run log.
/// Runs the job's `after` (and on failure `on_failure`) hook at the end of a
/// real run.
pub fn run_job(job: &Job, env: &Env, opts: &Options, cancel: &AtomicBool) -> JobResult {
    run_job_with(job, env, opts, cancel, &transport::open)
}

/// Opens a connection to a target: [`transport::open`], or a fake one in
/// tests.
pub type Opener<'a> =
    dyn Fn(&Target, &TransportSettings) -> Result<Box<dyn Transport>, OpenError> + Sync + 'a;

/// [`run_job`] with the targets opened by `open`.
pub fn run_job_with(
    job: &Job,
    env: &Env,
    opts: &Options,
    cancel: &AtomicBool,
    open: &Opener,
) -> JobResult {
    let mut res = job::run_locked(job, env, opts, cancel, open);
    if opts.dry_run || res.status == Status::Skipped {
        if !res.appended {
            append_all(env, &res.records);
            res.appended = true;
        }
        return res;
    }
    let ran = job::after_hooks(job, opts, &res);
    if !res.appended {
        for r in &mut res.records {
            r.hooks.extend(ran.iter().cloned());
        }
        append_all(env, &res.records);
        res.appended = true;
    }
    res
}
