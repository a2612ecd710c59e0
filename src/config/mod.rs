//! The jobs file: YAML → validated jobs.
//!
//! Parsed with a position-keeping YAML tree (see `yaml`), so every problem is
//! reported as `file:line:column: job NAME: what is wrong`, and all problems
//! are collected, not only the first.

use crate::filter::Filter;
use crate::schedule::{self, Schedule};
use crate::target::{self, Target};
use crate::units::parse_duration;
use crate::yaml::{self, Kind, Node, Pos};
use chrono_tz::Tz;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Full,
    Incremental,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Full => "full",
            Mode::Incremental => "incremental",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compare {
    SizeMtime,
    Checksum,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlap {
    Skip,
    Queue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKeyPolicy {
    Strict,
    AcceptNew,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SshOptions {
    pub identity: Option<PathBuf>,
    pub known_hosts: Option<PathBuf>,
    pub strict_host_key_checking: HostKeyPolicy,
    pub password_file: Option<PathBuf>,
    pub port: u16,
    pub timeout: Duration,
    /// `syncjob` on the remote host (a path or a command name): files go
    /// through `syncjob helper` there instead of SFTP
    pub remote_helper: Option<String>,
}

impl Default for SshOptions {
    fn default() -> Self {
        SshOptions {
            identity: None,
            known_hosts: None,
            strict_host_key_checking: HostKeyPolicy::Strict,
            password_file: None,
            port: 22,
            timeout: Duration::from_secs(30),
            remote_helper: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Job {
    pub name: String,
    pub pos: Pos,
    pub source: PathBuf,
    pub targets: Vec<Target>,
    pub mode: Mode,
    pub delete: bool,
    pub schedule: Option<Schedule>,
    /// The zone named in the file; `None` means the system's.
    pub timezone: Option<Tz>,
    pub exclude: Vec<String>,
    pub filter: Filter,
    pub compare: Compare,
    pub retries: u32,
    pub retry_interval: Option<Duration>,
    /// How long a target's manifest is trusted to skip listing it when
    /// nothing changed in the source (0: always list).
    pub verify_interval: Duration,
    pub allow_empty_source: bool,
    pub max_delete: Option<u64>,
    pub preserve_owner: bool,
    pub overlap: Overlap,
    pub catch_up: bool,
    pub parallel: usize,
    /// Connections per target for long runs of copies.
    pub streams: usize,
    pub ssh: SshOptions,
    pub hooks: Hooks,
    /// Real-time watch (`watch:`): changes are sent as they happen.
    pub watch: Option<crate::watch::WatchOptions>,
}

/// Shell commands run around a job's run (like sersync's command plugin).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hooks {
    /// Runs before the run; a failure (non-zero exit, timeout) aborts it.
    pub before: Option<String>,
    /// Runs after every run, with the outcome in `SYNCJOB_*` variables.
    pub after: Option<String>,
    /// Runs after a failed run.
    pub on_failure: Option<String>,
    pub timeout: Duration,
}

impl Job {
    pub fn tz(&self) -> Tz {
        self.timezone.unwrap_or_else(schedule::system_tz)
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// Jobs in file order.
    pub jobs: Vec<Job>,
    pub shutdown_timeout: Duration,
}

impl Config {
    pub fn job(&self, name: &str) -> Option<&Job> {
        self.jobs.iter().find(|j| j.name == name)
    }
}

/// One problem in the jobs file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub pos: Pos,
    pub job: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.file.display(), self.pos)?;
        if let Some(j) = &self.job {
            write!(f, "job {j}: ")?;
        }
        f.write_str(&self.message)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no jobs file found: tried $SYNCJOB_CONFIG (unset), ./jobs.yaml and /etc/syncjob/jobs.yaml; pass one with -c FILE"
    )]
    NotFound,
    #[error("cannot read jobs file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}", .0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

/// Find the jobs file: `-c`, then `$SYNCJOB_CONFIG`, `./jobs.yaml`,
/// `/etc/syncjob/jobs.yaml`.
pub fn locate(explicit: Option<&Path>) -> Result<PathBuf, ConfigError> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Some(p) = std::env::var_os("SYNCJOB_CONFIG").filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    for p in ["jobs.yaml", "/etc/syncjob/jobs.yaml"] {
        if Path::new(p).exists() {
            return Ok(PathBuf::from(p));
        }
    }
    Err(ConfigError::NotFound)
}

pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let bytes = read_limited(path).map_err(|e| ConfigError::Read {
        path: path.to_path_buf(),
        source: e,
    })?;
    parse(path, &bytes)
}

/// Read at most `MAX_FILE + 1` bytes: enough to tell a too-large file
/// without reading it all (a log or a device given by mistake).
fn read_limited(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut v = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_FILE as u64 + 1)
        .read_to_end(&mut v)?;
    Ok(v)
}

fn valid_job_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

