//! `syncjob import sersync CONFXML`: a sersync 2.5 `confxml.xml` → jobs.
//!
//! Mapping (one job per `<localpath>`): `watch` → `source`; each `<remote
//! ip name>` → target `[user@]ip::name` (rsync daemon), or `ip:name` over
//! SSH with `<ssh start="true">`; `<auth>` → user and
//! `rsync.password_file`; `<userDefinedPort>`/`<timeout>` → `rsync.port`/
//! `rsync.timeout` (`ssh.` with SSH); `<commonParams>` flags → `compare`,
//! `mode`, `preserve_owner`, `delete`, `exclude`; `<inotify><delete>` →
//! `delete`; events → `watch: true` (when this build knows `watch`);
//! `<filter>` regular expressions → globs where the translation is exact;
//! `<crontab schedule=MIN>` → `schedule: "@every MINm"` with its
//! `<crontabfilter>` globs; `<failLog timeToExecute=MIN>` →
//! `retry_interval`; the `command` plugin → an `after:` hook. Everything
//! else that was switched on is kept as a comment saying why not.
//!
//! Invariants: malformed XML is an error with line and column; DTDs are
//! refused (no entity expansion); the output depends on the input only.

use super::rsync_args::add_exclude;
use super::{JobOut, job_name, q};
use roxmltree::{Document, Node};
use std::collections::BTreeSet;

#[derive(Debug, thiserror::Error)]
pub enum SersyncError {
    #[error("{file}:{line}:{col}: malformed XML: {msg}")]
    Xml {
        file: String,
        line: u32,
        col: u32,
        msg: String,
    },
    #[error("{file}: not a sersync configuration: {msg}")]
    NotSersync { file: String, msg: String },
}

fn child<'a, 'i>(n: Node<'a, 'i>, name: &str) -> Option<Node<'a, 'i>> {
    n.children().find(|c| c.has_tag_name(name))
}

fn children<'a, 'i>(n: Node<'a, 'i>, name: &'a str) -> impl Iterator<Item = Node<'a, 'i>> + 'a {
    n.children().filter(move |c| c.has_tag_name(name))
}

fn on(n: Option<Node>) -> bool {
    n.and_then(|n| n.attribute("start"))
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

fn attr<'a>(n: Option<Node<'a, '_>>, a: &str) -> Option<&'a str> {
    n.and_then(|n| n.attribute(a)).map(str::trim)
}

/// A sersync filter expression as an exact syncjob/rsync glob, where one
/// exists: `(.*)\.ext` / `.*\.ext` → `*.ext`; `^dir/*`, `^dir/.*`,
/// `^dir` → `/dir` (anchored at the source root).
pub fn regex_to_glob(re: &str) -> Option<String> {
    let lit_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '~');
    for pre in ["(.*)\\.", ".*\\."] {
        if let Some(ext) = re.strip_prefix(pre) {
            let ext = ext.strip_suffix('$').unwrap_or(ext);
            if !ext.is_empty() && ext.chars().all(lit_char) {
                return Some(format!("*.{ext}"));
            }
        }
    }
    let body = re.strip_prefix('^')?;
    let body = ["/(.*)", "/.*", "/*", "$", "/"]
        .iter()
        .find_map(|s| body.strip_suffix(s))
        .unwrap_or(body);
    // literal path: letters, digits, `_-~`, `/` between names, `\.` for a dot
    let lit = body.replace("\\.", "\u{0}");
    if lit.is_empty()
        || lit.starts_with('/')
        || lit.contains("//")
        || !lit.chars().all(|c| lit_char(c) || c == '/' || c == '\u{0}')
    {
        return None;
    }
    Some(format!("/{}", lit.replace('\u{0}', ".")))
}

/// `<commonParams params="-artuz">` → job settings and notes.
fn common_params(params: &str, job: &mut JobOut) {
    for tok in params.split_whitespace() {
        if let Some(long) = tok.strip_prefix("--") {
            match long.split_once('=') {
                None if long == "delete" => job.field("delete", "true".into()),
                None if long == "checksum" => job.field("compare", q("checksum")),
                None if long == "ignore-times" => job.field("mode", q("full")),
                Some(("exclude", p)) => add_exclude(job, p),
                _ => job.note(format!(
                    "commonParams `{tok}`: not carried over (no syncjob equivalent)"
                )),
            }
            continue;
        }
        let Some(flags) = tok.strip_prefix('-') else {
            job.note(format!("commonParams `{tok}`: not carried over"));
            continue;
        };
        for f in flags.chars() {
            if let Err(why) = super::rsync_args::short_flag(f, job) {
                job.note(format!("commonParams: {why}: not carried over"));
            }
        }
    }
}

/// Where the `<rsync>` settings go: `rsync:` for daemon targets, `ssh:`
/// for targets over SSH.
fn connection(rs: Option<Node>, ssh: bool, job: &mut JobOut) {
    let port = child_on(rs, "userDefinedPort").and_then(|n| attr(Some(n), "port"));
    let timeout = child_on(rs, "timeout").and_then(|n| attr(Some(n), "time"));
    let auth = child_on(rs, "auth");
    let mut map = Vec::new();
    if !ssh && let Some(pf) = attr(auth, "passwordfile").filter(|p| !p.is_empty()) {
        map.push(("password_file".to_string(), q(pf)));
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(p) if p > 0 => map.push(("port".into(), p.to_string())),
            _ => job.note(format!("userDefinedPort {p:?}: not a port number")),
        }
    }
    if let Some(t) = timeout {
        match t.parse::<u64>() {
            Ok(t) if t > 0 && t <= 86_400 => map.push(("timeout".into(), q(&format!("{t}s")))),
            _ => job.note(format!("timeout {t:?}: not a number of seconds")),
        }
    }
    if ssh {
        job.ssh = map;
    } else {
        job.rsync = map;
    }
    if ssh && auth.is_some() {
        job.note("auth: rsync daemon users do not apply over SSH; the SSH user is the one running syncjob (or ~/.ssh/config's User)");
    }
}

