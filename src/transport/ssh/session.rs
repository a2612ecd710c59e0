//! An SSH session to a target host: TCP connect, cipher preferences,
//! handshake, host key check against `known_hosts`, authentication, and
//! remote commands. It knows nothing of what is sent over the session and
//! does not start the remote helper.
//!
//! - Host keys: an unknown or changed key is refused with its fingerprint
//!   and the `ssh-keyscan` line to add it, unless
//!   `strict_host_key_checking: accept-new` (unknown keys are then appended
//!   to `known_hosts` under a lock; a changed key is still refused).
//! - Auth: the `identity` file (or ssh-agent, then `~/.ssh/id_ed25519`,
//!   `~/.ssh/id_rsa`), with a passphrase or password from `password_file`
//!   (which must not be readable by group or others).
//! - Failures that retrying cannot fix (auth, host key, password file) are
//!   [`OpenError`]s of kind [`Retry::Permanent`](crate::transport::Retry).

use super::known_hosts::{self, KnownHosts, Verdict};
use super::resolve::{Hop, Resolved};
use crate::settings::{HostKeyPolicy, SshOptions};
use crate::transport::OpenError;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn permanent(kind: io::ErrorKind, msg: String) -> OpenError {
    OpenError::permanent(kind, msg)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

pub fn base64(data: &[u8], pad: bool) -> String {
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                out.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else if pad {
                out.push('=');
            }
        }
    }
    out
}

fn key_type_name(t: ssh2::HostKeyType) -> &'static str {
    use ssh2::HostKeyType::*;
    match t {
        Rsa => "ssh-rsa",
        Dss => "ssh-dss",
        Ecdsa256 => "ecdsa-sha2-nistp256",
        Ecdsa384 => "ecdsa-sha2-nistp384",
        Ecdsa521 => "ecdsa-sha2-nistp521",
        Ed25519 => "ssh-ed25519",
        Unknown => "unknown",
    }
}

/// Single-quote a byte string for the remote POSIX shell.
pub fn shell_quote(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'\'');
    for &b in s {
        if b == b'\'' {
            out.extend_from_slice(b"'\\''");
        } else {
            out.push(b);
        }
    }
    out.push(b'\'');
    out
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

pub(super) fn local_user() -> String {
    for v in ["USER", "LOGNAME"] {
        if let Ok(u) = std::env::var(v)
            && !u.is_empty()
        {
            return u;
        }
    }
    // SAFETY: getpwuid returns a pointer to static storage or null.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if !pw.is_null() {
            return std::ffi::CStr::from_ptr((*pw).pw_name)
                .to_string_lossy()
                .into_owned();
        }
    }
    "root".into()
}

/// The first line of `password_file`: a regular file owned by the running
/// user (or root) and not readable by group or others, read through one
/// descriptor (the checks are on what is read), at most 4 KiB.
fn read_secret(path: &Path) -> Result<String, OpenError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let what = |e: io::Error| permanent(e.kind(), format!("password_file {}: {e}", path.display()));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(what)?;
    let md = f.metadata().map_err(what)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !md.is_file() || (md.uid() != me && md.uid() != 0) {
        return Err(permanent(
            io::ErrorKind::PermissionDenied,
            format!(
                "password_file {} is not a regular file owned by you (uid {me}) or root (owner uid {}); refused",
                path.display(),
                md.uid()
            ),
        ));
    }
    if md.permissions().mode() & 0o077 != 0 {
        return Err(permanent(
            io::ErrorKind::PermissionDenied,
            format!(
                "password_file {} is readable by group or others (mode {:o}); chmod 600 it",
                path.display(),
                md.permissions().mode() & 0o777
            ),
        ));
    }
    let mut s = String::new();
    f.take(4096).read_to_string(&mut s).map_err(what)?;
    Ok(s.lines().next().unwrap_or("").to_string())
}

/// As OpenSSH: a private key readable or writable by group or others is
/// not used ("UNPROTECTED PRIVATE KEY FILE").
fn check_identity(path: &Path) -> Result<(), String> {
    let md =
        std::fs::metadata(path).map_err(|e| format!("identity file {}: {e}", path.display()))?;
    let mode = md.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "identity file {} is accessible by group or others (mode {mode:o}); \
             unprotected private keys are refused, as ssh does: chmod 600 it",
            path.display()
        ));
    }
    Ok(())
}

