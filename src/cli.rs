//! Command-line arguments, and the one place where outcomes become exit codes.

use crate::config::{self, Config, ConfigError};
use crate::daemon::DaemonError;
use crate::journal::{self, Record, RevLines};
use crate::lock;
use crate::run::{self, Env, Status, Wait};
use crate::schedule::{self, Schedule};
use chrono::{DateTime, SecondsFormat, Utc};
use chrono_tz::Tz;
use clap::{Args, Parser, Subcommand};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILED: u8 = 1;
pub const EXIT_USAGE: u8 = 2;
pub const EXIT_LOCKED: u8 = 75;

#[derive(Debug, Parser)]
#[command(
    name = "syncjob",
    version,
    about = "Keep a directory identical on many servers: scheduled, locked, logged syncs",
    after_help = "Exit codes: 0 ok, 1 a run failed, 2 usage or config error, 75 skipped (job lock held)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Jobs file [default: $SYNCJOB_CONFIG, ./jobs.yaml, /etc/syncjob/jobs.yaml]
    #[arg(short = 'c', long = "config", global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Lock and state directory [default: /var/lib/syncjob as root, else $XDG_STATE_HOME/syncjob]
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Run log (JSON Lines) [default: <state-dir>/runs.jsonl]
    #[arg(long, global = true, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Print each applied change
    #[arg(short, long, global = true, conflicts_with = "quiet")]
    pub verbose: bool,
    /// Print only errors
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run jobs now, under each job's lock
    Run {
        /// Jobs to run
        #[arg(conflicts_with = "all")]
        jobs: Vec<String>,
        /// Run every job in the file
        #[arg(long)]
        all: bool,
        /// Print the itemized plan and change nothing
        #[arg(long)]
        dry_run: bool,
        /// List every target in full (ignore the manifests of unchanged targets)
        #[arg(long)]
        verify: bool,
        /// Wait for a running instance to finish (forever, or up to SECS) instead of exiting 75
        #[arg(long, value_name = "SECS", num_args = 0..=1, require_equals = true)]
        wait: Option<Option<u64>>,
    },
    /// Run the scheduler in the foreground (what the systemd unit starts)
    Daemon,
    /// Watch jobs in the foreground: one full sync, then every change as it happens
    Watch {
        /// Jobs to watch
        #[arg(required = true)]
        jobs: Vec<String>,
    },
    /// Validate the jobs file
    Check,
    /// Jobs with schedule, targets, last outcome and next fire time
    List {
        #[arg(long)]
        json: bool,
    },
    /// Next fire instants of a job or a spec, RFC 3339, one per line
    Next {
        /// A job in the jobs file
        #[arg(required_unless_present = "spec", conflicts_with = "spec")]
        job: Option<String>,
        /// A schedule spec instead of a job
        #[arg(long, value_name = "EXPR")]
        spec: Option<String>,
        /// Time zone for --spec (IANA name) [default: the system's]
        #[arg(long, value_name = "TZ")]
        tz: Option<String>,
        /// Start from this instant instead of now
        #[arg(long, value_name = "RFC3339")]
        from: Option<String>,
        /// How many instants
        #[arg(short = 'n', default_value_t = 5)]
        n: usize,
    },
    /// Recent outcomes from the run log, newest last
    Log {
        /// Only this job
        #[arg(conflicts_with = "job_opt")]
        job: Option<String>,
        /// Only this job (same as the positional JOB)
        #[arg(long = "job", value_name = "JOB")]
        job_opt: Option<String>,
        /// How many records
        #[arg(short = 'n', default_value_t = 20)]
        n: usize,
        /// Only records with this status (ok, failed, skipped, dry_run)
        #[arg(long)]
        status: Option<String>,
        /// Only records since this instant (RFC 3339) or this long ago (1h, 30m, 2d)
        #[arg(long)]
        since: Option<String>,
        /// Print the records as stored (JSON Lines)
        #[arg(long)]
        json: bool,
    },
    /// Running jobs (lock holders) and daemon state
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Metrics from the run log in Prometheus text format (stdout, or a file for node_exporter)
    Metrics {
        /// Write DIR/syncjob.prom (temporary file + rename) for node_exporter's textfile collector
        #[arg(long, value_name = "DIR")]
        textfile: Option<PathBuf>,
    },
    /// Print a jobs file equivalent to a sersync or crontab configuration
    Import {
        #[command(subcommand)]
        from: crate::import::ImportCmd,
    },
    /// Write the man page and bash/zsh/fish completions into DIR (for packagers)
    #[command(hide = true)]
    Generate {
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
    },
    /// Receive files on an SSH target: started over ssh by a job with
    /// `ssh.remote_helper`, speaking syncjob's protocol on stdin/stdout
    #[command(hide = true)]
    Helper {
        /// the directory every path is confined to (required)
        #[arg(long)]
        root: Option<PathBuf>,
    },
}

