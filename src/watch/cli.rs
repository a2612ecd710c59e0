//! `syncjob watch JOB...`: watched jobs in the foreground, without the
//! scheduler, until SIGTERM/SIGINT.
//!
//! Invariants: a job is watched by one process at a time (a `.watch` lock
//! beside its run lock; the daemon takes it too); on a signal no new batch
//! starts, the batches in hand finish (aborted between chunks after the
//! jobs file's `shutdown_timeout`), and states are written as manifests.

use super::job::{self, Handle};
use crate::config::{Config, Job};
use crate::lock;
use crate::out::{Level, say};
use crate::run::Env;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub fn watch_lock_path(state_dir: &Path, job: &str) -> PathBuf {
    state_dir.join("locks").join(format!("{job}.watch"))
}

/// Take the job's watch lock (an error when another process watches it).
pub fn take_watch_lock(state_dir: &Path, job: &Job) -> Result<lock::Lock, String> {
    let p = watch_lock_path(state_dir, &job.name);
    match lock::try_acquire(&p, "watch") {
        Ok(Some(l)) => Ok(l),
        Ok(None) => {
            let who = lock::holder(&p)
                .map(|h| format!(" by pid {} since {}", h.pid, h.since))
                .unwrap_or_default();
            Err(format!("job {} is already watched{who}", job.name))
        }
        Err(e) => Err(format!("cannot take the watch lock {}: {e}", p.display())),
    }
}

/// After the abort, how long to wait for watched jobs to stop.
const ABORT_GRACE: Duration = Duration::from_secs(10);

/// Stop watched jobs: no new batches at once; transfers aborted after
/// `timeout`; jobs still not stopped ABORT_GRACE later are left behind.
pub fn stop_all(handles: Vec<(Handle, lock::Lock)>, timeout: Duration) {
    for (h, _) in &handles {
        h.request_stop();
    }
    let deadline = Instant::now() + timeout;
    let mut aborted = false;
    while handles.iter().any(|(h, _)| !h.is_finished()) {
        if Instant::now() >= deadline && !aborted {
            say(
                Level::Warning,
                "shutdown_timeout reached: aborting the watched jobs' transfers",
            );
            handles.iter().for_each(|(h, _)| h.abort());
            aborted = true;
        }
        if Instant::now() >= deadline + ABORT_GRACE {
            say(
                Level::Error,
                "watched jobs did not stop; going on without them",
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for (h, l) in handles {
        h.join();
        drop(l);
    }
}

/// Why `syncjob watch` failed; the caller maps it to its exit code.
#[derive(Debug, thiserror::Error)]
pub enum WatchCmdError {
    /// a mistake on the command line (an unknown job)
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Failed(String),
}

pub fn run(cfg: &Config, env: &Env, names: &[String]) -> Result<(), WatchCmdError> {
    let mut jobs = Vec::new();
    for n in names {
        match cfg.job(n) {
            Some(j) => jobs.push(j.clone()),
            None => {
                return Err(WatchCmdError::Usage(format!(
                    "no job named {n:?} in the jobs file"
                )));
            }
        }
    }
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
    ])
    .map_err(|e| WatchCmdError::Failed(format!("cannot install signal handlers: {e}")))?;
    let mut handles = Vec::new();
    for j in jobs {
        let l = take_watch_lock(&env.state_dir, &j).map_err(WatchCmdError::Failed)?;
        handles.push((job::spawn(Arc::new(j), env.clone()), l));
    }
    let sig = signals.forever().next().unwrap_or(0);
    say(
        Level::Info,
        &format!("signal {sig}: stopping the watched jobs"),
    );
    stop_all(handles, cfg.shutdown_timeout);
    Ok(())
}
