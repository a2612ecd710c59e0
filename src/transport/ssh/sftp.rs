//! A small SFTP (version 3) client over an ssh2 channel or an `ssh -s sftp`
//! child's pipes.
//!
//! Written here rather than using `ssh2::Sftp` for two reasons: requests can
//! be pipelined (many WRITEs in flight, and the close/setstat/rename of a
//! file sent together), and OpenSSH's `posix-rename@openssh.com` and
//! `lsetstat@openssh.com` extensions are reachable: the first is what makes
//! replacing a file atomic (plain SFTP RENAME refuses an existing target).

use std::collections::VecDeque;
use std::io::{self, Read, Write};

const INIT: u8 = 1;
const VERSION: u8 = 2;
const OPEN: u8 = 3;
const LSTAT: u8 = 7;
const CLOSE: u8 = 4;
const WRITE: u8 = 6;
const SETSTAT: u8 = 9;
const FSETSTAT: u8 = 10;
const OPENDIR: u8 = 11;
const READDIR: u8 = 12;
const REMOVE: u8 = 13;
const MKDIR: u8 = 14;
const RMDIR: u8 = 15;
const RENAME: u8 = 18;
const READLINK: u8 = 19;
const SYMLINK: u8 = 20;
const EXTENDED: u8 = 200;
const EXTENDED_REPLY: u8 = 201;
const STATUS: u8 = 101;
const HANDLE: u8 = 102;
const ATTRS: u8 = 105;
const NAME: u8 = 104;

pub const FXF_WRITE: u32 = 0x02;
pub const FXF_CREAT: u32 = 0x08;
pub const FXF_TRUNC: u32 = 0x10;
pub const FXF_EXCL: u32 = 0x20;

const ATTR_SIZE: u32 = 0x1;
const ATTR_UIDGID: u32 = 0x2;
const ATTR_PERM: u32 = 0x4;
const ATTR_TIME: u32 = 0x8;
const ATTR_EXTENDED: u32 = 0x8000_0000;

const FX_OK: u32 = 0;
const FX_EOF: u32 = 1;
pub const FX_NO_SUCH_FILE: u32 = 2;
const FX_PERMISSION_DENIED: u32 = 3;
const FX_FAILURE: u32 = 4;

/// Largest data per WRITE (OpenSSH accepts up to 256 KiB packets).
pub const WRITE_CHUNK: usize = 64 * 1024;
/// Requests in flight before we wait for replies (a sliding window: the
/// oldest reply is read before one more is sent). Small files cost 4-5
/// requests each, so 256 keeps 50+ files moving per round trip; replies
/// kept out of order stay bounded by this too.
const MAX_IN_FLIGHT: usize = 256;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attrs {
    pub size: Option<u64>,
    pub uid_gid: Option<(u32, u32)>,
    pub perm: Option<u32>,
    /// (atime, mtime) in seconds
    pub times: Option<(u32, u32)>,
}

impl Attrs {
    fn encode(&self, b: &mut Vec<u8>) {
        let mut flags = 0;
        if self.size.is_some() {
            flags |= ATTR_SIZE;
        }
        if self.uid_gid.is_some() {
            flags |= ATTR_UIDGID;
        }
        if self.perm.is_some() {
            flags |= ATTR_PERM;
        }
        if self.times.is_some() {
            flags |= ATTR_TIME;
        }
        put_u32(b, flags);
        if let Some(s) = self.size {
            b.extend_from_slice(&s.to_be_bytes());
        }
        if let Some((u, g)) = self.uid_gid {
            put_u32(b, u);
            put_u32(b, g);
        }
        if let Some(p) = self.perm {
            put_u32(b, p);
        }
        if let Some((a, m)) = self.times {
            put_u32(b, a);
            put_u32(b, m);
        }
    }

