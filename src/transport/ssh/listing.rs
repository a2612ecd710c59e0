//! Listing a target over SSH: one remote `find . -printf` over an exec
//! channel with NUL-separated fields (names may hold any byte but NUL and
//! `/`), or SFTP `readdir` when the remote has no GNU find.
//!
//! Names are validated: an entry that would resolve outside the target
//! root (`..`, an absolute name) or below a symlinked directory is rejected
//! into the listing's errors, so nothing is ever written or deleted through
//! it.

use super::Ssh;
use super::session::{self, shell_quote};
use super::sftp;
use crate::journal::PathError;
use crate::plan::{Entry, EntryKind, Tree, TreeBuilder};
use crate::transport::Listing;
use std::collections::HashSet;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

impl Ssh {
    /// The whole target (`find`, else SFTP); an empty listing when the root
    /// does not exist.
    pub(super) fn list_remote(&mut self) -> io::Result<Listing> {
        let mut errors = Vec::new();
        match self.list_find()? {
            Some((3, _)) => Ok(Listing::default()),
            Some((code, out)) => {
                let tree = parse_find(&out, &mut errors);
                if code != 0 {
                    errors.push(PathError {
                        path: String::new(),
                        message: format!(
                            "remote find on {} reported unreadable entries (exit {code})",
                            self.label
                        ),
                    });
                }
                Ok(Listing {
                    tree: Some(tree),
                    stream: None,
                    errors,
                })
            }
            None => Ok(Listing {
                tree: self.list_sftp()?,
                stream: None,
                errors,
            }),
        }
    }

    fn list_find(&self) -> io::Result<Option<(i32, Vec<u8>)>> {
        let mut cmd = b"root=".to_vec();
        cmd.extend_from_slice(&shell_quote(&self.root));
        cmd.extend_from_slice(
            b"; if [ ! -e \"$root\" ] && [ ! -L \"$root\" ]; then exit 3; fi; \
              cd -- \"$root\" || exit 4; \
              exec find . -printf '%y\\0%s\\0%T@\\0%m\\0%U\\0%G\\0%P\\0%l\\0'",
        );
        let (code, out, _) = session::exec(&self.sess, &cmd, true)?;
        match code {
            3 => Ok(Some((3, Vec::new()))),
            4 => Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!(
                    "target {} is not a directory",
                    String::from_utf8_lossy(&self.root)
                ),
            )),
            0 | 1 if out.starts_with(b"d\0") => Ok(Some((code, out))),
            // no GNU find there
            _ => Ok(None),
        }
    }

    fn list_sftp(&mut self) -> io::Result<Option<Tree>> {
        let root = self.root.clone();
        let top = match self.sftp.readdir(&root) {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut tree = TreeBuilder::default();
        tree.push(Path::new(""), Entry::blank(EntryKind::Dir));
        let mut queue = vec![(PathBuf::new(), top)];
        while let Some((dir, items)) = queue.pop() {
            for (name, a) in items {
                if name.is_empty() || name.contains(&b'/') {
                    continue;
                }
                let rel = dir.join(std::ffi::OsStr::from_bytes(&name));
                let perm = a.perm.unwrap_or(0);
                let kind = if sftp::is_dir_mode(perm) {
                    EntryKind::Dir
                } else if sftp::is_file_mode(perm) {
                    EntryKind::File
                } else if sftp::is_link_mode(perm) {
                    EntryKind::Symlink
                } else {
                    EntryKind::Special
                };
                let link = if kind == EntryKind::Symlink {
                    let p = self.path(&rel);
                    Some(PathBuf::from(std::ffi::OsString::from_vec(
                        self.sftp.readlink(&p)?,
                    )))
                } else {
                    None
                };
                let (uid, gid) = a.uid_gid.unwrap_or((0, 0));
                tree.push(
                    &rel,
                    Entry {
                        kind,
                        size: if kind == EntryKind::File {
                            a.size.unwrap_or(0)
                        } else {
                            0
                        },
                        mtime: a.times.map(|t| t.1 as i64).unwrap_or(0),
                        mtime_ns: 0,
                        mode: perm & 0o7777,
                        uid,
                        gid,
                        link: link.map(Box::new),
                    },
                );
                if kind == EntryKind::Dir {
                    let p = self.path(&rel);
                    let sub = self.sftp.readdir(&p)?;
                    queue.push((rel, sub));
                }
            }
        }
        Ok(Some(tree.finish()))
    }
}

/// Parse the NUL-separated output of the remote `find -printf`. Entries
/// whose names are unsafe (empty, `.`/`..` components, absolute) or whose
/// parent is not a listed directory (they would be reached through a
/// symlink) are rejected into `errors`.
pub fn parse_find(out: &[u8], errors: &mut Vec<PathError>) -> Tree {
    let mut tree = TreeBuilder::default();
    // directories accepted so far (an entry's parent must be one of them)
    let mut dirs: HashSet<&[u8]> = HashSet::new();
    let mut have_root = false;
    let mut fields = out.split(|b| *b == 0);
    let mut f: [&[u8]; 8] = [&[]; 8];
    'records: loop {
        for slot in f.iter_mut() {
            match fields.next() {
                Some(x) => *slot = x,
                None => break 'records,
            }
        }
        let name = f[6];
        let is_root = name.is_empty();
        let checked = check_name(name, have_root, &dirs).and_then(|()| entry_of(&f));
        let entry = match checked {
            Ok(e) if is_root && e.kind != EntryKind::Dir => {
                Err("the target root is not a directory")
            }
            other => other,
        };
        let entry = match entry {
            Ok(e) => e,
            Err(why) => {
                errors.push(PathError {
                    path: String::from_utf8_lossy(name).into_owned(),
                    message: format!("remote listing entry rejected: {why}"),
                });
                continue;
            }
        };
        have_root = true;
        if entry.kind == EntryKind::Dir {
            dirs.insert(name);
        } else {
            // a later entry of another type at a directory's path replaces it
            dirs.remove(name);
        }
        tree.push(Path::new(std::ffi::OsStr::from_bytes(name)), entry);
    }
    tree.finish()
}