const JOB_KEYS: &[&str] = &[
    "source",
    "remote",
    "mode",
    "delete",
    "schedule",
    "timezone",
    "exclude",
    "compare",
    "retries",
    "retry_interval",
    "verify_interval",
    "allow_empty_source",
    "max_delete",
    "preserve_owner",
    "overlap",
    "catch_up",
    "parallel",
    "streams",
    "ssh",
    "before",
    "after",
    "on_failure",
    "hook_timeout",
    "watch",
];
const SSH_KEYS: &[&str] = &[
    "identity",
    "known_hosts",
    "strict_host_key_checking",
    "password_file",
    "port",
    "timeout",
    "remote_helper",
];
const TOP_KEYS: &[&str] = &["defaults", "include", "jobs", "shutdown_timeout"];

/// Closest known key, for "did you mean".
fn suggest<'a>(key: &str, known: &[&'a str]) -> Option<&'a str> {
    fn dist(a: &str, b: &str) -> usize {
        let a: Vec<char> = a.chars().collect();
        let b: Vec<char> = b.chars().collect();
        let mut prev: Vec<usize> = (0..=b.len()).collect();
        for i in 1..=a.len() {
            let mut cur = vec![i; b.len() + 1];
            for j in 1..=b.len() {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            }
            prev = cur;
        }
        prev[b.len()]
    }
    let best = known.iter().min_by_key(|k| dist(key, k))?;
    (dist(key, best) <= 2).then_some(*best)
}

struct Ctx {
    file: PathBuf,
    problems: Vec<Problem>,
}

impl Ctx {
    fn err(&mut self, pos: Pos, job: Option<&str>, msg: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            pos,
            job: job.map(String::from),
            message: msg.into(),
        });
    }

    /// The pairs of a mapping with duplicate and unknown keys reported.
    fn map<'n>(
        &mut self,
        node: &'n Node,
        what: &str,
        known: &[&str],
        job: Option<&str>,
    ) -> Vec<(&'n str, &'n Node, Pos)> {
        let Kind::Map(pairs) = &node.kind else {
            if !node.is_null() {
                self.err(
                    node.pos,
                    job,
                    format!("{what} must be a mapping, found {}", node.type_name()),
                );
            }
            return Vec::new();
        };
        let mut out: Vec<(&str, &Node, Pos)> = Vec::new();
        for (k, v) in pairs {
            let Some(key) = k.scalar() else {
                self.err(k.pos, job, format!("{what}: keys must be plain names"));
                continue;
            };
            if let Some((_, _, first)) = out.iter().find(|(n, _, _)| *n == key) {
                let first = *first;
                self.err(
                    k.pos,
                    job,
                    format!(
                        "duplicate key `{key}` in {what} (first at line {})",
                        first.line
                    ),
                );
                continue;
            }
            if !known.is_empty() && !known.contains(&key) {
                let hint = suggest(key, known)
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_else(|| format!("; known keys: {}", known.join(", ")));
                self.err(k.pos, job, format!("unknown key `{key}` in {what}{hint}"));
                continue;
            }
            out.push((key, v, k.pos));
        }
        out
    }
}

/// Raw settings of one job or of `defaults`, each with its node for positions.
#[derive(Default, Clone)]
struct Raw<'n> {
    fields: BTreeMap<&'static str, &'n Node>,
    ssh: BTreeMap<&'static str, &'n Node>,
}

fn static_key(k: &str, known: &[&'static str]) -> &'static str {
    known.iter().find(|x| **x == k).copied().unwrap_or("")
}

fn raw<'n>(ctx: &mut Ctx, node: &'n Node, what: &str, job: Option<&str>) -> Raw<'n> {
    let mut r = Raw::default();
    for (k, v, _) in ctx.map(node, what, JOB_KEYS, job) {
        if k == "ssh" {
            for (sk, sv, _) in ctx.map(v, "ssh", SSH_KEYS, job) {
                r.ssh.insert(static_key(sk, SSH_KEYS), sv);
            }
        } else {
            r.fields.insert(static_key(k, JOB_KEYS), v);
        }
    }
    r
}

/// Problems in the order of the files (as first met) and, within a file,
/// of their positions.
fn in_file_order(mut problems: Vec<Problem>) -> Vec<Problem> {
    let mut files: Vec<PathBuf> = Vec::new();
    for p in &problems {
        if !files.contains(&p.file) {
            files.push(p.file.clone());
        }
    }
    problems.sort_by_key(|p| {
        let f = files.iter().position(|f| *f == p.file).unwrap_or(0);
        (f, p.pos.line, p.pos.col)
    });
    problems
}

/// The largest jobs file (each included file too): far beyond any real
/// one (thousands of jobs), small enough that a wrong file (a log, a
/// binary) is refused at once.
const MAX_FILE: usize = 4 << 20;

/// Parse one YAML document: UTF-8 check, syntax, `${VAR}` expansion.
fn read_doc(ctx: &mut Ctx, bytes: &[u8]) -> Option<Node> {
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            let good = &bytes[..e.valid_up_to()];
            let line = good.iter().filter(|b| **b == b'\n').count() + 1;
            let col = good.len() - good.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1) + 1;
            ctx.err(Pos { line, col }, None, "the jobs file is not valid UTF-8");
            return None;
        }
    };
    match yaml::parse(text) {
        Ok(Some(mut r)) => {
            expand_env(ctx, &mut r, &|k| std::env::var(k).ok());
            Some(r)
        }
        Ok(None) => {
            ctx.err(
                Pos { line: 1, col: 1 },
                None,
                "the jobs file is empty; it needs a `jobs:` mapping (see jobs.example.yaml)",
            );
            None
        }
        Err(e) => {
            ctx.err(e.pos, None, format!("YAML syntax error: {}", e.message));
            None
        }
    }
}

