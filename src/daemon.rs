//! The long-running scheduler: `syncjob daemon`.
//!
//! Every scheduled job has an absolute deadline (a wall-clock instant from
//! its schedule). The loop sleeps until the earliest one, fires every job
//! that is due on its own thread, and computes the next deadline from the
//! *scheduled* instant, not from when the run ended, so a run's duration
//! never makes the schedule drift. Firings missed because the daemon was
//! stopped, or the machine was busy or the clock jumped, are not replayed;
//! `catch_up: true` runs a job once at start when a firing was missed since
//! its last logged run (like systemd's `Persistent=`).
//!
//! A job never overlaps itself: a firing while it runs is skipped and logged
//! (`overlap: skip`, the default) or runs once more after it
//! (`overlap: queue`). Runs take the same per-job lock as `syncjob run`.
//!
//! Signals: SIGTERM/SIGINT stop firing, let running transfers finish for up
//! to `shutdown_timeout` (default 30s), then abort them between files (a
//! file being written is dropped under its temporary name, never at its
//! final name) and exit 0. SIGHUP reloads the jobs file; an invalid file is
//! reported and the old jobs keep running.

use crate::config::{self, Config, ConfigError, Job, Overlap};
use crate::journal;
use crate::lock;
use crate::run::{self, Env, Status, Wait};
use chrono::{DateTime, Utc};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

/// The longest single sleep: a wall-clock jump is noticed within this.
const MAX_SLEEP: Duration = Duration::from_secs(30);
/// After `shutdown_timeout` and the abort, how long to wait for runs to stop.
const ABORT_GRACE: Duration = Duration::from_secs(10);

enum Event {
    Terminate(i32),
    Reload,
    /// A run ended: the job's name and whether it failed.
    Finished(String, bool),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Level {
    Error = 3,
    Warning = 4,
    Info = 6,
}

/// One line to stderr; with the `<N>` priority prefix journald understands
/// when stderr goes to the journal.
pub(crate) fn say(level: Level, msg: &str) {
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        eprintln!("<{}>{msg}", level as u8);
    } else {
        let tag = match level {
            Level::Error => "ERROR",
            Level::Warning => "WARN",
            Level::Info => "INFO",
        };
        eprintln!("{} {tag} {msg}", journal::now_rfc3339());
    }
}

/// systemd's notify protocol (Type=notify), when NOTIFY_SOCKET is set.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(_) => return,
    };
    let p = path.to_string_lossy();
    let r = if let Some(name) = p.strip_prefix('@') {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
            .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
    } else {
        sock.send_to(state.as_bytes(), Path::new(&*p))
    };
    if let Err(e) = r {
        say(Level::Warning, &format!("cannot notify systemd ({p}): {e}"));
    }
}

struct JobState {
    job: Arc<Job>,
    next: Option<DateTime<Utc>>,
    running: bool,
    queued: bool,
    /// A failed run is retried at this instant (`retry_interval`), when
    /// that comes before the next scheduled firing.
    retry_at: Option<DateTime<Utc>>,
}

struct Daemon {
    config_path: PathBuf,
    env: Env,
    cfg: Config,
    jobs: HashMap<String, JobState>,
    running: usize,
    cancel: Arc<AtomicBool>,
    tx: mpsc::Sender<Event>,
    /// jobs with `watch:` (their firings are full syncs in their watcher)
    watched: crate::watch::daemon::Watched,
}

impl Daemon {
    fn schedule_all(&mut self, now: DateTime<Utc>) {
        let mut old = std::mem::take(&mut self.jobs);
        for j in &self.cfg.jobs {
            let next = j.schedule.as_ref().and_then(|s| s.next_after(now, j.tz()));
            let (running, queued, retry_at) = old
                .remove(&j.name)
                .map(|s| (s.running, s.queued, s.retry_at))
                .unwrap_or((false, false, None));
            let retry_at = retry_at.filter(|_| j.retry_interval.is_some());
            self.jobs.insert(
                j.name.clone(),
                JobState {
                    job: Arc::new(j.clone()),
                    next,
                    running,
                    queued,
                    retry_at,
                },
            );
        }
        // jobs removed from the file but still running: keep until they end
        for (name, s) in old {
            if s.running {
                self.jobs.insert(
                    name,
                    JobState {
                        next: None,
                        queued: false,
                        retry_at: None,
                        ..s
                    },
                );
            }
        }
    }

