//! One run of one job: lock, walk the source once, then plan, apply and log
//! each target (several targets concurrently, bounded by `parallel`).

use crate::config::Job;
use crate::executor::{self, Outcome, Settings};
use crate::journal::{self, PathError, Record};
use crate::lock;
use crate::manifest;
use crate::plan::{self, Action, Scan, ScanError};
use crate::target::Target;
use crate::transport::{self, OpenError, Retry, TransportSettings};
use crate::units::human_bytes;
use std::hash::{BuildHasher, Hasher};
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Env {
    pub state_dir: PathBuf,
    pub log: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    No,
    Forever,
    Upto(Duration),
    /// The caller holds the job's lock already (a watcher's batches).
    Held,
}

#[derive(Debug, Clone)]
pub struct Options {
    pub trigger: &'static str,
    pub dry_run: bool,
    pub wait: Wait,
    pub verbose: bool,
    pub quiet: bool,
    /// Draw a progress bar per target (an interactive `syncjob run`).
    pub progress: bool,
    /// List every target in full, whatever its manifest says.
    pub verify: bool,
    /// The instant a scheduled firing was due.
    pub scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
    /// Why this run happens, put in its records' `reason` when they have
    /// none (a watcher's full sync: start, queue overflow, ...).
    pub note: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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

#[derive(Debug)]
pub struct JobResult {
    pub job: String,
    /// The worst status over the targets.
    pub status: Status,
    pub records: Vec<Record>,
    /// the records are in the run log already
    pub appended: bool,
}

pub fn new_run_id() -> String {
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    format!(
        "{}-{}-{:06x}",
        chrono::Utc::now().format("%Y%m%dT%H%M%SZ"),
        std::process::id(),
        r & 0xff_ffff
    )
}

/// What every record of one run shares.
struct RecordBase<'a> {
    job: &'a Job,
    run_id: String,
    trigger: &'static str,
    host: String,
    scheduled_for: Option<String>,
    /// the `before` hook's outcome, in every record of the run
    hooks: Vec<journal::HookOutcome>,
    /// the run's `note` (see [`Options::note`])
    note: Option<String>,
}

