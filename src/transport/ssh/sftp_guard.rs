//! Symlink guards for a target reached over SFTP. SFTP works by path and
//! has no `openat`: the server follows a symlinked parent directory and
//! SETSTAT follows a symlink at the final name. So:
//!
//! - before anything is written, made, removed or has its attributes set
//!   below a directory, every parent component of its path (below the
//!   target root, which the operator named) is checked with LSTAT to be a
//!   real directory; checked and self-made directories are remembered
//!   for the batch of operations at hand ([`Verified`]: a batch's parents
//!   are checked in one pipelined round trip; the next batch, e.g. the
//!   watcher's next one on its kept-open connection, checks again), and
//!   forgotten when we remove them;
//! - a symlink met where a directory is expected is the target's content:
//!   it is removed and an empty directory made in its place (never gone
//!   through); what was to be done below it fails this run with a clear
//!   reason (in that call; later calls work below the new directory), so
//!   the run is not `ok`, its manifest is not kept, and the
//!   next run lists the target afresh and sends that content again;
//! - attributes are set with `lsetstat@openssh.com` (which never follows
//!   a symlink); without it, or when the server's lsetstat cannot set a
//!   mode (e.g. no `/proc` in a chroot), the entry is LSTATed first and a
//!   symlink is refused, not followed.
//!
//! What remains: a swap between our LSTAT and the operation (a concurrent
//! attacker on the target host) cannot be excluded over SFTP; the remote
//! helper (`syncjob helper`, directory handles) closes that window.

use super::Ssh;
use super::sftp::{Attrs, FX_NO_SUCH_FILE, Reply, is_dir_mode, is_file_mode, is_link_mode};
use crate::plan::EntryKind;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Directories of the target (relative paths, bytes) known to be real
/// directories (checked, or made by us) since the current batch of
/// operations began: cleared when the next batch begins
/// ([`Verified::new_batch`]), so a connection kept open (the watcher's)
/// checks its parents again for each batch.
#[derive(Default)]
pub struct Verified {
    dirs: HashSet<Vec<u8>>,
}

impl Verified {
    /// A batch of operations begins: nothing is known any more.
    pub fn new_batch(&mut self) {
        self.dirs.clear();
    }

    /// `dir` is a real directory (checked, or made by us).
    pub fn add(&mut self, dir: &Path) {
        self.dirs.insert(dir.as_os_str().as_bytes().to_vec());
    }

    /// We removed `path`: forget it and everything below it.
    pub fn forget(&mut self, path: &Path) {
        let p = path.as_os_str().as_bytes();
        self.dirs
            .retain(|d| !(d == p || (d.starts_with(p) && d.get(p.len()) == Some(&b'/'))));
    }

    fn knows(&self, dir: &[u8]) -> bool {
        dir.is_empty() || self.dirs.contains(dir)
    }
}

/// What one check found: the parents that are real directories, and
/// those that are not, with why (what is below them fails in that call).
#[derive(Default)]
struct Checked {
    good: HashSet<Vec<u8>>,
    refused: HashMap<Vec<u8>, String>,
}

/// The parent directories of `rel` below the root, outermost first.
fn parents(rel: &[u8]) -> impl Iterator<Item = &[u8]> {
    rel.iter()
        .enumerate()
        .filter(|(k, c)| **c == b'/' && *k > 0)
        .map(|(k, _)| &rel[..k])
}

/// Whether every parent of `rel` was found a real directory; else why not.
fn parents_ok(rel: &Path, c: &Checked) -> io::Result<()> {
    for d in parents(rel.as_os_str().as_bytes()) {
        if let Some(why) = c.refused.get(d) {
            return Err(io::Error::other(why.clone()));
        }
        if !c.good.contains(d) {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{}: no such directory", crate::escape::bytes(d)),
            ));
        }
    }
    Ok(())
}

/// What LSTAT found at a parent.
enum Found {
    Dir,
    Link,
    Missing,
    /// not a directory, or LSTAT failed: why
    Other(String),
}

