//! Path guards on targets: the root of the file system and overlaps
//! between a local target and the source, decided on normalised paths.
//!
//! Invariants:
//! - [`lexical`] removes `.`, empty components and `..` (with its parent)
//!   without touching the file system; `..` above the root stays at the
//!   root, so `/srv/..`, `/srv/site/../../` and `/..` are all `/`;
//! - [`resolve`] gives a local path as the kernel would reach it: the
//!   existing part canonicalized (symlinks followed), the rest lexical, so
//!   two paths naming one directory compare equal whatever links lead there;
//! - [`overlaps`] compares resolved paths (and lexical ones, for paths not
//!   created yet), component-wise.

use std::path::{Component, Path, PathBuf};

/// `path` with `.`, empty components and `..` resolved lexically. A
/// relative path keeps the `..` it cannot resolve at its start.
pub fn lexical(path: &Path) -> PathBuf {
    let mut out: Vec<Component> = Vec::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => match out.last() {
                Some(Component::Normal(_)) => {
                    out.pop();
                }
                Some(Component::RootDir) | Some(Component::Prefix(_)) => {}
                _ => out.push(c),
            },
            c => out.push(c),
        }
    }
    let p: PathBuf = out.iter().collect();
    if p.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        p
    }
}

/// An absolute local path as the kernel reaches it: the longest existing
/// prefix canonicalized, the rest applied lexically.
pub fn resolve(path: &Path) -> PathBuf {
    let mut cur = PathBuf::from("/");
    let mut exists = true;
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => {
                // `cur` has no symlink while it exists: popping is exact
                cur.pop();
                if !exists {
                    exists = cur.symlink_metadata().is_ok();
                }
            }
            Component::Normal(n) => {
                cur.push(n);
                if exists {
                    match cur.canonicalize() {
                        Ok(c) => cur = c,
                        Err(_) => exists = false,
                    }
                }
            }
        }
    }
    cur
}

/// One of the two local paths lies inside the other (or they are one).
pub fn overlaps(a: &Path, b: &Path) -> bool {
    let inside = |x: &Path, y: &Path| x.starts_with(y) || y.starts_with(x);
    inside(&lexical(a), &lexical(b)) || inside(&resolve(a), &resolve(b))
}

/// Why a local target is refused against its source, if it is.
pub fn local_target_refused(source: &Path, target: &Path) -> Option<String> {
    if resolve(target) == Path::new("/") {
        return Some(format!(
            "target {} is the root of the file system",
            target.display()
        ));
    }
    overlaps(source, target).then(|| {
        format!(
            "target {} overlaps the source {} (one lies inside the other, after resolving `..` and symlinks)",
            target.display(),
            source.display()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical_forms_of_the_root() {
        for p in [
            "/srv/..",
            "/srv/site/../../",
            "/..",
            "//",
            "/./",
            "/a/./b/../../",
        ] {
            assert_eq!(lexical(Path::new(p)), Path::new("/"), "{p}");
        }
        assert_eq!(
            lexical(Path::new("/srv/./a//b/../c")),
            Path::new("/srv/a/c")
        );
        assert_eq!(lexical(Path::new("../a/../..")), Path::new("../.."));
        assert_eq!(lexical(Path::new("a/..")), Path::new("."));
    }

    #[test]
    fn resolve_follows_links_of_the_existing_part() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("src")).unwrap();
        std::os::unix::fs::symlink(root.join("src"), root.join("link")).unwrap();
        assert_eq!(resolve(&root.join("link/new/x")), root.join("src/new/x"));
        assert_eq!(resolve(&root.join("link/../src")), root.join("src"));
        assert!(overlaps(&root.join("src"), &root.join("link/sub")));
        assert!(overlaps(&root.join("link"), &root.join("src/sub")));
        assert!(!overlaps(&root.join("src"), &root.join("srcx")));
        std::os::unix::fs::symlink("/", root.join("slash")).unwrap();
        assert!(local_target_refused(&root.join("src"), &root.join("slash")).is_some());
    }
}
