//! Who the `rsync` that reads the source runs as.
//!
//! rsync's sender opens source files by path, so whoever can change the
//! source tree can swap a directory for a symlink between syncjob's scan
//! and rsync's open (rsync 3.5 refuses symlinks owned by other users, but
//! follows root's, and older clients follow any). When syncjob runs as root
//! and the source root is owned by another user, the sender therefore runs
//! with that user's identity: it can read nothing the source's owner could
//! not read, whatever the tree turns into.
//!
//! Invariants:
//! - The effective uid, gid and supplementary groups are the owner's (the
//!   groups of the user database; without an entry, the source root's
//!   group); the real ids stay root's (exec makes the saved ones the
//!   owner's), so the owner can neither ptrace the process nor read its
//!   `/proc/PID/environ` (the kernel also marks it non-dumpable; the owner
//!   can only signal it, ending that run), and `SECBIT_NOROOT` (locked) with
//!   `PR_SET_NO_NEW_PRIVS` means the exec'd rsync holds no capability: file
//!   access is checked against the owner's ids only.
//! - The exec'd rsync cannot become root again: a seccomp filter (with
//!   `PR_SET_NO_NEW_PRIVS`) makes every `set*id`/`setgroups` call fail
//!   with `EPERM` (a shell wrapper resetting its effective uid to the real
//!   one fails instead of regaining uid 0). The filter is hand-written (a
//!   dozen BPF instructions) rather than a crate's: it denies one family of
//!   calls, and is built before the fork (no allocation in the child).
//! - The password never goes through a file the dropped process would need
//!   to read: it is read here from the (root's, 0600) password file and
//!   given in `RSYNC_PASSWORD`, readable only as explained above.

use std::ffi::{CStr, CString};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// The identity a sender runs with, and the password it needs.
#[derive(Debug, Clone)]
pub struct Sender {
    pub uid: u32,
    pub gid: u32,
    groups: Vec<libc::gid_t>,
    password: Option<String>,
}

/// The longest password file read (rsync itself reads at most 512 bytes).
const MAX_PASSWORD: u64 = 4096;

/// Root's sender for `source` when it must drop to the source's owner
/// (`None`: not root, or the source is root's).
pub fn for_source(source: &Path, password_file: Option<&Path>) -> io::Result<Option<Sender>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let md = match std::fs::metadata(source) {
        Ok(md) => md,
        // the run's own guard reports a missing source (nothing is sent)
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if md.uid() == 0 {
        return Ok(None);
    }
    let (gid, groups) = groups_of(md.uid()).unwrap_or((md.gid(), vec![md.gid()]));
    let password = password_file.map(read_password).transpose()?;
    Ok(Some(Sender {
        uid: md.uid(),
        gid,
        groups,
        password,
    }))
}

/// The first line of a password file, as rsync takes it.
fn read_password(p: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut text = Vec::new();
    std::fs::File::open(p)?
        .take(MAX_PASSWORD)
        .read_to_end(&mut text)?;
    let line = text
        .split(|b| *b == b'\n' || *b == b'\r')
        .find(|l| !l.is_empty())
        .unwrap_or_default();
    if line.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("rsync.password_file {}: holds a NUL byte", p.display()),
        ));
    }
    String::from_utf8(line.to_vec()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("rsync.password_file {}: not UTF-8", p.display()),
        )
    })
}

/// The primary group and all groups of the user `uid` in the user
/// database (`None`: no such user).
fn groups_of(uid: u32) -> Option<(u32, Vec<libc::gid_t>)> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids).
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: the buffers outlive the call; `found` is set to `&pw` or null.
    let r = unsafe { libc::getpwuid_r(uid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut found) };
    if r != 0 || found.is_null() {
        return None;
    }
    // SAFETY: pw_name points into `buf`, NUL-terminated by getpwuid_r.
    let name: CString = unsafe { CStr::from_ptr(pw.pw_name) }.to_owned();
    let mut groups = vec![0 as libc::gid_t; 64];
    loop {
        let mut n = groups.len() as libc::c_int;
        // SAFETY: `groups` has room for `n` entries; `n` is updated.
        let r =
            unsafe { libc::getgrouplist(name.as_ptr(), pw.pw_gid, groups.as_mut_ptr(), &mut n) };
        if r >= 0 {
            groups.truncate(n.max(0) as usize);
            return Some((pw.pw_gid, groups));
        }
        if groups.len() >= 65536 {
            return Some((pw.pw_gid, vec![pw.pw_gid]));
        }
        let want = (n.max(0) as usize).max(groups.len() * 2);
        groups.resize(want, 0);
    }
}

