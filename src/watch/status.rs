//! What a watched job is doing, for `status`/`list` (another process: a
//! small JSON file in the state dir) and for metrics (getters on [`Live`]),
//! and the pending paths of each target kept in the state dir.
//!
//! Invariants: files are written whole under a temporary name and renamed;
//! a status file whose pid is not alive is ignored by readers; a pending
//! file is read with bounds (paths at most 4096 bytes, at most
//! `dirty::MAX_PATHS` of them; anything else means "full sync").

use super::dirty::{MAX_PATHS, Paths};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Live counters of one watched job.
#[derive(Debug, Default)]
pub struct Live {
    pub watches: AtomicU64,
    pub overflows: AtomicU64,
    pub full_syncs: AtomicU64,
    pub batches: AtomicU64,
    /// target → paths pending for it
    pub pending: Mutex<Vec<(String, u64)>>,
    /// when the oldest change not yet sent everywhere was seen
    pub oldest: Mutex<Option<Instant>>,
    pub mode: Mutex<String>,
    /// Keep the records of batches and full syncs for the daemon's metrics
    /// (`take_records`); off in `syncjob watch`, which has none.
    pub collect: std::sync::atomic::AtomicBool,
    records: Mutex<Vec<crate::journal::Record>>,
}

/// Records kept for the metrics at most (the oldest are dropped).
const MAX_KEPT_RECORDS: usize = 10_000;

impl Live {
    /// A batch's or full sync's record, for the metrics when collected.
    pub fn finished(&self, r: &crate::journal::Record) {
        if !self.collect.load(Ordering::Relaxed) {
            return;
        }
        let mut v = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if v.len() >= MAX_KEPT_RECORDS {
            v.remove(0);
        }
        v.push(r.clone());
    }

