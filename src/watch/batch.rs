//! One batch to one target: the changed regions of the source planned
//! against what the target holds (its state, kept in memory from its
//! manifest and the batches since), applied with the run's executor.
//!
//! Invariants:
//! - no full scan of the source and no listing of the target: only the
//!   regions (see `scan`) are read, on the source side from the disk, on
//!   the target side from the state;
//! - the source root missing, or empty under `delete` (without
//!   `allow_empty_source`), stops the batch before anything is planned:
//!   nothing is deleted because the source vanished;
//! - the state is exact after a batch that ended without error; a batch
//!   that could not connect leaves it exact (nothing changed on the
//!   target) and the paths stay pending; any other failure makes it
//!   unknown, and the target gets a full sync (scan and listing) next;
//! - the target's manifest is removed before a batch changes the target
//!   and written again from the state when the target is idle, so a
//!   process killed mid-batch leaves no manifest that could hide a
//!   difference (the next start lists the target).

use super::dirty::Paths;
use super::scan::{self, Regions};
use crate::config::Job;
use crate::executor::{self, Outcome, Settings};
use crate::journal::{self, PathError, Record, Status, Trigger};
use crate::manifest::{self, Caps};
use crate::plan::source::SourceTree;
use crate::plan::{self, Entry, EntryKind, Scan};
use crate::target::Target;
use crate::transport::{self, Transport};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

/// What the target holds, as far as syncjob knows.
pub struct State {
    pub entries: BTreeMap<PathBuf, Entry>,
    pub caps: Caps,
    /// when the target was last listed in full
    pub listed_at: u64,
    /// the manifest on disk matches `entries`
    pub saved: bool,
}

/// How a batch ended for the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// done; the state is exact
    Ok,
    /// the target could not be reached: nothing changed there, the paths
    /// stay pending
    Unreachable,
    /// the source root is missing or empty: nothing was done
    SourceGuard,
    /// failed after changes may have begun: the state is unknown
    Failed,
}

/// One target of a watched job, with its kept-open connection.
pub struct TargetSync {
    pub target: Target,
    pub state: Option<State>,
    conn: Option<Box<dyn Transport>>,
    mpath: PathBuf,
    state_dir: PathBuf,
    /// source paths the last batch could not read (permissions): the
    /// target's state there is kept, the worker retries them
    pub unreadable: Vec<PathBuf>,
    /// moves of the last batch made on the target (and in the state)
    pub moves_done: usize,
    /// the extra connections of parallel copies, kept between batches
    pool: std::sync::Mutex<Vec<Box<dyn Transport>>>,
}

fn effective_owner(job: &Job) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    job.preserve_owner && unsafe { libc::geteuid() } == 0
}

/// Why the source may not be synced now (`None`: it may).
pub fn source_guard(job: &Job) -> Option<String> {
    match std::fs::symlink_metadata(&job.source) {
        Ok(md) if md.is_dir() => {}
        Ok(_) => {
            return Some(format!(
                "source {} is not a directory",
                job.source.display()
            ));
        }
        Err(e) => return Some(format!("source {}: {e}", job.source.display())),
    }
    if job.delete && !job.allow_empty_source {
        let has_any = std::fs::read_dir(&job.source).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                let rel = PathBuf::from(e.file_name());
                let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
                !plan::is_temp_name(&rel) && !job.filter.excluded(&rel, is_dir)
            })
        });
        if !has_any {
            return Some(format!(
                "source {} is empty; refusing to delete everything on the target (allow_empty_source: true allows it)",
                job.source.display()
            ));
        }
    }
    None
}

