//! Parse `rsync --list-only -rl --no-h` output (run with `TZ=UTC0`,
//! `LC_ALL=C`) into a target [`Tree`].
//!
//! The lines come from an untrusted daemon. Invariants: at most
//! [`MAX_ENTRIES`] entries are kept (more is an error, not a truncated
//! listing that would look like missing files); a name that is absolute,
//! has an empty, `.` or `..` component, or whose parent is not a directory
//! listed before it (it would be reached through a symlink) is rejected
//! into `errors`; so is a symlink line whose ` -> ` split is ambiguous.
//! Times are whole seconds (rsync prints no more).

use super::process::unescape;
use crate::journal::PathError;
use crate::plan::{Entry, EntryKind, Tree, TreeBuilder};
use std::collections::HashSet;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// The most entries a target listing may hold (about 600 MB of tree).
pub const MAX_ENTRIES: usize = 10_000_000;

#[derive(Default)]
pub struct Parser {
    tree: TreeBuilder,
    count: usize,
    dirs: HashSet<Vec<u8>>,
    have_root: bool,
    pub errors: Vec<PathError>,
}

/// Mode bits from `drwxr-sr-t`-style text.
fn mode_of(perms: &[u8]) -> Option<(EntryKind, u32)> {
    if perms.len() != 10 {
        return None;
    }
    let kind = match perms[0] {
        b'-' => EntryKind::File,
        b'd' => EntryKind::Dir,
        b'l' => EntryKind::Symlink,
        b'c' | b'b' | b'p' | b's' => EntryKind::Special,
        _ => return None,
    };
    let mut mode = 0u32;
    for (k, &c) in perms[1..].iter().enumerate() {
        let bit = 1u32 << (8 - k);
        let special = match k {
            2 => 0o4000,
            5 => 0o2000,
            8 => 0o1000,
            _ => 0,
        };
        match (c, k % 3) {
            (b'-', _) => {}
            (b'r', 0) | (b'w', 1) | (b'x', 2) => mode |= bit,
            (b's', 2) if k != 8 => mode |= bit | special,
            (b'S', 2) if k != 8 => mode |= special,
            (b't', 2) if k == 8 => mode |= bit | special,
            (b'T', 2) if k == 8 => mode |= special,
            _ => return None,
        }
    }
    Some((kind, mode))
}

/// `YYYY/MM/DD HH:MM:SS` (UTC) to Unix seconds.
fn time_of(date: &[u8], time: &[u8]) -> Option<i64> {
    let s = format!(
        "{} {}",
        std::str::from_utf8(date).ok()?,
        std::str::from_utf8(time).ok()?
    );
    chrono::NaiveDateTime::parse_from_str(&s, "%Y/%m/%d %H:%M:%S")
        .ok()
        .map(|t| t.and_utc().timestamp())
}

/// Split off the next space-separated field (leading spaces skipped).
fn field(s: &[u8]) -> Option<(&[u8], &[u8])> {
    let start = s.iter().position(|b| *b != b' ')?;
    let s = &s[start..];
    let end = s.iter().position(|b| *b == b' ')?;
    Some((&s[..end], &s[end + 1..]))
}

impl Parser {
    fn reject(&mut self, name: &[u8], why: &str) {
        if self.errors.len() < 200 {
            self.errors.push(PathError {
                path: String::from_utf8_lossy(name).into_owned(),
                message: format!("rsync listing entry rejected: {why}"),
            });
        }
    }

    /// One line of output. Errors only when the listing is too big to hold.
    pub fn line(&mut self, line: &[u8]) -> io::Result<()> {
        let parsed = (|| {
            let (perms, rest) = field(line)?;
            let (size, rest) = field(rest)?;
            let (date, rest) = field(rest)?;
            let (time, rest) = field(rest)?;
            Some((perms, size, date, time, rest))
        })();
        let Some((perms, size, date, time, rest)) = parsed else {
            // not a listing line (a daemon's greeting, say)
            return Ok(());
        };
        let (Some((kind, mode)), Some(size), Some(mtime)) = (
            mode_of(perms),
            std::str::from_utf8(size)
                .ok()
                .and_then(|s| s.parse::<u64>().ok()),
            time_of(date, time),
        ) else {
            return Ok(());
        };
        let (name, link) = if kind == EntryKind::Symlink {
            let parts: Vec<&[u8]> = split_arrow(rest);
            if parts.len() != 2 {
                self.reject(
                    rest,
                    "a symlink whose name or target holds ` -> ` (ambiguous)",
                );
                return Ok(());
            }
            (unescape(parts[0]), Some(unescape(parts[1])))
        } else {
            (unescape(rest), None)
        };
        self.push(name, kind, size, mtime, mode, link)
    }

