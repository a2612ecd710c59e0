//! `ssh.client: openssh`: the system's `ssh` binary as the transport, as
//! rsync runs it. Remote commands (`find`, `mkdir -p`, `sha256sum`) are one
//! `ssh HOST CMD` each; SFTP is `ssh -s HOST sftp` and the remote helper
//! `ssh HOST 'exec syncjob helper …'`, both kept running, spoken to over
//! the child's stdin/stdout. Everything of the user's ssh setup then works
//! (agent, certificates, ControlMaster, FIDO keys, ProxyCommand).
//!
//! Invariants:
//! - Always `-o BatchMode=yes` (never a prompt; no passwords, so
//!   `ssh.password_file` is refused with this client), `-T -x -a` (no tty,
//!   no X11 or agent forwarding), and the values syncjob resolved (HostName,
//!   port, user, known_hosts, StrictHostKeyChecking, ConnectTimeout; the
//!   job's key with IdentitiesOnly; the job's ProxyJump) so both clients go
//!   to the same place with the same host key policy.
//! - The `ssh` processes of one destination share one master connection
//!   (see `mux`) unless the user's config sets a `ControlPath` of its own;
//!   syncjob never overrides a user's ControlMaster/ControlPath/
//!   ControlPersist.
//! - A child is never left behind: dropping a [`ChildPipe`] closes its
//!   stdin, waits at most 2 s, then kills it.
//! - `ssh` failing itself (exit 255) on authentication or a host key is a
//!   permanent error; other failures (refused, timed out) are transient.
//!   What it says on stderr is kept (at most 64 KiB) for the message.

use super::mux::Mux;
use super::resolve::{Resolved, ssh_binary};
use crate::settings::{HostKeyPolicy, SshOptions};
use crate::transport::OpenError;
use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The most a remote command may print on stdout (stderr: 64 KiB kept).
const MAX_EXEC_OUTPUT: u64 = 1 << 20;

/// How `ssh` is run for one target.
pub struct Client {
    ssh: PathBuf,
    args: Vec<OsString>,
    dest: String,
    pub label: String,
    /// the master connection this target's `ssh` processes share
    mux: Option<Mux>,
    /// keeps the config wrapper of `resolve` alive
    _resolved: Resolved,
}

/// A duplex byte stream to a remote process (an ssh2 channel or the pipes
/// of an `ssh` child).
pub trait Pipe: Read + Write + Send {
    /// After the stream ended or failed: the exit status and what the
    /// remote (or `ssh`) said on stderr.
    fn finish(&mut self) -> (i32, Vec<u8>);

    /// Whether data can be read within `d` (an ssh2 channel relies on its
    /// session's timeout instead).
    fn readable_within(&mut self, _d: Duration) -> bool {
        true
    }
}

impl Pipe for ssh2::Channel {
    fn finish(&mut self) -> (i32, Vec<u8>) {
        // the remote may still wait for input: end it
        let _ = self.send_eof();
        let mut err = Vec::new();
        let _ = self.stderr().take(64 << 10).read_to_end(&mut err);
        let _ = self.wait_close();
        (self.exit_status().unwrap_or(-1), err)
    }
}

fn quoted(v: &str) -> String {
    format!("\"{}\"", v.replace('"', ""))
}

