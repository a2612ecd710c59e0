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
use crate::journal::{self, Record};
use crate::lock;
use crate::run::{self, Env, Status, Trigger, Wait};
use crate::target_state::{NotFree, Targets};
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
    /// A run ended: the job's name and its records.
    Finished(String, Vec<Record>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Error = 3,
    Warning = 4,
    Info = 6,
}

/// One line to stderr; with the `<N>` priority prefix journald understands
/// when stderr goes to the journal.
fn say(level: Level, msg: &str) {
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        crate::errln!("<{}>{msg}", level as u8);
    } else {
        let tag = match level {
            Level::Error => "ERROR",
            Level::Warning => "WARN",
            Level::Info => "INFO",
        };
        crate::errln!("{} {tag} {msg}", journal::now_rfc3339());
    }
}

/// A target's line, at its own level, as soon as that target is done.
fn say_record(r: &Record) {
    let level = match r.status {
        Status::Failed => Level::Error,
        Status::Skipped => Level::Warning,
        _ => Level::Info,
    };
    say(level, &run::report::daemon_line(r));
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
    /// Runs of this job in progress (each on different targets).
    runs: usize,
    /// The job's lock, held while `runs > 0`.
    lock: Option<lock::Lock>,
    /// Each target busy or backing off.
    targets: Targets,
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
}

impl Daemon {
    fn schedule_all(&mut self, now: DateTime<Utc>) {
        let mut old = std::mem::take(&mut self.jobs);
        for j in &self.cfg.jobs {
            let next = j.schedule.as_ref().and_then(|s| s.next_after(now, j.tz()));
            let (runs, lock, mut targets, queued, retry_at) = old
                .remove(&j.name)
                .map(|s| (s.runs, s.lock, s.targets, s.queued, s.retry_at))
                .unwrap_or_default();
            let retry_at = retry_at.filter(|_| j.retry_interval.is_some());
            targets.retain_for(j);
            self.jobs.insert(
                j.name.clone(),
                JobState {
                    job: Arc::new(j.clone()),
                    next,
                    runs,
                    lock,
                    targets,
                    queued,
                    retry_at,
                },
            );
        }
        // jobs removed from the file but still running: keep until they end
        for (name, s) in old {
            if s.runs > 0 {
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

    /// Start a run of `name` on its free targets (`only`: just these, for a
    /// background retry). Busy or backing-off targets are skipped for this
    /// firing (logged as skipped when the firing is scheduled).
    fn start(
        &mut self,
        name: &str,
        due: Option<DateTime<Utc>>,
        trigger: Trigger,
        only: Option<&[String]>,
    ) {
        let now = Utc::now();
        let Some(st) = self.jobs.get_mut(name) else {
            return;
        };
        let job = st.job.clone();
        let (mut free, mut busy, mut backing_off) = (Vec::new(), Vec::new(), Vec::new());
        for t in &job.targets {
            let n = t.to_string();
            if only.is_some_and(|o| !o.contains(&n)) {
                continue;
            }
            match st.targets.state(&n, now) {
                Ok(()) => free.push(t.clone()),
                Err(NotFree::Busy) => busy.push(t.clone()),
                Err(NotFree::Backoff) if only.is_some() => free.push(t.clone()),
                Err(NotFree::Backoff) => backing_off.push(t.clone()),
            }
        }
        if due.is_some() {
            for (ts, reason) in [(busy, "overlap"), (backing_off, "backoff")] {
                if ts.is_empty() {
                    continue;
                }
                let mut sub = (*job).clone();
                sub.targets = ts;
                run::log_skipped(&sub, &self.env, trigger, due, reason);
            }
        }
        if free.is_empty() {
            return;
        }
        if st.runs == 0 {
            match lock::try_acquire(
                &lock::job_lock_path(&self.env.state_dir, name),
                trigger.as_str(),
            ) {
                Ok(Some(l)) => st.lock = Some(l),
                Ok(None) => {
                    say(
                        Level::Warning,
                        &format!("job {name}: its lock is held by another run; skipped"),
                    );
                    let mut sub = (*job).clone();
                    sub.targets = free;
                    run::log_skipped(&sub, &self.env, trigger, due, "locked");
                    return;
                }
                Err(e) => {
                    say(
                        Level::Error,
                        &format!("job {name}: cannot take its lock: {e}"),
                    );
                    return;
                }
            }
        }
        for t in &free {
            st.targets.set_busy(&t.to_string());
        }
        st.runs += 1;
        st.retry_at = None;
        self.running += 1;
        let mut sub = (*job).clone();
        sub.targets = free;
        self.spawn_run(sub, due, trigger);
    }

    /// Run `job` (the targets picked for this run) on its own thread.
    fn spawn_run(&self, job: Job, due: Option<DateTime<Utc>>, trigger: Trigger) {
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
                inline_retries: false,
                lock_held: true,
                on_record: Some(say_record),
            };
            let res = run::run_job(&job, &env, &opts, &cancel);
            if !res.reported {
                res.records.iter().for_each(say_record);
            }
            let _ = tx.send(Event::Finished(job.name.clone(), res.records));
        });
    }

