//! A target that is an rsync daemon module (`rsync://host/module/path`,
//! `host::module/path`), reached through the system `rsync` binary (run,
//! never linked: syncjob stays MIT).
//!
//! The job's plan decides what goes, as for every target: the target is
//! listed with `rsync --list-only -rl` (parsed as a stream, bounded, see
//! `listing`), or planned from its manifest; each batch of the plan is one
//! `rsync` run whose `--files-from` (NUL-separated, `--from0`) holds exactly
//! the batch's paths, with `--no-implied-dirs` so nothing else is touched:
//! copies (`-I`: the plan already decided they differ), new directories,
//! symlinks and attribute changes from the source; deletes from an empty
//! directory with `--delete-missing-args` (a directory is deleted only when
//! empty, never recursively; a batch never holds a directory and something
//! inside it). Counts come from rsync's own itemized output
//! (`--out-format` behind a random marker the daemon cannot forge).
//!
//! Invariants: the password is passed only as `--password-file` (checked
//! to be a regular file of mode 0600 or stricter owned by the running
//! user); opening the target logs in once (a listing of the root alone),
//! so a failed start (auth failed, unknown module, access denied) is a
//! permanent [`OpenError`] carrying rsync's message; a daemon that cannot
//! be reached, a cut connection or a timeout is `ConnectionAborted`/
//! `TimedOut` (retried like an SSH target that went away).

mod listing;
mod process;
mod sender;

/// Options and the check-time test live in `settings` (config reads them
/// without importing transport).
pub use crate::settings::rsync::{RsyncOptions, check, check_password_file};
pub use crate::target::rsync::{RsyncTarget, parse_target};
pub use listing::parse as parse_listing;

use super::{CopyCtx, Listing, OpenError, Retry, Transport};
use crate::filter::Filter;
use crate::journal::PathError;
use crate::plan::{Action, EntryKind};
use crate::settings::rsync::find_rsync;
use process::{Ended, is_permanent, run, run_as, unescape, whole_run_error};
use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

/// What an rsync daemon target needs of its job: `rsync` sends from the
/// source itself and applies the job's excludes to listings.
#[derive(Debug, Clone, Default)]
pub struct RsyncSettings {
    pub options: RsyncOptions,
    pub source: PathBuf,
    pub exclude: Vec<String>,
    pub preserve_owner: bool,
}

/// A private empty directory: the source of delete runs.
struct EmptyDir(PathBuf);

