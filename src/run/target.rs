//! One target of a run, in named steps, each returning a typed outcome:
//!
//! 1. [`TargetRun::manifest_shortcut`]: the source matches the target's
//!    manifest → done without connecting; it changed → plan against the
//!    manifest's entries instead of a listing; else list;
//! 2. [`TargetRun::connect`]: open the transport and list the target (or
//!    take the manifest's entries), retrying transient failures with
//!    backoff; permanent ones are not retried;
//! 3. [`TargetRun::plan`]: one pass merging the source scan with the
//!    target's entries;
//! 4. a dry run prints the plan ([`super::dry_run`]) and stops there;
//!    otherwise [`TargetRun::apply`]: create the root, void the manifest,
//!    run the executor (a lost connection is retried from step 2, listing
//!    afresh, so work already done is not repeated);
//! 5. [`TargetRun::conclude`]: the reasons, the status, the manifest kept
//!    or removed, the record and the summary line.
//!
//! Invariants: the manifest is removed before anything is changed on the
//! target and written only after an `ok` run with no error; a permanent
//! failure is never retried; a dry run changes nothing.

use super::progress::TargetProgress;
use super::record::RecordBase;
use super::{Env, Opener, Options, Status, dry_run};
use crate::config::{Compare, Job, Mode};
use crate::executor::{self, Outcome, Settings};
use crate::journal::{PathError, Record};
use crate::manifest;
use crate::plan::{self, Action, Plan, Scan};
use crate::target::Target;
use crate::transport::{self, Listing, OpenError, Retry, Transport, TransportSettings};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// What the targets of one run share.
#[derive(Clone, Copy)]
pub(super) struct RunShared<'a> {
    pub env: &'a Env,
    pub scan: &'a Scan,
    pub opts: &'a Options,
    pub cancel: &'a AtomicBool,
    pub base: &'a RecordBase<'a>,
    pub started: &'a (String, Instant),
    pub multi: Option<&'a indicatif::MultiProgress>,
    /// Opens connections to targets.
    pub open: &'a Opener<'a>,
}

/// What the target's manifest allows.
enum Shortcut {
    /// The source matches the manifest: nothing to do.
    Unchanged,
    /// Plan against these entries (listed at this Unix time), not a listing.
    Known(Box<manifest::ManifestEntries>, u64),
    /// No usable manifest: list the target.
    List,
}

/// A transport with the target's entries.
struct Connection {
    transport: Box<dyn Transport>,
    listing: Listing,
    /// When the entries were listed (for the next manifest).
    listed_at: u64,
}

/// The outcome of connecting.
enum Connected {
    Ready(Connection),
    /// A transient failure, worth another attempt (after the backoff).
    Retry(String),
    /// Given up: the reason for the record.
    Failed(String),
}

/// A plan and what it was made against.
struct Planned<'s> {
    transport: Box<dyn Transport>,
    plan: Plan<'s>,
    /// Problems met while listing and planning.
    errors: Vec<PathError>,
    /// Whether the target root exists.
    exists: bool,
    caps: manifest::Caps,
    listed_at: u64,
}

/// The outcome of applying a plan.
enum Applied {
    /// The executor ran to its end (or stopped for good).
    Done(Outcome, Vec<PathError>, manifest::Caps, u64),
    /// The connection was lost midway: retry from a fresh connection.
    Retry(String),
    /// The target root could not be created.
    Failed(String),
}

/// One target's run: the record being built and the text to print.
pub(super) struct TargetRun<'a> {
    job: &'a Job,
    target: &'a Target,
    run: RunShared<'a>,
    outcome: Outcome,
    text: String,
    /// `<state-dir>/manifests/JOB/…` for this target.
    mpath: PathBuf,
    /// Whether this run keeps a manifest (incremental size+mtime, not a
    /// dry run, `verify_interval` not 0).
    manifest_ok: bool,
    /// `preserve_owner` and running as root.
    effective_owner: bool,
    attempt: u32,
    retried: Vec<String>,
    /// A transient failure left to the caller to retry (no inline retries).
    retry_later: bool,
    /// The percentage guard of `max_delete` refused this plan's deletions:
    /// (deletions planned, the target's entries, the percentage).
    delete_guard: Option<(u64, u64, u8)>,
    /// A connection opened while the source was scanned (`preconnect`):
    /// the first attempt's.
    pre: Option<Result<Box<dyn Transport>, OpenError>>,
}

