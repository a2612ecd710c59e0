//! One job's settings (its own merged over `defaults`) → a validated
//! [`Job`], section by section: source and targets, modes and flags,
//! schedule and zone, excludes, numbers, `ssh`, `rsync`, hooks. Every problem is
//! recorded at its value's position; a job with any problem is not built.
//! Relative paths are resolved against the directory of the file that
//! defines the job.

use super::raw::{Ctx, Raw};
use super::{
    Compare, DEFAULT_MAX_DELETE_PERCENT, Hooks, HostKeyPolicy, Job, Mode, Overlap, SshClient,
    SshConfigFile, SshOptions,
};
use crate::filter::Filter;
use crate::schedule::{self, Schedule};
use crate::target::{self, Target};
use crate::units::parse_duration;
use crate::yaml::{Kind, Node, Pos};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Typed reads of one job's raw settings, each problem reported once.
struct Reader<'r, 'n> {
    raw: &'r Raw<'n>,
    name: &'r str,
    base: &'r Path,
}

impl<'n> Reader<'_, 'n> {
    fn j(&self) -> Option<&str> {
        Some(self.name)
    }

    /// A job key's value, unless absent or null.
    fn f(&self, k: &str) -> Option<&'n Node> {
        self.raw.fields.get(k).copied().filter(|n| !n.is_null())
    }

    /// An `ssh` key's value, unless absent or null.
    fn s(&self, k: &str) -> Option<&'n Node> {
        self.raw.ssh.get(k).copied().filter(|n| !n.is_null())
    }

    fn string(&self, ctx: &mut Ctx, n: &Node, key: &str) -> Option<String> {
        match n.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                let msg = format!("`{key}` must be a string, found {}", n.type_name());
                ctx.err(n.pos, self.j(), msg);
                None
            }
        }
    }

    fn boolean(&self, ctx: &mut Ctx, key: &str, default: bool) -> bool {
        match self.f(key) {
            None => default,
            Some(n) => n.as_bool().unwrap_or_else(|| {
                let msg = format!("`{key}` must be true or false, found {}", n.type_name());
                ctx.err(n.pos, self.j(), msg);
                default
            }),
        }
    }

    fn number(&self, ctx: &mut Ctx, key: &str) -> Option<u64> {
        let n = self.f(key)?;
        n.as_u64().or_else(|| {
            let found = match (n.type_name(), n.scalar()) {
                ("a number", Some(v)) => v.to_string(),
                (t, _) => t.to_string(),
            };
            let msg = format!("`{key}` must be a whole number (0 or more), found {found}");
            ctx.err(n.pos, self.j(), msg);
            None
        })
    }

    fn duration(&self, ctx: &mut Ctx, n: &Node, key: &str) -> Option<Duration> {
        match parse_duration(n.scalar().unwrap_or("")) {
            Ok(d) => Some(d),
            Err(e) => {
                ctx.err(n.pos, self.j(), format!("`{key}`: {e}"));
                None
            }
        }
    }

    /// The index of the key's value among `options`.
    fn choice(&self, ctx: &mut Ctx, key: &str, options: &[&str]) -> Option<usize> {
        let n = self.f(key)?;
        let s = n.scalar().unwrap_or("");
        let found = options.iter().position(|o| *o == s);
        if found.is_none() {
            let msg = format!(
                "`{key}` must be one of {}, found {s:?}",
                options.join(" | ")
            );
            ctx.err(n.pos, self.j(), msg);
        }
        found
    }

    /// A path, relative ones resolved against the file's directory.
    fn path_of(&self, ctx: &mut Ctx, n: &Node, key: &str) -> Option<PathBuf> {
        let p = PathBuf::from(self.string(ctx, n, key)?);
        Some(if p.is_absolute() {
            p
        } else {
            self.base.join(p)
        })
    }

    /// One string or a list of strings.
    fn items(n: &'n Node) -> Vec<&'n Node> {
        match &n.kind {
            Kind::Seq(items) => items.iter().collect(),
            _ => vec![n],
        }
    }
}

