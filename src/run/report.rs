//! What a finished target says to people, in one place: the summary line
//! `syncjob run` prints to stdout and the line the daemon logs to stderr,
//! both made from the run record (so they never disagree with the log).

use crate::journal::Record;
use crate::units::human_bytes;

/// `syncjob run`'s line for one target:
/// `JOB -> TARGET: STATUS, N transferred (SIZE), N deleted, N ms[: REASON]`.
pub fn summary_line(r: &Record) -> String {
    format!(
        "{} -> {}: {}, {} transferred ({}), {} deleted, {} ms{}\n",
        r.job,
        r.target,
        r.status,
        r.files_transferred,
        human_bytes(r.bytes_transferred),
        r.files_deleted,
        r.duration_ms,
        reason_suffix(r)
    )
}

/// The daemon's line for one target (no newline; bytes as a number).
pub fn daemon_line(r: &Record) -> String {
    format!(
        "job {} -> {}: {}, {} transferred ({} bytes), {} deleted, {} ms{}",
        r.job,
        r.target,
        r.status,
        r.files_transferred,
        r.bytes_transferred,
        r.files_deleted,
        r.duration_ms,
        reason_suffix(r)
    )
}

fn reason_suffix(r: &Record) -> String {
    r.reason
        .as_ref()
        .map(|x| format!(": {x}"))
        .unwrap_or_default()
}