    fn decode(r: &mut Reader) -> io::Result<Attrs> {
        let flags = r.u32()?;
        let mut a = Attrs::default();
        if flags & ATTR_SIZE != 0 {
            a.size = Some(r.u64()?);
        }
        if flags & ATTR_UIDGID != 0 {
            a.uid_gid = Some((r.u32()?, r.u32()?));
        }
        if flags & ATTR_PERM != 0 {
            a.perm = Some(r.u32()?);
        }
        if flags & ATTR_TIME != 0 {
            a.times = Some((r.u32()?, r.u32()?));
        }
        if flags & ATTR_EXTENDED != 0 {
            let n = r.u32()?;
            for _ in 0..n {
                r.string()?;
                r.string()?;
            }
        }
        Ok(a)
    }
}

/// The seconds of an mtime as SFTP v3 carries them (u32, clamped).
pub fn secs32(t: i64) -> u32 {
    t.clamp(0, u32::MAX as i64) as u32
}

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_be_bytes());
}

fn put_str(b: &mut Vec<u8>, s: &[u8]) {
    put_u32(b, s.len() as u32);
    b.extend_from_slice(s);
}

pub struct Reader<'a> {
    b: &'a [u8],
}

fn short() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed SFTP packet")
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Self {
        Reader { b }
    }
    fn u32(&mut self) -> io::Result<u32> {
        if self.b.len() < 4 {
            return Err(short());
        }
        let v = u32::from_be_bytes(self.b[..4].try_into().unwrap());
        self.b = &self.b[4..];
        Ok(v)
    }
    fn u64(&mut self) -> io::Result<u64> {
        if self.b.len() < 8 {
            return Err(short());
        }
        let v = u64::from_be_bytes(self.b[..8].try_into().unwrap());
        self.b = &self.b[8..];
        Ok(v)
    }
    fn string(&mut self) -> io::Result<&'a [u8]> {
        let n = self.u32()? as usize;
        if self.b.len() < n {
            return Err(short());
        }
        let (s, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(s)
    }
}

/// A reply to one request.
#[derive(Debug)]
pub enum Reply {
    Status(u32, String),
    Handle(Vec<u8>),
    Name(Vec<(Vec<u8>, Attrs)>),
    /// SSH_FXP_ATTRS (the answer to LSTAT)
    Attrs(Attrs),
    /// SSH_FXP_EXTENDED_REPLY: the payload after the id
    Extended(Vec<u8>),
    Other(u8),
}

impl Reply {
    /// OK, or the status as an error about `what`.
    pub fn ok(self, what: &str) -> io::Result<()> {
        match self {
            Reply::Status(FX_OK, _) => Ok(()),
            other => Err(other.into_err(what)),
        }
    }

    pub fn into_err(self, what: &str) -> io::Error {
        match self {
            Reply::Status(code, msg) => {
                let kind = match code {
                    FX_NO_SUCH_FILE => io::ErrorKind::NotFound,
                    FX_PERMISSION_DENIED => io::ErrorKind::PermissionDenied,
                    _ => io::ErrorKind::Other,
                };
                let msg = if msg.is_empty() {
                    match code {
                        FX_FAILURE => "failure".to_string(),
                        c => format!("SFTP status {c}"),
                    }
                } else {
                    msg
                };
                io::Error::new(kind, format!("{what}: {msg}"))
            }
            other => io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{what}: unexpected SFTP reply {other:?}"),
            ),
        }
    }
}

use crate::violation::violation;

pub struct Sftp {
    chan: Box<dyn super::openssh::Pipe>,
    next_id: u32,
    /// ids sent and not yet answered, oldest first
    pending: VecDeque<u32>,
    /// replies read while waiting for another id
    early: std::collections::HashMap<u32, Reply>,
    pub posix_rename: bool,
    pub lsetstat: bool,
    /// target directories checked (LSTAT) or made on this connection
    pub verified: super::sftp_guard::Verified,
    pub fsync: bool,
    pub statvfs: bool,
    /// the most handles the server keeps open at once, where it says
    /// (`limits@openssh.com`); `None`: not said
    pub max_handles: Option<u64>,
    /// requests not yet written to the channel: small requests go out
    /// together in one SSH packet
    out: Vec<u8>,
    /// bytes read from the channel and not yet parsed
    inbuf: Vec<u8>,
    inpos: usize,
    /// what each read of the channel lands in (zeroed once, not per read)
    scratch: Box<[u8]>,
}

