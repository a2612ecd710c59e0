//! Exclude patterns with rsync's meaning:
//!
//! - a pattern without `/` matches the final component of a path, at any depth
//!   (`*.gz` excludes `a/b/c.gz`);
//! - a leading `/` anchors the pattern at the source root (`/info/` is only the
//!   top-level `info` directory);
//! - a pattern with an inner `/` (or `**`) matches the whole relative path, or
//!   any trailing part of it that starts at a directory boundary;
//! - a trailing `/` matches directories only;
//! - `*` and `?` do not cross `/`; `**` does.
//!
//! An excluded directory is not descended into: everything below it is
//! excluded too, on the source (not copied) and on the target (not deleted).

use globset::{Glob, GlobBuilder, GlobMatcher};
use std::path::Path;

#[derive(Debug, Clone)]
struct Rule {
    matcher: GlobMatcher,
    dir_only: bool,
    basename: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Filter {
    rules: Vec<Rule>,
}

fn glob(p: &str) -> Result<Glob, String> {
    GlobBuilder::new(p)
        .literal_separator(true)
        .backslash_escape(true)
        .empty_alternates(true)
        .build()
        .map_err(|e| e.kind().to_string())
}

impl Filter {
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Filter, String> {
        let mut rules = Vec::new();
        for pat in patterns {
            rules.push(Self::rule(pat.as_ref())?);
        }
        Ok(Filter { rules })
    }

    /// Validate one pattern (for `check`).
    pub fn check_pattern(p: &str) -> Result<(), String> {
        Self::rule(p).map(|_| ())
    }

    fn rule(raw: &str) -> Result<Rule, String> {
        let err = |m: String| format!("bad exclude pattern {raw:?}: {m}");
        if raw.is_empty() || raw == "/" {
            return Err(err("empty pattern".into()));
        }
        let (p, dir_only) = match raw.strip_suffix('/') {
            Some(p) => (p, true),
            None => (raw, false),
        };
        let (p, anchored) = match p.strip_prefix('/') {
            Some(p) => (p, true),
            None => (p, false),
        };
        if p.is_empty() {
            return Err(err("empty pattern".into()));
        }
        let basename = !anchored && !p.contains('/') && !p.contains("**");
        let full = if basename || anchored {
            p.to_string()
        } else {
            format!("{{{p},**/{p}}}")
        };
        let matcher = glob(&full).map_err(err)?.compile_matcher();
        Ok(Rule {
            matcher,
            dir_only,
            basename,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Is the entry at `rel` (relative to the root, no leading `/`) excluded?
    /// Callers do not descend into excluded directories, so only the entry
    /// itself is tested here, not its parents.
    pub fn excluded(&self, rel: &Path, is_dir: bool) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        let name = rel.file_name().map(Path::new);
        self.rules.iter().any(|r| {
            if r.dir_only && !is_dir {
                return false;
            }
            if r.basename {
                name.is_some_and(|n| r.matcher.is_match(n))
            } else {
                r.matcher.is_match(rel)
            }
        })
    }

    /// Is `rel` or any of its parent directories excluded?
    pub fn excluded_with_parents(&self, rel: &Path, is_dir: bool) -> bool {
        let mut cur = Some(rel);
        let mut dir = is_dir;
        while let Some(p) = cur {
            if p.as_os_str().is_empty() {
                break;
            }
            if self.excluded(p, dir) {
                return true;
            }
            cur = p.parent();
            dir = true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(p: &[&str]) -> Filter {
        Filter::new(p).unwrap()
    }

    #[test]
    fn basename_patterns_match_at_any_depth() {
        let x = f(&["*.gz", "*.svn"]);
        assert!(x.excluded(Path::new("a.gz"), false));
        assert!(x.excluded(Path::new("d/e/a.gz"), false));
        assert!(
            x.excluded(Path::new("d/.svn"), true),
            "* matches the empty string"
        );
        assert!(x.excluded(Path::new("d/x.svn"), true));
        assert!(!x.excluded(Path::new("a.gzip"), false));
        assert!(!x.excluded(Path::new("gz/a"), false));
    }

    #[test]
    fn anchored_and_dir_only() {
        let x = f(&["/info/", "/static/"]);
        assert!(x.excluded(Path::new("info"), true));
        assert!(!x.excluded(Path::new("info"), false), "dir-only");
        assert!(!x.excluded(Path::new("app/info"), true), "anchored");
        assert!(x.excluded_with_parents(Path::new("static/css/a.css"), false));
        assert!(!x.excluded_with_parents(Path::new("app/static/a.css"), false));
    }

    #[test]
    fn inner_slash_matches_trailing_paths() {
        let x = f(&["cache/*.tmp"]);
        assert!(x.excluded(Path::new("cache/a.tmp"), false));
        assert!(x.excluded(Path::new("app/cache/a.tmp"), false));
        assert!(!x.excluded(Path::new("app/xcache/a.tmp"), false));
        assert!(
            !x.excluded(Path::new("cache/d/a.tmp"), false),
            "* stops at /"
        );
        let y = f(&["/logs/**"]);
        assert!(y.excluded(Path::new("logs/a/b/c"), false));
        assert!(!y.excluded(Path::new("x/logs/a"), false));
    }

    #[test]
    fn bad_patterns_are_errors() {
        assert!(Filter::new(&["a[b"]).is_err());
        assert!(Filter::new(&[""]).is_err());
        assert!(Filter::new(&["/"]).is_err());
    }
}