impl Client {
    /// Check what this client cannot do and build the `ssh` arguments.
    /// With a state dir and no `ControlPath` of the user's, the target's
    /// `ssh` processes share one master connection (see `mux`).
    pub fn new(r: Resolved, o: &SshOptions, state_dir: Option<&Path>) -> Result<Client, OpenError> {
        let ssh = ssh_binary().ok_or_else(|| {
            OpenError::permanent(
                io::ErrorKind::NotFound,
                "ssh.client: openssh needs the `ssh` binary on PATH (install openssh-client)",
            )
        })?;
        if o.password_file.is_some() {
            return Err(OpenError::permanent(
                io::ErrorKind::InvalidInput,
                "ssh.password_file cannot be used with ssh.client: openssh (it runs ssh with BatchMode=yes): \
                 use ssh-agent or a key without a passphrase, or ssh.client: libssh2",
            ));
        }
        let h = &r.target;
        let mut args: Vec<OsString> = r.config_args.clone();
        let mut opt = |k: &str, v: String| {
            args.push("-o".into());
            args.push(format!("{k}={v}").into());
        };
        opt("BatchMode", "yes".into());
        opt("HostName", h.host.clone());
        opt("Port", h.port.to_string());
        opt("User", h.user.clone());
        let kh: Vec<String> = h
            .known_hosts
            .iter()
            .map(|p| quoted(&p.display().to_string()))
            .collect();
        if !kh.is_empty() {
            opt("UserKnownHostsFile", kh.join(" "));
        }
        let strict = match h.strict {
            HostKeyPolicy::Strict => "yes",
            HostKeyPolicy::AcceptNew => "accept-new",
            HostKeyPolicy::No => "no",
        };
        opt("StrictHostKeyChecking", strict.into());
        opt(
            "ConnectTimeout",
            h.connect_timeout.as_secs().max(1).to_string(),
        );
        let alive = (o.timeout().as_secs() / 3).max(1);
        opt("ServerAliveInterval", alive.to_string());
        opt("ServerAliveCountMax", "3".into());
        if h.identity_given {
            opt("IdentitiesOnly", "yes".into());
            for k in &h.identities {
                opt("IdentityFile", quoted(&k.display().to_string()));
            }
        }
        match o.proxy_jump.as_deref() {
            Some("none") => opt("ProxyJump", "none".into()),
            Some(j) => opt("ProxyJump", j.into()),
            None => {}
        }
        args.extend(["-T", "-x", "-a"].map(OsString::from));
        let share = state_dir.filter(|_| !r.user_control_path);
        let mut c = Client {
            ssh,
            args,
            dest: h.alias.clone(),
            label: super::session::hop_label(h),
            mux: None,
            _resolved: r,
        };
        if let Some(d) = share {
            c.mux = c.start_master(d)?;
            if let Some(m) = &c.mux {
                c.args.splice(0..0, m.options());
            }
        }
        Ok(c)
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.ssh);
        c.args(&self.args);
        c
    }

    /// Run one remote command; returns (exit status, stdout, stderr). `ssh`
    /// failing to connect (exit 255) is an error.
    pub fn exec(&self, cmd: &[u8], ignore_stderr: bool) -> io::Result<(i32, Vec<u8>, Vec<u8>)> {
        let mut p = self.stream(cmd)?;
        p.stdin = None; // the command reads nothing
        // a remote command's output is bounded, as with the embedded client
        let mut out = Vec::new();
        Read::by_ref(&mut p.stdout)
            .take(MAX_EXEC_OUTPUT + 1)
            .read_to_end(&mut out)?;
        if out.len() as u64 > MAX_EXEC_OUTPUT {
            let _ = p.child.kill();
            return Err(crate::violation::violation(format!(
                "a remote command printed more than {MAX_EXEC_OUTPUT} bytes: {}",
                String::from_utf8_lossy(cmd)
            )));
        }
        let (code, err) = p.finish();
        if code == 255 {
            return Err(self.failed(&err).source);
        }
        Ok((code, out, if ignore_stderr { Vec::new() } else { err }))
    }

    /// Start `ssh -s HOST sftp`.
    pub fn sftp(&self) -> io::Result<ChildPipe> {
        let mut c = self.command();
        c.arg("-s").arg("--").arg(&self.dest).arg("sftp");
        ChildPipe::spawn(c)
    }

    /// Start a remote command kept running (the helper).
    pub fn stream(&self, cmd: &[u8]) -> io::Result<ChildPipe> {
        use std::os::unix::ffi::OsStrExt;
        let mut c = self.command();
        c.arg("--")
            .arg(&self.dest)
            .arg(std::ffi::OsStr::from_bytes(cmd));
        ChildPipe::spawn(c)
    }
}

impl Client {
    /// What `ssh` said when it failed itself (exit 255), as an
    /// [`OpenError`]: permanent for authentication and host keys, whose
    /// messages say what to do as the embedded client's do.
    pub fn failed(&self, stderr: &[u8]) -> OpenError {
        let said = String::from_utf8_lossy(stderr);
        let said: String = said
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("@@@"))
            .collect::<Vec<_>>()
            .join(" ");
        let h = &self._resolved.target;
        let kh = h
            .known_hosts
            .first()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "~/.ssh/known_hosts".into());
        let keyscan = format!("ssh-keyscan -p {} {} >> {kh}", h.port, h.host);
        let msg = if said.contains("host key is known for") {
            format!(
                "host key of {} is unknown (ssh: {said}); verify the fingerprint and add it with: {keyscan} \
                 (or set ssh.strict_host_key_checking: accept-new)",
                self.label
            )
        } else if said.contains("IDENTIFICATION HAS CHANGED") {
            format!(
                "HOST KEY CHANGED for {}: this may be an attack; if the change is expected, remove the old entry \
                 (ssh-keygen -R '[{}]:{}' -f {kh}) and add the new one: {keyscan} (ssh: {said})",
                self.label, h.host, h.port
            )
        } else {
            format!("ssh to {} failed: {said}", self.label)
        };
        let permanent = [
            "Permission denied",
            "Host key verification failed",
            "IDENTIFICATION HAS CHANGED",
            "host key is known for",
            "Too many authentication failures",
            "Bad configuration option",
            "Could not resolve hostname",
        ];
        if permanent.iter().any(|p| said.contains(p)) {
            OpenError::permanent(io::ErrorKind::PermissionDenied, msg)
        } else {
            OpenError::from(io::Error::new(io::ErrorKind::ConnectionAborted, msg))
        }
    }
}