/// Expand `${NAME}` and `${NAME:-default}` in every scalar value (not in
/// keys); `$${` gives a literal `${`. A `$` not followed by `{` is kept as
/// is. An unset variable without a default is an error at the value.
fn expand_env(ctx: &mut Ctx, node: &mut Node, get: &dyn Fn(&str) -> Option<String>) {
    match &mut node.kind {
        Kind::Scalar { text, .. } => {
            if text.contains("${") {
                match expand_str(text, get) {
                    Ok(t) => *text = t,
                    Err(e) => ctx.err(node.pos, None, e),
                }
            }
        }
        Kind::Seq(items) => {
            for n in items {
                expand_env(ctx, n, get);
            }
        }
        Kind::Map(pairs) => {
            for (_, v) in pairs {
                expand_env(ctx, v, get);
            }
        }
        Kind::Null => {}
    }
}

pub fn expand_str(s: &str, get: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(end) = body.find('}') else {
                return Err(format!("unclosed `${{` in {s:?}"));
            };
            let inner = &body[..end];
            let (name, default) = match inner.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (inner, None),
            };
            let valid = !name.is_empty()
                && !name.starts_with(|c: char| c.is_ascii_digit())
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(format!("`${{{inner}}}`: not a variable name"));
            }
            match (get(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write `${{{name}:-default}}` for a default)"
                    ));
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The files an `include:` pattern names, sorted. A wildcard may appear in
/// the last component only (`/etc/syncjob/jobs.d/*.yaml`); a pattern
/// without one names one file, which must exist.
fn include_files(pattern: &str, base: &Path) -> Result<Vec<PathBuf>, String> {
    let full = base.join(pattern);
    let name = full
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let dir = full.parent().unwrap_or(Path::new("/"));
    let wild = |s: &str| s.contains(['*', '?', '[']);
    if wild(&dir.to_string_lossy()) {
        return Err(format!(
            "include {pattern:?}: wildcards are allowed in the file name only"
        ));
    }
    if !wild(&name) {
        return if full.is_file() {
            Ok(vec![full])
        } else {
            Err(format!(
                "include {pattern:?}: {} does not exist",
                full.display()
            ))
        };
    }
    let glob = globset::Glob::new(&name)
        .map_err(|e| format!("include {pattern:?}: {e}"))?
        .compile_matcher();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        // an absent jobs.d is like an empty one
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("include {pattern:?}: {}: {e}", dir.display())),
    };
    let mut v: Vec<PathBuf> = rd
        .filter_map(|e| e.ok())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter(|e| glob.is_match(e.file_name()))
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    Ok(v)
}

