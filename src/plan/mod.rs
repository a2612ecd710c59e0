//! Walk the source, take the target's listing, and diff them into actions.

use crate::config::{Compare, Mode};
use crate::filter::Filter;
use crate::journal::PathError;
use std::collections::BTreeSet;
use std::fs::Metadata;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub mod source;

/// Temporary files are named `.syncjob-tmp.<pid>.<n>.<name>`; one left by a
/// killed run is removed by the next run, and the source walk skips them.
pub const TEMP_PREFIX: &str = ".syncjob-tmp.";

/// Whether `p`'s name is exactly the temporary-name pattern,
/// `.syncjob-tmp.<pid>.<n>.<name>` (digits, digits, a non-empty name): a
/// real file such as `.syncjob-tmp.notes` is an ordinary name.
pub fn is_temp_name(p: &Path) -> bool {
    let Some(rest) = p
        .file_name()
        .and_then(|n| n.as_bytes().strip_prefix(TEMP_PREFIX.as_bytes()))
    else {
        return false;
    };
    let digits = |s: &[u8]| -> Option<usize> {
        let n = s.iter().take_while(|b| b.is_ascii_digit()).count();
        (n > 0 && s.get(n) == Some(&b'.')).then_some(n + 1)
    };
    let Some(a) = digits(rest) else {
        return false;
    };
    let Some(b) = digits(&rest[a..]) else {
        return false;
    };
    rest.len() > a + b
}