/// An error that ends the command, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    Daemon(#[from] DaemonError),
}

impl CliError {
    pub fn code(&self) -> u8 {
        match self {
            CliError::Usage(_) | CliError::Config(_) => EXIT_USAGE,
            CliError::Failed(_) => EXIT_FAILED,
            CliError::Daemon(DaemonError::Config(_) | DaemonError::AlreadyRunning { .. }) => {
                EXIT_USAGE
            }
            CliError::Daemon(DaemonError::Setup(_)) => EXIT_FAILED,
        }
    }
}

/// The exit code for a set of job outcomes: any failure wins, then a skip
/// because of a held lock, else success.
pub fn exit_code_for(statuses: &[Status]) -> u8 {
    if statuses.contains(&Status::Failed) {
        EXIT_FAILED
    } else if statuses.contains(&Status::Skipped) {
        EXIT_LOCKED
    } else {
        EXIT_OK
    }
}

pub fn default_state_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/syncjob");
    }
    if let Some(x) = std::env::var_os("XDG_STATE_HOME").filter(|x| !x.is_empty()) {
        return PathBuf::from(x).join("syncjob");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".local/state/syncjob")
}

impl Global {
    pub fn env(&self) -> Env {
        let state_dir = self.state_dir.clone().unwrap_or_else(default_state_dir);
        let log = self
            .log
            .clone()
            .unwrap_or_else(|| state_dir.join("runs.jsonl"));
        Env { state_dir, log }
    }

    /// The environment of a command that writes the state dir (`run`,
    /// `daemon`): the state dir created private and checked (see
    /// `statedir`), then used by its canonical path.
    pub fn env_checked(&self) -> Result<Env, CliError> {
        let given = self.state_dir.clone().unwrap_or_else(default_state_dir);
        let state_dir =
            crate::statedir::prepare(&given).map_err(|e| CliError::Usage(e.to_string()))?;
        let log = self
            .log
            .clone()
            .unwrap_or_else(|| state_dir.join("runs.jsonl"));
        Ok(Env { state_dir, log })
    }

    pub fn load(&self) -> Result<Config, CliError> {
        let path = config::locate(self.config.as_deref())?;
        Ok(config::load(&path)?)
    }
}

/// `syncjob watch`: an unknown job is a usage error.
fn watch_cmd(g: &Global, jobs: &[String]) -> Result<u8, CliError> {
    use crate::watch::cli::WatchCmdError;
    let cfg = g.load()?;
    match crate::watch::cli::run(&cfg, &g.env(), jobs) {
        Ok(()) => Ok(EXIT_OK),
        Err(WatchCmdError::Usage(m)) => Err(CliError::Usage(m)),
        Err(WatchCmdError::Failed(m)) => Err(CliError::Failed(m)),
    }
}

/// `syncjob metrics`: its failures exit with [`EXIT_FAILED`].
fn metrics_cmd(g: &Global, dir: Option<&std::path::Path>) -> Result<u8, CliError> {
    let cfg = g.load()?;
    let env = g.env();
    crate::metrics::command::run(&cfg, &env.log, &env.state_dir, dir, g.verbose)
        .map_err(|e| CliError::Failed(e.0))?;
    Ok(EXIT_OK)
}

pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { EXIT_OK };
            let _ = e.print();
            return ExitCode::from(code);
        }
    };
    match dispatch(&cli) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            crate::errln!("syncjob: {e}");
            ExitCode::from(e.code())
        }
    }
}

