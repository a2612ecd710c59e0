//! Security over SSH (issue 11): secrets (finding 7), against the real
//! sshd of tests/common/sshd.rs.

mod common;

use common::sshd::Sshd;
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;

fn job_with(lab: &Lab, s: &Sshd, ssh: &str) {
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: {}\n    retries: 0\n    ssh: {{ {ssh}, known_hosts: {}, timeout: 10s }}\n",
        s.url(&lab.dst()),
        s.known_hosts.display(),
    ));
}

#[test]
fn the_key_passphrase_is_never_sent_as_a_password() {
    let lab = Lab::new();
    // the server logs every authentication request it receives
    let s = Sshd::start_with(
        &lab.path("sshd"),
        "Match all\n  LogLevel DEBUG3\n  PasswordAuthentication yes\n",
    );
    lab.write("a", b"a");
    // a key the server does not know, encrypted with the passphrase
    let key = lab.path("enc_key");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "s3cret-passphrase", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let pw = lab.path("pass");
    fs::write(&pw, "s3cret-passphrase\n").unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    job_with(
        &lab,
        &s,
        &format!(
            "identity: {}, password_file: {}",
            key.display(),
            pw.display()
        ),
    );
    lab.run(&["run", "web"]).code(1);
    let reason = lab.last()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("authentication refused"), "{reason}");
    let log = fs::read_to_string(s.dir.join("sshd.log")).unwrap();
    assert!(
        log.contains("method publickey"),
        "the server logs requests: {log}"
    );
    assert!(
        !log.contains("method password"),
        "the passphrase was offered as the login password: {log}"
    );
}

#[test]
fn an_identity_readable_by_others_is_refused_as_ssh_does() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    lab.write("a", b"a");
    fs::set_permissions(&s.key, fs::Permissions::from_mode(0o644)).unwrap();
    job_with(&lab, &s, &format!("identity: {}", s.key.display()));
    lab.run(&["run", "web"]).code(1);
    let reason = lab.last()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("accessible by group or others"), "{reason}");
    assert!(reason.contains("not retried"), "{reason}");
    assert!(!lab.dst().join("a").exists());
    fs::set_permissions(&s.key, fs::Permissions::from_mode(0o600)).unwrap();
    lab.run(&["run", "web"]).code(0);
}

#[test]
fn a_password_file_owned_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to chown");
        return;
    }
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    lab.write("a", b"a");
    // another user's 0600 file: root can read it, its owner controls it
    let pw = lab.path("pass");
    fs::write(&pw, "secret\n").unwrap();
    fs::set_permissions(&pw, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&pw, Some(65534), Some(65534)).unwrap();
    job_with(
        &lab,
        &s,
        &format!(
            "identity: {}, password_file: {}",
            s.key.display(),
            pw.display()
        ),
    );
    lab.run(&["run", "web"]).code(1);
    let reason = lab.last()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("owner uid 65534"), "{reason}");
    std::os::unix::fs::chown(&pw, Some(0), Some(0)).unwrap();
    lab.run(&["run", "web"]).code(0);
}

// ---- finding 3: a hostile remote ------------------------------------------

