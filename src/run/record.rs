//! The run records of one run: what every record of a run shares (run id,
//! trigger, host, the `before` hook's outcome), and appending them to the
//! run log. A record that cannot be appended is reported on stderr; the
//! run goes on.

use super::{Env, Status, Trigger};
use crate::config::Job;
use crate::executor::Outcome;
use crate::journal::{self, PathError, Record};
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
        let mut errors = o.errors.clone();
        if o.errors_dropped > 0 {
            errors.push(PathError {
                path: String::new(),
                message: format!("... and {} more errors", o.errors_dropped),
            });
        }
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
            errors,
            warnings: o.warnings.clone(),
            scheduled_for: self.scheduled_for.clone(),
            hooks: self.hooks.clone(),
            target_state: o.from_manifest.then(|| "manifest".to_string()),
            host: self.host.clone(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// Append records to the run log, each as one line.
pub(super) fn append_all(env: &Env, records: &[Record]) {
    for r in records {
        if let Err(e) = journal::append(&env.log, r) {
            eprintln!(
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
