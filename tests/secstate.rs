//! Security: the state dir (issue 11, finding 5). Each test performs the
//! attack: a hostile local user planting links in a state dir it can
//! write, a state dir owned by someone else, predictable temporary names,
//! a forged manifest naming files outside the target.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

fn perm(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// Run a command as `nobody` (uid/gid 65534).
fn as_nobody(args: &[&str]) {
    let st = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .args(args)
        .status()
        .unwrap();
    assert!(st.success(), "{args:?}");
}

/// A file only root may read, the target of the planted links.
fn victim(lab: &Lab, name: &str) -> std::path::PathBuf {
    let v = lab.path(name);
    fs::write(&v, "secret\n").unwrap();
    fs::set_permissions(&v, fs::Permissions::from_mode(0o600)).unwrap();
    v
}

#[test]
fn the_state_dir_is_private_0700_and_its_files_0600() {
    let lab = Lab::new();
    lab.write("a.txt", b"a");
    lab.job("");
    lab.run(&["run", "web"]).code(0);
    let s = lab.state();
    for d in [s.clone(), s.join("locks"), s.join("manifests")] {
        assert_eq!(perm(&d), 0o700, "{}", d.display());
    }
    let mdir = s.join("manifests/web");
    assert_eq!(perm(&mdir), 0o700);
    let manifests: Vec<_> = fs::read_dir(&mdir).unwrap().flatten().collect();
    assert_eq!(manifests.len(), 1, "one manifest, no temporary left");
    for f in [
        s.join("runs.jsonl"),
        s.join("locks/web.lock"),
        manifests[0].path(),
    ] {
        assert_eq!(perm(&f), 0o600, "{}", f.display());
    }
}

#[test]
fn a_state_dir_writable_by_others_is_refused_and_a_planted_lock_link_not_followed() {
    let lab = Lab::new();
    lab.write("a.txt", b"a");
    lab.job("");
    let v = victim(&lab, "victim");
    let s = lab.state();
    fs::create_dir(&s).unwrap();
    fs::set_permissions(&s, fs::Permissions::from_mode(0o777)).unwrap();
    let link = s.join("locks/web.lock");
    if is_root() {
        // the hostile user: any local user can write the state dir
        fs::set_permissions(lab.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        as_nobody(&["mkdir", s.join("locks").to_str().unwrap()]);
        as_nobody(&["ln", "-s", v.to_str().unwrap(), link.to_str().unwrap()]);
    } else {
        fs::create_dir(s.join("locks")).unwrap();
        std::os::unix::fs::symlink(&v, &link).unwrap();
    }
    let r = lab.run(&["run", "web"]);
    r.code(2);
    assert!(
        r.stderr.contains("writable by group or others"),
        "{}",
        r.stderr
    );
    assert_eq!(fs::read(&v).unwrap(), b"secret\n");
    assert!(!lab.dst().exists(), "nothing synced");
}

#[test]
fn a_state_dir_owned_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: needs root to chown");
        return;
    }
    let lab = Lab::new();
    lab.write("a.txt", b"a");
    lab.job("");
    let s = lab.state();
    fs::create_dir(&s).unwrap();
    fs::set_permissions(&s, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&s, Some(65534), Some(65534)).unwrap();
    let r = lab.run(&["run", "web"]);
    r.code(2);
    assert!(r.stderr.contains("owned by uid 65534"), "{}", r.stderr);
    let r = lab.run(&["daemon"]);
    r.code(2);
    assert!(r.stderr.contains("owned by uid 65534"), "{}", r.stderr);
}