/// A listed name is safe: relative, no empty, `.` or `..` component, one
/// root, and its parent a directory listed before it.
fn check_name(name: &[u8], have_root: bool, dirs: &HashSet<&[u8]>) -> Result<(), &'static str> {
    if name.is_empty() {
        return if have_root {
            Err("second root entry")
        } else {
            Ok(())
        };
    }
    if name.starts_with(b"/")
        || name
            .split(|b| *b == b'/')
            .any(|c| c.is_empty() || c == b"." || c == b"..")
    {
        return Err("unsafe name");
    }
    let parent = match name.iter().rposition(|b| *b == b'/') {
        Some(k) => &name[..k],
        None => &b""[..],
    };
    if !dirs.contains(parent) {
        return Err("its parent is not a listed directory");
    }
    Ok(())
}

/// The entry of one record's fields: type, size, mtime (`secs.frac`), mode
/// (octal), uid, gid, name, link target.
fn entry_of(f: &[&[u8]; 8]) -> Result<Entry, &'static str> {
    let (ty, size, mtime, mode, uid, gid, link) = (f[0], f[1], f[2], f[3], f[4], f[5], f[7]);
    let kind = match ty {
        b"f" => EntryKind::File,
        b"d" => EntryKind::Dir,
        b"l" => EntryKind::Symlink,
        b"p" | b"s" | b"c" | b"b" | b"D" => EntryKind::Special,
        _ => return Err("unknown type"),
    };
    let num = |b: &[u8]| {
        std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
    };
    let (secs, nanos) = {
        let s = std::str::from_utf8(mtime).unwrap_or("");
        let (a, b) = s.split_once('.').unwrap_or((s, "0"));
        let ns: String = b.chars().chain(std::iter::repeat('0')).take(9).collect();
        (a.parse::<i64>().ok(), ns.parse::<u32>().ok())
    };
    let mode = std::str::from_utf8(mode)
        .ok()
        .and_then(|m| u32::from_str_radix(m, 8).ok());
    let (Some(size), Some(secs), Some(nanos), Some(mode), Some(uid), Some(gid)) =
        (num(size), secs, nanos, mode, num(uid), num(gid))
    else {
        return Err("malformed attributes");
    };
    Ok(Entry {
        kind,
        size: if kind == EntryKind::File { size } else { 0 },
        mtime: secs,
        mtime_ns: nanos,
        mode: mode & 0o7777,
        uid: uid as u32,
        gid: gid as u32,
        link: (kind == EntryKind::Symlink)
            .then(|| Box::new(PathBuf::from(std::ffi::OsStr::from_bytes(link)))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ty: &str, name: &[u8], link: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in [
            ty.as_bytes(),
            b"12",
            b"1600000000.5000000000",
            b"644",
            b"0",
            b"0",
            name,
            link,
        ] {
            v.extend_from_slice(f);
            v.push(0);
        }
        v
    }

    #[test]
    fn parses_find_output_with_any_bytes_in_names() {
        let mut out = rec("d", b"", b"");
        out.extend(rec("d", b"dir", b""));
        out.extend(rec("f", b"dir/new\nline", b""));
        out.extend(rec("l", b"link", b"../x"));
        out.extend(rec("f", b"\xff\xfe bytes", b""));
        let mut errors = vec![];
        let t = parse_find(&out, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(t.len(), 5);
        let f = &t[Path::new("dir/new\nline")];
        assert_eq!(
            (f.kind, f.size, f.mtime, f.mtime_ns, f.mode),
            (EntryKind::File, 12, 1_600_000_000, 500_000_000, 0o644)
        );
        assert_eq!(
            t[Path::new("link")].link.as_deref().map(PathBuf::as_path),
            Some(Path::new("../x"))
        );
    }

    #[test]
    fn rejects_entries_escaping_the_root() {
        let mut out = rec("d", b"", b"");
        out.extend(rec("l", b"evil", b"/etc"));
        for bad in [
            &b"../x"[..],
            b"/etc/passwd",
            b"a/../../x",
            b"evil/passwd",
            b"nodir/x",
            b"a//b",
            b".",
        ] {
            out.extend(rec("f", bad, b""));
        }
        let mut errors = vec![];
        let t = parse_find(&out, &mut errors);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(errors.len(), 7, "{errors:?}");
    }

    #[test]
    fn truncated_or_garbage_listing_does_not_panic() {
        let mut errors = vec![];
        let t = parse_find(b"d\0\0\0\0\0\0\0\0f\0x", &mut errors);
        assert!(t.is_empty());
        let t = parse_find(&rec("f", b"", b""), &mut errors);
        assert!(t.is_empty(), "a root that is not a directory is rejected");
    }
}