impl Sender {
    /// Make `cmd` run as this sender (its password in `RSYNC_PASSWORD`).
    pub fn apply(&self, cmd: &mut Command) {
        if let Some(p) = &self.password {
            cmd.env("RSYNC_PASSWORD", p);
        }
        let (uid, gid, groups) = (self.uid, self.gid, self.groups.clone());
        let filter = no_setid_filter();
        let keep_uid = u32::MAX as libc::uid_t;
        let keep_gid = u32::MAX as libc::gid_t;
        // SAFETY: the closure runs in the child between fork and exec and
        // only makes system calls (no allocation: `groups` was built
        // before the fork).
        unsafe {
            cmd.pre_exec(move || {
                let bits = libc::SECBIT_NOROOT | libc::SECBIT_NOROOT_LOCKED;
                check(libc::prctl(
                    libc::PR_SET_SECUREBITS,
                    bits as libc::c_ulong,
                    0,
                    0,
                    0,
                ))?;
                check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
                check(libc::setgroups(groups.len(), groups.as_ptr()))?;
                check(libc::setresgid(keep_gid, gid, keep_gid))?;
                check(libc::setresuid(keep_uid, uid, keep_uid))?;
                if let Some(f) = &filter {
                    let prog = libc::sock_fprog {
                        len: f.len() as libc::c_ushort,
                        filter: f.as_ptr() as *mut libc::sock_filter,
                    };
                    let mode = libc::SECCOMP_MODE_FILTER as libc::c_ulong;
                    let prog = &prog as *const libc::sock_fprog as libc::c_ulong;
                    check(libc::prctl(libc::PR_SET_SECCOMP, mode, prog, 0, 0))?;
                }
                Ok(())
            });
        }
    }
}

/// The audit architecture of this build's system calls.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xC000_00B7;

/// A seccomp program: every `set*id` and `setgroups` call fails with
/// `EPERM`; a call of another architecture (a 32-bit entry) is refused
/// the same way; the rest is allowed. `None` on other architectures.
fn no_setid_filter() -> Option<Vec<libc::sock_filter>> {
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    {
        let denied = [
            libc::SYS_setuid,
            libc::SYS_setgid,
            libc::SYS_setreuid,
            libc::SYS_setregid,
            libc::SYS_setresuid,
            libc::SYS_setresgid,
            libc::SYS_setfsuid,
            libc::SYS_setfsgid,
            libc::SYS_setgroups,
        ];
        let stmt = |code: u32, k: u32| libc::sock_filter {
            code: code as u16,
            jt: 0,
            jf: 0,
            k,
        };
        let jeq = |k: u32, jt: u8, jf: u8| libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt,
            jf,
            k,
        };
        let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
        let n = denied.len() as u8;
        // seccomp_data: nr at offset 0, arch at offset 4
        let mut f = vec![stmt(load, 4), jeq(AUDIT_ARCH, 0, n + 2), stmt(load, 0)];
        for (i, nr) in denied.iter().enumerate() {
            // to the EPERM return, past the remaining tests and the ALLOW
            f.push(jeq(*nr as u32, n - i as u8, 0));
        }
        f.push(stmt(libc::BPF_RET | libc::BPF_K, libc::SECCOMP_RET_ALLOW));
        f.push(stmt(
            libc::BPF_RET | libc::BPF_K,
            libc::SECCOMP_RET_ERRNO | libc::EPERM as u32,
        ));
        Some(f)
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    None
}

fn check(r: libc::c_int) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_the_first_line() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("pw");
        std::fs::write(&p, "\ns3cret\r\nsecond\n").unwrap();
        assert_eq!(read_password(&p).unwrap(), "s3cret");
        std::fs::write(&p, b"a\0b\n").unwrap();
        assert!(read_password(&p).is_err());
    }

    /// As root: the process runs with nobody's effective ids and no
    /// capability, cannot become root again, and nobody cannot read its
    /// environment (the password).
    #[test]
    fn the_sender_cannot_regain_root_and_hides_its_password_from_the_owner() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let s = Sender {
            uid: 65534,
            gid: 65534,
            groups: vec![65534],
            password: Some("pw-XYZZY".into()),
        };
        let script = "import os, sys\nprint(os.getresuid(), os.getresgid(), os.getgroups())\n\
            caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith(('CapEff', 'CapPrm'))]\n\
            print(caps)\n\
            try:\n    os.setresuid(0, 0, 0)\n    print('root again')\nexcept OSError as e:\n    print('setresuid', e.errno)\n\
            sys.stdout.flush()\nsys.stdin.read()\n";
        let mut cmd = Command::new("python3");
        cmd.args(["-c", script])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        s.apply(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut text = String::new();
        for _ in 0..3 {
            std::io::BufRead::read_line(&mut out, &mut text).unwrap();
        }
        assert!(
            text.starts_with("(0, 65534, 65534) (0, 65534, 65534) [65534]\n"),
            "{text}"
        );
        assert!(
            text.contains("['0000000000000000', '0000000000000000']"),
            "{text}"
        );
        assert!(text.contains("setresuid 1\n"), "{text}");
        // nobody (the source's owner) reads the sender's environment
        let environ = format!("/proc/{}/environ", child.id());
        let peek = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
            .arg(&environ)
            .output()
            .unwrap();
        assert!(!peek.status.success());
        assert!(!String::from_utf8_lossy(&peek.stdout).contains("XYZZY"));
        // (root can: the password is there)
        assert!(String::from_utf8_lossy(&std::fs::read(&environ).unwrap()).contains("XYZZY"));
        drop(child.stdin.take());
        child.wait().unwrap();
    }

    #[test]
    fn root_s_groups_are_found() {
        let (gid, groups) = groups_of(0).expect("root is in the user database");
        assert_eq!(gid, 0);
        assert!(groups.contains(&0));
    }
}
