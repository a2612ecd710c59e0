//! An `rsync …` or `scp -r …` command line (as shell words) → a job:
//! source, target and the settings its options map to. Shared by the
//! crontab and shell-loop importers; the flag table is also used for
//! sersync's `commonParams`.
//!
//! Invariants: a command whose meaning syncjob cannot reproduce (pulls,
//! several sources, `--include`, `--dry-run`, `-R`, no recursion, shell
//! expansions or globs in a path) is refused with the reason, never half
//! translated; options that only change speed or output become notes.

use super::shell::{self, Word};
use super::{JobOut, q};
use std::path::Path;

/// Where a path argument points.
enum Place {
    Local,
    Ssh,
    Daemon,
}

fn place(arg: &str) -> Place {
    if arg.starts_with("rsync://") || crate::target::rsync::parse_target(arg).is_some() {
        return Place::Daemon;
    }
    if arg.starts_with('/') || arg.starts_with('.') {
        return Place::Local;
    }
    match (arg.find(':'), arg.find('/')) {
        (Some(c), s) if s.is_none_or(|s| c < s) => Place::Ssh,
        _ => Place::Local,
    }
}

/// One short rsync flag (also sersync's `commonParams`). `Err` refuses the
/// whole command.
pub fn short_flag(f: char, job: &mut JobOut) -> Result<(), String> {
    match f {
        // what syncjob always does, or output only
        'r' | 't' | 'l' | 'p' | 'v' | 'q' | 'h' | 'D' | 'P' | 'i' | 'W' | 'S' | '8' | 's' | 'O'
        | 'J' | 'k' | 'K' | 'd' => {}
        'a' | 'o' | 'g' => job.field("preserve_owner", "true".into()),
        'c' => job.field("compare", q("checksum")),
        'I' => job.field("mode", q("full")),
        'z' => job.note("-z (compression): not carried over; syncjob sends files uncompressed"),
        'u' => job.note(
            "-u (keep files newer on the target): not carried over; syncjob makes the target equal to the source",
        ),
        'H' => job.note("-H (hard links): not carried over; hard-linked files are copied as separate files"),
        'L' => job.note("-L (follow symlinks): not carried over; syncjob copies symlinks as symlinks"),
        'x' => job.note("-x (one file system): not carried over"),
        'b' => job.note("-b (backups): not carried over"),
        'C' => job.note("-C (CVS excludes): not carried over; list the patterns in `exclude`"),
        'n' => return Err("a dry run (-n)".into()),
        'R' => return Err("-R (relative paths) lays the tree out differently".into()),
        other => job.note(format!("-{other}: not carried over")),
    }
    Ok(())
}

const RSYNC_VALUE_OPTS: &[&str] = &[
    "exclude",
    "exclude-from",
    "include",
    "include-from",
    "filter",
    "files-from",
    "password-file",
    "port",
    "timeout",
    "contimeout",
    "rsh",
    "log-file",
    "bwlimit",
    "chmod",
    "temp-dir",
    "partial-dir",
    "backup-dir",
    "suffix",
    "max-delete",
    "max-size",
    "min-size",
    "compare-dest",
    "link-dest",
    "copy-dest",
    "out-format",
    "log-file-format",
    "modify-window",
    "chown",
    "usermap",
    "groupmap",
    "iconv",
    "sockopts",
    "outbuf",
    "remote-option",
    "info",
    "debug",
    "compress-level",
    "skip-compress",
    "block-size",
    "checksum-choice",
    "compress-choice",
    "address",
    "rsync-path",
];

/// What a command's options say, beside the job's own fields.
#[derive(Default)]
struct Opts {
    recursive: bool,
    ssh: Vec<(String, String)>,
    rsync: Vec<(String, String)>,
    /// `--timeout`: for the ssh or rsync block, once the target is known
    timeout: Option<String>,
    user: Option<String>,
    /// `-e` given
    remote_shell: bool,
}

/// A port number as YAML.
fn port(v: &str) -> Result<String, String> {
    match v.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p.to_string()),
        _ => Err(format!("port {v:?} is not a port number")),
    }
}

