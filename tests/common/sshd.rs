//! A private OpenSSH sshd on 127.0.0.1 for tests: its own host key, client
//! key, authorized_keys, known_hosts, config, pid file and free port. Stopped
//! (with all its session processes) when dropped.
#![allow(dead_code)]

use super::ports::free_port;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

pub struct Sshd {
    pub dir: PathBuf,
    pub port: u16,
    /// client private key (authorized)
    pub key: PathBuf,
    /// a known_hosts file with this server's key
    pub known_hosts: PathBuf,
    pid: Option<u32>,
    /// more sshd_config lines
    extra: String,
}

fn keygen(path: &Path, comment: &str) {
    if !path.exists() {
        let st = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(path)
            .status()
            .expect("ssh-keygen (openssh-client; the README test command installs it)");
        assert!(st.success());
    }
}

pub fn user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            let out = Command::new("id").arg("-un").output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        })
}

impl Sshd {
    pub fn start(dir: &Path) -> Sshd {
        Sshd::start_with(dir, "")
    }

    /// With more sshd_config lines (e.g. `SetEnv PATH=...`).
    pub fn start_with(dir: &Path, extra: &str) -> Sshd {
        assert!(
            Path::new("/usr/sbin/sshd").exists(),
            "/usr/sbin/sshd missing: run the README test command (it installs openssh-server)"
        );
        fs::create_dir_all(dir).unwrap();
        keygen(&dir.join("host_key"), "test-host");
        keygen(&dir.join("id_ed25519"), "test-client");
        fs::copy(dir.join("id_ed25519.pub"), dir.join("authorized_keys")).unwrap();
        let mut s = Sshd {
            dir: dir.to_path_buf(),
            port: free_port(),
            key: dir.join("id_ed25519"),
            known_hosts: dir.join("known_hosts"),
            pid: None,
            extra: extra.to_string(),
        };
        s.write_known_hosts();
        s.launch();
        s
    }

    pub fn host_pub(&self) -> String {
        let p = fs::read_to_string(self.dir.join("host_key.pub")).unwrap();
        p.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
    }

    fn write_known_hosts(&self) {
        fs::write(
            &self.known_hosts,
            format!("[127.0.0.1]:{} {}\n", self.port, self.host_pub()),
        )
        .unwrap();
    }

