//! Job hooks: `before`, `after` and `on_failure` shell commands.
//!
//! Each runs as `sh -c COMMAND` with the job's details in `SYNCJOB_*`
//! environment variables, standard input from /dev/null, and its output
//! (stdout and stderr, the last 4 KiB) captured. A hook that outlives
//! `hook_timeout` (default 60s) is killed and counts as failed.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookResult {
    pub ok: bool,
    /// "exit 3", "killed after 60s timeout", "cannot start: ..."
    pub status: String,
    pub output: String,
}

const KEEP: usize = 4096;

pub fn run(command: &str, env: &[(&str, String)], timeout: Duration) -> HookResult {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    // its own process group, so a timeout kills the whole pipeline
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return HookResult {
                ok: false,
                status: format!("cannot start: {e}"),
                output: String::new(),
            };
        }
    };
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if start.elapsed() >= timeout => {
                // SAFETY: signalling our child's process group.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break None,
        }
    };
    let mut output = t_out.join().unwrap_or_default();
    output.extend(t_err.join().unwrap_or_default());
    let start_at = output.len().saturating_sub(KEEP);
    let output = String::from_utf8_lossy(&output[start_at..])
        .trim_end()
        .to_string();
    match status {
        Some(st) if st.success() => HookResult {
            ok: true,
            status: "exit 0".into(),
            output,
        },
        Some(st) => HookResult {
            ok: false,
            status: match st.code() {
                Some(c) => format!("exit {c}"),
                None => "killed by a signal".into(),
            },
            output,
        },
        None => HookResult {
            ok: false,
            status: format!("killed after {}s timeout", timeout.as_secs_f64()),
            output,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_env_and_status() {
        let r = run(
            "echo out $SYNCJOB_JOB; echo err >&2; exit 3",
            &[("SYNCJOB_JOB", "web".into())],
            Duration::from_secs(10),
        );
        assert!(!r.ok);
        assert_eq!(r.status, "exit 3");
        assert!(
            r.output.contains("out web") && r.output.contains("err"),
            "{r:?}"
        );
        assert!(run("true", &[], Duration::from_secs(10)).ok);
    }

    #[test]
    fn timeout_kills_the_whole_group() {
        let t = Instant::now();
        let r = run("sleep 30 | cat", &[], Duration::from_millis(300));
        assert!(!r.ok);
        assert!(r.status.contains("timeout"), "{r:?}");
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