/// Plan and apply one target; returns its record and the text to print.
/// `pre`: a connection opened for it while the source was scanned.
pub(super) fn sync_target(
    job: &Job,
    target: &Target,
    run: &RunShared,
    pre: Option<Result<Box<dyn Transport>, OpenError>>,
) -> (Record, String) {
    let mut t = TargetRun::new(job, target, *run);
    t.pre = pre;
    // checked at load too; again now (a symlink made since may put a
    // local target inside the source)
    if let Target::Local(p) = target
        && let Some(why) = crate::guards::local_target_refused(&job.source, p)
    {
        return t.finish(Status::Failed, Some(why));
    }
    let mut known = match t.manifest_shortcut() {
        Shortcut::Unchanged => {
            t.outcome.from_manifest = true;
            return t.finish(Status::Ok, None);
        }
        Shortcut::Known(entries, at) => Some((*entries, at)),
        Shortcut::List => None,
    };
    loop {
        let conn = match t.connect(known.take()) {
            Connected::Ready(c) => c,
            Connected::Retry(why) => {
                t.retried.push(why);
                t.attempt += 1;
                continue;
            }
            Connected::Failed(reason) => return t.finish(Status::Failed, Some(reason)),
        };
        let planned = t.plan(conn);
        if t.run.opts.dry_run {
            return t.print_plan(planned);
        }
        match t.apply(planned) {
            Applied::Done(applied, errors, caps, listed_at) => {
                return t.conclude(applied, errors, caps, listed_at);
            }
            Applied::Retry(why) => {
                t.retried.push(why);
                t.attempt += 1;
            }
            Applied::Failed(reason) => return t.finish(Status::Failed, Some(reason)),
        }
    }
}

