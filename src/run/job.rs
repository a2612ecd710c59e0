//! One run of one job, in named steps: take the job's lock (not for a dry
//! run) → the `before` hook → scan the source once (with its guards: a
//! missing source, or an empty one under `delete`, changes nothing) → the
//! targets, `parallel` at a time ([`super::target`]) → the `after` and
//! `on_failure` hooks.
//!
//! Records are appended as each target finishes, unless the job has
//! `after`/`on_failure` hooks: then they are held until those have run, so
//! that their outcome goes into the records.

use super::preconnect::Pending;
use super::record::{RecordBase, append_all, hook_outcome};
use super::target::{RunShared, sync_target};
use super::{Env, JobResult, Opener, Options, Status, Wait, log_skipped};
use crate::config::Job;
use crate::executor::Outcome;
use crate::journal::{self, HookOutcome, Record};
use crate::lock;
use crate::plan::{self, Scan, ScanError};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

/// Whether a real run holds its records back until its `after`/`on_failure`
/// hooks have run, so that their outcome goes into the records. Without
/// such hooks each target's record is appended as soon as it is done.
pub(super) fn holds_records(job: &Job, opts: &Options) -> bool {
    !opts.dry_run && (job.hooks.after.is_some() || job.hooks.on_failure.is_some())
}

/// The run up to its records: lock, `before`, scan, targets.
pub(super) fn run_locked(
    job: &Job,
    env: &Env,
    opts: &Options,
    cancel: &AtomicBool,
    open: &Opener,
) -> JobResult {
    // A dry run changes nothing and takes no lock.
    let _lock = if opts.dry_run || opts.lock_held {
        None
    } else {
        match take_lock(job, env, opts) {
            Ok(l) => Some(l),
            Err(res) => return *res,
        }
    };
    let before = match before_hook(job, env, opts) {
        Ok(b) => b,
        Err(res) => return *res,
    };
    let started = (journal::now_rfc3339(), Instant::now());
    // targets that will be listed are connected to during the scan
    let scanned = std::thread::scope(|sc| {
        let pending = Pending::start(sc, job, env, opts, open);
        let scan = scan_source(job)?;
        let mut base = RecordBase::new(job, opts.trigger, opts.scheduled_for);
        base.owner = opts.owner.clone();
        base.hooks = before.clone();
        base.note = opts.note.clone();
        let multi = (opts.progress && !opts.dry_run).then(indicatif::MultiProgress::new);
        let shared = RunShared {
            env,
            scan: &scan,
            opts,
            cancel,
            base: &base,
            started: &started,
            multi: multi.as_ref(),
            open,
        };
        Ok(sync_targets(job, &shared, &pending))
    });
    let records = match scanned {
        Ok(r) => r,
        Err(reason) => return fail_all(job, env, opts, reason, before),
    };
    let status = records.iter().map(|r| r.status).max().unwrap_or(Status::Ok);
    JobResult {
        job: job.name.clone(),
        status,
        records,
        appended: !holds_records(job, opts),
        reported: true,
    }
}

/// The job's lock, or the run's result without it (skipped: held by
/// another run; failed: the lock file could not be used).
fn take_lock(job: &Job, env: &Env, opts: &Options) -> Result<lock::Lock, Box<JobResult>> {
    let lock_path = lock::job_lock_path(&env.state_dir, &job.name);
    let got = match opts.wait {
        Wait::No => lock::try_acquire(&lock_path, opts.trigger.as_str()),
        Wait::Forever => lock::acquire_wait(&lock_path, opts.trigger.as_str(), None),
        Wait::Upto(d) => lock::acquire_wait(&lock_path, opts.trigger.as_str(), Some(d)),
    };
    match got {
        Ok(Some(l)) => Ok(l),
        Ok(None) => {
            if !opts.quiet {
                let who = lock::holder(&lock_path)
                    .map(|h| format!(" by pid {} since {}", h.pid, h.since))
                    .unwrap_or_default();
                crate::errln!("syncjob: job {} is already running{who}; skipped", job.name);
            }
            Err(Box::new(log_skipped(
                job,
                env,
                opts.trigger,
                opts.scheduled_for,
                "locked",
            )))
        }
        Err(e) => Err(Box::new(fail_all(
            job,
            env,
            opts,
            format!("cannot take the job lock {}: {e}", lock_path.display()),
            Vec::new(),
        ))),
    }
}