/// Build one job from its merged settings; `None` when it has problems
/// (each recorded in `ctx`).
pub(super) fn build_job(ctx: &mut Ctx, name: &str, pos: Pos, r: &Raw, base: &Path) -> Option<Job> {
    let before = ctx.problems.len();
    let rd = Reader { raw: r, name, base };
    let source = source(ctx, &rd, pos);
    let targets = targets(ctx, &rd, pos);
    if let Some(src) = &source {
        check_overlap(ctx, &rd, pos, src, &targets);
    }
    let (mode, compare, overlap) = modes(ctx, &rd);
    let (schedule, timezone) = schedule_and_zone(ctx, &rd);
    let exclude = excludes(ctx, &rd);
    let filter = Filter::new(&exclude).unwrap_or_default();
    let rsync = rsync(ctx, &rd, &targets, pos);
    let mut job = Job {
        name: name.to_string(),
        pos,
        source: PathBuf::new(),
        targets,
        mode,
        delete: rd.boolean(ctx, "delete", false),
        schedule,
        timezone,
        exclude,
        filter,
        compare,
        retries: 3,
        retry_interval: None,
        verify_interval: Duration::from_secs(60),
        allow_empty_source: rd.boolean(ctx, "allow_empty_source", false),
        log_noop: rd.f("log_noop").map(|_| rd.boolean(ctx, "log_noop", true)),
        vanished_fail: rd.choice(ctx, "vanished", &["warn", "fail"]) == Some(1),
        max_delete: None,
        max_delete_percent: Some(DEFAULT_MAX_DELETE_PERCENT),
        preserve_owner: rd.boolean(ctx, "preserve_owner", false),
        overlap,
        catch_up: rd.boolean(ctx, "catch_up", false),
        parallel: 4,
        streams: 4,
        ssh: ssh(ctx, &rd),
        rsync,
        hooks: hooks(ctx, &rd),
        stale_after: rd
            .f("stale_after")
            .and_then(|n| rd.duration(ctx, n, "stale_after")),
        watch: rd.f("watch").and_then(|n| watch_options(ctx, n, rd.j())),
    };
    numbers(ctx, &rd, &mut job);
    if ctx.problems.len() > before {
        return None;
    }
    job.source = source?;
    Some(job)
}

/// `source`: a local directory.
fn source(ctx: &mut Ctx, rd: &Reader, pos: Pos) -> Option<PathBuf> {
    let Some(n) = rd.f("source") else {
        ctx.err(
            pos,
            rd.j(),
            "missing `source` (the local directory to mirror)",
        );
        return None;
    };
    let s = rd.string(ctx, n, "source")?;
    if s.contains("://") || (s.contains(':') && !s.starts_with('/') && !s.starts_with('.')) {
        let msg = format!("`source` must be a local directory, found {s:?}");
        ctx.err(n.pos, rd.j(), msg);
        return None;
    }
    let p = Path::new(&s);
    Some(if p.is_absolute() {
        p.to_path_buf()
    } else {
        rd.base.join(p)
    })
}

/// `remote`: one target or a list, none twice.
fn targets(ctx: &mut Ctx, rd: &Reader, pos: Pos) -> Vec<Target> {
    let mut targets = Vec::new();
    let Some(n) = rd.f("remote") else {
        ctx.err(
            pos,
            rd.j(),
            "missing `remote` (one target or a list of targets)",
        );
        return targets;
    };
    let items = Reader::items(n);
    if items.is_empty() {
        ctx.err(n.pos, rd.j(), "`remote` is an empty list");
    }
    for item in items {
        if matches!(item.kind, Kind::Map(_)) {
            if let Some(t) = target_map(ctx, rd, item) {
                if targets.iter().any(|x| x.to_string() == t.to_string()) {
                    ctx.err(
                        item.pos,
                        rd.j(),
                        format!("target {:?} is listed twice", t.to_string()),
                    );
                } else {
                    targets.push(t);
                }
            }
            continue;
        }
        let Some(s) = rd.string(ctx, item, "remote") else {
            continue;
        };
        match target::parse(&s, rd.base) {
            Ok(t) if targets.iter().any(|x| x.to_string() == t.to_string()) => {
                ctx.err(item.pos, rd.j(), format!("target {s:?} is listed twice"))
            }
            Ok(t) => targets.push(t),
            Err(e) => ctx.err(item.pos, rd.j(), format!("bad target: {e}")),
        }
    }
    targets
}