impl EmptyDir {
    fn new() -> io::Result<EmptyDir> {
        for _ in 0..100 {
            let p = std::env::temp_dir().join(format!("syncjob-rsync-empty.{}", nonce()));
            match std::fs::create_dir(&p) {
                Ok(()) => return Ok(EmptyDir(p)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("cannot create a private empty directory"))
    }
}

impl Drop for EmptyDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// 16 hex digits from the kernel's random source.
fn nonce() -> String {
    let mut b = [0u8; 8];
    let ok = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| io::Read::read_exact(&mut f, &mut b))
        .is_ok();
    if !ok {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        b = (t.as_nanos() as u64 ^ ((std::process::id() as u64) << 32)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// What rsync itemized for one path: the `%i` text and `%b` bytes.
type Done = HashMap<Vec<u8>, (String, u64)>;

pub struct Rsyncd {
    rsync: PathBuf,
    url: String,
    /// the module's root, and the target's path inside it
    module_url: String,
    path: String,
    shown: String,
    source: PathBuf,
    opts: RsyncOptions,
    excludes: Vec<String>,
    marker: String,
    empty: Option<EmptyDir>,
    /// owners kept (`preserve_owner` and running as root)
    owners: bool,
    /// files whose content differs (`compare: checksum`), asked once
    differs: Option<HashSet<Vec<u8>>>,
    /// who the runs that read the source run as (`None`: as syncjob)
    sender: Option<sender::Sender>,
}

/// The name as rsync's `--files-from` and output give it ("." for the root).
fn wire_name(rel: &Path) -> Vec<u8> {
    if rel.as_os_str().is_empty() {
        b".".to_vec()
    } else {
        rel.as_os_str().as_bytes().to_vec()
    }
}

fn copy_err(e: &io::Error) -> io::Error {
    io::Error::new(e.kind(), e.to_string())
}

impl Rsyncd {
    /// Check the binary and the password file, and log in once.
    pub fn open(t: &RsyncTarget, s: &RsyncSettings) -> Result<Rsyncd, OpenError> {
        let rsync = find_rsync().ok_or_else(|| {
            OpenError::permanent(
                io::ErrorKind::NotFound,
                "the `rsync` binary is not installed (not found in PATH)",
            )
        })?;
        if let Some(p) = &s.options.password_file {
            check_password_file(p)
                .map_err(|e| OpenError::permanent(io::ErrorKind::PermissionDenied, e))?;
        }
        let me = Rsyncd {
            rsync,
            url: t.url(s.options.port),
            module_url: RsyncTarget {
                path: String::new(),
                ..t.clone()
            }
            .url(s.options.port),
            path: t.path.clone(),
            shown: t.to_string(),
            source: s.source.clone(),
            opts: s.options.clone(),
            // rsync reads `+ `/`- `/`!` at the start of --exclude as rule
            // syntax; such patterns are left to syncjob's own filter
            excludes: s
                .exclude
                .iter()
                .filter(|p| !(p.starts_with("+ ") || p.starts_with("- ") || p.starts_with('!')))
                .cloned()
                .collect(),
            marker: format!("SYNCJOB-{}", nonce()),
            empty: None,
            // SAFETY: geteuid has no preconditions.
            owners: s.preserve_owner && unsafe { libc::geteuid() } == 0,
            differs: None,
            sender: sender::for_source(&s.source, s.options.password_file.as_deref())
                .map_err(|e| OpenError::permanent(e.kind(), e.to_string()))?,
        };
        me.login().map_err(|e| OpenError {
            retry: if is_permanent(&e) {
                Retry::Permanent
            } else {
                Retry::Transient
            },
            source: e,
        })?;
        Ok(me)
    }

    /// List the root alone (everything below excluded): reaches the
    /// daemon, logs in and opens the module. A missing root is fine.
    fn login(&self) -> io::Result<()> {
        let mut args = self.common_args(false);
        args.extend(["--list-only", "-d", "--exclude=*"].map(OsString::from));
        args.push(self.url.clone().into());
        let end = run(
            &self.rsync,
            &args,
            Vec::new(),
            &AtomicBool::new(false),
            &mut |_| Ok(()),
        )?;
        match whole_run_error(&end, &self.shown) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Timeouts and the password file (`as_sender`: the run reads the
    /// source, and gets the password from its environment when it runs as
    /// the source's owner).
    fn common_args(&self, as_sender: bool) -> Vec<OsString> {
        let secs = self.opts.timeout.as_secs().max(1);
        let mut a: Vec<OsString> = vec![
            format!("--contimeout={secs}").into(),
            format!("--timeout={secs}").into(),
            "--no-motd".into(),
        ];
        if let Some(p) = &self.opts.password_file
            && !(as_sender && self.sender.is_some())
        {
            let mut s = OsString::from("--password-file=");
            s.push(p);
            a.push(s);
        }
        a
    }

    /// One rsync run over `names` (sent as `--files-from`); the itemized
    /// paths and how it ended. A run that failed as a whole is an error.
    fn batch(
        &self,
        names: &[Vec<u8>],
        flags: &[&str],
        src: &Path,
        cancel: &AtomicBool,
    ) -> io::Result<(Ended, Done)> {
        let from_source = src == self.source;
        let mut args = self.common_args(from_source);
        args.extend(flags.iter().map(OsString::from));
        args.extend(
            [
                "--from0",
                "--files-from=-",
                "--no-implied-dirs",
                "--itemize-changes",
            ]
            .map(OsString::from),
        );
        args.push(format!("--out-format={} %i %b %n", self.marker).into());
        let mut s = src.as_os_str().to_owned();
        s.push("/");
        args.push(s);
        args.push(self.url.clone().into());
        let mut input = Vec::new();
        for n in names {
            input.extend_from_slice(n);
            input.push(0);
        }
        let wanted: HashSet<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
        let mut done = Done::new();
        let prefix = format!("{} ", self.marker);
        // rsync prints some per-file failures on stdout ("cannot delete
        // non-empty directory: x"): kept (bounded) beside stderr
        let mut other = String::new();
        let sender = self.sender.as_ref().filter(|_| from_source);
        let mut end = run_as(
            &self.rsync,
            &args,
            input,
            cancel,
            &mut |line| {
                match line.strip_prefix(prefix.as_bytes()) {
                    Some(rest) => {
                        if let Some((item, bytes, name)) = parse_item(rest)
                            && wanted.contains(name.as_slice())
                        {
                            done.insert(name, (item, bytes));
                        }
                    }
                    None if other.len() < process::MAX_STDERR => {
                        other.push_str(&String::from_utf8_lossy(line));
                        other.push('\n');
                    }
                    None => {}
                }
                Ok(())
            },
            sender,
        )?;
        if let Some(e) = whole_run_error(&end, &self.shown) {
            return Err(e);
        }
        end.stderr.push_str(&other);
        Ok((end, done))
    }

    /// The result for a path rsync did not itemize.
    fn not_done(end: &Ended, name: &[u8], delete: bool) -> io::Error {
        let shown = String::from_utf8_lossy(name);
        let line = end.stderr.lines().find(|l| {
            l.contains(&format!("\"{shown}\""))
                || l.contains(&format!("/{shown}\""))
                || l.ends_with(&format!(": {shown}"))
        });
        match line {
            Some(l) if l.contains("non-empty directory") => {
                io::Error::new(io::ErrorKind::DirectoryNotEmpty, l.trim().to_string())
            }
            Some(l) if l.contains("No such file") || l.contains("vanished") => {
                io::Error::new(io::ErrorKind::NotFound, l.trim().to_string())
            }
            Some(l) => io::Error::other(l.trim().to_string()),
            None if end.code == 0 || delete => io::Error::new(
                io::ErrorKind::NotFound,
                "not reported by rsync (already as wanted)",
            ),
            None => io::Error::other(format!(
                "not transferred (rsync exit {}: {})",
                end.code,
                end.stderr.lines().next().unwrap_or("").trim()
            )),
        }
    }

    fn attr_flags(preserve_owner: bool) -> Vec<&'static str> {
        let mut f = vec!["-lptd"];
        if preserve_owner {
            f.extend(["-og", "--numeric-ids"]);
        }
        f
    }

    /// New directories, symlinks or attribute changes: sent from the source.
    /// The root goes alone, with everything below it excluded: rsync sends
    /// the contents of a `.` given with `-d`.
    fn send_from_source(
        &mut self,
        names: Vec<Vec<u8>>,
        cancel: &AtomicBool,
    ) -> Vec<io::Result<()>> {
        if let Some(k) = names.iter().position(|n| n == b".")
            && names.len() > 1
        {
            let mut rest = names;
            let root = rest.remove(k);
            let mut out = self.send_from_source(rest, cancel);
            out.insert(k, self.send_from_source(vec![root], cancel).remove(0));
            return out;
        }
        let src = self.source.clone();
        let mut flags = Self::attr_flags(self.owners);
        if names.first().is_some_and(|n| n == b".") {
            flags.push("--exclude=*");
        }
        match self.batch(&names, &flags, &src, cancel) {
            Err(e) => names.iter().map(|_| Err(copy_err(&e))).collect(),
            Ok((end, done)) => names
                .iter()
                .map(|n| {
                    if end.code == 0 || done.contains_key(n) {
                        Ok(())
                    } else {
                        Err(Self::not_done(&end, n, false))
                    }
                })
                .collect(),
        }
    }

    /// Deletes, from an empty directory with `--delete-missing-args`.
    fn deletes(&mut self, names: Vec<Vec<u8>>, cancel: &AtomicBool) -> Vec<io::Result<()>> {
        if self.empty.is_none() {
            match EmptyDir::new() {
                Ok(d) => self.empty = Some(d),
                Err(e) => return names.iter().map(|_| Err(copy_err(&e))).collect(),
            }
        }
        let src = self.empty.as_ref().map(|d| d.0.clone()).unwrap_or_default();
        match self.batch(&names, &["-d", "--delete-missing-args"], &src, cancel) {
            Err(e) => names.iter().map(|_| Err(copy_err(&e))).collect(),
            Ok((end, done)) => names
                .iter()
                .map(|n| match done.get(n) {
                    Some((item, _)) if item.starts_with("*deleting") => Ok(()),
                    _ => Err(Self::not_done(&end, n, true)),
                })
                .collect(),
        }
    }

    /// Files whose content differs on the target, from one dry run with
    /// `--checksum` (for `compare: checksum`).
    fn differing(&mut self) -> io::Result<&HashSet<Vec<u8>>> {
        if self.differs.is_none() {
            let mut args = self.common_args(true);
            args.extend(["-rlptnc", "--itemize-changes"].map(OsString::from));
            for p in &self.excludes {
                args.push(format!("--exclude={p}").into());
            }
            args.push(format!("--out-format={} %i %b %n", self.marker).into());
            let mut s = self.source.as_os_str().to_owned();
            s.push("/");
            args.push(s);
            args.push(self.url.clone().into());
            let prefix = format!("{} ", self.marker);
            let mut set = HashSet::new();
            let end = run_as(
                &self.rsync,
                &args,
                Vec::new(),
                &AtomicBool::new(false),
                &mut |l| {
                    if let Some(rest) = l.strip_prefix(prefix.as_bytes())
                        && let Some((item, _, name)) = parse_item(rest)
                        && (item.starts_with("<f") || item.starts_with(">f"))
                    {
                        set.insert(name);
                    }
                    Ok(())
                },
                self.sender.as_ref(),
            )?;
            if let Some(e) = whole_run_error(&end, &self.shown) {
                return Err(e);
            }
            if end.code != 0 {
                return Err(io::Error::other(format!(
                    "rsync --checksum dry run: exit {}: {}",
                    end.code,
                    end.stderr.lines().next().unwrap_or("")
                )));
            }
            self.differs = Some(set);
        }
        Ok(self.differs.as_ref().expect("set above"))
    }
}

/// `%i %b %n` → (itemize, bytes, name without a directory's trailing `/`,
/// unescaped). `*deleting` is padded with spaces.
fn parse_item(rest: &[u8]) -> Option<(String, u64, Vec<u8>)> {
    let sp = rest.iter().position(|b| *b == b' ')?;
    let item = String::from_utf8_lossy(&rest[..sp]).into_owned();
    let rest = &rest[sp..];
    let rest = &rest[rest.iter().position(|b| *b != b' ')?..];
    let sp = rest.iter().position(|b| *b == b' ')?;
    let bytes = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
    let mut name = unescape(&rest[sp + 1..]);
    if name.len() > 1 && name.last() == Some(&b'/') {
        name.pop();
    }
    Some((item, bytes, name))
}

/// Split deletes so that no batch holds a directory and an entry inside
/// it (rsync would try the directory first, while it is not yet empty).
fn delete_groups(paths: &[&Path]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut ancestors: HashSet<&Path> = HashSet::new();
    for (k, p) in paths.iter().enumerate() {
        if ancestors.contains(p) {
            out.push(start..k);
            start = k;
            ancestors.clear();
        }
        ancestors.extend(p.ancestors().skip(1));
    }
    if start < paths.len() {
        out.push(start..paths.len());
    }
    out
}

impl Transport for Rsyncd {
    fn mtime_nanos(&self) -> bool {
        false
    }

    /// Each call is an rsync run (a connection and a login): big batches,
    /// four to a run of 4096 copies, so `streams` still spreads them.
    fn copy_batch_limits(&self) -> Option<(usize, u64)> {
        Some((1024, 256 << 20))
    }

    fn list(&mut self, _filter: &Filter) -> io::Result<Listing> {
        let mut args = self.common_args(false);
        args.extend(["--list-only", "-rl", "--no-h"].map(OsString::from));
        for p in &self.excludes {
            args.push(format!("--exclude={p}").into());
        }
        args.push(self.url.clone().into());
        let mut parser = listing::Parser::default();
        let end = run(
            &self.rsync,
            &args,
            Vec::new(),
            &AtomicBool::new(false),
            &mut |l| parser.line(l),
        )?;
        if let Some(e) = whole_run_error(&end, &self.shown) {
            return Err(e);
        }
        let (tree, mut errors) = parser.finish();
        if tree.is_none() {
            if end.stderr.contains("Not a directory") {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    format!("target {} is not a directory", self.shown),
                ));
            }
            if end.code == 0 || end.stderr.contains("No such file or directory") {
                return Ok(Listing::default());
            }
        }
        if end.code != 0 {
            // a directory the daemon could not read: its entries are
            // absent from the listing (so nothing in it is deleted)
            for l in end
                .stderr
                .lines()
                .filter(|l| l.starts_with("rsync: "))
                .take(20)
            {
                errors.push(PathError {
                    path: String::new(),
                    message: format!("rsync listing: {l}"),
                });
            }
            if tree.is_none() {
                return Err(io::Error::other(format!(
                    "cannot list {}: {}",
                    self.shown,
                    end.stderr.lines().next().unwrap_or("")
                )));
            }
        }
        Ok(Listing {
            tree,
            stream: None,
            errors,
        })
    }

    /// Create the target's path inside the module, one directory per
    /// level from a private local copy of that chain (`-d`, no `-p`/`-t`:
    /// existing directories are left as they are; `--mkpath` would need
    /// rsync 3.2.3 on the daemon). The root's mode and times come after,
    /// from the plan.
    fn ensure_root(&mut self) -> io::Result<()> {
        if self.path.is_empty() {
            return Ok(());
        }
        let stage = EmptyDir::new()?;
        let mut names = Vec::new();
        let mut rel = PathBuf::new();
        for c in self.path.split('/') {
            rel.push(c);
            let d = stage.0.join(&rel);
            std::fs::create_dir(&d)?;
            std::fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
            names.push(rel.as_os_str().as_bytes().to_vec());
        }
        let mut args = self.common_args(false);
        args.extend(["-d", "--from0", "--files-from=-", "--no-implied-dirs"].map(OsString::from));
        let mut src = stage.0.as_os_str().to_owned();
        src.push("/");
        args.push(src);
        args.push(self.module_url.clone().into());
        let input = names
            .iter()
            .flat_map(|n| n.iter().copied().chain([0]))
            .collect();
        let end = run(
            &self.rsync,
            &args,
            input,
            &AtomicBool::new(false),
            &mut |_| Ok(()),
        );
        // the stage's directories go before the stage itself
        for k in (0..names.len()).rev() {
            let _ = std::fs::remove_dir(stage.0.join(std::ffi::OsStr::from_bytes(&names[k])));
        }
        let end = end?;
        if let Some(e) = whole_run_error(&end, &self.shown) {
            return Err(e);
        }
        match end.code {
            0 => Ok(()),
            c => Err(io::Error::other(format!(
                "rsync exit {c}: {}",
                end.stderr.lines().next().unwrap_or("")
            ))),
        }
    }

    fn same_content(
        &mut self,
        rel: &Path,
        _src: &Path,
        _source: Option<&crate::plan::source::SourceTree>,
    ) -> io::Result<bool> {
        let name = wire_name(rel);
        Ok(!self.differing()?.contains(&name))
    }

    fn mkdir(&mut self, rel: &Path) -> io::Result<()> {
        let cancel = AtomicBool::new(false);
        self.send_from_source(vec![wire_name(rel)], &cancel)
            .pop()
            .expect("one result")
    }

    fn put_file(
        &mut self,
        rel: &Path,
        src: &Path,
        preserve_owner: bool,
        ctx: &CopyCtx,
    ) -> io::Result<u64> {
        self.put_files(&[(rel, src.to_path_buf())], preserve_owner, ctx)
            .pop()
            .expect("one result")
    }

    fn put_files(
        &mut self,
        items: &[(&Path, PathBuf)],
        preserve_owner: bool,
        ctx: &CopyCtx,
    ) -> Vec<io::Result<u64>> {
        let names: Vec<Vec<u8>> = items.iter().map(|(r, _)| wire_name(r)).collect();
        let mut flags = Self::attr_flags(preserve_owner);
        // the plan decided these differ (or `mode: full`)
        flags.push("-I");
        let src = self.source.clone();
        match self.batch(&names, &flags, &src, ctx.cancel) {
            Err(e) => names.iter().map(|_| Err(copy_err(&e))).collect(),
            Ok((end, done)) => names
                .iter()
                .map(|n| match done.get(n) {
                    Some((_, bytes)) => {
                        ctx.add_progress(*bytes);
                        Ok(*bytes)
                    }
                    None if end.code == 0 => Ok(0),
                    None => Err(Self::not_done(&end, n, false)),
                })
                .collect(),
        }
    }

    fn symlink(&mut self, rel: &Path, _t: &Path, _m: Option<(i64, u32)>) -> io::Result<()> {
        self.mkdir(rel)
    }

    fn set_attrs(
        &mut self,
        rel: &Path,
        _kind: EntryKind,
        _mode: Option<u32>,
        _mtime: Option<(i64, u32)>,
        _owner: Option<(u32, u32)>,
    ) -> io::Result<()> {
        self.mkdir(rel)
    }

    fn remove(&mut self, rel: &Path, _kind: EntryKind) -> io::Result<()> {
        let cancel = AtomicBool::new(false);
        self.deletes(vec![wire_name(rel)], &cancel)
            .pop()
            .expect("one result")
    }

    fn apply(&mut self, actions: &[&Action]) -> Vec<io::Result<()>> {
        let cancel = AtomicBool::new(false);
        let paths: Vec<&Path> = actions.iter().map(|a| a.path()).collect();
        if !matches!(actions.first(), Some(Action::Delete { .. })) {
            return self.send_from_source(paths.iter().map(|p| wire_name(p)).collect(), &cancel);
        }
        let mut out = Vec::with_capacity(actions.len());
        for g in delete_groups(&paths) {
            let names = paths[g].iter().map(|p| wire_name(p)).collect();
            let r = self.deletes(names, &cancel);
            let lost = r.iter().any(|r| {
                matches!(r, Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionAborted | io::ErrorKind::TimedOut))
            });
            out.extend(r);
            if lost {
                break;
            }
        }
        while out.len() < actions.len() {
            out.push(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "not done: the target went away",
            )));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn itemized_lines() {
        assert_eq!(
            parse_item(b"<f.st...... 51 a/x"),
            Some(("<f.st......".into(), 51, b"a/x".to_vec()))
        );
        assert_eq!(
            parse_item(b"*deleting   0 e/"),
            Some(("*deleting".into(), 0, b"e".to_vec()))
        );
        assert_eq!(
            parse_item(b".d..t...... 0 ./"),
            Some((".d..t......".into(), 0, b".".to_vec()))
        );
        assert_eq!(
            parse_item(b"<f+++++++++ 3 new\\#012 x"),
            Some(("<f+++++++++".into(), 3, b"new\n x".to_vec()))
        );
        assert_eq!(parse_item(b"garbage"), None);
    }

    #[test]
    fn a_directory_never_shares_a_delete_batch_with_its_contents() {
        fn p(v: &[&'static str]) -> Vec<&'static Path> {
            v.iter().map(|s| Path::new(*s)).collect()
        }
        let g = delete_groups(&p(&["a/b/y", "a/b/z", "a/b", "c", "a/x", "a", "d"]));
        assert_eq!(g, vec![0..2, 2..5, 5..7]);
        assert_eq!(delete_groups(&p(&["x", "y"])), vec![0..2]);
        assert!(delete_groups(&[]).is_empty());
    }

    #[test]
    fn password_file_must_be_private_and_ours() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("syncjob-pwtest-{}", nonce()));
        std::fs::create_dir(&d).unwrap();
        let f = d.join("pw");
        std::fs::write(&f, "secret\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = check_password_file(&f).unwrap_err();
        assert!(e.contains("must be mode 0600") && e.contains("0644"), "{e}");
        assert!(!e.contains("secret"));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(check_password_file(&f).is_ok());
        assert!(check_password_file(&d.join("none")).is_err());
        assert!(check_password_file(&d).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