/// A connected session and what keeps it alive: the sessions and pump
/// threads of its jump hosts (dropped after it).
pub(super) struct Opened {
    pub sess: ssh2::Session,
    pub label: String,
    pub tunnels: Vec<super::jump::Tunnel>,
}

/// `host:port`, or `alias (host:port)` when the config renamed it.
pub(super) fn hop_label(h: &Hop) -> String {
    if h.alias == h.host {
        format!("{}:{}", h.host, h.port)
    } else {
        format!("{} ({}:{})", h.alias, h.host, h.port)
    }
}

/// `ssh.timeout` bounds the whole opening of a connection (TCP, handshake,
/// host key, authentication, at every jump host), not each step: a frozen
/// server costs `timeout`, not a multiple of it.
struct Deadline {
    at: std::time::Instant,
    total: std::time::Duration,
}

impl Deadline {
    fn new(total: std::time::Duration) -> Deadline {
        Deadline {
            at: std::time::Instant::now() + total,
            total,
        }
    }

    /// The time left, or a timeout error naming `label`.
    fn left(&self, label: &str) -> io::Result<std::time::Duration> {
        self.at
            .checked_duration_since(std::time::Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("connecting to {label}: timed out after {:?}", self.total),
                )
            })
    }
}

/// A duration as libssh2's timeout in milliseconds (0 would mean none).
fn ms(d: std::time::Duration) -> u32 {
    d.as_millis().clamp(1, u32::MAX as u128) as u32
}

pub(super) fn open_resolved(r: &Resolved, o: &SshOptions) -> Result<Opened, OpenError> {
    let deadline = Deadline::new(o.timeout());
    let mut tunnels: Vec<super::jump::Tunnel> = Vec::new();
    let mut hops = r.jump.iter().chain(std::iter::once(&r.target)).peekable();
    let first = hops.next().expect("at least the target");
    let mut sess = handshake(tcp_connect(first, &deadline)?, first, o, &deadline)?;
    let mut last = first;
    for hop in hops {
        let (tunnel, stream) = super::jump::Tunnel::open(sess, hop, &hop_label(last))?;
        tunnels.push(tunnel);
        sess = handshake(stream, hop, o, &deadline)?;
        last = hop;
    }
    Ok(Opened {
        sess,
        label: hop_label(&r.target),
        tunnels,
    })
}

fn tcp_connect(h: &Hop, deadline: &Deadline) -> Result<TcpStream, OpenError> {
    let label = hop_label(h);
    let addrs: Vec<_> = (h.host.as_str(), h.port)
        .to_socket_addrs()
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("cannot resolve {}: {e}", h.host),
            )
        })?
        .collect();
    let mut last = io::Error::new(
        io::ErrorKind::NotFound,
        format!("no address for {}", h.host),
    );
    for a in addrs {
        let wait = h.connect_timeout.min(deadline.left(&label)?);
        match TcpStream::connect_timeout(&a, wait) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = io::Error::new(e.kind(), format!("connect to {label}: {e}")),
        }
    }
    Err(last.into())
}