/// A target written as a map: `{url: TARGET, ssh: {...}}`; its `ssh` keys
/// are merged over the job's, key by key.
fn target_map(ctx: &mut Ctx, rd: &Reader, item: &Node) -> Option<Target> {
    let mut url = None;
    let mut own = rd.raw.clone();
    let mut has_ssh = false;
    for (k, v, _) in ctx.map(item, "a target", &["url", "ssh"], rd.j()) {
        if k == "url" {
            url = rd.string(ctx, v, "url");
        } else {
            has_ssh = true;
            for (sk, sv, _) in ctx.map(v, "a target's ssh", super::raw::SSH_KEYS, rd.j()) {
                own.ssh
                    .insert(super::raw::static_key(sk, super::raw::SSH_KEYS), sv);
            }
        }
    }
    let Some(url) = url else {
        ctx.err(item.pos, rd.j(), "a target written as a map needs `url`");
        return None;
    };
    let mut t = match target::parse(&url, rd.base) {
        Ok(t) => t,
        Err(e) => {
            ctx.err(item.pos, rd.j(), format!("bad target: {e}"));
            return None;
        }
    };
    match &mut t {
        Target::Ssh(st) if has_ssh => {
            let r = Reader {
                raw: &own,
                name: rd.name,
                base: rd.base,
            };
            st.ssh = Some(Box::new(ssh(ctx, &r)));
        }
        Target::Local(_) if has_ssh => {
            ctx.err(
                item.pos,
                rd.j(),
                format!("target {url:?} is local: `ssh` settings do not apply"),
            );
        }
        _ => {}
    }
    Some(t)
}

/// A local target inside the source, or around it, is refused.
fn check_overlap(ctx: &mut Ctx, rd: &Reader, pos: Pos, src: &Path, targets: &[Target]) {
    for t in targets {
        // `/` after resolving, or inside the source or around it after
        // resolving `..` and symlinks (see `guards`)
        if let Target::Local(p) = t
            && let Some(why) = crate::guards::local_target_refused(src, p)
        {
            ctx.err(pos, rd.j(), why);
        }
    }
}

/// `mode`, `compare`, `overlap`.
fn modes(ctx: &mut Ctx, rd: &Reader) -> (Mode, Compare, Overlap) {
    let mode = match rd.choice(ctx, "mode", &["incremental", "full"]) {
        Some(1) => Mode::Full,
        _ => Mode::Incremental,
    };
    let compare = match rd.choice(ctx, "compare", &["size_mtime", "checksum"]) {
        Some(1) => Compare::Checksum,
        _ => Compare::SizeMtime,
    };
    let overlap = match rd.choice(ctx, "overlap", &["skip", "queue"]) {
        Some(1) => Overlap::Queue,
        _ => Overlap::Skip,
    };
    (mode, compare, overlap)
}

/// `schedule` and `timezone`.
fn schedule_and_zone(ctx: &mut Ctx, rd: &Reader) -> (Option<Schedule>, Option<chrono_tz::Tz>) {
    let schedule = rd.f("schedule").and_then(|n| {
        let s = rd.string(ctx, n, "schedule")?;
        Schedule::parse(&s)
            .map_err(|e| ctx.err(n.pos, rd.j(), format!("bad schedule {s:?}: {e}")))
            .ok()
    });
    let timezone = rd.f("timezone").and_then(|n| {
        let s = rd.string(ctx, n, "timezone")?;
        schedule::parse_tz(&s)
            .map_err(|e| ctx.err(n.pos, rd.j(), e))
            .ok()
    });
    (schedule, timezone)
}

/// `exclude`: one pattern or a list, each checked.
fn excludes(ctx: &mut Ctx, rd: &Reader) -> Vec<String> {
    let mut exclude = Vec::new();
    for item in rd.f("exclude").map(Reader::items).unwrap_or_default() {
        if let Some(s) = rd.string(ctx, item, "exclude") {
            match Filter::check_pattern(&s) {
                Ok(()) => exclude.push(s),
                Err(e) => ctx.err(item.pos, rd.j(), e),
            }
        }
    }
    exclude
}

/// `retries`, `retry_interval`, `verify_interval`, `max_delete`,
/// `parallel`, `streams` (defaults already in `job`).
/// `max_delete: N` (at most N deletions, then the run fails) or `P%`
/// (a run that would delete more than P% of a target's entries deletes
/// nothing and fails; default 50%, `100%` lifts it).
fn max_delete(ctx: &mut Ctx, rd: &Reader, job: &mut Job) {
    let Some(n) = rd.f("max_delete") else {
        return;
    };
    if let Some(p) = n.scalar().and_then(|s| s.strip_suffix('%')) {
        match p.trim().parse::<u8>() {
            Ok(p) if p <= 100 => {
                job.max_delete_percent = Some(p);
                return;
            }
            _ => {
                let msg = format!(
                    "`max_delete` must be a whole number or a percentage from 0% to 100%, found {:?}",
                    n.scalar().unwrap_or("")
                );
                ctx.err(n.pos, rd.j(), msg);
                return;
            }
        }
    }
    job.max_delete = rd.number(ctx, "max_delete");
    if job.max_delete.is_some() {
        job.max_delete_percent = None;
    }
}

