//! Where a target's SSH connection goes, resolved as `ssh` resolves it:
//! the OpenSSH client configuration (`~/.ssh/config`, then
//! `/etc/ssh/ssh_config`; or `ssh.config: FILE`) evaluated by the system's
//! own `ssh -G` (Host, Match, Include, tokens exactly as OpenSSH), then the
//! job's `ssh:` keys on top.
//!
//! Invariants:
//! - The job's `ssh:` keys (and a user or port in the target) override the
//!   config file; `ssh.config: none` reads no file at all.
//! - `StrictHostKeyChecking no` from a config file is refused unless the job
//!   sets `ssh.strict_host_key_checking` itself: unknown keys are never
//!   accepted because of a file the job does not name.
//! - `~` is the `$HOME` syncjob runs with (as for its other defaults): when
//!   `$HOME` is not the account's home directory, the config read is
//!   `$HOME/.ssh/config` (through a private wrapper file that includes it
//!   and `/etc/ssh/ssh_config`), not the account's.
//! - What `ssh -G` prints is bounded (1 MiB) and every value is checked
//!   (port numbers, hop syntax). Without an `ssh` binary the files are read
//!   by `config_parse` (Host and Include, no Match).

use crate::settings::{HostKeyPolicy, SshConfigFile, SshOptions};
use crate::target::SshTarget;
use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot run `ssh -G {host}`: {source}")]
    Spawn {
        host: String,
        source: std::io::Error,
    },
    #[error("`ssh -G {host}` failed: {said}")]
    Failed { host: String, said: String },
    #[error("`ssh -G {host}` printed a bad {key}: {value:?}")]
    BadValue {
        host: String,
        key: &'static str,
        value: String,
    },
    #[error(
        "the OpenSSH config sets StrictHostKeyChecking no for {host}; syncjob does not accept \
         unknown host keys because of a config file: set ssh.strict_host_key_checking in the job \
         (strict, accept-new, or no to accept it)"
    )]
    StrictNo { host: String },
    #[error("bad ProxyJump hop {0:?}: expected [user@]host[:port] or ssh://[user@]host[:port]")]
    BadHop(String),
    #[error("cannot write the config wrapper for $HOME: {0}")]
    Wrapper(std::io::Error),
}

/// One host to connect to: the final target or a jump host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// the name as written (target or ProxyJump)
    pub alias: String,
    /// `HostName`: where the TCP connection goes, and the name host keys are
    /// looked up under
    pub host: String,
    pub user: String,
    pub port: u16,
    /// keys to try, in order (files that do not exist are skipped)
    pub identities: Vec<PathBuf>,
    /// the job named the key (`ssh.identity`): it must exist
    pub identity_given: bool,
    /// `IdentitiesOnly yes`: no ssh-agent
    pub identities_only: bool,
    /// `CertificateFile`s, in order (offered with the keys they certify)
    pub certificates: Vec<PathBuf>,
    /// known_hosts files read; unknown keys are added to the first
    pub known_hosts: Vec<PathBuf>,
    pub strict: HostKeyPolicy,
    pub connect_timeout: Duration,
}

/// The final host and the hops before it, in order.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub target: Hop,
    pub jump: Vec<Hop>,
    /// `-F FILE` for `ssh` (the same file `ssh -G` read), if any
    pub config_args: Vec<OsString>,
    /// the user's config sets a `ControlPath` for the target (their own
    /// connection sharing, left to ssh)
    pub user_control_path: bool,
    /// keeps the `$HOME` wrapper file alive while `ssh` may read it
    _wrapper: Option<Arc<tempfile::TempPath>>,
}

impl Resolved {
    /// `user@host:port via user@hop:port, …` for `check` and messages.
    pub fn describe(&self) -> String {
        let mut s = hop_label(&self.target);
        if self.target.alias != self.target.host {
            s = format!("{} = {s}", self.target.alias);
        }
        if !self.jump.is_empty() {
            let hops: Vec<String> = self.jump.iter().map(hop_label).collect();
            s.push_str(" via ");
            s.push_str(&hops.join(" -> "));
        }
        s
    }
}

