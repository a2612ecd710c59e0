//! `syncjob metrics [--textfile DIR]`: the metrics rebuilt from the run log
//! (counters over every record in it, last successes, durations per run,
//! next firings, running jobs from the locks), printed in Prometheus' text
//! format or written for node_exporter's textfile collector.
//!
//! Invariants: the whole log is read once, front to back; with `--textfile`
//! (or `metrics_textfile:` in the jobs file) the file is replaced by rename,
//! never written in place; nothing is printed then.

use super::textfile;
use crate::config::Config;
use std::path::Path;

/// Why `syncjob metrics` failed (the caller maps it to its exit code).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CommandError(pub String);

/// `log` and `state_dir` are the run's; `dir` the `--textfile` directory.
pub fn run(
    cfg: &Config,
    log: &Path,
    state_dir: &Path,
    dir: Option<&Path>,
    verbose: bool,
) -> Result<(), CommandError> {
    let m = textfile::from_log(cfg, log, state_dir)
        .map_err(|e| CommandError(format!("cannot read run log {}: {e}", log.display())))?;
    let text = m.encode();
    match dir.or(cfg.observe.metrics_textfile.as_deref()) {
        Some(d) => {
            let p = textfile::write(d, &text).map_err(|e| {
                CommandError(format!(
                    "cannot write the metrics into {}: {e}",
                    d.display()
                ))
            })?;
            if verbose {
                eprintln!("syncjob: wrote {}", p.display());
            }
        }
        None => print!("{text}"),
    }
    Ok(())
}
