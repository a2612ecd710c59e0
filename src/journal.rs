//! The run log: JSON Lines, one object per job run and target, appended,
//! and its vocabulary as typed enums ([`Status`], [`Trigger`], [`Mode`])
//! stored as the same strings as ever (`"ok"`, `"schedule"`, …).
//!
//! Each record is written with one `write(2)` on an `O_APPEND` descriptor
//! while holding an exclusive `flock` on the log file, so concurrent writers
//! (the daemon and any number of one-shot runs) never interleave or tear a
//! line, even if a write were split. The file is reopened for every record,
//! so a rotated log (logrotate's create or copytruncate) is safe.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// How a run ended, as stored in the log (`"ok"`, `"dry_run"`, …). Ordered
/// from best to worst: a job's status is the worst of its targets'.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    DryRun,
    Skipped,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::DryRun => "dry_run",
            Status::Skipped => "skipped",
            Status::Failed => "failed",
        }
    }
}

/// What started a run: `syncjob run`, the schedule, or a retry after a
/// failed scheduled run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Manual,
    Schedule,
    Retry,
    /// a real-time watch: a batch of changes, or the watcher's full sync
    Watch,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Schedule => "schedule",
            Trigger::Retry => "retry",
            Trigger::Watch => "watch",
        }
    }
}

/// A job's transfer mode (`mode:` in the jobs file, `mode` in the log).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Transfer what differs (size and mtime, or content).
    Incremental,
    /// Transfer every file.
    Full,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Incremental => "incremental",
        }
    }
}

macro_rules! display_as_str {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            /// The stored name (padding and width flags apply).
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.pad(self.as_str())
            }
        }
    )*};
}
display_as_str!(Status, Trigger, Mode);

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PathError {
    pub path: String,
    pub message: String,
}

/// A hook that ran for the run: which, how it ended, its output (the last
/// 4 KiB of stdout and stderr).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct HookOutcome {
    pub hook: String,
    pub ok: bool,
    pub status: String,
    pub output: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Record {
    pub ts: String,
    pub job: String,
    pub run_id: String,
    pub trigger: Trigger,
    pub target: String,
    pub mode: Mode,
    pub status: Status,
    pub reason: Option<String>,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
    pub files_scanned: u64,
    pub files_transferred: u64,
    pub bytes_transferred: u64,
    pub files_deleted: u64,
    /// Source files that vanished during the run (warnings; the run stays
    /// ok unless `vanished: fail`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub files_vanished: u64,
    pub errors: Vec<PathError>,
    #[serde(default)]
    pub warnings: Vec<PathError>,
    /// For scheduled runs: the instant the firing was due (lateness =
    /// `started_at - scheduled_for`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_for: Option<String>,
    /// The job's hooks that ran (before, after, on_failure) with their output.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookOutcome>,
    /// `"manifest"` when the target was not listed: nothing changed in the
    /// source since the target was last left `ok` (see verify_interval)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_state: Option<String>,
    /// Cluster mode: the daemon that owned the job's etcd lock (`host:pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Cluster mode: the etcd revision at which that lock was taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_revision: Option<i64>,
    pub host: String,
    pub pid: u32,
    pub version: String,
    /// Compact log: no-op runs of this target since its previous record
    /// that were not appended (see `log_noop`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unlogged_noop: u64,
    /// Compact log: skipped firings of this target since its previous
    /// record that were not appended.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unlogged_skipped: u64,
    /// Not stored: the record may be left out of a compact log.
    #[serde(skip)]
    pub compact: bool,
    /// Not stored: the target failed for a transient reason and its retry
    /// was left to the caller (the daemon retries it in the background).
    #[serde(skip)]
    pub retry: bool,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Errors, and warnings, kept in one record: a run with thousands of
/// failing or skipped entries still writes a line of bounded size.
pub const MAX_PER_RECORD: usize = 100;

/// The first [`MAX_PER_RECORD`] entries of `list`, then one entry
/// `... and N more {what}` counting the rest and `dropped` (entries
/// already left out upstream).
pub fn capped(list: &[PathError], dropped: u64, what: &str) -> Vec<PathError> {
    let keep = list.len().min(MAX_PER_RECORD);
    let mut v = list[..keep].to_vec();
    let rest = (list.len() - keep) as u64 + dropped;
    if rest > 0 {
        v.push(PathError {
            path: String::new(),
            message: format!("... and {rest} more {what}"),
        });
    }
    v
}

pub fn now_rfc3339() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for buf.len() bytes; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Append one record as one line.
pub fn append(path: &Path, rec: &Record) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(rec).map_err(std::io::Error::other)?;
    line.push(b'\n');
    append_line(path, &line)
}

pub fn append_line(path: &Path, line: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    // created 0600, never through a symlink, only a regular file (`statedir`)
    let mut f = crate::statedir::open(path, crate::statedir::Access::Append)?;
    f.lock()?;
    let r = f.write_all(line);
    let _ = f.unlock();
    r
}

/// The newest record of each of `jobs`, reading the log from its end.
pub fn last_records(log: &Path, jobs: &[&str]) -> std::collections::HashMap<String, Record> {
    let mut found = std::collections::HashMap::new();
    let Ok(lines) = RevLines::open(log) else {
        return found;
    };
    for line in lines.flatten() {
        if found.len() == jobs.len() {
            break;
        }
        if let Ok(r) = serde_json::from_slice::<Record>(&line)
            && jobs.contains(&r.job.as_str())
            && !found.contains_key(&r.job)
        {
            found.insert(r.job.clone(), r);
        }
    }
    found
}