fn dispatch(cli: &Cli) -> Result<u8, CliError> {
    let g = &cli.global;
    match &cli.command {
        Command::Run {
            jobs,
            all,
            dry_run,
            verify,
            wait,
        } => cmd_run(g, jobs, *all, *dry_run, *verify, *wait),
        Command::Daemon => {
            let path = config::locate(g.config.as_deref())?;
            crate::daemon::run(path, g.env_checked()?)?;
            Ok(EXIT_OK)
        }
        Command::Watch { jobs } => watch_cmd(g, jobs),
        Command::Check => cmd_check(g),
        Command::List { json } => cmd_list(g, *json),
        Command::Next {
            job,
            spec,
            tz,
            from,
            n,
        } => cmd_next(
            g,
            job.as_deref(),
            spec.as_deref(),
            tz.as_deref(),
            from.as_deref(),
            *n,
        ),
        Command::Log {
            job,
            job_opt,
            n,
            status,
            since,
            json,
        } => cmd_log(
            g,
            job.as_deref().or(job_opt.as_deref()),
            *n,
            status.as_deref(),
            since.as_deref(),
            *json,
        ),
        Command::Status { json } => cmd_status(g, *json),
        Command::Metrics { textfile } => metrics_cmd(g, textfile.as_deref()),
        Command::Generate { dir } => cmd_generate(dir),
        Command::Import { from } => match crate::import::run(from) {
            Ok(()) => Ok(EXIT_OK),
            Err(crate::import::ImportError::Usage(m)) => Err(CliError::Usage(m)),
            Err(crate::import::ImportError::Failed(m)) => Err(CliError::Failed(m)),
        },
        Command::Helper { root } => crate::helper::main(root.as_deref())
            .map(|()| EXIT_OK)
            .map_err(|e| CliError::Failed(format!("helper: {e}"))),
    }
}

/// The man page and shell completions, from the clap definitions.
fn cmd_generate(dir: &Path) -> Result<u8, CliError> {
    use clap::CommandFactory;
    use clap_complete::Shell;
    let fail =
        |what: &str, e: std::io::Error| CliError::Failed(format!("cannot write {what}: {e}"));
    std::fs::create_dir_all(dir).map_err(|e| fail(&dir.display().to_string(), e))?;
    let cmd = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .map_err(|e| fail("man page", e))?;
    let p = dir.join("syncjob.1");
    std::fs::write(&p, &page).map_err(|e| fail(&p.display().to_string(), e))?;
    // and a page per command: syncjob-run(1), syncjob-daemon(1), ...
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name: &'static str = Box::leak(format!("syncjob-{}", sub.get_name()).into_boxed_str());
        let mut page = Vec::new();
        clap_mangen::Man::new(sub.clone().name(name))
            .render(&mut page)
            .map_err(|e| fail("man page", e))?;
        let p = dir.join(format!("{name}.1"));
        std::fs::write(&p, &page).map_err(|e| fail(&p.display().to_string(), e))?;
    }
    for (shell, file) in [
        (Shell::Bash, "syncjob.bash"),
        (Shell::Zsh, "_syncjob"),
        (Shell::Fish, "syncjob.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "syncjob", &mut buf);
        let p = dir.join(file);
        std::fs::write(&p, buf).map_err(|e| fail(&p.display().to_string(), e))?;
    }
    Ok(EXIT_OK)
}

