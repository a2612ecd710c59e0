//! A target directory on a remote host, over SSH (libssh2 through `ssh2`).
//!
//! - Host keys are checked against `known_hosts`; an unknown or changed key
//!   is refused with its fingerprint and the `ssh-keyscan` line to add it,
//!   unless `strict_host_key_checking: accept-new` (unknown keys are then
//!   appended; a changed key is still refused).
//! - Auth: the `identity` file (or ssh-agent, then `~/.ssh/id_ed25519`,
//!   `~/.ssh/id_rsa`), with a passphrase or password from `password_file`
//!   (which must not be readable by group or others).
//! - Listing: one remote `find -printf` over an exec channel, NUL-separated;
//!   SFTP readdir when the remote has no GNU find. Names are validated: an
//!   entry that would resolve outside the target root is rejected.
//! - Writes: SFTP (own client, `sftp.rs`): a temporary name, pipelined
//!   WRITEs, mode/mtime set on the open handle, then `posix-rename` over the
//!   final name (atomic). With `ssh.remote_helper`, files go instead as
//!   one stream to `syncjob helper` on the remote (see `helper`): the same
//!   temporary name and rename there, one record and one reply per file.

use super::sftp::{self, Attrs, FXF_CREAT, FXF_EXCL, FXF_WRITE, Reply, Sftp, secs32};
use super::{Listing, Transport, open_source, temp_name, verify_unchanged};
use crate::config::{HostKeyPolicy, Job};
use crate::filter::Filter;
use crate::journal::PathError;
use crate::plan::{Action, Entry, EntryKind, Tree, TreeBuilder};
use crate::target::SshTarget;
use sha2::{Digest, Sha256};
use std::io::{self, Read};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// An error that retrying cannot fix (auth refused, host key unknown or
/// changed, bad password file).
#[derive(Debug)]
pub struct Permanent(pub String);

impl std::fmt::Display for Permanent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
impl std::error::Error for Permanent {}

fn permanent(kind: io::ErrorKind, msg: String) -> io::Error {
    io::Error::new(kind, Permanent(msg))
}

pub fn is_permanent(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<Permanent>())
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