static TEMP_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A temporary name beside `rel`: `.syncjob-tmp.<pid>.<n>.<name>`.
pub fn temp_name(rel: &Path) -> PathBuf {
    let n = TEMP_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = rel.file_name().map(|n| n.as_bytes()).unwrap_or(b"x");
    // keep the whole name under NAME_MAX (255)
    let keep = &name[..name.len().min(180)];
    static PID: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let pid = PID.get_or_init(std::process::id);
    let mut tmp = format!("{TEMP_PREFIX}{pid}.{n}.").into_bytes();
    tmp.extend_from_slice(keep);
    let tmp = PathBuf::from(std::ffi::OsStr::from_bytes(&tmp));
    match rel.parent() {
        Some(p) => p.join(tmp),
        None => tmp,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    Symlink,
    Special,
}

impl EntryKind {
    pub fn letter(self) -> char {
        match self {
            EntryKind::File => 'f',
            EntryKind::Dir => 'd',
            EntryKind::Symlink => 'L',
            EntryKind::Special => 'D',
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: EntryKind,
    pub size: u64,
    pub mtime: i64,
    pub mtime_ns: u32,
    /// Permission bits (`& 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// A symlink's target, as stored (never followed); boxed twice so that
    /// an entry takes 48 bytes (most are not symlinks).
    pub link: Option<Box<PathBuf>>,
}

impl Entry {
    pub fn from_metadata(md: &Metadata, link: Option<PathBuf>) -> Entry {
        let ft = md.file_type();
        let kind = if ft.is_file() {
            EntryKind::File
        } else if ft.is_dir() {
            EntryKind::Dir
        } else if ft.is_symlink() {
            EntryKind::Symlink
        } else {
            EntryKind::Special
        };
        Entry {
            kind,
            size: if kind == EntryKind::File {
                md.size()
            } else {
                0
            },
            mtime: md.mtime(),
            mtime_ns: md.mtime_nsec() as u32,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            link: link.map(Box::new),
        }
    }

    /// An entry of `kind` with every attribute zero (a placeholder, or a
    /// root whose attributes are not known).
    pub fn blank(kind: EntryKind) -> Entry {
        Entry {
            kind,
            size: 0,
            mtime: 0,
            mtime_ns: 0,
            mode: 0,
            uid: 0,
            gid: 0,
            link: None,
        }
    }

    pub fn mtime_eq(&self, other: &Entry, nanos: bool) -> bool {
        self.mtime == other.mtime && (!nanos || self.mtime_ns == other.mtime_ns)
    }
}

/// A target's entries keyed by path relative to the root; the root itself
/// is `""`. Kept like the source scan, as a [`Sorted`] arena (a million
/// entries: ~80 MB instead of ~200 MB as a `BTreeMap<PathBuf, Entry>`).
pub type Tree = Sorted;

/// Builds a [`Sorted`] from entries in any order (a target listing): one
/// sort at the end, none when they came in order. A path given twice keeps
/// its last entry.
#[derive(Debug, Default)]
pub struct TreeBuilder {
    s: Sorted,
    out_of_order: bool,
}

impl TreeBuilder {
    pub fn push(&mut self, p: &Path, e: Entry) {
        if !self.out_of_order && !self.s.is_empty() && self.s.path_at(self.s.len() - 1) >= p {
            self.out_of_order = true;
        }
        self.s.push(p, e);
    }
    pub fn finish(self) -> Sorted {
        let mut s = self.s;
        if self.out_of_order {
            // stable: of equal paths the last pushed stays last, and is kept
            let mut order: Vec<u32> = (0..s.len() as u32).collect();
            order.sort_by(|&a, &b| s.path_at(a as usize).cmp(s.path_at(b as usize)));
            let mut keep: Vec<u32> = Vec::with_capacity(order.len());
            for i in order {
                match keep.last_mut() {
                    Some(last) if s.path_at(*last as usize) == s.path_at(i as usize) => *last = i,
                    _ => keep.push(i),
                }
            }
            let mut out = Sorted {
                names: Vec::with_capacity(s.names.len()),
                items: Vec::with_capacity(keep.len()),
            };
            for i in keep {
                let e =
                    std::mem::replace(&mut s.items[i as usize].1, Entry::blank(EntryKind::Special));
                let name = s.path_at(i as usize).as_os_str().as_bytes().to_vec();
                out.push(Path::new(std::ffi::OsStr::from_bytes(&name)), e);
            }
            s = out;
        }
        s.shrink();
        s
    }
}

/// Entries sorted by path (`Path` order: a directory before its contents).
/// Names live in one byte arena, each entry holding where its name ends
/// (it starts where the previous one's ends): 56 bytes per entry plus its
/// name (1M entries: ~60 MB), against ~200 for a `BTreeMap<PathBuf, Entry>`;
/// built without comparing paths (the walk yields them in order).
#[derive(Debug, Default)]
pub struct Sorted {
    names: Vec<u8>,
    items: Vec<(u64, Entry)>,
}

impl Sorted {
    /// Append; the caller keeps `Path` order.
    pub(crate) fn push(&mut self, p: &Path, e: Entry) {
        self.names.extend_from_slice(p.as_os_str().as_bytes());
        self.items.push((self.names.len() as u64, e));
    }
    /// Append all of `other`, whose paths all come after this one's.
    pub(crate) fn append(&mut self, other: Sorted) {
        let base = self.names.len() as u64;
        self.names.extend_from_slice(&other.names);
        self.items
            .extend(other.items.into_iter().map(|(end, e)| (end + base, e)));
    }
    pub(crate) fn shrink(&mut self) {
        self.names.shrink_to_fit();
        self.items.shrink_to_fit();
    }
    fn find(&self, p: &Path) -> Result<usize, usize> {
        // (a binary search over the indices: a name needs its neighbour)
        let (mut lo, mut hi) = (0, self.items.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.path_at(mid).cmp(p) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }
    pub fn get(&self, p: &Path) -> Option<&Entry> {
        self.find(p).ok().map(|i| &self.items[i].1)
    }
    /// Entry number `i` (in path order).
    pub fn at(&self, i: usize) -> &Entry {
        &self.items[i].1
    }
    /// The path of entry number `i` (in path order).
    pub fn path_at(&self, i: usize) -> &Path {
        let start = if i == 0 {
            0
        } else {
            self.items[i - 1].0 as usize
        };
        Path::new(std::ffi::OsStr::from_bytes(
            &self.names[start..self.items[i].0 as usize],
        ))
    }
    pub fn contains_key(&self, p: &Path) -> bool {
        self.find(p).is_ok()
    }
    /// Whether any entry lies below `p`.
    pub fn has_children(&self, p: &Path) -> bool {
        let next = match self.find(p) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        next < self.len() && {
            let n = self.path_at(next);
            n.starts_with(p) && n != p
        }
    }
    pub fn len(&self) -> usize {
        self.items.len()
    }
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
    pub fn iter(&self) -> impl DoubleEndedIterator<Item = (&Path, &Entry)> + ExactSizeIterator {
        (0..self.items.len()).map(|i| (self.path_at(i), &self.items[i].1))
    }
    pub fn values(&self) -> impl Iterator<Item = &Entry> {
        self.items.iter().map(|(_, e)| e)
    }
}

impl FromIterator<(PathBuf, Entry)> for Sorted {
    fn from_iter<I: IntoIterator<Item = (PathBuf, Entry)>>(it: I) -> Sorted {
        let mut b = TreeBuilder::default();
        for (p, e) in it {
            b.push(&p, e);
        }
        b.finish()
    }
}

impl std::ops::Index<&Path> for Sorted {
    type Output = Entry;
    fn index(&self, p: &Path) -> &Entry {
        self.get(p).expect("no entry at this path")
    }
}

/// The source as walked.
#[derive(Debug, Default)]
pub struct Scan {
    pub root: PathBuf,
    pub entries: Sorted,
    pub errors: Vec<PathError>,
    pub warnings: Vec<PathError>,
    /// Paths whose state is unknown (unreadable directory, vanished or
    /// unreadable entry, skipped special file): nothing at or below them is
    /// deleted on the target.
    pub unknown: BTreeSet<PathBuf>,
    /// Entries that vanished between readdir and stat (a warning each, up
    /// to a bound; not errors).
    pub vanished: u64,
    /// The root as it was walked (files are copied from it: see `source`).
    pub root_fd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
    /// Device and inode of each directory walked.
    pub dir_ids: std::sync::Arc<crate::plan::source::DirIds>,
}

impl Scan {
    pub fn files(&self) -> u64 {
        self.entries
            .values()
            .filter(|e| e.kind != EntryKind::Dir)
            .count() as u64
    }

    /// The source holds nothing but its root directory.
    pub fn is_empty(&self) -> bool {
        self.entries.len() <= 1
    }

    fn is_unknown(&self, p: &Path) -> bool {
        p.ancestors().any(|a| self.unknown.contains(a))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    #[error("source {0} does not exist")]
    Missing(PathBuf),
    #[error("source {0} is not a directory")]
    NotADir(PathBuf),
    #[error("cannot read source {0}: {1}")]
    Io(PathBuf, std::io::Error),
}

pub fn display_path(p: &Path) -> String {
    if p.as_os_str().is_empty() {
        ".".into()
    } else {
        crate::names::encode(p.as_os_str().as_bytes())
    }
}

/// Walk the source tree (symlinks are not followed; excluded directories are
/// not entered).
pub fn scan_source(root: &Path, filter: &Filter) -> Result<Scan, ScanError> {
    let (fd, st) = match crate::plan::source::open_root(root) {
        Ok(x) => x,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ScanError::Missing(root.to_path_buf()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            return Err(ScanError::NotADir(root.to_path_buf()));
        }
        Err(e) => return Err(ScanError::Io(root.to_path_buf(), e)),
    };
    let fd = std::sync::Arc::new(fd);
    let walk_fd = match rustix::fs::openat(
        &*fd,
        ".",
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    ) {
        Ok(f) => f,
        Err(e) => return Err(ScanError::Io(root.to_path_buf(), e.into())),
    };
    let mut scan = Scan {
        root: root.to_path_buf(),
        root_fd: Some(fd),
        ..Default::default()
    };
    // sorted by name, a depth-first walk yields paths in `Path` order, so
    // the tree is built from a sorted list without comparing paths again
    let mut found = Sorted::default();
    found.push(Path::new(""), crate::plan::source::entry_of(&st, None));
    let mut dirs = crate::plan::source::DirIds::new();
    crate::plan::source::walk_parallel(
        walk_fd,
        Path::new(""),
        filter,
        &mut scan,
        &mut found,
        &mut dirs,
    );
    found.shrink();
    scan.entries = found;
    scan.dir_ids = std::sync::Arc::new(dirs);
    Ok(scan)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    New,
    Changed,
    /// `mode: full` transfers every file.
    Full,
    /// The target held another type of entry at this path.
    Replace,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Delete {
        path: PathBuf,
        kind: EntryKind,
        /// Counts toward `max_delete` (absent from the source, not a type
        /// change or a stale temporary file).
        counted: bool,
    },
    Mkdir {
        path: PathBuf,
    },
    Copy {
        path: PathBuf,
        why: Why,
        size: u64,
        /// which attributes differ, for the itemized line
        size_differs: bool,
        time_differs: bool,
    },
    Symlink {
        path: PathBuf,
        target: PathBuf,
        why: Why,
        /// the link's own mtime, where the target can set it
        mtime: Option<(i64, u32)>,
    },
    SetAttrs {
        path: PathBuf,
        kind: EntryKind,
        mode: Option<u32>,
        mtime: Option<(i64, u32)>,
        owner: Option<(u32, u32)>,
        /// the entry was created by this run (a new directory)
        new: bool,
    },
}

impl Action {
    pub fn path(&self) -> &Path {
        match self {
            Action::Delete { path, .. }
            | Action::Mkdir { path }
            | Action::Copy { path, .. }
            | Action::Symlink { path, .. }
            | Action::SetAttrs { path, .. } => path,
        }
    }

    /// One line in the manner of `rsync -i`.
    pub fn itemize(&self) -> String {
        let p = escape(self.path());
        match self {
            Action::Delete { kind, .. } => {
                let slash = if *kind == EntryKind::Dir { "/" } else { "" };
                format!("*deleting   {p}{slash}")
            }
            Action::Mkdir { .. } => format!("cd+++++++++ {p}/"),
            Action::Copy {
                why,
                size_differs,
                time_differs,
                ..
            } => match why {
                Why::New | Why::Replace => format!(">f+++++++++ {p}"),
                Why::Full | Why::Changed => format!(
                    ">f.{}{}...... {p}",
                    if *size_differs { 's' } else { '.' },
                    if *time_differs { 't' } else { '.' }
                ),
            },
            Action::Symlink { target, why, .. } => {
                let flags = match why {
                    Why::New | Why::Replace => "+++++++++",
                    _ => ".........",
                };
                format!("cL{flags} {p} -> {}", escape(target))
            }
            Action::SetAttrs {
                kind,
                mode,
                mtime,
                owner,
                new,
                ..
            } => {
                if *new {
                    return String::new();
                }
                let slash = if *kind == EntryKind::Dir && !p.ends_with('/') {
                    "/"
                } else {
                    ""
                };
                format!(
                    ".{}..{}{}{}.... {p}{slash}",
                    kind.letter(),
                    if mtime.is_some() { 't' } else { '.' },
                    if mode.is_some() { 'p' } else { '.' },
                    if owner.is_some() { 'o' } else { '.' },
                )
            }
        }
    }
}

/// Paths printed as rsync does: bytes that are not printable are `\#ooo`
/// (see `escape`).
pub fn escape(p: &Path) -> String {
    if p.as_os_str().is_empty() {
        return ".".into();
    }
    crate::escape::bytes(p.as_os_str().as_bytes())
}

#[derive(Debug, Clone, Copy)]
pub struct Options {
    pub mode: Mode,
    pub compare: Compare,
    pub delete: bool,
    pub preserve_owner: bool,
    /// the target keeps (and reports) nanosecond mtimes
    pub mtime_nanos: bool,
    /// the target can set a symlink's own mtime
    pub symlink_times: bool,
}

/// What one step of a plan does (see [`Op`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    Delete,
    Mkdir,
    Copy,
    Symlink,
    SetAttrs,
}

// `Op::flags`
const COUNTED: u8 = 1;
const SIZE_DIFFERS: u8 = 2;
const TIME_DIFFERS: u8 = 4;
const NEW: u8 = 8;
const SET_MODE: u8 = 16;
const SET_MTIME: u8 = 32;
const SET_OWNER: u8 = 64;

/// One step of a plan in 8 bytes: the entry it is about is an index into
/// the source scan (or, for a delete, into the target listing), whose
/// path and attributes make the [`Action`] when it is needed. A million
/// copies take 8 MB, not the ~110 MB of a million `Action`s with their
/// paths.
#[derive(Debug, Clone, Copy)]
struct Op {
    idx: u32,
    code: Code,
    why: Why,
    flags: u8,
}

/// The actions that bring the target to the source's state, in order:
/// deletes (deepest first), new directories, copies, symlinks, attribute
/// changes, directory attributes (deepest first). Borrows the scan and the
/// listing it was made from.
#[derive(Debug)]
pub struct Plan<'a> {
    src: &'a Sorted,
    /// the entries to delete (path and kind), in the order their ops refer
    /// to them
    gone: Sorted,
    ops: Vec<Op>,
    /// paths the plan could not handle (reported, the rest proceeds)
    pub errors: Vec<PathError>,
    /// How many entries the target had (as listed or in its manifest).
    pub target_entries: u64,
}

impl Plan<'_> {
    /// Deletions that count toward `max_delete`.
    pub fn counted_deletes(&self) -> u64 {
        self.ops
            .iter()
            .filter(|o| o.code == Code::Delete && o.flags & COUNTED != 0)
            .count() as u64
    }
    pub fn is_noop(&self) -> bool {
        self.ops.is_empty()
    }
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
    /// Whether actions `i` and `j` are of the same kind (batched together).
    pub fn same_kind(&self, i: usize, j: usize) -> bool {
        self.ops[i].code == self.ops[j].code
    }
    pub fn is_copy(&self, i: usize) -> bool {
        self.ops[i].code == Code::Copy
    }
    /// Files to copy and their bytes.
    pub fn copy_totals(&self) -> (u64, u64) {
        self.ops
            .iter()
            .filter(|o| o.code == Code::Copy)
            .fold((0, 0), |(f, b), o| {
                (f + 1, b + self.src.at(o.idx as usize).size)
            })
    }
    /// Action number `i`, made from its entry.
    pub fn action(&self, i: usize) -> Action {
        let op = self.ops[i];
        let k = op.idx as usize;
        let flag = |f: u8| op.flags & f != 0;
        if op.code == Code::Delete {
            let te = self.gone.at(k);
            return Action::Delete {
                path: self.gone.path_at(k).to_path_buf(),
                kind: te.kind,
                counted: flag(COUNTED),
            };
        }
        let se = self.src.at(k);
        let path = self.src.path_at(k).to_path_buf();
        let mtime = (se.mtime, se.mtime_ns);
        match op.code {
            Code::Mkdir => Action::Mkdir { path },
            Code::Copy => Action::Copy {
                path,
                why: op.why,
                size: se.size,
                size_differs: flag(SIZE_DIFFERS),
                time_differs: flag(TIME_DIFFERS),
            },
            Code::Symlink => Action::Symlink {
                path,
                target: se.link.as_deref().cloned().unwrap_or_default(),
                why: op.why,
                mtime: flag(SET_MTIME).then_some(mtime),
            },
            _ => Action::SetAttrs {
                path,
                kind: se.kind,
                mode: flag(SET_MODE).then_some(se.mode),
                mtime: flag(SET_MTIME).then_some(mtime),
                owner: flag(SET_OWNER).then_some((se.uid, se.gid)),
                new: flag(NEW),
            },
        }
    }
    /// All actions, in order (each made when reached).
    pub fn actions(&self) -> impl Iterator<Item = Action> + '_ {
        (0..self.ops.len()).map(|i| self.action(i))
    }
}

/// Diff the source scan against the target listing (`None`: the target root
/// does not exist yet). `same_content` is asked only with `compare: checksum`.
pub fn diff<'a>(
    src: &'a Scan,
    dst: Option<&Tree>,
    filter: &Filter,
    opts: Options,
    same_content: &mut dyn FnMut(&Path) -> std::io::Result<bool>,
) -> Plan<'a> {
    let mut it = dst
        .into_iter()
        .flat_map(|t| t.iter())
        .map(|(p, e)| (p.to_path_buf(), e.clone()));
    diff_stream(src, &mut it, filter, opts, same_content)
}