fn dir_of(path: &Path) -> PathBuf {
    path.canonicalize()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .or_else(|| path.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn parse(path: &Path, bytes: &[u8]) -> Result<Config, ConfigError> {
    let mut ctx = Ctx {
        file: path.to_path_buf(),
        problems: Vec::new(),
    };
    let invalid = |ctx: Ctx| Err(ConfigError::Invalid(in_file_order(ctx.problems)));
    if bytes.len() > MAX_FILE {
        ctx.err(
            Pos { line: 1, col: 1 },
            None,
            format!(
                "the jobs file is too large ({:.1} MiB; the limit is {} MiB): split it with `include:`",
                bytes.len() as f64 / (1 << 20) as f64,
                MAX_FILE >> 20
            ),
        );
        return invalid(ctx);
    }
    let Some(root) = read_doc(&mut ctx, bytes) else {
        return invalid(ctx);
    };
    let base = dir_of(path);

    let top = ctx.map(&root, "the top level", TOP_KEYS, None);
    if !matches!(root.kind, Kind::Map(_)) {
        return invalid(ctx);
    }
    let mut defaults = Raw::default();
    let mut jobs_node = None;
    let mut include_node = None;
    let mut shutdown_timeout = Duration::from_secs(30);
    for (k, v, kpos) in &top {
        match *k {
            "defaults" => {
                defaults = raw(&mut ctx, v, "defaults", None);
                for forbidden in ["source", "remote"] {
                    if let Some(n) = defaults.fields.remove(forbidden) {
                        ctx.err(
                            n.pos,
                            None,
                            format!("`{forbidden}` cannot be a default; set it per job"),
                        );
                    }
                }
            }
            "jobs" => jobs_node = Some((*v, *kpos)),
            "include" => include_node = Some(*v),
            "shutdown_timeout" => match v.scalar().map(parse_duration) {
                Some(Ok(d)) => shutdown_timeout = d,
                Some(Err(e)) => ctx.err(v.pos, None, format!("shutdown_timeout: {e}")),
                None => ctx.err(
                    v.pos,
                    None,
                    "shutdown_timeout must be a duration such as 30s",
                ),
            },
            _ => {}
        }
    }

    // included files: each holds a `jobs:` mapping; `defaults` of this
    // file apply to their jobs; their relative paths are resolved against
    // their own directory
    let mut included: Vec<(PathBuf, Node)> = Vec::new();
    if let Some(inc) = include_node {
        let patterns: Vec<&Node> = match &inc.kind {
            Kind::Seq(items) => items.iter().collect(),
            _ if inc.is_null() => Vec::new(),
            _ => vec![inc],
        };
        for pn in patterns {
            let Some(pat) = pn.as_str() else {
                ctx.err(
                    pn.pos,
                    None,
                    format!("include: expected a path or glob, found {}", pn.type_name()),
                );
                continue;
            };
            match include_files(pat, &base) {
                Ok(files) => {
                    for f in files {
                        let canon = f.canonicalize().unwrap_or_else(|_| f.clone());
                        if canon == path.canonicalize().unwrap_or_else(|_| path.to_path_buf())
                            || included.iter().any(|(p, _)| *p == f)
                        {
                            continue;
                        }
                        match read_limited(&f) {
                            Ok(b) if b.len() > MAX_FILE => ctx.err(
                                pn.pos,
                                None,
                                format!("include {}: the file is too large", f.display()),
                            ),
                            Ok(b) => {
                                ctx.file = f.clone();
                                if let Some(r) = read_doc(&mut ctx, &b) {
                                    included.push((f, r));
                                }
                                ctx.file = path.to_path_buf();
                            }
                            Err(e) => {
                                ctx.err(pn.pos, None, format!("include {}: {e}", f.display()))
                            }
                        }
                    }
                }
                Err(e) => ctx.err(pn.pos, None, e),
            }
        }
    }

    if jobs_node.is_none() && include_node.is_none() {
        ctx.err(root.pos, None, "missing `jobs:` mapping");
        return invalid(ctx);
    }
    let mut jobs: Vec<Job> = Vec::new();
    let mut seen: BTreeMap<String, (PathBuf, Pos)> = BTreeMap::new();
    let mut add_jobs = |ctx: &mut Ctx, jobs_node: &Node, base: &Path| {
        for (name, node, kpos) in ctx.map(jobs_node, "jobs", &[], None) {
            if !valid_job_name(name) {
                ctx.err(
                    kpos,
                    Some(name),
                    "a job name may use only letters, digits, `.`, `_` and `-`",
                );
                continue;
            }
            if let Some((f, p)) = seen.get(name) {
                let msg = format!("job name defined twice (first at {}:{p})", f.display());
                ctx.err(kpos, Some(name), msg);
                continue;
            }
            seen.insert(name.to_string(), (ctx.file.clone(), kpos));
            let own = raw(ctx, node, &format!("job {name}"), Some(name));
            let mut merged = defaults.clone();
            merged.fields.extend(own.fields);
            merged.ssh.extend(own.ssh);
            if let Some(job) = build_job(ctx, name, kpos, node, &merged, base) {
                jobs.push(job);
            }
        }
    };
    if let Some((jn, _)) = jobs_node {
        add_jobs(&mut ctx, jn, &base);
    }
    for (f, r) in &included {
        ctx.file = f.clone();
        let top = ctx.map(r, "an included file", &["jobs"], None);
        match top.iter().find(|(k, _, _)| *k == "jobs") {
            Some((_, jn, _)) => add_jobs(&mut ctx, jn, &dir_of(f)),
            None if matches!(r.kind, Kind::Map(_)) => {
                ctx.err(r.pos, None, "an included file needs a `jobs:` mapping")
            }
            None => {}
        }
    }
    ctx.file = path.to_path_buf();
    if jobs.is_empty() && ctx.problems.is_empty() {
        let pos = jobs_node.map(|(n, _)| n.pos).unwrap_or(root.pos);
        ctx.err(pos, None, "`jobs:` holds no job");
    }
    if ctx.problems.is_empty() {
        Ok(Config {
            path: path.to_path_buf(),
            jobs,
            shutdown_timeout,
        })
    } else {
        invalid(ctx)
    }
}

fn build_job(
    ctx: &mut Ctx,
    name: &str,
    pos: Pos,
    node: &Node,
    r: &Raw,
    base: &Path,
) -> Option<Job> {
    let before = ctx.problems.len();
    let j = Some(name);
    let f = |k: &str| r.fields.get(k).copied().filter(|n| !n.is_null());

    let string = |ctx: &mut Ctx, n: &Node, key: &str| -> Option<String> {
        match n.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                ctx.err(
                    n.pos,
                    j,
                    format!("`{key}` must be a string, found {}", n.type_name()),
                );
                None
            }
        }
    };
    let boolean = |ctx: &mut Ctx, key: &str, default: bool| -> bool {
        match f(key) {
            None => default,
            Some(n) => n.as_bool().unwrap_or_else(|| {
                ctx.err(
                    n.pos,
                    j,
                    format!("`{key}` must be true or false, found {}", n.type_name()),
                );
                default
            }),
        }
    };
    let number = |ctx: &mut Ctx, key: &str| -> Option<u64> {
        let n = f(key)?;
        n.as_u64().or_else(|| {
            ctx.err(
                n.pos,
                j,
                format!("`{key}` must be a whole number, found {}", n.type_name()),
            );
            None
        })
    };
    let duration = |ctx: &mut Ctx, n: &Node, key: &str| -> Option<Duration> {
        let s = n.scalar().unwrap_or("");
        match parse_duration(s) {
            Ok(d) => Some(d),
            Err(e) => {
                ctx.err(n.pos, j, format!("`{key}`: {e}"));
                None
            }
        }
    };
    let choice = |ctx: &mut Ctx, key: &str, options: &[&str]| -> Option<usize> {
        let n = f(key)?;
        let s = n.scalar().unwrap_or("");
        match options.iter().position(|o| *o == s) {
            Some(i) => Some(i),
            None => {
                ctx.err(
                    n.pos,
                    j,
                    format!(
                        "`{key}` must be one of {}, found {s:?}",
                        options.join(" | ")
                    ),
                );
                None
            }
        }
    };

    // source
    let source = match f("source") {
        None => {
            ctx.err(pos, j, "missing `source` (the local directory to mirror)");
            None
        }
        Some(n) => string(ctx, n, "source").and_then(|s| {
            if s.contains("://") || (s.contains(':') && !s.starts_with('/') && !s.starts_with('.'))
            {
                ctx.err(
                    n.pos,
                    j,
                    format!("`source` must be a local directory, found {s:?}"),
                );
                return None;
            }
            let p = Path::new(&s);
            Some(if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            })
        }),
    };
    // remote: one string or a list
    let mut targets = Vec::new();
    match f("remote") {
        None => ctx.err(pos, j, "missing `remote` (one target or a list of targets)"),
        Some(n) => {
            let items: Vec<&Node> = match &n.kind {
                Kind::Seq(items) => items.iter().collect(),
                _ => vec![n],
            };
            if items.is_empty() {
                ctx.err(n.pos, j, "`remote` is an empty list");
            }
            for item in items {
                let Some(s) = string(ctx, item, "remote") else {
                    continue;
                };
                match target::parse(&s, base) {
                    Ok(t) => {
                        if targets.contains(&t) {
                            ctx.err(item.pos, j, format!("target {s:?} is listed twice"));
                        } else {
                            targets.push(t)
                        }
                    }
                    Err(e) => ctx.err(item.pos, j, format!("bad target: {e}")),
                }
            }
        }
    }
    if let Some(src) = &source {
        for t in &targets {
            if let Target::Local(p) = t
                && (p.starts_with(src) || src.starts_with(p))
            {
                ctx.err(
                    pos,
                    j,
                    format!(
                        "target {} overlaps the source {} (one lies inside the other)",
                        p.display(),
                        src.display()
                    ),
                );
            }
        }
    }
    let mode = match choice(ctx, "mode", &["incremental", "full"]) {
        Some(1) => Mode::Full,
        _ => Mode::Incremental,
    };
    let compare = match choice(ctx, "compare", &["size_mtime", "checksum"]) {
        Some(1) => Compare::Checksum,
        _ => Compare::SizeMtime,
    };
    let overlap = match choice(ctx, "overlap", &["skip", "queue"]) {
        Some(1) => Overlap::Queue,
        _ => Overlap::Skip,
    };
    let delete = boolean(ctx, "delete", false);
    let allow_empty_source = boolean(ctx, "allow_empty_source", false);
    let preserve_owner = boolean(ctx, "preserve_owner", false);
    let catch_up = boolean(ctx, "catch_up", false);
    let schedule = f("schedule").and_then(|n| {
        let s = string(ctx, n, "schedule")?;
        match Schedule::parse(&s) {
            Ok(s) => Some(s),
            Err(e) => {
                ctx.err(n.pos, j, format!("bad schedule {s:?}: {e}"));
                None
            }
        }
    });
    let watch = f("watch").and_then(|n| watch_options(ctx, n, j));
    let timezone = f("timezone").and_then(|n| {
        let s = string(ctx, n, "timezone")?;
        match schedule::parse_tz(&s) {
            Ok(z) => Some(z),
            Err(e) => {
                ctx.err(n.pos, j, e);
                None
            }
        }
    });
    let mut exclude = Vec::new();
    if let Some(n) = f("exclude") {
        let items: Vec<&Node> = match &n.kind {
            Kind::Seq(items) => items.iter().collect(),
            _ => vec![n],
        };
        for item in items {
            if let Some(s) = string(ctx, item, "exclude") {
                match Filter::check_pattern(&s) {
                    Ok(()) => exclude.push(s),
                    Err(e) => ctx.err(item.pos, j, e),
                }
            }
        }
    }
    let filter = Filter::new(&exclude).unwrap_or_default();
    let retries = number(ctx, "retries").unwrap_or(3).min(100) as u32;
    let retry_interval = f("retry_interval").and_then(|n| duration(ctx, n, "retry_interval"));
    let verify_interval = f("verify_interval")
        .and_then(|n| duration(ctx, n, "verify_interval"))
        .unwrap_or(Duration::from_secs(60));
    let max_delete = number(ctx, "max_delete");
    let parallel = match number(ctx, "parallel") {
        Some(0) => {
            ctx.err(
                f("parallel").unwrap().pos,
                j,
                "`parallel` must be at least 1",
            );
            4
        }
        Some(n) => n as usize,
        None => 4,
    };
    let streams = match number(ctx, "streams") {
        Some(n) if (1..=16).contains(&n) => n as usize,
        Some(_) => {
            ctx.err(
                f("streams").unwrap().pos,
                j,
                "`streams` must be between 1 and 16",
            );
            4
        }
        None => 4,
    };

    // ssh
    let mut ssh = SshOptions::default();
    let s = |k: &str| r.ssh.get(k).copied().filter(|n| !n.is_null());
    let path_of = |ctx: &mut Ctx, n: &Node, key: &str| -> Option<PathBuf> {
        let v = string(ctx, n, key)?;
        let p = PathBuf::from(&v);
        Some(if p.is_absolute() { p } else { base.join(p) })
    };
    if let Some(n) = s("identity") {
        ssh.identity = path_of(ctx, n, "ssh.identity");
    }
    if let Some(n) = s("known_hosts") {
        ssh.known_hosts = path_of(ctx, n, "ssh.known_hosts");
    }
    if let Some(n) = s("password_file") {
        ssh.password_file = path_of(ctx, n, "ssh.password_file");
    }
    if let Some(n) = s("strict_host_key_checking") {
        match n.scalar() {
            Some("strict") | Some("yes") | Some("true") => {
                ssh.strict_host_key_checking = HostKeyPolicy::Strict
            }
            Some("accept-new") => ssh.strict_host_key_checking = HostKeyPolicy::AcceptNew,
            _ => ctx.err(
                n.pos,
                j,
                "`ssh.strict_host_key_checking` must be strict or accept-new (unknown keys are never accepted silently)",
            ),
        }
    }
    if let Some(n) = s("port") {
        match n.as_u64().filter(|p| (1..=65535).contains(p)) {
            Some(p) => ssh.port = p as u16,
            None => ctx.err(n.pos, j, "`ssh.port` must be a port number 1-65535"),
        }
    }
    if let Some(n) = s("timeout")
        && let Some(d) = duration(ctx, n, "ssh.timeout")
    {
        ssh.timeout = d;
    }
    if let Some(n) = s("remote_helper")
        && let Some(v) = string(ctx, n, "ssh.remote_helper")
    {
        if v.trim().is_empty() || v.contains(['\n', '\0']) {
            ctx.err(
                n.pos,
                j,
                "`ssh.remote_helper` must be the path of syncjob on the remote host, e.g. /usr/bin/syncjob",
            );
        } else {
            ssh.remote_helper = Some(v);
        }
    }
    let _ = node;
    let mut hooks = Hooks {
        timeout: Duration::from_secs(60),
        ..Default::default()
    };
    for (key, slot) in [
        ("before", &mut hooks.before),
        ("after", &mut hooks.after),
        ("on_failure", &mut hooks.on_failure),
    ] {
        if let Some(n) = f(key) {
            *slot = string(ctx, n, key);
        }
    }
    if let Some(n) = f("hook_timeout")
        && let Some(d) = duration(ctx, n, "hook_timeout")
    {
        hooks.timeout = d;
    }
    if ctx.problems.len() > before {
        return None;
    }
    Some(Job {
        name: name.to_string(),
        pos,
        source: source?,
        targets,
        mode,
        delete,
        schedule,
        timezone,
        exclude,
        filter,
        compare,
        retries,
        retry_interval,
        verify_interval,
        allow_empty_source,
        max_delete,
        preserve_owner,
        overlap,
        catch_up,
        parallel,
        streams,
        ssh,
        hooks,
        watch,
    })
}