fn cmd_run(
    g: &Global,
    names: &[String],
    all: bool,
    dry_run: bool,
    verify: bool,
    wait: Option<Option<u64>>,
) -> Result<u8, CliError> {
    if names.is_empty() && !all {
        return Err(CliError::Usage(
            "name the jobs to run (syncjob run JOB...), or run every job with --all".into(),
        ));
    }
    let cfg = g.load()?;
    let jobs: Vec<&config::Job> = if all {
        cfg.jobs.iter().collect()
    } else {
        let mut v = Vec::new();
        for n in names {
            match cfg.job(n) {
                Some(j) => v.push(j),
                None => {
                    return Err(CliError::Usage(format!(
                        "no job named {n:?} in {} (jobs: {})",
                        cfg.path.display(),
                        cfg.jobs
                            .iter()
                            .map(|j| j.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )));
                }
            }
        }
        v
    };
    let opts = run::Options {
        trigger: run::Trigger::Manual,
        dry_run,
        wait: match wait {
            None => Wait::No,
            Some(None) => Wait::Forever,
            Some(Some(s)) => Wait::Upto(std::time::Duration::from_secs(s)),
        },
        verbose: g.verbose,
        quiet: g.quiet,
        verify,
        progress: !g.quiet && !dry_run && std::io::IsTerminal::is_terminal(&std::io::stdout()),
        scheduled_for: None,
        owner: None,
        inline_retries: true,
        lock_held: false,
        on_record: None,
        note: None,
    };
    let env = g.env_checked()?;
    let cancel = AtomicBool::new(false);
    let statuses: Vec<Status> = jobs
        .iter()
        .map(|j| run::run_job(j, &env, &opts, &cancel).status)
        .collect();
    Ok(exit_code_for(&statuses))
}

fn fmt_instant(t: DateTime<Utc>, tz: Tz) -> String {
    t.with_timezone(&tz)
        .to_rfc3339_opts(SecondsFormat::Secs, false)
}

fn cmd_check(g: &Global) -> Result<u8, CliError> {
    let path = config::locate(g.config.as_deref())?;
    let cfg = match config::load(&path) {
        Ok(c) => c,
        Err(ConfigError::Invalid(problems)) => {
            for p in &problems {
                crate::errln!("{p}");
            }
            crate::errln!(
                "syncjob: {} problem(s) in {}",
                problems.len(),
                path.display()
            );
            return Ok(EXIT_USAGE);
        }
        Err(e) => return Err(e.into()),
    };
    let mut unresolved = 0;
    if !g.quiet {
        let now = Utc::now();
        for j in &cfg.jobs {
            let tz = j.tz();
            let sched = match &j.schedule {
                Some(s) => {
                    let next: Vec<String> = s
                        .upcoming(now, tz, 3)
                        .into_iter()
                        .map(|t| fmt_instant(t, tz))
                        .collect();
                    format!("{s} ({tz}), next: {}", next.join(", "))
                }
                None => "manual only".into(),
            };
            crate::outln!("{}: {} -> {}", j.name, j.source.display(), join_targets(j));
            crate::outln!(
                "  {} {}{}, schedule {sched}",
                j.mode.as_str(),
                if j.delete { "with delete" } else { "no delete" },
                if j.exclude.is_empty() {
                    String::new()
                } else {
                    format!(", exclude {}", j.exclude.join(" "))
                }
            );
            for l in crate::transport::ssh::resolve::check_lines(&j.targets, &j.ssh) {
                match l {
                    Ok(l) => println!("{l}"),
                    Err(l) => {
                        println!("{l}");
                        unresolved += 1;
                    }
                }
            }
        }
        if unresolved > 0 {
            eprintln!("syncjob: {unresolved} SSH target(s) cannot be resolved");
            return Ok(EXIT_USAGE);
        }
    }
    // what can be known locally: a missing source, a target that is a
    // file, a missing key (the runs would fail, so check says so now)
    let mut local = 0;
    for j in &cfg.jobs {
        for p in crate::preflight::problems(j) {
            crate::errln!("{}: job {}: {p}", cfg.path.display(), j.name);
            local += 1;
        }
    }
    if local > 0 {
        crate::errln!(
            "syncjob: {local} problem(s) found on this machine for the jobs of {}",
            cfg.path.display()
        );
        return Ok(EXIT_FAILED);
    }
    if !g.quiet {
        crate::outln!("{}: {} job(s) ok", cfg.path.display(), cfg.jobs.len());
    }
    Ok(EXIT_OK)
}

fn join_targets(j: &config::Job) -> String {
    j.targets
        .iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn parse_from(s: &str) -> Result<DateTime<Utc>, CliError> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            CliError::Usage(format!(
                "--from {s:?}: not an RFC 3339 instant ({e}); example: 2026-03-08T01:00:00-05:00"
            ))
        })
}

