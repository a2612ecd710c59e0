//! Apply a plan to one target through its transport.

use crate::journal::PathError;
use crate::plan::{Action, EntryKind, Plan, display_path};
use crate::source::with_source;
use crate::transport::{Transport, is_changed_during_copy, with_progress};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// How many times a file that changed while being copied is tried again.
const CHANGED_RETRIES: u32 = 3;
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
    pub source: Option<std::sync::Arc<crate::source::SourceTree>>,
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
    let mut r = t.put_files(&items, s.preserve_owner, s.cancel);
    for (k, res) in r.iter_mut().enumerate() {
        let mut tries = 0;
        while matches!(res, Err(e) if is_changed_during_copy(e)) && tries < CHANGED_RETRIES {
            tries += 1;
            std::thread::sleep(std::time::Duration::from_millis(50 * tries as u64));
            *res = t.put_file(items[k].0, &items[k].1, s.preserve_owner, s.cancel);
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

/// Split copies into batches of at most COPY_BATCH_FILES / COPY_BATCH_BYTES.
fn split_copies(batch: &[&Action]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0u64;
    for (k, a) in batch.iter().enumerate() {
        let size = match a {
            Action::Copy { size, .. } => *size,
            _ => 0,
        };
        if k > start && (k - start >= COPY_BATCH_FILES || bytes + size > COPY_BATCH_BYTES) {
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

pub fn execute(plan: &Plan, t: &mut dyn Transport, s: &Settings) -> Outcome {
    // (same_content of `compare: checksum` opens sources here too)
    with_source(s.source.clone(), || execute_here(plan, t, s))
}

fn execute_here(plan: &Plan, t: &mut dyn Transport, s: &Settings) -> Outcome {
    let mut out = Outcome::default();
    // entries whose creation or removal failed: nothing is done below them
    let mut failed: Vec<PathBuf> = Vec::new();
    let mut counted_deletes = 0u64;
    let under_failed = |failed: &[PathBuf], p: &Path| failed.iter().any(|f| p.starts_with(f));
    let n = plan.len();
    let mut i = 0;
    // extra connections for parallel copies, opened on first need
    let mut extras: Vec<Option<Box<dyn Transport>>> = Vec::new();
    let extras_failed = AtomicBool::new(false);

    'outer: while i < n {
        if s.cancel.load(Ordering::Relaxed) {
            out.aborted = Some("stopped by shutdown before finishing".into());
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
        // gather a batch of consecutive actions of one kind
        let first = &window[0];
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
            i += 1;
            w += 1;
            let path = a.path();
            let parent_failed = path
                .parent()
                .is_some_and(|p| !p.as_os_str().is_empty() && under_failed(&failed, p));
            match a {
                Action::Delete { counted, .. } => {
                    if *counted && s.max_delete.is_some_and(|m| counted_deletes >= m) {
                        out.deletes_withheld += 1;
                        continue;
                    }
                    if *counted {
                        counted_deletes += 1;
                    }
                }
                Action::SetAttrs { .. } if under_failed(&failed, path) => continue,
                _ if parent_failed => {
                    out.error(path, "skipped: its parent directory could not be prepared");
                    continue;
                }
                Action::Copy { size, .. } => bytes += size,
                _ => {}
            }
            batch.push(a);
        }
        if batch.is_empty() {
            continue;
        }

        let results: Vec<io::Result<u64>> = if matches!(first, Action::Copy { .. }) {
            let groups = split_copies(&batch);
            // more connections for a long run of copies, opened by their
            // worker threads while this one already copies
            let want = match s.open_extra {
                Some(_)
                    if !extras_failed.load(Ordering::Relaxed)
                        && groups.len() > 1
                        && (batch.len() >= PARALLEL_MIN_FILES || bytes >= PARALLEL_MIN_BYTES) =>
                {
                    s.streams.min(groups.len()).saturating_sub(1)
                }
                _ => extras.len().min(groups.len().saturating_sub(1)),
            };
            while extras.len() < want {
                extras.push(None);
            }
            let slots: Vec<std::sync::Mutex<Option<io::Result<u64>>>> =
                batch.iter().map(|_| std::sync::Mutex::new(None)).collect();
            let warnings = std::sync::Mutex::new(Vec::new());
            let next = std::sync::atomic::AtomicUsize::new(0);
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
            std::thread::scope(|sc| {
                for slot in extras.iter_mut().take(want) {
                    let work = &work;
                    let extras_failed = &extras_failed;
                    sc.spawn(move || {
                        if slot.is_none() && !extras_failed.load(Ordering::Relaxed) {
                            match s.open_extra.map(|open| open()) {
                                Some(Ok(x)) => *slot = Some(x),
                                // one connection will do
                                _ => extras_failed.store(true, Ordering::Relaxed),
                            }
                        }
                        if let Some(x) = slot.as_mut() {
                            with_source(s.source.clone(), || {
                                with_progress(s.progress.clone(), || work(x.as_mut()))
                            });
                        }
                    });
                }
                with_source(s.source.clone(), || {
                    with_progress(s.progress.clone(), || work(t))
                });
            });
            out.warnings.extend(warnings.into_inner().unwrap());
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
        } else {
            t.apply(&batch).into_iter().map(|r| r.map(|()| 0)).collect()
        };

        let is_copy = matches!(first, Action::Copy { .. });
        // copies never started because a connection was lost or a shutdown
        // came are not errors of their own (the run says why it stopped)
        let stopped = s.cancel.load(Ordering::Relaxed)
            || results.iter().any(|r| matches!(r, Err(e) if is_fatal(e)));
        for (a, r) in batch.iter().zip(results) {
            if stopped && is_copy && matches!(&r, Err(e) if e.kind() == io::ErrorKind::Interrupted)
            {
                continue;
            }
            let path = a.path();
            match (a, r) {
                (Action::Copy { .. }, Ok(n)) => {
                    // (on_done was called by the copying thread)
                    out.files_transferred += 1;
                    out.bytes_transferred += n;
                }
                (Action::Delete { .. }, Ok(_)) => {
                    out.files_deleted += 1;
                    (s.on_done)(a);
                }
                (_, Ok(_)) => (s.on_done)(a),
                // already gone (the plan may come from a target manifest)
                (Action::Delete { .. }, Err(e)) if e.kind() == io::ErrorKind::NotFound => {}
                (Action::Delete { kind, counted, .. }, Err(e))
                    if *kind == EntryKind::Dir
                        && *counted
                        && e.kind() == io::ErrorKind::DirectoryNotEmpty =>
                {
                    // excluded (or withheld) entries remain inside: keep it
                    out.warnings.push(PathError {
                        path: display_path(path),
                        message: "directory not deleted: it still holds excluded or kept entries"
                            .into(),
                    });
                }
                (_, Err(e)) => {
                    match a {
                        Action::Delete { counted: false, .. } | Action::Mkdir { .. } => {
                            failed.push(path.to_path_buf())
                        }
                        _ => {}
                    }
                    let fatal = is_fatal(&e);
                    if fatal && out.lost_target {
                        // the same lost connection again: said once
                        continue;
                    }
                    out.error(path, e.to_string());
                    if fatal {
                        out.aborted = Some(format!("target lost: {e}"));
                        out.lost_target = true;
                        if !is_copy {
                            break 'outer;
                        }
                        // copies of other connections may have succeeded:
                        // count them before stopping
                    }
                }
            }
        }
        if out.lost_target {
            break 'outer;
        }
    }
    out
}
