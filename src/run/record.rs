//! The run records of one run: what every record of a run shares (run id,
//! trigger, host, the `before` hook's outcome), and appending them to the
//! run log. A record that cannot be appended is reported on stderr; the
//! run goes on.

use super::{Env, Status, Trigger};
use crate::config::Job;
use crate::executor::Outcome;
use crate::journal::{self, Record};
use crate::target::Target;
use std::hash::{BuildHasher, Hasher};
use std::time::Instant;

/// A run's id: `<UTC time>-<pid>-<random>`.
pub fn new_run_id() -> String {
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!(
        "{}-{}-{:06x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        std::process::id(),
        r & 0xff_ffff
    )
}

/// What every record of one run shares.
pub(super) struct RecordBase<'a> {
    job: &'a Job,
    run_id: String,
    trigger: Trigger,
    host: String,
    scheduled_for: Option<String>,
    /// cluster mode: the etcd lock the run is under
    pub owner: Option<crate::cluster::Owner>,
    /// the `before` hook's outcome, in every record of the run
    pub hooks: Vec<journal::HookOutcome>,
    /// the run's `note` (see `Options::note`)
    pub note: Option<String>,
}

impl<'a> RecordBase<'a> {
    pub fn new(
        job: &'a Job,
        trigger: Trigger,
        scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Self {
        RecordBase {
            job,
            run_id: new_run_id(),
            trigger,
            host: journal::hostname(),
            scheduled_for: scheduled_for.map(|t| {
                t.with_timezone(&chrono::Local)
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
            }),
            hooks: Vec::new(),
            owner: None,
            note: None,
        }
    }
}

impl RecordBase<'_> {
    pub fn record(
        &self,
        target: &Target,
        status: Status,
        reason: Option<String>,
        started: (String, Instant),
        files_scanned: u64,
        o: &Outcome,
    ) -> Record {
        let finished = journal::now_rfc3339();
        // bounded: at most 100 of each, then a count of the rest
        let errors = journal::capped(&o.errors, o.errors_dropped, "errors");
        Record {
            ts: finished.clone(),
            job: self.job.name.clone(),
            run_id: self.run_id.clone(),
            trigger: self.trigger,
            target: target.to_string(),
            mode: self.job.mode,
            status,
            reason: reason.or_else(|| self.note.clone()),
            started_at: started.0,
            finished_at: finished,
            duration_ms: started.1.elapsed().as_millis() as u64,
            files_scanned,
            files_transferred: o.files_transferred,
            bytes_transferred: o.bytes_transferred,
            files_deleted: o.files_deleted,
            files_vanished: o.vanished,
            errors,
            warnings: journal::capped(&o.warnings, 0, "warnings"),
            scheduled_for: self.scheduled_for.clone(),
            hooks: self.hooks.clone(),
            target_state: o.from_manifest.then(|| "manifest".to_string()),
            owner: self.owner.as_ref().map(|o| o.owner.clone()),
            lock_revision: self.owner.as_ref().map(|o| o.revision),
            host: self.host.clone(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            retry: false,
            unlogged_noop: 0,
            unlogged_skipped: 0,
            // only scheduled firings and their retries are compacted: a manual
            // run and a watcher's full sync (with its reason) always show
            compact: matches!(self.trigger, Trigger::Schedule | Trigger::Retry)
                && !self.job.logs_noop(),
        }
    }
}

/// Append records to the run log, each as one line.
pub(super) fn append_all(env: &Env, records: &[Record]) {
    for r in records {
        let mut r = r.clone();
        if !super::compact::keep(&mut r) {
            continue;
        }
        let r = &r;
        if let Err(e) = journal::append(&env.log, r) {
            crate::errln!(
                "syncjob: cannot append to run log {}: {e}",
                env.log.display()
            );
        }
    }
}

pub(super) fn hook_outcome(hook: &str, r: &crate::hooks::HookResult) -> journal::HookOutcome {
    journal::HookOutcome {
        hook: hook.into(),
        ok: r.ok,
        status: r.status.clone(),
        output: r.output.clone(),
    }
}
