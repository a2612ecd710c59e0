//! Apply a plan to one target through its transport, batch by batch of
//! one kind of action (an `Executor` with `gather` → `copy_run` or
//! `Transport::apply` → `account`).
//!
//! Invariants: nothing is done below a directory that could not be made or
//! removed; at most `max_delete` counted deletions; a file that changed
//! while copied is tried again (up to 3 times) and never reported done with
//! mixed content; a lost connection stops the target (said once) so that
//! `run` can retry it from a fresh listing; a shutdown stops between files.

use crate::journal::PathError;
use crate::plan::{Action, EntryKind, Plan, Why, display_path};
use crate::transport::{CopyCtx, Planned, Transport, is_changed_during_copy};
use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// How many times a file that changed while being copied is tried again.
const CHANGED_RETRIES: u32 = 3;
/// The waits before those tries (ms): the first is short, since most such
/// files are being closed right then (a watched file copied on its first
/// write event), later ones leave a slower writer time to finish.
const CHANGED_WAIT_MS: [u64; CHANGED_RETRIES as usize] = [2, 50, 200];
/// Errors kept per record; the rest are counted.
const MAX_ERRORS: usize = 200;

#[derive(Debug, Default)]
pub struct Outcome {
    pub files_transferred: u64,
    pub bytes_transferred: u64,
    pub files_deleted: u64,
    pub errors: Vec<PathError>,
    pub warnings: Vec<PathError>,
    pub errors_dropped: u64,
    /// counted deletions not done because `max_delete` was reached
    pub deletes_withheld: u64,
    /// stopped early (shutdown, or the target went away)
    pub aborted: Option<String>,
    /// the connection to the target was lost (worth a retry)
    pub lost_target: bool,
    /// nothing to do, decided from the target's manifest without listing it
    pub from_manifest: bool,
    /// source files that vanished during the run (warnings, not errors)
    pub vanished: u64,
}

impl Outcome {
    pub fn error(&mut self, path: &Path, message: impl Into<String>) {
        if self.errors.len() < MAX_ERRORS {
            self.errors.push(PathError {
                path: display_path(path),
                message: message.into(),
            });
        } else {
            self.errors_dropped += 1;
        }
    }
}

pub struct Settings<'a> {
    pub source_root: &'a Path,
    pub max_delete: Option<u64>,
    pub preserve_owner: bool,
    pub cancel: &'a AtomicBool,
    /// called with each applied action's itemized line (for `-v`)
    pub on_done: &'a (dyn Fn(&Action) + Sync),
    /// opens another connection to the same target: long runs of copies
    /// are spread over up to `streams` connections
    pub open_extra: Option<&'a (dyn Fn() -> io::Result<Box<dyn Transport>> + Sync)>,
    pub streams: usize,
    /// counts the bytes sent by copies as they go (for a progress bar)
    pub progress: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// source files are opened through it (directory handles of the scan)
    pub source: Option<&'a crate::plan::source::SourceTree>,
    /// extra connections kept between plans (a watched target's batches):
    /// taken at the start, given back at the end unless the target was lost
    pub pool: Option<&'a Mutex<Vec<Box<dyn Transport>>>>,
}

impl Settings<'_> {
    /// What every copy is told: when to stop, where to count its bytes.
    fn copy_ctx(&self) -> CopyCtx<'_> {
        CopyCtx {
            cancel: self.cancel,
            progress: self.progress.as_deref(),
            source: self.source,
            planned: None,
        }
    }
}

/// Errors after which the rest of the target cannot proceed.
fn is_fatal(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::TimedOut
    )
}

/// How many actions of one kind go to the transport at once.
const BATCH: usize = 256;
/// Copies in one batch (one pipelined round on one connection): at most
/// this many files and bytes.
const COPY_BATCH_FILES: usize = 64;
const COPY_BATCH_BYTES: u64 = 32 << 20;
/// Copies gathered at once and spread over the connections in batches.
const COPY_RUN_FILES: usize = 4096;
const COPY_RUN_BYTES: u64 = 1 << 30;
/// Extra connections are opened only for a run of copies at least this big.
const PARALLEL_MIN_FILES: usize = 2 * COPY_BATCH_FILES;
const PARALLEL_MIN_BYTES: u64 = 64 << 20;

