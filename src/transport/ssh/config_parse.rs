//! A small reader of OpenSSH client config files, for hosts without an
//! `ssh` binary (where `ssh -G` cannot be asked). It gives what `ssh -G`
//! would print for the keys syncjob uses, lower-cased.
//!
//! Supported: `Host` patterns (`*`, `?`, `!negation`, several per line),
//! `Include` (absolute, or relative to `~/.ssh`; `*`/`?` in the file
//! name), the first value of a key wins except `IdentityFile` and
//! `UserKnownHostsFile`, which accumulate; `%h` (the alias) and `%%` in
//! HostName; `key=value` and quoted values. Not supported: `Match` blocks
//! (skipped up to the next `Host`), `CanonicalizeHostname` and other tokens.
//!
//! Invariants: each file is read up to 1 MiB, `Include` nests at most 8
//! deep and adds at most 256 files; a file that cannot be read is skipped
//! (as ssh skips a missing include).

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

const KEYS: &[&str] = &[
    "hostname",
    "user",
    "port",
    "identityfile",
    "userknownhostsfile",
    "stricthostkeychecking",
    "proxyjump",
    "connecttimeout",
    "identitiesonly",
    "certificatefile",
];
const MAX_FILE: u64 = 1 << 20;
const MAX_DEPTH: usize = 8;
const MAX_FILES: usize = 256;

/// `*` and `?` glob match (ssh's `match_pattern`).
fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) if a.eq_ignore_ascii_case(b) => glob(&p[1..], &s[1..]),
        _ => false,
    }
}

/// A `Host` line's patterns against the alias: a negated match vetoes.
fn host_matches(patterns: &[String], alias: &str) -> bool {
    let mut hit = false;
    for p in patterns {
        if let Some(neg) = p.strip_prefix('!') {
            if glob(neg.as_bytes(), alias.as_bytes()) {
                return false;
            }
        } else if glob(p.as_bytes(), alias.as_bytes()) {
            hit = true;
        }
    }
    hit
}

/// Split a line into keyword and arguments (`key value`, `key=value`,
/// double-quoted arguments).
fn words(line: &str) -> Option<(String, Vec<String>)> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (k, rest) = match line.find(|c: char| c.is_whitespace() || c == '=') {
        Some(i) => (
            &line[..i],
            line[i..].trim_start_matches(|c: char| c.is_whitespace() || c == '='),
        ),
        None => (line, ""),
    };
    let mut args = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in rest.chars() {
        match c {
            '"' => quoted = !quoted,
            c if c.is_whitespace() && !quoted => {
                if !cur.is_empty() {
                    args.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        args.push(cur);
    }
    Some((k.to_ascii_lowercase(), args))
}

struct Reader<'a> {
    alias: &'a str,
    home: &'a Path,
    out: HashMap<String, Vec<String>>,
    files: usize,
}

impl Reader<'_> {
    fn file(&mut self, path: &Path, depth: usize) {
        if depth > MAX_DEPTH || self.files >= MAX_FILES {
            return;
        }
        self.files += 1;
        let mut text = String::new();
        let Ok(f) = std::fs::File::open(path) else {
            return;
        };
        if f.take(MAX_FILE).read_to_string(&mut text).is_err() {
            return;
        }
        // before any Host line, settings apply to every host
        let mut active = true;
        for line in text.lines() {
            let Some((k, args)) = words(line) else {
                continue;
            };
            match k.as_str() {
                "host" => active = host_matches(&args, self.alias),
                "match" => active = false,
                "include" if active => {
                    for a in &args {
                        self.include(a, depth);
                    }
                }
                _ if active && KEYS.contains(&k.as_str()) && !args.is_empty() => {
                    let many =
                        k == "identityfile" || k == "userknownhostsfile" || k == "certificatefile";
                    let e = self.out.entry(k.clone()).or_default();
                    if many {
                        e.extend(args.iter().cloned());
                    } else if e.is_empty() {
                        let v = args.join(" ");
                        let v = if k == "hostname" {
                            v.replace("%h", self.alias).replace("%%", "%")
                        } else {
                            v
                        };
                        e.push(v);
                    }
                }
                _ => {}
            }
        }
    }

    fn include(&mut self, pattern: &str, depth: usize) {
        let p = match pattern.strip_prefix("~/") {
            Some(rest) => self.home.join(rest),
            None if pattern.starts_with('/') => PathBuf::from(pattern),
            None => self.home.join(".ssh").join(pattern),
        };
        let (Some(dir), Some(name)) = (p.parent(), p.file_name()) else {
            return;
        };
        let name = name.to_string_lossy().into_owned();
        if !name.contains(['*', '?']) {
            return self.file(&p, depth + 1);
        }
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.path())
                    .filter(|f| {
                        f.file_name()
                            .is_some_and(|n| glob(name.as_bytes(), n.as_encoded_bytes()))
                    })
                    .take(MAX_FILES)
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        for f in found {
            self.file(&f, depth + 1);
        }
    }
}

/// What `files` (in order) say for `alias`.
pub fn read(files: &[PathBuf], alias: &str, home: &Path) -> HashMap<String, Vec<String>> {
    let mut r = Reader {
        alias,
        home,
        out: HashMap::new(),
        files: 0,
    };
    for f in files {
        r.file(f, 0);
    }
    r.out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_includes_first_value_wins() {
        let d = tempfile::tempdir().unwrap();
        let home = d.path();
        std::fs::create_dir_all(home.join(".ssh/conf.d")).unwrap();
        std::fs::write(
            home.join(".ssh/conf.d/a.conf"),
            "Host web*\n  Port 2222\n  IdentityFile ~/.ssh/two\n",
        )
        .unwrap();
        std::fs::write(
            home.join(".ssh/config"),
            "Include conf.d/*.conf\n\
             Host web3 !web4\n  HostName %h.example.org\n  User=deploy\n  IdentityFile ~/.ssh/one\n\
             Match host web3\n  User nobody\n\
             Host *\n  User fallback\n  Port 22\n  ProxyJump \"bast\"\n",
        )
        .unwrap();
        let g = read(&[home.join(".ssh/config")], "web3", home);
        assert_eq!(g["hostname"], vec!["web3.example.org"]);
        assert_eq!(g["user"], vec!["deploy"]);
        assert_eq!(g["port"], vec!["2222"]);
        assert_eq!(g["identityfile"], vec!["~/.ssh/two", "~/.ssh/one"]);
        assert_eq!(g["proxyjump"], vec!["bast"]);
        let g = read(&[home.join(".ssh/config")], "web4", home);
        assert_eq!(g["user"], vec!["fallback"]);
        assert!(!g.contains_key("hostname"));
        assert!(glob(b"w?b*", b"web3") && !glob(b"w?b", b"web3"));
    }
}
