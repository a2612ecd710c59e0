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

pub fn execute(plan: &Plan, t: &mut dyn Transport, s: &Settings) -> Outcome {
    let mut out = Outcome::default();
    // entries whose creation or removal failed: nothing is done below them
    let mut failed: Vec<PathBuf> = Vec::new();
    let mut counted_deletes = 0u64;
    let under_failed = |failed: &[PathBuf], p: &Path| failed.iter().any(|f| p.starts_with(f));

    for a in &plan.actions {
        if s.cancel.load(Ordering::Relaxed) {
            out.aborted = Some("stopped by shutdown before finishing".into());
            break;
        }
        let path = a.path();
        let parent_failed = path
            .parent()
            .is_some_and(|p| !p.as_os_str().is_empty() && under_failed(&failed, p));
        if parent_failed && !matches!(a, Action::Delete { .. }) {
            out.error(path, "skipped: its parent directory could not be prepared");
            continue;
        }
        let r: io::Result<()> = match a {
            Action::Delete { kind, counted, .. } => {
                if *counted && s.max_delete.is_some_and(|m| counted_deletes >= m) {
                    out.deletes_withheld += 1;
                    continue;
                }
                match t.remove(path, *kind) {
                    Ok(()) => {
                        if *counted {
                            counted_deletes += 1;
                        }
                        out.files_deleted += 1;
                        Ok(())
                    }
                    Err(e)
                        if *kind == EntryKind::Dir
                            && e.kind() == io::ErrorKind::DirectoryNotEmpty
                            && *counted =>
                    {
                        // excluded (or withheld) entries remain inside: keep it
                        out.warnings.push(PathError {
                            path: display_path(path),
                            message:
                                "directory not deleted: it still holds excluded or kept entries"
                                    .into(),
                        });
                        continue;
                    }
                    Err(e) => {
                        if !*counted {
                            failed.push(path.to_path_buf());
                        }
                        Err(e)
                    }
                }
            }
            Action::Mkdir { .. } => t
                .mkdir(path)
                .inspect_err(|_| failed.push(path.to_path_buf())),
            Action::Copy { .. } => {
                let src = s.source_root.join(path);
                let mut tries = 0;
                loop {
                    match t.put_file(path, &src, s.preserve_owner, s.cancel) {
                        Ok(n) => {
                            out.files_transferred += 1;
                            out.bytes_transferred += n;
                            break Ok(());
                        }
                        Err(e) if is_changed_during_copy(&e) && tries < CHANGED_RETRIES => {
                            tries += 1;
                            std::thread::sleep(std::time::Duration::from_millis(50 * tries as u64));
                        }
                        Err(e) => break Err(e),
                    }
                }
            }
            Action::Symlink { target, mtime, .. } => t.symlink(path, target, *mtime),
            Action::SetAttrs {
                kind,
                mode,
                mtime,
                owner,
                ..
            } => {
                if under_failed(&failed, path) {
                    continue;
                }
                t.set_attrs(path, *kind, *mode, *mtime, *owner)
            }
        };
        match r {
            Ok(()) => (s.on_done)(a),
            Err(e) => {
                let fatal = is_fatal(&e);
                out.error(path, e.to_string());
                if fatal {
                    out.aborted = Some(format!("target lost: {e}"));
                    out.lost_target = true;
                    break;
                }
            }
        }
    }
    out
}