impl<'a> RecordBase<'a> {
    fn new(
        job: &'a Job,
        trigger: &'static str,
        scheduled_for: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Self {
        RecordBase {
            job,
            run_id: new_run_id(),
            trigger,
            host: journal::hostname(),
            scheduled_for: scheduled_for.map(|t| {
                t.with_timezone(&chrono::Local)
                    .to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
            }),
            hooks: Vec::new(),
            note: None,
        }
    }
}

impl RecordBase<'_> {
    fn record(
        &self,
        target: &Target,
        status: Status,
        reason: Option<String>,
        started: (String, Instant),
        files_scanned: u64,
        o: &Outcome,
    ) -> Record {
        let finished = journal::now_rfc3339();
        let mut errors = o.errors.clone();
        if o.errors_dropped > 0 {
            errors.push(PathError {
                path: String::new(),
                message: format!("... and {} more errors", o.errors_dropped),
            });
        }
        Record {
            ts: finished.clone(),
            job: self.job.name.clone(),
            run_id: self.run_id.clone(),
            trigger: self.trigger.into(),
            target: target.to_string(),
            mode: self.job.mode.as_str().into(),
            status: status.as_str().into(),
            reason: reason.or_else(|| self.note.clone()),
            started_at: started.0,
            finished_at: finished,
            duration_ms: started.1.elapsed().as_millis() as u64,
            files_scanned,
            files_transferred: o.files_transferred,
            bytes_transferred: o.bytes_transferred,
            files_deleted: o.files_deleted,
            errors,
            warnings: o.warnings.clone(),
            scheduled_for: self.scheduled_for.clone(),
            hooks: self.hooks.clone(),
            target_state: o.from_manifest.then(|| "manifest".to_string()),
            host: self.host.clone(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}

/// Write records for a run that did not happen (lock held, overlap, ...).
pub fn log_skipped(job: &Job, env: &Env, trigger: &'static str, reason: &str) -> JobResult {
    let base = RecordBase::new(job, trigger, None);
    let started = (journal::now_rfc3339(), Instant::now());
    let records: Vec<Record> = job
        .targets
        .iter()
        .map(|t| {
            base.record(
                t,
                Status::Skipped,
                Some(reason.into()),
                started.clone(),
                0,
                &Outcome::default(),
            )
        })
        .collect();
    append_all(env, &records);
    JobResult {
        job: job.name.clone(),
        status: Status::Skipped,
        records,
        appended: true,
    }
}

fn append_all(env: &Env, records: &[Record]) {
    for r in records {
        if let Err(e) = journal::append(&env.log, r) {
            eprintln!(
                "syncjob: cannot append to run log {}: {e}",
                env.log.display()
            );
        }
    }
}

/// Whether a real run holds its records back until its `after`/`on_failure`
/// hooks have run, so that their outcome goes into the records. Without
/// such hooks each target's record is appended as soon as it is done.
fn holds_records(job: &Job, opts: &Options) -> bool {
    !opts.dry_run && (job.hooks.after.is_some() || job.hooks.on_failure.is_some())
}

fn hook_outcome(hook: &str, r: &crate::hooks::HookResult) -> journal::HookOutcome {
    journal::HookOutcome {
        hook: hook.into(),
        ok: r.ok,
        status: r.status.clone(),
        output: r.output.clone(),
    }
}

/// Run one job now. Prints the dry-run plan or a summary per target to
/// stdout (unless quiet) and appends one record per target to the run log.
/// Runs the job's `after` (and on failure `on_failure`) hook at the end of a
/// real run.
pub fn run_job(job: &Job, env: &Env, opts: &Options, cancel: &AtomicBool) -> JobResult {
    let mut res = run_job_locked(job, env, opts, cancel);
    if opts.dry_run || res.status == Status::Skipped {
        if !res.appended {
            append_all(env, &res.records);
            res.appended = true;
        }
        return res;
    }
    let sum = |f: fn(&Record) -> u64| res.records.iter().map(f).sum::<u64>().to_string();
    let vars = [
        ("SYNCJOB_JOB", job.name.clone()),
        ("SYNCJOB_STATUS", res.status.as_str().to_string()),
        ("SYNCJOB_TRIGGER", opts.trigger.to_string()),
        (
            "SYNCJOB_RUN_ID",
            res.records
                .first()
                .map(|r| r.run_id.clone())
                .unwrap_or_default(),
        ),
        ("SYNCJOB_SOURCE", job.source.display().to_string()),
        (
            "SYNCJOB_TARGETS",
            job.targets
                .iter()
                .map(|t| t.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        ),
        ("SYNCJOB_FILES_TRANSFERRED", sum(|r| r.files_transferred)),
        ("SYNCJOB_BYTES_TRANSFERRED", sum(|r| r.bytes_transferred)),
        ("SYNCJOB_FILES_DELETED", sum(|r| r.files_deleted)),
        (
            "SYNCJOB_REASON",
            res.records
                .iter()
                .find_map(|r| r.reason.clone())
                .unwrap_or_default(),
        ),
    ];
    let mut hooks = vec![("after", &job.hooks.after)];
    if res.status == Status::Failed {
        hooks.push(("on_failure", &job.hooks.on_failure));
    }
    let mut ran = Vec::new();
    for (name, cmd) in hooks {
        if let Some(cmd) = cmd {
            let r = crate::hooks::run(cmd, &vars, job.hooks.timeout);
            if !r.ok {
                eprintln!(
                    "syncjob: job {}: {name} hook failed ({}): {}",
                    job.name, r.status, r.output
                );
            }
            ran.push(hook_outcome(name, &r));
        }
    }
    if !res.appended {
        for r in &mut res.records {
            r.hooks.extend(ran.iter().cloned());
        }
        append_all(env, &res.records);
        res.appended = true;
    }
    res
}

fn run_job_locked(job: &Job, env: &Env, opts: &Options, cancel: &AtomicBool) -> JobResult {
    let lock_path = lock::job_lock_path(&env.state_dir, &job.name);
    // A dry run changes nothing and takes no lock.
    let _lock = if opts.dry_run || opts.wait == Wait::Held {
        None
    } else {
        let got = match opts.wait {
            Wait::No => lock::try_acquire(&lock_path, opts.trigger),
            Wait::Forever => lock::acquire_wait(&lock_path, opts.trigger, None),
            Wait::Upto(d) => lock::acquire_wait(&lock_path, opts.trigger, Some(d)),
            Wait::Held => unreachable!("no lock taken"),
        };
        match got {
            Ok(Some(l)) => Some(l),
            Ok(None) => {
                if !opts.quiet {
                    let who = lock::holder(&lock_path)
                        .map(|h| format!(" by pid {} since {}", h.pid, h.since))
                        .unwrap_or_default();
                    eprintln!("syncjob: job {} is already running{who}; skipped", job.name);
                }
                return log_skipped(job, env, opts.trigger, "locked");
            }
            Err(e) => {
                return fail_all(
                    job,
                    env,
                    opts,
                    format!("cannot take the job lock {}: {e}", lock_path.display()),
                    Vec::new(),
                );
            }
        }
    };

    let mut before = Vec::new();
    if !opts.dry_run
        && let Some(cmd) = &job.hooks.before
    {
        let r = crate::hooks::run(
            cmd,
            &[
                ("SYNCJOB_JOB", job.name.clone()),
                ("SYNCJOB_TRIGGER", opts.trigger.to_string()),
                ("SYNCJOB_SOURCE", job.source.display().to_string()),
            ],
            job.hooks.timeout,
        );
        before.push(hook_outcome("before", &r));
        if !r.ok {
            return fail_all(
                job,
                env,
                opts,
                format!("before hook failed ({}): {}", r.status, r.output),
                before,
            );
        }
    }
    let started = (journal::now_rfc3339(), Instant::now());
    let scan = match plan::scan_source(&job.source, &job.filter) {
        Ok(s) => s,
        Err(e) => {
            let reason = match &e {
                ScanError::Missing(_) => format!("{e}; nothing was changed on the targets"),
                _ => e.to_string(),
            };
            return fail_all(job, env, opts, reason, before);
        }
    };
    if job.delete && scan.is_empty() && !job.allow_empty_source {
        return fail_all(
            job,
            env,
            opts,
            format!(
                "source {} is empty and delete is on: refusing to empty the targets (set allow_empty_source: true if this is intended)",
                job.source.display()
            ),
            before,
        );
    }

    let mut base = RecordBase::new(job, opts.trigger, opts.scheduled_for);
    base.hooks = before;
    base.note = opts.note.clone();
    let hold = holds_records(job, opts);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Record)>> = Mutex::new(Vec::new());
    let print_lock = Mutex::new(());
    let multi = (opts.progress && !opts.dry_run).then(indicatif::MultiProgress::new);
    let shared = RunShared {
        env,
        scan: &scan,
        opts,
        cancel,
        base: &base,
        started: &started,
        multi: multi.as_ref(),
    };
    let workers = job.parallel.min(job.targets.len()).max(1);
    std::thread::scope(|sc| {
        for _ in 0..workers {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(target) = job.targets.get(i) else {
                        break;
                    };
                    let (rec, text) = sync_target(job, target, &shared);
                    if !hold {
                        append_all(env, std::slice::from_ref(&rec));
                    }
                    if !text.is_empty() {
                        let _g = print_lock.lock().unwrap();
                        match &multi {
                            Some(m) => m.suspend(|| print!("{text}")),
                            None => print!("{text}"),
                        }
                    }
                    results.lock().unwrap().push((i, rec));
                }
            });
        }
    });
    let mut recs = results.into_inner().unwrap();
    recs.sort_by_key(|(i, _)| *i);
    let records: Vec<Record> = recs.into_iter().map(|(_, r)| r).collect();
    let status = records
        .iter()
        .map(|r| match r.status.as_str() {
            "ok" => Status::Ok,
            "dry_run" => Status::DryRun,
            "skipped" => Status::Skipped,
            _ => Status::Failed,
        })
        .max()
        .unwrap_or(Status::Ok);
    JobResult {
        job: job.name.clone(),
        status,
        records,
        appended: !hold,
    }
}