/// Flush queued requests once this much is waiting (about one SSH packet).
const OUT_FLUSH: usize = 32 * 1024;

/// Any failure of the channel itself is fatal for the session.
fn chan_err(e: io::Error) -> io::Error {
    if e.kind() == io::ErrorKind::TimedOut {
        return e;
    }
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        format!("ssh channel: {e}"),
    )
}

impl Sftp {
    /// Speak SFTP over `chan`, the `sftp` subsystem already started.
    pub fn start(chan: Box<dyn super::openssh::Pipe>) -> io::Result<Sftp> {
        let mut s = Sftp {
            chan,
            next_id: 1,
            pending: VecDeque::new(),
            early: Default::default(),
            posix_rename: false,
            lsetstat: false,
            verified: Default::default(),
            fsync: false,
            statvfs: false,
            max_handles: None,
            out: Vec::with_capacity(2 * OUT_FLUSH + WRITE_CHUNK),
            inbuf: Vec::with_capacity(64 * 1024),
            scratch: vec![0u8; 32 * 1024].into_boxed_slice(),
            inpos: 0,
        };
        let mut p = Vec::new();
        put_u32(&mut p, 3);
        s.send_packet(INIT, &p)?;
        let (t, body) = s.read_packet()?;
        if t != VERSION {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the server did not answer SFTP INIT",
            ));
        }
        let mut r = Reader::new(&body);
        let _version = r.u32()?;
        let mut limits = false;
        while !r.b.is_empty() {
            let name = r.string()?;
            let _data = r.string()?;
            match name {
                b"posix-rename@openssh.com" => s.posix_rename = true,
                b"lsetstat@openssh.com" => s.lsetstat = true,
                b"fsync@openssh.com" => s.fsync = true,
                b"statvfs@openssh.com" => s.statvfs = true,
                b"limits@openssh.com" => limits = true,
                _ => {}
            }
        }
        if limits {
            s.max_handles = s.max_open_handles()?;
        }
        Ok(s)
    }

    /// `limits@openssh.com`: the most handles open at once (0: not said).
    fn max_open_handles(&mut self) -> io::Result<Option<u64>> {
        let Reply::Extended(body) = self.call(EXTENDED, |b| put_str(b, b"limits@openssh.com"))?
        else {
            return Ok(None);
        };
        // max-packet-length, max-read-length, max-write-length, max-open-handles
        let mut r = Reader::new(&body);
        for _ in 0..3 {
            r.u64()?;
        }
        Ok(Some(r.u64()?).filter(|n| *n > 0))
    }

    fn send_packet(&mut self, t: u8, payload: &[u8]) -> io::Result<()> {
        put_u32(&mut self.out, payload.len() as u32 + 1);
        self.out.push(t);
        self.out.extend_from_slice(payload);
        self.flush()
    }

    /// Write every queued request to the channel.
    pub fn flush(&mut self) -> io::Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        let r = self.chan.write_all(&self.out).map_err(chan_err);
        self.out.clear();
        r
    }

    /// Make `n` unparsed bytes available in `inbuf[inpos..]`.
    fn fill(&mut self, n: usize) -> io::Result<()> {
        if self.inbuf.len() - self.inpos >= n {
            return Ok(());
        }
        self.flush()?;
        self.inbuf.drain(..self.inpos);
        self.inpos = 0;
        while self.inbuf.len() < n {
            let chunk = &mut self.scratch;
            let k = self.chan.read(chunk).map_err(chan_err)?;
            if k == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "ssh channel: the SFTP server closed the channel",
                ));
            }
            self.inbuf.extend_from_slice(&chunk[..k]);
        }
        Ok(())
    }

    fn read_packet(&mut self) -> io::Result<(u8, Vec<u8>)> {
        self.fill(4)?;
        let len =
            u32::from_be_bytes(self.inbuf[self.inpos..self.inpos + 4].try_into().unwrap()) as usize;
        if len == 0 || len > 4 << 20 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad SFTP packet length {len}"),
            ));
        }
        self.fill(4 + len)?;
        let start = self.inpos + 4;
        let t = self.inbuf[start];
        let body = self.inbuf[start + 1..start + len].to_vec();
        self.inpos = start + len;
        Ok((t, body))
    }

    fn read_reply(&mut self) -> io::Result<(u32, Reply)> {
        let (t, body) = self.read_packet()?;
        let mut r = Reader::new(&body);
        let id = r.u32()?;
        let reply = match t {
            STATUS => {
                let code = r.u32()?;
                let msg = r
                    .string()
                    .map(|m| String::from_utf8_lossy(m).into_owned())
                    .unwrap_or_default();
                Reply::Status(code, msg)
            }
            HANDLE => Reply::Handle(r.string()?.to_vec()),
            ATTRS => Reply::Attrs(Attrs::decode(&mut r)?),
            NAME => {
                let n = r.u32()?;
                let mut v = Vec::with_capacity(n.min(4096) as usize);
                for _ in 0..n {
                    let name = r.string()?.to_vec();
                    let _long = r.string()?;
                    let a = Attrs::decode(&mut r)?;
                    v.push((name, a));
                }
                Reply::Name(v)
            }
            EXTENDED_REPLY => Reply::Extended(r.b.to_vec()),
            other => Reply::Other(other),
        };
        Ok((id, reply))
    }

    /// Send a request; returns its id. Waits for the oldest reply first when
    /// too many are in flight (that reply is kept for `wait`).
    pub fn send(&mut self, t: u8, build: impl FnOnce(&mut Vec<u8>)) -> io::Result<u32> {
        if self.pending.len() >= MAX_IN_FLIGHT {
            let (id, reply) = self.read_answer()?;
            self.early.insert(id, reply);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        // length, type, id, then the request; the length is filled in last
        let at = self.out.len();
        self.out.extend_from_slice(&[0, 0, 0, 0, t]);
        put_u32(&mut self.out, id);
        build(&mut self.out);
        let len = (self.out.len() - at - 4) as u32;
        self.out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        if self.out.len() >= OUT_FLUSH {
            self.flush()?;
        }
        self.pending.push_back(id);
        Ok(id)
    }

    /// The reply to request `id`.
    pub fn wait(&mut self, id: u32) -> io::Result<Reply> {
        if let Some(r) = self.early.remove(&id) {
            return Ok(r);
        }
        loop {
            let (got, reply) = self.read_answer()?;
            if got == id {
                return Ok(reply);
            }
            self.early.insert(got, reply);
        }
    }

    /// The next reply, which must answer a request sent and not yet
    /// answered: a reply to an id never sent (or sent twice) is a
    /// [`violation`], so at most [`MAX_IN_FLIGHT`] replies are ever kept
    /// out of order.
    fn read_answer(&mut self) -> io::Result<(u32, Reply)> {
        let (got, reply) = self.read_reply()?;
        let Some(k) = self.pending.iter().position(|p| *p == got) else {
            return Err(violation(format!(
                "the SFTP server answered request {got}, which is not waiting for an answer"
            )));
        };
        self.pending.remove(k);
        Ok((got, reply))
    }

    pub fn call(&mut self, t: u8, build: impl FnOnce(&mut Vec<u8>)) -> io::Result<Reply> {
        let id = self.send(t, build)?;
        self.wait(id)
    }

    // ---- requests -------------------------------------------------------

    pub fn open(&mut self, path: &[u8], flags: u32, attrs: &Attrs) -> io::Result<u32> {
        self.send(OPEN, |b| {
            put_str(b, path);
            put_u32(b, flags);
            attrs.encode(b);
        })
    }

    pub fn handle(&mut self, id: u32, what: &str) -> io::Result<Vec<u8>> {
        match self.wait(id)? {
            Reply::Handle(h) => Ok(h),
            other => Err(other.into_err(what)),
        }
    }

    pub fn write(&mut self, handle: &[u8], offset: u64, data: &[u8]) -> io::Result<u32> {
        self.send(WRITE, |b| {
            put_str(b, handle);
            b.extend_from_slice(&offset.to_be_bytes());
            put_str(b, data);
        })
    }

    pub fn fsetstat(&mut self, handle: &[u8], attrs: &Attrs) -> io::Result<u32> {
        self.send(FSETSTAT, |b| {
            put_str(b, handle);
            attrs.encode(b);
        })
    }

    pub fn close(&mut self, handle: &[u8]) -> io::Result<u32> {
        self.send(CLOSE, |b| put_str(b, handle))
    }

    pub fn setstat(&mut self, path: &[u8], attrs: &Attrs) -> io::Result<u32> {
        self.send(SETSTAT, |b| {
            put_str(b, path);
            attrs.encode(b);
        })
    }

    /// Set attributes of a symlink itself (needs `lsetstat@openssh.com`).
    pub fn lsetstat(&mut self, path: &[u8], attrs: &Attrs) -> io::Result<u32> {
        self.send(EXTENDED, |b| {
            put_str(b, b"lsetstat@openssh.com");
            put_str(b, path);
            attrs.encode(b);
        })
    }

    /// LSTAT: the attributes of `path` itself (a symlink is not followed).
    pub fn lstat(&mut self, path: &[u8]) -> io::Result<u32> {
        self.send(LSTAT, |b| put_str(b, path))
    }

    pub fn mkdir(&mut self, path: &[u8], attrs: &Attrs) -> io::Result<u32> {
        self.send(MKDIR, |b| {
            put_str(b, path);
            attrs.encode(b);
        })
    }

    pub fn rmdir(&mut self, path: &[u8]) -> io::Result<u32> {
        self.send(RMDIR, |b| put_str(b, path))
    }

    pub fn remove(&mut self, path: &[u8]) -> io::Result<u32> {
        self.send(REMOVE, |b| put_str(b, path))
    }

    /// `statvfs@openssh.com`: bytes available to us on the file system
    /// holding `path`, or None when the server lacks the extension.
    pub fn avail_bytes(&mut self, path: &[u8]) -> io::Result<Option<u64>> {
        if !self.statvfs {
            return Ok(None);
        }
        let reply = self.call(EXTENDED, |b| {
            put_str(b, b"statvfs@openssh.com");
            put_str(b, path);
        })?;
        let Reply::Extended(body) = reply else {
            return Ok(None);
        };
        // bsize frsize blocks bfree bavail files ffree favail fsid flag namemax
        let mut r = Reader::new(&body);
        let _bsize = r.u64()?;
        let frsize = r.u64()?;
        let _blocks = r.u64()?;
        let _bfree = r.u64()?;
        let bavail = r.u64()?;
        Ok(Some(bavail.saturating_mul(frsize)))
    }

    /// `posix-rename@openssh.com`: rename(2), replacing the target atomically.
    pub fn posix_rename(&mut self, from: &[u8], to: &[u8]) -> io::Result<u32> {
        self.send(EXTENDED, |b| {
            put_str(b, b"posix-rename@openssh.com");
            put_str(b, from);
            put_str(b, to);
        })
    }

    /// Plain SFTP rename (fails when `to` exists).
    pub fn send_rename(&mut self, from: &[u8], to: &[u8]) -> io::Result<u32> {
        self.send(RENAME, |b| {
            put_str(b, from);
            put_str(b, to);
        })
    }

    /// Create a symlink at `link` pointing to `target`. OpenSSH's server
    /// takes the two paths in the reverse order of the draft; this sends
    /// them as OpenSSH expects (target first).
    pub fn symlink(&mut self, link: &[u8], target: &[u8]) -> io::Result<u32> {
        self.send(SYMLINK, |b| {
            put_str(b, target);
            put_str(b, link);
        })
    }

    pub fn readlink(&mut self, path: &[u8]) -> io::Result<Vec<u8>> {
        match self.call(READLINK, |b| put_str(b, path))? {
            Reply::Name(mut v) if !v.is_empty() => Ok(v.swap_remove(0).0),
            other => Err(other.into_err("readlink")),
        }
    }

    /// All entries of a directory (name, lstat attributes), "." and ".."
    /// dropped; more than `max` is a [`violation`] (a server that never
    /// ends a listing cannot exhaust memory).
    pub fn readdir(&mut self, path: &[u8], max: usize) -> io::Result<Vec<(Vec<u8>, Attrs)>> {
        let h = match self.call(OPENDIR, |b| put_str(b, path))? {
            Reply::Handle(h) => h,
            other => return Err(other.into_err("opendir")),
        };
        let mut out = Vec::new();
        loop {
            match self.call(READDIR, |b| put_str(b, &h))? {
                Reply::Name(v) => {
                    out.extend(v.into_iter().filter(|(n, _)| n != b"." && n != b".."));
                    if out.len() > max {
                        let id = self.close(&h)?;
                        let _ = self.wait(id);
                        return Err(violation(format!(
                            "SFTP readdir: more than {max} entries (ssh.max_listing_entries); refused"
                        )));
                    }
                }
                Reply::Status(FX_EOF, _) => break,
                other => {
                    let id = self.close(&h)?;
                    let _ = self.wait(id);
                    return Err(other.into_err("readdir"));
                }
            }
        }
        let id = self.close(&h)?;
        self.wait(id)?.ok("close")?;
        Ok(out)
    }
}