/// The lines `syncjob check` prints for a job's SSH targets: how each one
/// resolves, or why it cannot (`Err`).
pub fn check_lines(
    targets: &[crate::target::Target],
    o: &SshOptions,
) -> Vec<Result<String, String>> {
    let client = match o.client {
        crate::settings::SshClient::Libssh2 => "libssh2",
        crate::settings::SshClient::OpenSsh => "openssh",
    };
    targets
        .iter()
        .filter_map(|t| match t {
            crate::target::Target::Ssh(st) => Some((t, st)),
            _ => None,
        })
        .map(|(t, st)| match resolve(st, o) {
            Ok(r) => Ok(format!("  {t}: {} (client {client})", r.describe())),
            Err(e) => Err(format!("  {t}: {e}")),
        })
        .collect()
}

fn hop_label(h: &Hop) -> String {
    if h.host.contains(':') {
        format!("{}@[{}]:{}", h.user, h.host, h.port)
    } else {
        format!("{}@{}:{}", h.user, h.host, h.port)
    }
}

/// Where `~` points: `$HOME`, else the account's home directory.
pub fn home() -> PathBuf {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| account_home().unwrap_or_else(|| PathBuf::from("/")))
}

fn account_home() -> Option<PathBuf> {
    // SAFETY: getpwuid returns a pointer to static storage or null; the
    // string is copied out at once.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() || (*pw).pw_dir.is_null() {
            return None;
        }
        let d = std::ffi::CStr::from_ptr((*pw).pw_dir);
        Some(PathBuf::from(
            std::ffi::OsStr::from_encoded_bytes_unchecked(d.to_bytes()),
        ))
    }
}

/// The `ssh` binary, if there is one on PATH.
pub fn ssh_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join("ssh"))
        .find(|p| p.is_file())
}

/// Resolve a target's host, user, port, keys and jump hosts.
pub fn resolve(t: &SshTarget, o: &SshOptions) -> Result<Resolved, ResolveError> {
    let Some(ssh) = ssh_binary() else {
        let files = match &o.config {
            SshConfigFile::None => return plain(t, o),
            SshConfigFile::File(f) => vec![f.clone()],
            SshConfigFile::Default => vec![
                home().join(".ssh/config"),
                PathBuf::from("/etc/ssh/ssh_config"),
            ],
        };
        // no `ssh -G` to ask: syncjob's own reader (see `config_parse`)
        let lookup = |host: &str, user: Option<&str>, port: Option<u16>| {
            let mut g = super::config_parse::read(&files, host, &home());
            if let Some(u) = user {
                g.insert("user".into(), vec![u.into()]);
            }
            if let Some(p) = port {
                g.insert("port".into(), vec![p.to_string()]);
            }
            Ok(g)
        };
        return resolve_with(t, o, &lookup, Vec::new(), None);
    };
    let (config_args, wrapper) = match &o.config {
        SshConfigFile::None => return plain(t, o),
        SshConfigFile::File(f) => (vec!["-F".into(), f.clone().into_os_string()], None),
        SshConfigFile::Default => default_config_args()?,
    };
    let lookup = |host: &str, user: Option<&str>, port: Option<u16>| {
        ssh_g(&ssh, &config_args, host, user, port)
    };
    resolve_with(t, o, &lookup, config_args.clone(), wrapper)
}

/// A host's settings: (host, user, port given) → `ssh -G`'s lines.
type Lookup<'a> = dyn Fn(&str, Option<&str>, Option<u16>) -> Result<HashMap<String, Vec<String>>, ResolveError>
    + 'a;

fn resolve_with(
    t: &SshTarget,
    o: &SshOptions,
    lookup: &Lookup,
    config_args: Vec<OsString>,
    wrapper: Option<tempfile::TempPath>,
) -> Result<Resolved, ResolveError> {
    let g = lookup(&t.host, t.user.as_deref(), t.port.or(o.port))?;
    let target = hop_from(&g, &t.host, o, true)?;
    let user_control_path = first(&g, "controlpath").is_some_and(|p| p != "none");
    let jump_spec = match &o.proxy_jump {
        Some(j) if j == "none" => None,
        Some(j) => Some(j.clone()),
        None => g
            .get("proxyjump")
            .and_then(|v| v.first())
            .filter(|v| v.as_str() != "none")
            .cloned(),
    };
    let mut jump = Vec::new();
    for (user, host, port) in parse_jump(jump_spec.as_deref().unwrap_or(""))? {
        let g = lookup(&host, user.as_deref(), port)?;
        jump.push(hop_from(&g, &host, o, false)?);
    }
    Ok(Resolved {
        target,
        jump,
        config_args,
        user_control_path,
        _wrapper: wrapper.map(Arc::new),
    })
}

