//! A real etcd (Debian `etcd-server`): one member, or a cluster of three,
//! on free loopback ports with its own data dirs, for the cluster tests.
//! Killed when dropped.

use super::ports::free_port;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Etcd {
    child: Option<Child>,
    pub url: String,
    name: String,
    peer: u16,
    client: u16,
    /// `--initial-cluster`
    members: String,
    data: PathBuf,
    log: PathBuf,
}

impl Etcd {
    /// Start etcd with its data under `dir` and wait until it answers.
    pub fn start(dir: &Path) -> Etcd {
        Etcd::start_cluster(dir, 1).pop().unwrap()
    }

    /// Start `n` members forming one cluster; wait until each answers.
    pub fn start_cluster(dir: &Path, n: usize) -> Vec<Etcd> {
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 2 * n {
            let p = free_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let members: Vec<String> = (0..n)
            .map(|i| format!("t{i}=http://127.0.0.1:{}", ports[2 * i + 1]))
            .collect();
        let mut v: Vec<Etcd> = (0..n)
            .map(|i| Etcd {
                child: None,
                url: format!("http://127.0.0.1:{}", ports[2 * i]),
                name: format!("t{i}"),
                client: ports[2 * i],
                peer: ports[2 * i + 1],
                members: members.join(","),
                data: dir.join(format!("etcd-data-t{i}")),
                log: dir.join(format!("etcd-t{i}.log")),
            })
            .collect();
        for e in &mut v {
            e.spawn_only();
        }
        for e in &v {
            e.wait_ready();
        }
        v
    }

    fn spawn(&mut self) {
        self.spawn_only();
        self.wait_ready();
    }

    fn spawn_only(&mut self) {
        let (c, p) = (self.client, self.peer);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("etcd")
            .args(["--name", &self.name, "--data-dir"])
            .arg(&self.data)
            .arg(format!("--listen-client-urls=http://127.0.0.1:{c}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{c}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{p}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{p}"
            ))
            .arg(format!("--initial-cluster={}", self.members))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd is installed (scripts/test.sh installs etcd-server)");
        self.child = Some(child);
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

/// A TCP proxy in front of etcd that can be cut, to cut one daemon off
/// etcd while the others still reach it (a partition).
pub struct Proxy {
    pub url: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Proxy {
    pub fn start(to: &str) -> Proxy {
        use std::sync::atomic::Ordering;
        let target = to.trim_start_matches("http://").to_string();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, cs) = (cut.clone(), conns.clone());
        std::thread::spawn(move || {
            for inc in l.incoming() {
                let Ok(inc) = inc else { continue };
                let Ok(out) = std::net::TcpStream::connect(&target) else {
                    continue;
                };
                // the flag is read and the pair kept under the lock that
                // set_cut holds: a cut cannot miss a connection being set up
                let mut g = cs.lock().unwrap();
                if c.load(Ordering::SeqCst) {
                    continue; // dropped: connection closed at once
                }
                g.push(inc.try_clone().unwrap());
                g.push(out.try_clone().unwrap());
                for (mut a, mut b) in [
                    (inc.try_clone().unwrap(), out.try_clone().unwrap()),
                    (out, inc),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut a, &mut b);
                        let _ = b.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Proxy { url, cut, conns }
    }

    /// Cut (or heal) the path: open connections are closed, new ones dropped.
    pub fn set_cut(&self, cut: bool) {
        let mut conns = self.conns.lock().unwrap();
        self.cut.store(cut, std::sync::atomic::Ordering::SeqCst);
        if cut {
            for s in conns.drain(..) {
                let _ = s.shutdown(std::net::Shutdown::Both);
            }
        }
    }
}
