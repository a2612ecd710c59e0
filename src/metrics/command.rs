//! `syncjob metrics [--textfile DIR]`: the metrics rebuilt from the run log
//! (counters over every record in it, last successes, durations per run,
//! next firings, running jobs from the locks), printed in Prometheus' text
//! format or written for node_exporter's textfile collector.
//!
//! Invariants: the whole log is read once, front to back; with `--textfile`
//! (or `metrics_textfile:` in the jobs file) the file is replaced by rename,
//! never written in place; nothing is printed then.

use super::textfile;
use crate::cli::{CliError, EXIT_OK, Global};
use std::path::Path;

pub fn run(g: &Global, dir: Option<&Path>) -> Result<u8, CliError> {
    let cfg = g.load()?;
    let env = g.env();
    let m = textfile::from_log(&cfg, &env)
        .map_err(|e| CliError::Failed(format!("cannot read run log {}: {e}", env.log.display())))?;
    let text = m.encode();
    match dir.or(cfg.observe.metrics_textfile.as_deref()) {
        Some(d) => {
            let p = textfile::write(d, &text).map_err(|e| {
                CliError::Failed(format!(
                    "cannot write the metrics into {}: {e}",
                    d.display()
                ))
            })?;
            if g.verbose {
                eprintln!("syncjob: wrote {}", p.display());
            }
        }
        None => print!("{text}"),
    }
    Ok(EXIT_OK)
}