/// SSH handshake over `stream` (TCP, or a jump host's tunnel), host key
/// check and authentication for `hop`.
fn handshake<S: std::os::fd::AsRawFd + 'static>(
    stream: S,
    hop: &Hop,
    o: &SshOptions,
    deadline: &Deadline,
) -> Result<ssh2::Session, OpenError> {
    let label = hop_label(hop);
    ssh_chachapoly::ensure_linked();
    let mut sess = ssh2::Session::new().map_err(io::Error::from)?;
    // no 40 ms wait for a delayed ACK in the handshake (see quickack)
    let fd = stream.as_raw_fd();
    super::quickack::install(&sess, fd);
    sess.set_tcp_stream(stream);
    // Chosen by measurement (bench/ciphers.sh, 2026-11-27, 2 cores, AES-NI,
    // loopback sshd, CPU seconds per GiB moved, this client + the server,
    // two runs): through the remote helper chacha20-poly1305 10.5/8.6,
    // aes128-ctr 11.0/11.0, aes128-gcm 12.2/10.2; over SFTP 12.7/11.0,
    // 12.2/12.4, 13.2/12.2. libssh2's AES-GCM costs this side 7-8 s/GiB
    // against 5 for its chacha20 (6 for CTR). Since then libssh2's
    // ChaCha20 and Poly1305 are vectorised ones (`ssh-chachapoly`): about 3.3
    // s/GiB on this side, so the order stands. The first of these the
    // server offers is used.
    const CIPHERS: &str = "chacha20-poly1305@openssh.com,aes128-ctr,aes256-ctr,aes128-gcm@openssh.com,aes256-gcm@openssh.com,aes192-ctr";
    for m in [ssh2::MethodType::CryptCs, ssh2::MethodType::CryptSc] {
        let _ = sess.method_pref(m, CIPHERS);
    }
    // this hop's host key policy and known_hosts files
    let eff = SshOptions {
        known_hosts: hop.known_hosts.first().cloned(),
        strict_host_key_checking: Some(hop.strict),
        ..o.clone()
    };
    // known_hosts read before the handshake: the host key algorithms it
    // lists for this host are preferred (the server then presents a key
    // that can be checked), as OpenSSH does
    let (kh_path, global) = known_hosts_files(&eff);
    let mut files: Vec<&Path> = vec![&kh_path];
    files.extend(hop.known_hosts.iter().skip(1).map(PathBuf::as_path));
    files.push(&global);
    let kh = KnownHosts::load(&files)?;
    let lookup = known_hosts::lookup_name(&hop.host, hop.port);
    if let Ok(sup) = sess.supported_algs(ssh2::MethodType::HostKey) {
        let pref = known_hosts::preference(&kh.types_for(&lookup), &sup);
        let _ = sess.method_pref(ssh2::MethodType::HostKey, &pref);
    }
    sess.set_timeout(ms(deadline.left(&label)?));
    sess.handshake().map_err(|e| {
        io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("ssh handshake with {label}: {e}"),
        )
    })?;
    check_host_key(&sess, &hop.host, hop.port, &eff, &kh)?;
    sess.set_timeout(ms(deadline.left(&label)?));
    authenticate(&sess, fd, hop, o)?;
    sess.set_timeout(ms(o.timeout()));
    Ok(sess)
}

/// Run a command; returns (exit status, stdout). Stderr is ignored when
/// `ignore_stderr`, else returned after stdout.
/// The most a remote command may print (each of stdout and stderr).
const MAX_EXEC_OUTPUT: u64 = 1 << 20;

