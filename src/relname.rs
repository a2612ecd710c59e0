//! Relative entry names read from outside the process (a remote listing, a
//! manifest file): what may be joined under a target root.
//!
//! Invariant: a name that passes [`check`] is relative, has no empty, `.`
//! or `..` component, no NUL, at most [`MAX_PATH`] bytes and components
//! of at most [`MAX_NAME`] bytes, so `root.join(name)` stays beneath
//! `root` lexically. [`Order`] adds the listing rules: strictly increasing
//! path order, one root entry first, and each entry's parent an entry
//! already seen as a directory (so nothing is reached through a path the
//! listing did not show as a directory).

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Longest relative name accepted (Linux `PATH_MAX`).
pub const MAX_PATH: usize = 4096;
/// Longest component accepted (Linux `NAME_MAX`).
pub const MAX_NAME: usize = 255;

/// Why a name is refused.
pub fn check(name: &[u8]) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty name");
    }
    if name.len() > MAX_PATH {
        return Err("name longer than 4096 bytes");
    }
    if name.contains(&0) {
        return Err("NUL in the name");
    }
    if name.starts_with(b"/") {
        return Err("absolute name");
    }
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" => return Err("empty component"),
            b"." | b".." => return Err("`.` or `..` component"),
            c if c.len() > MAX_NAME => return Err("component longer than 255 bytes"),
            _ => {}
        }
    }
    Ok(())
}

/// Checks a sequence of entries given in path order (see the module doc);
/// holds only the open directories (the depth of the tree).
#[derive(Debug, Default)]
pub struct Order {
    /// directories from the root to the last entry's parent or itself
    open: Vec<Vec<u8>>,
    prev: Option<Vec<u8>>,
}

impl Order {
    /// Accept the next entry (`""` is the root, first and only once).
    pub fn next(&mut self, name: &[u8], is_dir: bool) -> Result<(), &'static str> {
        let Some(prev) = &self.prev else {
            if !name.is_empty() || !is_dir {
                return Err("the first entry is not the root directory");
            }
            self.prev = Some(Vec::new());
            self.open.push(Vec::new());
            return Ok(());
        };
        check(name)?;
        if Path::new(OsStr::from_bytes(name)) <= Path::new(OsStr::from_bytes(prev)) {
            return Err("entries out of path order");
        }
        let parent: &[u8] = match name.iter().rposition(|b| *b == b'/') {
            Some(k) => &name[..k],
            None => b"",
        };
        let Some(at) = self.open.iter().rposition(|d| d.as_slice() == parent) else {
            return Err("its parent is not a listed directory");
        };
        self.open.truncate(at + 1);
        if is_dir {
            self.open.push(name.to_vec());
        }
        self.prev = Some(name.to_vec());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_names_are_refused() {
        for bad in [
            &b""[..],
            b"/etc/passwd",
            b"../x",
            b"a/../../x",
            b"a//b",
            b"a/",
            b"./a",
            b"a/.",
            b"a\0b",
        ] {
            assert!(check(bad).is_err(), "{bad:?}");
        }
        assert!(check(&vec![b'a'; 256]).is_err());
        assert!(check(&[b"a/".repeat(2049).as_slice(), b"a"].concat()).is_err());
        for good in [
            &b"a"[..],
            b"a/b",
            b"..a",
            b"a..",
            b".hidden/x",
            &[0xff, b'/', 1],
        ] {
            assert!(check(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn order_and_parents() {
        let mut o = Order::default();
        assert!(o.next(b"a", false).is_err(), "root first");
        let mut o = Order::default();
        o.next(b"", true).unwrap();
        o.next(b"a", true).unwrap();
        o.next(b"a/b", false).unwrap();
        o.next(b"a/c", true).unwrap();
        o.next(b"a/c/d", false).unwrap();
        assert!(o.next(b"a/b/x", false).is_err(), "out of order");
        o.next(b"b", false).unwrap();
        assert!(o.next(b"b/x", false).is_err(), "parent is a file");
        assert!(o.next(b"c/x", false).is_err(), "parent not listed");
        assert!(o.next(b"", true).is_err(), "second root");
        o.next(b"d", true).unwrap();
        o.next(b"d/e", false).unwrap();
    }
}