fn found(r: Reply) -> Found {
    match r {
        Reply::Attrs(a) => match a.perm {
            Some(p) if is_dir_mode(p) => Found::Dir,
            Some(p) if is_link_mode(p) => Found::Link,
            _ => Found::Other("is not a directory on the target".into()),
        },
        Reply::Status(2, _) => Found::Missing,
        other => Found::Other(other.into_err("lstat").to_string()),
    }
}

impl Ssh {
    /// Whether `rel` is a regular file (LSTAT) under parents checked to be
    /// real directories: only then is it read by path (`compare:
    /// checksum`'s remote `sha256sum`); otherwise it counts as different
    /// and the copy (through the guards) replaces it. `Err`: the session
    /// failed.
    pub(super) fn plain_file_beneath(&mut self, rel: &Path) -> io::Result<bool> {
        self.sftp.verified.new_batch();
        if self.check_parents(&[rel])?.pop().is_none_or(|r| r.is_err()) {
            return Ok(false);
        }
        let id = self.sftp.lstat(&self.path(rel))?;
        Ok(matches!(
            self.sftp.wait(id)?,
            Reply::Attrs(Attrs { perm: Some(p), .. }) if is_file_mode(p)
        ))
    }

    /// Check the parents of each of `rels` (LSTATs pipelined, one round
    /// trip for all directories not yet known); one result per rel.
    /// `Err` outside: the session failed.
    pub(super) fn check_parents(&mut self, rels: &[&Path]) -> io::Result<Vec<io::Result<()>>> {
        // by depth, then name: a parent is settled before its children
        let mut want: BTreeMap<(usize, Vec<u8>), u32> = BTreeMap::new();
        let mut c = Checked::default();
        for rel in rels {
            for (depth, d) in parents(rel.as_os_str().as_bytes()).enumerate() {
                let key = (depth, d.to_vec());
                if self.sftp.verified.knows(d) {
                    c.good.insert(d.to_vec());
                } else if let std::collections::btree_map::Entry::Vacant(e) = want.entry(key) {
                    let id = self
                        .sftp
                        .lstat(&self.path(Path::new(OsStr::from_bytes(d))))?;
                    e.insert(id);
                }
            }
        }
        let mut seen = Vec::with_capacity(want.len());
        for ((_, d), id) in want {
            seen.push((d, found(self.sftp.wait(id)?)));
        }
        for (d, f) in seen {
            self.settle(&d, f, &mut c);
        }
        Ok(rels.iter().map(|rel| parents_ok(rel, &c)).collect())
    }

    /// Act on what LSTAT found at parent `d` (its own parents settled).
    fn settle(&mut self, d: &[u8], f: Found, c: &mut Checked) {
        if parents(d).any(|p| !c.good.contains(p)) {
            return; // below a refused or missing parent: not reached
        }
        let rel = Path::new(OsStr::from_bytes(d));
        let shown = crate::escape::bytes(d);
        match f {
            Found::Dir => {
                self.sftp.verified.add(rel);
                c.good.insert(d.to_vec());
            }
            Found::Missing => {}
            Found::Other(what) => {
                c.refused.insert(d.to_vec(), format!("{shown}: {what}"));
            }
            Found::Link => {
                let why = match self.replace_link(rel) {
                    // a real directory now (ours); what this call meant to
                    // do below it fails, so the run is not `ok`
                    Ok(()) => format!(
                        "{shown} was a symlink on the target: replaced by an empty directory \
                         (nothing went through it); its content is sent again by the next run"
                    ),
                    Err(e) => format!(
                        "{shown} is a symlink on the target where a directory belongs; \
                         not followed, and it could not be replaced: {e}"
                    ),
                };
                c.refused.insert(d.to_vec(), why);
            }
        }
    }

    /// Remove the symlink at `rel` and make an empty directory there.
    fn replace_link(&mut self, rel: &Path) -> io::Result<()> {
        let p = self.path(rel);
        let id = self.sftp.remove(&p)?;
        self.sftp.wait(id)?.ok("remove the symlink")?;
        let id = self.sftp.mkdir(
            &p,
            &Attrs {
                perm: Some(0o700),
                ..Default::default()
            },
        )?;
        self.sftp.wait(id)?.ok("mkdir")?;
        self.sftp.verified.add(rel);
        Ok(())
    }

