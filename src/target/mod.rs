//! Target strings: a local path, scp style `[user@]host:/path` (`[::1]:/path`),
//! `ssh://[user@]host[:port]/path`, or an rsync daemon module
//! (`rsync://[user@]host[:port]/module[/path]`, `[user@]host::module[/path]`,
//! parsed in `transport::rsyncd`).

use std::fmt;
use std::path::{Path, PathBuf};

pub mod rsync;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Local(PathBuf),
    Ssh(SshTarget),
    Rsync(rsync::RsyncTarget),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshTarget {
    pub user: Option<String>,
    pub host: String,
    /// A port given in an `ssh://` URL; scp-style targets take the job's `ssh.port`.
    pub port: Option<u16>,
    /// The directory on the remote host (absolute, or relative to the login directory).
    pub path: String,
    /// This target's own SSH settings (a target written as a map with
    /// `ssh:`), over the job's; `None`: the job's.
    pub ssh: Option<Box<crate::settings::SshOptions>>,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Local(p) => write!(f, "{}", p.display()),
            Target::Rsync(t) => write!(f, "{t}"),
            Target::Ssh(t) => {
                let host = if t.host.contains(':') {
                    format!("[{}]", t.host)
                } else {
                    t.host.clone()
                };
                let user = t
                    .user
                    .as_deref()
                    .map(|u| format!("{u}@"))
                    .unwrap_or_default();
                match t.port {
                    Some(p) => {
                        let sep = if t.path.starts_with('/') { "" } else { "/~/" };
                        write!(f, "ssh://{user}{host}:{p}{sep}{}", t.path)
                    }
                    None => write!(f, "{user}{host}:{}", t.path),
                }
            }
        }
    }
}

fn valid_host(h: &str) -> bool {
    !h.is_empty()
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':' | '%'))
}

fn valid_user(u: &str) -> bool {
    !u.is_empty()
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '$'))
}

fn split_user(s: &str) -> Result<(Option<String>, &str), String> {
    match s.rsplit_once('@') {
        Some((u, rest)) => {
            if !valid_user(u) {
                return Err(format!("invalid user name {u:?}"));
            }
            Ok((Some(u.to_string()), rest))
        }
        None => Ok((None, s)),
    }
}

/// Refuse a root that is `/` once `.`, `..` and empty components are
/// resolved (`/srv/..`, `/srv/site/../../`), and a relative remote path
/// that climbs above the login directory (`..`, `../..`: where it lands
/// is not known here).
fn check_root(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the target path is empty".into());
    }
    let norm = crate::guards::lexical(Path::new(path));
    if norm == Path::new("/") {
        return Err(
            "a target root of `/` is refused (it would mirror over the whole file system; `..` and `.` are resolved first)".into(),
        );
    }
    if norm.starts_with("..") {
        return Err(
            "a relative target path may not climb above its base with `..`; give an absolute path"
                .into(),
        );
    }
    Ok(())
}

/// `~/dir` (and `~`) on a remote host: the login directory, as scp and
/// rsync read it; the path is then relative (SFTP and the remote shell
/// start there). `~user/` is refused.
fn remote_home(path: &str) -> Result<&str, String> {
    match path {
        "~" | "~/" => Ok("."),
        p if p.starts_with("~/") => Ok(&p[2..]),
        p if p.starts_with('~') => Err(format!(
            "`{p}`: only `~/` (the login directory) is understood, not `~user`; write the full path"
        )),
        p => Ok(p),
    }
}

/// Parse a target string. Relative local paths are resolved against `base`
/// (the directory of the jobs file).
pub fn parse(s: &str, base: &Path) -> Result<Target, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("the target is empty".into());
    }
    if let Some(t) = rsync::parse_target(s) {
        return t.map(Target::Rsync).map_err(|e| format!("{s:?}: {e}"));
    }
    if let Some(rest) = s.strip_prefix("ssh://") {
        return parse_url(s, rest);
    }
    if let Some((scheme, _)) = s.split_once("://")
        && !scheme.is_empty()
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '+')
    {
        return Err(format!(
            "{s:?}: unsupported URL scheme (use a local path, [user@]host:/path, ssh://[user@]host[:port]/path or rsync://[user@]host[:port]/module[/path])"
        ));
    }
    // scp style: a colon before the first slash. `[v6]:/path` too.
    if let Some(v6) = s.strip_prefix('[').or_else(|| {
        // user@[v6]:/path
        s.split_once("@[").map(|(_, r)| r)
    }) {
        return parse_scp_v6(s, v6);
    }
    let colon = s.find(':');
    let slash = s.find('/');
    if let Some(c) = colon
        && slash.is_none_or(|sl| c < sl)
    {
        return parse_scp(s, c, slash);
    }
    if let Some(first) = s.split('/').next()
        && let Some((u, h)) = first.split_once('@')
        && !u.is_empty()
        && !h.is_empty()
    {
        return Err(format!(
            "{s:?} looks like a remote target without `:` after the host; write {first}:/{} (or ./{s} for a local directory)",
            &s[first.len()..].trim_start_matches('/')
        ));
    }
    let p = Path::new(s);
    let p = if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    };
    // a local path is checked once made absolute (`../..` from the jobs
    // file's directory may be `/`), lexically here, resolved (symlinks)
    // against the source in `config`
    check_root(&p.to_string_lossy()).map_err(|e| format!("{s:?}: {e}"))?;
    Ok(Target::Local(p))
}