fn local_user() -> String {
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

fn read_secret(path: &Path) -> io::Result<String> {
    let md = std::fs::metadata(path)
        .map_err(|e| permanent(e.kind(), format!("password_file {}: {e}", path.display())))?;
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
    let s = std::fs::read_to_string(path)?;
    Ok(s.lines().next().unwrap_or("").to_string())
}

pub struct Ssh {
    sess: ssh2::Session,
    sftp: Sftp,
    /// `syncjob helper` running on the remote, when the job asks for it
    helper: Option<ssh2::Channel>,
    /// the target root as the remote sees it (bytes)
    root: Vec<u8>,
    label: String,
}

impl Ssh {
    /// SFTP v3 reports a full disk (and quota) only as a generic "Failure".
    /// When a write or close fails so, ask the server how much room is left
    /// (`statvfs@openssh.com`) and say "no space" when the file cannot fit.
    fn explain_failure(&mut self, e: io::Error, src: &Path) -> io::Error {
        let msg = e.to_string();
        let generic = e.kind() == io::ErrorKind::Other
            && (msg.ends_with(": Failure") || msg.ends_with(": failure"));
        if !generic {
            return e;
        }
        let need = std::fs::metadata(src).map(|m| m.len()).unwrap_or(0);
        let root = self.root.clone();
        match self.sftp.avail_bytes(&root) {
            Ok(Some(avail)) if avail < need.max(1) => io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "{msg}: no space left on device on the target ({avail} bytes free, the file needs {need})"
                ),
            ),
            _ => e,
        }
    }

    pub fn connect(t: &SshTarget, job: &Job) -> io::Result<Ssh> {
        let o = &job.ssh;
        let port = t.port.unwrap_or(o.port);
        let label = format!("{}:{port}", t.host);
        let addrs: Vec<_> = (t.host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("cannot resolve {}: {e}", t.host),
                )
            })?
            .collect();
        let mut last = io::Error::new(
            io::ErrorKind::NotFound,
            format!("no address for {}", t.host),
        );
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, o.timeout) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = io::Error::new(e.kind(), format!("connect to {label}: {e}")),
            }
        }
        let tcp = tcp.ok_or(last)?;
        let _ = tcp.set_nodelay(true);
        let mut sess = ssh2::Session::new().map_err(io::Error::from)?;
        sess.set_tcp_stream(tcp);
        // AEAD ciphers first (one pass over the data instead of cipher +
        // MAC). Measured with bench/compare.sh on 1 GiB through libssh2:
        // chacha20-poly1305 3.70 s, aes128-ctr 4.61 s, aes128-gcm 4.75 s.
        const CIPHERS: &str = "chacha20-poly1305@openssh.com,aes128-gcm@openssh.com,aes256-gcm@openssh.com,aes128-ctr,aes256-ctr,aes192-ctr";
        for m in [ssh2::MethodType::CryptCs, ssh2::MethodType::CryptSc] {
            let _ = sess.method_pref(m, CIPHERS);
        }
        sess.set_timeout(o.timeout.as_millis().min(u32::MAX as u128) as u32);
        sess.handshake().map_err(|e| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("ssh handshake with {label}: {e}"),
            )
        })?;
        check_host_key(&sess, &t.host, port, job)?;
        let user = t.user.clone().unwrap_or_else(local_user);
        authenticate(&sess, &user, &t.host, job)?;
        let chan = sess.channel_session().map_err(io::Error::from)?;
        let sftp = Sftp::start(chan)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start sftp on {label}: {e}")))?;
        let helper = match &o.remote_helper {
            Some(cmd) => Some(start_helper(&sess, cmd, t.path.as_bytes(), &label)?),
            None => None,
        };
        Ok(Ssh {
            sess,
            sftp,
            helper,
            root: t.path.as_bytes().to_vec(),
            label,
        })
    }

    fn path(&self, rel: &Path) -> Vec<u8> {
        let mut p = self.root.clone();
        let r = rel.as_os_str().as_bytes();
        if !r.is_empty() {
            if !p.ends_with(b"/") {
                p.push(b'/');
            }
            p.extend_from_slice(r);
        }
        p
    }

    /// Run a command; returns (exit status, stdout). Stderr is ignored when
    /// `ignore_stderr`, else returned after stdout.
    fn exec(&self, cmd: &[u8], ignore_stderr: bool) -> io::Result<(i32, Vec<u8>, Vec<u8>)> {
        let mut ch = self.sess.channel_session().map_err(io::Error::from)?;
        if ignore_stderr {
            ch.handle_extended_data(ssh2::ExtendedData::Ignore)
                .map_err(io::Error::from)?;
        }
        let cmd = String::from_utf8_lossy(cmd).into_owned();
        ch.exec(&cmd).map_err(io::Error::from)?;
        let mut out = Vec::new();
        ch.read_to_end(&mut out)?;
        let mut err = Vec::new();
        if !ignore_stderr {
            ch.stderr().read_to_end(&mut err)?;
        }
        ch.wait_close().map_err(io::Error::from)?;
        let code = ch.exit_status().map_err(io::Error::from)?;
        Ok((code, out, err))
    }

    fn list_find(&self) -> io::Result<Option<(i32, Vec<u8>)>> {
        let mut cmd = b"root=".to_vec();
        cmd.extend_from_slice(&shell_quote(&self.root));
        cmd.extend_from_slice(
            b"; if [ ! -e \"$root\" ] && [ ! -L \"$root\" ]; then exit 3; fi; \
              cd -- \"$root\" || exit 4; \
              exec find . -printf '%y\\0%s\\0%T@\\0%m\\0%U\\0%G\\0%P\\0%l\\0'",
        );
        let (code, out, _) = self.exec(&cmd, true)?;
        match code {
            3 => Ok(Some((3, Vec::new()))),
            4 => Err(io::Error::new(
                io::ErrorKind::NotADirectory,
                format!(
                    "target {} is not a directory",
                    String::from_utf8_lossy(&self.root)
                ),
            )),
            0 | 1 if out.starts_with(b"d\0") => Ok(Some((code, out))),
            // no GNU find there
            _ => Ok(None),
        }
    }

    fn list_sftp(&mut self) -> io::Result<Option<Tree>> {
        let root = self.root.clone();
        let top = match self.sftp.readdir(&root) {
            Ok(v) => v,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut tree = TreeBuilder::default();
        tree.push(Path::new(""), Entry::blank(EntryKind::Dir));
        let mut queue = vec![(PathBuf::new(), top)];
        while let Some((dir, items)) = queue.pop() {
            for (name, a) in items {
                if name.is_empty() || name.contains(&b'/') {
                    continue;
                }
                let rel = dir.join(std::ffi::OsStr::from_bytes(&name));
                let perm = a.perm.unwrap_or(0);
                let kind = if sftp::is_dir_mode(perm) {
                    EntryKind::Dir
                } else if sftp::is_file_mode(perm) {
                    EntryKind::File
                } else if sftp::is_link_mode(perm) {
                    EntryKind::Symlink
                } else {
                    EntryKind::Special
                };
                let link = if kind == EntryKind::Symlink {
                    let p = self.path(&rel);
                    Some(PathBuf::from(std::ffi::OsString::from_vec(
                        self.sftp.readlink(&p)?,
                    )))
                } else {
                    None
                };
                let (uid, gid) = a.uid_gid.unwrap_or((0, 0));
                tree.push(
                    &rel,
                    Entry {
                        kind,
                        size: if kind == EntryKind::File {
                            a.size.unwrap_or(0)
                        } else {
                            0
                        },
                        mtime: a.times.map(|t| t.1 as i64).unwrap_or(0),
                        mtime_ns: 0,
                        mode: perm & 0o7777,
                        uid,
                        gid,
                        link: link.map(Box::new),
                    },
                );
                if kind == EntryKind::Dir {
                    let p = self.path(&rel);
                    let sub = self.sftp.readdir(&p)?;
                    queue.push((rel, sub));
                }
            }
        }
        Ok(Some(tree.finish()))
    }

    fn wait_ok(&mut self, id: u32, what: &str) -> io::Result<()> {
        self.sftp.wait(id)?.ok(what)
    }
}

/// Start `CMD helper --root ROOT` on the remote and check its greeting
/// (the helper is confined to the target root; paths sent are relative to
/// it). A helper that cannot start is a permanent error (it is configured,
/// and would be missing on every retry).
fn start_helper(
    sess: &ssh2::Session,
    cmd: &str,
    root: &[u8],
    label: &str,
) -> io::Result<ssh2::Channel> {
    let mut ch = sess.channel_session().map_err(io::Error::from)?;
    let mut line = b"exec ".to_vec();
    line.extend_from_slice(&shell_quote(cmd.as_bytes()));
    line.extend_from_slice(b" helper --root ");
    line.extend_from_slice(&shell_quote(root));
    ch.exec(&String::from_utf8_lossy(&line))
        .map_err(io::Error::from)?;
    let mut greeting = vec![0u8; crate::helper::GREETING.len()];
    let got = ch.read_exact(&mut greeting);
    if got.is_ok() && greeting == crate::helper::GREETING {
        return Ok(ch);
    }
    let mut err = Vec::new();
    let _ = ch.stderr().read_to_end(&mut err);
    let _ = ch.wait_close();
    let status = ch.exit_status().unwrap_or(-1);
    let said = String::from_utf8_lossy(&err).trim().to_string();
    let why = match (status, said.is_empty()) {
        (127, _) => format!("`{cmd}` not found there (exit 127)"),
        (_, false) if said.contains("'--root'") => format!(
            "the syncjob there is older than this one (its helper has no --root): update it ({said})"
        ),
        (_, false) => said,
        _ if got.is_ok() => format!(
            "`{cmd} helper` answered {:?}, not a syncjob helper of this version",
            String::from_utf8_lossy(&greeting)
        ),
        _ => format!("`{cmd} helper` exited with status {status}"),
    };
    Err(permanent(
        io::ErrorKind::NotFound,
        format!(
            "remote helper on {label}: {why} (set ssh.remote_helper to syncjob's path there, or remove it to use SFTP)"
        ),
    ))
}