/// Without a config file: the target and the job's keys only.
fn plain(t: &SshTarget, o: &SshOptions) -> Result<Resolved, ResolveError> {
    let mut g: HashMap<String, Vec<String>> = HashMap::new();
    g.insert("hostname".into(), vec![t.host.clone()]);
    if let Some(u) = &t.user {
        g.insert("user".into(), vec![u.clone()]);
    }
    if let Some(p) = t.port.or(o.port) {
        g.insert("port".into(), vec![p.to_string()]);
    }
    let target = hop_from(&g, &t.host, o, true)?;
    let mut jump = Vec::new();
    for (user, host, port) in parse_jump(
        o.proxy_jump
            .as_deref()
            .filter(|j| *j != "none")
            .unwrap_or(""),
    )? {
        let mut g: HashMap<String, Vec<String>> = HashMap::new();
        g.insert("hostname".into(), vec![host.clone()]);
        if let Some(u) = user {
            g.insert("user".into(), vec![u]);
        }
        if let Some(p) = port {
            g.insert("port".into(), vec![p.to_string()]);
        }
        jump.push(hop_from(&g, &host, o, false)?);
    }
    Ok(Resolved {
        target,
        jump,
        config_args: vec!["-F".into(), "none".into()],
        user_control_path: false,
        _wrapper: None,
    })
}

/// With `$HOME` the account's home: nothing (ssh reads its usual files).
/// Else a private wrapper file including `$HOME/.ssh/config` and the system
/// file, in OpenSSH's order.
fn default_config_args() -> Result<(Vec<OsString>, Option<tempfile::TempPath>), ResolveError> {
    use std::io::Write;
    let home = home();
    let same = match (account_home(), std::fs::canonicalize(&home)) {
        (Some(a), Ok(h)) => std::fs::canonicalize(&a).is_ok_and(|a| a == h),
        _ => false,
    };
    if same {
        return Ok((Vec::new(), None));
    }
    let quote = |p: &Path| format!("\"{}\"", p.display().to_string().replace('"', ""));
    let mut f = tempfile::Builder::new()
        .prefix("syncjob-ssh-config.")
        .tempfile()
        .map_err(ResolveError::Wrapper)?;
    write!(
        f,
        "Include {}\nInclude /etc/ssh/ssh_config\n",
        quote(&home.join(".ssh/config"))
    )
    .map_err(ResolveError::Wrapper)?;
    let path = f.into_temp_path();
    Ok((
        vec!["-F".into(), path.to_path_buf().into_os_string()],
        Some(path),
    ))
}

/// Run `ssh -G` for one host; its `key value…` lines by lower-case key.
fn ssh_g(
    ssh: &Path,
    config_args: &[OsString],
    host: &str,
    user: Option<&str>,
    port: Option<u16>,
) -> Result<HashMap<String, Vec<String>>, ResolveError> {
    let mut c = Command::new(ssh);
    c.arg("-G").args(config_args);
    if let Some(u) = user {
        c.arg("-l").arg(u);
    }
    if let Some(p) = port {
        c.arg("-p").arg(p.to_string());
    }
    c.arg("--").arg(host);
    c.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let spawn = |source| ResolveError::Spawn {
        host: host.into(),
        source,
    };
    let mut child = c.spawn().map_err(spawn)?;
    let mut out = Vec::new();
    let mut err = Vec::new();
    let stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let _ = stderr.by_ref().take(64 << 10).read_to_end(&mut err);
        err
    });
    let r = stdout.take(1 << 20).read_to_end(&mut out);
    let status = child.wait().map_err(spawn)?;
    let err = reader.join().unwrap_or_default();
    r.map_err(spawn)?;
    if !status.success() {
        return Err(ResolveError::Failed {
            host: host.into(),
            said: String::from_utf8_lossy(&err).trim().to_string(),
        });
    }
    let mut g: HashMap<String, Vec<String>> = HashMap::new();
    for line in String::from_utf8_lossy(&out).lines() {
        if let Some((k, v)) = line.split_once(' ') {
            g.entry(k.to_ascii_lowercase())
                .or_default()
                .push(v.to_string());
        }
    }
    Ok(g)
}

