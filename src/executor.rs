//! Apply a plan to one target through its transport.

use crate::journal::PathError;
use crate::plan::{Action, EntryKind, Plan, display_path};
use crate::transport::{Transport, is_changed_during_copy};
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
/// Copies in one batch: at most this many files and bytes.
const COPY_BATCH_FILES: usize = 64;
const COPY_BATCH_BYTES: u64 = 32 << 20;

fn same_kind(a: &Action, b: &Action) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

pub fn execute(plan: &Plan, t: &mut dyn Transport, s: &Settings) -> Outcome {
    let mut out = Outcome::default();
    // entries whose creation or removal failed: nothing is done below them
    let mut failed: Vec<PathBuf> = Vec::new();
    let mut counted_deletes = 0u64;
    let under_failed = |failed: &[PathBuf], p: &Path| failed.iter().any(|f| p.starts_with(f));
    let actions = &plan.actions;
    let mut i = 0;

    'outer: while i < actions.len() {
        if s.cancel.load(Ordering::Relaxed) {
            out.aborted = Some("stopped by shutdown before finishing".into());
            break;
        }
        // gather a batch of consecutive actions of one kind
        let first = &actions[i];
        let mut batch: Vec<&Action> = Vec::new();
        let mut bytes = 0u64;
        while i < actions.len() && same_kind(&actions[i], first) {
            let a = &actions[i];
            if let Action::Copy { size, .. } = a
                && !batch.is_empty()
                && (batch.len() >= COPY_BATCH_FILES || bytes + size > COPY_BATCH_BYTES)
            {
                break;
            }
            if batch.len() >= BATCH {
                break;
            }
            i += 1;
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
            let items: Vec<(&Path, PathBuf)> = batch
                .iter()
                .map(|a| (a.path(), s.source_root.join(a.path())))
                .collect();
            let mut r = t.put_files(&items, s.preserve_owner, s.cancel);
            // a file that changed while it was copied is tried again alone
            for (k, res) in r.iter_mut().enumerate() {
                let mut tries = 0;
                while matches!(res, Err(e) if is_changed_during_copy(e)) && tries < CHANGED_RETRIES
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50 * tries as u64));
                    *res = t.put_file(items[k].0, &items[k].1, s.preserve_owner, s.cancel);
                }
                if tries > 0 && res.is_ok() {
                    out.warnings.push(PathError {
                        path: display_path(items[k].0),
                        message: format!(
                            "changed while being copied; copied again ({tries} retries)"
                        ),
                    });
                }
            }
            r
        } else {
            t.apply(&batch).into_iter().map(|r| r.map(|()| 0)).collect()
        };

        for (a, r) in batch.iter().zip(results) {
            let path = a.path();
            match (a, r) {
                (Action::Copy { .. }, Ok(n)) => {
                    out.files_transferred += 1;
                    out.bytes_transferred += n;
                    (s.on_done)(a);
                }
                (Action::Delete { .. }, Ok(_)) => {
                    out.files_deleted += 1;
                    (s.on_done)(a);
                }
                (_, Ok(_)) => (s.on_done)(a),
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
                    out.error(path, e.to_string());
                    if fatal {
                        out.aborted = Some(format!("target lost: {e}"));
                        out.lost_target = true;
                        break 'outer;
                    }
                }
            }
        }
    }
    out
}
