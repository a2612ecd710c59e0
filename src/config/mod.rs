//! The jobs file: YAML → validated jobs.
//!
//! Parsed with a position-keeping YAML tree (see `yaml`), so every problem is
//! reported as `file:line:column: job NAME: what is wrong`, and all problems
//! are collected, not only the first.
//!
//! Rooms: `file` (reading a file and its includes, the top level), `raw`
//! (keys, mappings, problems), `job` (one job, section by section). This
//! file holds the validated types the rest of the crate uses.

mod file;
mod job;
mod observe;
mod raw;

/// The option types live in `settings` (transport and target read them
/// without importing config); re-exported for config's callers.
pub use crate::settings::{HostKeyPolicy, SshClient, SshConfigFile, SshOptions};
pub use file::{expand_str, parse};
pub use observe::{ClusterConfig, Observe};

use crate::filter::Filter;
use crate::schedule::{self, Schedule};
use crate::target::Target;
use crate::yaml::Pos;
use chrono_tz::Tz;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The transfer mode is part of the run log's vocabulary.
pub use crate::journal::Mode;

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

/// The default `max_delete`: 50% of a target's entries.
pub const DEFAULT_MAX_DELETE_PERCENT: u8 = 50;
/// The percentage guard spares runs deleting at most this many entries.
pub const MAX_DELETE_FLOOR: u64 = 5;

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
    /// Append a record for every no-op run and skipped firing (`None`:
    /// unless the schedule fires more often than once a minute).
    pub log_noop: Option<bool>,
    /// Source files that vanish during a run fail it (`vanished: fail`);
    /// by default (`warn`) they are counted in `files_vanished` and the
    /// run stays ok, as rsync's exit 24 is accepted by scripts.
    pub vanished_fail: bool,
    pub max_delete: Option<u64>,
    /// With `delete`: a run that would delete more than this percentage of
    /// a target's entries (and more than [`MAX_DELETE_FLOOR`]) deletes
    /// nothing and fails. Default 50; `None` when `max_delete` is a number.
    pub max_delete_percent: Option<u8>,
    pub preserve_owner: bool,
    pub overlap: Overlap,
    pub catch_up: bool,
    pub parallel: usize,
    /// Connections per target for long runs of copies.
    pub streams: usize,
    pub ssh: SshOptions,
    /// For rsync daemon targets.
    pub rsync: crate::settings::RsyncOptions,
    pub hooks: Hooks,
    /// `/healthz` turns 503 when the last success is older than this.
    pub stale_after: Option<Duration>,
    /// Real-time watch (`watch:`): changes are sent as they happen.
    pub watch: Option<crate::settings::WatchOptions>,
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
    /// Whether no-op runs and skipped firings get a record each (see
    /// `log_noop`; by default not for schedules firing more often than
    /// once a minute).
    pub fn logs_noop(&self) -> bool {
        if let Some(b) = self.log_noop {
            return b;
        }
        let Some(s) = &self.schedule else {
            return true;
        };
        let next = s.upcoming(chrono::Utc::now(), self.tz(), 2);
        !matches!(next.as_slice(), [a, b] if (*b - *a).num_seconds() < 60)
    }

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
    /// `metrics`, `metrics_textfile`, `cluster`.
    pub observe: Observe,
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

/// The largest jobs file (each included file too): far beyond any real
/// one (thousands of jobs), small enough that a wrong file (a log, a
/// binary) is refused at once.
const MAX_FILE: usize = 4 << 20;

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
        assert_eq!(a.ssh.port, Some(2200), "ssh merged per key");
        assert_eq!(a.ssh.timeout, Some(Duration::from_secs(10)));
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
            ["/etc/syncjob/jobs.yaml:5:5: job web: unknown key `delet`; did you mean `delete`?"]
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