    fn push(
        &mut self,
        name: Vec<u8>,
        kind: EntryKind,
        size: u64,
        mtime: i64,
        mode: u32,
        link: Option<Vec<u8>>,
    ) -> io::Result<()> {
        let is_root = name == b".";
        let rel: Vec<u8> = if is_root { Vec::new() } else { name };
        if !is_root
            && (rel.starts_with(b"/")
                || rel
                    .split(|b| *b == b'/')
                    .any(|c| c.is_empty() || c == b"." || c == b".."))
        {
            self.reject(&rel, "unsafe name");
            return Ok(());
        }
        if is_root {
            if self.have_root {
                self.reject(b".", "second root entry");
                return Ok(());
            }
            if kind != EntryKind::Dir {
                return Err(io::Error::new(
                    io::ErrorKind::NotADirectory,
                    "the target is not a directory",
                ));
            }
            self.have_root = true;
        } else {
            let parent = match rel.iter().rposition(|b| *b == b'/') {
                Some(k) => &rel[..k],
                None => &b""[..],
            };
            if !self.dirs.contains(parent) {
                self.reject(&rel, "its parent is not a listed directory");
                return Ok(());
            }
        }
        self.count += 1;
        if self.count > MAX_ENTRIES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("the target listing has more than {MAX_ENTRIES} entries"),
            ));
        }
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(&rel));
        if kind == EntryKind::Dir {
            self.dirs.insert(rel);
        } else {
            self.dirs.remove(&rel);
        }
        self.tree.push(
            &path,
            Entry {
                kind,
                size: if kind == EntryKind::File { size } else { 0 },
                mtime,
                mtime_ns: 0,
                mode,
                uid: 0,
                gid: 0,
                link: link.map(|l| Box::new(PathBuf::from(std::ffi::OsStr::from_bytes(&l)))),
            },
        );
        Ok(())
    }

    /// The tree, or `None` when no root entry came (the root is missing).
    pub fn finish(self) -> (Option<Tree>, Vec<PathError>) {
        let tree = self.have_root.then(|| self.tree.finish());
        (tree, self.errors)
    }
}

fn split_arrow(s: &[u8]) -> Vec<&[u8]> {
    let mut parts = Vec::new();
    let mut rest = s;
    while let Some(i) = rest.windows(4).position(|w| w == b" -> ") {
        parts.push(&rest[..i]);
        rest = &rest[i + 4..];
    }
    parts.push(rest);
    parts
}

/// For tests and fuzzing: parse a whole listing.
pub fn parse(out: &[u8]) -> io::Result<(Option<Tree>, Vec<PathError>)> {
    let mut p = Parser::default();
    for l in out.split(|b| *b == b'\n') {
        p.line(l)?;
    }
    Ok(p.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const SAMPLE: &[u8] = b"drwxr-xr-x        4096 2026/11/27 05:18:22 .
lrwxrwxrwx           3 2026/11/27 05:18:22 l -> a/x
-rw-r--r--           0 2026/11/27 05:18:22 new\\#012line
-rw-r--r--           0 2026/11/27 05:18:22 sp -> ace
-rwsr-x--T           3 2026/11/27 05:18:22 we ird\\n
drwxr-xr-x        4096 2026/11/27 05:18:22 a
-rw-r--r--           3 1970/01/01 00:00:01 a/x
drwxr-xr-x        4096 2026/11/27 05:18:22 a/b
-rw-r--r--           3 2026/11/27 05:18:22 a/b/y
";

    #[test]
    fn parses_rsync_list_only_output() {
        let (tree, errors) = parse(SAMPLE).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let tree = tree.unwrap();
        assert_eq!(tree.len(), 9);
        let get = |p: &str| tree.get(Path::new(p)).unwrap().clone();
        assert_eq!(get("").kind, EntryKind::Dir);
        assert_eq!(get("l").link.as_deref(), Some(&PathBuf::from("a/x")));
        assert_eq!(get("new\nline").kind, EntryKind::File);
        assert_eq!(
            get("sp -> ace").kind,
            EntryKind::File,
            "only symlinks split at ->"
        );
        assert_eq!(get("we ird\\n").mode, 0o4000 | 0o750 | 0o1000);
        assert_eq!(get("a/x").mtime, 1);
        assert_eq!(get("a/x").size, 3);
        assert_eq!(get("a/b").mode, 0o755);
        assert_eq!(get("a").mtime, 1_795_756_702);
    }

    #[test]
    fn hostile_entries_are_rejected() {
        let out = b"drwxr-xr-x 1 2026/11/27 05:18:22 .
-rw-r--r-- 1 2026/11/27 05:18:22 ../etc/passwd
-rw-r--r-- 1 2026/11/27 05:18:22 /etc/passwd
-rw-r--r-- 1 2026/11/27 05:18:22 a//b
lrwxrwxrwx 1 2026/11/27 05:18:22 d -> /etc
-rw-r--r-- 1 2026/11/27 05:18:22 d/passwd
lrwxrwxrwx 1 2026/11/27 05:18:22 x -> y -> z
drwxr-xr-x 1 2026/11/27 05:18:22 .
-rw-r--r-- 1 2026/11/27 05:18:22 nodir/f
@RSYNCD: greeting lines are ignored
";
        let (tree, errors) = parse(out).unwrap();
        let tree = tree.unwrap();
        let names: Vec<String> = tree.iter().map(|(p, _)| p.display().to_string()).collect();
        assert_eq!(names, ["", "d"]);
        assert_eq!(errors.len(), 7, "{errors:?}");
    }

    #[test]
    fn missing_root_and_file_root() {
        assert!(parse(b"").unwrap().0.is_none());
        assert!(parse(b"-rw-r--r-- 1 2026/11/27 05:18:22 .\n").is_err());
    }
}
