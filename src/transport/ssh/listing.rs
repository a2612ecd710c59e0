//! Listing a target over SSH: one remote `find . -printf` over an exec
//! channel with NUL-separated fields (names may hold any byte but NUL and
//! `/`), or SFTP `readdir` when the remote has no GNU find.
//!
//! Names are validated: an entry that would resolve outside the target
//! root (`..`, an absolute name) or below a symlinked directory is rejected
//! into the listing's errors, so nothing is ever written or deleted through
//! it.

use super::Ssh;
use super::session::shell_quote;
use super::sftp;
use crate::journal::PathError;
use crate::plan::{Entry, EntryKind, Tree, TreeBuilder};
use crate::transport::Listing;
use crate::violation::violation;
use std::collections::HashSet;
use std::io;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

impl Ssh {
    /// The whole target (`find`, else SFTP); an empty listing when the root
    /// does not exist.
    pub(super) fn list_remote(&mut self) -> io::Result<Listing> {
        let mut errors = Vec::new();
        match self.list_find(&mut errors)? {
            Find::Missing => Ok(Listing::default()),
            Find::Listed(code, tree) => {
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
            Find::Elsewhere => Ok(Listing {
                tree: self.list_sftp()?,
                stream: None,
                errors: Vec::new(),
            }),
        }
    }

    /// Run `find` and parse its output as it comes (never held whole):
    /// at most `max_entries` records of at most [`MAX_RECORD`] bytes.
    fn list_find(&self, errors: &mut Vec<PathError>) -> io::Result<Find> {
        use std::io::Read;
        let mut cmd = b"root=".to_vec();
        cmd.extend_from_slice(&shell_quote(&self.root));
        cmd.extend_from_slice(
            b"; if [ ! -e \"$root\" ] && [ ! -L \"$root\" ]; then exit 3; fi; \
              cd -- \"$root\" || exit 4; \
              exec find . -printf '%y\\0%s\\0%T@\\0%m\\0%U\\0%G\\0%P\\0%l\\0'",
        );
        let mut ch = self.conn.stream(&cmd, true)?;
        let mut p = FindParser::new(self.max_entries);
        let mut buf: Vec<u8> = Vec::with_capacity(256 << 10);
        let mut chunk = vec![0u8; 64 << 10];
        loop {
            let n = ch.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
            if p.records == 0 && buf.len() >= 2 && !buf.starts_with(b"d\0") {
                // not GNU find's output (another find, an error message)
                return Ok(Find::Elsewhere);
            }
            let used = p
                .feed(&buf, errors)
                .map_err(|why| violation(format!("remote listing of {}: {why}", self.label)))?;
            buf.drain(..used);
        }
        let (code, _) = ch.finish();
        match code {
            3 if p.records == 0 => Ok(Find::Missing),
            4 => Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!(
                    "target {} is not a directory",
                    String::from_utf8_lossy(&self.root)
                ),
            )),
            0 | 1 if p.have_root => Ok(Find::Listed(code, p.finish(errors))),
            _ => Ok(Find::Elsewhere),
        }
    }

    fn list_sftp(&mut self) -> io::Result<Option<Tree>> {
        let root = self.root.clone();
        // every entry read counts toward `max_entries`, kept or not
        let max = usize::try_from(self.max_entries).unwrap_or(usize::MAX);
        let mut seen = 0usize;
        let over = |label: &str| {
            violation(format!(
                "remote listing of {label}: more than {max} entries (ssh.max_listing_entries); refused"
            ))
        };
        let top = match self.sftp.readdir(&root, max) {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut tree = TreeBuilder::default();
        tree.push(Path::new(""), Entry::blank(EntryKind::Dir));
        let mut queue = vec![(PathBuf::new(), top)];
        while let Some((dir, items)) = queue.pop() {
            seen += items.len();
            if seen > max {
                return Err(over(&self.label));
            }
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
                    let sub = self.sftp.readdir(&p, max - seen)?;
                    queue.push((rel, sub));
                }
            }
        }
        Ok(Some(tree.finish()))
    }
}

/// What `find` on the remote said.
enum Find {
    /// the target root does not exist
    Missing,
    /// exit code and the entries
    Listed(i32, Tree),
    /// no GNU find there: list over SFTP
    Elsewhere,
}

/// The longest record of `find`'s output accepted: a name and a link
/// target of at most `relname::MAX_PATH` bytes, six short numbers.
pub const MAX_RECORD: usize = 2 * crate::relname::MAX_PATH + 6 * 32 + 8;
/// Rejected entries kept as errors; the rest are counted.
const MAX_REJECTED: usize = 1000;

/// Parses the NUL-separated records of the remote `find -printf` as they
/// come. Entries whose names are unsafe (empty, `.`/`..` components,
/// absolute, too long) or whose parent is not a listed directory (they
/// would be reached through a symlink) are rejected into `errors`.
pub struct FindParser {
    tree: TreeBuilder,
    /// directories accepted so far (an entry's parent must be one of them)
    dirs: HashSet<Vec<u8>>,
    have_root: bool,
    /// records read, accepted or not
    records: u64,
    max_records: u64,
    rejected: u64,
}

impl FindParser {
    pub fn new(max_records: u64) -> FindParser {
        FindParser {
            tree: TreeBuilder::default(),
            dirs: HashSet::new(),
            have_root: false,
            records: 0,
            max_records,
            rejected: 0,
        }
    }