/// The `before` hook of a real run: its outcome (for every record), or
/// the failed run when it failed.
fn before_hook(job: &Job, env: &Env, opts: &Options) -> Result<Vec<HookOutcome>, Box<JobResult>> {
    let mut before = Vec::new();
    let Some(cmd) = job.hooks.before.as_ref().filter(|_| !opts.dry_run) else {
        return Ok(before);
    };
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
        let reason = format!("before hook failed ({}): {}", r.status, r.output);
        return Err(Box::new(fail_all(job, env, opts, reason, before)));
    }
    Ok(before)
}

/// Scan the source once for all targets, with its guards; `Err` is the
/// reason the run fails without touching any target.
fn scan_source(job: &Job) -> Result<Scan, String> {
    let scan = plan::scan_source(&job.source, &job.filter).map_err(|e| match &e {
        ScanError::Missing(_) => format!("{e}; nothing was changed on the targets"),
        _ => e.to_string(),
    })?;
    if job.delete && scan.is_empty() && !job.allow_empty_source {
        return Err(format!(
            "source {} is empty and delete is on: refusing to empty the targets (set allow_empty_source: true if this is intended)",
            job.source.display()
        ));
    }
    Ok(scan)
}

/// Every target, `parallel` at a time; their records in target order.
fn sync_targets(job: &Job, shared: &RunShared, pending: &Pending) -> Vec<Record> {
    let hold = holds_records(job, shared.opts);
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<(usize, Record)>> = Mutex::new(Vec::new());
    let print_lock = Mutex::new(());
    let workers = job.parallel.min(job.targets.len()).max(1);
    std::thread::scope(|sc| {
        for _ in 0..workers {
            sc.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(target) = job.targets.get(i) else {
                        break;
                    };
                    let (rec, text) = sync_target(job, target, shared, pending.take(i));
                    if !hold {
                        append_all(shared.env, std::slice::from_ref(&rec));
                    }
                    if let Some(f) = shared.opts.on_record {
                        f(&rec);
                    }
                    if !text.is_empty() {
                        let _g = print_lock.lock().unwrap();
                        match shared.multi {
                            Some(m) => m.suspend(|| crate::out!("{text}")),
                            None => crate::out!("{text}"),
                        }
                    }
                    results.lock().unwrap().push((i, rec));
                }
            });
        }
    });
    let mut recs = results.into_inner().unwrap();
    recs.sort_by_key(|(i, _)| *i);
    recs.into_iter().map(|(_, r)| r).collect()
}

/// The run failed before any target was touched: one failed record per
/// target with `reason`.
pub(super) fn fail_all(
    job: &Job,
    env: &Env,
    opts: &Options,
    reason: String,
    before: Vec<HookOutcome>,
) -> JobResult {
    if !opts.quiet {
        let reason = crate::escape::text(&reason);
        crate::errln!("syncjob: job {}: {reason}", job.name);
    }
    let mut base = RecordBase::new(job, opts.trigger, opts.scheduled_for);
    base.owner = opts.owner.clone();
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
        reported: false,
    }
}

/// The `after` hook (and `on_failure` after a failed run), with the run's
/// outcome in `SYNCJOB_*` variables; their outcomes.
pub(super) fn after_hooks(job: &Job, opts: &Options, res: &JobResult) -> Vec<HookOutcome> {
    let sum = |f: fn(&Record) -> u64| res.records.iter().map(f).sum::<u64>().to_string();
    let first =
        |f: fn(&Record) -> Option<String>| res.records.iter().find_map(f).unwrap_or_default();
    let targets: Vec<String> = job.targets.iter().map(|t| t.to_string()).collect();
    let vars = [
        ("SYNCJOB_JOB", job.name.clone()),
        ("SYNCJOB_STATUS", res.status.as_str().to_string()),
        ("SYNCJOB_TRIGGER", opts.trigger.to_string()),
        ("SYNCJOB_RUN_ID", first(|r| Some(r.run_id.clone()))),
        ("SYNCJOB_SOURCE", job.source.display().to_string()),
        ("SYNCJOB_TARGETS", targets.join(" ")),
        ("SYNCJOB_FILES_TRANSFERRED", sum(|r| r.files_transferred)),
        ("SYNCJOB_BYTES_TRANSFERRED", sum(|r| r.bytes_transferred)),
        ("SYNCJOB_FILES_DELETED", sum(|r| r.files_deleted)),
        ("SYNCJOB_REASON", first(|r| r.reason.clone())),
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
                crate::errln!(
                    "syncjob: job {}: {name} hook failed ({}): {}",
                    job.name,
                    r.status,
                    crate::escape::text(&r.output)
                );
            }
            ran.push(hook_outcome(name, &r));
        }
    }
    ran
}