/// A number of seconds as a YAML duration (`0`, rsync's "no timeout":
/// `None`, syncjob's default applies).
fn secs(v: &str) -> Result<Option<String>, String> {
    match v.parse::<u64>() {
        Ok(0) => Ok(None),
        Ok(n) if n <= 86_400 => Ok(Some(q(&format!("{n}s")))),
        _ => Err(format!(
            "timeout {v:?} is not a number of seconds (up to a day)"
        )),
    }
}

fn resolve(p: &str, cwd: Option<&str>) -> Result<String, String> {
    if p.starts_with('/') {
        return Ok(p.to_string());
    }
    match cwd {
        Some(c) if c.starts_with('/') => Ok(format!("{}/{p}", c.trim_end_matches('/'))),
        _ => Err(format!(
            "relative path {p:?} and no `cd /dir` before the command"
        )),
    }
}

/// `-e "ssh -p 2222 -i KEY -o …"` → ssh settings.
fn remote_shell(cmd: &str, o: &mut Opts, job: &mut JobOut) -> Result<(), String> {
    let toks = shell::split(cmd).map_err(|e| format!("-e {cmd:?}: {e}"))?;
    let words: Vec<String> = shell::commands(&toks)
        .into_iter()
        .flat_map(|(c, _)| c.into_iter().map(|w| w.text))
        .collect();
    let Some(first) = words.first() else {
        return Ok(());
    };
    if Path::new(first).file_name().and_then(|n| n.to_str()) != Some("ssh") {
        return Err(format!("remote shell {first:?} is not ssh"));
    }
    o.remote_shell = true;
    let mut it = words[1..].iter();
    while let Some(w) = it.next() {
        let mut val = || it.next().cloned().ok_or(format!("ssh {w} needs a value"));
        match w.as_str() {
            "-p" => o.ssh.push(("port".into(), port(&val()?)?)),
            "-i" => o.ssh.push(("identity".into(), q(&val()?))),
            "-l" => o.user = Some(val()?),
            "-o" => {
                let v = val()?;
                let (k, x) = v.split_once('=').unwrap_or((&v, ""));
                match k.to_ascii_lowercase().as_str() {
                    "port" => o.ssh.push(("port".into(), port(x)?)),
                    "identityfile" => o.ssh.push(("identity".into(), q(x))),
                    "userknownhostsfile" => o.ssh.push(("known_hosts".into(), q(x))),
                    "connecttimeout" => {
                        if let Some(t) = secs(x)? {
                            o.ssh.push(("timeout".into(), t));
                        }
                    }
                    "stricthostkeychecking" if matches!(x, "no" | "accept-new" | "off") => {
                        o.ssh
                            .push(("strict_host_key_checking".into(), q("accept-new")));
                        job.note(format!("ssh -o StrictHostKeyChecking={x}: syncjob accepts unknown host keys (accept-new) but never a changed one"));
                    }
                    "stricthostkeychecking" => {}
                    _ => job.note(format!(
                        "ssh -o {v}: not carried over (put it in ~/.ssh/config)"
                    )),
                }
            }
            "-q" | "-T" | "-x" | "-a" | "-4" | "-6" | "-C" => {}
            other => job.note(format!("ssh {other}: not carried over")),
        }
    }
    Ok(())
}