/// What the plan of one source entry adds to.
#[derive(Default)]
struct Acc {
    mkdirs: Vec<Op>,
    copies: Vec<Op>,
    links: Vec<Op>,
    attrs: Vec<Op>,
    /// directories whose listing changes (their mtime must be set again)
    touched: BTreeSet<PathBuf>,
    /// the directory touched last (entries come in path order: most
    /// touches repeat it, and are not looked up in the set again)
    last_touched: Option<PathBuf>,
    errors: Vec<PathError>,
}

impl Acc {
    /// The directory holding `path` changes.
    fn touch(&mut self, path: &Path) {
        let p = path.parent().unwrap_or(Path::new(""));
        if self.last_touched.as_deref().map(Path::as_os_str) == Some(p.as_os_str()) {
            return;
        }
        self.touched.insert(p.to_path_buf());
        self.last_touched = Some(p.to_path_buf());
    }
}

fn op(idx: usize, code: Code, why: Why, flags: u8) -> Op {
    Op {
        idx: idx as u32,
        code,
        why,
        flags,
    }
}

#[cfg(test)]
fn parent(p: &Path) -> PathBuf {
    p.parent().map(Path::to_path_buf).unwrap_or_default()
}

/// Source entry `k` against the target's entry at its path: `te` when it is
/// of the same kind, `in_dst` whether there is one at all.
#[allow(clippy::too_many_arguments)]
fn plan_entry(
    acc: &mut Acc,
    k: usize,
    path: &Path,
    se: &Entry,
    te: Option<&Entry>,
    in_dst: bool,
    opts: Options,
    same_content: &mut dyn FnMut(&Path) -> std::io::Result<bool>,
) {
    let is_root = path.as_os_str().is_empty();
    match se.kind {
        EntryKind::Dir => {
            // directory attributes are set at the end, deepest first
            if te.is_none() && !is_root {
                acc.mkdirs.push(op(k, Code::Mkdir, Why::New, 0));
                acc.touch(path);
            }
        }
        EntryKind::File => plan_file(acc, k, path, se, te, in_dst, opts, same_content),
        EntryKind::Symlink => plan_symlink(acc, k, path, se, te, in_dst, opts),
        EntryKind::Special => {}
    }
}