    /// Parse the complete records at the start of `buf`; returns how many
    /// bytes they took (the rest is an incomplete record), or why the
    /// listing is refused (too many records, a record too long).
    pub fn feed(&mut self, buf: &[u8], errors: &mut Vec<PathError>) -> Result<usize, String> {
        let mut at = 0;
        'records: loop {
            let mut f: [&[u8]; 8] = [&[]; 8];
            let mut pos = at;
            for slot in f.iter_mut() {
                match buf[pos..].iter().position(|b| *b == 0) {
                    Some(k) => {
                        *slot = &buf[pos..pos + k];
                        pos += k + 1;
                    }
                    None => break 'records,
                }
            }
            if pos - at > MAX_RECORD {
                return Err(format!("a record longer than {MAX_RECORD} bytes; refused"));
            }
            self.records += 1;
            if self.records > self.max_records {
                return Err(format!(
                    "more than {} entries (ssh.max_listing_entries); refused",
                    self.max_records
                ));
            }
            if let Err(why) = self.record(f) {
                self.rejected += 1;
                if errors.len() < MAX_REJECTED {
                    errors.push(PathError {
                        path: crate::escape::bytes(f[6]),
                        message: format!("remote listing entry rejected: {why}"),
                    });
                }
            }
            at = pos;
        }
        if buf.len() - at > MAX_RECORD {
            return Err(format!("a record longer than {MAX_RECORD} bytes; refused"));
        }
        Ok(at)
    }

    /// One entry listed by other means (the remote helper's listing),
    /// checked and bounded as a record is; `Err`: the listing is refused.
    pub(super) fn entry(
        &mut self,
        name: &[u8],
        entry: Entry,
        errors: &mut Vec<PathError>,
    ) -> Result<(), String> {
        self.records += 1;
        if self.records > self.max_records {
            return Err(format!(
                "more than {} entries (ssh.max_listing_entries); refused",
                self.max_records
            ));
        }
        let r =
            check_name(name, self.have_root, &self.dirs).and_then(|()| self.accept(name, entry));
        if let Err(why) = r {
            self.rejected += 1;
            if errors.len() < MAX_REJECTED {
                errors.push(PathError {
                    path: crate::escape::bytes(name),
                    message: format!("remote listing entry rejected: {why}"),
                });
            }
        }
        Ok(())
    }

    /// One record; `Err`: why it is rejected.
    fn record(&mut self, f: [&[u8]; 8]) -> Result<(), &'static str> {
        let name = f[6];
        check_name(name, self.have_root, &self.dirs)?;
        let entry = entry_of(&f)?;
        self.accept(name, entry)
    }

    /// A checked entry into the tree.
    fn accept(&mut self, name: &[u8], entry: Entry) -> Result<(), &'static str> {
        if name.is_empty() && entry.kind != EntryKind::Dir {
            return Err("the target root is not a directory");
        }
        self.have_root = true;
        if entry.kind == EntryKind::Dir {
            self.dirs.insert(name.to_vec());
        } else {
            // a later entry of another type at a directory's path replaces it
            self.dirs.remove(name);
        }
        self.tree
            .push(Path::new(std::ffi::OsStr::from_bytes(name)), entry);
        Ok(())
    }

    /// The entries (sorted); a count of the rejected ones not kept.
    pub fn finish(self, errors: &mut Vec<PathError>) -> Tree {
        let more = self.rejected.saturating_sub(MAX_REJECTED as u64);
        if more > 0 {
            errors.push(PathError {
                path: String::new(),
                message: format!("... and {more} more rejected remote listing entries"),
            });
        }
        self.tree.finish()
    }
}

/// Parse a whole `find -printf` output (see [`FindParser`]); a listing
/// that breaks a bound ends there, with an error.
pub fn parse_find(out: &[u8], errors: &mut Vec<PathError>) -> Tree {
    let mut p = FindParser::new(u64::MAX);
    if let Err(why) = p.feed(out, errors) {
        errors.push(PathError {
            path: String::new(),
            message: why,
        });
    }
    p.finish(errors)
}

/// A listed name is safe: relative, no empty, `.` or `..` component,
/// bounded (`relname`), one root, and its parent a directory listed
/// before it.
fn check_name(name: &[u8], have_root: bool, dirs: &HashSet<Vec<u8>>) -> Result<(), &'static str> {
    if name.is_empty() {
        return if have_root {
            Err("second root entry")
        } else {
            Ok(())
        };
    }
    crate::relname::check(name).map_err(|_| "unsafe name")?;
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
        match (a.parse::<i64>().ok(), ns.parse::<u32>().ok()) {
            // before 1970: `-5.25` is 5.25 s before the epoch, i.e.
            // -6 s + 0.75 s
            (Some(s), Some(n)) if a.starts_with('-') && n > 0 => {
                (Some(s - 1), Some(1_000_000_000 - n))
            }
            x => x,
        }
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

    /// Entries from the remote helper's listing are checked as `find`'s.
    #[test]
    fn helper_entries_escaping_the_root_are_rejected() {
        let mut p = FindParser::new(5);
        let mut errors = vec![];
        let mut link = Entry::blank(EntryKind::Symlink);
        link.link = Some(Box::new(PathBuf::from("/etc")));
        p.entry(b"", Entry::blank(EntryKind::Dir), &mut errors)
            .unwrap();
        p.entry(b"evil", link, &mut errors).unwrap();
        for bad in [&b"evil/passwd"[..], b"../x", b"/etc/passwd"] {
            p.entry(bad, Entry::blank(EntryKind::File), &mut errors)
                .unwrap();
        }
        assert_eq!(errors.len(), 3, "{errors:?}");
        let e = p.entry(b"ok", Entry::blank(EntryKind::File), &mut errors);
        assert!(e.unwrap_err().contains("more than 5 entries"));
        assert_eq!(p.finish(&mut errors).len(), 2);
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