    /// Set attributes on each entry, never through a symlink (see the
    /// module comment); one result per entry. `Err` outside: the session
    /// failed.
    pub(super) fn set_attrs_many(
        &mut self,
        items: &[(&Path, EntryKind, Attrs)],
    ) -> io::Result<Vec<io::Result<()>>> {
        let rels: Vec<&Path> = items.iter().map(|(r, _, _)| *r).collect();
        let mut out = self.check_parents(&rels)?;
        let mut ids = Vec::new();
        for (k, (rel, kind, attrs)) in items.iter().enumerate() {
            if out[k].is_err() {
                continue;
            }
            let p = self.path(rel);
            if rel.as_os_str().is_empty() {
                // the root, as the operator named it (it may be a symlink)
                ids.push((k, self.sftp.setstat(&p, attrs)?));
            } else if self.sftp.lsetstat {
                ids.push((k, self.sftp.lsetstat(&p, attrs)?));
            } else if *kind != EntryKind::Symlink {
                ids.push((k, self.sftp.lstat(&p)?));
            }
            // a symlink's own times need lsetstat: left as they are
        }
        let mut retry = Vec::new();
        for (k, id) in ids {
            match self.sftp.wait(id)? {
                Reply::Status(0, _) => {}
                Reply::Attrs(a) => retry.push((k, Some(a))),
                // lsetstat refused (its fchmodat needs /proc, which a
                // chroot may lack; or the server denies the request):
                // check, then setstat
                Reply::Status(code, _)
                    if code != FX_NO_SUCH_FILE && items[k].1 != EntryKind::Symlink =>
                {
                    retry.push((k, None))
                }
                other => out[k] = Err(other.into_err("set attributes")),
            }
        }
        self.setstat_checked(items, retry, &mut out)?;
        Ok(out)
    }

    /// SETSTAT the entries `todo` (with their LSTAT, when taken) that are
    /// not symlinks; a symlink is refused.
    fn setstat_checked(
        &mut self,
        items: &[(&Path, EntryKind, Attrs)],
        todo: Vec<(usize, Option<Attrs>)>,
        out: &mut [io::Result<()>],
    ) -> io::Result<()> {
        let mut ids = Vec::new();
        for (k, lst) in todo {
            let p = self.path(items[k].0);
            let lst = match lst {
                Some(a) => a,
                None => {
                    let id = self.sftp.lstat(&p)?;
                    match self.sftp.wait(id)? {
                        Reply::Attrs(a) => a,
                        other => {
                            out[k] = Err(other.into_err("lstat"));
                            continue;
                        }
                    }
                }
            };
            if lst.perm.is_none_or(is_link_mode) {
                out[k] = Err(io::Error::other(
                    "a symlink on the target: its attributes are not set through it",
                ));
                continue;
            }
            ids.push((k, self.sftp.setstat(&p, &items[k].2)?));
        }
        for (k, id) in ids {
            if let Err(e) = self.sftp.wait(id)?.ok("set attributes") {
                out[k] = Err(e);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_are_the_proper_prefixes_outermost_first() {
        let v: Vec<&[u8]> = parents(b"a/b/c.txt").collect();
        assert_eq!(v, vec![&b"a"[..], &b"a/b"[..]]);
        assert_eq!(parents(b"top.txt").count(), 0);
    }

    #[test]
    fn forgetting_a_directory_forgets_what_is_below_it_only() {
        let mut v = Verified::default();
        for d in ["a", "a/b", "ab", "a/b/c"] {
            v.add(Path::new(d));
        }
        v.forget(Path::new("a/b"));
        assert!(v.knows(b"a") && v.knows(b"ab"));
        assert!(!v.knows(b"a/b") && !v.knows(b"a/b/c"));
    }
}