fn cmd_next(
    g: &Global,
    job: Option<&str>,
    spec: Option<&str>,
    tz: Option<&str>,
    from: Option<&str>,
    n: usize,
) -> Result<u8, CliError> {
    let from = match from {
        Some(s) => parse_from(s)?,
        None => Utc::now(),
    };
    let (sched, tz) = match (job, spec) {
        (_, Some(spec)) => {
            let s = Schedule::parse(spec)
                .map_err(|e| CliError::Usage(format!("bad schedule {spec:?}: {e}")))?;
            let tz = match tz {
                Some(t) => schedule::parse_tz(t).map_err(CliError::Usage)?,
                None => schedule::system_tz(),
            };
            (s, tz)
        }
        (Some(name), None) => {
            let cfg = g.load()?;
            let j = cfg
                .job(name)
                .ok_or_else(|| CliError::Usage(format!("no job named {name:?}")))?;
            let s = j.schedule.clone().ok_or_else(|| {
                CliError::Usage(format!(
                    "job {name} has no schedule (it runs only when asked)"
                ))
            })?;
            let tz = match tz {
                Some(t) => schedule::parse_tz(t).map_err(CliError::Usage)?,
                None => j.tz(),
            };
            (s, tz)
        }
        (None, None) => return Err(CliError::Usage("give a JOB or --spec EXPR".into())),
    };
    for t in sched.upcoming(from, tz, n) {
        crate::outln!("{}", fmt_instant(t, tz));
    }
    Ok(EXIT_OK)
}

/// Parse `--since`: an RFC 3339 instant or a duration back from now.
fn parse_since(s: &str) -> Result<DateTime<Utc>, CliError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = crate::units::parse_duration(s).map_err(|e| {
        CliError::Usage(format!(
            "--since {s:?}: give an RFC 3339 instant or a duration such as 1h ({e})"
        ))
    })?;
    Ok(Utc::now() - chrono::Duration::from_std(d).unwrap_or_default())
}

/// The newest `n` log lines (as stored) that pass the filters, oldest first.
fn read_log(
    path: &Path,
    job: Option<&str>,
    n: usize,
    status: Option<&str>,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<(String, Option<Record>)>, CliError> {
    let lines = match RevLines::open(path) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(CliError::Failed(format!(
                "cannot read run log {}: {e}",
                path.display()
            )));
        }
    };
    // cheap substring tests before parsing JSON (records are written
    // compactly by serde_json, so the exact bytes are known); a match is
    // then confirmed on the parsed value
    let needles: Vec<Vec<u8>> = [("job", job), ("status", status)]
        .iter()
        .filter_map(|(k, v)| v.map(|v| serde_json::json!({ *k: v }).to_string()))
        .map(|t| {
            t.trim_start_matches('{')
                .trim_end_matches('}')
                .as_bytes()
                .to_vec()
        })
        .collect();
    let mut out = Vec::new();
    for line in lines {
        if out.len() >= n {
            break;
        }
        let line =
            line.map_err(|e| CliError::Failed(format!("reading {}: {e}", path.display())))?;
        if since.is_none()
            && !needles
                .iter()
                .all(|nd| line.windows(nd.len()).any(|w| w == nd.as_slice()))
        {
            continue;
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let rec: Option<Record> = serde_json::from_str(&text).ok();
        let v: serde_json::Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if let Some(j) = job
            && v.get("job").and_then(|x| x.as_str()) != Some(j)
        {
            continue;
        }
        if let Some(s) = status
            && v.get("status").and_then(|x| x.as_str()) != Some(s)
        {
            continue;
        }
        if let Some(since) = since {
            let ts = v
                .get("ts")
                .and_then(|x| x.as_str())
                .and_then(|t| DateTime::parse_from_rfc3339(t).ok());
            match ts {
                Some(t) if t.with_timezone(&Utc) < since => break,
                Some(_) => {}
                None => continue,
            }
        }
        out.push((text, rec));
    }
    out.reverse();
    Ok(out)
}

