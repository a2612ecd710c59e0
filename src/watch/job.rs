//! One watched job: a thread reading the watcher and gathering changes
//! into batches, and one worker thread per target applying them.
//!
//! Invariants:
//! - watches are set up before the start's full sync is dispatched;
//! - a batch is dispatched to every target; a target's worker merges what
//!   arrives while it is busy into its next batch; a worker that cannot
//!   reach its target keeps its paths (in the state dir too) and tries
//!   again with the next batch or after a backoff, without holding up the
//!   other targets;
//! - a target whose state is unknown (no manifest, a failed batch) gets a
//!   full sync of its own (the run's code, one target), retried with
//!   backoff, never once per event;
//! - the source root gone, or empty under `delete`, holds every batch back
//!   (logged once); when it is back, a full sync follows;
//! - the job's lock is held by this process while any of its targets
//!   works (see [`SharedLock`]).

use super::batch::{self, Ended, RecordStart, TargetSync};
use super::dirty::{Gather, Paths};
use super::status::{self, Live};
use super::watcher::{Signal, WatchError, Watcher};
use crate::config::Job;
use crate::journal;
use crate::lock;
use crate::out::{Level, say};
use crate::run::{self, Env, Status, Trigger, Wait};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// With the watch limit reached: a full sync this often.
pub const FALLBACK_INTERVAL: Duration = Duration::from_secs(60);
/// A target's state is written as its manifest after this long idle (and
/// at exit; a crash leaves none, and the next start lists the target).
const SAVE_AFTER_IDLE: Duration = Duration::from_secs(30);
/// The longest wait of the job's loop (control messages, status file).
const TICK: Duration = Duration::from_millis(500);

/// Messages to a watched job.
pub enum Control {
    /// A full sync of every target (a scheduled verification).
    Full(String),
}