fn long_opt(
    name: &str,
    v: Option<String>,
    cwd: Option<&str>,
    o: &mut Opts,
    job: &mut JobOut,
) -> Result<(), String> {
    let v = v.unwrap_or_default();
    match name {
        "delete" | "delete-after" | "delete-before" | "delete-during" | "delete-delay" | "del" => {
            job.field("delete", "true".into())
        }
        "delete-excluded" => {
            job.field("delete", "true".into());
            job.note("--delete-excluded: not carried over; syncjob leaves excluded entries on the target alone");
        }
        "exclude" => add_exclude(job, &v),
        "exclude-from" => {
            let p = resolve(&v, cwd)?;
            let text =
                std::fs::read_to_string(&p).map_err(|e| format!("--exclude-from {p}: {e}"))?;
            for l in text.lines().map(str::trim) {
                if !l.is_empty() && !l.starts_with('#') && !l.starts_with(';') {
                    add_exclude(job, l);
                }
            }
        }
        "include" | "include-from" | "filter" | "files-from" => {
            return Err(format!("--{name}: syncjob has excludes only"));
        }
        "dry-run" | "list-only" => return Err(format!("--{name}")),
        "remove-source-files" => return Err("--remove-source-files moves files".into()),
        "relative" => return Err("--relative lays the tree out differently".into()),
        "password-file" => o
            .rsync
            .push(("password_file".into(), q(&resolve(&v, cwd)?))),
        "port" => o.rsync.push(("port".into(), port(&v)?)),
        "timeout" => o.timeout = secs(&v)?,
        "max-delete" => match v.parse::<u64>() {
            Ok(n) => job.field("max_delete", n.to_string()),
            Err(_) => return Err(format!("--max-delete={v:?} is not a number")),
        },
        "rsh" => remote_shell(&v, o, job)?,
        "checksum" => job.field("compare", q("checksum")),
        "ignore-times" => job.field("mode", q("full")),
        "owner" | "group" | "numeric-ids" => job.field("preserve_owner", "true".into()),
        "archive" | "recursive" => o.recursive = true,
        "links" | "perms" | "times" | "devices" | "specials" | "verbose" | "quiet" | "progress"
        | "stats" | "human-readable" | "partial" | "itemize-changes" | "no-motd" | "whole-file"
        | "protect-args" | "8-bit-output" | "force" => {}
        "compress" => job.note("--compress: not carried over; syncjob sends files uncompressed"),
        "log-file" => job.note("--log-file: not carried over; every run is in syncjob's run log"),
        other => job.note(format!("--{other}: not carried over")),
    }
    Ok(())
}

pub fn add_exclude(job: &mut JobOut, pat: &str) {
    if let Err(e) = crate::filter::Filter::check_pattern(pat) {
        job.note(format!("exclude {pat:?}: not carried over: {e}"));
        return;
    }
    let v = q(pat);
    match job.fields.iter_mut().find(|(k, _)| k == "exclude") {
        Some((_, list)) => {
            let inner = list
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string();
            if !inner.split(", ").any(|x| x == v) {
                *list = format!("[{inner}, {v}]");
            }
        }
        None => job.field("exclude", format!("[{v}]")),
    }
}

/// The target for `dest` receiving the directory `src` (with rsync's
/// trailing-slash meaning: `src/` sends its contents, `src` itself).
fn join_dest(dest: &str, src: &str, contents: bool) -> String {
    if contents {
        return dest.to_string();
    }
    let base = src.trim_end_matches('/').rsplit('/').next().unwrap_or("");
    if dest.ends_with('/') || dest.ends_with(':') {
        format!("{dest}{base}")
    } else {
        format!("{dest}/{base}")
    }
}

/// Source and target from the path arguments.
fn paths(
    pos: &[&Word],
    cwd: Option<&str>,
    scp: bool,
    o: &Opts,
    job: &mut JobOut,
) -> Result<(), String> {
    if pos.len() < 2 {
        return Err("needs a source and a destination".into());
    }
    if pos.len() > 2 {
        return Err("several sources in one command (make one job per source)".into());
    }
    for w in pos {
        if w.dynamic || w.glob {
            return Err(format!("{:?} uses shell expansion or a wildcard", w.text));
        }
    }
    let (src, dest) = (&pos[0].text, &pos[1].text);
    if !matches!(place(src), Place::Local) {
        return Err("pulls from a remote host (syncjob pushes a local source)".into());
    }
    let contents = !scp && (src.ends_with('/') || src.ends_with("/.") || src == ".");
    let src_abs = resolve(src.trim_end_matches("/."), cwd)?;
    let src_abs = src_abs.trim_end_matches('/').to_string();
    if src_abs.is_empty() {
        return Err("the source is `/`".into());
    }
    let mut dest = match place(dest) {
        Place::Local => resolve(dest, cwd)?,
        Place::Daemon if o.remote_shell => {
            return Err("an rsync daemon over a remote shell (-e with host::module)".into());
        }
        _ => dest.clone(),
    };
    if let (Some(u), Place::Ssh) = (&o.user, place(&dest))
        && !dest.split(':').next().unwrap_or("").contains('@')
    {
        dest = format!("{u}@{dest}");
    }
    let target = join_dest(&dest, &src_abs, contents);
    crate::target::parse(&target, Path::new("/")).map_err(|e| format!("target: {e}"))?;
    job.source = src_abs;
    job.targets = vec![target];
    Ok(())
}