impl Client {
    /// A share of the destination's master connection, started (`ssh -f
    /// -N` with the client's arguments; it returns once logged in) by the
    /// first client of the destination. `ssh` failing to log in is this
    /// client's error, as for any other `ssh` it runs.
    fn start_master(&self, state_dir: &Path) -> Result<Option<Mux>, OpenError> {
        let key = format!("{:?} {}", self.args, self.dest);
        Mux::acquire(state_dir, &key, |opts| {
            // the backgrounded master keeps its stdio: a file, not a pipe
            let mut err = tempfile::tempfile().map_err(OpenError::from)?;
            let mut c = Command::new(&self.ssh);
            c.args(opts)
                .args(&self.args)
                .args(["-f", "-N", "--", &self.dest])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(err.try_clone().map_err(OpenError::from)?);
            let st = c.status().map_err(OpenError::from)?;
            if st.success() {
                return Ok(());
            }
            let mut said = Vec::new();
            use std::io::Seek;
            err.seek(std::io::SeekFrom::Start(0))
                .map_err(OpenError::from)?;
            let _ = err.take(64 << 10).read_to_end(&mut said);
            Err(self.failed(&said))
        })
    }
}

impl Drop for Client {
    /// The shared master (if any) exits with the destination's last client.
    fn drop(&mut self) {
        let Some(m) = self.mux.as_ref() else { return };
        m.release(|| {
            if !m.path.exists() {
                return;
            }
            let mut c = self.command();
            c.args(["-O", "exit", "--"])
                .arg(&self.dest)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            if !c.status().is_ok_and(|s| s.success()) {
                return;
            }
            // the master answers `exit` first and goes a moment later,
            // removing its socket: wait a bounded while (1 s), so that a
            // run that ended leaves no master behind
            for _ in 0..40 {
                if !m.path.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
        });
    }
}

/// An `ssh` child's stdin/stdout as one stream; stderr collected aside.
pub struct ChildPipe {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: ChildStdout,
    stderr: Arc<Mutex<Vec<u8>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ChildPipe {
    fn spawn(mut c: Command) -> io::Result<ChildPipe> {
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn()?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("piped");
        let mut err = child.stderr.take().expect("piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let s2 = stderr.clone();
        let reader = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let mut s = s2.lock().unwrap_or_else(|e| e.into_inner());
                if s.len() < 64 << 10 {
                    s.extend_from_slice(&buf[..n]);
                }
            }
        });
        Ok(ChildPipe {
            child,
            stdin,
            stdout,
            stderr,
            reader: Some(reader),
        })
    }

    /// What the child said on stderr so far (complete once it is dropped).
    pub fn stderr(&self) -> Arc<Mutex<Vec<u8>>> {
        self.stderr.clone()
    }

    /// Close stdin and wait (at most `limit`) for the child; then kill it.
    fn end(&mut self, limit: Duration) -> i32 {
        self.stdin = None;
        let t = Instant::now();
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(s)) => break s.code().unwrap_or(-1),
                Ok(None) if t.elapsed() < limit => std::thread::sleep(Duration::from_millis(10)),
                _ => {
                    let _ = self.child.kill();
                    break self.child.wait().ok().and_then(|s| s.code()).unwrap_or(-1);
                }
            }
        };
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        status
    }
}

impl Read for ChildPipe {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stdout.read(buf)
    }
}

impl Write for ChildPipe {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.stdin {
            Some(s) => s.write(buf),
            None => Err(io::ErrorKind::BrokenPipe.into()),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.stdin {
            Some(s) => s.flush(),
            None => Ok(()),
        }
    }
}

impl Pipe for ChildPipe {
    fn readable_within(&mut self, d: Duration) -> bool {
        use std::os::fd::AsRawFd;
        let mut fd = libc::pollfd {
            fd: self.stdout.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = d.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&mut fd, 1, ms) > 0 }
    }

    fn finish(&mut self) -> (i32, Vec<u8>) {
        let status = self.end(Duration::from_secs(5));
        let err = self
            .stderr
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        (status, err)
    }
}

impl Drop for ChildPipe {
    fn drop(&mut self) {
        if self.reader.is_some() {
            self.end(Duration::from_secs(2));
        }
    }
}