fn child_on<'a, 'i>(n: Option<Node<'a, 'i>>, name: &str) -> Option<Node<'a, 'i>> {
    n.and_then(|n| child(n, name)).filter(|c| on(Some(*c)))
}

fn targets(lp: Node, rs: Option<Node>, ssh: bool, job: &mut JobOut) {
    let user = child_on(rs, "auth")
        .and_then(|a| attr(Some(a), "users"))
        .filter(|u| !u.is_empty() && !ssh);
    for r in children(lp, "remote") {
        let (ip, name) = (
            attr(Some(r), "ip").unwrap_or(""),
            attr(Some(r), "name").unwrap_or(""),
        );
        let user = user.map(|u| format!("{u}@")).unwrap_or_default();
        let t = if ssh {
            format!("{ip}:{name}")
        } else {
            format!("{user}{ip}::{name}")
        };
        match crate::target::parse(&t, std::path::Path::new("/")) {
            Ok(_) => job.targets.push(t),
            Err(e) => job.note(format!(
                "remote ip={ip:?} name={name:?}: not carried over: {e}"
            )),
        }
    }
}

fn filters(head: Node, job: &mut JobOut) {
    let f = child(head, "filter");
    let exprs: Vec<&str> = f
        .map(|f| {
            children(f, "exclude")
                .filter_map(|e| attr(Some(e), "expression"))
                .collect()
        })
        .unwrap_or_default();
    if exprs.is_empty() {
        return;
    }
    if !on(f) {
        job.note(format!(
            "sersync's filter was off: its expressions ({}) were not carried over",
            exprs.join(" ")
        ));
        return;
    }
    for e in exprs {
        match regex_to_glob(e) {
            Some(g) => add_exclude(job, &g),
            None => job.note(format!(
                "filter expression `{e}`: a regular expression with no exact glob; add an exclude by hand"
            )),
        }
    }
}

fn events(head: Node, job: &mut JobOut, watch_known: bool) {
    let ino = child(head, "inotify");
    if on(ino.and_then(|i| child(i, "delete"))) {
        job.field("delete", "true".into());
    }
    if watch_known {
        job.field("watch", "true".into());
    } else {
        job.note("sersync synced each change as it happened (inotify): this syncjob has no watch mode; add `watch: true` where it does, or a schedule");
    }
}

fn schedule_and_retries(s: Node, job: &mut JobOut) {
    let cron = child(s, "crontab");
    if on(cron) {
        match attr(cron, "schedule").and_then(|m| m.parse::<u64>().ok()) {
            Some(m) if m > 0 && m <= 525_600 => job.field("schedule", q(&format!("@every {m}m"))),
            _ => job.note("crontab: its schedule is not a number of minutes; not carried over"),
        }
        let cf = cron.and_then(|c| child(c, "crontabfilter"));
        if on(cf) {
            for e in cf.into_iter().flat_map(|c| children(c, "exclude")) {
                if let Some(g) = attr(Some(e), "expression").filter(|g| !g.is_empty()) {
                    add_exclude(job, g);
                }
            }
        }
    }
    if let Some(fl) = child(s, "failLog") {
        if let Some(m) = attr(Some(fl), "timeToExecute").and_then(|m| m.parse::<u64>().ok())
            && m > 0
            && m <= 525_600
        {
            job.field("retry_interval", q(&format!("{m}m")));
        }
        job.note("failLog: no script of failed paths; a failed run is retried (retries, retry_interval) and each retry sends whatever still differs");
    }
}