#[test]
fn links_at_the_log_and_lock_names_are_never_followed() {
    let lab = Lab::new();
    lab.write("a.txt", b"a");
    lab.job("");
    lab.run(&["run", "web"]).code(0);
    let s = lab.state();
    let (v1, v2) = (victim(&lab, "v1"), victim(&lab, "v2"));
    fs::remove_file(s.join("runs.jsonl")).unwrap();
    std::os::unix::fs::symlink(&v1, s.join("runs.jsonl")).unwrap();
    fs::remove_file(s.join("locks/web.lock")).unwrap();
    std::os::unix::fs::symlink(&v2, s.join("locks/web.lock")).unwrap();
    lab.write("b.txt", b"b");
    let r = lab.run(&["run", "web"]);
    r.code(1);
    assert!(r.stderr.contains("symlink"), "{}", r.stderr);
    assert_eq!(fs::read(&v1).unwrap(), b"secret\n");
    assert_eq!(fs::read(&v2).unwrap(), b"secret\n");
    assert!(!lab.dst().join("b.txt").exists(), "no run without the lock");
}

#[test]
fn manifest_temporary_names_are_unpredictable_and_exclusive() {
    let lab = Lab::new();
    lab.write("a.txt", b"a");
    lab.job("");
    lab.run(&["run", "web"]).code(0);
    let mdir = lab.state().join("manifests/web");
    let name = fs::read_dir(&mdir).unwrap().next().unwrap().unwrap();
    let name = name.file_name().into_string().unwrap();
    let v = victim(&lab, "victim");
    // the old name was `.NAME.tmp.PID`: plant it for the next pids (other
    // processes of a busy machine may take them: then try again)
    let mut hit = false;
    for round in 0..5 {
        let last: u32 = fs::read_to_string("/proc/sys/kernel/ns_last_pid")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        let planted = last + 1..last + 2000;
        for pid in planted.clone() {
            let l = mdir.join(format!(".{name}.tmp.{pid}"));
            let _ = fs::remove_file(&l);
            std::os::unix::fs::symlink(&v, l).unwrap();
        }
        lab.write("b.txt", format!("b{round}").as_bytes());
        let child = lab.spawn(&["run", "web"]);
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(fs::read(&v).unwrap(), b"secret\n");
        if planted.contains(&pid) {
            hit = true;
            break;
        }
    }
    assert!(hit, "a run's pid was among the planted names");
    assert!(lab.dst().join("b.txt").exists());
}

/// Offsets in a manifest file (see src/manifest.rs): header, then entries.
const HEADER: usize = 8 + 1 + 32 + 8 + 32 + 32;
/// The root entry: name length 0, kind, size, mtime, ns, mode, uid, gid, link.
const ROOT_ENTRY: usize = 4 + 1 + 8 + 8 + 4 + 4 + 4 + 4 + 4;

fn forged_entry(name: &[u8]) -> Vec<u8> {
    let mut e = Vec::new();
    e.extend_from_slice(&(name.len() as u32).to_le_bytes());
    e.extend_from_slice(name);
    e.push(0); // a file
    e.extend_from_slice(&6u64.to_le_bytes());
    e.extend_from_slice(&1_600_000_000u64.to_le_bytes());
    e.extend_from_slice(&0u32.to_le_bytes());
    e.extend_from_slice(&0o100644u32.to_le_bytes());
    e.extend_from_slice(&0u32.to_le_bytes());
    e.extend_from_slice(&0u32.to_le_bytes());
    e.extend_from_slice(&u32::MAX.to_le_bytes());
    e
}

/// Insert entries after the root entry and fix the digest and checksum.
fn forge(manifest: &Path, entries: &[Vec<u8>]) {
    let mut b = fs::read(manifest).unwrap();
    let at = HEADER + ROOT_ENTRY;
    let tail = b.split_off(at);
    for e in entries {
        b.extend_from_slice(e);
    }
    b.extend_from_slice(&tail);
    let digest = Sha256::digest(&b[HEADER..]);
    b[49..81].copy_from_slice(&digest);
    let sum = Sha256::digest(&b[..81]);
    b[81..113].copy_from_slice(&sum);
    fs::write(manifest, b).unwrap();
}