/// A source file: copied when new, replaced, changed (or in `full` mode),
/// else its attributes set if they differ.
#[allow(clippy::too_many_arguments)]
fn plan_file(
    acc: &mut Acc,
    k: usize,
    path: &Path,
    se: &Entry,
    te: Option<&Entry>,
    in_dst: bool,
    opts: Options,
    same_content: &mut dyn FnMut(&Path) -> std::io::Result<bool>,
) {
    let why = match te {
        None if in_dst => Some(Why::Replace),
        None => Some(Why::New),
        Some(_) if opts.mode == Mode::Full => Some(Why::Full),
        Some(te) => {
            let differ = te.size != se.size
                || (opts.compare == Compare::SizeMtime && !te.mtime_eq(se, opts.mtime_nanos));
            if differ {
                Some(Why::Changed)
            } else if opts.compare == Compare::Checksum {
                match same_content(path) {
                    Ok(true) => None,
                    Ok(false) => Some(Why::Changed),
                    Err(e) => {
                        acc.errors.push(PathError {
                            path: display_path(path),
                            message: format!("cannot compare content: {e}"),
                        });
                        return;
                    }
                }
            } else {
                None
            }
        }
    };
    match why {
        Some(why) => {
            let mut flags = 0;
            if te.is_some_and(|t| t.size != se.size) {
                flags |= SIZE_DIFFERS;
            }
            if te.is_some_and(|t| !t.mtime_eq(se, opts.mtime_nanos)) {
                flags |= TIME_DIFFERS;
            }
            acc.copies.push(op(k, Code::Copy, why, flags));
            acc.touch(path);
        }
        None => {
            if let Some(flags) = te.and_then(|te| attr_flags(se, te, opts, false)) {
                acc.attrs.push(op(k, Code::SetAttrs, Why::Changed, flags));
            }
        }
    }
}

/// A source symlink: (re)made when new or pointing elsewhere, else its
/// owner and own mtime set if they differ.
fn plan_symlink(
    acc: &mut Acc,
    k: usize,
    path: &Path,
    se: &Entry,
    te: Option<&Entry>,
    in_dst: bool,
    opts: Options,
) {
    let same = te.is_some_and(|te| te.link == se.link);
    let link_time = if opts.symlink_times { SET_MTIME } else { 0 };
    if !same {
        let why = match (in_dst, te.is_some()) {
            (true, true) => Why::Changed,
            (true, false) => Why::Replace,
            _ => Why::New,
        };
        acc.links.push(op(k, Code::Symlink, why, link_time));
        acc.touch(path);
    } else if let Some(te) = te {
        let mut flags = 0;
        if opts.preserve_owner && (te.uid, te.gid) != (se.uid, se.gid) {
            flags |= SET_OWNER;
        }
        if !te.mtime_eq(se, opts.mtime_nanos) {
            flags |= link_time;
        }
        if flags != 0 {
            acc.attrs.push(op(k, Code::SetAttrs, Why::Changed, flags));
        }
    }
}

/// The attributes of a source directory, deepest first, after everything
/// inside is done: `dirs` holds each source directory (in path order) with
/// the target's directory at its path, if any.
fn dir_attrs(dirs: &[(u32, Option<Entry>)], src: &Scan, acc: &Acc, opts: Options) -> Vec<Op> {
    let mut out = Vec::new();
    for (k, te) in dirs.iter().rev() {
        let (k, se) = (*k as usize, src.entries.at(*k as usize));
        match te {
            None => {
                let owner = if opts.preserve_owner { SET_OWNER } else { 0 };
                out.push(op(
                    k,
                    Code::SetAttrs,
                    Why::New,
                    NEW | SET_MODE | SET_MTIME | owner,
                ));
            }
            Some(te) => {
                let force = acc.touched.contains(src.entries.path_at(k));
                if let Some(flags) = attr_flags(se, te, opts, force) {
                    out.push(op(k, Code::SetAttrs, Why::Changed, flags));
                }
            }
        }
    }
    out
}

/// Diff the source scan against the target's entries given in path order
/// (a listing, or a manifest read as it goes): one pass over both, so a
/// listing need not be held in memory. Deletes are deepest first (the
/// reverse of the order they are found in).
pub fn diff_stream<'a>(
    src: &'a Scan,
    dst: &mut dyn Iterator<Item = (PathBuf, Entry)>,
    filter: &Filter,
    opts: Options,
    same_content: &mut dyn FnMut(&Path) -> std::io::Result<bool>,
) -> Plan<'a> {
    assert!(
        src.entries.len() < u32::MAX as usize,
        "more than 4 billion entries"
    );
    let mut m = Merge {
        src,
        filter,
        opts,
        acc: Acc::default(),
        gone: Sorted::default(),
        deletes: Vec::new(),
        blocked: Vec::new(),
        dirs: Vec::new(),
        last: None,
        disordered: false,
    };
    let mut target_entries = 0u64;
    let mut dst = dst.inspect(|_| target_entries += 1).peekable();
    let n = src.entries.len();
    let mut si = 0;
    loop {
        let ord = match (si < n, dst.peek()) {
            (false, None) => break,
            (true, None) => std::cmp::Ordering::Less,
            (false, Some(_)) => std::cmp::Ordering::Greater,
            (true, Some((d, _))) => src.entries.path_at(si).cmp(d.as_path()),
        };
        if ord == std::cmp::Ordering::Greater {
            let (path, te) = dst.next().unwrap();
            m.target_only(path, te);
            continue;
        }
        let (k, path, se) = (si, src.entries.path_at(si), src.entries.at(si));
        si += 1;
        let te = if ord == std::cmp::Ordering::Equal {
            dst.next().map(|(p, te)| {
                m.in_order(p);
                te
            })
        } else {
            None
        };
        if m.is_blocked(path) {
            continue;
        }
        if let Some(t) = &te
            && m.type_changed(path, se, t)
        {
            let has_children = t.kind == EntryKind::Dir
                && dst
                    .peek()
                    .is_some_and(|(p, _)| p.starts_with(path) && p.as_path() != path);
            if !m.replace(path, t, has_children) {
                continue;
            }
        }
        let same = te.as_ref().filter(|t| t.kind == se.kind);
        if se.kind == EntryKind::Dir {
            m.dirs.push((k as u32, same.cloned()));
        }
        let present = te.is_some();
        plan_entry(&mut m.acc, k, path, se, same, present, opts, same_content);
    }
    drop(dst);
    let mut plan = m.finish();
    plan.target_entries = target_entries;
    plan
}