pub(super) fn exec(
    sess: &ssh2::Session,
    cmd: &[u8],
    ignore_stderr: bool,
) -> io::Result<(i32, Vec<u8>, Vec<u8>)> {
    let mut ch = open_channel(sess)?;
    if ignore_stderr {
        ch.handle_extended_data(ssh2::ExtendedData::Ignore)
            .map_err(io::Error::from)?;
    }
    // libssh2 takes the command as text: one that is not UTF-8 (a file
    // name's bytes) goes as a script on sh's stdin instead, byte for byte
    let cmd = match std::str::from_utf8(cmd) {
        Ok(text) => {
            ch.exec(text).map_err(io::Error::from)?;
            text.to_string()
        }
        Err(_) => {
            ch.exec("exec /bin/sh").map_err(io::Error::from)?;
            ch.write_all(cmd)?;
            ch.write_all(b"\n")?;
            ch.send_eof().map_err(io::Error::from)?;
            String::from_utf8_lossy(cmd).into_owned()
        }
    };
    // a remote command's output is bounded (mkdir, sha256sum: a few lines)
    let too_long = || {
        crate::violation::violation(format!(
            "a remote command printed more than {MAX_EXEC_OUTPUT} bytes: {cmd}"
        ))
    };
    let mut out = Vec::new();
    Read::by_ref(&mut ch)
        .take(MAX_EXEC_OUTPUT + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > MAX_EXEC_OUTPUT {
        return Err(too_long());
    }
    let mut err = Vec::new();
    if !ignore_stderr {
        ch.stderr()
            .take(MAX_EXEC_OUTPUT + 1)
            .read_to_end(&mut err)?;
        if err.len() as u64 > MAX_EXEC_OUTPUT {
            return Err(too_long());
        }
    }
    ch.wait_close().map_err(io::Error::from)?;
    let code = ch.exit_status().map_err(io::Error::from)?;
    Ok((code, out, err))
}

/// The user's known_hosts (`ssh.known_hosts`, default
/// `~/.ssh/known_hosts`) and the global one (`ssh.global_known_hosts`,
/// default `/etc/ssh/ssh_known_hosts`).
fn known_hosts_files(o: &SshOptions) -> (PathBuf, PathBuf) {
    let user = o
        .known_hosts
        .clone()
        .unwrap_or_else(|| home().join(".ssh/known_hosts"));
    let global = o
        .global_known_hosts
        .clone()
        .unwrap_or_else(|| PathBuf::from("/etc/ssh/ssh_known_hosts"));
    (user, global)
}

/// The server's key against known_hosts (see `known_hosts` for the rules).
fn check_host_key(
    sess: &ssh2::Session,
    host: &str,
    port: u16,
    o: &SshOptions,
    kh: &KnownHosts,
) -> Result<(), OpenError> {
    let (key, ktype) = sess
        .host_key()
        .ok_or_else(|| io::Error::other("the server sent no host key"))?;
    let fp = sess
        .host_key_hash(ssh2::HashType::Sha256)
        .map(|h| format!("SHA256:{}", base64(h, false)))
        .unwrap_or_default();
    let (kh_path, _) = known_hosts_files(o);
    let name = known_hosts::lookup_name(host, port);
    let kt = key_type_name(ktype);
    let keyscan = if port == 22 {
        format!("ssh-keyscan -t {kt} {host} >> {}", kh_path.display())
    } else {
        format!(
            "ssh-keyscan -p {port} -t {kt} {host} >> {}",
            kh_path.display()
        )
    };
    let refuse = |msg: String| Err(permanent(io::ErrorKind::PermissionDenied, msg));
    match kh.check(&name, kt, key) {
        Verdict::Known => Ok(()),
        Verdict::Revoked(at) => refuse(format!(
            "host key of {name} ({kt} {fp}) is marked @revoked ({at}); refused"
        )),
        Verdict::Changed(at) => refuse(format!(
            "HOST KEY CHANGED for {name}: the server now presents {kt} {fp}, which differs from {at}; \
             this may be an attack. If the change is expected, remove the old entry (ssh-keygen -R '{name}' -f {}) and add the new one: {keyscan}",
            kh_path.display()
        )),
        Verdict::OtherTypes(types) => refuse(format!(
            "host {name} presented a {kt} key ({fp}), but known_hosts lists only {} keys for it; \
             refused. If this key is right, add it: {keyscan}",
            types.join(", ")
        )),
        Verdict::CertAuthority(at) => refuse(format!(
            "host {name} is covered by a @cert-authority line ({at}), but syncjob cannot check host \
             certificates (use ssh.client: openssh, which does); its plain key {kt} {fp} is not listed: \
             verify it and add it with: {keyscan}"
        )),
        Verdict::Unknown
            if o.strict_host_key_checking
                .is_some_and(|p| p != HostKeyPolicy::Strict) =>
        {
            if let Some(dir) = kh_path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let line = format!("{name} {kt} {}\n", base64(key, true));
            append_known_host(&kh_path, line.as_bytes())?;
            crate::errln!(
                "syncjob: added the host key of {name} ({kt} {fp}) to {} (accept-new)",
                kh_path.display()
            );
            Ok(())
        }
        Verdict::Unknown => refuse(format!(
            "host key of {name} is unknown ({kt} {fp}, not in {}); verify the fingerprint and add it with: {keyscan} \
             (or set ssh.strict_host_key_checking: accept-new)",
            kh_path.display()
        )),
    }
}

/// Append one line to `known_hosts` with one `write(2)` under an exclusive
/// `flock`, so that targets connecting at once never interleave their lines.
fn append_known_host(path: &Path, line: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)?;
    f.lock()?;
    let r = f.write_all(line);
    let _ = f.unlock();
    r
}