/// Files at least this big that exist on the target go through the remote
/// helper as deltas.
const DELTA_MIN: u64 = 8 << 20;

/// The block size of a delta: 128 KiB, more for files over 8 GiB (at most
/// 65536 blocks).
fn delta_block(size: u64) -> u32 {
    (128u64 << 10)
        .max(size.div_ceil(65536).next_power_of_two())
        .min(64 << 20) as u32
}

/// Streamed records are written out past this size.
const FLUSH: usize = 256 << 10;

/// The SHA-256 of each `block` of the first `len` bytes of `f` (read at
/// offsets: the descriptor's position is left alone).
fn hash_source(f: &std::fs::File, len: u64, block: u32) -> io::Result<Vec<[u8; 32]>> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; block as usize];
    let mut sums = Vec::with_capacity(len.div_ceil(block as u64) as usize);
    let mut off = 0;
    while off < len {
        let n = (len - off).min(block as u64) as usize;
        f.read_exact_at(&mut buf[..n], off)?;
        sums.push(crate::helper::block_sum(&buf[..n]));
        off += n as u64;
    }
    Ok(sums)
}

/// The data of a delta: runs of equal blocks as copies, the others read
/// (at their offsets) and sent. Returns the bytes sent and the file's own
/// failure (a read error, a shutdown), if any; `Err`: the stream broke.
#[allow(clippy::too_many_arguments)]
fn send_delta(
    ch: &mut ssh2::Channel,
    out: &mut Vec<u8>,
    buf: &mut Vec<u8>,
    input: &std::fs::File,
    len: u64,
    theirs: &crate::helper::Hashes,
    mine: &[[u8; 32]],
    cancel: &AtomicBool,
) -> io::Result<(u64, Option<io::Error>)> {
    use crate::helper::{chunk, copy};
    use std::io::Write;
    use std::os::unix::fs::FileExt;
    let block = theirs.block as u64;
    if buf.len() < block as usize {
        buf.resize(block as usize, 0);
    }
    let mut pending: Option<(u64, u64)> = None;
    let mut literal = 0u64;
    let mut off = 0u64;
    for (i, sum) in mine.iter().enumerate() {
        if cancel.load(Ordering::Relaxed) {
            let e = io::Error::new(io::ErrorKind::Interrupted, "aborted by shutdown");
            return Ok((literal, Some(e)));
        }
        let n = (len - off).min(block);
        if theirs.sums.get(i) == Some(sum) {
            pending = match pending {
                Some((at, l)) if at + l == off && l < (1 << 30) => Some((at, l + n)),
                Some((at, l)) => {
                    copy(at, l as u32, out);
                    Some((off, n))
                }
                None => Some((off, n)),
            };
        } else {
            if let Some((at, l)) = pending.take() {
                copy(at, l as u32, out);
            }
            let data = &mut buf[..n as usize];
            if let Err(e) = input.read_exact_at(data, off) {
                return Ok((literal, Some(e)));
            }
            for c in data.chunks(crate::helper::MAX_CHUNK as usize) {
                chunk(c, out);
            }
            literal += n;
        }
        off += n;
        if out.len() >= FLUSH {
            ch.write_all(out)?;
            out.clear();
        }
        super::add_progress(n);
    }
    if let Some((at, l)) = pending.take() {
        copy(at, l as u32, out);
    }
    Ok((literal, None))
}

/// An error of the helper's stream: the connection is lost for copying.
fn helper_lost(e: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, format!("remote helper: {e}"))
}

fn check_host_key(sess: &ssh2::Session, host: &str, port: u16, job: &Job) -> io::Result<()> {
    let (key, ktype) = sess
        .host_key()
        .ok_or_else(|| io::Error::other("the server sent no host key"))?;
    let fp = sess
        .host_key_hash(ssh2::HashType::Sha256)
        .map(|h| format!("SHA256:{}", base64(h, false)))
        .unwrap_or_default();
    let kh_path = job
        .ssh
        .known_hosts
        .clone()
        .unwrap_or_else(|| home().join(".ssh/known_hosts"));
    let mut kh = sess.known_hosts().map_err(io::Error::from)?;
    if kh_path.exists() {
        kh.read_file(&kh_path, ssh2::KnownHostFileKind::OpenSSH)
            .map_err(|e| io::Error::other(format!("cannot read {}: {e}", kh_path.display())))?;
    }
    let name = if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    };
    let keyscan = if port == 22 {
        format!(
            "ssh-keyscan -t {} {host} >> {}",
            key_type_name(ktype),
            kh_path.display()
        )
    } else {
        format!(
            "ssh-keyscan -p {port} -t {} {host} >> {}",
            key_type_name(ktype),
            kh_path.display()
        )
    };
    match kh.check_port(host, port, key) {
        ssh2::CheckResult::Match => Ok(()),
        ssh2::CheckResult::Mismatch => Err(permanent(
            io::ErrorKind::PermissionDenied,
            format!(
                "HOST KEY CHANGED for {name}: the server now presents {} {fp}, which differs from {}; \
                 this may be an attack. If the change is expected, remove the old entry (ssh-keygen -R '{name}' -f {}) and add the new one: {keyscan}",
                key_type_name(ktype),
                kh_path.display(),
                kh_path.display()
            ),
        )),
        ssh2::CheckResult::NotFound
            if job.ssh.strict_host_key_checking == HostKeyPolicy::AcceptNew =>
        {
            if let Some(dir) = kh_path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let line = format!("{name} {} {}\n", key_type_name(ktype), base64(key, true));
            crate::journal::append_line(&kh_path, line.as_bytes())?;
            eprintln!(
                "syncjob: added the host key of {name} ({} {fp}) to {} (accept-new)",
                key_type_name(ktype),
                kh_path.display()
            );
            Ok(())
        }
        ssh2::CheckResult::NotFound | ssh2::CheckResult::Failure => Err(permanent(
            io::ErrorKind::PermissionDenied,
            format!(
                "host key of {name} is unknown ({} {fp}, not in {}); verify the fingerprint and add it with: {keyscan} \
                 (or set ssh.strict_host_key_checking: accept-new)",
                key_type_name(ktype),
                kh_path.display()
            ),
        )),
    }
}

