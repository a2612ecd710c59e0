//! The compact run log of frequent scheduled jobs (`log_noop: false`, the
//! default for schedules firing more often than once a minute): a no-op
//! run (ok, nothing transferred or deleted, no error, warning or hook) and
//! a skipped firing are not appended one by one; they are counted, and the
//! next record appended for that target carries the counts
//! (`unlogged_noop`, `unlogged_skipped`). A target with nothing else to say
//! still gets one record per [`HEARTBEAT`], so `list` and `catch_up` see it
//! alive.
//!
//! Invariants: a run that changed, failed or warned is always appended; a
//! manual run (`syncjob run`) and a watcher's full sync are always
//! appended; counts are never lost
//! within a process (they ride on the next appended record).

use crate::journal::{Record, Status};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The longest a compacted target goes without a record.
pub const HEARTBEAT: Duration = Duration::from_secs(3600);

#[derive(Default)]
struct Pending {
    noop: u64,
    skipped: u64,
    last_logged: Option<Instant>,
}

static PENDING: Mutex<Option<HashMap<(String, String), Pending>>> = Mutex::new(None);

fn quiet(r: &Record) -> Option<bool> {
    match r.status {
        Status::Skipped => Some(true),
        Status::Ok
            if r.files_transferred == 0
                && r.files_deleted == 0
                && r.files_vanished == 0
                && r.errors.is_empty()
                && r.warnings.is_empty()
                && r.hooks.is_empty() =>
        {
            Some(false)
        }
        _ => None,
    }
}

/// Whether `r` is appended; when it is, it takes the counts of the records
/// of its target that were not.
pub(super) fn keep(r: &mut Record) -> bool {
    let mut guard = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    let p = map.entry((r.job.clone(), r.target.clone())).or_default();
    let due = p.last_logged.is_none_or(|t| t.elapsed() >= HEARTBEAT);
    if r.compact
        && !due
        && let Some(skipped) = quiet(r)
    {
        if skipped {
            p.skipped += 1;
        } else {
            p.noop += 1;
        }
        return false;
    }
    r.unlogged_noop = std::mem::take(&mut p.noop);
    r.unlogged_skipped = std::mem::take(&mut p.skipped);
    p.last_logged = Some(Instant::now());
    true
}
