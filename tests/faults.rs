//! Fault injection on real processes: kill -9 mid-copy, a target's sshd
//! dying, a full target disk, a vanished source, files changing under us,
//! permission errors, many concurrent runs, escaping symlinks, bad input.
//! Nothing may be lost: no partial file at a final name, no deletion caused
//! by a vanished source, no torn log line.

mod common;
use common::sshd::{Sshd, ssh_job, ssh_job_helper};
use common::*;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const MIB: usize = 1 << 20;

/// The single byte a file consists of, or None when its bytes differ
/// (a mixed or partial file).
fn uniform(p: &Path) -> Option<u8> {
    let b = fs::read(p).unwrap();
    let first = *b.first()?;
    b.iter().all(|x| *x == first).then_some(first)
}

fn temps(dir: &Path) -> Vec<String> {
    listing(dir)
        .into_iter()
        .filter(|n| n.contains(".syncjob-tmp."))
        .collect()
}

/// Whether some process is writing an unnamed file (`O_TMPFILE`, as the
/// remote helper does) in `dir`: a descriptor of it reads
/// `DIR/#INODE (deleted)` in /proc.
fn unnamed_in(dir: &Path) -> bool {
    let Ok(procs) = fs::read_dir("/proc") else {
        return false;
    };
    let prefix = format!("{}/#", dir.display());
    procs.flatten().any(|p| {
        fs::read_dir(p.path().join("fd")).is_ok_and(|fds| {
            fds.flatten().any(|fd| {
                fs::read_link(fd.path()).is_ok_and(|l| {
                    let l = l.to_string_lossy();
                    l.starts_with(&prefix) && l.ends_with(" (deleted)")
                })
            })
        })
    })
}

/// Wait until a copy into `dir` is under way: a temporary file there, or
/// an unnamed one being written (`false`: the run ended first).
fn wait_for_temp(dir: &Path, child: &mut std::process::Child) -> bool {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(60) {
        if !temps(dir).is_empty() || unnamed_in(dir) {
            return true;
        }
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    panic!("no temporary or unnamed file appeared in {}", dir.display());
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);
impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs at {}", at.display());
        Tmpfs(at.to_path_buf())
    }
    fn unmount(&self) {
        let st = Command::new("umount").arg(&self.0).status().unwrap();
        assert!(st.success());
    }
}
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .stderr(Stdio::null())
            .status();
    }
}

/// Whether this process may mount file systems (root with CAP_SYS_ADMIN).
fn can_mount(lab: &Lab) -> bool {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return false;
    }
    let p = lab.path("probe-mnt");
    fs::create_dir_all(&p).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&p)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if ok {
        let _ = Command::new("umount").arg(&p).status();
    } else {
        eprintln!("skipped: mount is not permitted here");
    }
    ok
}

/// kill -9 in the middle of copying a large file over an older version:
/// the final name holds the old file byte for byte, the lock is free, the
/// next run converges and removes the stale temporary file.
fn kill9_mid_copy(lab: &Lab, dst: &Path, size: usize) {
    kill9_mid_copy_with(lab, dst, size, false)
}