fn fail_all(
    job: &Job,
    env: &Env,
    opts: &Options,
    reason: String,
    before: Vec<journal::HookOutcome>,
) -> JobResult {
    if !opts.quiet {
        eprintln!("syncjob: job {}: {reason}", job.name);
    }
    let mut base = RecordBase::new(job, opts.trigger, opts.scheduled_for);
    base.hooks = before;
    let started = (journal::now_rfc3339(), Instant::now());
    let records: Vec<Record> = job
        .targets
        .iter()
        .map(|t| {
            base.record(
                t,
                Status::Failed,
                Some(reason.clone()),
                started.clone(),
                0,
                &Outcome::default(),
            )
        })
        .collect();
    let hold = holds_records(job, opts);
    if !hold {
        append_all(env, &records);
    }
    JobResult {
        job: job.name.clone(),
        status: Status::Failed,
        records,
        appended: !hold,
    }
}

/// A bar for one target: bytes done of the files to copy, files done,
/// rate and ETA.
fn progress_bar(
    m: &indicatif::MultiProgress,
    job: &Job,
    target: &Target,
    plan: &plan::Plan,
) -> (indicatif::ProgressBar, u64) {
    let (files, bytes) = plan.copy_totals();
    let bar = m.add(indicatif::ProgressBar::new(bytes));
    let style = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:25}] {bytes}/{total_bytes} {msg} {binary_bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    bar.set_style(style);
    bar.set_prefix(format!("{} -> {target}", job.name));
    bar.set_message(format!("0/{files} files"));
    (bar, files)
}