/// The state of [`diff_stream`]'s one pass.
struct Merge<'a, 'f> {
    src: &'a Scan,
    filter: &'f Filter,
    opts: Options,
    acc: Acc,
    /// the entries to delete, in the order found; their ops
    gone: Sorted,
    deletes: Vec<Op>,
    /// paths whose old entry could not be removed: nothing is done there
    blocked: Vec<PathBuf>,
    dirs: Vec<(u32, Option<Entry>)>,
    /// the last target entry taken, to check the order (an entry out of
    /// order would look absent from the source)
    last: Option<PathBuf>,
    disordered: bool,
}

impl<'a> Merge<'a, '_> {
    fn is_blocked(&self, p: &Path) -> bool {
        self.blocked.iter().any(|b| p.starts_with(b))
    }

    fn in_order(&mut self, p: PathBuf) {
        if self.last.as_ref().is_some_and(|l| *l >= p) {
            self.disordered = true;
        }
        self.last = Some(p);
    }

    /// A target entry the source does not have: deleted with `delete`
    /// (a stale temporary file always), unless excluded or under an
    /// unknown source path.
    fn target_only(&mut self, path: PathBuf, te: Entry) {
        if path.as_os_str().is_empty() || self.is_blocked(&path) {
            self.in_order(path);
            return;
        }
        let counted = if is_temp_name(&path) {
            false
        } else if self
            .filter
            .excluded_with_parents(&path, te.kind == EntryKind::Dir)
            || self.src.is_unknown(&path)
            || !self.opts.delete
        {
            self.in_order(path);
            return;
        } else {
            true
        };
        self.acc.touch(&path);
        let why = if counted { Why::New } else { Why::Replace };
        let flags = if counted { COUNTED } else { 0 };
        self.deletes
            .push(op(self.gone.len(), Code::Delete, why, flags));
        self.gone.push(&path, Entry::blank(te.kind));
        self.in_order(path);
    }

    /// The target has another type of entry at `path` (and may lose it).
    fn type_changed(&self, path: &Path, se: &Entry, t: &Entry) -> bool {
        t.kind != se.kind
            && !path.as_os_str().is_empty()
            && !self
                .filter
                .excluded_with_parents(path, t.kind == EntryKind::Dir)
            && !self.src.is_unknown(path)
    }

    /// Type change: the old entry goes, whatever `delete` says; a non-empty
    /// directory only when `delete` allows its contents to go. False when
    /// it cannot go (the path is then blocked).
    fn replace(&mut self, path: &Path, t: &Entry, has_children: bool) -> bool {
        if has_children && !self.opts.delete {
            self.acc.errors.push(PathError {
                path: display_path(path),
                message: "a non-empty directory on the target stands where the source has another type; enable `delete` to replace it".into(),
            });
            self.blocked.push(path.to_path_buf());
            return false;
        }
        self.acc.touch(path);
        self.deletes
            .push(op(self.gone.len(), Code::Delete, Why::Replace, 0));
        self.gone.push(path, Entry::blank(t.kind));
        true
    }

    /// The plan: deletes (deepest first), then directories, files,
    /// symlinks, attributes, directory attributes.
    fn finish(self) -> Plan<'a> {
        let Merge {
            src,
            opts,
            acc,
            gone,
            mut deletes,
            dirs,
            disordered,
            ..
        } = self;
        let dir_ops = dir_attrs(&dirs, src, &acc, opts);
        deletes.reverse();
        let mut acc = acc;
        if disordered {
            // cannot happen with the listings syncjob makes; if it does, the
            // plan deletes nothing and the run fails (and lists next time)
            deletes.clear();
            acc.errors.push(PathError {
                path: String::new(),
                message: "the target's entries came out of order: nothing was deleted".into(),
            });
        }
        let Acc {
            mkdirs,
            copies,
            links,
            attrs,
            errors,
            ..
        } = acc;
        // directories first, then files, then symlinks (each in path order, so
        // parents before children): long runs of copies can be spread over
        // several connections
        let mut ops = Vec::with_capacity(
            deletes.len() + mkdirs.len() + copies.len() + links.len() + attrs.len() + dir_ops.len(),
        );
        for part in [deletes, mkdirs, copies, links, attrs, dir_ops] {
            ops.extend(part);
        }
        Plan {
            src: &src.entries,
            gone,
            ops,
            errors,
            target_entries: 0,
        }
    }
}

/// Which attributes of an existing entry to set (`None`: none).
fn attr_flags(se: &Entry, te: &Entry, opts: Options, force_time: bool) -> Option<u8> {
    let mut flags = 0;
    if se.mode != te.mode {
        flags |= SET_MODE;
    }
    if force_time || !se.mtime_eq(te, opts.mtime_nanos) {
        flags |= SET_MTIME;
    }
    if opts.preserve_owner && (se.uid, se.gid) != (te.uid, te.gid) {
        flags |= SET_OWNER;
    }
    (flags != 0).then_some(flags)
}

#[cfg(test)]
mod temp_name_tests {
    use super::*;

