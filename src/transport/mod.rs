//! Where a target's files live. One trait, three implementations: `local`
//! (a directory on this machine), `ssh` (a directory on a remote host) and
//! `rsyncd` (a module of an rsync daemon, through the system `rsync`),
//! plus `memory`, a fake for unit tests. A transport gets the settings it
//! needs ([`TransportSettings`]), never the job; a failure to open one is an
//! [`OpenError`] whose [`Retry`] kind says whether trying again can help;
//! every copy gets a [`CopyCtx`] (cancel, progress) explicitly.
//!
//! Paths handed to a transport are relative to the target root and come from
//! the planner, never from the remote side unchecked.

pub mod local;
#[cfg(test)]
pub mod memory;
pub mod rsyncd;
pub mod ssh;
use crate::violation;

use crate::filter::Filter;
use crate::journal::PathError;
use crate::plan::{Action, EntryKind, Tree};
use crate::settings::SshOptions;
use crate::target::Target;
use std::fs::{File, Metadata};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The target's state as listed.
#[derive(Debug, Default)]
pub struct Listing {
    /// `None` when the target root does not exist yet (and no `stream`).
    pub tree: Option<Tree>,
    /// Instead of `tree`: the entries in path order, read while the plan is
    /// made (a local walk, a manifest), so that they are never all held.
    pub stream: Option<Stream>,
    pub errors: Vec<PathError>,
}

impl Listing {
    /// Whether the target root exists.
    pub fn exists(&self) -> bool {
        self.tree.is_some() || self.stream.is_some()
    }
}

/// Entries in path order; problems met while reading them go to `errors`.
pub struct Stream {
    pub entries: Box<dyn Iterator<Item = (PathBuf, crate::plan::Entry)>>,
    pub errors: std::rc::Rc<std::cell::RefCell<Vec<PathError>>>,
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Stream")
    }
}

pub trait Transport: Send {
    /// Whether listed mtimes carry nanoseconds that `set_attrs` can set.
    fn mtime_nanos(&self) -> bool;
    /// List everything under the root (no symlink followed; excluded
    /// directories may be pruned).
    fn list(&mut self, filter: &Filter) -> io::Result<Listing>;
    /// The same as a [`Stream`] in path order, where the transport can
    /// walk the target in that order (`None`: use `list`).
    fn list_stream(&mut self, _filter: &Filter) -> Option<io::Result<Listing>> {
        None
    }
    /// Create the root directory (and its parents) if missing.
    fn ensure_root(&mut self) -> io::Result<()>;
    /// Does the target file hold the same bytes as the local `src`?
    /// (`source`: the scanned tree `src` is opened through, see
    /// [`open_source`].)
    fn same_content(
        &mut self,
        rel: &Path,
        src: &Path,
        source: Option<&crate::plan::source::SourceTree>,
    ) -> io::Result<bool>;
    fn mkdir(&mut self, rel: &Path) -> io::Result<()>;
    /// Write `src` to `rel` under a temporary name, set its mode, mtime (and
    /// owner), then rename it into place. Returns the bytes written.
    /// Gives up (removing its temporary file) when `ctx` is cancelled, and
    /// counts the bytes it sends into `ctx`.
    fn put_file(
        &mut self,
        rel: &Path,
        src: &Path,
        preserve_owner: bool,
        ctx: &CopyCtx,
    ) -> io::Result<u64>;
    /// Whether a symlink's own mtime can be set.
    fn symlink_times(&self) -> bool {
        false
    }
    /// Create or atomically replace a symlink (and set its own mtime).
    fn symlink(&mut self, rel: &Path, target: &Path, mtime: Option<(i64, u32)>) -> io::Result<()>;
    fn set_attrs(
        &mut self,
        rel: &Path,
        kind: EntryKind,
        mode: Option<u32>,
        mtime: Option<(i64, u32)>,
        owner: Option<(u32, u32)>,
    ) -> io::Result<()>;
    /// Remove one entry (a directory only when empty).
    fn remove(&mut self, rel: &Path, kind: EntryKind) -> io::Result<()>;