/// Put `--timeout`, ssh and rsync options where the target needs them.
fn settle(o: Opts, job: &mut JobOut) {
    let daemon = job
        .targets
        .iter()
        .any(|t| matches!(place(t), Place::Daemon));
    let ssh = job.targets.iter().any(|t| matches!(place(t), Place::Ssh));
    if daemon {
        job.rsync = o.rsync;
        if let Some(t) = o.timeout.clone() {
            job.rsync.push(("timeout".into(), t));
        }
    } else if !o.rsync.is_empty() {
        job.note("--password-file/--port: only for rsync daemon targets; not carried over");
    }
    if ssh {
        job.ssh = o.ssh;
        if let Some(t) = o.timeout
            && !daemon
        {
            job.ssh.push(("timeout".into(), t));
        }
    } else if !o.ssh.is_empty() {
        job.note("-e ssh options: the target is not reached over SSH; not carried over");
    }
}

/// `rsync ARGS…` (without the command word).
pub fn rsync(args: &[Word], cwd: Option<&str>) -> Result<JobOut, String> {
    let mut job = JobOut::default();
    let mut o = Opts::default();
    let mut pos: Vec<&Word> = Vec::new();
    let mut k = 0;
    let mut only_pos = false;
    while k < args.len() {
        let a = &args[k];
        let t = a.text.as_str();
        k += 1;
        if only_pos || !t.starts_with('-') || t == "-" {
            pos.push(a);
            continue;
        }
        if t == "--" {
            only_pos = true;
        } else if let Some(long) = t.strip_prefix("--") {
            let (name, val) = match long.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None if RSYNC_VALUE_OPTS.contains(&long) => {
                    let v = args.get(k).map(|w| w.text.clone());
                    k += 1;
                    (long, v)
                }
                None => (long, None),
            };
            long_opt(name, val, cwd, &mut o, &mut job)?;
        } else {
            let flags: Vec<char> = t[1..].chars().collect();
            for (i, &f) in flags.iter().enumerate() {
                if matches!(f, 'e' | 'f' | 'B' | 'T' | 'M') {
                    let rest: String = flags[i + 1..].iter().collect();
                    let v = if rest.is_empty() {
                        k += 1;
                        args.get(k - 1).map(|w| w.text.clone()).unwrap_or_default()
                    } else {
                        rest
                    };
                    match f {
                        'e' => remote_shell(&v, &mut o, &mut job)?,
                        'f' => return Err("-f filter rules: syncjob has excludes only".into()),
                        _ => job.note(format!("-{f} {v}: not carried over")),
                    }
                    break;
                }
                if matches!(f, 'a' | 'r') {
                    o.recursive = true;
                }
                short_flag(f, &mut job)?;
            }
        }
    }
    if !o.recursive {
        return Err("without -a or -r rsync does not copy a directory tree".into());
    }
    paths(&pos, cwd, false, &o, &mut job)?;
    settle(o, &mut job);
    Ok(job)
}