    fn start(&mut self, name: &str, due: Option<DateTime<Utc>>, trigger: &'static str) {
        let Some(st) = self.jobs.get_mut(name) else {
            return;
        };
        st.running = true;
        st.retry_at = None;
        self.running += 1;
        let job = st.job.clone();
        let env = self.env.clone();
        let cancel = self.cancel.clone();
        let tx = self.tx.clone();
        std::thread::spawn(move || {
            let opts = run::Options {
                trigger,
                dry_run: false,
                wait: Wait::No,
                verbose: false,
                quiet: true,
                progress: false,
                verify: false,
                scheduled_for: due,
                note: None,
            };
            let res = run::run_job(&job, &env, &opts, &cancel);
            for r in &res.records {
                let level = match res.status {
                    Status::Failed => Level::Error,
                    Status::Skipped => Level::Warning,
                    _ => Level::Info,
                };
                say(
                    level,
                    &format!(
                        "job {} -> {}: {}, {} transferred ({} bytes), {} deleted, {} ms{}",
                        r.job,
                        r.target,
                        r.status,
                        r.files_transferred,
                        r.bytes_transferred,
                        r.files_deleted,
                        r.duration_ms,
                        r.reason
                            .as_ref()
                            .map(|x| format!(": {x}"))
                            .unwrap_or_default()
                    ),
                );
            }
            let failed = res.status == Status::Failed;
            let _ = tx.send(Event::Finished(job.name.clone(), failed));
        });
    }

    /// Fire every job whose deadline has come.
    fn fire_due(&mut self, now: DateTime<Utc>) {
        let due: Vec<(String, DateTime<Utc>)> = self
            .jobs
            .iter()
            .filter_map(|(n, s)| s.next.filter(|t| *t <= now).map(|t| (n.clone(), t)))
            .collect();
        for (name, at) in due {
            let st = self.jobs.get_mut(&name).unwrap();
            let job = st.job.clone();
            let tz = job.tz();
            // the next deadline follows from the scheduled instant (no drift);
            // if that is already past, the missed firings are not replayed
            let sched = job.schedule.as_ref().unwrap();
            let mut next = sched.next_after(at, tz);
            if next.is_some_and(|n| n <= now) {
                next = sched.next_after(now, tz);
            }
            st.next = next;
            if self.watched.contains(&name) {
                self.watched
                    .full_sync(&name, "schedule: periodic full verification");
                continue;
            }
            if st.running {
                match job.overlap {
                    Overlap::Skip => {
                        say(
                            Level::Warning,
                            &format!("job {name}: still running at {at}; this firing is skipped"),
                        );
                        run::log_skipped(&job, &self.env, "schedule", "overlap");
                    }
                    Overlap::Queue => st.queued = true,
                }
                continue;
            }
            self.start(&name, Some(at), "schedule");
        }
        let retries: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, s)| !s.running && s.retry_at.is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in retries {
            say(
                Level::Info,
                &format!("job {name}: retrying the failed run (retry_interval)"),
            );
            self.start(&name, None, "retry");
        }
    }

    fn finished(&mut self, name: &str, failed: bool) {
        self.running = self.running.saturating_sub(1);
        let Some(st) = self.jobs.get_mut(name) else {
            return;
        };
        st.running = false;
        // a failed run is retried after `retry_interval`, unless the
        // schedule fires again before that anyway
        st.retry_at = match (failed, st.job.retry_interval) {
            (true, Some(iv)) => {
                let at = Utc::now() + chrono::Duration::from_std(iv).unwrap_or_default();
                (st.next.is_none_or(|n| at < n)).then_some(at)
            }
            _ => None,
        };
        let queued = std::mem::take(&mut st.queued);
        let gone = !self.cfg.jobs.iter().any(|j| j.name == name);
        if gone {
            self.jobs.remove(name);
        } else if queued && !self.cancel.load(Ordering::Relaxed) {
            self.start(name, None, "schedule");
        }
    }

    fn catch_up(&mut self, now: DateTime<Utc>) {
        let names: Vec<&str> = self
            .cfg
            .jobs
            .iter()
            .filter(|j| j.catch_up && j.schedule.is_some() && j.watch.is_none())
            .map(|j| j.name.as_str())
            .collect();
        if names.is_empty() {
            return;
        }
        let last = journal::last_records(&self.env.log, &names);
        let mut to_run = Vec::new();
        for j in self
            .cfg
            .jobs
            .iter()
            .filter(|j| names.contains(&j.name.as_str()))
        {
            let Some(rec) = last.get(&j.name) else {
                continue;
            };
            let Ok(ts) = DateTime::parse_from_rfc3339(&rec.started_at) else {
                continue;
            };
            let sched = j.schedule.as_ref().unwrap();
            if sched.fired_between(ts.with_timezone(&Utc), now, j.tz()) {
                say(
                    Level::Info,
                    &format!(
                        "job {}: a firing was missed since {}; running it now (catch_up)",
                        j.name, rec.started_at
                    ),
                );
                to_run.push(j.name.clone());
            }
        }
        for n in to_run {
            self.start(&n, None, "schedule");
        }
    }

    fn reload(&mut self) {
        match config::load(&self.config_path) {
            Ok(cfg) => {
                self.cfg = cfg;
                self.schedule_all(Utc::now());
                self.watched.sync(&self.cfg.jobs, self.cfg.shutdown_timeout);
                say(
                    Level::Info,
                    &format!(
                        "reloaded {}: {} job(s)",
                        self.config_path.display(),
                        self.cfg.jobs.len()
                    ),
                );
            }
            Err(e) => {
                for line in e.to_string().lines() {
                    say(Level::Error, line);
                }
                say(
                    Level::Error,
                    "reload refused: the jobs file is invalid; the previous jobs keep running",
                );
            }
        }
    }
}