fn authenticate(sess: &ssh2::Session, user: &str, host: &str, job: &Job) -> io::Result<()> {
    let o = &job.ssh;
    let secret = match &o.password_file {
        Some(p) => Some(read_secret(p)?),
        None => None,
    };
    let mut tried = Vec::new();
    let keys: Vec<PathBuf> = match &o.identity {
        Some(p) => vec![p.clone()],
        None => {
            if std::env::var_os("SSH_AUTH_SOCK").is_some() {
                tried.push("ssh-agent".to_string());
                if sess.userauth_agent(user).is_ok() && sess.authenticated() {
                    return Ok(());
                }
            }
            ["id_ed25519", "id_rsa"]
                .iter()
                .map(|n| home().join(".ssh").join(n))
                .filter(|p| p.exists())
                .collect()
        }
    };
    for k in keys {
        tried.push(k.display().to_string());
        if o.identity.is_some() && !k.exists() {
            return Err(permanent(
                io::ErrorKind::NotFound,
                format!("identity file {} does not exist", k.display()),
            ));
        }
        if sess
            .userauth_pubkey_file(user, None, &k, secret.as_deref())
            .is_ok()
            && sess.authenticated()
        {
            return Ok(());
        }
    }
    if let Some(pw) = &secret {
        tried.push("password".into());
        if sess.userauth_password(user, pw).is_ok() && sess.authenticated() {
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

/// Parse the NUL-separated output of the remote `find -printf`. Entries
/// whose names are unsafe (empty, `.`/`..` components, absolute) or whose
/// parent is not a listed directory (they would be reached through a
/// symlink) are rejected into `errors`.
pub fn parse_find(out: &[u8], errors: &mut Vec<PathError>) -> Tree {
    let mut tree = TreeBuilder::default();
    // directories accepted so far (an entry's parent must be one of them)
    let mut dirs: std::collections::HashSet<&[u8]> = std::collections::HashSet::new();
    let mut have_root = false;
    let mut fields = out.split(|b| *b == 0);
    let mut f: [&[u8]; 8] = [&[]; 8];
    'records: loop {
        for slot in f.iter_mut() {
            match fields.next() {
                Some(x) => *slot = x,
                None => break 'records,
            }
        }
        let (ty, size, mtime, mode, uid, gid, name, link) =
            (f[0], f[1], f[2], f[3], f[4], f[5], f[6], f[7]);
        let show = String::from_utf8_lossy(name).into_owned();
        let mut reject = |why: &str| {
            errors.push(PathError {
                path: show.clone(),
                message: format!("remote listing entry rejected: {why}"),
            })
        };
        let rel = Path::new(std::ffi::OsStr::from_bytes(name));
        let is_root = name.is_empty();
        if !is_root
            && (name.starts_with(b"/")
                || name
                    .split(|b| *b == b'/')
                    .any(|c| c.is_empty() || c == b"." || c == b".."))
        {
            reject("unsafe name");
            continue;
        }
        if is_root && have_root {
            reject("second root entry");
            continue;
        }
        if !is_root {
            let parent = match name.iter().rposition(|b| *b == b'/') {
                Some(k) => &name[..k],
                None => &b""[..],
            };
            if !dirs.contains(parent) {
                reject("its parent is not a listed directory");
                continue;
            }
        }
        let kind = match ty {
            b"f" => EntryKind::File,
            b"d" => EntryKind::Dir,
            b"l" => EntryKind::Symlink,
            b"p" | b"s" | b"c" | b"b" | b"D" => EntryKind::Special,
            _ => {
                reject("unknown type");
                continue;
            }
        };
        let num = |b: &[u8]| {
            std::str::from_utf8(b)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
        };
        let (secs, nanos) = {
            let s = std::str::from_utf8(mtime).unwrap_or("");
            let (a, b) = s.split_once('.').unwrap_or((s, "0"));
            let ns: String = b.chars().chain(std::iter::repeat('0')).take(9).collect();
            (a.parse::<i64>().ok(), ns.parse::<u32>().ok())
        };
        let mode = std::str::from_utf8(mode)
            .ok()
            .and_then(|m| u32::from_str_radix(m, 8).ok());
        let (Some(size), Some(secs), Some(nanos), Some(mode), Some(uid), Some(gid)) =
            (num(size), secs, nanos, mode, num(uid), num(gid))
        else {
            reject("malformed attributes");
            continue;
        };
        if is_root && kind != EntryKind::Dir {
            reject("the target root is not a directory");
            continue;
        }
        have_root = true;
        if kind == EntryKind::Dir {
            dirs.insert(name);
        } else {
            // a later entry of another type at a directory's path replaces it
            dirs.remove(name);
        }
        tree.push(
            rel,
            Entry {
                kind,
                size: if kind == EntryKind::File { size } else { 0 },
                mtime: secs,
                mtime_ns: nanos,
                mode: mode & 0o7777,
                uid: uid as u32,
                gid: gid as u32,
                link: (kind == EntryKind::Symlink)
                    .then(|| Box::new(PathBuf::from(std::ffi::OsStr::from_bytes(link)))),
            },
        );
    }
    tree.finish()
}

impl Transport for Ssh {
    fn put_files(
        &mut self,
        items: &[(&Path, PathBuf)],
        preserve_owner: bool,
        cancel: &AtomicBool,
    ) -> Vec<io::Result<u64>> {
        let r = if self.helper.is_some() {
            self.put_batch_helper(items, preserve_owner, cancel)
        } else {
            self.put_batch(items, preserve_owner, cancel)
        };
        match r {
            Ok(r) => r
                .into_iter()
                .zip(items)
                .map(|(r, (_, src))| r.map_err(|e| self.explain_failure(e, src)))
                .collect(),
            // the session itself failed: every file of the batch failed with it
            Err(e) => items
                .iter()
                .map(|_| Err(io::Error::new(e.kind(), e.to_string())))
                .collect(),
        }
    }

    fn apply(&mut self, actions: &[&Action]) -> Vec<io::Result<()>> {
        if matches!(actions.first(), Some(Action::Symlink { .. })) {
            return actions.iter().map(|a| super::apply_one(self, a)).collect();
        }
        let mut sent = Vec::with_capacity(actions.len());
        for a in actions {
            match self.send_action(a) {
                Ok(id) => sent.push(Ok(id)),
                Err(e) => {
                    let fatal = io::Error::new(e.kind(), e.to_string());
                    sent.push(Err(e));
                    // nothing more can be sent on a broken channel
                    while sent.len() < actions.len() {
                        sent.push(Err(io::Error::new(fatal.kind(), fatal.to_string())));
                    }
                    break;
                }
            }
        }
        let mut out = Vec::with_capacity(actions.len());
        for (a, s) in actions.iter().zip(sent) {
            let r = match s {
                Err(e) => Err(e),
                Ok(None) => Ok(()),
                Ok(Some(id)) => match self.sftp.wait(id) {
                    Err(e) => Err(e),
                    Ok(Reply::Status(0, _)) => Ok(()),
                    Ok(Reply::Status(4, _))
                        if matches!(
                            a,
                            Action::Delete {
                                kind: EntryKind::Dir,
                                ..
                            }
                        ) =>
                    {
                        Err(io::Error::new(
                            io::ErrorKind::DirectoryNotEmpty,
                            "directory not empty",
                        ))
                    }
                    Ok(other) => Err(other.into_err(match a {
                        Action::Delete { .. } => "remove",
                        Action::Mkdir { .. } => "mkdir",
                        _ => "set attributes",
                    })),
                },
            };
            out.push(r);
        }
        out
    }

    fn mtime_nanos(&self) -> bool {
        // SFTP v3 sets whole seconds
        false
    }

    fn symlink_times(&self) -> bool {
        self.sftp.lsetstat
    }

    fn list(&mut self, _filter: &Filter) -> io::Result<Listing> {
        let mut errors = Vec::new();
        match self.list_find()? {
            Some((3, _)) => Ok(Listing::default()),
            Some((code, out)) => {
                let tree = parse_find(&out, &mut errors);
                if code != 0 {
                    errors.push(PathError {
                        path: String::new(),
                        message: format!(
                            "remote find on {} reported unreadable entries (exit {code})",
                            self.label
                        ),
                    });
                }
                Ok(Listing {
                    tree: Some(tree),
                    stream: None,
                    errors,
                })
            }
            None => Ok(Listing {
                tree: self.list_sftp()?,
                stream: None,
                errors,
            }),
        }
    }

    fn ensure_root(&mut self) -> io::Result<()> {
        let mut cmd = b"mkdir -p -- ".to_vec();
        cmd.extend_from_slice(&shell_quote(&self.root));
        let (code, _, err) = self.exec(&cmd, false)?;
        if code != 0 {
            return Err(io::Error::other(format!(
                "mkdir -p on {}: {}",
                self.label,
                String::from_utf8_lossy(&err).trim()
            )));
        }
        Ok(())
    }

    fn same_content(&mut self, rel: &Path, src: &Path) -> io::Result<bool> {
        let (mut f, _) = open_source(src)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let local: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        let mut cmd = b"sha256sum < ".to_vec();
        cmd.extend_from_slice(&shell_quote(&self.path(rel)));
        let (code, out, err) = self.exec(&cmd, false)?;
        if code != 0 {
            return Err(io::Error::other(format!(
                "sha256sum on {}: {}",
                self.label,
                String::from_utf8_lossy(&err).trim()
            )));
        }
        Ok(out.starts_with(local.as_bytes()))
    }

    fn mkdir(&mut self, rel: &Path) -> io::Result<()> {
        let p = self.path(rel);
        let id = self.sftp.mkdir(
            &p,
            &Attrs {
                perm: Some(0o700),
                ..Default::default()
            },
        )?;
        self.wait_ok(id, "mkdir")
    }

    fn put_file(
        &mut self,
        rel: &Path,
        src: &Path,
        preserve_owner: bool,
        cancel: &AtomicBool,
    ) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        let (mut input, before) = open_source(src)?;
        let tmp = self.path(&temp_name(rel));
        let fin = self.path(rel);
        let id = self.sftp.open(
            &tmp,
            FXF_WRITE | FXF_CREAT | FXF_EXCL,
            &Attrs {
                perm: Some(0o600),
                ..Default::default()
            },
        )?;
        let handle = self.sftp.handle(id, "create temporary file")?;
        let result = (|| {
            let mut ids = Vec::new();
            let mut off = 0u64;
            let mut buf = vec![0u8; sftp::WRITE_CHUNK];
            loop {
                if cancel.load(Ordering::Relaxed) {
                    return Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "aborted by shutdown",
                    ));
                }
                let n = input.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                ids.push(self.sftp.write(&handle, off, &buf[..n])?);
                off += n as u64;
                super::add_progress(n as u64);
            }
            let mut first_err = None;
            for id in ids {
                if let Err(e) = self.sftp.wait(id)?.ok("write") {
                    first_err.get_or_insert(e);
                }
            }
            if let Some(e) = first_err {
                return Err(e);
            }
            verify_unchanged(&input, &before, off)?;
            let attrs = Attrs {
                perm: Some(before.mode() & 0o7777),
                times: Some((secs32(before.atime()), secs32(before.mtime()))),
                uid_gid: preserve_owner.then_some((before.uid(), before.gid())),
                size: None,
            };
            let a = self.sftp.fsetstat(&handle, &attrs)?;
            let c = self.sftp.close(&handle)?;
            let ra = self.sftp.wait(a)?;
            let rc = self.sftp.wait(c)?;
            ra.ok("set mode and mtime")?;
            rc.ok("close")?;
            self.rename_over(&tmp, &fin)?;
            Ok(off)
        })();
        if result.is_err() {
            // best effort: the handle may still be open
            if let Ok(c) = self.sftp.close(&handle) {
                let _ = self.sftp.wait(c);
            }
            if let Ok(r) = self.sftp.remove(&tmp) {
                let _ = self.sftp.wait(r);
            }
        }
        result.map_err(|e| self.explain_failure(e, src))
    }

    fn symlink(&mut self, rel: &Path, target: &Path, mtime: Option<(i64, u32)>) -> io::Result<()> {
        let tmp = self.path(&temp_name(rel));
        let fin = self.path(rel);
        let id = self.sftp.symlink(&tmp, target.as_os_str().as_bytes())?;
        self.wait_ok(id, "symlink")?;
        if let Some((s, _)) = mtime
            && self.sftp.lsetstat
        {
            let id = self.sftp.lsetstat(
                &tmp,
                &Attrs {
                    times: Some((secs32(s), secs32(s))),
                    ..Default::default()
                },
            )?;
            let _ = self.sftp.wait(id)?;
        }
        self.rename_over(&tmp, &fin).inspect_err(|_| {
            if let Ok(r) = self.sftp.remove(&tmp) {
                let _ = self.sftp.wait(r);
            }
        })
    }

    fn set_attrs(
        &mut self,
        rel: &Path,
        kind: EntryKind,
        mode: Option<u32>,
        mtime: Option<(i64, u32)>,
        owner: Option<(u32, u32)>,
    ) -> io::Result<()> {
        let p = self.path(rel);
        let attrs = Attrs {
            perm: if kind == EntryKind::Symlink {
                None
            } else {
                mode
            },
            times: mtime.map(|(s, _)| (secs32(s), secs32(s))),
            uid_gid: owner,
            size: None,
        };
        let id = if kind == EntryKind::Symlink {
            if !self.sftp.lsetstat {
                return Ok(());
            }
            self.sftp.lsetstat(&p, &attrs)?
        } else {
            self.sftp.setstat(&p, &attrs)?
        };
        self.wait_ok(id, "set attributes")
    }

    fn remove(&mut self, rel: &Path, kind: EntryKind) -> io::Result<()> {
        let p = self.path(rel);
        if kind == EntryKind::Dir {
            let id = self.sftp.rmdir(&p)?;
            match self.sftp.wait(id)? {
                Reply::Status(0, _) => Ok(()),
                // OpenSSH answers a non-empty directory with a plain failure
                Reply::Status(4, _) => Err(io::Error::new(
                    io::ErrorKind::DirectoryNotEmpty,
                    "directory not empty",
                )),
                other => Err(other.into_err("rmdir")),
            }
        } else {
            let id = self.sftp.remove(&p)?;
            self.wait_ok(id, "remove")
        }
    }
}