/// `helper`: the receiving side is `syncjob helper`, which writes an
/// unnamed file (gone with its descriptor) or removes its temporary file
/// itself when the stream breaks.
fn kill9_mid_copy_with(lab: &Lab, dst: &Path, size: usize, helper: bool) {
    lab.write("big.bin", &vec![b'N'; size]);
    lab.write("small.txt", b"small");
    for attempt in 0.. {
        // the old version at the final name
        fs::create_dir_all(dst).unwrap();
        fs::write(dst.join("big.bin"), vec![b'O'; size / 2]).unwrap();
        set_mtime(&dst.join("big.bin"), 1_500_000_000, 0);
        let mut child = lab.spawn(&["run", "web"]);
        let caught = wait_for_temp(dst, &mut child);
        // SAFETY: kill(2) takes plain integers; a stale pid is ESRCH
        unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
        let st = child.wait().unwrap();
        if !caught || st.code().is_some() {
            // the run finished before we could kill it: try again
            assert!(attempt < 5, "could never kill the run mid-copy");
            let _ = fs::remove_dir_all(dst);
            let _ = fs::remove_file(lab.log_path());
            // and the manifest that run left (else the next one trusts it
            // and copies nothing)
            let _ = fs::remove_dir_all(lab.state().join("manifests"));
            continue;
        }
        break;
    }
    let at_final = uniform(&dst.join("big.bin"));
    let len = fs::metadata(dst.join("big.bin")).unwrap().len() as usize;
    assert!(
        (at_final == Some(b'O') && len == size / 2) || (at_final == Some(b'N') && len == size),
        "the final name holds the old or the new file, never a partial one"
    );
    if helper {
        let t0 = std::time::Instant::now();
        while !temps(dst).is_empty() && t0.elapsed() < std::time::Duration::from_secs(10) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            temps(dst).is_empty(),
            "the helper removes its temporary file: {:?}",
            temps(dst)
        );
    } else {
        assert!(
            !temps(dst).is_empty(),
            "the killed run left its temporary file"
        );
    }
    assert!(lab.log().is_empty(), "a killed run writes no record");
    // the lock died with the process
    let v: serde_json::Value =
        serde_json::from_str(&lab.run(&["status", "--json"]).stdout).unwrap();
    assert_eq!(v["running"].as_array().unwrap().len(), 0);
    lab.run(&["run", "web"]).code(0);
    assert_eq!(uniform(&dst.join("big.bin")), Some(b'N'));
    assert_eq!(rsync_diff(&lab.src(), dst, &["-c"]), "");
    assert!(
        temps(dst).is_empty(),
        "stale temporary removed: {:?}",
        temps(dst)
    );
}

#[test]
fn kill_9_mid_copy_locally_leaves_old_or_new_and_converges() {
    let lab = Lab::new();
    lab.job("");
    kill9_mid_copy(&lab, &lab.dst(), 400 * MIB);
}

#[test]
fn kill_9_mid_copy_over_ssh_leaves_old_or_new_and_converges() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    let dst = lab.dst();
    ssh_job(&lab, &s, "");
    kill9_mid_copy(&lab, &dst, 150 * MIB);
}

#[test]
fn kill_9_mid_copy_through_the_remote_helper_leaves_old_or_new_and_converges() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    let dst = lab.dst();
    ssh_job_helper(&lab, &s, "");
    kill9_mid_copy_with(&lab, &dst, 150 * MIB, true);
}

#[test]
fn sshd_killed_and_restarted_mid_transfer_is_retried_and_completes() {
    let lab = Lab::new();
    let mut s = Sshd::start(&lab.path("sshd"));
    let dst = lab.dst();
    lab.write("big.bin", &vec![b'x'; 120 * MIB]);
    for i in 0..20 {
        lab.write(&format!("d/{i}"), format!("{i}").as_bytes());
    }
    ssh_job(&lab, &s, "retries: 3");
    let mut child = lab.spawn(&["run", "web"]);
    assert!(wait_for_temp(&dst, &mut child), "the run ended too early");
    s.restart();
    let st = child.wait().unwrap();
    assert_eq!(st.code(), Some(0), "{:?}", lab.log());
    let rec = lab.last();
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(rsync_diff(&lab.src(), &dst, &["-c"]), "");
    assert!(temps(&dst).is_empty(), "{:?}", temps(&dst));
}

/// A target file system that fills up: the run fails with "no space", the
/// files already there are intact, and no temporary file is left.
fn disk_full(lab: &Lab, dst: &Path) {
    let _mnt = Tmpfs::mount(dst, "4m");
    fs::write(dst.join("keep.txt"), b"precious").unwrap();
    set_mtime(&dst.join("keep.txt"), 1_400_000_000, 0);
    lab.write("keep.txt", b"precious, new");
    lab.write("a-small.txt", b"fits");
    lab.write("z-big.bin", &vec![3u8; 8 * MIB]);
    lab.run(&["run", "web"]).code(1);
    let rec = lab.last();
    assert_eq!(rec["status"], "failed");
    let text = rec.to_string().to_lowercase();
    assert!(text.contains("no space"), "{rec}");
    assert!(
        temps(dst).is_empty(),
        "temporary files left: {:?}",
        temps(dst)
    );
    assert!(
        !dst.join("z-big.bin").exists(),
        "no partial file at the final name"
    );
    let keep = fs::read(dst.join("keep.txt")).unwrap();
    assert!(
        keep == b"precious" || keep == b"precious, new",
        "existing file intact: {keep:?}"
    );
    // room again: the next run converges
    lab.write("z-big.bin", &vec![3u8; MIB]);
    lab.run(&["run", "web"]).code(0);
    assert_eq!(rsync_diff(&lab.src(), dst, &["-c"]), "");
}