/// The last real outcome (not `skipped`, not `dry_run`) of each
/// (job, target) pair, read from the end of the log.
pub fn last_outcomes(
    log: &Path,
    pairs: &[(String, String)],
) -> std::collections::HashMap<(String, String), Record> {
    let mut found = std::collections::HashMap::new();
    let Ok(lines) = RevLines::open(log) else {
        return found;
    };
    for line in lines.flatten() {
        if found.len() == pairs.len() {
            break;
        }
        if let Ok(r) = serde_json::from_slice::<Record>(&line)
            && !matches!(r.status, Status::Skipped | Status::DryRun)
        {
            let key = (r.job.clone(), r.target.clone());
            if pairs.contains(&key) && !found.contains_key(&key) {
                found.insert(key, r);
            }
        }
    }
    found
}

/// Iterate the lines of a file from the last to the first, reading blocks
/// from the end, so the newest records of a large log come without reading
/// all of it.
pub struct RevLines {
    file: File,
    pos: u64,
    buf: Vec<u8>,
}

impl RevLines {
    pub fn open(path: &Path) -> std::io::Result<RevLines> {
        let mut file = File::open(path)?;
        let pos = file.seek(SeekFrom::End(0))?;
        Ok(RevLines {
            file,
            pos,
            buf: Vec::new(),
        })
    }
}

impl Iterator for RevLines {
    type Item = std::io::Result<Vec<u8>>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            // a complete line sits after the last newline in buf (excluding a trailing one)
            let trimmed = if self.buf.last() == Some(&b'\n') {
                &self.buf[..self.buf.len() - 1]
            } else {
                &self.buf[..]
            };
            if let Some(i) = trimmed.iter().rposition(|b| *b == b'\n') {
                let line = trimmed[i + 1..].to_vec();
                self.buf.truncate(i + 1);
                return Some(Ok(line));
            }
            if self.pos == 0 {
                if trimmed.is_empty() {
                    return None;
                }
                let line = trimmed.to_vec();
                self.buf.clear();
                return Some(Ok(line));
            }
            let n = self.pos.min(64 * 1024);
            self.pos -= n;
            let mut chunk = vec![0u8; n as usize];
            if let Err(e) = self
                .file
                .seek(SeekFrom::Start(self.pos))
                .and_then(|_| self.file.read_exact(&mut chunk))
            {
                return Some(Err(e));
            }
            chunk.extend_from_slice(&self.buf);
            self.buf = chunk;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_trigger_and_mode_are_stored_as_before() {
        fn j<T: Serialize>(v: &T) -> String {
            serde_json::to_string(v).unwrap()
        }
        assert_eq!(j(&Status::DryRun), "\"dry_run\"");
        assert_eq!(j(&Status::Ok), "\"ok\"");
        assert_eq!(j(&Trigger::Schedule), "\"schedule\"");
        assert_eq!(j(&Trigger::Retry), "\"retry\"");
        assert_eq!(j(&Mode::Incremental), "\"incremental\"");
        for s in [Status::Ok, Status::DryRun, Status::Skipped, Status::Failed] {
            let back: Status = serde_json::from_str(&j(&s)).unwrap();
            assert_eq!(
                (back, format!("{s:<8}|")),
                (s, format!("{:<8}|", s.as_str()))
            );
        }
        assert!(serde_json::from_str::<Status>("\"exploded\"").is_err());
        assert!(Status::Failed > Status::Skipped && Status::Skipped > Status::Ok);
    }

    #[test]
    fn reverse_lines_across_blocks() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        let mut want = Vec::new();
        for i in 0..20000 {
            let l = format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 13));
            append_line(&p, format!("{l}\n").as_bytes()).unwrap();
            want.push(l);
        }
        let got: Vec<String> = RevLines::open(&p)
            .unwrap()
            .map(|l| String::from_utf8(l.unwrap()).unwrap())
            .collect();
        want.reverse();
        assert_eq!(got, want);
    }

    #[test]
    fn rotation_by_rename_loses_nothing() {
        // what logrotate does (rename, then `create`): the next append goes
        // to the new file, the rotated one keeps its whole lines
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("runs.jsonl");
        append_line(&p, b"{\"n\":1}\n").unwrap();
        std::fs::rename(&p, d.path().join("runs.jsonl.1")).unwrap();
        append_line(&p, b"{\"n\":2}\n").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"{\"n\":2}\n");
        assert_eq!(
            std::fs::read(d.path().join("runs.jsonl.1")).unwrap(),
            b"{\"n\":1}\n"
        );
    }

    #[test]
    fn no_trailing_newline_and_empty() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("log");
        std::fs::write(&p, "a\nb").unwrap();
        let got: Vec<_> = RevLines::open(&p).unwrap().map(|l| l.unwrap()).collect();
        assert_eq!(got, vec![b"b".to_vec(), b"a".to_vec()]);
        std::fs::write(&p, "").unwrap();
        assert_eq!(RevLines::open(&p).unwrap().count(), 0);
    }
}