#[test]
fn a_forged_manifest_cannot_delete_outside_the_target() {
    let lab = Lab::new();
    lab.write("a.txt", b"a");
    lab.job("delete: true\nverify_interval: 1h");
    lab.run(&["run", "web"]).code(0);
    let mdir = lab.state().join("manifests/web");
    let m = fs::read_dir(&mdir).unwrap().next().unwrap().unwrap().path();
    let abs = victim(&lab, "abs-victim");
    let rel = victim(&lab, "rel-victim");
    // sorted as the manifest's entries are: `/...` and `../...` come first
    forge(
        &m,
        &[
            forged_entry(abs.as_os_str().as_encoded_bytes()),
            forged_entry(b"../rel-victim"),
        ],
    );
    lab.write("b.txt", b"b");
    let r = lab.run(&["run", "web"]);
    r.code(0);
    assert!(
        abs.exists(),
        "an absolute name in a manifest deleted a file"
    );
    assert!(rel.exists(), "a `..` name in a manifest deleted a file");
    assert!(lab.dst().join("b.txt").exists());
    // the damaged manifest was not used: the target was listed
    assert!(lab.last().get("target_state").is_none());
}

// ---- finding 10: lexical guards ------------------------------------------

#[test]
fn targets_that_normalise_to_the_root_are_refused() {
    let lab = Lab::new();
    lab.write("a.txt", b"a");
    for t in [
        "/srv/..",
        "web:/..",
        "ssh://web/../",
        "/srv/site/../../",
        "root@web:/srv/./../",
        "web:../..",
    ] {
        lab.config(&format!(
            "jobs:\n  web:\n    source: {{src}}\n    remote: \"{t}\"\n    delete: true\n"
        ));
        let r = lab.run(&["check"]);
        r.code(2);
        assert!(
            r.stderr.contains("bad target")
                && (r.stderr.contains("root of `/` is refused") || r.stderr.contains("climb")),
            "{t}: {}",
            r.stderr
        );
        lab.run(&["run", "--dry-run", "web"]).code(2);
    }
}

#[test]
fn a_target_under_a_symlink_to_the_source_overlaps_it() {
    let lab = Lab::new();
    lab.write("a.txt", b"a");
    std::os::unix::fs::symlink(lab.src(), lab.path("link")).unwrap();
    lab.config("jobs:\n  web:\n    source: {src}\n    remote: {dir}/link/sub\n    delete: true\n");
    let r = lab.run(&["check"]);
    r.code(2);
    assert!(r.stderr.contains("overlaps the source"), "{}", r.stderr);
    lab.run(&["run", "web"]).code(2);
    assert!(!lab.src().join("sub").exists());
}

#[test]
fn a_source_given_through_a_symlink_cannot_nest_into_itself() {
    let lab = Lab::new();
    lab.write("a.txt", b"a");
    std::os::unix::fs::symlink(lab.src(), lab.path("srcSlink")).unwrap();
    lab.config("jobs:\n  web:\n    source: {dir}/srcSlink\n    remote: {src}/sub\n");
    let r = lab.run(&["check"]);
    r.code(2);
    assert!(r.stderr.contains("overlaps the source"), "{}", r.stderr);
    lab.run(&["run", "web"]).code(2);
    lab.run(&["run", "web"]).code(2);
    assert!(
        !lab.src().join("sub").exists(),
        "no copy nested in the source"
    );
}

#[test]
fn a_symlink_made_after_load_is_caught_at_run_time() {
    // the daemon loaded the jobs file before the link appeared: the run
    // checks again
    let lab = Lab::new();
    lab.write("a.txt", b"a");
    // `later` leads elsewhere when the daemon loads the file, then is
    // swapped (atomically) for a link to the source
    fs::create_dir(lab.path("elsewhere")).unwrap();
    std::os::unix::fs::symlink(lab.path("elsewhere"), lab.path("later")).unwrap();
    lab.config("jobs:\n  web:\n    source: {src}\n    remote: {dir}/later/sub\n    schedule: \"* * * * * *\"\n");
    // (it has loaded the file once it says it started)
    let mut d = common::daemon::DaemonProc::start(&lab);
    std::os::unix::fs::symlink(lab.src(), lab.path("later.new")).unwrap();
    fs::rename(lab.path("later.new"), lab.path("later")).unwrap();
    let t = std::time::Instant::now();
    let mut refused = false;
    while t.elapsed() < std::time::Duration::from_secs(20) && !refused {
        std::thread::sleep(std::time::Duration::from_millis(300));
        refused = lab.log().iter().any(|r| {
            r["reason"]
                .as_str()
                .is_some_and(|x| x.contains("overlaps the source"))
        });
    }
    d.stop();
    assert!(refused, "a run refused the target: {:?}", lab.log());
    let nested = lab.src().join("sub/sub");
    assert!(!nested.exists(), "no copy nested in the source");
}

