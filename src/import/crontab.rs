//! `syncjob import crontab [FILE|-]` and `--loop SCRIPT`.
//!
//! Crontab lines: 5 time fields or an `@macro`, then (in `/etc/crontab`
//! and `/etc/cron.d/*`, or when the sixth field is a user name followed by
//! a command) a user, then a shell command. A command that runs `rsync`
//! or `scp -r`, possibly after `cd DIR &&` and behind `flock`, `nice`,
//! `ionice`, `timeout`, `env` or `sh -c`, with any redirections, becomes a
//! job. A loop script (`while true; do rsync …; sleep N; done`) becomes a
//! job with `@every Ns`. Everything else stays as a comment with the
//! reason.
//!
//! Invariants: the output depends on the input text only (and on the
//! files named by `--exclude-from`); input lines are never executed.

use super::rsync_args;
use super::shell::{self, Word};
use super::{JobOut, job_name, q};
use crate::schedule::Schedule;
use std::collections::BTreeSet;

/// Commands that run the rest of their words as a command.
fn unwrap_command(words: &[Word], notes: &mut Vec<String>) -> Result<Vec<Word>, String> {
    let mut w = words.to_vec();
    loop {
        let Some(first) = w.first() else {
            return Ok(w);
        };
        let name = first.text.rsplit('/').next().unwrap_or("").to_string();
        let skip = match name.as_str() {
            "flock" => {
                notes.push("flock: not needed; every run takes the job's own lock".into());
                // flock [opts] LOCKFILE CMD… | flock [opts] LOCKFILE -c CMD
                let mut i = 1;
                while i < w.len() && w[i].text.starts_with('-') {
                    i += if matches!(
                        w[i].text.as_str(),
                        "-w" | "--timeout" | "-E" | "--conflict-exit-code"
                    ) {
                        2
                    } else {
                        1
                    };
                }
                i += 1; // the lock file
                if w.get(i)
                    .is_some_and(|x| x.text == "-c" || x.text == "--command")
                {
                    return inner(w.get(i + 1), notes);
                }
                i
            }
            "nice" | "ionice" | "timeout" | "env" | "nohup" | "chronic" => {
                let mut i = 1;
                while i < w.len() && (w[i].text.starts_with('-') || w[i].text.contains('=')) {
                    let takes = matches!(
                        w[i].text.as_str(),
                        "-n" | "-c" | "-s" | "-k" | "--signal" | "--kill-after"
                    );
                    i += if takes { 2 } else { 1 };
                }
                // timeout DURATION
                if name == "timeout" && i < w.len() {
                    i += 1;
                }
                i
            }
            "sh" | "bash" | "dash" if w.get(1).is_some_and(|x| x.text == "-c") => {
                return inner(w.get(2), notes);
            }
            _ => return Ok(w),
        };
        if skip >= w.len() {
            return Err(format!("`{name}` without a command"));
        }
        w.drain(..skip);
    }
}

/// The command inside `-c '…'`: its rsync/scp part.
fn inner(s: Option<&Word>, notes: &mut Vec<String>) -> Result<Vec<Word>, String> {
    let s = s.ok_or("`-c` without a command")?;
    let toks = shell::split(&s.text)?;
    let cmds = shell::commands(&toks);
    let found = cmds
        .into_iter()
        .find(|(c, _)| c.iter().any(|w| is_sync(&w.text)))
        .ok_or("the `-c` command runs no rsync or scp")?;
    unwrap_command(&found.0, notes)
}

fn is_sync(word: &str) -> bool {
    matches!(word.rsplit('/').next(), Some("rsync" | "scp"))
}