/// `ssh://[user@]host[:port]/path` (`rest`: after the scheme).
fn parse_url(s: &str, rest: &str) -> Result<Target, String> {
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => {
            return Err(format!(
                "{s:?}: an ssh:// target needs a path (ssh://host/path)"
            ));
        }
    };
    let path = path.strip_prefix("/~/").unwrap_or(path);
    let (user, hostport) = split_user(authority).map_err(|e| format!("{s:?}: {e}"))?;
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: unclosed `[` in the host"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or_else(|| format!("{s:?}: bad port"))?,
            ),
        };
        (h, port)
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let port = match port {
        None => None,
        Some(p) => Some(
            p.parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("{s:?}: bad port {p:?}"))?,
        ),
    };
    if !valid_host(host) {
        return Err(format!("{s:?}: invalid host {host:?}"));
    }
    check_root(path).map_err(|e| format!("{s:?}: {e}"))?;
    Ok(Target::Ssh(SshTarget {
        user,
        host: host.to_string(),
        port,
        path: path.to_string(),
        ssh: None,
    }))
}

/// `[v6]:/path` or `user@[v6]:/path` (`v6`: after the `[`).
fn parse_scp_v6(s: &str, v6: &str) -> Result<Target, String> {
    let user = if s.starts_with('[') {
        None
    } else {
        let (u, _) = s.split_once("@[").unwrap();
        if !valid_user(u) {
            return Err(format!("{s:?}: invalid user name {u:?}"));
        }
        Some(u.to_string())
    };
    let (host, after) = v6
        .split_once(']')
        .ok_or_else(|| format!("{s:?}: unclosed `[` in the host"))?;
    let path = after
        .strip_prefix(':')
        .ok_or_else(|| format!("{s:?}: expected `:` and a path after `]`"))?;
    if !valid_host(host) {
        return Err(format!("{s:?}: invalid host {host:?}"));
    }
    check_root(path).map_err(|e| format!("{s:?}: {e}"))?;
    Ok(Target::Ssh(SshTarget {
        user,
        host: host.to_string(),
        port: None,
        path: path.to_string(),
        ssh: None,
    }))
}