/// Why the daemon could not start (once started, it stops only on a signal).
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The jobs file is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Another daemon holds the state dir.
    #[error("another daemon already runs on state dir {state_dir}{holder}")]
    AlreadyRunning { state_dir: PathBuf, holder: String },
    /// The daemon lock or the signal handlers could not be set up.
    #[error("{0}")]
    Setup(String),
}

/// Run the scheduler on the jobs file at `config_path` until SIGTERM/SIGINT.
pub fn run(config_path: PathBuf, env: Env) -> Result<(), DaemonError> {
    let cfg = config::load(&config_path)?;
    let dlock = lock::daemon_lock_path(&env.state_dir);
    let _daemon_lock = match lock::try_acquire(&dlock, "daemon") {
        Ok(Some(l)) => l,
        Ok(None) => {
            let who = lock::holder(&dlock)
                .map(|h| format!(" (pid {} since {})", h.pid, h.since))
                .unwrap_or_default();
            return Err(DaemonError::AlreadyRunning {
                state_dir: env.state_dir.clone(),
                holder: who,
            });
        }
        Err(e) => {
            return Err(DaemonError::Setup(format!(
                "cannot take the daemon lock {}: {e}",
                dlock.display()
            )));
        }
    };

    let (tx, rx) = mpsc::channel();
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| DaemonError::Setup(format!("cannot install signal handlers: {e}")))?;
    let stx = tx.clone();
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let ev = if sig == signal_hook::consts::SIGHUP {
                Event::Reload
            } else {
                Event::Terminate(sig)
            };
            if stx.send(ev).is_err() {
                break;
            }
        }
    });

    let cancel = Arc::new(AtomicBool::new(false));
    let watched = crate::watch::daemon::Watched::new(env.clone(), cancel.clone());
    let mut d = Daemon {
        config_path,
        env,
        cfg,
        jobs: HashMap::new(),
        running: 0,
        cancel,
        tx,
        watched,
    };
    let now = Utc::now();
    d.schedule_all(now);
    d.watched.sync(&d.cfg.jobs, d.cfg.shutdown_timeout);
    let scheduled = d.jobs.values().filter(|s| s.next.is_some()).count();
    say(
        Level::Info,
        &format!(
            "syncjob {} daemon started: {} job(s), {scheduled} scheduled, {} watched, state dir {}, log {}",
            env!("CARGO_PKG_VERSION"),
            d.cfg.jobs.len(),
            d.watched.len(),
            d.env.state_dir.display(),
            d.env.log.display()
        ),
    );
    sd_notify("READY=1");
    d.catch_up(now);

    let signal = loop {
        let now = Utc::now();
        d.fire_due(now);
        let next = d
            .jobs
            .values()
            .flat_map(|s| [s.next, s.retry_at.filter(|_| !s.running)])
            .flatten()
            .min();
        let sleep = match next {
            Some(t) => (t - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO)
                .min(MAX_SLEEP),
            None => MAX_SLEEP,
        };
        match rx.recv_timeout(sleep) {
            Ok(Event::Terminate(sig)) => break sig,
            Ok(Event::Reload) => {
                sd_notify("RELOADING=1");
                d.reload();
                sd_notify("READY=1");
            }
            Ok(Event::Finished(name, failed)) => d.finished(&name, failed),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break 0,
        }
    };

    sd_notify("STOPPING=1");
    let timeout = d.cfg.shutdown_timeout;
    say(
        Level::Info,
        &format!(
            "signal {signal}: no new runs; waiting up to {}s for {} running job(s)",
            timeout.as_secs(),
            d.running
        ),
    );
    let deadline = std::time::Instant::now() + timeout;
    d.watched.stop(timeout);
    let mut aborted = false;
    while d.running > 0 {
        let now = std::time::Instant::now();
        let limit = if aborted {
            deadline + ABORT_GRACE
        } else {
            deadline
        };
        if now >= limit {
            if aborted {
                say(Level::Error, "running jobs did not stop; exiting anyway");
                break;
            }
            say(
                Level::Warning,
                "shutdown_timeout reached: aborting running transfers",
            );
            d.cancel.store(true, Ordering::SeqCst);
            aborted = true;
            continue;
        }
        match rx.recv_timeout(limit - now) {
            Ok(Event::Finished(name, _)) => {
                d.running = d.running.saturating_sub(1);
                if let Some(s) = d.jobs.get_mut(&name) {
                    s.running = false;
                }
            }
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    say(Level::Info, "daemon stopped");
    Ok(())
}
