//! The jobs file's raw shape: known keys, mappings read with duplicate and
//! unknown keys reported (with a "did you mean"), the problems collected
//! with their file and position, then sorted in file order.

use super::Problem;
use crate::yaml::{Kind, Node, Pos};
use std::collections::BTreeMap;
use std::path::PathBuf;

pub(super) fn valid_job_name(n: &str) -> bool {
    !n.is_empty()
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

pub(super) const JOB_KEYS: &[&str] = &[
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
    "vanished",
    "log_noop",
    "max_delete",
    "preserve_owner",
    "overlap",
    "catch_up",
    "parallel",
    "streams",
    "ssh",
    "rsync",
    "before",
    "after",
    "on_failure",
    "hook_timeout",
    "stale_after",
    "watch",
];
pub(super) const SSH_KEYS: &[&str] = &[
    "identity",
    "known_hosts",
    "global_known_hosts",
    "strict_host_key_checking",
    "password_file",
    "port",
    "timeout",
    "remote_helper",
    "config",
    "client",
    "proxy_jump",
    "max_listing_entries",
];
pub(super) const RSYNC_KEYS: &[&str] = &["password_file", "port", "timeout"];
pub(super) const TOP_KEYS: &[&str] = &[
    "defaults",
    "include",
    "jobs",
    "shutdown_timeout",
    "metrics",
    "metrics_textfile",
    "cluster",
];

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

/// Where problems go while a file is read.
pub(super) struct Ctx {
    /// the file being read (positions are in it)
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl Ctx {
    pub fn err(&mut self, pos: Pos, job: Option<&str>, msg: impl Into<String>) {
        self.problems.push(Problem {
            file: self.file.clone(),
            pos,
            job: job.map(String::from),
            message: msg.into(),
        });
    }

    /// The pairs of a mapping with duplicate and unknown keys reported.
    pub fn map<'n>(
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
                // the job is named by the prefix already: "job www: unknown key `x`"
                let place = if job.is_some() && what.starts_with("job ") {
                    String::new()
                } else {
                    format!(" in {what}")
                };
                self.err(k.pos, job, format!("unknown key `{key}`{place}{hint}"));
                continue;
            }
            out.push((key, v, k.pos));
        }
        out
    }
}

/// Raw settings of one job or of `defaults`, each with its node for positions.
#[derive(Default, Clone)]
pub(super) struct Raw<'n> {
    pub fields: BTreeMap<&'static str, &'n Node>,
    pub ssh: BTreeMap<&'static str, &'n Node>,
    pub rsync: BTreeMap<&'static str, &'n Node>,
}

pub(super) fn static_key(k: &str, known: &[&'static str]) -> &'static str {
    known.iter().find(|x| **x == k).copied().unwrap_or("")
}

pub(super) fn raw<'n>(ctx: &mut Ctx, node: &'n Node, what: &str, job: Option<&str>) -> Raw<'n> {
    let mut r = Raw::default();
    for (k, v, _) in ctx.map(node, what, JOB_KEYS, job) {
        if k == "ssh" {
            for (sk, sv, _) in ctx.map(v, "ssh", SSH_KEYS, job) {
                r.ssh.insert(static_key(sk, SSH_KEYS), sv);
            }
        } else if k == "rsync" {
            for (sk, sv, _) in ctx.map(v, "rsync", RSYNC_KEYS, job) {
                r.rsync.insert(static_key(sk, RSYNC_KEYS), sv);
            }
        } else {
            r.fields.insert(static_key(k, JOB_KEYS), v);
        }
    }
    r
}

/// Problems in the order of the files (as first met) and, within a file,
/// of their positions.
pub(super) fn in_file_order(mut problems: Vec<Problem>) -> Vec<Problem> {
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