/// Limit the address space of a child: an unbounded allocation driven by
/// the remote ends in an allocation failure, not a swapping box.
fn limit_memory(c: &mut Command, bytes: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: pre_exec runs in the forked child before exec; setrlimit is async-signal-safe and only reads `r`.
    unsafe {
        c.pre_exec(move || {
            let r = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &r) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// `syncjob run web` under a 1 GiB address-space limit.
fn run_limited(lab: &Lab) -> Run {
    let mut c = lab.cmd();
    c.args(["run", "web"]);
    limit_memory(&mut c, 1 << 30);
    Run::from(c.output().unwrap())
}

fn script(path: &std::path::Path, text: &str) {
    fs::write(path, text).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// An sshd whose `find` (first on PATH) is `find_script`.
fn sshd_with_find(lab: &Lab, find_script: &str) -> Sshd {
    let bin = lab.path("evil-bin");
    fs::create_dir_all(&bin).unwrap();
    script(&bin.join("find"), find_script);
    // the target exists: its listing is asked of `find`
    fs::create_dir_all(lab.dst()).unwrap();
    Sshd::start_with(
        &lab.path("sshd"),
        &format!("SetEnv PATH={}:/usr/bin:/bin", bin.display()),
    )
}

#[test]
fn a_find_listing_with_an_endless_record_fails_the_target_not_the_process() {
    let lab = Lab::new();
    lab.write("a", b"a");
    // the root record, then 600 MiB without a NUL
    let s = sshd_with_find(
        &lab,
        "#!/bin/sh\nprintf 'd\\0004096\\0001.0\\000755\\0000\\0000\\000\\000\\000'\n\
         head -c 629145600 /dev/zero | tr '\\000' a\n",
    );
    job_with(&lab, &s, &format!("identity: {}", s.key.display()));
    let t = std::time::Instant::now();
    let r = run_limited(&lab);
    r.code(1);
    let rec = lab.last();
    let reason = rec["reason"].as_str().unwrap();
    assert!(reason.contains("a record longer than"), "{reason}");
    assert!(reason.contains("not retried"), "{reason}");
    assert!(t.elapsed() < std::time::Duration::from_secs(30));
    assert!(!lab.dst().join("a").exists());
}

#[test]
fn a_find_listing_past_max_listing_entries_fails_the_target() {
    let lab = Lab::new();
    lab.write("a", b"a");
    let s = sshd_with_find(
        &lab,
        "#!/bin/sh\nprintf 'd\\0004096\\0001.0\\000755\\0000\\0000\\000\\000\\000'\n\
         i=0; while [ $i -lt 5000 ]; do printf 'f\\0001\\0001.0\\000644\\0000\\0000\\000f%d\\000\\000' $i; i=$((i+1)); done\n",
    );
    job_with(
        &lab,
        &s,
        &format!("identity: {}, max_listing_entries: 1000", s.key.display()),
    );
    lab.run(&["run", "web"]).code(1);
    let reason = lab.last()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("more than 1000 entries"), "{reason}");
    assert!(!lab.dst().join("a").exists());
    // the same listing under the default cap is fine
    job_with(&lab, &s, &format!("identity: {}", s.key.display()));
    lab.run(&["run", "web"]).code(0);
}

#[test]
fn a_helper_announcing_billions_of_block_hashes_fails_the_target_not_the_process() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    // a big changed file that exists on the target: a delta candidate
    let big = vec![7u8; 9 << 20];
    lab.write("big", &big);
    fs::create_dir_all(lab.dst()).unwrap();
    fs::write(lab.dst().join("big"), &big[..big.len() - 1]).unwrap();
    let helper = lab.path("evil-helper");
    script(
        &helper,
        "#!/usr/bin/python3\nimport sys, struct, os\n\
         i, o = sys.stdin.buffer, sys.stdout.buffer\n\
         o.write(b'syncjob-helper 4\\n'); o.flush()\n\
         def s(b): return struct.pack('<I', len(b)) + b\n\
         def e(t, n, size): return b'e' + t + struct.pack('<QqIIII', size, 0, 0, 0o755, 0, 0) + s(n) + s(b'')\n\
         while True:\n\
         \x20   op = i.read(1)\n\
         \x20   if op == b'P': o.write(b'\\0')\n\
         \x20   elif op == b'L': o.write(b'\\0' + e(b'd', b'', 0) + e(b'f', b'big', 1) + b'.')\n\
         \x20   elif op == b'W':\n\
         \x20       n, = struct.unpack('<I', i.read(4)); i.read(n)\n\
         \x20       block, = struct.unpack('<I', i.read(4))\n\
         \x20       count = 0xFFFFFFFF\n\
         \x20       o.write(b'\\0' + struct.pack('<QI', count * block, count) + b'\\0' * 3200)\n\
         \x20   else: sys.exit(0)\n\
         \x20   o.flush()\n",
    );
    job_with(
        &lab,
        &s,
        &format!(
            "identity: {}, remote_helper: {}",
            s.key.display(),
            helper.display()
        ),
    );
    let r = run_limited(&lab);
    r.code(1);
    let reason = lab.last()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("block hashes announced"), "{reason}");
}

/// A fake SFTP server behind the real sshd (ForceCommand; `find` is not
/// found there, so the listing goes over SFTP): `mode` `flood` answers
/// every READDIR with 1000 more names, forever; `stray` answers requests
/// with ids never sent.
fn sshd_with_fake_sftp(lab: &Lab, mode: &str) -> Sshd {
    let server = lab.path("fake-sftp");
    script(
        &server,
        &format!(
            r#"#!/usr/bin/python3
import sys, struct
i, o = sys.stdin.buffer, sys.stdout.buffer
def rd(n):
    b = b''
    while len(b) < n:
        c = i.read(n - len(b))
        if not c: sys.exit(0)
        b += c
    return b
def send(t, p):
    o.write(struct.pack('>IB', len(p) + 1, t) + p); o.flush()
def s(b): return struct.pack('>I', len(b)) + b
while True:
    n, = struct.unpack('>I', rd(4)); body = rd(n); t = body[0]
    if t == 1:
        send(2, struct.pack('>I', 3)); continue
    rid, = struct.unpack('>I', body[1:5])
    if '{mode}' == 'stray':
        for k in range(1000): send(101, struct.pack('>II', rid + 1000 + k, 0) + s(b'') + s(b''))
        continue
    if t == 11: send(102, struct.pack('>I', rid) + s(b'h')); continue
    if t == 12:
        ents = b''.join(s(b'f%d_%d' % (rid, k)) + s(b'') + struct.pack('>II', 4, 0o100644) for k in range(1000))
        send(104, struct.pack('>II', rid, 1000) + ents); continue
    send(101, struct.pack('>II', rid, 0) + s(b'') + s(b''))
"#
        ),
    );
    // no GNU find there: the listing goes over SFTP
    let bin = lab.path("nofind-bin");
    fs::create_dir_all(&bin).unwrap();
    script(&bin.join("find"), "#!/bin/sh\nexit 127\n");
    fs::create_dir_all(lab.dst()).unwrap();
    let wrapper = lab.path("force");
    script(
        &wrapper,
        &format!(
            "#!/bin/sh\ncase \"$SSH_ORIGINAL_COMMAND\" in\n  *sftp*) exec {} ;;\n  *) PATH={}:/usr/bin:/bin exec /bin/sh -c \"$SSH_ORIGINAL_COMMAND\" ;;\nesac\n",
            server.display(),
            bin.display()
        ),
    );
    Sshd::start_with(
        &lab.path("sshd"),
        &format!("Match all\n  ForceCommand {}\n", wrapper.display()),
    )
}

#[test]
fn an_sftp_server_listing_without_end_fails_the_target_not_the_process() {
    let lab = Lab::new();
    lab.write("a", b"a");
    let s = sshd_with_fake_sftp(&lab, "flood");
    // (the default cap, 10M entries, is far: a lower one)
    job_with(
        &lab,
        &s,
        &format!("identity: {}, max_listing_entries: 5000", s.key.display()),
    );
    let t = std::time::Instant::now();
    let r = run_limited(&lab);
    r.code(1);
    let reason = lab.last()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("more than 5000 entries"), "{reason}");
    assert!(t.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn sftp_replies_to_requests_never_sent_fail_the_target() {
    let lab = Lab::new();
    lab.write("a", b"a");
    let s = sshd_with_fake_sftp(&lab, "stray");
    job_with(&lab, &s, &format!("identity: {}", s.key.display()));
    let t = std::time::Instant::now();
    lab.run(&["run", "web"]).code(1);
    let reason = lab.last()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("not waiting for an answer"), "{reason}");
    assert!(
        t.elapsed() < std::time::Duration::from_secs(8),
        "not a timeout"
    );
}

// ---- finding 6: host keys as OpenSSH checks them ---------------------------

/// The job with this known_hosts text (and an empty global file).
fn job_kh(lab: &Lab, s: &Sshd, kh: &str, extra: &str) {
    fs::write(&s.known_hosts, kh).unwrap();
    job_with(
        lab,
        s,
        &format!(
            "identity: {}, global_known_hosts: {}{extra}",
            s.key.display(),
            lab.path("global_known_hosts").display()
        ),
    );
}

/// "type base64" of a public key file.
fn pubkey(path: &std::path::Path) -> String {
    let p = fs::read_to_string(path).unwrap();
    p.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

fn failed_with(lab: &Lab, what: &str) {
    lab.run(&["run", "web"]).code(1);
    let reason = lab.last()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains(what), "{reason}");
    assert!(!lab.dst().join("a").exists());
}

#[test]
fn a_wildcard_entry_with_another_key_is_a_changed_key_even_with_accept_new() {
    let lab = Lab::new();
    lab.write("a", b"a");
    let s = Sshd::start(&lab.path("sshd"));
    // known under a wildcard with another ed25519 key (the client's)
    let kh = format!("[127.0.0.*]:* {}\n", pubkey(&s.dir.join("id_ed25519.pub")));
    job_kh(&lab, &s, &kh, ", strict_host_key_checking: accept-new");
    failed_with(&lab, "HOST KEY CHANGED");
    assert_eq!(
        fs::read_to_string(&s.known_hosts).unwrap(),
        kh,
        "nothing added"
    );
}

#[test]
fn a_revoked_key_is_refused_even_when_listed() {
    let lab = Lab::new();
    lab.write("a", b"a");
    let s = Sshd::start(&lab.path("sshd"));
    let kh = format!(
        "[127.0.0.1]:{} {k}\n@revoked * {k}\n",
        s.port,
        k = s.host_pub()
    );
    job_kh(&lab, &s, &kh, "");
    failed_with(&lab, "@revoked");
}

#[test]
fn a_cert_authority_line_never_vouches_for_a_plain_key() {
    let lab = Lab::new();
    lab.write("a", b"a");
    let s = Sshd::start(&lab.path("sshd"));
    // the server's own key, but as a CA: it signs certificates, it is
    // not this host's key; nor is the host new for accept-new
    let kh = format!("@cert-authority * {}\n", s.host_pub());
    job_kh(&lab, &s, &kh, ", strict_host_key_checking: accept-new");
    failed_with(&lab, "@cert-authority");
    assert_eq!(
        fs::read_to_string(&s.known_hosts).unwrap(),
        kh,
        "nothing added"
    );
    job_kh(&lab, &s, &kh, "");
    failed_with(&lab, "@cert-authority");
}

#[test]
fn the_global_known_hosts_file_is_read() {
    let lab = Lab::new();
    lab.write("a", b"a");
    let s = Sshd::start(&lab.path("sshd"));
    fs::write(
        lab.path("global_known_hosts"),
        format!("[127.0.0.1]:{} {}\n", s.port, s.host_pub()),
    )
    .unwrap();
    job_kh(&lab, &s, "", "");
    lab.run(&["run", "web"]).code(0);
}

#[test]
fn a_plain_host_entry_only_vouches_for_port_22() {
    let lab = Lab::new();
    lab.write("a", b"a");
    let s = Sshd::start(&lab.path("sshd"));
    job_kh(&lab, &s, &format!("127.0.0.1 {}\n", s.host_pub()), "");
    failed_with(&lab, "is unknown");
}

#[test]
fn the_host_key_type_listed_in_known_hosts_is_negotiated() {
    let lab = Lab::new();
    lab.write("a", b"a");
    // the server has an ed25519 and an ECDSA host key; known_hosts lists
    // only the ECDSA one
    let dir = lab.path("sshd");
    fs::create_dir_all(&dir).unwrap();
    let ecdsa = dir.join("host_ecdsa");
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ecdsa", "-N", "", "-f"])
        .arg(&ecdsa)
        .status()
        .unwrap();
    assert!(st.success());
    let s = Sshd::start_with(&dir, &format!("HostKey {}", ecdsa.display()));
    let line = format!(
        "[127.0.0.1]:{} {}\n",
        s.port,
        pubkey(&dir.join("host_ecdsa.pub"))
    );
    job_kh(&lab, &s, &line, "");
    lab.run(&["run", "web"]).code(0);
    assert!(lab.dst().join("a").exists());
}

#[test]
fn a_remote_command_printing_without_end_fails_the_target_not_the_process() {
    let lab = Lab::new();
    lab.write("a", b"a");
    // same size on the target: `compare: checksum` runs `sha256sum` there,
    // which never stops printing
    fs::create_dir_all(lab.dst()).unwrap();
    fs::write(lab.dst().join("a"), b"b").unwrap();
    let bin = lab.path("evil-bin");
    fs::create_dir_all(&bin).unwrap();
    script(&bin.join("sha256sum"), "#!/bin/sh\nexec yes\n");
    let s = Sshd::start_with(
        &lab.path("sshd"),
        &format!("SetEnv PATH={}:/usr/bin:/bin", bin.display()),
    );
    job_with(&lab, &s, &format!("identity: {}", s.key.display()));
    let yaml = fs::read_to_string(lab.path("jobs.yaml")).unwrap();
    fs::write(
        lab.path("jobs.yaml"),
        yaml.replace(
            "    retries: 0\n",
            "    retries: 0\n    compare: checksum\n",
        ),
    )
    .unwrap();
    let r = run_limited(&lab);
    r.code(1);
    let rec = lab.last();
    assert!(rec.to_string().contains("printed more than"), "{rec}");
}

#[test]
fn non_utf8_names_are_compared_by_checksum_over_ssh() {
    use std::os::unix::ffi::OsStrExt;
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    let name = std::ffi::OsStr::from_bytes(b"caf\xe9 \xff.txt");
    fs::write(lab.src().join(name), b"new").unwrap();
    // the same size on the target, other content: only a checksum tells
    fs::create_dir_all(lab.dst()).unwrap();
    fs::write(lab.dst().join(name), b"old").unwrap();
    job_with(&lab, &s, &format!("identity: {}", s.key.display()));
    let yaml = fs::read_to_string(lab.path("jobs.yaml")).unwrap();
    fs::write(
        lab.path("jobs.yaml"),
        yaml.replace(
            "    retries: 0\n",
            "    retries: 0\n    compare: checksum\n",
        ),
    )
    .unwrap();
    lab.run(&["run", "web"]).code(0);
    assert_eq!(fs::read(lab.dst().join(name)).unwrap(), b"new");
}