/// Copy one batch on one connection; a file that changed while it was
/// copied is tried again alone. Returns per-file results and warnings.
fn copy_batch(
    t: &mut dyn Transport,
    batch: &[&Action],
    s: &Settings,
) -> (Vec<io::Result<u64>>, Vec<PathError>) {
    let items: Vec<(&Path, PathBuf)> = batch
        .iter()
        .map(|a| (a.path(), s.source_root.join(a.path())))
        .collect();
    let mut warnings = Vec::new();
    let planned = planned_of(batch);
    let ctx = CopyCtx {
        planned: Some(&planned),
        ..s.copy_ctx()
    };
    let mut r = t.put_files(&items, s.preserve_owner, &ctx);
    for (k, res) in r.iter_mut().enumerate() {
        let mut tries = 0;
        while matches!(res, Err(e) if is_changed_during_copy(e)) && tries < CHANGED_RETRIES {
            tries += 1;
            let wait = CHANGED_WAIT_MS[(tries as usize - 1).min(CHANGED_WAIT_MS.len() - 1)];
            std::thread::sleep(std::time::Duration::from_millis(wait));
            *res = t.put_file(items[k].0, &items[k].1, s.preserve_owner, &ctx);
        }
        if tries > 0 && res.is_ok() {
            warnings.push(PathError {
                path: display_path(items[k].0),
                message: format!("changed while being copied; copied again ({tries} retries)"),
            });
        }
        if res.is_ok() {
            (s.on_done)(batch[k]);
        }
    }
    (r, warnings)
}

/// What the plan knows of a batch's copies (sizes, which files are new on
/// the target), for the transport.
fn planned_of<'a>(batch: &[&'a Action]) -> HashMap<&'a Path, Planned> {
    batch
        .iter()
        .filter_map(|a| match a {
            Action::Copy {
                path, why, size, ..
            } => Some((
                path.as_path(),
                Planned {
                    size: *size,
                    on_target: matches!(why, Why::Changed | Why::Full),
                },
            )),
            _ => None,
        })
        .collect()
}

/// Split copies into batches of at most `files` / `max_bytes` (by default
/// COPY_BATCH_FILES / COPY_BATCH_BYTES).
fn split_copies(
    batch: &[&Action],
    (files, max_bytes): (usize, u64),
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (k, a) in batch.iter().enumerate() {
        let size = match a {
            Action::Copy { size, .. } => *size,
            _ => 0,
        };
        if k > start && (k - start >= files || bytes + size > max_bytes) {
            out.push(start..k);
            start = k;
            bytes = 0;
        }
        bytes += size;
    }
    if start < batch.len() {
        out.push(start..batch.len());
    }
    out
}

/// Apply `plan` through `t`, batch by batch of one kind of action. Stops
/// at a shutdown or when the target is lost (`Outcome::lost_target`).
pub fn execute(plan: &Plan, t: &mut dyn Transport, s: &Settings) -> Outcome {
    let mut ex = Executor {
        s,
        out: Outcome::default(),
        failed: Vec::new(),
        counted_deletes: 0,
        extras: s
            .pool
            .map(|p| p.lock().unwrap().drain(..).map(Some).collect())
            .unwrap_or_default(),
        extras_failed: AtomicBool::new(false),
    };
    let n = plan.len();
    let mut i = 0;
    while i < n {
        if s.cancel.load(Ordering::Relaxed) {
            ex.out.aborted = Some("stopped by shutdown before finishing".into());
            break;
        }
        // the next actions of one kind, made from the plan's entries (a
        // window: a plan of a million copies is never all `Action`s at once)
        let limit = if plan.is_copy(i) {
            COPY_RUN_FILES
        } else {
            BATCH
        };
        let window: Vec<Action> = (i..n)
            .take_while(|&k| plan.same_kind(k, i))
            .take(limit)
            .map(|k| plan.action(k))
            .collect();
        let (batch, taken, bytes) = ex.gather(&window);
        i += taken;
        if batch.is_empty() {
            continue;
        }
        let is_copy = matches!(window[0], Action::Copy { .. });
        let results = if is_copy {
            ex.copy_run(t, &batch, bytes)
        } else {
            t.apply(&batch).into_iter().map(|r| r.map(|()| 0)).collect()
        };
        if ex.account(&batch, results, is_copy) {
            break;
        }
    }
    if let Some(p) = s.pool
        && !ex.out.lost_target
        && ex.out.aborted.is_none()
    {
        p.lock().unwrap().extend(ex.extras.drain(..).flatten());
    }
    ex.out
}

