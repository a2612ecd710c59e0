//! rsync daemon target strings: `rsync://[user@]host[:port]/module[/path]`
//! and `[user@]host::module[/path]` (`[v6]` hosts in brackets).
//!
//! Invariants of a parsed [`RsyncTarget`]: the module is a non-empty name
//! without `/`; the path inside the module is relative, without empty, `.`
//! or `..` components, and without a leading or trailing `/` (empty: the
//! module's root).

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsyncTarget {
    pub user: Option<String>,
    pub host: String,
    /// A port given in an `rsync://` URL; otherwise the job's `rsync.port`.
    pub port: Option<u16>,
    pub module: String,
    /// The directory inside the module ("" for its root).
    pub path: String,
}

impl RsyncTarget {
    /// The URL handed to `rsync`, ending in `/` (the directory's contents).
    pub fn url(&self, default_port: u16) -> String {
        let user = self
            .user
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let port = self.port.unwrap_or(default_port);
        let mut s = format!("rsync://{user}{}:{port}/{}/", self.host_part(), self.module);
        if !self.path.is_empty() {
            s.push_str(&self.path);
            s.push('/');
        }
        s
    }

    fn host_part(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl fmt::Display for RsyncTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let user = self
            .user
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default();
        let port = self.port.map(|p| format!(":{p}")).unwrap_or_default();
        write!(
            f,
            "rsync://{user}{}{port}/{}",
            self.host_part(),
            self.module
        )?;
        if !self.path.is_empty() {
            write!(f, "/{}", self.path)?;
        }
        Ok(())
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

fn valid_module(m: &str) -> bool {
    !m.is_empty()
        && m.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        && m != "."
        && m != ".."
}

/// Whether `s` is written as an rsync daemon target (then `Some`, parsed).
pub fn parse_target(s: &str) -> Option<Result<RsyncTarget, String>> {
    if let Some(rest) = s.strip_prefix("rsync://") {
        return Some(parse_url(rest));
    }
    // `[user@]host::module`: a `::` before any `/`, and not `[v6]:/path`
    let cut = match s.find("]::") {
        Some(i) if s.starts_with('[') || s.contains("@[") => i + 1,
        _ if s.starts_with('[') || s.contains("@[") => return None,
        _ => s.find("::")?,
    };
    if s[..cut].contains('/') {
        return None;
    }
    // an IPv6 address without brackets (`root@::1:/x`, `fe80::1:/x`): not a
    // module; the scp parser says what to write
    let module = s[cut + 2..].split('/').next().unwrap_or("");
    let host = s[..cut].rsplit_once('@').map_or(&s[..cut], |x| x.1);
    if module.contains(':') || host.is_empty() {
        return None;
    }
    Some(parse_parts(&s[..cut], None, &s[cut + 2..]))
}

fn parse_url(rest: &str) -> Result<RsyncTarget, String> {
    let (authority, path) = rest
        .split_once('/')
        .ok_or("an rsync:// target needs a module (rsync://host/module)")?;
    let (userhost, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(':') && (!h.starts_with('[') || h.ends_with(']')) => {
            let port = p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("bad port {p:?}"))?;
            (h, Some(port))
        }
        _ => (authority, None),
    };
    parse_parts(userhost, port, path)
}

fn parse_parts(userhost: &str, port: Option<u16>, modpath: &str) -> Result<RsyncTarget, String> {
    let (user, host) = match userhost.rsplit_once('@') {
        Some((u, h)) if valid_user(u) => (Some(u.to_string()), h),
        Some((u, _)) => return Err(format!("invalid user name {u:?}")),
        None => (None, userhost),
    };
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').ok_or("unclosed `[` in the host")?,
        None => host,
    };
    if !valid_host(host) || (host.contains(':') && !userhost.contains('[')) {
        return Err(format!("invalid host {host:?}"));
    }
    let modpath = modpath.trim_end_matches('/');
    let (module, path) = modpath.split_once('/').unwrap_or((modpath, ""));
    if module.is_empty() {
        return Err("the rsync module is missing (host::module or rsync://host/module)".into());
    }
    if !valid_module(module) {
        return Err(format!("invalid rsync module name {module:?}"));
    }
    if path
        .split('/')
        .any(|c| c == "." || c == ".." || (c.is_empty() && !path.is_empty()))
        || path.contains(['\0', '\n'])
    {
        return Err(format!(
            "the path inside the module must be relative, without `.`, `..` or `//` ({path:?})"
        ));
    }
    Ok(RsyncTarget {
        user,
        host: host.to_string(),
        port,
        module: module.to_string(),
        path: path.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(user: Option<&str>, host: &str, port: Option<u16>, m: &str, p: &str) -> RsyncTarget {
        RsyncTarget {
            user: user.map(String::from),
            host: host.into(),
            port,
            module: m.into(),
            path: p.into(),
        }
    }

    #[test]
    fn both_forms() {
        let ok = |s: &str| parse_target(s).unwrap().unwrap();
        assert_eq!(
            ok("192.168.17.101::tp5shop"),
            t(None, "192.168.17.101", None, "tp5shop", "")
        );
        assert_eq!(
            ok("root@web2::site/sub/dir/"),
            t(Some("root"), "web2", None, "site", "sub/dir")
        );
        assert_eq!(
            ok("rsync://sync@web2:874/site"),
            t(Some("sync"), "web2", Some(874), "site", "")
        );
        assert_eq!(
            ok("rsync://web2/site/a"),
            t(None, "web2", None, "site", "a")
        );
        assert_eq!(
            ok("rsync://[::1]:873/m"),
            t(None, "::1", Some(873), "m", "")
        );
        assert_eq!(ok("u@[::1]::m/x"), t(Some("u"), "::1", None, "m", "x"));
        assert_eq!(
            ok("rsync://sync@web2:874/site/a").url(873),
            "rsync://sync@web2:874/site/a/"
        );
        assert_eq!(ok("web2::site").url(873), "rsync://web2:873/site/");
    }

    #[test]
    fn not_rsync_forms() {
        for s in [
            "/srv/x",
            "host:/x",
            "[::1]:/srv",
            "./a::b",
            "ssh://h/x",
            "u@[::1]:/x",
        ] {
            assert!(parse_target(s).is_none(), "{s}");
        }
    }

    #[test]
    fn refused() {
        for s in [
            "rsync://host",
            "rsync://host/",
            "host::",
            "rsync://host/m/../x",
            "host::m/./x",
            "host::m//x",
            "rsync://host:0/m",
            "rsync://host:x/m",
            "bad host::m",
            "b@d@h::m",
            "rsync://h/m$/x",
        ] {
            assert!(
                matches!(parse_target(s), Some(Err(_))),
                "{s} should be refused"
            );
        }
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "rsync://sync@web2:874/site/a/b",
            "web2::site",
            "u@[::1]::m/x",
        ] {
            let a = parse_target(s).unwrap().unwrap();
            let b = parse_target(&a.to_string()).unwrap().unwrap();
            assert_eq!(a, b, "{s}");
        }
    }
}