/// A running watched job.
pub struct Handle {
    pub live: Arc<Live>,
    tx: Sender<Control>,
    stop: Arc<AtomicBool>,
    /// aborts this job's transfers (and only this job's)
    cancel: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Handle {
    pub fn full_sync(&self, why: &str) {
        let _ = self.tx.send(Control::Full(why.to_string()));
    }
    /// Ask the job to stop (its workers finish the batch in hand).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }
    /// Abort the transfers in hand (between chunks).
    pub fn abort(&self) {
        self.cancel.store(true, Ordering::SeqCst);
    }
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
    pub fn join(mut self) {
        self.request_stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The job's flock, taken when the first of its targets starts working
/// and released when the last one is done.
pub struct SharedLock {
    path: PathBuf,
    inner: Mutex<(usize, Option<lock::Lock>)>,
}

pub struct LockGuard<'a>(&'a SharedLock);

impl SharedLock {
    fn acquire(&self, stop: &AtomicBool) -> Option<LockGuard<'_>> {
        let mut g = self.inner.lock().unwrap();
        if g.0 == 0 {
            loop {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
                match lock::acquire_wait(&self.path, "watch", Some(Duration::from_millis(500))) {
                    Ok(Some(l)) => {
                        g.1 = Some(l);
                        break;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        say(
                            Level::Error,
                            &format!("cannot take the job lock {}: {e}", self.path.display()),
                        );
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        }
        g.0 += 1;
        Some(LockGuard(self))
    }
}

impl Drop for LockGuard<'_> {
    fn drop(&mut self) {
        let mut g = self.0.inner.lock().unwrap();
        g.0 -= 1;
        if g.0 == 0 {
            g.1 = None;
        }
    }
}

/// Start watching a job: its watches, then its targets' full syncs.
pub fn spawn(job: Arc<Job>, env: Env) -> Handle {
    let live = Arc::new(Live::default());
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let stop = Arc::new(AtomicBool::new(false));
    let ctx = JobCtx {
        job,
        env,
        cancel: cancel.clone(),
        stop: stop.clone(),
        live: live.clone(),
    };
    let thread = std::thread::spawn(move || job_main(ctx, rx));
    Handle {
        live,
        tx,
        stop,
        cancel,
        thread: Some(thread),
    }
}

#[derive(Clone)]
struct JobCtx {
    job: Arc<Job>,
    env: Env,
    /// aborts transfers (the daemon's shutdown_timeout)
    cancel: Arc<AtomicBool>,
    /// no new batches
    stop: Arc<AtomicBool>,
    live: Arc<Live>,
}

fn log_record(r: &journal::Record, env: &Env, live: &Live) {
    live.finished(r);
    if let Err(e) = journal::append(&env.log, r) {
        say(
            Level::Error,
            &format!("cannot append to run log {}: {e}", env.log.display()),
        );
    }
    say_record(r);
}

fn say_record(r: &journal::Record) {
    let level = if r.status == Status::Ok {
        Level::Info
    } else {
        Level::Error
    };
    say(
        level,
        &format!(
            "job {} -> {}: {} ({}), {} transferred ({} bytes), {} deleted, {} ms{}",
            r.job,
            r.target,
            r.status,
            r.trigger,
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

/// One target's worker.
struct Worker {
    ctx: JobCtx,
    ts: TargetSync,
    pending: Paths,
    pfile: PathBuf,
    lock: Arc<SharedLock>,
    attempt: u32,
    retry_at: Option<Instant>,
    /// the last full sync failed: the next waits for its backoff
    full_failed: bool,
    /// the last batch was held back by the source guard
    held: bool,
    last_work: Instant,
    /// source paths this process cannot read, retried with every batch
    /// and on their own by backoff (never a full sync for them)
    unreadable: Unreadable,
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_secs(1u64 << attempt.min(5)).min(Duration::from_secs(30))
}

/// First wait before an unreadable source path is tried again on its own;
/// it doubles with each try, up to [`UNREADABLE_MAX`].
pub const UNREADABLE_FIRST: Duration = Duration::from_secs(30);
pub const UNREADABLE_MAX: Duration = Duration::from_secs(600);

/// Source paths that could not be read, and their backoff.
#[derive(Default)]
struct Unreadable {
    paths: Paths,
    step: u32,
    next: Option<Instant>,
    /// the batch in hand was this backoff's retry
    retrying: bool,
}

impl Unreadable {
    fn wait(step: u32) -> Duration {
        (UNREADABLE_FIRST * (1u32 << step.min(10))).min(UNREADABLE_MAX)
    }

    fn due(&self) -> bool {
        self.next.is_some_and(|t| t <= Instant::now())
    }

    /// After a batch that held these paths (`failed`: those still
    /// unreadable, `first`: the first error). Logged once per step.
    fn after(&mut self, job: &Job, target: &str, failed: Vec<PathBuf>, first: Option<String>) {
        let (root, job) = (&job.source, &job.name);
        let retrying = std::mem::take(&mut self.retrying);
        if failed.is_empty() {
            if !self.paths.is_empty() {
                say(
                    Level::Info,
                    &format!(
                        "job {job} -> {target}: the source paths that could not be read are sent now"
                    ),
                );
            }
            *self = Unreadable::default();
            return;
        }
        let new = self.paths.is_empty();
        self.paths = Paths::default();
        for p in failed {
            // an unreadable directory: all of it, once it can be read
            let dir = std::fs::symlink_metadata(root.join(&p)).is_ok_and(|m| m.is_dir());
            self.paths.add(if dir {
                super::watcher::Change::Tree(p)
            } else {
                super::watcher::Change::Entry(p)
            });
        }
        if new || retrying {
            if retrying {
                self.step += 1;
            }
            let wait = Unreadable::wait(self.step);
            say(
                Level::Warning,
                &format!(
                    "job {job} -> {target}: {} source path(s) cannot be read ({}); not sent, the target keeps what it has there; tried again with the next batches and in {}s (no full sync)",
                    self.paths.len(),
                    first.unwrap_or_default(),
                    wait.as_secs()
                ),
            );
            self.next = Some(Instant::now() + wait);
        }
    }
}

impl Worker {
    fn run(mut self, rx: Receiver<Paths>) {
        loop {
            let now = Instant::now();
            let unsaved = self.ts.state.as_ref().is_some_and(|s| !s.saved);
            let timeout = match (self.pending.is_empty(), self.retry_at) {
                (false, Some(t)) => t.saturating_duration_since(now),
                (false, None) => Duration::ZERO,
                _ if unsaved => (self.last_work + SAVE_AFTER_IDLE).saturating_duration_since(now),
                _ => TICK,
            }
            .min(TICK);
            let mut fresh = false;
            match rx.recv_timeout(timeout) {
                Ok(p) => {
                    self.pending.merge(p);
                    while let Ok(p) = rx.try_recv() {
                        self.pending.merge(p);
                    }
                    fresh = true;
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            if self.ctx.stop.load(Ordering::Relaxed) {
                break;
            }
            if self.pending.is_empty() && self.unreadable.due() {
                self.unreadable.retrying = true;
                self.unreadable.next = None;
                self.pending.merge(self.unreadable.paths.clone());
                fresh = true;
            }
            if self.pending.is_empty() {
                if unsaved && self.last_work.elapsed() >= SAVE_AFTER_IDLE {
                    self.ts.save_state(&self.ctx.job);
                }
                continue;
            }
            // a full sync waits for its backoff; a batch to a target whose
            // state is known goes with every new batch
            let needs_full = self.pending.full.is_some() || self.ts.state.is_none();
            let waiting = self.retry_at.is_some_and(|t| t > Instant::now());
            if waiting && (!fresh || (needs_full && self.full_failed)) {
                continue;
            }
            self.work();
        }
        self.ts.save_state(&self.ctx.job);
        status::save_pending(&self.pfile, &self.pending);
    }

    fn publish(&self) {
        let n = if self.pending.full.is_some() {
            self.pending.len().max(1)
        } else {
            self.pending.len()
        };
        self.ctx
            .live
            .set_pending(&self.ts.target.to_string(), n as u64);
    }

    fn work(&mut self) {
        self.publish();
        let lock = self.lock.clone();
        let Some(_guard) = lock.acquire(&self.ctx.stop) else {
            return;
        };
        let mut paths = std::mem::take(&mut self.pending);
        let ok = if paths.full.is_some() || self.ts.state.is_none() {
            self.full(&paths)
        } else {
            // the paths that could not be read go with every batch
            paths.merge(self.unreadable.paths.clone());
            self.batch(&paths)
        };
        if ok {
            self.attempt = 0;
            self.retry_at = None;
        } else if std::mem::take(&mut self.held) {
            // the source is gone or empty: wait for the next change (the
            // job's loop sends a full sync when the source is back)
            self.retry_at = Some(Instant::now() + Duration::from_secs(3600));
        } else {
            self.retry_at = Some(Instant::now() + backoff(self.attempt));
            self.attempt += 1;
        }
        self.last_work = Instant::now();
        status::save_pending(&self.pfile, &self.pending);
        self.publish();
    }

    /// A full sync of this target (scan and, unless its manifest is
    /// recent, listing).
    fn full(&mut self, paths: &Paths) -> bool {
        let job = &self.ctx.job;
        let why = paths
            .full
            .clone()
            .unwrap_or_else(|| "the target's state is not known".into());
        say(
            Level::Info,
            &format!("job {} -> {}: full sync: {why}", job.name, self.ts.target),
        );
        self.ts.save_state(job);
        self.ts.disconnect();
        let mut one = (**job).clone();
        one.targets = vec![self.ts.target.clone()];
        let opts = run::Options {
            trigger: Trigger::Watch,
            dry_run: false,
            wait: Wait::No,
            verbose: false,
            quiet: true,
            progress: false,
            verify: false,
            scheduled_for: None,
            owner: None,
            inline_retries: true,
            lock_held: true,
            on_record: None,
            note: Some(format!("full sync: {why}")),
        };
        let res = run::run_job(&one, &self.ctx.env, &opts, &self.ctx.cancel);
        for r in &res.records {
            self.ctx.live.finished(r);
            say_record(r);
        }
        self.ctx.live.full_syncs.fetch_add(1, Ordering::Relaxed);
        // only source paths it could not read: the target is listed for
        // its state, and those paths are retried by backoff
        if res.status != Status::Ok
            && let Some(failed) = only_unreadable(job, &res.records)
            && self.ts.state_from_listing(job)
        {
            self.full_failed = false;
            let first = res.records[0]
                .errors
                .first()
                .map(|e| format!("{}: {}", e.path, e.message));
            let target = self.ts.target.to_string();
            self.unreadable = Unreadable::default();
            self.unreadable.after(job, &target, failed, first);
            return true;
        }
        self.full_failed = res.status != Status::Ok;
        if res.status == Status::Ok {
            self.unreadable = Unreadable::default();
            // without a manifest (mode full, compare checksum,
            // verify_interval 0) each later change is a full sync too
            if self.ts.load_state(job) {
                self.ts.preconnect(job);
            }
            true
        } else {
            self.pending.merge(paths.clone());
            if self.pending.full.is_none() {
                self.pending.set_full(why);
            }
            false
        }
    }

    fn batch(&mut self, paths: &Paths) -> bool {
        let job = self.ctx.job.clone();
        let rs = RecordStart::new(Trigger::Watch);
        let (ended, rec) = self.ts.batch(&job, paths, &self.ctx.cancel, &rs);
        log_record(&rec, &self.ctx.env, &self.ctx.live);
        self.ctx.live.batches.fetch_add(1, Ordering::Relaxed);
        match ended {
            Ended::Ok => {
                let failed = std::mem::take(&mut self.ts.unreadable);
                let first = rec
                    .errors
                    .first()
                    .map(|e| format!("{}: {}", e.path, e.message));
                let target = self.ts.target.to_string();
                self.unreadable.after(&job, &target, failed, first);
                true
            }
            Ended::Unreachable => {
                // the moves already made there are not made again
                let mut rest = paths.clone();
                rest.moves.drain(..self.ts.moves_done.min(rest.moves.len()));
                self.pending.merge(rest);
                false
            }
            Ended::SourceGuard => {
                self.pending.merge(paths.clone());
                self.held = true;
                false
            }
            Ended::Failed => {
                self.pending.merge(paths.clone());
                self.pending.set_full(format!(
                    "a batch failed ({})",
                    rec.reason.unwrap_or_default()
                ));
                // the full sync follows at once; backoff if it fails too
                self.attempt == 0
            }
        }
    }
}

/// The source paths a failed full sync could not read, when those are
/// its only failures (`None`: it failed for other reasons too).
fn only_unreadable(job: &Job, records: &[journal::Record]) -> Option<Vec<PathBuf>> {
    let [r] = records else { return None };
    let n = r.errors.len();
    let reason = r.reason.as_deref()?;
    if n == 0 || !reason.starts_with(&format!("{n} error(s); first:")) {
        return None;
    }
    r.errors
        .iter()
        .map(|e| {
            batch::source_unreadable(&job.source, e).then(|| {
                use std::os::unix::ffi::OsStrExt;
                PathBuf::from(std::ffi::OsStr::from_bytes(&crate::names::decode(&e.path)))
            })
        })
        .collect()
}

fn set_mode(live: &Live, m: &str) {
    *live.mode.lock().unwrap() = m.to_string();
}

/// The job's watching side.
struct Watching {
    ctx: JobCtx,
    watcher: Option<Watcher>,
    gather: Gather,
    root_gone: bool,
    /// the watch limit was reached: periodic full syncs instead
    limited: bool,
    /// the source is empty (under delete): batches held back
    held: Option<String>,
    next_check: Instant,
}

impl Watching {
    fn set_mode(&self, m: &str) {
        set_mode(&self.ctx.live, m);
    }

    /// Set up every watch; on failure, fall back (logged).
    fn watch_all(&mut self) {
        let job = &self.ctx.job;
        let Some(w) = self.watcher.as_mut() else {
            return;
        };
        match w.watch_all() {
            Ok(n) => {
                self.limited = false;
                say(
                    Level::Info,
                    &format!(
                        "job {}: watching {n} directories of {}",
                        job.name,
                        job.source.display()
                    ),
                );
                set_mode(&self.ctx.live, "watching");
            }
            Err(e) => {
                w.clear();
                self.limited = true;
                let extra = match e {
                    WatchError::Limit { .. } => format!(
                        "; falling back to a full sync every {}s",
                        FALLBACK_INTERVAL.as_secs()
                    ),
                    _ => String::new(),
                };
                say(Level::Error, &format!("job {}: {e}{extra}", job.name));
                set_mode(&self.ctx.live, "fallback: periodic full syncs");
                self.next_check = Instant::now() + FALLBACK_INTERVAL;
            }
        }
        self.ctx
            .live
            .watches
            .store(w.watch_count() as u64, Ordering::Relaxed);
    }

    fn signal(&mut self, s: Signal) {
        let name = &self.ctx.job.name;
        let now = Instant::now();
        match s {
            Signal::Overflow => {
                self.ctx.live.overflows.fetch_add(1, Ordering::Relaxed);
                say(
                    Level::Warning,
                    &format!(
                        "job {name}: inotify event queue overflow: changes were lost; a full sync follows"
                    ),
                );
                self.gather.full(
                    "inotify event queue overflow (fs.inotify.max_queued_events)".into(),
                    now,
                );
                self.watch_all();
            }
            Signal::Lost(p) => {
                say(
                    Level::Warning,
                    &format!(
                        "job {name}: watch lost on {}; a full sync follows",
                        p.display()
                    ),
                );
                self.gather
                    .full(format!("watch lost on {}", p.display()), now);
                self.watch_all();
            }
            Signal::RootGone => self.root_gone(),
        }
    }

    fn root_gone(&mut self) {
        if !self.root_gone {
            say(
                Level::Error,
                &format!(
                    "job {}: the source {} is gone: batches stop until it is back (nothing is deleted on the targets)",
                    self.ctx.job.name,
                    self.ctx.job.source.display()
                ),
            );
        }
        self.root_gone = true;
        self.gather.take();
        if let Some(w) = self.watcher.as_mut() {
            w.clear();
        }
        self.set_mode("source gone");
    }

    /// Checks made every second or so: the root back, the fallback's sync.
    fn periodic(&mut self) {
        let now = Instant::now();
        if self.root_gone {
            if std::fs::symlink_metadata(&self.ctx.job.source).is_ok_and(|m| m.is_dir()) {
                self.root_gone = false;
                say(
                    Level::Info,
                    &format!("job {}: the source is back", self.ctx.job.name),
                );
                self.watch_all();
                self.gather.full("the source is back".into(), now);
            }
        } else if self.limited && now >= self.next_check {
            self.watch_all();
            self.gather.full(
                "periodic full sync (the watch limit is reached)".into(),
                now,
            );
            self.next_check = now + FALLBACK_INTERVAL;
        }
    }

    /// Read what the watcher has (waiting at most `timeout`).
    fn read(&mut self, timeout: Duration) {
        let Some(w) = self
            .watcher
            .as_mut()
            .filter(|_| !self.root_gone && !self.limited)
        else {
            std::thread::sleep(timeout);
            return;
        };
        if !w.wait(timeout) {
            return;
        }
        let mut signals = Vec::new();
        let now = Instant::now();
        let gather = &mut self.gather;
        let r = w.read(&mut |c| gather.add(c, now), &mut |s| signals.push(s));
        if let Err(e) = r {
            signals.push(Signal::Lost(PathBuf::new()));
            say(Level::Error, &format!("job {}: {e}", self.ctx.job.name));
        }
        self.ctx
            .live
            .watches
            .store(w.watch_count() as u64, Ordering::Relaxed);
        for s in signals {
            self.signal(s);
        }
        if !self.gather.paths.is_empty() {
            self.ctx.live.oldest.lock().unwrap().get_or_insert(now);
        }
    }

    /// The batch, if due and allowed.
    fn due_batch(&mut self) -> Option<Paths> {
        let w = self.ctx.job.watch.unwrap_or_default();
        let due = self.gather.due(w.delay, w.max_delay)?;
        if Instant::now() < due || self.root_gone {
            return None;
        }
        if let Some(why) = batch::source_guard(&self.ctx.job) {
            if self.held.is_none() {
                say(
                    Level::Error,
                    &format!(
                        "job {}: {why}; batches stop until it is not",
                        self.ctx.job.name
                    ),
                );
                self.set_mode("held: source empty");
            }
            self.held = Some(why);
            self.gather.take();
            return None;
        }
        let mut p = self.gather.take();
        if self.held.take().is_some() {
            self.set_mode("watching");
            p.set_full("the source is no longer empty".into());
        }
        Some(p)
    }
}

fn job_main(ctx: JobCtx, rx: Receiver<Control>) {
    let job = ctx.job.clone();
    *ctx.live.mode.lock().unwrap() = "starting".into();
    let watcher = match Watcher::new(&job.source, job.filter.clone()) {
        Ok(w) => Some(w),
        Err(e) => {
            say(
                Level::Error,
                &format!("job {}: cannot start inotify: {e}", job.name),
            );
            None
        }
    };
    let mut w = Watching {
        ctx: ctx.clone(),
        watcher,
        gather: Gather::default(),
        root_gone: false,
        limited: false,
        held: None,
        next_check: Instant::now(),
    };
    if std::fs::symlink_metadata(&job.source).is_ok_and(|m| m.is_dir()) {
        w.watch_all();
    } else {
        w.root_gone();
    }
    if w.watcher.is_none() {
        w.limited = true;
        w.next_check = Instant::now() + FALLBACK_INTERVAL;
    }
    let workers = start_workers(&ctx);
    // the start: a full sync of every target, after the watches are set
    for (tx, _) in &workers {
        let mut p = Paths::default();
        p.set_full("start".into());
        let _ = tx.send(p);
    }
    let mut last_status = Instant::now() - TICK;
    let mut written: Option<status::Snapshot> = None;
    while !ctx.stop.load(Ordering::Relaxed) {
        while let Ok(Control::Full(why)) = rx.try_recv() {
            w.gather.full(why, Instant::now());
        }
        let wopt = job.watch.unwrap_or_default();
        let timeout = w
            .gather
            .due(wopt.delay, wopt.max_delay)
            .map(|d| d.saturating_duration_since(Instant::now()))
            .unwrap_or(TICK)
            .min(TICK);
        w.read(timeout);
        if let Some(p) = w.due_batch() {
            for (tx, _) in &workers {
                let _ = tx.send(p.clone());
            }
        }
        if last_status.elapsed() >= TICK {
            w.periodic();
            last_status = Instant::now();
            if w.gather.paths.is_empty() && ctx.live.pending_paths() == 0 {
                *ctx.live.oldest.lock().unwrap() = None;
            }
            // written when it changed (nothing is written while idle)
            let snap = ctx.live.snapshot(&job.name);
            if written.as_ref() != Some(&snap) {
                status::write_snapshot(&ctx.env.state_dir, &snap);
                written = Some(snap);
            }
        }
    }
    for (tx, t) in workers {
        drop(tx);
        let _ = t.join();
    }
    status::remove_snapshot(&ctx.env.state_dir, &job.name);
}

type WorkerHandle = (Sender<Paths>, std::thread::JoinHandle<()>);

fn start_workers(ctx: &JobCtx) -> Vec<WorkerHandle> {
    let job = &ctx.job;
    let lock = Arc::new(SharedLock {
        path: lock::job_lock_path(&ctx.env.state_dir, &job.name),
        inner: Mutex::new((0, None)),
    });
    job.targets
        .iter()
        .map(|t| {
            let pfile = status::pending_path(&ctx.env.state_dir, &job.name, &t.to_string());
            let pending = status::load_pending(&pfile);
            let (tx, rx) = mpsc::channel();
            let worker = Worker {
                ctx: ctx.clone(),
                ts: TargetSync::new(job, &ctx.env.state_dir, t.clone()),
                pending,
                pfile,
                lock: lock.clone(),
                attempt: 0,
                retry_at: None,
                full_failed: false,
                held: false,
                last_work: Instant::now(),
                unreadable: Unreadable::default(),
            };
            (tx, std::thread::spawn(move || worker.run(rx)))
        })
        .collect()
}