impl TargetSync {
    pub fn new(job: &Job, state_dir: &Path, target: Target) -> TargetSync {
        let mpath = manifest::path_for(state_dir, job, &target);
        TargetSync {
            target,
            state: None,
            conn: None,
            mpath,
            state_dir: state_dir.to_path_buf(),
            unreadable: Vec::new(),
            moves_done: 0,
            pool: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Take the state from the manifest the last full run left (`false`:
    /// none usable).
    pub fn load_state(&mut self, job: &Job) -> bool {
        self.state = None;
        let Some(m) = manifest::load(&self.mpath, job, &self.target, Duration::MAX) else {
            return false;
        };
        if m.caps.preserve_owner != effective_owner(job) {
            return false;
        }
        let Some(entries) = m.entries() else {
            return false;
        };
        self.state = Some(State {
            entries: entries.collect(),
            caps: m.caps,
            listed_at: m.listed_at,
            saved: true,
        });
        true
    }

    /// Take the state from a listing of the target (after a full sync
    /// that could not read some source paths, which leaves no manifest).
    pub fn state_from_listing(&mut self, job: &Job) -> bool {
        self.state = None;
        self.preconnect(job);
        let Some(t) = self.conn.as_mut() else {
            return false;
        };
        let Ok(mut l) = t.list(&job.filter) else {
            self.conn = None;
            return false;
        };
        let mut entries = BTreeMap::new();
        if let Some(st) = l.stream.take() {
            entries.extend(st.entries);
            l.errors.extend(st.errors.take());
        } else if let Some(tree) = &l.tree {
            entries.extend(tree.iter().map(|(p, e)| (p.to_path_buf(), e.clone())));
        }
        if !l.errors.is_empty() || entries.is_empty() {
            return false;
        }
        let caps = Caps {
            mtime_nanos: t.mtime_nanos(),
            symlink_times: t.symlink_times(),
            preserve_owner: effective_owner(job),
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.state = Some(State {
            entries,
            caps,
            listed_at: now,
            saved: false,
        });
        true
    }

    /// Write the state as the target's manifest (when it changed).
    pub fn save_state(&mut self, job: &Job) {
        let Some(st) = &mut self.state else {
            return;
        };
        if st.saved {
            return;
        }
        let scan = Scan {
            entries: st
                .entries
                .iter()
                .map(|(p, e)| (p.clone(), e.clone()))
                .collect(),
            ..Default::default()
        };
        match manifest::save(&self.mpath, job, &self.target, st.caps, st.listed_at, &scan) {
            Ok(()) => st.saved = true,
            Err(e) => crate::out::say(
                crate::out::Level::Warning,
                &format!(
                    "job {}: cannot write the manifest of {}: {e}",
                    job.name, self.target
                ),
            ),
        }
    }

    /// Open the connection batches will use, ahead of the first one (so
    /// that it does not pay for the handshake); a failure is left for the
    /// batch to report.
    pub fn preconnect(&mut self, job: &Job) {
        if self.conn.is_none() {
            self.conn = transport::open(
                &self.target,
                &crate::run::transport_settings(job, &self.state_dir),
            )
            .ok();
        }
    }

    /// Drop the kept connection (the target went away, or idle).
    pub fn disconnect(&mut self) {
        self.conn = None;
        self.pool.lock().unwrap().clear();
    }

    /// Apply the changed paths to the target (its state must be known).
    pub fn batch(
        &mut self,
        job: &Job,
        paths: &Paths,
        cancel: &AtomicBool,
        rec: &RecordStart,
    ) -> (Ended, Record) {
        let out = Outcome::default();
        self.unreadable.clear();
        self.moves_done = 0;
        if let Some(why) = source_guard(job) {
            return (
                Ended::SourceGuard,
                rec.finish(job, &self.target, false, Some(why), 0, &out),
            );
        }
        let Some(st) = self.state.as_ref() else {
            let why = "the target's state is unknown".to_string();
            return (
                Ended::Failed,
                rec.finish(job, &self.target, false, Some(why), 0, &out),
            );
        };
        let regions = scan::regions(paths, &job.source, &st.entries);
        let src = scan::scan(&job.source, &regions, &job.filter);
        // the root vanished or emptied during the scan: nothing is planned
        if let Some(why) = source_guard(job) {
            return (
                Ended::SourceGuard,
                rec.finish(job, &self.target, false, Some(why), 0, &out),
            );
        }
        let mut reused = self.conn.is_some();
        let (ended, out) = loop {
            if self.conn.is_none() {
                match transport::open(
                    &self.target,
                    &crate::run::transport_settings(job, &self.state_dir),
                ) {
                    Ok(t) => self.conn = Some(t),
                    Err(e) => {
                        let why = format!("cannot reach target: {e}");
                        let r = rec.finish(job, &self.target, false, Some(why), src.files(), &out);
                        return (Ended::Unreachable, r);
                    }
                }
            }
            let (ended, out) = self.apply(job, paths, &regions, &src, cancel);
            // the kept connection had gone stale (the server restarted):
            // once more on a new one
            if ended == Ended::Unreachable && reused {
                reused = false;
                continue;
            }
            break (ended, out);
        };
        let ok = ended == Ended::Ok && out.errors.is_empty();
        let reason = (!ok).then(|| failure_reason(job, &out));
        (
            ended,
            rec.finish(job, &self.target, ok, reason, src.files(), &out),
        )
    }

    fn apply(
        &mut self,
        job: &Job,
        paths: &Paths,
        regions: &Regions,
        src: &Scan,
        cancel: &AtomicBool,
    ) -> (Ended, Outcome) {
        let t = self.conn.as_mut().expect("connected");
        let st = self.state.as_mut().expect("state known");
        let moves = &paths.moves[self.moves_done.min(paths.moves.len())..];
        let (done, unmoved) = apply_moves(t.as_mut(), st, &self.mpath, moves);
        self.moves_done += done;
        let trusted = |p: &Path| paths.trusted(p) && !unmoved.iter().any(|u| p.starts_with(u));
        let popts = plan::Options {
            mode: job.mode,
            compare: job.compare,
            delete: job.delete,
            preserve_owner: effective_owner(job),
            mtime_nanos: t.mtime_nanos(),
            symlink_times: t.symlink_times(),
        };
        let mut theirs = scan::target_side(regions, &st.entries, &trusted).into_iter();
        let tree = SourceTree::of(src);
        let plan = {
            let root = &job.source;
            let tr = &mut *t;
            let mut same = |rel: &Path| tr.same_content(rel, &root.join(rel), tree.as_ref());
            plan::diff_stream(src, &mut theirs, &job.filter, popts, &mut same)
        };
        let mut out = Outcome {
            errors: src.errors.clone(),
            warnings: src.warnings.clone(),
            ..Default::default()
        };
        out.errors.extend(plan.errors.iter().cloned());
        if !plan.is_empty() && st.saved {
            manifest::remove(&self.mpath);
            st.saved = false;
        }
        let on_done = |_: &plan::Action| {};
        let ts = crate::run::transport_settings(job, &self.state_dir);
        let open_extra = || transport::open(&self.target, &ts).map_err(|e| e.source);
        let settings = Settings {
            source_root: &job.source,
            max_delete: job.max_delete,
            preserve_owner: popts.preserve_owner,
            cancel,
            on_done: &on_done,
            open_extra: Some(&open_extra),
            streams: job.streams,
            progress: None,
            // files are opened through the directories the batch scanned
            source: tree.as_ref(),
            pool: Some(&self.pool),
        };
        let applied = executor::execute(&plan, t.as_mut(), &settings);
        drop(plan);
        out.files_transferred = applied.files_transferred;
        out.bytes_transferred = applied.bytes_transferred;
        out.files_deleted = applied.files_deleted;
        out.warnings.extend(applied.warnings);
        out.errors.extend(applied.errors.iter().cloned());
        out.errors_dropped = applied.errors_dropped;
        out.deletes_withheld = applied.deletes_withheld;
        out.aborted = applied.aborted.clone();
        out.lost_target = applied.lost_target;
        if out.lost_target || out.aborted.is_some() {
            self.conn = None;
        }
        let ended = self.conclude(job, regions, src, &mut out);
        (ended, out)
    }

    /// The target's state after a batch: updated when the batch is clean
    /// (copies that failed only because their source vanished meanwhile
    /// count as clean: the target is unchanged there, and their own event
    /// follows), kept when the connection was lost before anything was
    /// sent, unknown otherwise.
    fn conclude(&mut self, job: &Job, regions: &Regions, src: &Scan, out: &mut Outcome) -> Ended {
        let root = &job.source;
        let clean = out.aborted.is_none()
            && out.deletes_withheld == 0
            && out.errors_dropped == 0
            && out
                .errors
                .iter()
                .all(|e| source_race(root, e) || source_unreadable(root, e));
        let Some(st) = self.state.as_mut() else {
            return Ended::Failed;
        };
        if clean {
            // where the plan did nothing (failed copies; unknown source
            // paths and all below them), the target holds what it held
            let mut kept: Vec<(PathBuf, Option<Entry>)> = out
                .errors
                .iter()
                .map(|e| {
                    let p = rel_of(e);
                    let old = st.entries.get(&p).cloned();
                    (p, old)
                })
                .collect();
            let mut gone: Vec<PathBuf> = Vec::new();
            for u in &src.unknown {
                gone.push(u.clone());
                kept.extend(
                    st.entries
                        .range::<Path, _>((
                            std::ops::Bound::Included(u.as_path()),
                            std::ops::Bound::Unbounded,
                        ))
                        .take_while(|(k, _)| k.starts_with(u))
                        .map(|(k, e)| (k.clone(), Some(e.clone()))),
                );
            }
            scan::update_state(&mut st.entries, regions, src);
            for u in gone {
                let below: Vec<PathBuf> = st
                    .entries
                    .range::<Path, _>((
                        std::ops::Bound::Included(u.as_path()),
                        std::ops::Bound::Unbounded,
                    ))
                    .take_while(|(k, _)| k.starts_with(&u))
                    .map(|(k, _)| k.clone())
                    .collect();
                for k in below {
                    st.entries.remove(&k);
                }
            }
            for (p, old) in kept {
                match old {
                    Some(e) => st.entries.insert(p, e),
                    None => st.entries.remove(&p),
                };
            }
            let (races, unreadable): (Vec<PathError>, Vec<PathError>) =
                out.errors.drain(..).partition(|e| source_race(root, e));
            out.warnings.extend(races.into_iter().map(|e| PathError {
                message: format!("{} (vanished from the source meanwhile)", e.message),
                ..e
            }));
            self.unreadable = unreadable.iter().map(rel_of).collect();
            out.errors = unreadable;
            Ended::Ok
        } else if out.lost_target && out.files_transferred == 0 && out.files_deleted == 0 {
            // the connection was lost before anything was sent: the state
            // still holds (a directory made meanwhile fails the retry, which
            // then makes a full sync)
            Ended::Unreachable
        } else {
            self.state = None;
            Ended::Failed
        }
    }
}

/// The relative path an error names (names are encoded in errors).
fn rel_of(e: &PathError) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    if e.path == "." {
        return PathBuf::new();
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&crate::names::decode(&e.path)))
}

/// A copy that failed because its source is gone now (deleted or
/// replaced after the scan): its own event brings it back.
fn source_race(root: &Path, e: &PathError) -> bool {
    !e.path.is_empty()
        && e.path != "."
        && matches!(std::fs::symlink_metadata(root.join(rel_of(e))), Err(x) if x.kind() == std::io::ErrorKind::NotFound)
}

/// A source path this process may not read (permissions): nothing was done
/// there on the target; the worker keeps it and tries again later. (A probe
/// only: the handle is closed unread.)
pub fn source_unreadable(root: &Path, e: &PathError) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    if e.path.is_empty() || e.path == "." {
        return false;
    }
    let r = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(root.join(rel_of(e)));
    matches!(r, Err(x) if x.kind() == std::io::ErrorKind::PermissionDenied)
}

/// Rename on the target what was renamed in the source, in order, and in
/// the state with it (the manifest is removed first). A move is made only
/// where the state says it can be exact: its old name there, and its new
/// name free (or both not directories). Returns how many moves were made
/// (up to the first that failed: later ones may depend on it) and the new
/// names of the moves not made (their files are sent again, and their old
/// names deleted as `delete` says).
fn apply_moves(
    t: &mut dyn Transport,
    st: &mut State,
    mpath: &Path,
    moves: &[(PathBuf, PathBuf)],
) -> (usize, Vec<PathBuf>) {
    let mut done = 0;
    let mut unmoved = Vec::new();
    let mut stopped = false;
    for (from, to) in moves {
        let possible = match (st.entries.get(from), st.entries.get(to)) {
            (Some(_), None) => true,
            (Some(f), Some(t)) => f.kind != EntryKind::Dir && t.kind != EntryKind::Dir,
            _ => false,
        };
        if stopped || !possible {
            unmoved.push(to.clone());
            continue;
        }
        if st.saved {
            manifest::remove(mpath);
            st.saved = false;
        }
        match t.rename(from, to) {
            Ok(()) => {
                move_state(&mut st.entries, from, to);
                done += 1;
            }
            Err(_) => {
                unmoved.push(to.clone());
                stopped = true;
            }
        }
    }
    (done, unmoved)
}

/// The state's entries at and below `from` are now at and below `to`.
fn move_state(entries: &mut BTreeMap<PathBuf, Entry>, from: &Path, to: &Path) {
    let below: Vec<PathBuf> = entries
        .range::<Path, _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(from))
        .map(|(k, _)| k.clone())
        .collect();
    let mut moved = Vec::with_capacity(below.len());
    for k in below {
        if let Some(e) = entries.remove(&k) {
            let rest = k.strip_prefix(from).unwrap_or(Path::new(""));
            let n = if rest.as_os_str().is_empty() {
                to.to_path_buf()
            } else {
                to.join(rest)
            };
            moved.push((n, e));
        }
    }
    // a directory replaced at `to` (empty, as rename(2) requires) is gone
    let old: Vec<PathBuf> = entries
        .range::<Path, _>((std::ops::Bound::Included(to), std::ops::Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(to))
        .map(|(k, _)| k.clone())
        .collect();
    for k in old {
        entries.remove(&k);
    }
    entries.extend(moved);
}

fn failure_reason(job: &Job, out: &Outcome) -> String {
    let mut r = Vec::new();
    if let Some(a) = &out.aborted {
        r.push(a.clone());
    }
    if out.deletes_withheld > 0 {
        r.push(format!(
            "max_delete ({}) reached: {} deletions not done",
            job.max_delete.unwrap_or(0),
            out.deletes_withheld
        ));
    }
    if let Some(first) = out.errors.first() {
        r.push(format!(
            "{} error(s); first: {}: {}",
            out.errors.len() as u64 + out.errors_dropped,
            first.path,
            first.message
        ));
    }
    if r.is_empty() {
        r.push("unknown entries in the changed paths".into());
    }
    r.join("; ")
}

/// What the records of one batch share.
pub struct RecordStart {
    pub run_id: String,
    pub started: String,
    pub at: Instant,
    pub trigger: Trigger,
}

impl RecordStart {
    pub fn new(trigger: Trigger) -> RecordStart {
        RecordStart {
            run_id: crate::run::new_run_id(),
            started: journal::now_rfc3339(),
            at: Instant::now(),
            trigger,
        }
    }

    pub fn finish(
        &self,
        job: &Job,
        target: &Target,
        ok: bool,
        reason: Option<String>,
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
            job: job.name.clone(),
            run_id: self.run_id.clone(),
            trigger: self.trigger,
            target: target.to_string(),
            mode: job.mode,
            status: if ok { Status::Ok } else { Status::Failed },
            reason,
            started_at: self.started.clone(),
            finished_at: finished,
            duration_ms: self.at.elapsed().as_millis() as u64,
            files_scanned,
            files_transferred: o.files_transferred,
            bytes_transferred: o.bytes_transferred,
            files_deleted: o.files_deleted,
            files_vanished: 0,
            errors,
            warnings: o.warnings.clone(),
            scheduled_for: None,
            hooks: Vec::new(),
            target_state: None,
            owner: None,
            lock_revision: None,
            unlogged_noop: 0,
            unlogged_skipped: 0,
            compact: false,
            retry: false,
            host: journal::hostname(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
        }
    }
}