    /// The records kept since the last call.
    pub fn take_records(&self) -> Vec<crate::journal::Record> {
        std::mem::take(&mut *self.records.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn watch_count(&self) -> u64 {
        self.watches.load(Ordering::Relaxed)
    }
    pub fn overflow_count(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }
    /// Paths waiting, summed over the targets.
    pub fn pending_paths(&self) -> u64 {
        self.pending.lock().unwrap().iter().map(|(_, n)| n).sum()
    }
    /// How long the oldest unsent change has waited.
    pub fn lag(&self) -> std::time::Duration {
        self.oldest
            .lock()
            .unwrap()
            .map(|t| t.elapsed())
            .unwrap_or_default()
    }
    pub fn set_pending(&self, target: &str, n: u64) {
        let mut p = self.pending.lock().unwrap();
        match p.iter_mut().find(|(t, _)| t == target) {
            Some(x) => x.1 = n,
            None => p.push((target.to_string(), n)),
        }
    }
    pub fn snapshot(&self, job: &str) -> Snapshot {
        Snapshot {
            job: job.to_string(),
            pid: std::process::id(),
            mode: self.mode.lock().unwrap().clone(),
            watches: self.watch_count(),
            overflows: self.overflow_count(),
            full_syncs: self.full_syncs.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            pending: self.pending.lock().unwrap().clone(),
            lag_ms: self.lag().as_millis() as u64,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Snapshot {
    pub job: String,
    pub pid: u32,
    pub mode: String,
    pub watches: u64,
    pub overflows: u64,
    pub full_syncs: u64,
    pub batches: u64,
    pub pending: Vec<(String, u64)>,
    pub lag_ms: u64,
}

/// For `list --json`/`status --json`: a job's watch settings and, when a
/// live process watches it, what it is doing.
pub fn describe(state_dir: &Path, job: &crate::config::Job) -> serde_json::Value {
    let Some(w) = job.watch else {
        return serde_json::Value::Null;
    };
    serde_json::json!({
        "delay_ms": w.delay.as_millis() as u64,
        "max_delay_ms": w.max_delay.as_millis() as u64,
        "watching": read_snapshot(state_dir, &job.name),
    })
}

/// One line per watched job (live or not), for `list`/`status`.
pub fn text_lines(state_dir: &Path, jobs: &[crate::config::Job]) -> Vec<String> {
    let mut out = Vec::new();
    for j in jobs {
        let live = read_snapshot(state_dir, &j.name);
        if j.watch.is_none() && live.is_none() {
            continue;
        }
        out.push(match live {
            Some(s) => format!(
                "watch {}: {} (pid {}), {} watches, {} pending, lag {} ms, {} batches, {} full syncs, {} overflows",
                j.name,
                s.mode,
                s.pid,
                s.watches,
                s.pending.iter().map(|(_, n)| n).sum::<u64>(),
                s.lag_ms,
                s.batches,
                s.full_syncs,
                s.overflows
            ),
            None => format!("watch {}: not watched now (start `syncjob daemon` or `syncjob watch {}`)", j.name, j.name),
        });
    }
    out
}

fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("watch")
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let d = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(d)?;
    let tmp = d.join(format!(
        ".{}.tmp.{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    std::fs::rename(&tmp, path)
}

pub fn write_snapshot(state_dir: &Path, s: &Snapshot) {
    let p = dir(state_dir).join(format!("{}.json", s.job));
    if let Ok(b) = serde_json::to_vec(s) {
        let _ = write_atomic(&p, &b);
    }
}

pub fn remove_snapshot(state_dir: &Path, job: &str) {
    let _ = std::fs::remove_file(dir(state_dir).join(format!("{job}.json")));
}

/// The snapshot of a job watched by a live process.
pub fn read_snapshot(state_dir: &Path, job: &str) -> Option<Snapshot> {
    let p = dir(state_dir).join(format!("{job}.json"));
    let b = std::fs::read(p).ok().filter(|b| b.len() < 1 << 20)?;
    let s: Snapshot = serde_json::from_slice(&b).ok()?;
    crate::lock::pid_alive(s.pid).then_some(s)
}

/// Where a target's pending paths are kept.
pub fn pending_path(state_dir: &Path, job: &str, target: &str) -> PathBuf {
    use sha2::Digest;
    let h = sha2::Sha256::digest(target.as_bytes());
    let hex: String = h[..8].iter().map(|b| format!("{b:02x}")).collect();
    dir(state_dir).join(job).join(format!("{hex}.pending"))
}

/// Keep the pending paths (removed when empty). Format: `F` (full, then
/// the reason) or `T`/`E` (tree or entry, then the path), each NUL-ended.
pub fn save_pending(path: &Path, p: &Paths) {
    if p.is_empty() {
        let _ = std::fs::remove_file(path);
        return;
    }
    let mut b = Vec::new();
    if let Some(r) = &p.full {
        b.push(b'F');
        b.extend_from_slice(r.replace('\0', " ").as_bytes());
        b.push(0);
    }
    // a move is kept as its two names, each a changed tree
    let moved = p.moves.iter().flat_map(|(f, t)| [(f, &true), (t, &true)]);
    for (k, tree) in p.map.iter().chain(moved) {
        b.push(if *tree { b'T' } else { b'E' });
        b.extend_from_slice(k.as_os_str().as_bytes());
        b.push(0);
    }
    let _ = write_atomic(path, &b);
}

/// Read pending paths back (a damaged file means a full sync).
pub fn load_pending(path: &Path) -> Paths {
    let mut out = Paths::default();
    let Ok(b) = std::fs::read(path) else {
        return out;
    };
    let damaged = |out: &mut Paths| out.set_full("pending paths unreadable".into());
    for rec in b.split(|c| *c == 0).filter(|r| !r.is_empty()) {
        let (kind, rest) = (rec[0], &rec[1..]);
        let rel = Path::new(std::ffi::OsStr::from_bytes(rest));
        let sane = rest.len() <= 4096
            && rel.is_relative()
            && rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_)));
        match kind {
            b'F' => out.set_full(String::from_utf8_lossy(rest).into_owned()),
            b'T' | b'E' if sane && out.len() < MAX_PATHS => {
                let c = if kind == b'T' {
                    super::watcher::Change::Tree(rel.to_path_buf())
                } else {
                    super::watcher::Change::Entry(rel.to_path_buf())
                };
                out.add(c);
            }
            _ => damaged(&mut out),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_paths_round_trip_and_bad_ones_mean_full() {
        let d = tempfile::tempdir().unwrap();
        let p = pending_path(d.path(), "j", "host:/x");
        let mut paths = Paths::default();
        paths.add(super::super::watcher::Change::Tree(PathBuf::from("a\nb")));
        paths.add(super::super::watcher::Change::Entry(PathBuf::from("c")));
        save_pending(&p, &paths);
        assert_eq!(load_pending(&p), paths);
        std::fs::write(&p, b"E../../etc/passwd\0").unwrap();
        assert!(load_pending(&p).full.is_some());
        save_pending(&p, &Paths::default());
        assert!(!p.exists());
    }
}