/// Jobs from one shell command line (with its `cd`s).
fn jobs_of_command(cmd: &str) -> Result<Vec<JobOut>, String> {
    let toks = shell::split(cmd)?;
    let mut cwd: Option<String> = None;
    let mut jobs = Vec::new();
    let mut notes = Vec::new();
    for (words, piped) in shell::commands(&toks) {
        if piped {
            notes.push(format!(
                "`| {}`: output handling not carried over (the run log has each outcome)",
                words[0].text
            ));
            continue;
        }
        if words[0].text == "cd" {
            match words.get(1) {
                Some(d) if !d.dynamic && d.text.starts_with('/') => cwd = Some(d.text.clone()),
                _ => cwd = None,
            }
            continue;
        }
        let w = unwrap_command(&words, &mut notes)?;
        let Some(first) = w.first() else { continue };
        let job = match first.text.rsplit('/').next() {
            Some("rsync") => rsync_args::rsync(&w[1..], cwd.as_deref())?,
            Some("scp") => rsync_args::scp(&w[1..], cwd.as_deref())?,
            Some("sleep" | "echo" | "date" | "true" | ":" | "logger") => continue,
            _ => {
                notes.push(format!(
                    "`{}`: not carried over (not rsync or scp)",
                    first.text
                ));
                continue;
            }
        };
        jobs.push(job);
    }
    if jobs.is_empty() {
        return Err(
            match notes.iter().find(|n| n.contains("not rsync or scp")) {
                Some(n) => format!(
                    "{n}; import the rsync line of a script by hand, or a `while` loop script with --loop"
                ),
                None => "runs no rsync or scp -r command".into(),
            },
        );
    }
    for j in &mut jobs {
        for n in &notes {
            j.note(n.clone());
        }
    }
    Ok(jobs)
}

const MACROS: &[&str] = &[
    "@yearly",
    "@annually",
    "@monthly",
    "@weekly",
    "@daily",
    "@midnight",
    "@hourly",
];

fn looks_like_user(w: &str) -> bool {
    !w.is_empty()
        && w.len() <= 32
        && w.chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && w.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'))
        && !matches!(
            w,
            "rsync"
                | "scp"
                | "cd"
                | "flock"
                | "nice"
                | "ionice"
                | "timeout"
                | "env"
                | "sh"
                | "bash"
                | "nohup"
                | "sleep"
        )
}

/// Split a crontab line into (spec, user, command).
fn fields(line: &str, system: bool) -> Result<(String, Option<String>, String), String> {
    let mut rest = line.trim_start();
    let take = |rest: &mut &str| -> Option<String> {
        let r = rest.trim_start();
        let end = r.find([' ', '\t']).unwrap_or(r.len());
        let (w, tail) = r.split_at(end);
        *rest = tail;
        (!w.is_empty()).then(|| w.to_string())
    };
    let first = take(&mut rest).ok_or("empty line")?;
    let spec = if first.starts_with('@') {
        if first == "@reboot" {
            return Err("@reboot runs once at boot; syncjob jobs run on a schedule".into());
        }
        if !MACROS.contains(&first.as_str()) {
            return Err(format!("unknown {first}"));
        }
        first
    } else {
        let mut f = vec![first];
        for _ in 0..4 {
            f.push(take(&mut rest).ok_or("fewer than 5 time fields")?);
        }
        f.join(" ")
    };
    let after_spec = rest;
    let user = take(&mut rest);
    let user_col = match &user {
        Some(u) if system => Some(u.clone()),
        Some(u) if looks_like_user(u) && !rest.trim().is_empty() => Some(u.clone()),
        _ => None,
    };
    let command = if user_col.is_some() { rest } else { after_spec };
    // crontab: an unescaped `%` ends the command (the rest is its stdin)
    let mut cmd = String::new();
    let mut chars = command.trim().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars.peek() == Some(&'%') => cmd.push(chars.next().unwrap_or('%')),
            '%' => break,
            _ => cmd.push(c),
        }
    }
    let cmd = cmd.trim_end().to_string();
    if cmd.is_empty() {
        return Err("no command".into());
    }
    Ok((spec, user_col, cmd))
}