fn first<'a>(g: &'a HashMap<String, Vec<String>>, k: &str) -> Option<&'a str> {
    g.get(k).and_then(|v| v.first()).map(String::as_str)
}

/// `~/x` → `$HOME/x`; a path under the account's home (as `ssh -G` expands
/// `~`) → the same under `$HOME`.
fn expand(p: &str) -> PathBuf {
    let home = home();
    if let Some(rest) = p.strip_prefix("~/") {
        return home.join(rest);
    }
    if let Some(a) = account_home()
        && a != home
        && let Ok(rest) = Path::new(p).strip_prefix(&a)
    {
        return home.join(rest);
    }
    PathBuf::from(p)
}

/// The job's known_hosts, else the config's UserKnownHostsFile list.
fn known_hosts_of(g: &HashMap<String, Vec<String>>, o: &SshOptions) -> Vec<PathBuf> {
    match &o.known_hosts {
        Some(k) => vec![k.clone()],
        None => match g.get("userknownhostsfile") {
            Some(v) => v
                .iter()
                .flat_map(|l| l.split_whitespace())
                .filter(|p| *p != "none")
                .map(expand)
                .collect(),
            None => vec![home().join(".ssh/known_hosts")],
        },
    }
}

/// The job's policy, else the config's (whose `no` is refused).
fn strict_of(
    g: &HashMap<String, Vec<String>>,
    o: &SshOptions,
    alias: &str,
) -> Result<HostKeyPolicy, ResolveError> {
    Ok(match o.strict_host_key_checking {
        Some(s) => s,
        None => match first(g, "stricthostkeychecking") {
            Some("accept-new") => HostKeyPolicy::AcceptNew,
            Some("no") | Some("off") | Some("false") => {
                return Err(ResolveError::StrictNo { host: alias.into() });
            }
            _ => HostKeyPolicy::Strict,
        },
    })
}

/// One hop from `ssh -G`'s values (or the plain ones) and the job's keys.
fn hop_from(
    g: &HashMap<String, Vec<String>>,
    alias: &str,
    o: &SshOptions,
    is_target: bool,
) -> Result<Hop, ResolveError> {
    let bad = |key, value: &str| ResolveError::BadValue {
        host: alias.into(),
        key,
        value: value.into(),
    };
    let host = first(g, "hostname").unwrap_or(alias).to_string();
    let user = first(g, "user")
        .map(String::from)
        .unwrap_or_else(super::session::local_user);
    let port = match first(g, "port") {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("port", p))?,
        None => 22,
    };
    let mut identities: Vec<PathBuf> = g
        .get("identityfile")
        .map(|v| v.iter().map(|p| expand(p)).collect())
        .unwrap_or_else(|| {
            ["id_ed25519", "id_rsa"]
                .iter()
                .map(|n| home().join(".ssh").join(n))
                .collect()
        });
    // the job's key first (and alone for the target itself)
    let identity_given = is_target && o.identity.is_some();
    if let Some(k) = &o.identity {
        if is_target {
            identities.clear();
        }
        identities.insert(0, k.clone());
    }
    let identities_only = first(g, "identitiesonly") == Some("yes");
    let certificates = g
        .get("certificatefile")
        .map(|v| v.iter().map(|p| expand(p)).collect())
        .unwrap_or_default();
    let known_hosts = known_hosts_of(g, o);
    let strict = strict_of(g, o, alias)?;
    let connect_timeout = match (o.timeout, first(g, "connecttimeout")) {
        (Some(t), _) => t,
        (None, Some(v)) if v != "none" => Duration::from_secs(
            v.parse::<u64>()
                .map_err(|_| bad("connecttimeout", v))?
                .min(3600),
        ),
        _ => o.timeout(),
    };
    Ok(Hop {
        alias: alias.into(),
        host,
        user,
        port,
        identities,
        identity_given,
        identities_only,
        certificates,
        known_hosts,
        strict,
        connect_timeout,
    })
}

/// A hop of a `ProxyJump` list: (user, host, port).
type HopSpec = (Option<String>, String, Option<u16>);