    /// Fire every job whose deadline has come, and the retries that are due.
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
            if st.runs > 0 && job.overlap == Overlap::Queue {
                st.queued = true;
                continue;
            }
            self.start(&name, Some(at), Trigger::Schedule, None);
        }
        self.retry_due(now);
    }

    /// Background retries of targets whose backoff is over, and runs of
    /// failed jobs whose `retry_interval` has come.
    fn retry_due(&mut self, now: DateTime<Utc>) {
        let backoffs: Vec<(String, Vec<String>)> = self
            .jobs
            .iter()
            .map(|(n, s)| (n.clone(), s.targets.retry_due(now)))
            .filter(|(_, t)| !t.is_empty())
            .collect();
        for (name, targets) in backoffs {
            self.start(&name, None, Trigger::Retry, Some(&targets));
        }
        let retries: Vec<String> = self
            .jobs
            .iter()
            .filter(|(_, s)| s.retry_at.is_some_and(|t| t <= now))
            .map(|(n, _)| n.clone())
            .collect();
        for name in retries {
            say(
                Level::Info,
                &format!("job {name}: retrying the failed run (retry_interval)"),
            );
            self.start(&name, None, Trigger::Retry, None);
        }
    }

    fn finished(&mut self, name: &str, records: &[Record]) {
        self.running = self.running.saturating_sub(1);
        let Some(st) = self.jobs.get_mut(name) else {
            return;
        };
        st.runs = st.runs.saturating_sub(1);
        if st.runs == 0 {
            st.lock = None;
        }
        let now = Utc::now();
        let mut failed = false;
        for r in records {
            failed |= st.targets.finished(&st.job, r, now);
        }
        // a run failed for good is retried after `retry_interval`, unless
        // the schedule fires again before that anyway
        st.retry_at = match (failed, st.job.retry_interval) {
            (true, Some(iv)) => {
                let at = now + chrono::Duration::from_std(iv).unwrap_or_default();
                (st.next.is_none_or(|n| at < n)).then_some(at)
            }
            _ => st.retry_at,
        };
        let queued = std::mem::take(&mut st.queued);
        let gone = !self.cfg.jobs.iter().any(|j| j.name == name);
        if gone {
            if st.runs == 0 {
                self.jobs.remove(name);
            }
        } else if queued && !self.cancel.load(Ordering::Relaxed) {
            self.start(name, None, Trigger::Schedule, None);
        }
    }

    fn catch_up(&mut self, now: DateTime<Utc>) {
        let names: Vec<&str> = self
            .cfg
            .jobs
            .iter()
            .filter(|j| j.catch_up && j.schedule.is_some())
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
            self.start(&n, None, Trigger::Schedule, None);
        }
    }

    fn reload(&mut self) {
        match config::load(&self.config_path) {
            Ok(cfg) => {
                self.cfg = cfg;
                self.schedule_all(Utc::now());
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

    let mut d = Daemon {
        config_path,
        env,
        cfg,
        jobs: HashMap::new(),
        running: 0,
        cancel: Arc::new(AtomicBool::new(false)),
        tx,
    };
    let now = Utc::now();
    d.schedule_all(now);
    let scheduled = d.jobs.values().filter(|s| s.next.is_some()).count();
    say(
        Level::Info,
        &format!(
            "syncjob {} daemon started: {} job(s), {scheduled} scheduled, state dir {}, log {}",
            env!("CARGO_PKG_VERSION"),
            d.cfg.jobs.len(),
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
            .flat_map(|s| [s.next, s.retry_at, s.targets.next_retry()])
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
            Ok(Event::Finished(name, records)) => d.finished(&name, &records),
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
                    s.runs = s.runs.saturating_sub(1);
                }
            }
            Ok(_) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
    say(Level::Info, "daemon stopped");
    Ok(())
}