    #[test]
    fn only_the_exact_pattern_is_a_temporary_name() {
        let t = |s: &str| is_temp_name(Path::new(s));
        assert!(t(".syncjob-tmp.12.0.index.php"));
        assert!(t("d/.syncjob-tmp.1.22.x"));
        assert!(!t(".syncjob-tmp.fake"));
        assert!(!t(".syncjob-tmp.12.fake"));
        assert!(!t(".syncjob-tmp.12.0."));
        assert!(!t(".syncjob-tmp.x.0.y"));
        assert!(!t("syncjob-tmp.1.2.y"));
        let made = temp_name(Path::new("d/a.txt"));
        assert!(is_temp_name(&made), "{made:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The diff as it was before `diff_stream`, in three passes with random
    /// access to the listing: the reference the merge is checked against.
    fn diff_passes<'a>(
        src: &'a Scan,
        dst: Option<&'a Tree>,
        filter: &Filter,
        opts: Options,
        same_content: &mut dyn FnMut(&Path) -> std::io::Result<bool>,
    ) -> Plan<'a> {
        let empty = Tree::default();
        let lst = dst.unwrap_or(&empty);
        assert!(
            src.entries.len() < u32::MAX as usize && lst.len() < u32::MAX as usize,
            "more than 4 billion entries"
        );
        let mut errors = Vec::new();
        let mut deletes: Vec<Op> = Vec::new();
        let mut mkdirs: Vec<Op> = Vec::new();
        let mut copies: Vec<Op> = Vec::new();
        let mut links: Vec<Op> = Vec::new();
        let mut attrs: Vec<Op> = Vec::new();
        // directories whose listing changes (their mtime must be set again)
        let mut touched: BTreeSet<PathBuf> = BTreeSet::new();
        // paths whose old entry could not be removed: nothing is created there
        let mut blocked: Vec<PathBuf> = Vec::new();

        // 1. stale temporary files, and entries to delete (deepest first)
        for (k, (path, te)) in lst.iter().enumerate().rev() {
            if path.as_os_str().is_empty() {
                continue;
            }
            if is_temp_name(path) {
                deletes.push(op(k, Code::Delete, Why::Replace, 0));
                touched.insert(parent(path));
                continue;
            }
            if filter.excluded_with_parents(path, te.kind == EntryKind::Dir) || src.is_unknown(path)
            {
                continue;
            }
            match src.entries.get(path) {
                Some(se) if se.kind == te.kind => {}
                Some(_) => {
                    // type change: the old entry goes, whatever `delete` says;
                    // a non-empty directory only when `delete` allows its contents to go
                    let has_children = te.kind == EntryKind::Dir && lst.has_children(path);
                    if has_children && !opts.delete {
                        errors.push(PathError {
                            path: display_path(path),
                            message: "a non-empty directory on the target stands where the source has another type; enable `delete` to replace it".into(),
                        });
                        blocked.push(path.to_path_buf());
                        continue;
                    }
                    deletes.push(op(k, Code::Delete, Why::Replace, 0));
                    touched.insert(parent(path));
                }
                None => {
                    if opts.delete {
                        deletes.push(op(k, Code::Delete, Why::New, COUNTED));
                        touched.insert(parent(path));
                    }
                }
            }
        }
        // a blocked directory keeps its contents too
        if !blocked.is_empty() {
            deletes.retain(|o| {
                let p = lst.path_at(o.idx as usize);
                !blocked.iter().any(|b| p.starts_with(b))
            });
        }

        // 2. creations and updates, parents first
        for (k, (path, se)) in src.entries.iter().enumerate() {
            if blocked.iter().any(|b| path.starts_with(b)) {
                continue;
            }
            let te = lst.get(path).filter(|te| te.kind == se.kind);
            let is_root = path.as_os_str().is_empty();
            match se.kind {
                EntryKind::Dir => {
                    let new = te.is_none();
                    // directory attributes are set at the end, deepest first
                    if new && !is_root {
                        mkdirs.push(op(k, Code::Mkdir, Why::New, 0));
                        touched.insert(parent(path));
                    }
                }
                EntryKind::File => {
                    let why = match te {
                        None if lst.contains_key(path) => Some(Why::Replace),
                        None => Some(Why::New),
                        Some(_) if opts.mode == Mode::Full => Some(Why::Full),
                        Some(te) => {
                            let differ = te.size != se.size
                                || (opts.compare == Compare::SizeMtime
                                    && !te.mtime_eq(se, opts.mtime_nanos));
                            if differ {
                                Some(Why::Changed)
                            } else if opts.compare == Compare::Checksum {
                                match same_content(path) {
                                    Ok(true) => None,
                                    Ok(false) => Some(Why::Changed),
                                    Err(e) => {
                                        errors.push(PathError {
                                            path: display_path(path),
                                            message: format!("cannot compare content: {e}"),
                                        });
                                        continue;
                                    }
                                }
                            } else {
                                None
                            }
                        }
                    };
                    match why {
                        Some(why) => {
                            let mut flags = 0;
                            if te.is_some_and(|t| t.size != se.size) {
                                flags |= SIZE_DIFFERS;
                            }
                            if te.is_some_and(|t| !t.mtime_eq(se, opts.mtime_nanos)) {
                                flags |= TIME_DIFFERS;
                            }
                            copies.push(op(k, Code::Copy, why, flags));
                            touched.insert(parent(path));
                        }
                        None => {
                            let te = te.unwrap();
                            if let Some(flags) = attr_flags(se, te, opts, false) {
                                attrs.push(op(k, Code::SetAttrs, Why::Changed, flags));
                            }
                        }
                    }
                }
                EntryKind::Symlink => {
                    let same = te.is_some_and(|te| te.link == se.link);
                    let link_time = if opts.symlink_times { SET_MTIME } else { 0 };
                    if !same {
                        let why = if lst.contains_key(path) {
                            if te.is_some() {
                                Why::Changed
                            } else {
                                Why::Replace
                            }
                        } else {
                            Why::New
                        };
                        links.push(op(k, Code::Symlink, why, link_time));
                        touched.insert(parent(path));
                    } else if let Some(te) = te {
                        let mut flags = 0;
                        if opts.preserve_owner && (te.uid, te.gid) != (se.uid, se.gid) {
                            flags |= SET_OWNER;
                        }
                        if !te.mtime_eq(se, opts.mtime_nanos) {
                            flags |= link_time;
                        }
                        if flags != 0 {
                            attrs.push(op(k, Code::SetAttrs, Why::Changed, flags));
                        }
                    }
                }
                EntryKind::Special => {}
            }
        }

        // 3. directory attributes, deepest first, after everything inside is done
        let mut dir_attrs = Vec::new();
        for (k, (path, se)) in src.entries.iter().enumerate().rev() {
            if se.kind != EntryKind::Dir || blocked.iter().any(|b| path.starts_with(b)) {
                continue;
            }
            let te = lst.get(path).filter(|te| te.kind == EntryKind::Dir);
            match te {
                None => {
                    let owner = if opts.preserve_owner { SET_OWNER } else { 0 };
                    dir_attrs.push(op(
                        k,
                        Code::SetAttrs,
                        Why::New,
                        NEW | SET_MODE | SET_MTIME | owner,
                    ));
                }
                Some(te) => {
                    let force = touched.contains(path);
                    if let Some(flags) = attr_flags(se, te, opts, force) {
                        dir_attrs.push(op(k, Code::SetAttrs, Why::Changed, flags));
                    }
                }
            }
        }

        // directories first, then files, then symlinks (each in path order, so
        // parents before children): long runs of copies can be spread over
        // several connections
        let mut ops = Vec::with_capacity(
            deletes.len()
                + mkdirs.len()
                + copies.len()
                + links.len()
                + attrs.len()
                + dir_attrs.len(),
        );
        for part in [deletes, mkdirs, copies, links, attrs, dir_attrs] {
            ops.extend(part);
        }
        // deletes point into `gone`, as diff_stream's do
        let mut gone = Sorted::default();
        for o in ops.iter_mut().filter(|o| o.code == Code::Delete) {
            let k = o.idx as usize;
            o.idx = gone.len() as u32;
            gone.push(lst.path_at(k), Entry::blank(lst.at(k).kind));
        }
        Plan {
            src: &src.entries,
            gone,
            ops,
            errors,
            target_entries: lst.len() as u64,
        }
    }

    fn e(kind: EntryKind, size: u64, mtime: i64) -> Entry {
        Entry {
            kind,
            size,
            mtime,
            mtime_ns: 0,
            mode: if kind == EntryKind::Dir { 0o755 } else { 0o644 },
            uid: 0,
            gid: 0,
            link: None,
        }
    }
    fn tree(items: &[(&str, Entry)]) -> Tree {
        items
            .iter()
            .map(|(p, e)| (PathBuf::from(p), e.clone()))
            .collect()
    }
    fn scan(items: &[(&str, Entry)]) -> Scan {
        Scan {
            entries: tree(items),
            ..Default::default()
        }
    }
    fn opts(delete: bool) -> Options {
        Options {
            mode: Mode::Incremental,
            compare: Compare::SizeMtime,
            delete,
            preserve_owner: false,
            mtime_nanos: true,
            symlink_times: false,
        }
    }
    fn lines(p: &Plan) -> Vec<String> {
        p.actions()
            .map(|a| a.itemize())
            .filter(|s| !s.is_empty())
            .collect()
    }
    use EntryKind::*;