/// The jobs file for a crontab.
pub fn import(bytes: &[u8], shown: &str) -> String {
    let text = super::text_of(bytes);
    let system = shown == "/etc/crontab" || shown.contains("/cron.d/");
    let mut taken = BTreeSet::new();
    let mut jobs = Vec::new();
    let mut trailer = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') {
            continue;
        }
        // VAR=value lines
        if let Some((k, _)) = t.split_once('=')
            && !k.is_empty()
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let r = fields(t, system).and_then(|(spec, user, cmd)| {
            Schedule::parse(&spec).map_err(|e| format!("schedule {spec:?}: {e}"))?;
            let js = jobs_of_command(&cmd)?;
            Ok((spec, user, js))
        });
        match r {
            Ok((spec, user, js)) => {
                for mut j in js {
                    j.origin = vec![format!("line {}: {t}", n + 1)];
                    j.field("schedule", q(&spec));
                    if let Some(u) = &user {
                        j.note(format!(
                            "ran as user {u}: syncjob runs jobs as the user running it"
                        ));
                    }
                    j.name = job_name(base_name(&j.source), &mut taken);
                    match super::validated(finish(j)) {
                        Ok(j) => jobs.push(j),
                        Err(why) => trailer
                            .push(format!("line {}: {t}\n    not carried over: {why}", n + 1)),
                    }
                }
            }
            Err(why) => trailer.push(format!("line {}: {t}\n    not carried over: {why}", n + 1)),
        }
    }
    let header = vec![
        format!("Imported by `syncjob import crontab` from {shown}."),
        "Check it with `syncjob -c THIS_FILE check`; comments say what was not carried over."
            .into(),
    ];
    render_split(&header, &jobs, &trailer)
}

fn base_name(src: &str) -> &str {
    src.trim_end_matches('/').rsplit('/').next().unwrap_or("")
}

/// Fields in one stable order, whatever order the options came in.
fn finish(mut j: JobOut) -> JobOut {
    const ORDER: &[&str] = &[
        "mode",
        "compare",
        "delete",
        "max_delete",
        "preserve_owner",
        "exclude",
        "schedule",
    ];
    j.fields
        .sort_by_key(|(k, _)| ORDER.iter().position(|o| o == k).unwrap_or(ORDER.len()));
    j
}

/// `render`, with multi-line trailer entries kept as separate comment lines.
fn render_split(header: &[String], jobs: &[JobOut], trailer: &[String]) -> String {
    let lines: Vec<String> = trailer
        .iter()
        .flat_map(|t| t.lines().map(String::from).collect::<Vec<_>>())
        .collect();
    super::render(header, jobs, &lines)
}

/// Seconds of a `sleep` argument (`1`, `0.5`, `2s`, `1m`), rounded up to
/// at least 1.
fn sleep_secs(arg: &str) -> Option<u64> {
    let (num, mult) = match arg.chars().last()? {
        's' => (&arg[..arg.len() - 1], 1.0),
        'm' => (&arg[..arg.len() - 1], 60.0),
        'h' => (&arg[..arg.len() - 1], 3600.0),
        _ => (arg, 1.0),
    };
    let v: f64 = num.parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| ((v * mult).ceil() as u64).max(1))
}

/// The jobs file for a `while true; do rsync …; sleep N; done` script.
pub fn import_loop(bytes: &[u8], shown: &str) -> String {
    let header = vec![
        format!("Imported by `syncjob import crontab --loop` from {shown}."),
        "Check it with `syncjob -c THIS_FILE check`; comments say what was not carried over."
            .into(),
    ];
    match loop_jobs(&super::text_of(bytes)) {
        Ok(jobs) => super::render(&header, &jobs, &[]),
        Err(why) => super::render(&header, &[], &[format!("{shown}: not carried over: {why}")]),
    }
}