/// What the transports need of a job.
/// What a transport needs of the job (and where it keeps what it learns).
pub fn transport_settings(job: &Job, state_dir: &std::path::Path) -> TransportSettings {
    TransportSettings {
        ssh: job.ssh.clone(),
        rsync: crate::transport::rsyncd::RsyncSettings {
            options: job.rsync.clone(),
            source: job.source.clone(),
            exclude: job.exclude.clone(),
            preserve_owner: job.preserve_owner,
        },
        state_dir: Some(state_dir.to_path_buf()),
    }
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

/// Whether a run of `job` keeps manifests: incremental size+mtime jobs,
/// not a dry run (`--verify` lists, then refreshes the manifest).
pub(super) fn keeps_manifest(job: &Job, opts: &Options) -> bool {
    !opts.dry_run
        && !job.verify_interval.is_zero()
        && job.mode == Mode::Incremental
        && job.compare == Compare::SizeMtime
}

impl<'a> TargetRun<'a> {
    fn new(job: &'a Job, target: &'a Target, run: RunShared<'a>) -> Self {
        // SAFETY: geteuid has no preconditions and cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        TargetRun {
            job,
            target,
            outcome: Outcome {
                errors: run.scan.errors.clone(),
                warnings: run.scan.warnings.clone(),
                vanished: run.scan.vanished,
                ..Default::default()
            },
            text: String::new(),
            mpath: manifest::path_for(&run.env.state_dir, job, target),
            manifest_ok: keeps_manifest(job, run.opts),
            effective_owner: job.preserve_owner && root,
            run,
            attempt: 0,
            retried: Vec::new(),
            retry_later: false,
            delete_guard: None,
            pre: None,
        }
    }

    /// Step 1: does the target's manifest spare connecting or listing?
    fn manifest_shortcut(&self) -> Shortcut {
        let (job, scan) = (self.job, self.run.scan);
        if !self.manifest_ok
            || self.run.opts.verify
            || !scan.errors.is_empty()
            || !scan.unknown.is_empty()
        {
            return Shortcut::List;
        }
        let Some(m) = manifest::load(&self.mpath, job, self.target, job.verify_interval) else {
            return Shortcut::List;
        };
        if m.caps.preserve_owner != self.effective_owner {
            return Shortcut::List;
        }
        if manifest::digest(scan, m.caps) == m.digest {
            return Shortcut::Unchanged;
        }
        // the source changed: plan against the manifest, no listing
        match m.entries() {
            Some(entries) => Shortcut::Known(Box::new(entries), m.listed_at),
            None => Shortcut::List,
        }
    }

    /// Step 2: open the transport and list the target, unless its entries
    /// are `known` (from its manifest). Decides whether a failure is retried.
    fn connect(&mut self, known: Option<(manifest::ManifestEntries, u64)>) -> Connected {
        self.outcome.from_manifest = known.is_some();
        let listed_at = known
            .as_ref()
            .map(|(_, at)| *at)
            .unwrap_or_else(manifest::unix_now);
        let known = known.map(|(e, _)| e);
        let (what, e) = match open_and_list(self.run, self.job, self.target, known, self.pre.take())
        {
            Ok((transport, listing)) => {
                return Connected::Ready(Connection {
                    transport,
                    listing,
                    listed_at,
                });
            }
            Err(x) => x,
        };
        let permanent = e.retry == Retry::Permanent;
        if !permanent && !self.run.opts.inline_retries && !self.run.opts.dry_run {
            self.retry_later = true;
            return Connected::Failed(format!("{what}: {e}"));
        }
        if !permanent
            && self.attempt < self.job.retries
            && !self.run.opts.dry_run
            && backoff(self.attempt, self.run.cancel)
        {
            return Connected::Retry(format!("{what}: {e}"));
        }
        let mut reason = format!("{what}: {e}");
        if permanent {
            reason.push_str(" (not retried)");
        } else if self.attempt > 0 {
            reason.push_str(&format!(" (after {} retries)", self.attempt));
        }
        Connected::Failed(reason)
    }

    /// Step 3: the plan, in one pass over the scan and the target's entries.
    fn plan(&self, conn: Connection) -> Planned<'a> {
        let Connection {
            mut transport,
            mut listing,
            listed_at,
        } = conn;
        let job = self.job;
        let mut errors = std::mem::take(&mut listing.errors);
        let exists = listing.exists();
        let popts = plan::Options {
            mode: job.mode,
            compare: job.compare,
            delete: job.delete,
            preserve_owner: self.effective_owner,
            mtime_nanos: transport.mtime_nanos(),
            symlink_times: transport.symlink_times(),
        };
        let plan = {
            let tr = &mut transport;
            let tree = crate::plan::source::SourceTree::of(self.run.scan);
            let mut same = |rel: &Path| tr.same_content(rel, &job.source.join(rel), tree.as_ref());
            match listing.stream.take() {
                Some(mut st) => {
                    let plan = plan::diff_stream(
                        self.run.scan,
                        &mut st.entries,
                        &job.filter,
                        popts,
                        &mut same,
                    );
                    errors.extend(st.errors.take());
                    plan
                }
                None => plan::diff(
                    self.run.scan,
                    listing.tree.as_ref(),
                    &job.filter,
                    popts,
                    &mut same,
                ),
            }
        };
        errors.extend(plan.errors.iter().cloned());
        Planned {
            transport,
            plan,
            errors,
            exists,
            caps: manifest::Caps {
                mtime_nanos: popts.mtime_nanos,
                symlink_times: popts.symlink_times,
                preserve_owner: popts.preserve_owner,
            },
            listed_at,
        }
    }

    /// Step 4 of a dry run: print the plan, record `dry_run`.
    fn print_plan(mut self, planned: Planned) -> (Record, String) {
        let quiet = self.run.opts.quiet;
        dry_run::print(&mut self.text, self.job, self.target, &planned.plan, quiet);
        self.outcome.errors.extend(planned.errors);
        // what the run would do, counted as a real run would count it
        let (files, bytes) = planned.plan.copy_totals();
        self.outcome.files_transferred = files;
        self.outcome.bytes_transferred = bytes;
        self.outcome.files_deleted = planned.plan.counted_deletes();
        let rec = self.record(Status::DryRun, None);
        (rec, self.text)
    }

    /// Step 4: create the root if needed, void the manifest, execute.
    fn apply(&mut self, planned: Planned) -> Applied {
        let Planned {
            mut transport,
            plan,
            errors,
            exists,
            caps,
            listed_at,
        } = planned;
        let (job, target) = (self.job, self.target);
        if !exists && let Err(e) = transport.ensure_root() {
            self.outcome.errors.extend(errors);
            return Applied::Failed(format!("cannot create target root: {e}"));
        }
        if !plan.is_empty() {
            manifest::remove(&self.mpath);
        }
        let progress = TargetProgress::new(self.run.multi, job, target, &plan);
        let verbose_lines = Mutex::new(String::new());
        let on_done = |a: &Action| {
            progress.done(a);
            if self.run.opts.verbose {
                let l = a.itemize();
                if !l.is_empty() {
                    let mut v = verbose_lines.lock().unwrap();
                    v.push_str(&l);
                    v.push('\n');
                }
            }
        };
        let tsettings = transport_settings(job, &self.run.env.state_dir);
        let open = self.run.open;
        let open_extra = || open(target, &tsettings).map_err(|e| e.source);
        let max_delete = self.max_delete(&plan);
        let source = crate::plan::source::SourceTree::of(self.run.scan);
        let settings = Settings {
            source_root: &job.source,
            max_delete,
            preserve_owner: caps.preserve_owner,
            cancel: self.run.cancel,
            on_done: &on_done,
            open_extra: Some(&open_extra),
            streams: job.streams,
            progress: progress.sent(),
            source: source.as_ref(),
            pool: None,
        };
        let applied =
            progress.while_copying(|| executor::execute(&plan, transport.as_mut(), &settings));
        drop(transport);
        progress.finish();
        self.text.push_str(&verbose_lines.into_inner().unwrap());
        self.outcome.files_transferred += applied.files_transferred;
        self.outcome.bytes_transferred += applied.bytes_transferred;
        self.outcome.files_deleted += applied.files_deleted;
        self.outcome.vanished += applied.vanished;
        self.outcome
            .warnings
            .extend(applied.warnings.iter().cloned());
        self.retry_later = applied.lost_target && !self.run.opts.inline_retries;
        if applied.lost_target
            && self.run.opts.inline_retries
            && self.attempt < job.retries
            && backoff(self.attempt, self.run.cancel)
        {
            return Applied::Retry(applied.aborted.clone().unwrap_or_default());
        }
        Applied::Done(applied, errors, caps, listed_at)
    }

    /// Step 5: reasons, status, the manifest kept or removed, the record.
    fn conclude(
        mut self,
        applied: Outcome,
        errors: Vec<PathError>,
        caps: manifest::Caps,
        listed_at: u64,
    ) -> (Record, String) {
        self.outcome.errors.extend(errors);
        self.outcome.errors.extend(applied.errors);
        self.outcome.errors_dropped += applied.errors_dropped;
        let reasons = self.reasons(applied.aborted, applied.deletes_withheld);
        let status = if reasons.is_empty() {
            Status::Ok
        } else {
            Status::Failed
        };
        let reason = (!reasons.is_empty()).then(|| reasons.join("; "));
        if self.manifest_ok
            && status == Status::Ok
            && self.outcome.errors.is_empty()
            && self.run.scan.unknown.is_empty()
        {
            self.save_manifest(caps, listed_at);
        } else {
            manifest::remove(&self.mpath);
        }
        self.finish(status, reason)
    }

    /// The executor's `max_delete`: the job's number, or 0 when the plan
    /// would delete more than `max_delete_percent` of the target's entries.
    fn max_delete(&mut self, plan: &Plan) -> Option<u64> {
        if self.job.max_delete.is_some() {
            return self.job.max_delete;
        }
        let pct = self.job.max_delete_percent?;
        let (planned, entries) = (plan.counted_deletes(), plan.target_entries);
        if planned > crate::config::MAX_DELETE_FLOOR && planned * 100 > u64::from(pct) * entries {
            self.delete_guard = Some((planned, entries, pct));
            return Some(0);
        }
        None
    }

    /// Why the run failed, if it did (empty: it did not).
    fn reasons(&self, aborted: Option<String>, deletes_withheld: u64) -> Vec<String> {
        let mut reasons = Vec::new();
        if let Some(a) = aborted {
            reasons.push(a);
        }
        if let Some((planned, entries, pct)) = self.delete_guard
            && deletes_withheld > 0
        {
            reasons.push(format!(
                "max_delete ({pct}%): the run would delete {planned} of the target's {entries} entries; nothing was deleted (is the source complete? set max_delete: 100% or a number to allow it)"
            ));
        } else if deletes_withheld > 0 {
            reasons.push(format!(
                "max_delete ({}) reached: {} deletions not done",
                self.job.max_delete.unwrap_or(0),
                deletes_withheld
            ));
        }
        if self.job.vanished_fail && self.outcome.vanished > 0 {
            reasons.push(format!(
                "{} source file(s) vanished during the run (vanished: fail)",
                self.outcome.vanished
            ));
        }
        if let Some(first) = self.outcome.errors.first() {
            reasons.push(format!(
                "{} error(s); first: {}: {}",
                self.outcome.errors.len() as u64 + self.outcome.errors_dropped,
                first.path,
                first.message
            ));
        }
        if !self.retried.is_empty() && !reasons.is_empty() {
            reasons.push(format!(
                "after {} retries ({})",
                self.retried.len(),
                self.retried.join("; ")
            ));
        }
        reasons
    }

    fn save_manifest(&mut self, caps: manifest::Caps, listed_at: u64) {
        let (job, target, scan) = (self.job, self.target, self.run.scan);
        if let Err(e) = manifest::save(&self.mpath, job, target, caps, listed_at, scan) {
            manifest::remove(&self.mpath);
            self.outcome.warnings.push(PathError {
                path: String::new(),
                message: format!(
                    "cannot write the target manifest {}: {e}",
                    self.mpath.display()
                ),
            });
        }
    }

    fn record(&self, status: Status, reason: Option<String>) -> Record {
        let mut rec = self.run.base.record(
            self.target,
            status,
            reason,
            self.run.started.clone(),
            self.run.scan.files(),
            &self.outcome,
        );
        rec.retry = self.retry_later && status == Status::Failed;
        rec
    }

    /// The record, and the summary line unless quiet.
    fn finish(mut self, status: Status, reason: Option<String>) -> (Record, String) {
        let rec = self.record(status, reason);
        if !self.run.opts.quiet {
            self.text.push_str(&super::report::summary_line(&rec));
        }
        (rec, self.text)
    }
}

/// Connect to a target and list it, unless its entries are already known
/// (from its manifest).
fn open_and_list(
    run: RunShared,
    job: &Job,
    target: &Target,
    known: Option<manifest::ManifestEntries>,
    pre: Option<Result<Box<dyn Transport>, OpenError>>,
) -> Result<(Box<dyn Transport>, Listing), (String, OpenError)> {
    let opened =
        pre.unwrap_or_else(|| (run.open)(target, &transport_settings(job, &run.env.state_dir)));
    let mut t = opened.map_err(|e| ("cannot reach target".to_string(), e))?;
    let l = match known {
        Some(entries) => Listing {
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