/// Wait before retry number `n` (0-based): 1s, 2s, 4s, ... up to 30s.
/// Returns false if a shutdown came meanwhile.
fn backoff(n: u32, cancel: &AtomicBool) -> bool {
    let d = Duration::from_secs(1u64 << n.min(5)).min(Duration::from_secs(30));
    let until = Instant::now() + d;
    while Instant::now() < until {
        if cancel.load(Ordering::Relaxed) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// What the transports need of a job.
fn transport_settings(job: &Job) -> TransportSettings {
    TransportSettings {
        ssh: job.ssh.clone(),
    }
}

/// Connect to a target and list it, unless its entries are already known
/// (from its manifest).
fn connect(
    job: &Job,
    target: &Target,
    known: Option<manifest::ManifestEntries>,
) -> Result<(Box<dyn transport::Transport>, transport::Listing), (String, OpenError)> {
    let mut t = transport::open(target, &transport_settings(job))
        .map_err(|e| ("cannot reach target".to_string(), e))?;
    let l = match known {
        Some(entries) => transport::Listing {
            stream: Some(transport::Stream {
                entries: Box::new(entries),
                errors: Default::default(),
            }),
            ..Default::default()
        },
        None => match t.list_stream(&job.filter) {
            Some(l) => l,
            None => t.list(&job.filter),
        }
        .map_err(|e| ("cannot list target".to_string(), OpenError::from(e)))?,
    };
    Ok((t, l))
}

/// Plan and apply one target; returns its record and the text to print.
/// What the targets of one run share.
#[derive(Clone, Copy)]
struct RunShared<'a> {
    env: &'a Env,
    scan: &'a Scan,
    opts: &'a Options,
    cancel: &'a AtomicBool,
    base: &'a RecordBase<'a>,
    started: &'a (String, Instant),
    multi: Option<&'a indicatif::MultiProgress>,
}

/// Transient failures (connection refused, timeout, a channel lost midway)
/// are retried `retries` times with exponential backoff, each time listing
/// and planning afresh, so work already done is not repeated; permanent
/// ones (auth refused, host key unknown or changed) are not.
fn sync_target(job: &Job, target: &Target, run: &RunShared) -> (Record, String) {
    let RunShared {
        env,
        scan,
        opts,
        cancel,
        base,
        started,
        multi,
    } = *run;
    let mut text = String::new();
    let mut outcome = Outcome {
        errors: scan.errors.clone(),
        warnings: scan.warnings.clone(),
        ..Default::default()
    };
    let files_scanned = scan.files();
    let finish = |outcome: &Outcome, status: Status, reason: Option<String>, text: &mut String| {
        let rec = base.record(
            target,
            status,
            reason.clone(),
            started.clone(),
            files_scanned,
            outcome,
        );
        if !opts.quiet {
            text.push_str(&format!(
                "{} -> {target}: {}, {} transferred ({}), {} deleted, {} ms{}\n",
                job.name,
                status.as_str(),
                rec.files_transferred,
                human_bytes(rec.bytes_transferred),
                rec.files_deleted,
                rec.duration_ms,
                reason.map(|r| format!(": {r}")).unwrap_or_default()
            ));
        }
        rec
    };
    // the target's manifest (see `manifest`): nothing changed in the source
    // since the target was last left `ok` → no need to connect; the source
    // changed → plan against the manifest instead of listing the target
    let mpath = manifest::path_for(&env.state_dir, job, target);
    let effective_owner = job.preserve_owner && unsafe { libc::geteuid() } == 0;
    // manifests are kept for incremental size+mtime jobs; --verify lists
    // (and then refreshes the manifest)
    let manifest_ok = !opts.dry_run
        && !job.verify_interval.is_zero()
        && job.mode == crate::config::Mode::Incremental
        && job.compare == crate::config::Compare::SizeMtime;
    let mut from_manifest: Option<(manifest::ManifestEntries, u64)> = None;
    if manifest_ok
        && !opts.verify
        && scan.errors.is_empty()
        && scan.unknown.is_empty()
        && let Some(m) = manifest::load(&mpath, job, target, job.verify_interval)
        && m.caps.preserve_owner == effective_owner
    {
        if manifest::digest(scan, m.caps) == m.digest {
            outcome.from_manifest = true;
            return (finish(&outcome, Status::Ok, None, &mut text), text);
        }
        // the source changed: plan against the manifest, no listing
        from_manifest = m.entries().map(|t| (t, m.listed_at));
    }
    let mut attempt = 0u32;
    let mut retried = Vec::new();
    loop {
        let planned_from = from_manifest.take();
        outcome.from_manifest = planned_from.is_some();
        let listed_at = planned_from
            .as_ref()
            .map(|(_, at)| *at)
            .unwrap_or_else(manifest::unix_now);
        let conn = connect(job, target, planned_from.map(|(tree, _)| tree));
        let (mut t, mut listing) = match conn {
            Ok(x) => x,
            Err((what, e)) => {
                let permanent = e.retry == Retry::Permanent;
                if !permanent && attempt < job.retries && !opts.dry_run && backoff(attempt, cancel)
                {
                    retried.push(format!("{what}: {e}"));
                    attempt += 1;
                    continue;
                }
                let mut reason = format!("{what}: {e}");
                if permanent {
                    reason.push_str(" (not retried)");
                } else if attempt > 0 {
                    reason.push_str(&format!(" (after {attempt} retries)"));
                }
                return (
                    finish(&outcome, Status::Failed, Some(reason), &mut text),
                    text,
                );
            }
        };
        let mut errors_now = std::mem::take(&mut listing.errors);
        let exists = listing.exists();
        let popts = plan::Options {
            mode: job.mode,
            compare: job.compare,
            delete: job.delete,
            preserve_owner: effective_owner,
            mtime_nanos: t.mtime_nanos(),
            symlink_times: t.symlink_times(),
        };
        let plan = {
            let src_root = &job.source;
            let tr = &mut t;
            let mut same = |rel: &std::path::Path| tr.same_content(rel, &src_root.join(rel));
            match listing.stream.take() {
                Some(mut st) => {
                    let plan =
                        plan::diff_stream(scan, &mut st.entries, &job.filter, popts, &mut same);
                    errors_now.extend(st.errors.take());
                    plan
                }
                None => plan::diff(scan, listing.tree.as_ref(), &job.filter, popts, &mut same),
            }
        };
        errors_now.extend(plan.errors.iter().cloned());

        if opts.dry_run {
            let mut transfers = 0u64;
            let mut bytes = 0u64;
            let mut deletes = 0u64;
            if !opts.quiet {
                text.push_str(&format!("# {} -> {target} (dry run)\n", job.name));
            }
            for a in plan.actions() {
                match a {
                    Action::Copy { size, .. } => {
                        transfers += 1;
                        bytes += size;
                    }
                    Action::Delete { counted: true, .. } => deletes += 1,
                    _ => {}
                }
                let line = a.itemize();
                if !line.is_empty() {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
            if !opts.quiet {
                text.push_str(&format!(
                    "# would transfer {transfers} files ({}), delete {deletes}\n",
                    human_bytes(bytes)
                ));
            }
            outcome.errors.extend(errors_now);
            let rec = base.record(
                target,
                Status::DryRun,
                None,
                started.clone(),
                files_scanned,
                &outcome,
            );
            return (rec, text);
        }

        if !exists && let Err(e) = t.ensure_root() {
            outcome.errors.extend(errors_now);
            let reason = format!("cannot create target root: {e}");
            return (
                finish(&outcome, Status::Failed, Some(reason), &mut text),
                text,
            );
        }
        let caps = manifest::Caps {
            mtime_nanos: popts.mtime_nanos,
            symlink_times: popts.symlink_times,
            preserve_owner: popts.preserve_owner,
        };
        if !plan.is_empty() {
            manifest::remove(&mpath);
        }
        let bar = multi.map(|m| progress_bar(m, job, target, &plan));
        let files_done = std::sync::atomic::AtomicU64::new(0);
        // bytes sent, counted by the transports chunk by chunk
        let sent = bar
            .as_ref()
            .map(|_| std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0)));
        let show_sent = |bar: &indicatif::ProgressBar| {
            if let Some(c) = &sent {
                let total = bar.length().unwrap_or(0);
                bar.set_position(c.load(Ordering::Relaxed).min(total));
            }
        };
        let verbose_lines = Mutex::new(String::new());
        let on_done = |a: &Action| {
            if let (Some((bar, files)), Action::Copy { .. }) = (&bar, a) {
                let n = files_done.fetch_add(1, Ordering::Relaxed) + 1;
                show_sent(bar);
                bar.set_message(format!("{n}/{files} files"));
            }
            if opts.verbose {
                let l = a.itemize();
                if !l.is_empty() {
                    let mut v = verbose_lines.lock().unwrap();
                    v.push_str(&l);
                    v.push('\n');
                }
            }
        };
        let tsettings = transport_settings(job);
        let open_extra = || transport::open(target, &tsettings).map_err(|e| e.source);
        let settings = Settings {
            source_root: &job.source,
            max_delete: job.max_delete,
            preserve_owner: popts.preserve_owner,
            cancel,
            on_done: &on_done,
            open_extra: Some(&open_extra),
            streams: job.streams,
            progress: sent.clone(),
        };
        let copying = AtomicBool::new(true);
        let applied = std::thread::scope(|sc| {
            // a big file moves the bar while it is being sent
            if let Some((b, _)) = &bar {
                let (copying, show_sent) = (&copying, &show_sent);
                sc.spawn(move || {
                    while copying.load(Ordering::Relaxed) {
                        show_sent(b);
                        std::thread::sleep(Duration::from_millis(100));
                    }
                });
            }
            let r = executor::execute(&plan, t.as_mut(), &settings);
            copying.store(false, Ordering::Relaxed);
            r
        });
        drop(t);
        if let Some((bar, _)) = &bar {
            show_sent(bar);
            bar.finish();
        }
        text.push_str(&verbose_lines.into_inner().unwrap());
        outcome.files_transferred += applied.files_transferred;
        outcome.bytes_transferred += applied.bytes_transferred;
        outcome.files_deleted += applied.files_deleted;
        outcome.warnings.extend(applied.warnings);
        let lost = applied.lost_target;
        if lost && attempt < job.retries && backoff(attempt, cancel) {
            retried.push(applied.aborted.clone().unwrap_or_default());
            attempt += 1;
            continue;
        }
        outcome.errors.extend(errors_now);
        outcome.errors.extend(applied.errors);
        outcome.errors_dropped += applied.errors_dropped;

        let mut reasons = Vec::new();
        if let Some(a) = &applied.aborted {
            reasons.push(a.clone());
        }
        if applied.deletes_withheld > 0 {
            reasons.push(format!(
                "max_delete ({}) reached: {} deletions not done",
                job.max_delete.unwrap_or(0),
                applied.deletes_withheld
            ));
        }
        if !outcome.errors.is_empty() {
            let first = &outcome.errors[0];
            reasons.push(format!(
                "{} error(s); first: {}: {}",
                outcome.errors.len() as u64 + outcome.errors_dropped,
                first.path,
                first.message
            ));
        }
        if !retried.is_empty() && !reasons.is_empty() {
            reasons.push(format!(
                "after {} retries ({})",
                retried.len(),
                retried.join("; ")
            ));
        }
        let status = if reasons.is_empty() {
            Status::Ok
        } else {
            Status::Failed
        };
        let reason = (!reasons.is_empty()).then(|| reasons.join("; "));
        if manifest_ok
            && status == Status::Ok
            && outcome.errors.is_empty()
            && scan.unknown.is_empty()
        {
            if let Err(e) = manifest::save(&mpath, job, target, caps, listed_at, scan) {
                manifest::remove(&mpath);
                outcome.warnings.push(PathError {
                    path: String::new(),
                    message: format!("cannot write the target manifest {}: {e}", mpath.display()),
                });
            }
        } else {
            manifest::remove(&mpath);
        }
        return (finish(&outcome, status, reason, &mut text), text);
    }
}
