//! Reading the jobs file: size limit, UTF-8 and YAML syntax, `${VAR}`
//! expansion, the top level (`defaults`, `shutdown_timeout`, `include`,
//! `jobs`), included files, then each job ([`super::job`]). Every problem
//! is collected with its `file:line:column`; nothing is returned from a
//! file with any problem.

use super::job::build_job;
use super::raw::{Ctx, Raw, TOP_KEYS, in_file_order, raw, valid_job_name};
use super::{Config, ConfigError, Job, MAX_FILE, read_limited};
use crate::units::parse_duration;
use crate::yaml::{self, Kind, Node, Pos};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// The top level of the main file.
struct Top<'n> {
    defaults: Raw<'n>,
    /// `jobs:` and its key's position
    jobs: Option<(&'n Node, Pos)>,
    include: Option<&'n Node>,
    shutdown_timeout: Duration,
}

/// Parse a jobs file's bytes (`path` names it in problems and anchors
/// relative paths): size → document → top level → includes → jobs.
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
    let Some(top) = top_level(&mut ctx, &root) else {
        return invalid(ctx);
    };
    let included = match top.include {
        Some(inc) => read_includes(&mut ctx, inc, path, &base),
        None => Vec::new(),
    };
    if top.jobs.is_none() && top.include.is_none() {
        ctx.err(root.pos, None, "missing `jobs:` mapping");
        return invalid(ctx);
    }
    let jobs = all_jobs(&mut ctx, &top, &base, &included);
    ctx.file = path.to_path_buf();
    if jobs.is_empty() && ctx.problems.is_empty() {
        let pos = top.jobs.map(|(n, _)| n.pos).unwrap_or(root.pos);
        ctx.err(pos, None, "`jobs:` holds no job");
    }
    if ctx.problems.is_empty() {
        Ok(Config {
            path: path.to_path_buf(),
            jobs,
            shutdown_timeout: top.shutdown_timeout,
        })
    } else {
        invalid(ctx)
    }
}

/// `defaults`, `jobs`, `include`, `shutdown_timeout`; `None` when the
/// document is not a mapping.
fn top_level<'n>(ctx: &mut Ctx, root: &'n Node) -> Option<Top<'n>> {
    let pairs = ctx.map(root, "the top level", TOP_KEYS, None);
    if !matches!(root.kind, Kind::Map(_)) {
        return None;
    }
    let mut top = Top {
        defaults: Raw::default(),
        jobs: None,
        include: None,
        shutdown_timeout: Duration::from_secs(30),
    };
    for (k, v, kpos) in pairs {
        match k {
            "defaults" => {
                top.defaults = raw(ctx, v, "defaults", None);
                for forbidden in ["source", "remote"] {
                    if let Some(n) = top.defaults.fields.remove(forbidden) {
                        ctx.err(
                            n.pos,
                            None,
                            format!("`{forbidden}` cannot be a default; set it per job"),
                        );
                    }
                }
            }
            "jobs" => top.jobs = Some((v, kpos)),
            "include" => top.include = Some(v),
            "shutdown_timeout" => match v.scalar().map(parse_duration) {
                Some(Ok(d)) => top.shutdown_timeout = d,
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
    Some(top)
}

/// The documents of the files `include:` names (a path or a list): each
/// holds a `jobs:` mapping; the main file's `defaults` apply to their jobs;
/// their relative paths are resolved against their own directory. The main
/// file and a file named twice are read once.
fn read_includes(ctx: &mut Ctx, inc: &Node, path: &Path, base: &Path) -> Vec<(PathBuf, Node)> {
    let mut included: Vec<(PathBuf, Node)> = Vec::new();
    let patterns: Vec<&Node> = match &inc.kind {
        Kind::Seq(items) => items.iter().collect(),
        _ if inc.is_null() => Vec::new(),
        _ => vec![inc],
    };
    let main = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    for pn in patterns {
        let Some(pat) = pn.as_str() else {
            let msg = format!("include: expected a path or glob, found {}", pn.type_name());
            ctx.err(pn.pos, None, msg);
            continue;
        };
        let files = match include_files(pat, base) {
            Ok(files) => files,
            Err(e) => {
                ctx.err(pn.pos, None, e);
                continue;
            }
        };
        for f in files {
            let canon = f.canonicalize().unwrap_or_else(|_| f.clone());
            if canon == main || included.iter().any(|(p, _)| *p == f) {
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
                    if let Some(r) = read_doc(ctx, &b) {
                        included.push((f, r));
                    }
                    ctx.file = path.to_path_buf();
                }
                Err(e) => ctx.err(pn.pos, None, format!("include {}: {e}", f.display())),
            }
        }
    }
    included
}

/// The jobs of the main file, then of each included file.
fn all_jobs(ctx: &mut Ctx, top: &Top, base: &Path, included: &[(PathBuf, Node)]) -> Vec<Job> {
    let mut jobs = Vec::new();
    let mut seen: BTreeMap<String, (PathBuf, Pos)> = BTreeMap::new();
    if let Some((jn, _)) = top.jobs {
        add_jobs(ctx, jn, base, &top.defaults, &mut seen, &mut jobs);
    }
    for (f, r) in included {
        ctx.file = f.clone();
        let pairs = ctx.map(r, "an included file", &["jobs"], None);
        match pairs.iter().find(|(k, _, _)| *k == "jobs") {
            Some((_, jn, _)) => add_jobs(ctx, jn, &dir_of(f), &top.defaults, &mut seen, &mut jobs),
            None if matches!(r.kind, Kind::Map(_)) => {
                ctx.err(r.pos, None, "an included file needs a `jobs:` mapping")
            }
            None => {}
        }
    }
    jobs
}

/// The jobs of one `jobs:` mapping: names checked (valid, not defined
/// twice across files), settings merged over `defaults`, each built.
fn add_jobs(
    ctx: &mut Ctx,
    jobs_node: &Node,
    base: &Path,
    defaults: &Raw,
    seen: &mut BTreeMap<String, (PathBuf, Pos)>,
    jobs: &mut Vec<Job>,
) {
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
        if let Some(job) = build_job(ctx, name, kpos, &merged, base) {
            jobs.push(job);
        }
    }
}
