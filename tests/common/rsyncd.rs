//! A private `rsync --daemon --no-detach` on 127.0.0.1 for tests: its own
//! config, module `site` (read-write, `auth users = sync`, a secrets file,
//! no chroot, symlinks not munged), pid file, log and free port; running
//! as the current user. Stopped when dropped.
#![allow(dead_code)]

use super::ports::free_port;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const USER: &str = "sync";
pub const PASSWORD: &str = "s3cret-Pa55";

pub struct Rsyncd {
    pub dir: PathBuf,
    pub port: u16,
    /// the module's directory
    pub module: PathBuf,
    /// a client password file (mode 0600) holding the right password
    pub password_file: PathBuf,
    child: Option<Child>,
}

pub fn private_file(p: &Path, text: &str) {
    fs::write(p, text).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o600)).unwrap();
}

impl Rsyncd {
    pub fn start(dir: &Path) -> Rsyncd {
        fs::create_dir_all(dir.join("module")).unwrap();
        private_file(&dir.join("secrets"), &format!("{USER}:{PASSWORD}\n"));
        private_file(&dir.join("password"), &format!("{PASSWORD}\n"));
        let mut d = Rsyncd {
            dir: dir.to_path_buf(),
            port: free_port(),
            module: dir.join("module"),
            password_file: dir.join("password"),
            child: None,
        };
        d.launch();
        d
    }

    fn write_config(&self) {
        let d = self.dir.display();
        // as root the daemon would switch to nobody: keep the current user
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let ids = if root { "uid = 0\ngid = 0\n" } else { "" };
        let cfg = format!(
            "port = {port}\naddress = 127.0.0.1\nuse chroot = no\n{ids}pid file = {d}/rsyncd.pid\n\
             max connections = 20\nlock file = {d}/rsyncd.lock\n\
             [site]\npath = {d}/module\nread only = no\nauth users = {USER}\n\
             secrets file = {d}/secrets\nmunge symlinks = no\n",
            port = self.port
        );
        fs::write(self.dir.join("rsyncd.conf"), cfg).unwrap();
    }

    pub fn launch(&mut self) {
        self.write_config();
        let t = Instant::now();
        loop {
            let _ = fs::remove_file(self.dir.join("rsyncd.pid"));
            let child = Command::new("rsync")
                .args(["--daemon", "--no-detach"])
                .arg(format!(
                    "--config={}",
                    self.dir.join("rsyncd.conf").display()
                ))
                .arg(format!(
                    "--log-file={}",
                    self.dir.join("rsyncd.log").display()
                ))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("rsync (the README test command installs it)");
            self.child = Some(child);
            // up when it accepts connections; a bind that failed (the port
            // still held by the last run) ends the process: start again
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(2) {
                if let Some(Ok(Some(_))) = self.child.as_mut().map(|c| c.try_wait()) {
                    break;
                }
                if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            self.stop();
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "rsync daemon did not come up: {}",
                fs::read_to_string(self.dir.join("rsyncd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stop the daemon (it serves connections in forked children, which
    /// end with their transfer).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: c is our child, not yet waited for (its pid is not reused).
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    /// `rsync://sync@127.0.0.1:PORT/site/PATH`
    pub fn url(&self, path: &str) -> String {
        format!("rsync://{USER}@127.0.0.1:{}/site/{path}", self.port)
    }

    /// The YAML `rsync:` block for a job using this daemon.
    pub fn yaml(&self) -> String {
        format!(
            "rsync: {{ password_file: {}, timeout: 10s }}",
            self.password_file.display()
        )
    }
}

impl Drop for Rsyncd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A jobs file with one job `web` mirroring the lab's source to `web/` in
/// the daemon's module, plus `extra` job keys (one per line).
pub fn rsync_job(lab: &super::Lab, d: &Rsyncd, extra: &str) {
    let mut y = format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: {}\n    {}\n",
        d.url("web"),
        d.yaml()
    );
    for l in extra.lines() {
        y.push_str("    ");
        y.push_str(l);
        y.push('\n');
    }
    lab.config(&y);
}
