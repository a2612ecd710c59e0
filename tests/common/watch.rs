//! What the watch tests share: a `syncjob watch`/`daemon` process with its
//! stderr in a file (killed when dropped), and convergence checked with
//! `rsync -anc --delete` ([`rsync_diff_or_error`]). Bounds are seconds,
//! never tight.

use super::{Lab, rsync_diff_or_error, until};
use std::fs;
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

pub const WAIT: Duration = Duration::from_secs(30);

/// A `syncjob watch`/`daemon` process, its stderr in a file; killed on drop.
pub struct Proc {
    pub child: Child,
    pub err: std::path::PathBuf,
}

impl Proc {
    pub fn start(lab: &Lab, args: &[&str], env: &[(&str, &str)]) -> Proc {
        let err = lab.path(&format!("stderr-{}.log", args.join("-")));
        let mut c = lab.cmd();
        c.args(args)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err).unwrap());
        for (k, v) in env {
            c.env(k, v);
        }
        Proc {
            child: c.spawn().unwrap(),
            err,
        }
    }
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.err).unwrap_or_default()
    }
    /// Wait until stderr holds `what`.
    #[track_caller]
    pub fn wait_for(&self, what: &str) {
        let s = until(WAIT, || self.stderr().contains(what));
        assert!(s, "never logged {what:?}:\n{}", self.stderr());
    }
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
    pub fn term(&mut self) -> Option<i32> {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let until = Instant::now() + WAIT;
        while Instant::now() < until {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill9();
        None
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

#[track_caller]
pub fn converges(src: &Path, dst: &Path, extra: &[&str], p: &Proc) {
    let ok = until(WAIT, || rsync_diff_or_error(src, dst, extra).is_empty());
    assert!(
        ok,
        "target differs:\n{}\n--- stderr\n{}",
        rsync_diff_or_error(src, dst, extra),
        p.stderr()
    );
}

pub fn watch_records(lab: &Lab) -> Vec<serde_json::Value> {
    lab.log()
        .into_iter()
        .filter(|r| r["trigger"] == "watch")
        .collect()
}