#[test]
fn full_target_disk_locally_fails_with_no_space_and_loses_nothing() {
    let lab = Lab::new();
    if !can_mount(&lab) {
        return;
    }
    lab.job("");
    disk_full(&lab, &lab.dst());
}

#[test]
fn full_target_disk_over_ssh_fails_with_no_space_and_loses_nothing() {
    let lab = Lab::new();
    if !can_mount(&lab) {
        return;
    }
    let s = Sshd::start(&lab.path("sshd"));
    let dst = lab.dst();
    ssh_job(&lab, &s, "retries: 1");
    disk_full(&lab, &dst);
}

#[test]
fn full_target_disk_through_the_remote_helper_fails_with_no_space_and_loses_nothing() {
    let lab = Lab::new();
    if !can_mount(&lab) {
        return;
    }
    let s = Sshd::start(&lab.path("sshd"));
    let dst = lab.dst();
    ssh_job_helper(&lab, &s, "retries: 1");
    disk_full(&lab, &dst);
}

#[test]
fn unmounted_source_with_delete_deletes_nothing() {
    let lab = Lab::new();
    let src = lab.src();
    let mounted = can_mount(&lab);
    let mnt = mounted.then(|| Tmpfs::mount(&src, "8m"));
    for i in 0..10 {
        lab.write(&format!("f{i}.txt"), b"data");
    }
    lab.job("delete: true");
    lab.run(&["run", "web"]).code(0);
    let before = listing(&lab.dst());
    assert_eq!(before.len(), 10);
    // the source file system goes away (or, without root, the tree is emptied)
    match &mnt {
        Some(m) => m.unmount(),
        None => {
            for i in 0..10 {
                fs::remove_file(src.join(format!("f{i}.txt"))).unwrap();
            }
        }
    }
    assert!(listing(&src).is_empty());
    lab.run(&["run", "web"]).code(1);
    let rec = lab.last();
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["files_deleted"], 0);
    assert!(rec["reason"].as_str().unwrap().contains("empty"), "{rec}");
    assert_eq!(listing(&lab.dst()), before, "nothing deleted");
    // the source directory itself gone: also nothing deleted
    fs::remove_dir(&src).unwrap();
    lab.run(&["run", "web"]).code(1);
    assert!(
        lab.last()["reason"]
            .as_str()
            .unwrap()
            .contains("nothing was changed")
    );
    assert_eq!(listing(&lab.dst()), before);
}

/// A writer that rewrites `path` in place with a new uniform content.
fn rewrite(path: &Path, byte: u8, size: usize) {
    let mut f = fs::OpenOptions::new().write(true).open(path).unwrap();
    let chunk = vec![byte; MIB];
    for _ in 0..size / MIB {
        f.write_all(&chunk).unwrap();
    }
}

#[test]
fn a_file_rewritten_during_the_copy_is_copied_again_never_mixed() {
    rewritten_during_the_copy(false);
}

#[test]
fn a_file_rewritten_during_a_copy_through_the_remote_helper_is_copied_again_never_mixed() {
    rewritten_during_the_copy(true);
}

fn rewritten_during_the_copy(helper: bool) {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    let dst = lab.dst();
    let size = 150 * MIB;
    lab.write("big.bin", &vec![1u8; size]);
    set_mtime(&lab.src().join("big.bin"), 1_600_000_000, 0);
    if helper {
        ssh_job_helper(&lab, &s, "");
    } else {
        ssh_job(&lab, &s, "");
    }
    let mut child = lab.spawn(&["run", "web"]);
    assert!(wait_for_temp(&dst, &mut child), "the run ended too early");
    // rewrite the whole file while it is on its way
    rewrite(&lab.src().join("big.bin"), 2, size);
    assert!(child.wait().unwrap().success());
    let rec = lab.last();
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(
        uniform(&dst.join("big.bin")),
        Some(2),
        "the new content, whole"
    );
    let w = &rec["warnings"];
    assert!(
        w.as_array()
            .unwrap()
            .iter()
            .any(|x| x["path"] == "big.bin" && x["message"].as_str().unwrap().contains("changed")),
        "the change was detected: {rec}"
    );
}