    #[test]
    fn new_target_gets_everything_parents_first() {
        let s = scan(&[
            ("", e(Dir, 0, 1)),
            ("a", e(Dir, 0, 1)),
            ("a/x", e(File, 3, 1)),
            ("b", e(File, 1, 1)),
        ]);
        let p = diff(&s, None, &Filter::default(), opts(true), &mut |_| Ok(true));
        assert_eq!(
            lines(&p),
            ["cd+++++++++ a/", ">f+++++++++ a/x", ">f+++++++++ b"]
        );
        // directory attributes come last, deepest first, root included
        let dirs: Vec<_> = p
            .actions()
            .filter_map(|a| match a {
                Action::SetAttrs {
                    path, new: true, ..
                } => Some(display_path(&path)),
                _ => None,
            })
            .collect();
        assert_eq!(dirs, ["a", "."]);
    }

    #[test]
    fn incremental_compares_size_and_mtime() {
        let s = scan(&[
            ("", e(Dir, 0, 1)),
            ("same", e(File, 3, 5)),
            ("size", e(File, 4, 5)),
            ("time", e(File, 3, 6)),
        ]);
        let t = tree(&[
            ("", e(Dir, 0, 1)),
            ("same", e(File, 3, 5)),
            ("size", e(File, 3, 5)),
            ("time", e(File, 3, 5)),
        ]);
        let p = diff(&s, Some(&t), &Filter::default(), opts(false), &mut |_| {
            Ok(true)
        });
        assert_eq!(
            lines(&p),
            [">f.s....... size", ">f..t...... time", ".d..t...... ./"]
        );
        let mut full = opts(false);
        full.mode = Mode::Full;
        let p = diff(&s, Some(&t), &Filter::default(), full, &mut |_| Ok(true));
        assert_eq!(
            p.actions()
                .filter(|a| matches!(a, Action::Copy { .. }))
                .count(),
            3
        );
    }

    #[test]
    fn checksum_asks_content_when_size_equal() {
        let s = scan(&[
            ("", e(Dir, 0, 1)),
            ("a", e(File, 3, 5)),
            ("b", e(File, 3, 5)),
        ]);
        let t = tree(&[
            ("", e(Dir, 0, 1)),
            ("a", e(File, 3, 9)),
            ("b", e(File, 3, 5)),
        ]);
        let mut o = opts(false);
        o.compare = Compare::Checksum;
        let mut asked = vec![];
        let p = diff(&s, Some(&t), &Filter::default(), o, &mut |p| {
            asked.push(p.to_path_buf());
            Ok(p != Path::new("b"))
        });
        assert_eq!(asked.len(), 2);
        // a: same content, only its time is set; b: content differs
        assert_eq!(
            lines(&p),
            [">f......... b", ".f..t...... a", ".d..t...... ./"]
        );
    }

    #[test]
    fn delete_only_with_flag_and_never_excluded_or_unknown() {
        let mut s = scan(&[("", e(Dir, 0, 1)), ("keep", e(File, 1, 1))]);
        s.unknown.insert(PathBuf::from("vanished"));
        let t = tree(&[
            ("", e(Dir, 0, 1)),
            ("keep", e(File, 1, 1)),
            ("old", e(Dir, 0, 1)),
            ("old/f", e(File, 1, 1)),
            ("x.gz", e(File, 1, 1)),
            ("vanished", e(File, 1, 1)),
            (".syncjob-tmp.1.2.keep", e(File, 1, 1)),
        ]);
        let f = Filter::new(&["*.gz"]).unwrap();
        let p = diff(&s, Some(&t), &f, opts(false), &mut |_| Ok(true));
        assert_eq!(
            lines(&p),
            ["*deleting   .syncjob-tmp.1.2.keep", ".d..t...... ./"]
        );
        let p = diff(&s, Some(&t), &f, opts(true), &mut |_| Ok(true));
        assert_eq!(
            lines(&p),
            [
                "*deleting   old/f",
                "*deleting   old/",
                "*deleting   .syncjob-tmp.1.2.keep",
                ".d..t...... ./"
            ]
        );
    }

    #[test]
    fn sorted_entries_keep_path_order_and_find_by_path() {
        let names = ["a-b", "a/z", "", "a", "a/b/c", "b", "a/b"];
        let v = names
            .iter()
            .map(|n| (PathBuf::from(n), e(File, n.len() as u64, 1)))
            .collect();
        let s: Sorted = Sorted::from_iter::<Vec<_>>(v);
        let order: Vec<&Path> = s.iter().map(|(p, _)| p).collect();
        assert_eq!(
            order,
            ["", "a", "a/b", "a/b/c", "a/z", "a-b", "b"].map(Path::new),
            "a directory before its contents, like Path's order"
        );
        assert_eq!(s.get(Path::new("a/b/c")).unwrap().size, 5);
        assert_eq!(s.get(Path::new("a-b")).unwrap().size, 3);
        assert!(s.get(Path::new("a/c")).is_none());
        assert_eq!(s.iter().next_back().unwrap().0, Path::new("b"));
        assert_eq!(s.len(), 7);
        assert!(s.contains_key(Path::new("a/z")) && !s.contains_key(Path::new("z")));
        assert!(s.has_children(Path::new("a")));
        assert!(s.has_children(Path::new("a/b")));
        assert!(!s.has_children(Path::new("a/b/c")));
        assert!(
            !s.has_children(Path::new("a-b")),
            "a-b is a sibling, not a child"
        );
        assert!(!s.has_children(Path::new("b")));
        assert!(s.has_children(Path::new("")));
    }