/// `[user@]host[:port]` or `ssh://[user@]host[:port]`, comma-separated
/// (at most 8 hops).
pub fn parse_jump(s: &str) -> Result<Vec<HopSpec>, ResolveError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || ResolveError::BadHop(part.into());
        let rest = part.strip_prefix("ssh://").unwrap_or(part);
        let (user, hp) = match rest.rsplit_once('@') {
            Some((u, hp)) if !u.is_empty() => (Some(u.to_string()), hp),
            Some(_) => return Err(bad()),
            None => (None, rest),
        };
        let (host, port) = if let Some(r) = hp.strip_prefix('[') {
            let (h, after) = r.split_once(']').ok_or_else(bad)?;
            match after.strip_prefix(':') {
                Some(p) => (h, Some(p)),
                None if after.is_empty() => (h, None),
                None => return Err(bad()),
            }
        } else {
            match hp.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hp, None),
            }
        };
        let port = match port {
            Some(p) => Some(p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?),
            None => None,
        };
        if host.is_empty() || host.starts_with('-') || host.contains(['/', ' ']) {
            return Err(bad());
        }
        out.push((user, host.to_string(), port));
        if out.len() > 8 {
            return Err(bad());
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_hops() {
        assert_eq!(
            parse_jump("bast, u@b2:2222,ssh://x@[::1]:23").unwrap(),
            vec![
                (None, "bast".into(), None),
                (Some("u".into()), "b2".into(), Some(2222)),
                (Some("x".into()), "::1".into(), Some(23)),
            ]
        );
        assert!(parse_jump("").unwrap().is_empty());
        for bad in ["@h", "h:0", "h:x", "-oProxyCommand=x", "[::1", "a b"] {
            assert!(parse_jump(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn plain_uses_the_target_and_the_job() {
        let t = SshTarget {
            user: Some("deploy".into()),
            host: "web3".into(),
            port: None,
            path: "/srv".into(),
            ssh: None,
        };
        let o = SshOptions {
            config: SshConfigFile::None,
            port: Some(2200),
            proxy_jump: Some("b@bast:2022".into()),
            ..Default::default()
        };
        let r = resolve(&t, &o).unwrap();
        assert_eq!(r.target.host, "web3");
        assert_eq!(r.target.port, 2200);
        assert_eq!(r.jump.len(), 1);
        assert_eq!(r.describe(), "deploy@web3:2200 via b@bast:2022");
    }

    #[test]
    fn config_file_through_ssh_g() {
        if ssh_binary().is_none() {
            eprintln!("skipped: no ssh binary");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("config");
        std::fs::write(
            &cfg,
            "Host web3\n  HostName 127.0.0.9\n  User deploy\n  Port 2222\n  IdentityFile /k/one\n  \
             IdentityFile /k/two\n  ProxyJump jb\n  ConnectTimeout 7\n\
             Host jb\n  HostName 127.0.0.8\n  User ops\n\
             Host loose\n  StrictHostKeyChecking no\n",
        )
        .unwrap();
        let t = |h: &str| SshTarget {
            user: None,
            host: h.into(),
            port: None,
            path: "/srv".into(),
            ssh: None,
        };
        let o = SshOptions {
            config: SshConfigFile::File(cfg),
            ..Default::default()
        };
        let r = resolve(&t("web3"), &o).unwrap();
        assert_eq!(
            (
                r.target.host.as_str(),
                r.target.user.as_str(),
                r.target.port
            ),
            ("127.0.0.9", "deploy", 2222)
        );
        assert_eq!(
            r.target.identities,
            vec![PathBuf::from("/k/one"), PathBuf::from("/k/two")]
        );
        assert_eq!(r.target.connect_timeout, Duration::from_secs(7));
        assert_eq!(
            r.describe(),
            "web3 = deploy@127.0.0.9:2222 via ops@127.0.0.8:22"
        );
        // the job's keys win
        let o2 = SshOptions {
            port: Some(2), // job's port
            proxy_jump: Some("none".into()),
            ..o.clone()
        };
        let r = resolve(&t("web3"), &o2).unwrap();
        assert_eq!(r.target.port, 2);
        assert!(r.jump.is_empty());
        // StrictHostKeyChecking no only when the job says so
        let e = resolve(&t("loose"), &o).unwrap_err().to_string();
        assert!(e.contains("StrictHostKeyChecking no"), "{e}");
        let o3 = SshOptions {
            strict_host_key_checking: Some(HostKeyPolicy::No),
            ..o
        };
        assert_eq!(
            resolve(&t("loose"), &o3).unwrap().target.strict,
            HostKeyPolicy::No
        );
    }
}
