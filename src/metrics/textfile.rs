//! Metrics for node_exporter's textfile collector, and metrics rebuilt from
//! the run log.
//!
//! Invariants: `DIR/syncjob.prom` is replaced by rename of a complete
//! temporary file in the same directory (`.syncjob.prom.<pid>.tmp`, a name
//! node_exporter ignores), so a reader sees the old text or the new one,
//! never a partial one. Replaying the log reads it once, front to back, one
//! line at a time; lines that are not records are skipped.

use super::Metrics;
use crate::config::Config;
use crate::journal::{Record, RevLines};
use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

/// The file node_exporter reads.
pub const FILE_NAME: &str = "syncjob.prom";

/// How many log lines the daemon reads back at start for last successes.
const SEED_LINES: usize = 200_000;

/// Write `text` to `dir/syncjob.prom` through a temporary file and rename.
pub fn write(dir: &Path, text: &str) -> std::io::Result<PathBuf> {
    let tmp = dir.join(format!(".{FILE_NAME}.{}.tmp", std::process::id()));
    let dest = dir.join(FILE_NAME);
    let r = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &dest)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    r.map(|()| dest)
}

/// Tell the metrics about the jobs of a jobs file (health needs them).
pub fn know_jobs(m: &Metrics, cfg: &Config) {
    let mut h = m.lock_health();
    for j in &cfg.jobs {
        let targets: Vec<String> = j.targets.iter().map(|t| t.to_string()).collect();
        h.set_job(&j.name, &targets, j.stale_after);
    }
}

/// The daemon at start: the last success of each target of `cfg`, from the
/// newest `SEED_LINES` lines of the log.
pub fn seed_last_success(m: &Metrics, cfg: &Config, log: &Path) {
    let mut want: HashMap<(String, String), ()> = cfg
        .jobs
        .iter()
        .flat_map(|j| {
            j.targets
                .iter()
                .map(|t| ((j.name.clone(), t.to_string()), ()))
        })
        .collect();
    let Ok(lines) = RevLines::open(log) else {
        return;
    };
    for line in lines.take(SEED_LINES).flatten() {
        if want.is_empty() {
            break;
        }
        let Ok(r) = serde_json::from_slice::<Record>(&line) else {
            continue;
        };
        if r.status == crate::journal::Status::Ok
            && want.remove(&(r.job.clone(), r.target.clone())).is_some()
            && let Ok(t) = chrono::DateTime::parse_from_rfc3339(&r.finished_at)
        {
            m.seed_success(&r.job, &r.target, t.timestamp_millis() as f64 / 1000.0);
        }
    }
}

/// Rebuild the metrics from the whole run log (`syncjob metrics`): counters
/// count every record, durations are per run, next firings come from the
/// schedules, `syncjob_running` from the job locks.
pub fn from_log(cfg: &Config, log: &Path, state_dir: &Path) -> std::io::Result<Metrics> {
    let m = Metrics::new();
    know_jobs(&m, cfg);
    m.lock_health().beat();
    match std::fs::File::open(log) {
        Ok(f) => replay(&m, std::io::BufReader::new(f))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let now = chrono::Utc::now();
    for j in &cfg.jobs {
        let next = j.schedule.as_ref().and_then(|s| s.next_after(now, j.tz()));
        let lock = crate::lock::job_lock_path(state_dir, &j.name);
        m.set_job(&j.name, next, crate::lock::holder(&lock).is_some());
    }
    Ok(m)
}

/// Feed every record of a log to `m`, the records of one run together.
fn replay(m: &Metrics, r: impl BufRead) -> std::io::Result<()> {
    // records of concurrent runs interleave: keep each run's records until
    // the log ends (or too many runs are open at once)
    let mut open: HashMap<String, Vec<Record>> = HashMap::new();
    for line in r.split(b'\n') {
        let line = line?;
        let Ok(rec) = serde_json::from_slice::<Record>(&line) else {
            continue;
        };
        open.entry(rec.run_id.clone()).or_default().push(rec);
        if open.len() > 10_000 {
            for (_, recs) in open.drain() {
                m.observe_run(&recs);
            }
        }
    }
    for (_, recs) in open {
        m.observe_run(&recs);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_replaces_by_rename_and_leaves_no_temporary() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "a 1\n").unwrap();
        let p = write(d.path(), "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(p).unwrap(), "a 2\n");
        let names: Vec<_> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE_NAME]);
        assert!(write(&d.path().join("missing"), "x").is_err());
    }

    #[test]
    fn replay_groups_records_by_run() {
        let m = Metrics::new();
        let mut a = crate::metrics::tests::rec("web", "/a", "ok", 1, 2000);
        let mut b = crate::metrics::tests::rec("web", "/b", "ok", 1, 1000);
        a.run_id = "x".into();
        b.run_id = "x".into();
        let mut log = Vec::new();
        for r in [&a, &b] {
            log.extend(serde_json::to_vec(r).unwrap());
            log.push(b'\n');
        }
        log.extend(b"not json\n");
        replay(&m, &log[..]).unwrap();
        let t = m.encode();
        assert!(
            t.contains("syncjob_run_duration_seconds_count{job=\"web\"} 1"),
            "{t}"
        );
        assert!(
            t.contains("syncjob_run_duration_seconds_sum{job=\"web\"} 2"),
            "{t}"
        );
    }
}
