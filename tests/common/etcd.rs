//! A real single-member etcd (Debian `etcd-server`) on free loopback ports
//! with its own data dir, for the cluster tests. Killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    child: Option<Child>,
    pub url: String,
    client: u16,
    peer: u16,
    data: PathBuf,
    log: PathBuf,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Etcd {
    /// Start etcd with its data under `dir` and wait until it answers.
    pub fn start(dir: &Path) -> Etcd {
        let client = free_port();
        let mut peer = free_port();
        while peer == client {
            peer = free_port();
        }
        let mut e = Etcd {
            child: None,
            url: format!("http://127.0.0.1:{client}"),
            client,
            peer,
            data: dir.join("etcd-data"),
            log: dir.join("etcd.log"),
        };
        e.spawn();
        e
    }

    fn spawn(&mut self) {
        let (c, p) = (self.client, self.peer);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", "t1", "--data-dir"])
            .arg(&self.data)
            .arg(format!("--listen-client-urls=http://127.0.0.1:{c}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{c}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{p}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{p}"
            ))
            .arg(format!("--initial-cluster=t1=http://127.0.0.1:{p}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd is installed (scripts/test.sh installs etcd-server)");
        self.child = Some(child);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(2)))
            .http_status_as_error(false)
            .build()
            .into();
        let t = Instant::now();
        loop {
            if let Ok(mut r) = agent.get(&format!("{}/health", self.url)).call()
                && r.body_mut()
                    .read_to_string()
                    .is_ok_and(|b| b.contains("true"))
            {
                return;
            }
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "etcd did not become healthy:\n{}",
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Kill etcd (its data stays).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start it again on the same ports and data.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