fn numbers(ctx: &mut Ctx, rd: &Reader, job: &mut Job) {
    job.retries = rd.number(ctx, "retries").unwrap_or(3).min(100) as u32;
    job.retry_interval = rd
        .f("retry_interval")
        .and_then(|n| rd.duration(ctx, n, "retry_interval"));
    if let Some(d) = rd
        .f("verify_interval")
        .and_then(|n| rd.duration(ctx, n, "verify_interval"))
    {
        job.verify_interval = d;
    }
    max_delete(ctx, rd, job);
    match rd.number(ctx, "parallel") {
        Some(0) => {
            let p = rd.f("parallel").unwrap().pos;
            ctx.err(p, rd.j(), "`parallel` must be at least 1");
        }
        Some(n) => job.parallel = n as usize,
        None => {}
    }
    match rd.number(ctx, "streams") {
        Some(n) if (1..=16).contains(&n) => job.streams = n as usize,
        Some(_) => {
            let p = rd.f("streams").unwrap().pos;
            ctx.err(p, rd.j(), "`streams` must be between 1 and 16");
        }
        None => {}
    }
}

/// The `rsync` section; for a job with rsync daemon targets, also what
/// keeps it from running (no `rsync` binary, a bad password file).
fn rsync(
    ctx: &mut Ctx,
    rd: &Reader,
    targets: &[Target],
    pos: Pos,
) -> crate::settings::RsyncOptions {
    let mut o = crate::settings::RsyncOptions::default();
    let s = |k: &str| rd.raw.rsync.get(k).copied().filter(|n| !n.is_null());
    let mut at = pos;
    if let Some(n) = s("password_file") {
        o.password_file = rd.path_of(ctx, n, "rsync.password_file");
        at = n.pos;
    }
    if let Some(n) = s("port") {
        match n.as_u64().filter(|p| (1..=65535).contains(p)) {
            Some(p) => o.port = p as u16,
            None => ctx.err(n.pos, rd.j(), "`rsync.port` must be a port number 1-65535"),
        }
    }
    if let Some(n) = s("timeout")
        && let Some(d) = rd.duration(ctx, n, "rsync.timeout")
    {
        o.timeout = d;
    }
    if targets.iter().any(|t| matches!(t, Target::Rsync(_))) {
        for problem in crate::settings::rsync::check(&o) {
            ctx.err(at, rd.j(), problem);
        }
    }
    o
}

/// The `ssh` section.
fn ssh(ctx: &mut Ctx, rd: &Reader) -> SshOptions {
    let mut ssh = SshOptions::default();
    if let Some(n) = rd.s("identity") {
        ssh.identity = rd.path_of(ctx, n, "ssh.identity");
    }
    if let Some(n) = rd.s("known_hosts") {
        ssh.known_hosts = rd.path_of(ctx, n, "ssh.known_hosts");
    }
    if let Some(n) = rd.s("global_known_hosts") {
        ssh.global_known_hosts = rd.path_of(ctx, n, "ssh.global_known_hosts");
    }
    if let Some(n) = rd.s("max_listing_entries") {
        match n.as_u64().filter(|v| *v >= 1) {
            Some(v) => ssh.max_listing_entries = v,
            None => ctx.err(
                n.pos,
                rd.j(),
                "`ssh.max_listing_entries` must be a whole number of at least 1",
            ),
        }
    }
    if let Some(n) = rd.s("password_file") {
        ssh.password_file = rd.path_of(ctx, n, "ssh.password_file");
    }
    if let Some(n) = rd.s("strict_host_key_checking") {
        match n.scalar() {
            Some("strict") | Some("yes") | Some("true") => {
                ssh.strict_host_key_checking = Some(HostKeyPolicy::Strict)
            }
            Some("accept-new") => ssh.strict_host_key_checking = Some(HostKeyPolicy::AcceptNew),
            Some("no") | Some("false") => ssh.strict_host_key_checking = Some(HostKeyPolicy::No),
            _ => ctx.err(
                n.pos,
                rd.j(),
                "`ssh.strict_host_key_checking` must be strict, accept-new or no",
            ),
        }
    }
    if let Some(n) = rd.s("port") {
        match n.as_u64().filter(|p| (1..=65535).contains(p)) {
            Some(p) => ssh.port = Some(p as u16),
            None => ctx.err(n.pos, rd.j(), "`ssh.port` must be a port number 1-65535"),
        }
    }
    if let Some(n) = rd.s("timeout")
        && let Some(d) = rd.duration(ctx, n, "ssh.timeout")
    {
        ssh.timeout = Some(d);
    }
    ssh_client(ctx, rd, &mut ssh);
    if let Some(n) = rd.s("remote_helper")
        && let Some(v) = rd.string(ctx, n, "ssh.remote_helper")
    {
        if v.trim().is_empty() || v.contains(['\n', '\0']) {
            ctx.err(
                n.pos,
                rd.j(),
                "`ssh.remote_helper` must be auto, none, or the path of syncjob on the remote host, e.g. /usr/bin/syncjob",
            );
        } else {
            ssh.remote_helper = (v != "auto").then_some(v);
        }
    }
    ssh
}