fn plugins(head: Node, s: Node, job: &mut JobOut) {
    for p in children(s, "plugin").filter(|p| on(Some(*p))) {
        let name = attr(Some(p), "name").unwrap_or("");
        let def = children(head, "plugin").find(|d| attr(Some(*d), "name") == Some(name));
        if name != "command" {
            job.note(format!(
                "plugin {name:?}: not carried over (syncjob has no {name} plugin; an `after:` hook can call a script)"
            ));
            continue;
        }
        let param = def.and_then(|d| child(d, "param"));
        let cmd = format!(
            "{} {}",
            attr(param, "prefix").unwrap_or(""),
            attr(param, "suffix").unwrap_or("")
        );
        let cmd = cmd.trim();
        if cmd.is_empty() {
            job.note("plugin command: no prefix/suffix; not carried over");
            continue;
        }
        job.field("after", q(cmd));
        job.note("plugin command: sersync ran it once per changed file with the file's path between prefix and suffix; `after` runs it once after each run, with SYNCJOB_* variables instead");
        if on(def.and_then(|d| child(d, "filter"))) {
            job.note("plugin command filter: not carried over (`after` runs after every run)");
        }
    }
}

/// The jobs file for a sersync configuration.
pub fn import(bytes: &[u8], shown: &str) -> Result<String, SersyncError> {
    let text = super::text_of(bytes);
    let doc = Document::parse(&text).map_err(|e| {
        let p = e.pos();
        SersyncError::Xml {
            file: shown.to_string(),
            line: p.row,
            col: p.col,
            msg: e.to_string(),
        }
    })?;
    let head = doc.root_element();
    let not = |msg: &str| SersyncError::NotSersync {
        file: shown.to_string(),
        msg: msg.to_string(),
    };
    if !head.has_tag_name("head") {
        return Err(not("the root element is not <head>"));
    }
    let s = child(head, "sersync").ok_or_else(|| not("no <sersync> element"))?;
    let rs = child(s, "rsync");
    let ssh = on(rs.and_then(|r| child(r, "ssh")));
    let watch_known = super::knows_job_key("watch");
    let mut taken = BTreeSet::new();
    let mut jobs = Vec::new();
    let mut trailer = Vec::new();
    for lp in children(s, "localpath") {
        let src = attr(Some(lp), "watch").unwrap_or("").trim_end_matches('/');
        let base = src.rsplit('/').next().unwrap_or("");
        let mut job = JobOut {
            name: job_name(base, &mut taken),
            origin: vec![format!("<localpath watch=\"{src}\">")],
            source: src.to_string(),
            ..Default::default()
        };
        targets(lp, rs, ssh, &mut job);
        if let Some(p) = attr(rs.and_then(|r| child(r, "commonParams")), "params") {
            common_params(p, &mut job);
        }
        events(head, &mut job, watch_known);
        filters(head, &mut job);
        schedule_and_retries(s, &mut job);
        connection(rs, ssh, &mut job);
        plugins(head, s, &mut job);
        if on(child(head, "debug")) {
            job.note("debug: not carried over (use syncjob -v)");
        }
        if src.is_empty() || job.targets.is_empty() {
            trailer.push(format!(
                "<localpath watch={src:?}>: not carried over: {}",
                if src.is_empty() {
                    "no watch path"
                } else {
                    "no usable <remote>"
                }
            ));
            trailer.extend(job.notes.iter().map(|n| format!("  {n}")));
            continue;
        }
        match super::validated(job) {
            Ok(job) => jobs.push(job),
            Err(why) => trailer.push(format!(
                "<localpath watch={src:?}>: not carried over: {why}"
            )),
        }
    }
    if jobs.is_empty() && trailer.is_empty() {
        trailer.push("no <localpath> in <sersync>: nothing to carry over".into());
    }
    let header = vec![
        format!("Imported by `syncjob import sersync` from {shown}."),
        "Check it with `syncjob -c THIS_FILE check`; comments say what was not carried over."
            .into(),
    ];
    Ok(super::render(&header, &jobs, &trailer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_translations_are_exact_or_refused() {
        assert_eq!(regex_to_glob("(.*)\\.svn").as_deref(), Some("*.svn"));
        assert_eq!(regex_to_glob(".*\\.gz$").as_deref(), Some("*.gz"));
        assert_eq!(regex_to_glob("^info/*").as_deref(), Some("/info"));
        assert_eq!(regex_to_glob("^static/.*").as_deref(), Some("/static"));
        assert_eq!(regex_to_glob("^a/b\\.d/*").as_deref(), Some("/a/b.d"));
        for no in [
            "wwwroot/blogwhsir/*",
            "(.*)\\.p[hl]p",
            "^in.o/*",
            "^",
            "(.*)\\.",
            "^/etc",
            "^a//b",
        ] {
            assert_eq!(regex_to_glob(no), None, "{no}");
        }
    }

    #[test]
    fn malformed_xml_names_line_and_column() {
        let e = import(b"<head>\n  <sersync>\n  </sersyn>\n</head>\n", "c.xml").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("c.xml:3:"), "{s}");
        assert!(s.contains("malformed XML"), "{s}");
    }

    #[test]
    fn a_dtd_is_refused() {
        let x = b"<?xml version=\"1.0\"?><!DOCTYPE head [<!ENTITY a \"aaaa\">]><head>&a;</head>";
        assert!(import(x, "x").is_err());
    }
}