#[test]
fn a_file_that_keeps_changing_is_reported_and_never_mixed() {
    let lab = Lab::new();
    let size = 64 * MIB;
    lab.write("hot.bin", &vec![0u8; size]);
    lab.write("cold.txt", b"cold");
    lab.job("");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let p = lab.src().join("hot.bin");
        std::thread::spawn(move || {
            let mut b = 1u8;
            while !stop.load(Ordering::Relaxed) {
                rewrite(&p, b, size);
                b = b.wrapping_add(1).max(1);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let r = lab.run(&["run", "web"]);
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let rec = lab.last();
    assert_eq!(fs::read(lab.dst().join("cold.txt")).unwrap(), b"cold");
    let hot = lab.dst().join("hot.bin");
    if hot.exists() {
        assert!(
            uniform(&hot).is_some(),
            "never a mixed file at the final name"
        );
    }
    if rec["status"] == "failed" {
        r.code(1);
        let e = &rec["errors"][0];
        assert_eq!(e["path"], "hot.bin", "{rec}");
        assert!(e["message"].as_str().unwrap().contains("changed"), "{rec}");
    } else {
        // it may have caught a quiet moment; then it says so or it is whole
        assert!(uniform(&hot).is_some());
    }
    assert!(temps(&lab.dst()).is_empty());
}

/// Run the binary as `nobody` (when root) so that permissions apply.
fn as_nobody(lab: &Lab, args: &[&str]) -> Run {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        "--inh-caps=-all",
        BIN,
    ])
    .arg("-c")
    .arg(lab.path("jobs.yaml"))
    .arg("--state-dir")
    .arg(lab.state())
    .args(args)
    .env("TZ", "UTC")
    .env("HOME", lab.path("home"))
    .stdin(Stdio::null());
    Run::from(c.output().unwrap())
}

#[test]
fn permission_denied_on_a_source_file_and_a_target_dir_is_reported_and_the_rest_proceeds() {
    let lab = Lab::new();
    lab.write("ok.txt", b"ok");
    lab.write("secret.txt", b"no");
    lab.write("ro/new.txt", b"new");
    lab.write("rw/new.txt", b"new");
    lab.job("");
    let dst = lab.dst();
    fs::create_dir_all(dst.join("ro")).unwrap();
    fs::create_dir_all(dst.join("rw")).unwrap();
    fs::set_permissions(
        lab.src().join("secret.txt"),
        fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    let r = if is_root() {
        // everything but the two denied entries belongs to nobody
        for p in [
            lab.dir.path().to_path_buf(),
            lab.src(),
            lab.src().join("ro"),
            lab.src().join("rw"),
        ] {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::create_dir_all(lab.state()).unwrap();
        for p in [dst.clone(), dst.join("rw"), lab.state()] {
            std::os::unix::fs::chown(&p, Some(65534), Some(65534)).unwrap();
        }
        fs::set_permissions(dst.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        as_nobody(&lab, &["run", "web"])
    } else {
        fs::set_permissions(dst.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        lab.run(&["run", "web"])
    };
    r.code(1);
    let rec = lab.last();
    assert_eq!(rec["status"], "failed");
    let errors: Vec<String> = rec["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}: {}", e["path"].as_str().unwrap(), e["message"]))
        .collect();
    assert!(
        errors.iter().any(|e| e.starts_with("secret.txt: ")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.starts_with("ro/new.txt: ")),
        "{errors:?}"
    );
    // (as nobody, setting the mode of the root-owned `ro` itself is also
    // refused: "operation not permitted")
    assert!(
        errors.iter().all(|e| {
            let e = e.to_lowercase();
            e.contains("permission denied") || e.contains("not permitted")
        }),
        "{errors:?}"
    );
    // the rest proceeded
    assert_eq!(fs::read(dst.join("ok.txt")).unwrap(), b"ok");
    assert_eq!(fs::read(dst.join("rw/new.txt")).unwrap(), b"new");
    assert!(!dst.join("secret.txt").exists());
    assert!(!dst.join("ro/new.txt").exists());
}

#[test]
fn a_hundred_concurrent_runs_over_ten_jobs_log_exactly_and_never_overlap() {
    let lab = Lab::new();
    let mut y = String::from("jobs:\n");
    for j in 0..10 {
        y.push_str(&format!(
            "  job{j}:\n    source: {{src}}\n    remote: {{dir}}/dst{j}\n    mode: full\n    before: 'mkdir {{dir}}/inside{j} || exit 9; sleep 0.05; rmdir {{dir}}/inside{j}'\n"
        ));
    }
    lab.config(&y);
    for i in 0..20 {
        lab.write(&format!("f{i}"), format!("{i}").as_bytes());
    }
    let children: Vec<_> = (0..100)
        .map(|i| {
            lab.cmd()
                .args(["run", &format!("job{}", i % 10)])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let codes: Vec<i32> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap().status.code().unwrap())
        .collect();
    assert!(codes.iter().all(|c| *c == 0 || *c == 75), "{codes:?}");
    let text = fs::read_to_string(lab.log_path()).unwrap();
    let recs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("torn line {e}: {l}")))
        .collect();
    assert_eq!(recs.len(), 100, "one record per run");
    let ok = recs.iter().filter(|r| r["status"] == "ok").count();
    let skipped = recs
        .iter()
        .filter(|r| r["status"] == "skipped" && r["reason"] == "locked")
        .count();
    assert_eq!(
        ok + skipped,
        100,
        "no failed run (a failed `before` means overlap)"
    );
    assert_eq!(ok, codes.iter().filter(|c| **c == 0).count());
    for j in 0..10 {
        assert_eq!(
            rsync_diff(&lab.src(), &lab.path(&format!("dst{j}")), &[]),
            ""
        );
    }
}

#[test]
fn a_symlinked_directory_on_the_target_is_never_deleted_through() {
    let lab = Lab::new();
    let outside = lab.path("outside");
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("precious"), b"keep me").unwrap();
    lab.write("a.txt", b"a");
    lab.write("docs/readme", b"r");
    fs::create_dir_all(lab.dst()).unwrap();
    // `docs` on the target is a symlink out of the tree; `old` too
    std::os::unix::fs::symlink(&outside, lab.dst().join("docs")).unwrap();
    std::os::unix::fs::symlink(&outside, lab.dst().join("old")).unwrap();
    lab.job("delete: true");
    lab.run(&["run", "web"]).code(0);
    assert_eq!(fs::read(outside.join("precious")).unwrap(), b"keep me");
    assert_eq!(listing(&outside), vec!["precious"]);
    assert!(lab.dst().join("docs").symlink_metadata().unwrap().is_dir());
    assert_eq!(fs::read(lab.dst().join("docs/readme")).unwrap(), b"r");
    assert!(
        lab.dst().join("old").symlink_metadata().is_err(),
        "the link itself went"
    );
    assert_eq!(rsync_diff(&lab.src(), &lab.dst(), &[]), "");
}

#[test]
fn huge_and_binary_jobs_files_are_clear_errors_and_nothing_is_synced() {
    let lab = Lab::new();
    lab.write("a", b"a");
    // 10 MB: a valid job followed by a giant comment-free list
    let mut y = String::from("jobs:\n  web:\n    source: {src}\n    remote: {dst}\n    exclude:\n");
    while y.len() < 10 * MIB {
        y.push_str("      - \"*.tmp-pattern-padding-padding-padding\"\n");
    }
    lab.config(&y);
    let t = Instant::now();
    let r = lab.run(&["run", "web"]);
    r.code(2);
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(r.stderr.contains("jobs.yaml:1:1: "), "{}", r.stderr);
    assert!(r.stderr.contains("too large"), "{}", r.stderr);
    assert!(!lab.dst().exists());
    // NUL bytes and invalid UTF-8
    fs::write(
        lab.path("jobs.yaml"),
        b"jobs:\n  web:\n    source: /x\xff\xfe\n",
    )
    .unwrap();
    let r = lab.run(&["check"]);
    r.code(2);
    assert!(
        r.stderr
            .contains("jobs.yaml:3:15: the jobs file is not valid UTF-8"),
        "{}",
        r.stderr
    );
    fs::write(lab.path("jobs.yaml"), b"jobs:\n  web: \x00\n").unwrap();
    let r = lab.run(&["check"]);
    r.code(2);
    assert!(r.stderr.contains("jobs.yaml:2:"), "{}", r.stderr);
}