    /// Rename the entry `from` to `to` (both relative to the root), as
    /// rename(2) does: a non-directory at `to` is replaced, an empty
    /// directory too; neither name is followed if it is a symlink. Used by
    /// watched jobs to move what moved in the source instead of sending it
    /// again. `Unsupported` (the default) means: delete and send instead.
    fn rename(&mut self, _from: &Path, _to: &Path) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this target cannot rename entries",
        ))
    }

    /// Several files at once (`put_file` each by default; a remote transport
    /// pipelines them). One result per item, in order.
    fn put_files(
        &mut self,
        items: &[(&Path, PathBuf)],
        preserve_owner: bool,
        ctx: &CopyCtx,
    ) -> Vec<io::Result<u64>> {
        items
            .iter()
            .map(|(rel, src)| self.put_file(rel, src, preserve_owner, ctx))
            .collect()
    }

    /// The most files and bytes one `put_files` call should take, where the
    /// executor's default does not suit (a call that costs a connection).
    fn copy_batch_limits(&self) -> Option<(usize, u64)> {
        None
    }

    /// Several actions of one kind other than copies, applied in order (one
    /// by one by default; a remote transport pipelines them). One result per
    /// action, in order.
    fn apply(&mut self, actions: &[&Action]) -> Vec<io::Result<()>> {
        actions.iter().map(|a| apply_one(self, a)).collect()
    }
}

/// Apply one non-copy action through the single-entry methods.
pub fn apply_one<T: Transport + ?Sized>(t: &mut T, a: &Action) -> io::Result<()> {
    match a {
        Action::Delete { path, kind, .. } => t.remove(path, *kind),
        Action::Mkdir { path } => t.mkdir(path),
        Action::Symlink {
            path,
            target,
            mtime,
            ..
        } => t.symlink(path, target, *mtime),
        Action::SetAttrs {
            path,
            kind,
            mode,
            mtime,
            owner,
            ..
        } => t.set_attrs(path, *kind, *mode, *mtime, *owner),
        Action::Copy { .. } => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "copies go through put_files",
        )),
    }
}

/// What a transport needs to know of its job (not the job itself).
#[derive(Debug, Clone, Default)]
pub struct TransportSettings {
    /// How to reach SSH targets (unused by local ones).
    pub ssh: SshOptions,
    /// How to reach rsync daemon targets, and what of the job they need:
    /// `rsync` sends from the source itself and applies the excludes.
    pub rsync: rsyncd::RsyncSettings,
    /// Where what is learnt of targets is kept (the remote helper probe).
    pub state_dir: Option<std::path::PathBuf>,
}

/// Whether retrying can help after a failure to reach a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Connection refused or reset, a timeout, a channel lost: try again.
    Transient,
    /// Authentication refused, host key unknown or changed, a bad password
    /// file, a missing remote helper: the same on every try.
    Permanent,
}

/// A target could not be opened; `retry` says whether trying again can help.
#[derive(Debug, thiserror::Error)]
#[error("{source}")]
pub struct OpenError {
    pub retry: Retry,
    pub source: io::Error,
}

impl OpenError {
    /// A failure that retrying cannot fix.
    pub fn permanent(kind: io::ErrorKind, msg: impl Into<String>) -> OpenError {
        OpenError {
            retry: Retry::Permanent,
            source: io::Error::new(kind, msg.into()),
        }
    }
}

/// I/O errors while connecting or listing are transient (refused, reset,
/// timed out, ...) unless their kind says that trying again cannot help
/// (not a directory, permission denied, read-only, invalid input).
impl From<io::Error> for OpenError {
    fn from(source: io::Error) -> OpenError {
        use io::ErrorKind as K;
        // a remote that broke a bound would break it again
        let retry = if violation::is_violation(&source) {
            Retry::Permanent
        } else {
            match source.kind() {
                K::NotADirectory
                | K::IsADirectory
                | K::PermissionDenied
                | K::ReadOnlyFilesystem
                | K::InvalidInput
                | K::InvalidFilename
                | K::Unsupported => Retry::Permanent,
                _ => Retry::Transient,
            }
        };
        OpenError { retry, source }
    }
}

/// Open the transport for a target.
pub fn open(
    target: &Target,
    settings: &TransportSettings,
) -> Result<Box<dyn Transport>, OpenError> {
    match target {
        Target::Local(root) => Ok(Box::new(local::Local::new(root.clone()))),
        Target::Ssh(t) => Ok(Box::new(ssh::Ssh::connect(t, settings)?)),
        Target::Rsync(t) => Ok(Box::new(rsyncd::Rsyncd::open(t, &settings.rsync)?)),
    }
}

/// A source file changed while it was being copied.
#[derive(Debug)]
pub struct ChangedDuringCopy;

impl std::fmt::Display for ChangedDuringCopy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the source file changed while it was being copied")
    }
}
impl std::error::Error for ChangedDuringCopy {}

/// A source file was gone when it was to be copied (deleted since the scan).
#[derive(Debug)]
pub struct SourceVanished;