fn cmd_log(
    g: &Global,
    job: Option<&str>,
    n: usize,
    status: Option<&str>,
    since: Option<&str>,
    json: bool,
) -> Result<u8, CliError> {
    if let Some(s) = status
        && !["ok", "failed", "skipped", "dry_run"].contains(&s)
    {
        return Err(CliError::Usage(format!(
            "--status {s:?}: one of ok, failed, skipped, dry_run"
        )));
    }
    let since = since.map(parse_since).transpose()?;
    let env = g.env();
    let rows = read_log(&env.log, job, n, status, since)?;
    // a job name that is neither in the jobs file nor in the log is a typo
    if let Some(name) = job
        && rows.is_empty()
        && let Ok(cfg) = g.load()
        && cfg.job(name).is_none()
    {
        return Err(CliError::Usage(format!(
            "no job named {name:?} in {} (jobs: {})",
            cfg.path.display(),
            cfg.jobs
                .iter()
                .map(|j| j.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )));
    }
    if json {
        for (text, _) in &rows {
            crate::outln!("{text}");
        }
        return Ok(EXIT_OK);
    }
    crate::outln!(
        "{:<25} {:<16} {:<9} {:<8} {:>7} {:>10} {:>7} {:>8}  TARGET / REASON",
        "TIME",
        "JOB",
        "TRIGGER",
        "STATUS",
        "FILES",
        "BYTES",
        "DELETED",
        "MS"
    );
    // every field escaped: a name in a reason cannot forge a row or send
    // terminal sequences
    let e = crate::escape::text;
    for (_, rec) in rows {
        let Some(r) = rec else { continue };
        crate::outln!(
            "{:<25} {:<16} {:<9} {:<8} {:>7} {:>10} {:>7} {:>8}  {}{}",
            e(r.ts.get(..23).unwrap_or(&r.ts)),
            e(&r.job),
            r.trigger,
            r.status,
            r.files_transferred,
            crate::units::human_bytes(r.bytes_transferred),
            r.files_deleted,
            r.duration_ms,
            e(&r.target),
            r.reason
                .map(|x| format!(" ({})", e(&x)))
                .unwrap_or_default()
        );
    }
    Ok(EXIT_OK)
}

/// One row of `list`: a job's settings, the last real outcome of each of
/// its targets (a skipped firing is not one), its next firing, its watch.
fn list_row(
    j: &config::Job,
    last: &std::collections::HashMap<(String, String), journal::Record>,
    state_dir: &std::path::Path,
    now: DateTime<Utc>,
) -> serde_json::Value {
    let tz = j.tz();
    let next = j
        .schedule
        .as_ref()
        .and_then(|s| s.next_after(now, tz))
        .map(|t| fmt_instant(t, tz));
    let per_target: Vec<&journal::Record> = j
        .targets
        .iter()
        .filter_map(|t| last.get(&(j.name.clone(), t.to_string())))
        .collect();
    let worst = per_target.iter().map(|r| r.status).max();
    let last_run = per_target.iter().map(|r| r.finished_at.clone()).max();
    let by_target: serde_json::Map<String, serde_json::Value> = per_target
        .iter()
        .map(|r| (r.target.clone(), serde_json::json!(r.status)))
        .collect();
    serde_json::json!({
        "job": j.name,
        "schedule": j.schedule.as_ref().map(|s| s.text().to_string()),
        "timezone": tz.name(),
        "mode": j.mode.as_str(),
        "delete": j.delete,
        "source": j.source.display().to_string(),
        "targets": j.targets.iter().map(|t| t.to_string()).collect::<Vec<_>>(),
        "last_status": worst,
        "last_run": last_run,
        "last_by_target": by_target,
        "next": next,
        "watch": crate::watch::status::describe(state_dir, j),
    })
}

fn cmd_list(g: &Global, json: bool) -> Result<u8, CliError> {
    let cfg = g.load()?;
    let env = g.env();
    let pairs: Vec<(String, String)> = cfg
        .jobs
        .iter()
        .flat_map(|j| j.targets.iter().map(|t| (j.name.clone(), t.to_string())))
        .collect();
    let last = journal::last_outcomes(&env.log, &pairs);
    let now = Utc::now();
    let rows: Vec<serde_json::Value> = cfg
        .jobs
        .iter()
        .map(|j| list_row(j, &last, &env.state_dir, now))
        .collect();
    let owners = crate::cluster::report::lookup(&cfg);
    if json {
        for r in rows {
            let mut r = r;
            if let Some(o) = &owners {
                r["owner"] = crate::cluster::report::job_json(o, r["job"].as_str().unwrap_or(""));
            }
            crate::outln!("{r}");
        }
        return Ok(EXIT_OK);
    }
    crate::outln!(
        "{:<16} {:<18} {:<16} {:<11} {:<8} {:<25} TARGETS",
        "JOB",
        "SCHEDULE",
        "TIMEZONE",
        "MODE",
        "LAST",
        "NEXT"
    );
    for (j, r) in cfg.jobs.iter().zip(rows) {
        crate::outln!(
            "{:<16} {:<18} {:<16} {:<11} {:<8} {:<25} {}",
            j.name,
            r["schedule"].as_str().unwrap_or("-"),
            r["timezone"].as_str().unwrap_or("-"),
            j.mode.as_str(),
            r["last_status"].as_str().unwrap_or("-"),
            r["next"].as_str().unwrap_or("-"),
            join_targets(j)
        );
    }
    for l in crate::watch::status::text_lines(&env.state_dir, &cfg.jobs) {
        crate::outln!("{l}");
    }
    if let Some(o) = &owners {
        crate::cluster::report::print(&cfg, o);
    }
    Ok(EXIT_OK)
}

fn cmd_status(g: &Global, json: bool) -> Result<u8, CliError> {
    let env = g.env();
    let daemon = lock::holder(&lock::daemon_lock_path(&env.state_dir));
    let mut running = Vec::new();
    if let Ok(rd) = std::fs::read_dir(env.state_dir.join("locks")) {
        let mut names: Vec<String> = rd
            .flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".lock"))
                    .map(String::from)
            })
            .collect();
        names.sort();
        for n in names {
            if let Some(h) = lock::holder(&lock::job_lock_path(&env.state_dir, &n)) {
                running.push((n, h));
            }
        }
    }
    let cfg = g.load().ok();
    let owners = cfg.as_ref().and_then(crate::cluster::report::lookup);
    if json {
        let mut v = serde_json::json!({
            "daemon": daemon.as_ref().map(|d| serde_json::json!({"pid": d.pid, "since": d.since})),
            "running": running.iter().map(|(n, h)| serde_json::json!({
                "job": n, "pid": h.pid, "since": h.since, "trigger": h.trigger
            })).collect::<Vec<_>>(),
            "watched": g.load().map(|c| c.jobs.iter().filter_map(|j| crate::watch::status::read_snapshot(&env.state_dir, &j.name)).collect::<Vec<_>>()).unwrap_or_default(),
        });
        if let (Some(c), Some(o)) = (&cfg, &owners) {
            v["cluster"] = crate::cluster::report::all_json(c, o);
        }
        crate::outln!("{v}");
        return Ok(EXIT_OK);
    }
    match &daemon {
        Some(d) => crate::outln!("daemon: running, pid {} since {}", d.pid, d.since),
        None => crate::outln!(
            "daemon: not running (state dir {})",
            env.state_dir.display()
        ),
    }
    if running.is_empty() {
        crate::outln!("no job running");
    } else {
        crate::outln!("{:<16} {:>8} {:<9} SINCE", "JOB", "PID", "TRIGGER");
        for (n, h) in running {
            crate::outln!("{:<16} {:>8} {:<9} {}", n, h.pid, h.trigger, h.since);
        }
    }
    if let Some(c) = &cfg {
        for l in crate::watch::status::text_lines(&env.state_dir, &c.jobs) {
            crate::outln!("{l}");
        }
    }
    if let (Some(c), Some(o)) = (&cfg, &owners) {
        crate::cluster::report::print(c, o);
    }
    Ok(EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_decided_in_one_place() {
        assert_eq!(exit_code_for(&[]), 0);
        assert_eq!(exit_code_for(&[Status::Ok, Status::DryRun]), 0);
        assert_eq!(exit_code_for(&[Status::Ok, Status::Skipped]), 75);
        assert_eq!(exit_code_for(&[Status::Skipped, Status::Failed]), 1);
        let daemon = |e: DaemonError| CliError::from(e).code();
        let busy = DaemonError::AlreadyRunning {
            state_dir: "/x".into(),
            holder: String::new(),
        };
        assert_eq!(daemon(busy), EXIT_USAGE);
        assert_eq!(
            daemon(DaemonError::Config(ConfigError::NotFound)),
            EXIT_USAGE
        );
        assert_eq!(daemon(DaemonError::Setup("signals".into())), EXIT_FAILED);
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