/// Whether the connection under a session is still open: nothing to read
/// yet, or data waiting (a peek, nothing consumed). libssh2 reports a
/// connection lost during public key authentication with the same code as
/// a key the server did not accept (`PUBLICKEY_UNVERIFIED`), so the socket
/// is asked.
fn still_open(fd: std::os::fd::RawFd) -> bool {
    let mut b = [0u8; 1];
    // SAFETY: a peek of at most one byte into a live one-byte buffer
    let r = unsafe {
        libc::recv(
            fd,
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    r > 0 || (r < 0 && io::Error::last_os_error().kind() == io::ErrorKind::WouldBlock)
}

/// The outcome of one authentication call on the session over `fd`:
/// `Ok(true)` authenticated, `Ok(false)` refused, `Err`: the connection
/// failed meanwhile (worth another try, unlike a refusal).
fn auth_outcome(
    sess: &ssh2::Session,
    fd: std::os::fd::RawFd,
    r: Result<(), ssh2::Error>,
) -> io::Result<bool> {
    match r {
        Ok(()) => Ok(sess.authenticated()),
        Err(e) if !still_open(fd) => Err(io::Error::new(
            io::ErrorKind::ConnectionAborted,
            format!("the connection was closed during authentication ({e})"),
        )),
        Err(_) => Ok(false),
    }
}

/// Public key authentication with `key`; as ssh, the user certificates
/// for it (`CertificateFile`s that certify it, then `KEY-cert.pub` beside
/// it: signed by a CA the server trusts) are offered first.
fn try_key(
    sess: &ssh2::Session,
    fd: std::os::fd::RawFd,
    user: &str,
    key: &Path,
    passphrase: Option<&str>,
    certificates: &[PathBuf],
) -> io::Result<bool> {
    for cert in super::certs::for_key(key, certificates) {
        let r = sess.userauth_pubkey_file(user, Some(&cert), key, passphrase);
        if auth_outcome(sess, fd, r)? {
            return Ok(true);
        }
    }
    let r = sess.userauth_pubkey_file(user, None, key, passphrase);
    auth_outcome(sess, fd, r)
}

/// Authenticate `sess` (over the socket `fd`) as `hop` says.
fn authenticate(
    sess: &ssh2::Session,
    fd: std::os::fd::RawFd,
    hop: &Hop,
    o: &SshOptions,
) -> Result<(), OpenError> {
    let (user, host) = (hop.user.as_str(), hop.host.as_str());
    let secret = match &o.password_file {
        Some(p) => Some(read_secret(p)?),
        None => None,
    };
    let mut tried = Vec::new();
    // the job's `identity` alone; else ssh-agent (unless IdentitiesOnly),
    // then the config's IdentityFile list (default keys) that exist
    let keys: Vec<PathBuf> = if hop.identity_given {
        hop.identities.clone()
    } else {
        if std::env::var_os("SSH_AUTH_SOCK").is_some() && !hop.identities_only {
            tried.push("ssh-agent".to_string());
            if auth_outcome(sess, fd, sess.userauth_agent(user))? {
                return Ok(());
            }
        }
        hop.identities
            .iter()
            .filter(|p| p.exists())
            .cloned()
            .collect()
    };
    // with `identity`, password_file holds its passphrase, which never
    // goes to the server; without, it is the login password (the default
    // keys are tried without a passphrase)
    let passphrase = secret.as_deref().filter(|_| hop.identity_given);
    for k in keys {
        tried.push(k.display().to_string());
        if hop.identity_given && !k.exists() {
            return Err(permanent(
                io::ErrorKind::NotFound,
                format!("identity file {} does not exist", k.display()),
            ));
        }
        if let Err(e) = check_identity(&k) {
            if hop.identity_given {
                return Err(permanent(io::ErrorKind::PermissionDenied, e));
            }
            tried.push(format!("(skipped: {e})"));
            continue;
        }
        if try_key(sess, fd, user, &k, passphrase, &hop.certificates)? {
            return Ok(());
        }
    }
    if !hop.identity_given
        && let Some(pw) = &secret
    {
        tried.push("password".into());
        if auth_outcome(sess, fd, sess.userauth_password(user, pw))? {
            return Ok(());
        }
    }
    Err(permanent(
        io::ErrorKind::PermissionDenied,
        format!(
            "authentication refused for {user}@{host} (tried: {})",
            if tried.is_empty() {
                "no key found".to_string()
            } else {
                tried.join(", ")
            }
        ),
    ))
}

/// The receive window of the session channels we open (libssh2's default
/// is 2 MiB): replies, listings and the helper's answers never wait for a
/// window adjustment on a fast link.
pub const CHANNEL_WINDOW: u32 = 16 << 20;

/// A "session" channel with a [`CHANNEL_WINDOW`] receive window (packets
/// of libssh2's default size, 32 KiB).
pub fn open_channel(sess: &ssh2::Session) -> io::Result<ssh2::Channel> {
    sess.channel_open("session", CHANNEL_WINDOW, 32 * 1024, None)
        .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_quoting() {
        assert_eq!(base64(b"foobar", true), "Zm9vYmFy");
        assert_eq!(base64(b"fooba", true), "Zm9vYmE=");
        assert_eq!(base64(b"foob", false), "Zm9vYg");
        assert_eq!(shell_quote(b"it's"), b"'it'\\''s'");
    }
}