/// The commands inside `while true; do …; done`.
fn loop_body(words: &[(Vec<Word>, bool)]) -> Result<Vec<Vec<Word>>, String> {
    let start = words
        .iter()
        .position(|(c, _)| c[0].text == "while")
        .ok_or("no `while` loop")?;
    let cond = words[start].0[1..]
        .iter()
        .map(|w| w.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    if !matches!(
        cond.as_str(),
        "true" | ":" | "[ 1 ]" | "[ true ]" | "((1))" | "/bin/true"
    ) {
        return Err(format!("the loop runs `while {cond}`, not forever"));
    }
    let mut body = Vec::new();
    let mut seen_do = false;
    for (c, _) in &words[start + 1..] {
        let mut c: &[Word] = c;
        if !seen_do {
            if c[0].text != "do" {
                return Err("expected `do` after `while`".into());
            }
            seen_do = true;
            c = &c[1..];
            if c.is_empty() {
                continue;
            }
        }
        if c[0].text == "done" {
            return Ok(body);
        }
        body.push(c.to_vec());
    }
    Err("no `done` closing the loop".into())
}

fn loop_jobs(text: &str) -> Result<Vec<JobOut>, String> {
    let toks = shell::split(text)?;
    let body = loop_body(&shell::commands(&toks))?;
    let secs = body
        .iter()
        .filter(|c| c[0].text == "sleep")
        .find_map(|c| c.get(1).and_then(|a| sleep_secs(&a.text)));
    let mut taken = BTreeSet::new();
    let mut jobs = Vec::new();
    let every = secs.unwrap_or(1);
    for c in body.iter().filter(|c| c[0].text != "sleep") {
        let line: Vec<String> = c.iter().map(|w| shell_word(&w.text)).collect();
        let line = line.join(" ");
        match jobs_of_command(&line) {
            Ok(js) => {
                for mut j in js {
                    j.origin = vec![format!("loop: {line}")];
                    j.field("schedule", q(&format!("@every {every}s")));
                    if secs.is_none() {
                        j.note("the loop had no `sleep`: runs every second");
                    }
                    j.note("the loop ran again when the last run ended; a run longer than the interval skips firings (overlap: skip)");
                    j.name = job_name(base_name(&j.source), &mut taken);
                    match super::validated(finish(j)) {
                        Ok(j) => jobs.push(j),
                        Err(why) => return Err(format!("`{line}`: {why}")),
                    }
                }
            }
            Err(_)
                if matches!(
                    c[0].text.as_str(),
                    "echo" | "date" | ":" | "true" | "logger"
                ) => {}
            Err(why) => {
                if let Some(last) = jobs.last_mut() {
                    last.note(format!("loop command `{line}`: not carried over: {why}"));
                }
            }
        }
    }
    if jobs.is_empty() {
        return Err("the loop runs no rsync or scp -r command".into());
    }
    Ok(jobs)
}

/// A word quoted for the shell again (to re-read a command's words).
fn shell_word(w: &str) -> String {
    if !w.is_empty()
        && w.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:@,+%".contains(c))
    {
        w.to_string()
    } else {
        format!("'{}'", w.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crontab_fields() {
        let (s, u, c) = fields("*/1 * * * * /root/rsync.sh", false).unwrap();
        assert_eq!(
            (s.as_str(), u, c.as_str()),
            ("*/1 * * * *", None, "/root/rsync.sh")
        );
        let (_, u, c) = fields("0 3 * * * root rsync -a /a/ h:/b", true).unwrap();
        assert_eq!(
            (u.as_deref(), c.as_str()),
            (Some("root"), "rsync -a /a/ h:/b")
        );
        let (_, u, _) = fields("0 3 * * * www-data rsync -a /a/ h:/b", false).unwrap();
        assert_eq!(u.as_deref(), Some("www-data"));
        let (s, _, c) = fields("@daily rsync -a /a/ h:/b % stdin", false).unwrap();
        assert_eq!((s.as_str(), c.as_str()), ("@daily", "rsync -a /a/ h:/b"));
        assert!(fields("@reboot rsync -a /a/ h:/b", false).is_err());
        assert!(fields("* * *", false).is_err());
    }

    #[test]
    fn wrappers_and_cd() {
        let j = jobs_of_command("cd /srv && flock -n /tmp/l nice -n 10 rsync -a --delete site/ web:/srv/site >>/var/log/x 2>&1").unwrap();
        assert_eq!(j[0].source, "/srv/site");
        assert!(j[0].notes.iter().any(|n| n.contains("flock")));
        let j = jobs_of_command("flock -xn /tmp/l -c 'rsync -a /a/ h:/b'").unwrap();
        assert_eq!(j[0].targets, ["h:/b"]);
        assert!(jobs_of_command("/usr/sbin/logrotate /etc/x").is_err());
    }

    #[test]
    fn sleeps() {
        assert_eq!(sleep_secs("1"), Some(1));
        assert_eq!(sleep_secs("0.5"), Some(1));
        assert_eq!(sleep_secs("2m"), Some(120));
        assert_eq!(sleep_secs("x"), None);
    }
}