/// `[user@]host:path`, the colon at `c` (before the first slash, if any).
fn parse_scp(s: &str, c: usize, slash: Option<usize>) -> Result<Target, String> {
    let (userhost, path) = (&s[..c], &s[c + 1..]);
    let before_slash = &s[..slash.unwrap_or(s.len())];
    if before_slash.matches(':').count() >= 2 && !path.starts_with(':')
        || userhost.ends_with('@')
        || (path.starts_with(':') && before_slash.matches(':').count() > 2)
    {
        let (u, rest) = before_slash.rsplit_once('@').unwrap_or(("", before_slash));
        let at = if u.is_empty() { "" } else { "@" };
        let host = rest.rsplit_once(':').map(|x| x.0).unwrap_or(rest);
        return Err(format!(
            "{s:?}: an IPv6 address needs brackets: write {u}{at}[{host}]:{}",
            &s[before_slash.len()..]
        ));
    }
    let (user, host) = split_user(userhost).map_err(|e| format!("{s:?}: {e}"))?;
    if !valid_host(host) {
        return Err(format!("{s:?}: invalid host {host:?}"));
    }
    let path = remote_home(path).map_err(|e| format!("{s:?}: {e}"))?;
    check_root(path).map_err(|e| format!("{s:?}: {e}"))?;
    Ok(Target::Ssh(SshTarget {
        user,
        host: host.to_string(),
        port: None,
        path: path.to_string(),
        ssh: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(user: Option<&str>, host: &str, port: Option<u16>, path: &str) -> Target {
        Target::Ssh(SshTarget {
            user: user.map(String::from),
            host: host.into(),
            port,
            path: path.into(),
            ssh: None,
        })
    }

    #[test]
    fn all_contract_forms() {
        let b = Path::new("/etc/syncjob");
        assert_eq!(
            parse("/srv/copy", b).unwrap(),
            Target::Local("/srv/copy".into())
        );
        assert_eq!(
            parse("copy", b).unwrap(),
            Target::Local("/etc/syncjob/copy".into())
        );
        assert_eq!(
            parse("root@192.168.17.101:/usr/local/nginx/html/tp5shop", b).unwrap(),
            ssh(
                Some("root"),
                "192.168.17.101",
                None,
                "/usr/local/nginx/html/tp5shop"
            )
        );
        assert_eq!(
            parse("web2:/srv/x", b).unwrap(),
            ssh(None, "web2", None, "/srv/x")
        );
        assert_eq!(
            parse("[::1]:/srv/x", b).unwrap(),
            ssh(None, "::1", None, "/srv/x")
        );
        assert_eq!(
            parse("deploy@[::1]:/srv/x", b).unwrap(),
            ssh(Some("deploy"), "::1", None, "/srv/x")
        );
        assert_eq!(
            parse("ssh://deploy@web3:2222/srv/tp5shop", b).unwrap(),
            ssh(Some("deploy"), "web3", Some(2222), "/srv/tp5shop")
        );
        assert_eq!(
            parse("ssh://[::1]:2200/srv", b).unwrap(),
            ssh(None, "::1", Some(2200), "/srv")
        );
        assert_eq!(
            parse("ssh://web3/srv", b).unwrap(),
            ssh(None, "web3", None, "/srv")
        );
    }

    #[test]
    fn refused_forms() {
        let b = Path::new("/");
        for bad in [
            "/",
            "//",
            "/./",
            "host:/",
            "ssh://host/",
            "[::1]:/",
            "ssh://host",
            "ssh://host:0/x",
            "ssh://host:99999/x",
            "rsync://host",
            "host::",
            "rsync://host/../x",
            "",
            "bad host:/x",
            "/srv/..",
            "web:/..",
            "ssh://web/../",
            "/srv/site/../../",
            "ssh://web:2222/srv/./../",
            "[::1]:/a/b/../..",
            "web:..",
            "web:a/../../b",
            "../../../../../../../../../..",
        ] {
            assert!(parse(bad, b).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn display_round_trips() {
        let b = Path::new("/");
        for s in [
            "root@web2:/srv/x",
            "ssh://deploy@web3:2222/srv/tp5shop",
            "/srv/copy",
            "[::1]:/srv",
        ] {
            let t = parse(s, b).unwrap();
            assert_eq!(parse(&t.to_string(), b).unwrap(), t, "{s}");
        }
    }

    #[test]
    fn near_misses_say_what_to_write() {
        let b = Path::new("/etc/syncjob");
        let err = |s: &str| parse(s, b).unwrap_err();
        let e = err("root@127.0.0.1/srv/x");
        assert!(e.contains("write root@127.0.0.1:/srv/x"), "{e}");
        let e = err("root@::1:/x");
        assert!(
            e.contains("IPv6 address needs brackets: write root@[::1]:/x"),
            "{e}"
        );
        let e = err("fe80::1:/x");
        assert!(e.contains("write [fe80::1]:/x"), "{e}");
        let e = err("root@host://");
        assert!(e.contains("a target root of `/` is refused"), "{e}");
        // `host::module` is an rsync daemon target (transport::rsyncd)
        assert!(matches!(parse("host::module", b), Ok(Target::Rsync(_))));
        let e = err("host:~bob/www");
        assert!(e.contains("~user"), "{e}");
        assert!(matches!(parse("rsync://host/x", b), Ok(Target::Rsync(_))));
    }

    #[test]
    fn tilde_is_the_remote_login_directory() {
        let b = Path::new("/");
        assert_eq!(
            parse("web:~/www", b).unwrap(),
            ssh(None, "web", None, "www")
        );
        assert_eq!(parse("web:~", b).unwrap(), ssh(None, "web", None, "."));
        assert_eq!(
            parse("ssh://web:2222/~/www", b).unwrap(),
            ssh(None, "web", Some(2222), "www")
        );
    }
}
