//! A `syncjob daemon` process for tests: started with its stderr in a file,
//! killed when dropped; and a tiny HTTP GET and Prometheus text reader.

use super::Lab;
use std::fs;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub struct DaemonProc {
    pub child: Child,
    pub stderr: PathBuf,
}

impl DaemonProc {
    /// Start `syncjob daemon` with the lab's jobs file and `state` as state
    /// dir; `log` is the run log (shared between daemons in cluster tests).
    pub fn start_with(
        lab: &Lab,
        state: &std::path::Path,
        log: &std::path::Path,
        tag: &str,
        envs: &[(&str, &str)],
    ) -> DaemonProc {
        let stderr = lab.path(&format!("daemon-{tag}.err"));
        let child = std::process::Command::new(super::BIN)
            .arg("-c")
            .arg(lab.path("jobs.yaml"))
            .env_remove("SYNCJOB_CONFIG")
            .env("TZ", "UTC")
            .envs(envs.iter().copied())
            .current_dir(lab.dir.path())
            .stdin(Stdio::null())
            .arg("--state-dir")
            .arg(state)
            .arg("--log")
            .arg(log)
            .arg("daemon")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        let d = DaemonProc { child, stderr };
        d.wait_for("daemon started", Duration::from_secs(10));
        d
    }

    pub fn start(lab: &Lab) -> DaemonProc {
        DaemonProc::start_with(lab, &lab.state(), &lab.log_path(), "0", &[])
    }

    pub fn err(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    pub fn wait_for(&self, text: &str, limit: Duration) {
        let t = Instant::now();
        while !self.err().contains(text) {
            assert!(
                t.elapsed() < limit,
                "daemon never said {text:?}:\n{}",
                self.err()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address the metrics server listens on (from the daemon's log).
    pub fn metrics_addr(&self) -> String {
        self.wait_for("metrics on http://", Duration::from_secs(5));
        let e = self.err();
        let i = e.find("metrics on http://").unwrap() + "metrics on http://".len();
        e[i..].split('/').next().unwrap().to_string()
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid has no memory-safety preconditions.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Wait until the daemon exits, at most `limit`: its exit code (-1
    /// when a signal ended it).
    pub fn wait(&mut self, limit: Duration) -> i32 {
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st.code().unwrap_or(-1);
            }
            assert!(
                t.elapsed() < limit,
                "daemon did not exit in {limit:?}:\n{}",
                self.err()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then wait for the exit: its code.
    pub fn stop(&mut self) -> i32 {
        self.signal(libc::SIGTERM);
        self.wait(Duration::from_secs(60))
    }
}

impl Drop for DaemonProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET `http://addr/path` with a real HTTP client: (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .get(&format!("http://{addr}{path}"))
        .call()
        .expect("the metrics server answers");
    let code = r.status().as_u16();
    (code, r.body_mut().read_to_string().unwrap())
}

/// `promtool check metrics` on `text` (Debian package `prometheus`).
pub fn promtool_check(text: &str) {
    use std::io::Write;
    let mut c = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (scripts/test.sh installs the prometheus package)");
    c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- text\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample `name{labels}` (labels exactly as written, in
/// the order the encoder sorts them), if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (k, v) = l.rsplit_once(' ')?;
        (k == series).then(|| v.parse().unwrap())
    })
}