    fn launch(&mut self) {
        let d = &self.dir;
        let cfg = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host_key\nPidFile {d}/sshd.pid\n\
             AuthorizedKeysFile {d}/authorized_keys\nPermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nUseDNS no\nPrintMotd no\nPrintLastLog no\nX11Forwarding no\n\
             MaxStartups 100:30:200\nMaxSessions 64\n\
             Subsystem sftp internal-sftp\n{extra}\n{forwarding}{loglevel}",
            port = self.port,
            d = d.display(),
            extra = self.extra,
            // (sshd takes the first value of a key: `extra` may set these)
            forwarding = "AllowTcpForwarding no\n",
            loglevel = "LogLevel ERROR\n",
        );
        fs::write(d.join("sshd_config"), cfg).unwrap();
        let _ = fs::remove_file(d.join("sshd.pid"));
        if !Path::new("/run/sshd").exists() {
            let _ = fs::create_dir_all("/run/sshd");
        }
        let st = Command::new("/usr/sbin/sshd")
            .arg("-f")
            .arg(d.join("sshd_config"))
            .arg("-E")
            .arg(d.join("sshd.log"))
            .status()
            .unwrap();
        assert!(
            st.success(),
            "sshd failed to start: {}",
            fs::read_to_string(d.join("sshd.log")).unwrap_or_default()
        );
        let t = Instant::now();
        loop {
            if let Ok(p) = fs::read_to_string(d.join("sshd.pid"))
                && let Ok(pid) = p.trim().parse()
                && std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            {
                self.pid = Some(pid);
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(10),
                "sshd did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stop the server and every session it serves (as a crash would).
    pub fn kill(&mut self) {
        if let Some(pid) = self.pid.take() {
            let mut all = vec![pid];
            let mut i = 0;
            while i < all.len() {
                all.extend(children(all[i]));
                i += 1;
            }
            for p in &all {
                // SAFETY: kill(2) takes plain integers; a stale pid is ESRCH
                unsafe { libc::kill(*p as i32, libc::SIGKILL) };
            }
            // dead (gone or a zombie: its port is free) before a restart
            // binds the port again; the daemonized server is not our child
            let dead = |p: &u32| {
                fs::read_to_string(format!("/proc/{p}/stat"))
                    .map(|s| {
                        s.rsplit(')')
                            .next()
                            .unwrap_or("")
                            .trim_start()
                            .starts_with('Z')
                    })
                    .unwrap_or(true)
            };
            let t = std::time::Instant::now();
            while !all.iter().all(dead) {
                assert!(
                    t.elapsed() < std::time::Duration::from_secs(5),
                    "the killed sshd is still alive"
                );
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
        }
    }

    /// Send a signal to the listening server only (e.g. SIGSTOP to freeze
    /// it: connections are accepted by the kernel but never answered).
    pub fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid {
            // SAFETY: kill has no memory preconditions; pid is our sshd's.
            unsafe { libc::kill(pid as i32, sig) };
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.launch();
    }

    /// `ssh://user@127.0.0.1:PORT/path`
    pub fn url(&self, path: &Path) -> String {
        format!("ssh://{}@127.0.0.1:{}{}", user(), self.port, path.display())
    }

    /// The YAML `ssh:` block for a job using this server.
    pub fn ssh_yaml(&self) -> String {
        self.ssh_yaml_with("")
    }

    /// The `ssh:` block with more keys (`", key: value"`).
    /// `SYNCJOB_TEST_SSH_CLIENT=openssh` runs the same tests with
    /// `ssh.client: openssh` (scripts/test.sh does, after the default run).
    pub fn ssh_yaml_with(&self, more: &str) -> String {
        format!(
            "ssh: {{ identity: {}, known_hosts: {}, timeout: 10s{}{more} }}",
            self.key.display(),
            self.known_hosts.display(),
            client_yaml()
        )
    }
}

/// `, client: openssh` when `SYNCJOB_TEST_SSH_CLIENT=openssh`.
pub fn client_yaml() -> String {
    match std::env::var("SYNCJOB_TEST_SSH_CLIENT") {
        Ok(c) if !c.is_empty() => format!(", client: {c}"),
        _ => String::new(),
    }
}

fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            if let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) {
                // pid (comm) state ppid ...
                if let Some(rest) = stat.rsplit_once(')').map(|x| x.1) {
                    let ppid: u32 = rest
                        .split_whitespace()
                        .nth(1)
                        .and_then(|x| x.parse().ok())
                        .unwrap_or(0);
                    if ppid == pid {
                        out.push(p);
                    }
                }
            }
        }
    }
    out
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A jobs file with one job `web` mirroring the lab's source to its `dst/`
/// on this server, plus `extra` job keys (one per line).
pub fn ssh_job(lab: &super::Lab, s: &Sshd, extra: &str) {
    ssh_job_with(lab, s, "", extra)
}

/// The same job with files sent through `syncjob helper` on the "remote"
/// (this build's binary, started over ssh).
#[allow(dead_code)]
pub fn ssh_job_helper(lab: &super::Lab, s: &Sshd, extra: &str) {
    let more = format!(", remote_helper: {}", env!("CARGO_BIN_EXE_syncjob"));
    ssh_job_with(lab, s, &more, extra)
}

fn ssh_job_with(lab: &super::Lab, s: &Sshd, ssh_more: &str, extra: &str) {
    let mut y = format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: {}\n    {}\n",
        s.url(&lab.dst()),
        s.ssh_yaml_with(ssh_more)
    );
    for l in extra.lines() {
        y.push_str("    ");
        y.push_str(l);
        y.push('\n');
    }
    lab.config(&y);
}