pub fn is_dir_mode(perm: u32) -> bool {
    perm & 0o170000 == 0o040000
}
pub fn is_file_mode(perm: u32) -> bool {
    perm & 0o170000 == 0o100000
}
pub fn is_link_mode(perm: u32) -> bool {
    perm & 0o170000 == 0o120000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A server that answers from a script, whatever it is sent.
    struct Scripted(io::Cursor<Vec<u8>>);
    impl Read for Scripted {
        fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
            self.0.read(b)
        }
    }
    impl Write for Scripted {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl super::super::openssh::Pipe for Scripted {
        fn finish(&mut self) -> (i32, Vec<u8>) {
            (0, Vec::new())
        }
    }

    fn packet(t: u8, body: &[u8], out: &mut Vec<u8>) {
        put_u32(out, body.len() as u32 + 1);
        out.push(t);
        out.extend_from_slice(body);
    }

    /// VERSION with `exts`, then, if `handles`, the limits reply (id 1).
    fn server(exts: &[&[u8]], handles: Option<u64>) -> Sftp {
        let mut body = Vec::new();
        put_u32(&mut body, 3);
        for e in exts {
            put_str(&mut body, e);
            put_str(&mut body, b"1");
        }
        let mut script = Vec::new();
        packet(VERSION, &body, &mut script);
        if let Some(h) = handles {
            let mut b = Vec::new();
            put_u32(&mut b, 1);
            for v in [34000u64, 32768, 32768, h] {
                b.extend_from_slice(&v.to_be_bytes());
            }
            packet(EXTENDED_REPLY, &b, &mut script);
        }
        Sftp::start(Box::new(Scripted(io::Cursor::new(script)))).unwrap()
    }

    #[test]
    fn the_servers_handle_limit_is_asked_where_it_says_it_has_one() {
        let s = server(
            &[b"posix-rename@openssh.com", b"limits@openssh.com"],
            Some(1019),
        );
        assert_eq!(s.max_handles, Some(1019));
        assert!(s.posix_rename);
        // 0 means "not said"
        assert_eq!(server(&[b"limits@openssh.com"], Some(0)).max_handles, None);
        // not advertised: not asked (the script has no reply for it)
        assert_eq!(server(&[b"statvfs@openssh.com"], None).max_handles, None);
    }
}
