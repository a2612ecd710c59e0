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
//!
//! `firing` decides what fires when (pure, driven by a [`Clock`]); this
//! file runs the loop, the runs' threads, signals and systemd notices.

mod firing;

use crate::clock::{Clock, SystemClock};
use crate::config::Job;
use crate::config::{self, Config, ConfigError};
use crate::journal::{self, Record};
use crate::lock;
use crate::out::{Level, say};
use crate::run::{self, Env, Status, Trigger, Wait};
use chrono::{DateTime, Utc};
use firing::{Fire, Firing};
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
    Finished(String, Vec<Record>),
}

fn targets_of(job: &Job) -> String {
    let t: Vec<String> = job.targets.iter().map(|t| t.to_string()).collect();
    t.join(", ")
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

struct Daemon {
    /// Each job's lock, held while any run of the job is going.
    locks: HashMap<String, lock::Lock>,
    config_path: PathBuf,
    env: Env,
    cfg: Config,
    firing: Firing,
    cancel: Arc<AtomicBool>,
    tx: mpsc::Sender<Event>,
    clock: Arc<dyn Clock>,
    /// metrics, health, cluster locks (see `observe`)
    obs: Arc<crate::observe::Observer>,
    /// jobs with `watch:` (their firings are full syncs in their watcher)
    watched: crate::watch::daemon::Watched,
}

impl Daemon {
    /// Carry out what the firing logic decided.
    fn execute(&mut self, fires: Vec<Fire>) {
        for f in fires {
            match f {
                Fire::Start { job, .. } if self.watched.contains(&job.name) => {
                    let why = "schedule: periodic full verification";
                    self.watched.full_sync(&job.name, why);
                    // not a run of its own: its targets are free again
                    self.firing.not_started(&job);
                }
                Fire::Start { job, due, trigger } => {
                    // cluster mode: only the job's owner starts it, while etcd answers
                    let Some(permit) = self.obs.claim(&job.name, &self.cancel) else {
                        self.firing.not_started(&job);
                        continue;
                    };
                    if trigger == Trigger::Retry {
                        let msg = format!("job {}: retrying {}", job.name, targets_of(&job));
                        say(Level::Info, &msg);
                    }
                    if !self.take_lock(&job, due, trigger) {
                        continue;
                    }
                    self.spawn_run(job, due, trigger, permit);
                }
                Fire::Skip { job, at, reason } => {
                    let res =
                        run::log_skipped(&job, &self.env, Trigger::Schedule, Some(at), reason);
                    self.obs.finished(&res);
                }
            }
        }
    }

    /// The job's lock for a run (held by the daemon across the job's
    /// runs); false when another process holds it: the run is skipped.
    fn take_lock(&mut self, job: &Job, due: Option<DateTime<Utc>>, trigger: Trigger) -> bool {
        if self.locks.contains_key(&job.name) {
            return true;
        }
        let path = lock::job_lock_path(&self.env.state_dir, &job.name);
        let why = match lock::try_acquire(&path, trigger.as_str()) {
            Ok(Some(l)) => {
                self.locks.insert(job.name.clone(), l);
                return true;
            }
            Ok(None) => "locked".to_string(),
            Err(e) => format!("cannot take the job lock {}: {e}", path.display()),
        };
        say(Level::Warning, &format!("job {}: {why}; skipped", job.name));
        let res = run::log_skipped(job, &self.env, trigger, due, &why);
        self.obs.finished(&res);
        let now = self.clock.now();
        // the run never started: its targets are free again (nothing queued
        // is started from here)
        self.firing
            .finished(&job.name, &res.records, now, true, true);
        false
    }

    /// Run a job on its own thread; `Event::Finished` when it ends.
    fn spawn_run(
        &self,
        job: Arc<Job>,
        due: Option<DateTime<Utc>>,
        trigger: Trigger,
        permit: crate::observe::Permit,
    ) {
        let env = self.env.clone();
        let tx = self.tx.clone();
        let obs = self.obs.clone();
        std::thread::spawn(move || {
            let cancel = permit.cancel.clone();
            let opts = run::Options {
                trigger,
                dry_run: false,
                wait: Wait::No,
                verbose: false,
                quiet: true,
                progress: false,
                verify: false,
                scheduled_for: due,
                owner: permit.owner.clone(),
                inline_retries: false,
                lock_held: true,
                on_record: Some(say_record),
                note: None,
            };
            let res = run::run_job(&job, &env, &opts, &cancel);
            drop(permit);
            obs.finished(&res);
            if !res.reported {
                res.records.iter().for_each(say_record);
            }
            let _ = tx.send(Event::Finished(job.name.clone(), res.records));
        });
    }

    fn finished(&mut self, name: &str, records: &[Record]) {
        let configured = self.cfg.jobs.iter().any(|j| j.name == name);
        let stopping = self.cancel.load(Ordering::Relaxed);
        let now = self.clock.now();
        let fires = self
            .firing
            .finished(name, records, now, configured, stopping);
        if self.firing.jobs.get(name).is_none_or(|s| s.runs == 0) {
            self.locks.remove(name);
        }
        self.execute(fires);
    }

    /// `catch_up: true` jobs whose firing was missed since their last
    /// logged run start now.
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
        let mut fires = Vec::new();
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
                let msg = format!(
                    "job {}: a firing was missed since {}; running it now (catch_up)",
                    j.name, rec.started_at
                );
                say(Level::Info, &msg);
                let now = self.clock.now();
                let f = self
                    .firing
                    .start(&j.name, None, Trigger::Schedule, None, now);
                fires.extend(f);
            }
        }
        self.execute(fires);
    }

    fn reload(&mut self) {
        match config::load(&self.config_path) {
            Ok(cfg) => {
                self.cfg = cfg;
                self.obs.loaded(&self.cfg);
                self.firing.schedule_all(&self.cfg.jobs, self.clock.now());
                self.watched.sync(
                    &self.cfg.jobs,
                    self.cfg.shutdown_timeout,
                    &self.obs,
                    &self.cancel,
                );
                let msg = format!(
                    "reloaded {}: {} job(s)",
                    self.config_path.display(),
                    self.cfg.jobs.len()
                );
                say(Level::Info, &msg);
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

    /// Fire what is due, sleep until the next deadline (at most
    /// MAX_SLEEP, so a clock jump is noticed), handle events; returns the
    /// signal that ended it.
    fn serve(&mut self, rx: &mpsc::Receiver<Event>) -> i32 {
        loop {
            let fires = self.firing.due(self.clock.now());
            self.execute(fires);
            let states = self.firing.jobs.iter();
            self.obs
                .turn(states.map(|(n, s)| (n.as_str(), s.next, s.running)));
            self.watched.report(&self.obs, &self.cancel);
            // watched jobs' backlog and lag are reported every second
            let most = if self.watched.is_empty() {
                MAX_SLEEP
            } else {
                Duration::from_secs(1)
            };
            let sleep = match self.firing.next_wakeup() {
                Some(t) => (t - self.clock.now())
                    .to_std()
                    .unwrap_or(Duration::ZERO)
                    .min(most),
                None => most,
            };
            match rx.recv_timeout(sleep) {
                Ok(Event::Terminate(sig)) => return sig,
                Ok(Event::Reload) => {
                    sd_notify("RELOADING=1");
                    self.reload();
                    sd_notify("READY=1");
                }
                Ok(Event::Finished(name, records)) => self.finished(&name, &records),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return 0,
            }
        }
    }

    /// No new runs; running ones may finish for `shutdown_timeout`, then
    /// they are told to abort and get ABORT_GRACE more.
    fn shutdown(&mut self, rx: &mpsc::Receiver<Event>, signal: i32) {
        sd_notify("STOPPING=1");
        let timeout = self.cfg.shutdown_timeout;
        let msg = format!(
            "signal {signal}: no new runs; waiting up to {}s for {} running job(s)",
            timeout.as_secs(),
            self.firing.running
        );
        say(Level::Info, &msg);
        let deadline = std::time::Instant::now() + timeout;
        self.watched.stop(timeout);
        let mut aborted = false;
        while self.firing.running > 0 {
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
                self.cancel.store(true, Ordering::SeqCst);
                aborted = true;
                continue;
            }
            match rx.recv_timeout(limit - now) {
                Ok(Event::Finished(name, _)) => self.firing.stopped(&name),
                Ok(_) | Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        self.obs.stop();
        say(Level::Info, "daemon stopped");
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
    let _daemon_lock = daemon_lock(&env)?;
    let (tx, rx) = mpsc::channel();
    forward_signals(tx.clone())?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let obs = crate::observe::Observer::start(&cfg, &env).map_err(DaemonError::Setup)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let watched = crate::watch::daemon::Watched::new(env.clone());
    let mut d = Daemon {
        locks: HashMap::new(),
        config_path,
        env,
        cfg,
        firing: Firing::default(),
        cancel,
        tx,
        clock,
        obs: Arc::new(obs),
        watched,
    };
    let now = d.clock.now();
    d.firing.schedule_all(&d.cfg.jobs, now);
    d.watched
        .sync(&d.cfg.jobs, d.cfg.shutdown_timeout, &d.obs, &d.cancel);
    let scheduled = d.firing.jobs.values().filter(|s| s.next.is_some()).count();
    let msg = format!(
        "syncjob {} daemon started: {} job(s), {scheduled} scheduled, {} watched, state dir {}, log {}",
        env!("CARGO_PKG_VERSION"),
        d.cfg.jobs.len(),
        d.watched.len(),
        d.env.state_dir.display(),
        d.env.log.display()
    );
    say(Level::Info, &msg);
    sd_notify("READY=1");
    d.catch_up(now);
    let signal = d.serve(&rx);
    d.shutdown(&rx, signal);
    Ok(())
}

/// One daemon per state dir.
fn daemon_lock(env: &Env) -> Result<lock::Lock, DaemonError> {
    let dlock = lock::daemon_lock_path(&env.state_dir);
    match lock::try_acquire(&dlock, "daemon") {
        Ok(Some(l)) => Ok(l),
        Ok(None) => {
            let who = lock::holder(&dlock)
                .map(|h| format!(" (pid {} since {})", h.pid, h.since))
                .unwrap_or_default();
            Err(DaemonError::AlreadyRunning {
                state_dir: env.state_dir.clone(),
                holder: who,
            })
        }
        Err(e) => Err(DaemonError::Setup(format!(
            "cannot take the daemon lock {}: {e}",
            dlock.display()
        ))),
    }
}

/// SIGTERM/SIGINT/SIGHUP as events, from a thread of their own.
fn forward_signals(tx: mpsc::Sender<Event>) -> Result<(), DaemonError> {
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| DaemonError::Setup(format!("cannot install signal handlers: {e}")))?;
    std::thread::spawn(move || {
        for sig in signals.forever() {
            let ev = if sig == signal_hook::consts::SIGHUP {
                Event::Reload
            } else {
                Event::Terminate(sig)
            };
            if tx.send(ev).is_err() {
                break;
            }
        }
    });
    Ok(())
}