/// One file of a pipelined batch.
struct Put {
    tmp: Vec<u8>,
    fin: Vec<u8>,
    input: Option<(std::fs::File, std::fs::Metadata)>,
    handle: Option<Vec<u8>>,
    result: Option<io::Result<u64>>,
}

impl Ssh {
    /// Pipelined upload of several files: all OPENs, then all WRITEs, then
    /// all FSETSTAT+CLOSE, then all renames, each phase sent before its
    /// replies are read, so a batch costs a few round trips, not a few per file.
    fn put_batch(
        &mut self,
        items: &[(&Path, PathBuf)],
        preserve_owner: bool,
        cancel: &AtomicBool,
    ) -> io::Result<Vec<io::Result<u64>>> {
        use std::os::unix::fs::MetadataExt;
        let mut puts: Vec<Put> = Vec::with_capacity(items.len());
        let mut open_ids = Vec::new();
        for (rel, src) in items {
            let mut p = Put {
                tmp: self.path(&temp_name(rel)),
                fin: self.path(rel),
                input: None,
                handle: None,
                result: None,
            };
            match open_source(src) {
                Ok(x) => {
                    p.input = Some(x);
                    let id = self.sftp.open(
                        &p.tmp,
                        FXF_WRITE | FXF_CREAT | FXF_EXCL,
                        &Attrs {
                            perm: Some(0o600),
                            ..Default::default()
                        },
                    )?;
                    open_ids.push((puts.len(), id));
                }
                Err(e) => p.result = Some(Err(e)),
            }
            puts.push(p);
        }
        for (k, id) in open_ids {
            match self.sftp.wait(id)? {
                Reply::Handle(h) => puts[k].handle = Some(h),
                other => puts[k].result = Some(Err(other.into_err("create temporary file"))),
            }
        }
        // writes, file after file, many requests in flight
        let mut buf = vec![0u8; sftp::WRITE_CHUNK];
        let mut write_ids: Vec<(usize, u32)> = Vec::new();
        let mut sizes = vec![0u64; puts.len()];
        for (k, p) in puts.iter_mut().enumerate() {
            let (Some(h), Some((input, _))) = (&p.handle, &mut p.input) else {
                continue;
            };
            loop {
                if cancel.load(Ordering::Relaxed) {
                    p.result = Some(Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "aborted by shutdown",
                    )));
                    break;
                }
                let n = match input.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        p.result = Some(Err(e));
                        break;
                    }
                };
                if n == 0 {
                    break;
                }
                write_ids.push((k, self.sftp.write(h, sizes[k], &buf[..n])?));
                sizes[k] += n as u64;
                super::add_progress(n as u64);
            }
        }
        for (k, id) in write_ids {
            if let Err(e) = self.sftp.wait(id)?.ok("write")
                && puts[k].result.is_none()
            {
                puts[k].result = Some(Err(e));
            }
        }
        // attributes and close (failed files: close only)
        let mut tail_ids: Vec<(usize, Option<u32>, u32)> = Vec::new();
        for (k, p) in puts.iter_mut().enumerate() {
            let Some(h) = p.handle.take() else { continue };
            let (input, before) = p.input.as_ref().unwrap();
            if p.result.is_none()
                && let Err(e) = verify_unchanged(input, before, sizes[k])
            {
                p.result = Some(Err(e));
            }
            let set = if p.result.is_none() {
                let attrs = Attrs {
                    perm: Some(before.mode() & 0o7777),
                    times: Some((secs32(before.atime()), secs32(before.mtime()))),
                    uid_gid: preserve_owner.then_some((before.uid(), before.gid())),
                    size: None,
                };
                Some(self.sftp.fsetstat(&h, &attrs)?)
            } else {
                None
            };
            let close = self.sftp.close(&h)?;
            tail_ids.push((k, set, close));
        }
        for (k, set, close) in tail_ids {
            if let Some(set) = set
                && let Err(e) = self.sftp.wait(set)?.ok("set mode and mtime")
            {
                puts[k].result.get_or_insert(Err(e));
            }
            if let Err(e) = self.sftp.wait(close)?.ok("close") {
                puts[k].result.get_or_insert(Err(e));
            }
        }
        // rename the complete files into place; remove the temporaries of the others
        let mut last_ids: Vec<(usize, u32, bool)> = Vec::new();
        for (k, p) in puts.iter().enumerate() {
            if p.input.is_none() {
                continue;
            }
            if p.result.is_none() {
                let id = if self.sftp.posix_rename {
                    self.sftp.posix_rename(&p.tmp, &p.fin)?
                } else {
                    let r = self.sftp.remove(&p.fin)?;
                    let _ = self.sftp.wait(r)?;
                    self.sftp.send_rename(&p.tmp, &p.fin)?
                };
                last_ids.push((k, id, true));
            } else {
                last_ids.push((k, self.sftp.remove(&p.tmp)?, false));
            }
        }
        let mut cleanup = Vec::new();
        for (k, id, is_rename) in last_ids {
            let r = self.sftp.wait(id)?;
            if is_rename {
                match r.ok("rename into place") {
                    Ok(()) => puts[k].result = Some(Ok(sizes[k])),
                    Err(e) => {
                        puts[k].result = Some(Err(e));
                        cleanup.push(self.sftp.remove(&puts[k].tmp)?);
                    }
                }
            }
        }
        for id in cleanup {
            let _ = self.sftp.wait(id)?;
        }
        Ok(puts
            .into_iter()
            .map(|p| {
                p.result
                    .unwrap_or_else(|| Err(io::Error::other("not attempted")))
            })
            .collect())
    }

    /// Copy files through the remote helper: all records of the batch go
    /// out as one stream, then the replies are read (one per file sent).
    /// A big file that exists on the target goes as a delta: the helper
    /// first gives the SHA-256 of each block of its version there, and only
    /// the blocks that differ are sent (the others are copied there).
    fn put_batch_helper(
        &mut self,
        items: &[(&Path, PathBuf)],
        preserve_owner: bool,
        cancel: &AtomicBool,
    ) -> io::Result<Vec<io::Result<u64>>> {
        use crate::helper::{
            FileHeader, Hashes, chunk, end, hashes_request, header, read_hashes, read_reply,
        };
        use std::io::Write;
        use std::os::unix::fs::MetadataExt;
        let mut results: Vec<Option<io::Result<u64>>> = items.iter().map(|_| None).collect();
        let mut sent: Vec<(usize, u64)> = Vec::with_capacity(items.len());
        let mut out: Vec<u8> = Vec::with_capacity(FLUSH + (64 << 10));
        // relative to the root the helper was started with
        let paths: Vec<(Vec<u8>, Vec<u8>)> = items
            .iter()
            .map(|(rel, _)| {
                let b = |p: &Path| p.as_os_str().as_bytes().to_vec();
                (b(&temp_name(rel)), b(rel))
            })
            .collect();
        let ch = self.helper.as_mut().expect("helper started");

        // big sources opened first (the others as their turn comes): their
        // state then (`before`) is what the copy is checked against at the
        // end, whatever is read in between
        let mut opened: Vec<Option<(std::fs::File, std::fs::Metadata)>> = Vec::new();
        for (k, (_, src)) in items.iter().enumerate() {
            let big = std::fs::metadata(src).is_ok_and(|m| m.len() >= DELTA_MIN);
            opened.push(None);
            if big {
                match open_source(src) {
                    Ok(x) => opened[k] = Some(x),
                    Err(e) => results[k] = Some(Err(e)),
                }
            }
        }
        // big files: the block hashes of their versions on the target,
        // while the source's blocks are hashed here
        let mut hashes: Vec<Option<(Hashes, Vec<[u8; 32]>)>> = items.iter().map(|_| None).collect();
        let mut asked = Vec::new();
        for (k, o) in opened.iter().enumerate() {
            if let Some((_, md)) = o
                && md.len() >= DELTA_MIN
            {
                let block = delta_block(md.len());
                hashes_request(&paths[k].1, block, &mut out);
                asked.push((k, block));
            }
        }
        if !asked.is_empty() {
            ch.write_all(&out).map_err(helper_lost)?;
            out.clear();
            let remote = std::thread::scope(|sc| {
                let local: Vec<_> = asked
                    .iter()
                    .map(|&(k, block)| {
                        let (f, md) = opened[k].as_ref().unwrap();
                        sc.spawn(move || hash_source(f, md.len(), block))
                    })
                    .collect();
                let mut remote = Vec::new();
                for &(_, block) in &asked {
                    remote.push(read_hashes(ch, block));
                }
                (
                    remote,
                    local.into_iter().map(|t| t.join()).collect::<Vec<_>>(),
                )
            });
            let (remote, local) = remote;
            for ((&(k, _), r), l) in asked.iter().zip(remote).zip(local) {
                // no hashes there (a new file, …) or here: sent whole
                if let (Ok(h), Ok(Ok(mine))) = (r.map_err(helper_lost)?, l) {
                    hashes[k] = Some((h, mine));
                }
            }
        }

        let mut buf = vec![0u8; 128 << 10];
        for (k, (o, (_, src))) in opened.into_iter().zip(items).enumerate() {
            if results[k].is_some() {
                continue;
            }
            let (mut input, before) = match o.map_or_else(|| open_source(src), Ok) {
                Ok(x) => x,
                Err(e) => {
                    results[k] = Some(Err(e));
                    continue;
                }
            };
            let basis = hashes[k].take();
            header(
                &FileHeader {
                    basis: basis.is_some(),
                    tmp: &paths[k].0,
                    fin: &paths[k].1,
                    mode: before.mode() & 0o7777,
                    mtime: before.mtime(),
                    mtime_ns: before.mtime_nsec() as u32,
                    owner: preserve_owner.then(|| (before.uid(), before.gid())),
                },
                &mut out,
            );
            if let Some((theirs, mine)) = basis {
                // a delta: blocks that differ are read and sent, the others
                // copied there from the old version
                let r = send_delta(
                    ch,
                    &mut out,
                    &mut buf,
                    &input,
                    before.len(),
                    &theirs,
                    &mine,
                    cancel,
                );
                let (literal, mut fail) = match r {
                    Ok(x) => x,
                    Err(e) => return Err(helper_lost(e)),
                };
                if fail.is_none()
                    && let Err(e) = verify_unchanged(&input, &before, before.len())
                {
                    fail = Some(e);
                }
                end(fail.is_none(), &mut out);
                if let Some(e) = fail {
                    results[k] = Some(Err(e));
                }
                sent.push((k, literal));
                continue;
            }
            let mut size = 0u64;
            let mut fail = None;
            loop {
                if cancel.load(Ordering::Relaxed) {
                    fail = Some(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "aborted by shutdown",
                    ));
                    break;
                }
                let n = match input.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        fail = Some(e);
                        break;
                    }
                };
                for c in buf[..n].chunks(crate::helper::MAX_CHUNK as usize) {
                    chunk(c, &mut out);
                }
                size += n as u64;
                if out.len() >= FLUSH {
                    ch.write_all(&out).map_err(helper_lost)?;
                    out.clear();
                }
                super::add_progress(n as u64);
            }
            if fail.is_none()
                && let Err(e) = verify_unchanged(&input, &before, size)
            {
                fail = Some(e);
            }
            // an aborted file is removed by the helper; our reason stands
            end(fail.is_none(), &mut out);
            if let Some(e) = fail {
                results[k] = Some(Err(e));
            }
            sent.push((k, size));
        }
        // (no `flush`: libssh2's channel flush discards unread incoming
        // data, i.e. replies that already came)
        ch.write_all(&out).map_err(helper_lost)?;
        for (k, literal) in sent {
            let r = read_reply(ch).map_err(helper_lost)?;
            if results[k].is_none() {
                results[k] = Some(r.map(|()| literal));
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(io::Error::other("not attempted"))))
            .collect())
    }

    /// Send the request for one non-copy action; the id of its reply.
    fn send_action(&mut self, a: &Action) -> io::Result<Option<u32>> {
        let p = self.path(a.path());
        Ok(Some(match a {
            Action::Delete {
                kind: EntryKind::Dir,
                ..
            } => self.sftp.rmdir(&p)?,
            Action::Delete { .. } => self.sftp.remove(&p)?,
            Action::Mkdir { .. } => self.sftp.mkdir(
                &p,
                &Attrs {
                    perm: Some(0o700),
                    ..Default::default()
                },
            )?,
            Action::SetAttrs {
                kind,
                mode,
                mtime,
                owner,
                ..
            } => {
                let attrs = Attrs {
                    perm: if *kind == EntryKind::Symlink {
                        None
                    } else {
                        *mode
                    },
                    times: mtime.map(|(s, _)| (secs32(s), secs32(s))),
                    uid_gid: *owner,
                    size: None,
                };
                if *kind == EntryKind::Symlink {
                    if !self.sftp.lsetstat {
                        return Ok(None);
                    }
                    self.sftp.lsetstat(&p, &attrs)?
                } else {
                    self.sftp.setstat(&p, &attrs)?
                }
            }
            Action::Symlink { .. } | Action::Copy { .. } => {
                return Err(io::Error::other("not pipelined"));
            }
        }))
    }

    /// Rename `tmp` over `fin` atomically (posix-rename); without that
    /// extension, remove then rename (a short window without the file).
    fn rename_over(&mut self, tmp: &[u8], fin: &[u8]) -> io::Result<()> {
        if self.sftp.posix_rename {
            let id = self.sftp.posix_rename(tmp, fin)?;
            return self.wait_ok(id, "rename into place");
        }
        let r = self.sftp.remove(fin)?;
        let _ = self.sftp.wait(r)?;
        let id = self.sftp.send_rename(tmp, fin)?;
        self.wait_ok(id, "rename into place")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(ty: &str, name: &[u8], link: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for f in [
            ty.as_bytes(),
            b"12",
            b"1600000000.5000000000",
            b"644",
            b"0",
            b"0",
            name,
            link,
        ] {
            v.extend_from_slice(f);
            v.push(0);
        }
        v
    }

    #[test]
    fn parses_find_output_with_any_bytes_in_names() {
        let mut out = rec("d", b"", b"");
        out.extend(rec("d", b"dir", b""));
        out.extend(rec("f", b"dir/new\nline", b""));
        out.extend(rec("l", b"link", b"../x"));
        out.extend(rec("f", b"\xff\xfe bytes", b""));
        let mut errors = vec![];
        let t = parse_find(&out, &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(t.len(), 5);
        let f = &t[Path::new("dir/new\nline")];
        assert_eq!(
            (f.kind, f.size, f.mtime, f.mtime_ns, f.mode),
            (EntryKind::File, 12, 1_600_000_000, 500_000_000, 0o644)
        );
        assert_eq!(
            t[Path::new("link")].link.as_deref().map(PathBuf::as_path),
            Some(Path::new("../x"))
        );
    }

    #[test]
    fn rejects_entries_escaping_the_root() {
        let mut out = rec("d", b"", b"");
        out.extend(rec("l", b"evil", b"/etc"));
        for bad in [
            &b"../x"[..],
            b"/etc/passwd",
            b"a/../../x",
            b"evil/passwd",
            b"nodir/x",
            b"a//b",
            b".",
        ] {
            out.extend(rec("f", bad, b""));
        }
        let mut errors = vec![];
        let t = parse_find(&out, &mut errors);
        assert_eq!(t.len(), 2, "{t:?}");
        assert_eq!(errors.len(), 7, "{errors:?}");
    }

    #[test]
    fn truncated_or_garbage_listing_does_not_panic() {
        let mut errors = vec![];
        let t = parse_find(b"d\0\0\0\0\0\0\0\0f\0x", &mut errors);
        assert!(t.is_empty());
        let t = parse_find(&rec("f", b"", b""), &mut errors);
        assert!(t.is_empty(), "a root that is not a directory is rejected");
    }

    #[test]
    fn base64_and_quoting() {
        assert_eq!(base64(b"foobar", true), "Zm9vYmFy");
        assert_eq!(base64(b"fooba", true), "Zm9vYmE=");
        assert_eq!(base64(b"foob", false), "Zm9vYg");
        assert_eq!(shell_quote(b"it's"), b"'it'\\''s'");
    }
}