/// `ssh.config`, `ssh.client`, `ssh.proxy_jump`: how the target's host is
/// resolved and reached.
fn ssh_client(ctx: &mut Ctx, rd: &Reader, ssh: &mut SshOptions) {
    if let Some(n) = rd.s("config") {
        match n.as_str() {
            Some("none") => ssh.config = SshConfigFile::None,
            Some(v) if !v.trim().is_empty() => {
                ssh.config =
                    SshConfigFile::File(rd.path_of(ctx, n, "ssh.config").unwrap_or_default())
            }
            _ => ctx.err(
                n.pos,
                rd.j(),
                "`ssh.config` must be the path of an OpenSSH client config file, or none",
            ),
        }
    }
    if let Some(n) = rd.s("client") {
        match n.as_str() {
            Some("libssh2") => ssh.client = SshClient::Libssh2,
            Some("openssh") => ssh.client = SshClient::OpenSsh,
            _ => ctx.err(n.pos, rd.j(), "`ssh.client` must be libssh2 or openssh"),
        }
    }
    if let Some(n) = rd.s("proxy_jump") {
        match n.as_str() {
            Some(v) if !v.trim().is_empty() && !v.contains(['\n', '\0', ' ']) => {
                ssh.proxy_jump = Some(v.to_string())
            }
            _ => ctx.err(
                n.pos,
                rd.j(),
                "`ssh.proxy_jump` must be [user@]host[:port] hops separated by commas, or none",
            ),
        }
    }
}

/// `before`, `after`, `on_failure`, `hook_timeout`.
fn hooks(ctx: &mut Ctx, rd: &Reader) -> Hooks {
    let mut hooks = Hooks {
        timeout: Duration::from_secs(60),
        ..Default::default()
    };
    for (key, slot) in [
        ("before", &mut hooks.before),
        ("after", &mut hooks.after),
        ("on_failure", &mut hooks.on_failure),
    ] {
        if let Some(n) = rd.f(key) {
            *slot = rd.string(ctx, n, key);
        }
    }
    if let Some(n) = rd.f("hook_timeout")
        && let Some(d) = rd.duration(ctx, n, "hook_timeout")
    {
        hooks.timeout = d;
    }
    hooks
}

/// `watch: true | false | {delay, max_delay}`.
fn watch_options(
    ctx: &mut Ctx,
    n: &Node,
    j: Option<&str>,
) -> Option<crate::settings::WatchOptions> {
    let mut w = crate::settings::WatchOptions::default();
    if let Some(b) = n.as_bool() {
        return b.then_some(w);
    }
    if !matches!(n.kind, Kind::Map(_)) {
        let msg = format!(
            "`watch` must be true, false or a mapping with delay and max_delay, found {}",
            n.type_name()
        );
        ctx.err(n.pos, j, msg);
        return None;
    }
    for (k, v, _) in ctx.map(n, "watch", &["delay", "max_delay"], j) {
        match parse_duration(v.scalar().unwrap_or("")) {
            Ok(d) if k == "delay" => w.delay = d,
            Ok(d) => w.max_delay = d,
            Err(e) => ctx.err(v.pos, j, format!("`watch.{k}`: {e}")),
        }
    }
    if w.max_delay < w.delay {
        let msg = "`watch.max_delay` must not be shorter than `watch.delay`";
        ctx.err(n.pos, j, msg);
    }
    Some(w)
}