    /// The one-pass merge plans exactly what the three-pass diff did, on
    /// random trees (types changing, excluded and unknown paths, stale
    /// temporaries, every option).
    #[test]
    fn the_merge_plans_what_the_three_passes_did() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let names = ["a", "b", "a-b", "c", ".syncjob-tmp.1.x"];
        for round in 0..3000 {
            let make = |temp_ok: bool, rnd: &mut dyn FnMut(u64) -> u64| {
                let mut t: Vec<(PathBuf, Entry)> = vec![(PathBuf::new(), e(Dir, 0, 1))];
                let mut dirs = vec![PathBuf::new()];
                for _ in 0..rnd(14) {
                    let parent = dirs[rnd(dirs.len() as u64) as usize].clone();
                    let name = names[rnd(if temp_ok { 5 } else { 4 }) as usize];
                    let p = parent.join(name);
                    if t.iter().any(|(q, _)| *q == p) || p.components().count() > 3 {
                        continue;
                    }
                    let kind = [File, File, Dir, Symlink][rnd(4) as usize];
                    let mut en = e(kind, rnd(3), 1 + rnd(3) as i64);
                    en.mtime_ns = rnd(2) as u32;
                    en.mode = [0o644, 0o600, 0o755][rnd(3) as usize];
                    en.uid = rnd(2) as u32;
                    if kind == Symlink {
                        en.link = Some(Box::new(PathBuf::from(["x", "y"][rnd(2) as usize])));
                    }
                    if kind == Dir {
                        dirs.push(p.clone());
                    }
                    t.push((p, en));
                }
                t.into_iter().collect::<Sorted>()
            };
            let src_tree = make(false, &mut rnd);
            let dst_tree = make(true, &mut rnd);
            let mut src = Scan {
                entries: src_tree,
                ..Default::default()
            };
            if rnd(4) == 0 {
                let k = rnd(src.entries.len() as u64) as usize;
                src.unknown.insert(src.entries.path_at(k).to_path_buf());
            }
            let filter = match rnd(4) {
                0 => Filter::new(&["b/"]).unwrap(),
                1 => Filter::new(&["/a-b"]).unwrap(),
                _ => Filter::default(),
            };
            let o = Options {
                mode: if rnd(5) == 0 {
                    Mode::Full
                } else {
                    Mode::Incremental
                },
                compare: if rnd(4) == 0 {
                    Compare::Checksum
                } else {
                    Compare::SizeMtime
                },
                delete: rnd(2) == 0,
                preserve_owner: rnd(2) == 0,
                mtime_nanos: rnd(2) == 0,
                symlink_times: rnd(2) == 0,
            };
            let listed = rnd(6) != 0;
            let dst = listed.then_some(&dst_tree);
            let same = |p: &Path| Ok(p.as_os_str().len().is_multiple_of(2));
            let a = diff(&src, dst, &filter, o, &mut |p| same(p));
            let b = diff_passes(&src, dst, &filter, o, &mut |p| same(p));
            let (aa, ba): (Vec<Action>, Vec<Action>) =
                (a.actions().collect(), b.actions().collect());
            assert_eq!(
                aa, ba,
                "round {round}\nsrc {:?}\ndst {:?}\nunknown {:?} opts {o:?}",
                src.entries, dst, src.unknown
            );
            // (the same errors; the merge reports them in path order)
            let sorted = |v: &[PathError]| {
                let mut v: Vec<String> = v.iter().map(|e| format!("{e:?}")).collect();
                v.sort();
                v
            };
            assert_eq!(sorted(&a.errors), sorted(&b.errors), "round {round}");
        }
    }

    #[test]
    fn a_listing_out_of_order_deletes_nothing() {
        let s = scan(&[("", e(Dir, 0, 1)), ("b", e(File, 1, 1))]);
        let mut items = vec![
            (PathBuf::new(), e(Dir, 0, 1)),
            (PathBuf::from("z"), e(File, 1, 1)),
            (PathBuf::from("a"), e(File, 1, 1)),
        ]
        .into_iter();
        let p = diff_stream(&s, &mut items, &Filter::default(), opts(true), &mut |_| {
            Ok(true)
        });
        assert!(
            p.actions().all(|a| !matches!(a, Action::Delete { .. })),
            "{:?}",
            p.actions().collect::<Vec<_>>()
        );
        assert!(p.errors[0].message.contains("out of order"));
    }

    #[test]
    fn entries_stay_small() {
        // the memory budget of 1M-entry trees rests on these
        assert!(std::mem::size_of::<Entry>() <= 48);
        assert!(std::mem::size_of::<(u64, Entry)>() <= 56);
    }

    #[test]
    fn a_listing_in_any_order_is_sorted_and_keeps_the_last_of_a_path() {
        let mut b = TreeBuilder::default();
        b.push(Path::new(""), e(Dir, 0, 1));
        b.push(Path::new("z"), e(File, 1, 1));
        b.push(Path::new("d"), e(Dir, 0, 1));
        b.push(Path::new("d/x"), e(File, 2, 1));
        b.push(Path::new("z"), e(File, 3, 1));
        b.push(Path::new("a"), e(File, 4, 1));
        let t = b.finish();
        let order: Vec<(&Path, u64)> = t.iter().map(|(p, e)| (p, e.size)).collect();
        assert_eq!(
            order,
            [("", 0), ("a", 4), ("d", 0), ("d/x", 2), ("z", 3)].map(|(p, n)| (Path::new(p), n))
        );
    }

    #[test]
    fn type_changes_replace() {
        let mut link = e(Symlink, 0, 1);
        link.link = Some(Box::new(PathBuf::from("target")));
        let s = scan(&[
            ("", e(Dir, 0, 1)),
            ("d", e(File, 1, 1)),
            ("f", e(Dir, 0, 1)),
            ("l", e(File, 1, 1)),
            ("x", link.clone()),
        ]);
        let t = tree(&[
            ("", e(Dir, 0, 1)),
            ("d", e(Dir, 0, 1)),
            ("f", e(File, 1, 1)),
            ("l", link),
            ("x", e(File, 1, 1)),
        ]);
        let p = diff(&s, Some(&t), &Filter::default(), opts(false), &mut |_| {
            Ok(true)
        });
        assert_eq!(
            lines(&p),
            [
                "*deleting   x",
                "*deleting   l",
                "*deleting   f",
                "*deleting   d/",
                "cd+++++++++ f/",
                ">f+++++++++ d",
                ">f+++++++++ l",
                "cL+++++++++ x -> target",
                ".d..t...... ./"
            ]
        );
        assert!(
            p.actions()
                .all(|a| !matches!(a, Action::Delete { counted: true, .. }))
        );
    }

    #[test]
    fn non_empty_dir_replaced_only_with_delete() {
        let s = scan(&[("", e(Dir, 0, 1)), ("d", e(File, 1, 1))]);
        let t = tree(&[
            ("", e(Dir, 0, 1)),
            ("d", e(Dir, 0, 1)),
            ("d/in", e(File, 1, 1)),
        ]);
        let p = diff(&s, Some(&t), &Filter::default(), opts(false), &mut |_| {
            Ok(true)
        });
        assert_eq!(p.errors.len(), 1);
        assert!(
            lines(&p)
                .iter()
                .all(|l| !l.contains("d/in") && !l.starts_with(">f"))
        );
        let p = diff(&s, Some(&t), &Filter::default(), opts(true), &mut |_| {
            Ok(true)
        });
        assert_eq!(
            lines(&p),
            [
                "*deleting   d/in",
                "*deleting   d/",
                ">f+++++++++ d",
                ".d..t...... ./"
            ]
        );
    }

    #[test]
    fn mode_only_change_sets_attributes() {
        let mut m = e(File, 1, 1);
        m.mode = 0o600;
        let s = scan(&[("", e(Dir, 0, 1)), ("a", m)]);
        let t = tree(&[("", e(Dir, 0, 1)), ("a", e(File, 1, 1))]);
        let p = diff(&s, Some(&t), &Filter::default(), opts(false), &mut |_| {
            Ok(true)
        });
        assert_eq!(lines(&p), [".f...p..... a"]);
    }

    #[test]
    fn escape_control_bytes() {
        assert_eq!(escape(Path::new("a\nb")), "a\\#012b");
        assert_eq!(escape(Path::new("ünï code")), "ünï code");
    }
}
