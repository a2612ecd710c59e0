//! Test harness: a temp dir with `src/`, `dst/`, a state dir and a jobs file,
//! and a small builder that runs the real `syncjob` binary in it.
#![allow(dead_code)]

pub mod daemon;
pub mod etcd;
pub mod ports;
pub mod rsyncd;
pub mod sshd;
pub mod watch;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_syncjob");

pub struct Lab {
    pub dir: tempfile::TempDir,
}

impl Lab {
    pub fn new() -> Lab {
        let dir = tempfile::Builder::new()
            .prefix("syncjob-test")
            .tempdir()
            .unwrap();
        fs::create_dir(dir.path().join("src")).unwrap();
        Lab { dir }
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn src(&self) -> PathBuf {
        self.path("src")
    }
    pub fn dst(&self) -> PathBuf {
        self.path("dst")
    }
    pub fn state(&self) -> PathBuf {
        self.path("state")
    }
    pub fn log_path(&self) -> PathBuf {
        self.state().join("runs.jsonl")
    }
    /// Write the jobs file; `{src}`, `{dst}` and `{dir}` are replaced.
    pub fn config(&self, yaml: &str) -> &Self {
        let text = yaml
            .replace("{src}", self.src().to_str().unwrap())
            .replace("{dst}", self.dst().to_str().unwrap())
            .replace("{dir}", self.dir.path().to_str().unwrap());
        fs::write(self.path("jobs.yaml"), text).unwrap();
        self
    }
    /// A plain job `web` from src to dst with extra YAML lines.
    pub fn job(&self, extra: &str) -> &Self {
        let mut y = String::from("jobs:\n  web:\n    source: {src}\n    remote: {dst}\n");
        for l in extra.lines() {
            y.push_str("    ");
            y.push_str(l);
            y.push('\n');
        }
        self.config(&y)
    }
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("-c")
            .arg(self.path("jobs.yaml"))
            .arg("--state-dir")
            .arg(self.state())
            .env_remove("SYNCJOB_CONFIG")
            .env("TZ", "UTC")
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        c
    }
    /// Start the binary in the background (stdout and stderr discarded).
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.cmd()
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }
    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.cmd().args(args).output().unwrap();
        Run::from(out)
    }
    pub fn write(&self, rel: &str, content: &[u8]) {
        let p = self.src().join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
    /// The records of the run log.
    pub fn log(&self) -> Vec<serde_json::Value> {
        match fs::read_to_string(self.log_path()) {
            Ok(t) => t
                .lines()
                .map(|l| serde_json::from_str(l).expect("every log line is JSON"))
                .collect(),
            Err(_) => vec![],
        }
    }
    pub fn last(&self) -> serde_json::Value {
        self.log().pop().expect("a log record")
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn code(&self, want: i32) -> &Self {
        assert_eq!(
            self.code, want,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// `rsync -anc --delete --itemize-changes src/ dst/`: what rsync would still
/// change. Empty means the trees are equal in content, mtimes, modes, links.
pub fn rsync_diff(src: &Path, dst: &Path, extra: &[&str]) -> String {
    let out = rsync_itemize(src, dst, extra);
    assert!(
        out.status.success(),
        "rsync failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The same, for trees still changing: a failed rsync (files vanishing
/// while it reads, as a watcher's temporary files do) is no panic, its
/// error counts as a difference.
pub fn rsync_diff_or_error(src: &Path, dst: &Path, extra: &[&str]) -> String {
    let out = rsync_itemize(src, dst, extra);
    let mut d = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        d.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    d
}

fn rsync_itemize(src: &Path, dst: &Path, extra: &[&str]) -> Output {
    Command::new("rsync")
        .args(["-anc", "--delete", "--itemize-changes"])
        .args(extra)
        .arg(format!("{}/", src.display()))
        .arg(format!("{}/", dst.display()))
        .output()
        .expect("rsync is installed (the README test command installs it)")
}

pub fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

pub fn mtime(p: &Path) -> (i64, i64) {
    let m = fs::symlink_metadata(p).unwrap();
    (m.mtime(), m.mtime_nsec())
}

pub fn set_mtime(p: &Path, secs: i64, nanos: u32) {
    filetime::set_symlink_file_times(
        p,
        filetime::FileTime::from_unix_time(secs, nanos),
        filetime::FileTime::from_unix_time(secs, nanos),
    )
    .unwrap();
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail
    unsafe { libc::geteuid() == 0 }
}

/// Everything below `dir`: relative name, content (files), mode.
pub fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>, u32)> {
    let mut v: Vec<_> = listing(dir)
        .into_iter()
        .map(|n| {
            let p = dir.join(&n);
            let data = if p.is_file() {
                fs::read(&p).unwrap()
            } else {
                vec![]
            };
            (n, data, mode(&p))
        })
        .collect();
    v.sort();
    v
}

/// A directory only root can read, `private/` beside the lab's trees,
/// holding `secret.txt` ("TOPSECRET"): what a source owner's swap must
/// never make a root run read. Returns its path.
pub fn root_only_secret(lab: &Lab) -> PathBuf {
    let private = lab.path("private");
    fs::create_dir(&private).unwrap();
    fs::write(private.join("secret.txt"), b"TOPSECRET").unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o700)).unwrap();
    private
}

/// `chown -R nobody` of `dir` (the `nobody` user owns it: the attacker).
pub fn give_to_nobody(dir: &Path) {
    let ok = Command::new("chown")
        .args(["-R", "nobody"])
        .arg(dir)
        .status()
        .unwrap();
    assert!(ok.success(), "chown -R nobody {}", dir.display());
}

/// Names of every entry below `dir` (relative), sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    if !dir.exists() {
        return vec![];
    }
    let mut v: Vec<String> = walkdir::WalkDir::new(dir)
        .min_depth(1)
        .into_iter()
        .map(|e| {
            e.unwrap()
                .path()
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// Poll `cond` every 50 ms until it holds; false after `limit`. For
/// outcomes of asynchronous work (a daemon's next firing, a process's
/// exit, a log line): a generous limit costs nothing when all goes well.
pub fn until(limit: std::time::Duration, mut cond: impl FnMut() -> bool) -> bool {
    let t = std::time::Instant::now();
    loop {
        if cond() {
            return true;
        }
        if t.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Python lines an attacker script starts with: it says `ready` on its
/// stdout (see [`await_ready`]), then waits for a line on its stdin.
pub const ATTACKER_READY: &str =
    "import os, sys\nprint('ready', flush=True)\nsys.stdin.readline()\n";

/// Wait until a child started with a piped stdout says `ready`: an
/// attacker process is up before the run it races starts.
pub fn await_ready(c: &mut std::process::Child) {
    use std::io::BufRead;
    let out = c.stdout.take().expect("a piped stdout");
    let mut line = String::new();
    std::io::BufReader::new(out).read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready", "the attacker did not start");
}

/// Wait until a temporary file (`.syncjob-tmp.*`) is in `dir`: a copy into
/// it has begun. Polled every millisecond: the copy of a big file is the
/// window a test acts in.
pub fn await_temp_file(dir: &Path, limit: std::time::Duration) {
    let t = std::time::Instant::now();
    loop {
        let seen = fs::read_dir(dir).is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(".syncjob-tmp."))
        });
        if seen {
            return;
        }
        assert!(
            t.elapsed() < limit,
            "no copy began in {} ({limit:?})",
            dir.display()
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// An RFC 3339 time from a run record.
pub fn parse_ts(s: &str) -> chrono::DateTime<chrono::FixedOffset> {
    chrono::DateTime::parse_from_rfc3339(s).unwrap()
}