// ---- finding 9: resource limits --------------------------------------------

/// A 9-level "billion laughs" jobs file (9^9 nodes once expanded).
fn billion_laughs() -> String {
    let mut y = String::from("x0: &x0 [lol]\n");
    for i in 1..=9 {
        let refs = vec![format!("*x{}", i - 1); 9].join(", ");
        y.push_str(&format!("x{i}: &x{i} [{refs}]\n"));
    }
    y.push_str("jobs: {}\n");
    y
}

/// Limit the address space of a child (so that the old behaviour, an
/// unbounded expansion, ends in an allocation failure, not a swapping box).
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

#[test]
fn a_billion_laughs_jobs_file_is_a_clear_config_error() {
    let lab = Lab::new();
    fs::write(lab.path("jobs.yaml"), billion_laughs()).unwrap();
    let mut c = lab.cmd();
    c.arg("check");
    limit_memory(&mut c, 1 << 30);
    let t = std::time::Instant::now();
    let r = Run::from(c.output().unwrap());
    r.code(2);
    assert!(r.stderr.contains("aliases expand"), "{}", r.stderr);
    assert!(t.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn the_daemon_survives_a_billion_laughs_reload() {
    let lab = Lab::new();
    lab.write("a.txt", b"a");
    lab.job("schedule: \"0 0 1 1 *\"");
    let err = lab.path("daemon.err");
    let mut c = lab.cmd();
    c.arg("daemon")
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&err).unwrap());
    limit_memory(&mut c, 1 << 30);
    let mut d = c.spawn().unwrap();
    let wait_for = |what: &str| {
        let t = std::time::Instant::now();
        while t.elapsed() < std::time::Duration::from_secs(20) {
            if fs::read_to_string(&err).unwrap_or_default().contains(what) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        false
    };
    assert!(wait_for("daemon started"));
    fs::write(lab.path("jobs.yaml"), billion_laughs()).unwrap();
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    unsafe { libc::kill(d.id() as i32, libc::SIGHUP) };
    let refused = wait_for("reload refused");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let alive = d.try_wait().unwrap().is_none();
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    let _ = d.wait();
    let text = fs::read_to_string(&err).unwrap();
    assert!(alive, "the daemon died on reload: {text}");
    assert!(refused && text.contains("aliases expand"), "{text}");
}

#[test]
fn errors_and_warnings_per_record_are_capped_with_a_count() {
    let lab = Lab::new();
    lab.write("a.txt", b"a");
    for i in 0..300 {
        let p = std::ffi::CString::new(format!("{}/fifo{i:03}", lab.src().display())).unwrap();
        // SAFETY: `p` is a valid NUL-terminated path for the call.
        assert_eq!(unsafe { libc::mkfifo(p.as_ptr(), 0o644) }, 0);
    }
    lab.job("");
    lab.run(&["run", "web"]).code(0);
    let rec = lab.last();
    let w = rec["warnings"].as_array().unwrap();
    assert_eq!(w.len(), 101, "100 kept and a count");
    assert_eq!(w[100]["message"], "... and 200 more warnings");
    let line = fs::read_to_string(lab.log_path()).unwrap();
    assert!(line.len() < 32 << 10, "{} bytes", line.len());
}

#[test]
fn include_globs_are_capped() {
    let lab = Lab::new();
    fs::create_dir(lab.path("jobs.d")).unwrap();
    for i in 0..1001 {
        fs::write(lab.path(&format!("jobs.d/j{i:04}.yaml")), "jobs: {}\n").unwrap();
    }
    lab.config("include: jobs.d/*.yaml\njobs:\n  web:\n    source: {src}\n    remote: {dst}\n");
    let r = lab.run(&["check"]);
    r.code(2);
    assert!(r.stderr.contains("more than 1000 files"), "{}", r.stderr);
    fs::remove_file(lab.path("jobs.d/j1000.yaml")).unwrap();
    lab.run(&["check"]).code(0);
}

// ---- finding 8: terminal and journal injection -----------------------------

/// No ESC, no forged line: every line starts as `ok` says.
fn assert_clean(what: &str, out: &str, ok: &dyn Fn(&str) -> bool) {
    assert!(!out.contains('\x1b'), "{what}: ESC printed raw: {out:?}");
    for l in out.lines() {
        assert!(ok(l), "{what}: forged line {l:?} in {out:?}");
    }
}

#[test]
fn hostile_names_are_escaped_in_run_output_dry_run_log_table_and_journal_lines() {
    use std::os::unix::ffi::OsStrExt;
    let lab = Lab::new();
    let evil = b"a\n<0>forged \x1b[31mred";
    let newer = b"new\x1b]0;title\x07\n<0>x";
    let os = |b: &'static [u8]| std::ffi::OsStr::from_bytes(b);
    fs::write(lab.src().join(os(evil)), "x").unwrap();
    // a non-empty directory where the source has a file: an error naming it
    fs::create_dir_all(lab.dst().join(os(evil))).unwrap();
    fs::write(lab.dst().join(os(evil)).join("inner"), "y").unwrap();
    lab.job("");
    let r = lab.run(&["run", "--dry-run", "web"]);
    // (`.d..t` for the root: its mtime may differ by a clock tick)
    assert_clean("dry run", &r.stdout, &|l| {
        l.starts_with('#') || l.starts_with(">f") || l.starts_with("cd") || l == ".d..t...... ./"
    });
    fs::write(lab.src().join(os(newer)), "n").unwrap();
    let r = lab.run(&["run", "--dry-run", "web"]);
    assert!(
        r.stdout
            .contains(">f+++++++++ new\\#033]0;title\\#007\\#012<0>x"),
        "{}",
        r.stdout
    );
    let r = lab.run(&["run", "web"]);
    r.code(1);
    assert_clean("run", &r.stdout, &|l| l.starts_with("web -> "));
    assert_clean("run stderr", &r.stderr, &|l| l.starts_with("syncjob: "));
    let r = lab.run(&["log"]);
    assert_clean("log", &r.stdout, &|l| {
        l.starts_with("TIME") || l.starts_with("20")
    });
    assert!(
        r.stdout.contains("a\\#012<0>forged \\#033[31mred"),
        "{}",
        r.stdout
    );

    // the daemon's journal lines (`<N>` priority prefixes)
    lab.job("schedule: \"* * * * * *\"");
    let err = lab.path("daemon.err");
    let mut d = lab
        .cmd()
        .arg("daemon")
        .env("JOURNAL_STREAM", "8:1234")
        .stdout(std::process::Stdio::null())
        .stderr(fs::File::create(&err).unwrap())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while t.elapsed() < std::time::Duration::from_secs(20)
        && !fs::read_to_string(&err).unwrap().contains("failed")
    {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // SAFETY: kill(2) on the pid of a child this test started and has not reaped.
    unsafe { libc::kill(d.id() as i32, libc::SIGTERM) };
    d.wait().unwrap();
    let text = fs::read_to_string(&err).unwrap();
    assert!(text.contains("forged"), "{text}");
    assert_clean("journal", &text, &|l| {
        ["<3>", "<4>", "<6>"].iter().any(|p| l.starts_with(p))
    });
}