/// `watch: true | false | {delay, max_delay}`.
fn watch_options(ctx: &mut Ctx, n: &Node, j: Option<&str>) -> Option<crate::watch::WatchOptions> {
    let mut w = crate::watch::WatchOptions::default();
    if let Some(b) = n.as_bool() {
        return b.then_some(w);
    }
    if !matches!(n.kind, Kind::Map(_)) {
        ctx.err(
            n.pos,
            j,
            format!(
                "`watch` must be true, false or a mapping with delay and max_delay, found {}",
                n.type_name()
            ),
        );
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
        ctx.err(
            n.pos,
            j,
            "`watch.max_delay` must not be shorter than `watch.delay`",
        );
    }
    Some(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(text: &str) -> Vec<String> {
        match parse(Path::new("/etc/syncjob/jobs.yaml"), text.as_bytes()) {
            Ok(_) => vec![],
            Err(ConfigError::Invalid(p)) => p.iter().map(|p| p.to_string()).collect(),
            Err(e) => vec![e.to_string()],
        }
    }

    #[test]
    fn full_example_parses_with_defaults_merged() {
        let c = parse(
            Path::new("/etc/syncjob/jobs.yaml"),
            br#"
defaults:
  timezone: Asia/Shanghai
  retries: 5
  ssh: { port: 2200, timeout: 10s }
jobs:
  tp5shop:
    source: /usr/local/nginx/html/tp5shop
    remote:
      - root@192.168.17.101:/usr/local/nginx/html/tp5shop
      - ssh://deploy@web3:2222/srv/tp5shop
    mode: incremental
    delete: true
    schedule: "*/1 * * * * *"
    exclude: ["*.svn", "*.gz", "/info/", "/static/"]
    ssh: { identity: keys/id }
  other:
    source: site
    remote: /srv/copy
    retries: 1
    mode: full
"#,
        )
        .unwrap();
        assert_eq!(c.jobs.len(), 2);
        let a = &c.jobs[0];
        assert_eq!(a.name, "tp5shop");
        assert_eq!(a.targets.len(), 2);
        assert!(a.delete);
        assert_eq!(a.retries, 5);
        assert_eq!(a.timezone, Some(chrono_tz::Asia::Shanghai));
        assert_eq!(a.ssh.port, 2200, "ssh merged per key");
        assert_eq!(a.ssh.timeout, Duration::from_secs(10));
        assert_eq!(a.ssh.identity, Some(PathBuf::from("/etc/syncjob/keys/id")));
        assert_eq!(a.exclude.len(), 4);
        let b = &c.jobs[1];
        assert_eq!(b.retries, 1);
        assert_eq!(b.mode, Mode::Full);
        assert_eq!(b.source, PathBuf::from("/etc/syncjob/site"));
        assert!(b.schedule.is_none());
    }

    #[test]
    fn unknown_key_names_file_line_column_and_job() {
        let p = problems("jobs:\n  web:\n    source: /a\n    remote: /b\n    delet: true\n");
        assert_eq!(
            p,
            [
                "/etc/syncjob/jobs.yaml:5:5: job web: unknown key `delet` in job web; did you mean `delete`?"
            ]
        );
    }

    #[test]
    fn all_problems_are_reported() {
        let p = problems(
            "jobs:\n  a:\n    source: /a\n    remote: /b\n    schedule: \"61 * * * *\"\n  b:\n    source: /a\n    remote: host:/\n    mode: fast\n",
        );
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(
            p[0].starts_with("/etc/syncjob/jobs.yaml:5:15: job a: bad schedule"),
            "{}",
            p[0]
        );
        assert!(p[0].contains("out of range"));
        assert!(
            p[1].starts_with("/etc/syncjob/jobs.yaml:8:13: job b: bad target"),
            "{}",
            p[1]
        );
        assert!(p[1].contains("`/` is refused"));
        assert!(p[2].starts_with("/etc/syncjob/jobs.yaml:9:11: job b: `mode` must be one of"));
    }

    #[test]
    fn type_errors() {
        let p = problems(
            "jobs:\n  a:\n    source: /a\n    remote: /b\n    delete: \"yes\"\n    retries: many\n",
        );
        assert_eq!(p.len(), 2, "{p:#?}");
        assert!(p[0].contains("5:13: job a: `delete` must be true or false, found a string"));
        assert!(p[1].contains("6:14: job a: `retries` must be a whole number"));
    }

    #[test]
    fn remote_helper_is_a_command_path() {
        let ok = parse(
            Path::new("/etc/syncjob/jobs.yaml"),
            b"defaults:\n  ssh: { remote_helper: /usr/bin/syncjob }\njobs:\n  a:\n    source: /a\n    remote: h:/b\n",
        )
        .unwrap();
        assert_eq!(
            ok.jobs[0].ssh.remote_helper.as_deref(),
            Some("/usr/bin/syncjob")
        );
        let p = problems(
            "jobs:\n  a:\n    source: /a\n    remote: h:/b\n    ssh: { remote_helper: \" \" }\n",
        );
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(
            p[0].contains("5:27: job a: `ssh.remote_helper` must be"),
            "{}",
            p[0]
        );
    }

    #[test]
    fn syntax_error_has_position() {
        let p = problems("jobs:\n  a:\n    source: [/a\n    remote: /b\n");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("/etc/syncjob/jobs.yaml:"), "{}", p[0]);
        assert!(p[0].contains("YAML syntax error"), "{}", p[0]);
    }

    #[test]
    fn duplicates_missing_and_bad_names() {
        let p = problems(
            "jobs:\n  a:\n    source: /a\n    remote: /b\n  a:\n    source: /c\n    remote: /d\n  b c:\n    source: /a\n    remote: /e\n  d:\n    remote: /f\n",
        );
        assert_eq!(p.len(), 3, "{p:#?}");
        assert!(
            p[0].contains("5:3: duplicate key `a` in jobs (first at line 2)"),
            "{}",
            p[0]
        );
        assert!(
            p[1].contains("8:3: job b c: a job name may use only"),
            "{}",
            p[1]
        );
        assert!(p[2].contains("11:3: job d: missing `source`"), "{}", p[2]);
    }

    #[test]
    fn empty_and_non_utf8_files() {
        assert_eq!(problems("").len(), 1);
        assert!(problems("")[0].contains("empty"));
        let e = parse(Path::new("j.yaml"), b"jobs:\n  a\xff: 1\n").unwrap_err();
        assert!(
            e.to_string()
                .contains("j.yaml:2:4: the jobs file is not valid UTF-8"),
            "{e}"
        );
        assert!(problems("jobs: {}\n")[0].contains("holds no job"));
        assert!(problems("- a\n- b\n")[0].contains("the top level must be a mapping"));
    }

    #[test]
    fn overlap_of_source_and_target_is_refused() {
        let p = problems("jobs:\n  a:\n    source: /srv/a\n    remote: /srv/a/copy\n");
        assert!(p[0].contains("overlaps the source"), "{p:?}");
    }

    #[test]
    fn env_expansion() {
        let get = |k: &str| match k {
            "HOST" => Some("web2".to_string()),
            "EMPTY" => Some(String::new()),
            _ => None,
        };
        assert_eq!(
            expand_str("root@${HOST}:/srv", &get).unwrap(),
            "root@web2:/srv"
        );
        assert_eq!(expand_str("${NOPE:-web9}:/x", &get).unwrap(), "web9:/x");
        assert_eq!(expand_str("${EMPTY:-d}", &get).unwrap(), "d");
        assert_eq!(
            expand_str("cost $5 $${HOST}", &get).unwrap(),
            "cost $5 ${HOST}"
        );
        assert!(
            expand_str("${NOPE}", &get)
                .unwrap_err()
                .contains("NOPE is not set")
        );
        assert!(expand_str("${HOST", &get).unwrap_err().contains("unclosed"));
        assert!(
            expand_str("${1X}", &get)
                .unwrap_err()
                .contains("not a variable")
        );
    }

    #[test]
    fn unset_variable_is_reported_at_its_value() {
        let p = problems(
            "jobs:\n  web:\n    source: /srv/a\n    remote: ${SYNCJOB_TEST_SURELY_UNSET_VAR}\n",
        );
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].starts_with("/etc/syncjob/jobs.yaml:4:13: "), "{p:?}");
        assert!(
            p[0].contains("SYNCJOB_TEST_SURELY_UNSET_VAR is not set"),
            "{p:?}"
        );
    }

    #[test]
    fn includes_add_jobs_with_their_own_positions() {
        let d = tempfile::tempdir().unwrap();
        let main = d.path().join("jobs.yaml");
        std::fs::create_dir(d.path().join("jobs.d")).unwrap();
        std::fs::write(
            &main,
            "defaults:\n  retries: 7\ninclude: jobs.d/*.yaml\njobs:\n  a:\n    source: /srv/a\n    remote: /srv/b\n",
        )
        .unwrap();
        std::fs::write(
            d.path().join("jobs.d/x.yaml"),
            "jobs:\n  x:\n    source: site\n    remote: /srv/x\n",
        )
        .unwrap();
        std::fs::write(d.path().join("jobs.d/ignored.txt"), "not yaml: [").unwrap();
        let c = load(&main).unwrap();
        let names: Vec<&str> = c.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["a", "x"]);
        let x = c.job("x").unwrap();
        assert_eq!(x.retries, 7, "defaults apply to included jobs");
        assert_eq!(
            x.source,
            d.path().canonicalize().unwrap().join("jobs.d/site")
        );

        // a duplicate name and a bad key in the included file, each located
        std::fs::write(
            d.path().join("jobs.d/y.yaml"),
            "jobs:\n  a:\n    source: /srv/a\n    remote: /srv/c\n  y:\n    source: /srv/y\n    remote: /srv/z\n    delet: true\n",
        )
        .unwrap();
        let err = load(&main).unwrap_err().to_string();
        let y = d.path().join("jobs.d/y.yaml");
        assert!(
            err.contains(&format!(
                "{}:2:3: job a: job name defined twice",
                y.display()
            )),
            "{err}"
        );
        assert!(
            err.contains(&format!("{}:8:5: job y: unknown key `delet`", y.display())),
            "{err}"
        );

        // a named file that does not exist
        std::fs::write(&main, "include: [other.yaml]\n").unwrap();
        let err = load(&main).unwrap_err().to_string();
        assert!(
            err.contains("jobs.yaml:1:11: include \"other.yaml\"")
                && err.contains("does not exist"),
            "{err}"
        );
    }

    #[test]
    fn streams_and_verify_interval() {
        let p = problems(
            "jobs:\n  a:\n    source: /srv/a\n    remote: /srv/b\n    streams: 0\n    verify_interval: 5x\n",
        );
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(
            p[0].contains(":5:14: job a: `streams` must be between 1 and 16"),
            "{p:?}"
        );
        assert!(
            p[1].contains(":6:22: job a: ") && p[1].contains("5x"),
            "{p:?}"
        );
        let c = parse(
            Path::new("/etc/syncjob/jobs.yaml"),
            b"jobs:\n  a:\n    source: /srv/a\n    remote: /srv/b\n    verify_interval: 0\n  b:\n    source: /srv/a\n    remote: /srv/c\n",
        )
        .unwrap();
        assert!(c.job("a").unwrap().verify_interval.is_zero());
        assert_eq!(c.job("b").unwrap().verify_interval, Duration::from_secs(60));
        assert_eq!(c.job("b").unwrap().streams, 4);
    }
}