/// `scp ARGS…` (without the command word): needs `-r`; always `mode: full`.
pub fn scp(args: &[Word], cwd: Option<&str>) -> Result<JobOut, String> {
    let mut job = JobOut::default();
    let mut o = Opts::default();
    let mut pos: Vec<&Word> = Vec::new();
    let mut k = 0;
    while k < args.len() {
        let a = &args[k];
        k += 1;
        let t = a.text.as_str();
        if !t.starts_with('-') || t == "-" {
            pos.push(a);
            continue;
        }
        let flags: Vec<char> = t[1..].chars().collect();
        for (i, &f) in flags.iter().enumerate() {
            if matches!(f, 'P' | 'i' | 'o' | 'l' | 'S' | 'F' | 'c' | 'J' | 'D' | 'X') {
                let rest: String = flags[i + 1..].iter().collect();
                let v = if rest.is_empty() {
                    k += 1;
                    args.get(k - 1).map(|w| w.text.clone()).unwrap_or_default()
                } else {
                    rest
                };
                match f {
                    'P' => o.ssh.push(("port".into(), port(&v)?)),
                    'i' => o.ssh.push(("identity".into(), q(&v))),
                    'o' => remote_shell(&format!("ssh -o {}", shell_quote(&v)), &mut o, &mut job)?,
                    _ => job.note(format!("scp -{f} {v}: not carried over")),
                }
                break;
            }
            match f {
                'r' => o.recursive = true,
                'p' | 'q' | 'v' | 'C' | '4' | '6' | 'B' | 'T' | 'O' | 's' => {}
                other => job.note(format!("scp -{other}: not carried over")),
            }
        }
    }
    if !o.recursive {
        return Err("scp without -r copies single files, not a directory tree".into());
    }
    paths(&pos, cwd, true, &o, &mut job)?;
    job.field("mode", q("full"));
    job.note("scp copied every file on every run (mode: full) and deleted nothing");
    settle(o, &mut job);
    Ok(job)
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(s: &str) -> Result<JobOut, String> {
        let toks = shell::split(s).unwrap();
        let c = shell::commands(&toks);
        let words = &c[0].0;
        match words[0].text.as_str() {
            "rsync" => rsync(&words[1..], Some("/home/u")),
            _ => scp(&words[1..], Some("/home/u")),
        }
    }

    #[test]
    fn the_seeds_commands() {
        let j = cmd(
            "rsync -av /usr/local/nginx/html/tp5shop root@192.168.17.102:/usr/local/nginx/html",
        )
        .unwrap();
        assert_eq!(j.source, "/usr/local/nginx/html/tp5shop");
        assert_eq!(
            j.targets,
            ["root@192.168.17.102:/usr/local/nginx/html/tp5shop"]
        );
        let j =
            cmd("scp -r /usr/local/nginx/html/tp5shop root@192.168.17.102:/usr/local/nginx/html")
                .unwrap();
        assert_eq!(
            j.targets,
            ["root@192.168.17.102:/usr/local/nginx/html/tp5shop"]
        );
        assert!(j.fields.contains(&("mode".into(), q("full"))));
    }

    #[test]
    fn options_map_or_refuse() {
        let j = cmd(r#"rsync -az --delete --exclude '*.log' --exclude=/cache/ -e "ssh -p 2222 -i /k" src/ web:/srv/x"#).unwrap();
        assert_eq!(j.source, "/home/u/src");
        assert_eq!(j.targets, ["web:/srv/x"]);
        assert!(j.fields.contains(&("delete".into(), "true".into())));
        assert!(
            j.fields
                .contains(&("exclude".into(), "[\"*.log\", \"/cache/\"]".into()))
        );
        assert_eq!(
            j.ssh,
            [
                ("port".to_string(), "2222".to_string()),
                ("identity".to_string(), q("/k"))
            ]
        );
        let j =
            cmd("rsync -a --password-file=/etc/p --port 874 --timeout=60 /a/ u@h::m/x").unwrap();
        assert_eq!(j.targets, ["u@h::m/x"]);
        assert_eq!(j.rsync.len(), 3);
        for bad in [
            "rsync -an /a/ h:/b",
            "rsync -a h:/a/ /b",
            "rsync -a /a/ /b/ h:/c",
            "rsync -a --include=x /a/ h:/b",
            "rsync -v /a/ h:/b",
            "rsync -a $SRC h:/b",
            "rsync -a /a/* h:/b",
            "scp /a h:/b",
        ] {
            assert!(cmd(bad).is_err(), "{bad}");
        }
    }
}