/// One plan being applied.
struct Executor<'s, 'a> {
    s: &'s Settings<'a>,
    out: Outcome,
    /// entries whose creation or removal failed: nothing is done below them
    failed: Vec<PathBuf>,
    counted_deletes: u64,
    /// extra connections for parallel copies, opened on first need
    extras: Vec<Option<Box<dyn Transport>>>,
    extras_failed: AtomicBool,
}

impl Executor<'_, '_> {
    fn under_failed(&self, p: &Path) -> bool {
        self.failed.iter().any(|f| p.starts_with(f))
    }

    /// A batch of consecutive actions of one kind from the start of
    /// `window` (copies bounded by COPY_RUN_FILES / COPY_RUN_BYTES, others
    /// by BATCH), leaving out deletions past `max_delete` and actions under
    /// a failed directory. Returns the batch, how many actions of the
    /// window it consumed, and the bytes of its copies.
    fn gather<'w>(&mut self, window: &'w [Action]) -> (Vec<&'w Action>, usize, u64) {
        let mut batch: Vec<&Action> = Vec::new();
        let mut bytes = 0u64;
        let mut w = 0;
        while w < window.len() {
            let a = &window[w];
            if let Action::Copy { size, .. } = a {
                if !batch.is_empty()
                    && (batch.len() >= COPY_RUN_FILES || bytes + size > COPY_RUN_BYTES)
                {
                    break;
                }
            } else if batch.len() >= BATCH {
                break;
            }
            w += 1;
            let path = a.path();
            let parent_failed = path
                .parent()
                .is_some_and(|p| !p.as_os_str().is_empty() && self.under_failed(p));
            match a {
                Action::Delete { counted, .. } => {
                    if *counted && self.s.max_delete.is_some_and(|m| self.counted_deletes >= m) {
                        self.out.deletes_withheld += 1;
                        continue;
                    }
                    if *counted {
                        self.counted_deletes += 1;
                    }
                }
                Action::SetAttrs { .. } if self.under_failed(path) => continue,
                _ if parent_failed => {
                    self.out
                        .error(path, "skipped: its parent directory could not be prepared");
                    continue;
                }
                Action::Copy { size, .. } => bytes += size,
                _ => {}
            }
            batch.push(a);
        }
        (batch, w, bytes)
    }

    /// Copy a batch, spread over up to `streams` connections when it is
    /// long (the extra ones opened by their own threads while this one
    /// already copies). One result per copy, in order.
    fn copy_run(
        &mut self,
        t: &mut dyn Transport,
        batch: &[&Action],
        bytes: u64,
    ) -> Vec<io::Result<u64>> {
        let s = self.s;
        let limits = t
            .copy_batch_limits()
            .unwrap_or((COPY_BATCH_FILES, COPY_BATCH_BYTES));
        let groups = split_copies(batch, limits);
        let want = match s.open_extra {
            Some(_)
                if !self.extras_failed.load(Ordering::Relaxed)
                    && groups.len() > 1
                    && (batch.len() >= PARALLEL_MIN_FILES || bytes >= PARALLEL_MIN_BYTES) =>
            {
                s.streams.min(groups.len()).saturating_sub(1)
            }
            _ => self.extras.len().min(groups.len().saturating_sub(1)),
        };
        while self.extras.len() < want {
            self.extras.push(None);
        }
        let slots: Vec<Mutex<Option<io::Result<u64>>>> =
            batch.iter().map(|_| Mutex::new(None)).collect();
        let warnings = Mutex::new(Vec::new());
        let next = AtomicUsize::new(0);
        let work = |t: &mut dyn Transport| {
            loop {
                if s.cancel.load(Ordering::Relaxed) {
                    break;
                }
                let g = next.fetch_add(1, Ordering::SeqCst);
                let Some(range) = groups.get(g) else { break };
                let (res, w) = copy_batch(t, &batch[range.clone()], s);
                let lost = res.iter().any(|r| matches!(r, Err(e) if is_fatal(e)));
                for (k, r) in range.clone().zip(res) {
                    *slots[k].lock().unwrap() = Some(r);
                }
                warnings.lock().unwrap().extend(w);
                if lost {
                    // this connection is gone; the others go on
                    break;
                }
            }
        };
        let extras_failed = &self.extras_failed;
        std::thread::scope(|sc| {
            for slot in self.extras.iter_mut().take(want) {
                let work = &work;
                sc.spawn(move || {
                    if slot.is_none() && !extras_failed.load(Ordering::Relaxed) {
                        match s.open_extra.map(|open| open()) {
                            Some(Ok(x)) => *slot = Some(x),
                            // one connection will do
                            _ => extras_failed.store(true, Ordering::Relaxed),
                        }
                    }
                    if let Some(x) = slot.as_mut() {
                        work(x.as_mut());
                    }
                });
            }
            work(t);
        });
        self.out.warnings.extend(warnings.into_inner().unwrap());
        slots
            .into_iter()
            .map(|m| {
                m.into_inner().unwrap().unwrap_or_else(|| {
                    Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "not copied: the run stopped first",
                    ))
                })
            })
            .collect()
    }

    /// Count a batch's results into the outcome; true when the run must
    /// stop (the target was lost).
    fn account(&mut self, batch: &[&Action], results: Vec<io::Result<u64>>, is_copy: bool) -> bool {
        // copies never started because a connection was lost or a shutdown
        // came are not errors of their own (the run says why it stopped)
        let stopped = self.s.cancel.load(Ordering::Relaxed)
            || results.iter().any(|r| matches!(r, Err(e) if is_fatal(e)));
        for (a, r) in batch.iter().zip(results) {
            if stopped && is_copy && matches!(&r, Err(e) if e.kind() == io::ErrorKind::Interrupted)
            {
                continue;
            }
            match r {
                Ok(n) => self.applied(a, n),
                Err(e) => {
                    if self.failed_one(a, e) && !is_copy {
                        return true;
                    }
                }
            }
        }
        self.out.lost_target
    }

    fn applied(&mut self, a: &Action, n: u64) {
        match a {
            Action::Copy { .. } => {
                // (on_done was called by the copying thread)
                self.out.files_transferred += 1;
                self.out.bytes_transferred += n;
            }
            Action::Delete { path, .. } => {
                // a stale temporary file of a killed run is cleanup, not a
                // deletion of the target's content
                if !crate::plan::is_temp_name(path) {
                    self.out.files_deleted += 1;
                }
                (self.s.on_done)(a);
            }
            _ => (self.s.on_done)(a),
        }
    }

    /// Record one failed action; true when it lost the target.
    fn failed_one(&mut self, a: &Action, e: io::Error) -> bool {
        let path = a.path();
        match a {
            // already gone (the plan may come from a target manifest)
            Action::Delete { .. } if e.kind() == io::ErrorKind::NotFound => return false,
            Action::Delete { kind, counted, .. }
                if *kind == EntryKind::Dir
                    && *counted
                    && e.kind() == io::ErrorKind::DirectoryNotEmpty =>
            {
                // excluded (or withheld) entries remain inside: keep it
                self.out.warnings.push(PathError {
                    path: display_path(path),
                    message: "directory not deleted: it still holds excluded or kept entries"
                        .into(),
                });
                return false;
            }
            Action::Delete { counted: false, .. } | Action::Mkdir { .. } => {
                self.failed.push(path.to_path_buf())
            }
            _ => {}
        }
        if matches!(a, Action::Copy { .. }) && crate::transport::is_source_vanished(&e) {
            self.out.vanished += 1;
            if self.out.warnings.len() < MAX_ERRORS {
                self.out.warnings.push(PathError {
                    path: display_path(path),
                    message: e.to_string(),
                });
            }
            return false;
        }
        let fatal = is_fatal(&e);
        if fatal && self.out.lost_target {
            // the same lost connection again: said once
            return false;
        }
        self.out.error(path, e.to_string());
        if fatal {
            // copies of other connections may have succeeded: they are
            // counted before stopping
            self.out.aborted = Some(format!("target lost: {e}"));
            self.out.lost_target = true;
        }
        fatal
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Compare, Mode};
    use crate::filter::Filter;
    use crate::transport::memory::MemoryTarget;

    /// A source tree on disk, a fake target, and the plan between them.
    struct Case {
        dir: tempfile::TempDir,
        target: MemoryTarget,
    }

    impl Case {
        fn new(files: &[&str]) -> Case {
            let dir = tempfile::tempdir().unwrap();
            for f in files {
                let p = dir.path().join(f);
                std::fs::create_dir_all(p.parent().unwrap()).unwrap();
                std::fs::write(p, f.as_bytes()).unwrap();
            }
            Case {
                dir,
                target: MemoryTarget::default(),
            }
        }

        fn execute(&self, delete: bool, max_delete: Option<u64>) -> Outcome {
            let scan = crate::plan::scan_source(self.dir.path(), &Filter::default()).unwrap();
            let mut t = self.target.open();
            let listing = t.list(&Filter::default()).unwrap();
            let opts = crate::plan::Options {
                mode: Mode::Incremental,
                compare: Compare::SizeMtime,
                delete,
                preserve_owner: false,
                mtime_nanos: true,
                symlink_times: true,
            };
            let mut same = |_: &Path| Ok(false);
            let filter = Filter::default();
            let plan = crate::plan::diff(&scan, listing.tree.as_ref(), &filter, opts, &mut same);
            if !listing.exists() {
                t.ensure_root().unwrap();
            }
            let cancel = AtomicBool::new(false);
            let s = Settings {
                source_root: self.dir.path(),
                max_delete,
                preserve_owner: false,
                cancel: &cancel,
                on_done: &|_| {},
                open_extra: None,
                streams: 1,
                progress: None,
                source: None,
                pool: None,
            };
            execute(&plan, t.as_mut(), &s)
        }
    }

    #[test]
    fn copies_arrive_and_a_second_run_has_nothing_to_do() {
        let c = Case::new(&["a", "d/b", "d/e/c"]);
        let out = c.execute(false, None);
        assert_eq!((out.files_transferred, out.bytes_transferred), (3, 9));
        assert!(out.errors.is_empty() && !out.lost_target);
        assert_eq!(c.target.files()["d/e/c"], b"d/e/c");
        assert_eq!(c.execute(false, None).files_transferred, 0);
    }

    #[test]
    fn max_delete_withholds_the_deletions_past_the_limit() {
        let c = Case::new(&["keep"]);
        c.execute(false, None);
        for n in ["x1", "x2", "x3"] {
            let p = c.dir.path().join(n);
            std::fs::write(&p, b"x").unwrap();
        }
        c.execute(false, None);
        for n in ["x1", "x2", "x3"] {
            std::fs::remove_file(c.dir.path().join(n)).unwrap();
        }
        let out = c.execute(true, Some(1));
        assert_eq!((out.files_deleted, out.deletes_withheld), (1, 2));
        assert_eq!(c.target.files().len(), 3);
    }

    #[test]
    fn nothing_is_done_below_a_directory_that_could_not_be_made() {
        let c = Case::new(&["top", "bad/x", "bad/y"]);
        c.target.state().refuse_mkdir.insert("bad".into());
        let out = c.execute(false, None);
        assert_eq!(out.files_transferred, 1);
        let paths: Vec<&str> = out.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["bad", "bad/x", "bad/y"]);
        assert!(out.errors[1].message.contains("parent directory"));
    }

    #[test]
    fn a_file_changing_while_copied_is_tried_again_with_a_warning() {
        let c = Case::new(&["hot", "cold"]);
        c.target.state().changing.insert("hot".into(), 2);
        let out = c.execute(false, None);
        assert_eq!(out.files_transferred, 2);
        assert_eq!(out.warnings.len(), 1);
        assert_eq!(out.warnings[0].path, "hot");
        assert!(out.warnings[0].message.contains("2 retries"));
        // one that never settles is an error after CHANGED_RETRIES more tries
        let c = Case::new(&["hot"]);
        c.target.state().changing.insert("hot".into(), 99);
        let out = c.execute(false, None);
        assert_eq!(out.files_transferred, 0);
        assert!(out.errors[0].message.contains("changed while"));
        assert_eq!(c.target.state().puts, 1 + CHANGED_RETRIES);
    }

    #[test]
    fn a_lost_connection_stops_the_target_and_says_so_once() {
        let c = Case::new(&["a", "b", "c", "d"]);
        c.target.state().lose_at_put = Some(2);
        let out = c.execute(false, None);
        assert!(out.lost_target);
        assert_eq!(out.files_transferred, 1);
        assert_eq!(out.aborted.as_deref(), Some("target lost: connection lost"));
        assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
    }
}