impl std::fmt::Display for SourceVanished {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the source file vanished during the run")
    }
}
impl std::error::Error for SourceVanished {}

pub fn is_source_vanished(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<SourceVanished>())
}

pub fn is_changed_during_copy(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<ChangedDuringCopy>())
}

/// Open a source file for copying without following a symlink that may have
/// replaced it since the scan; returns its metadata as of the open.
/// Beneath the root of the scanned source tree `source`, every directory
/// on the way is opened from a handle too, so a symlink
/// swapped in for one of them is never followed either.
pub fn open_source(
    path: &Path,
    source: Option<&crate::plan::source::SourceTree>,
) -> io::Result<(File, Metadata)> {
    let beneath = source.and_then(|t| Some((t, path.strip_prefix(t.root_path()).ok()?)));
    let f = match beneath {
        Some((t, rel)) => t.open(rel),
        None => std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(path),
    }
    .map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => io::Error::new(io::ErrorKind::NotFound, SourceVanished),
        _ => e,
    })?;
    let md = f.metadata()?;
    if !md.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the source entry is no longer a regular file",
        ));
    }
    Ok((f, md))
}

/// The next piece of a source being copied into `buf`, `done` bytes in:
/// never past `before`'s size (the size it had when opened), so a complete
/// file costs no read to see its end; a file that grew since is caught by
/// [`verify_unchanged`] (size, mtime, ctime). `Ok(0)`: all read, or it
/// ended early (then `verify_unchanged` fails it).
pub fn read_source_piece(
    input: &mut File,
    before: &Metadata,
    done: u64,
    buf: &mut [u8],
) -> io::Result<usize> {
    use std::io::Read;
    let room = before.size().saturating_sub(done).min(buf.len() as u64) as usize;
    if room == 0 {
        return Ok(0);
    }
    input.read(&mut buf[..room])
}

/// After a copy: did the source stay as it was when opened?
pub fn verify_unchanged(f: &File, before: &Metadata, copied: u64) -> io::Result<()> {
    let now = f.metadata()?;
    if now.size() != before.size()
        || now.mtime() != before.mtime()
        || now.mtime_nsec() != before.mtime_nsec()
        // ctime too: a writer that restores the old mtime still moves it
        || now.ctime() != before.ctime()
        || now.ctime_nsec() != before.ctime_nsec()
        || copied != before.size()
    {
        return Err(io::Error::other(ChangedDuringCopy));
    }
    Ok(())
}

/// Copy `input` to `out` in large chunks (in-kernel `copy_file_range` where
/// both are files), checking `ctx` for a shutdown between chunks.
pub fn copy_cancellable(
    input: &mut File,
    out: &mut impl io::Write,
    ctx: &CopyCtx,
) -> io::Result<u64> {
    use std::io::Read;
    const CHUNK: u64 = 16 << 20;
    let mut total = 0;
    loop {
        if ctx.cancelled() {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "aborted by shutdown",
            ));
        }
        let n = io::copy(&mut input.by_ref().take(CHUNK), out)?;
        ctx.add_progress(n);
        total += n;
        if n < CHUNK {
            return Ok(total);
        }
    }
}

/// What the run tells a copy: when to stop, and where to count the bytes
/// it sends (for a progress bar). Passed explicitly to every copy; no
/// thread-local state.
#[derive(Clone, Copy)]
pub struct CopyCtx<'a> {
    /// Set at shutdown: copies stop between chunks, removing their
    /// temporary file.
    pub cancel: &'a AtomicBool,
    /// Bytes sent so far, when someone is watching.
    pub progress: Option<&'a AtomicU64>,
    /// The source as scanned: files are opened through its directory
    /// handles (`None`: by path, the last component not followed).
    pub source: Option<&'a crate::plan::source::SourceTree>,
    /// What the plan knows of the files being copied, by relative path
    /// (`None`, or a path not in it: nothing known; a transport that needs
    /// to know finds out itself).
    pub planned: Option<&'a std::collections::HashMap<&'a Path, Planned>>,
}

/// A planned copy as the plan saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planned {
    /// the source's size at the scan
    pub size: u64,
    /// whether the target may hold a version of the file (a delta basis):
    /// false for a file the plan found absent there
    pub on_target: bool,
}

impl CopyCtx<'_> {
    /// Whether the run was told to stop.
    pub fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }

    /// Count `n` bytes sent (a chunk of a file being copied).
    pub fn add_progress(&self, n: u64) {
        if let Some(c) = self.progress {
            c.fetch_add(n, Ordering::Relaxed);
        }
    }
}

pub use crate::plan::temp_name;
