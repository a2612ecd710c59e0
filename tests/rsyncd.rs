//! rsync daemon targets against a real `rsync --daemon` started by the test.

mod common;
use common::rsyncd::{PASSWORD, Rsyncd, private_file, rsync_job};
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn populate(lab: &Lab) {
    lab.write("index.html", b"<h1>hello</h1>\n");
    lab.write("css/site.css", b"body{}\n");
    lab.write("with space.txt", b"space\n");
    lab.write("\u{fc}n\u{ef}c\u{f6}d\u{e9}.txt", b"unicode\n");
    lab.write("-leading-dash", b"dash\n");
    lab.write("new\nline", b"newline in name\n");
    lab.write("back\\#012slash", b"a literal rsync escape in a name\n");
    lab.write("it's \"quoted\" $(x).txt", b"shell metacharacters\n");
    lab.write("sp -> ace", b"an arrow in a name\n");
    lab.write("bin/run.sh", b"#!/bin/sh\necho hi\n");
    fs::set_permissions(
        lab.src().join("bin/run.sh"),
        fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    lab.write("big.bin", &vec![7u8; 3 << 20]);
    lab.write("cache.gz", b"excluded");
    lab.write("old/a/b/c.txt", b"deep\n");
    lab.write("old/a/d.txt", b"deep\n");
    fs::create_dir_all(lab.src().join("empty/dir")).unwrap();
    std::os::unix::fs::symlink("index.html", lab.src().join("home.html")).unwrap();
    set_mtime(&lab.src().join("index.html"), 1_600_000_000, 0);
    set_mtime(&lab.src().join("css"), 1_200_000_000, 0);
}

fn check_populated(dst: &Path) {
    assert_eq!(
        fs::read(dst.join("new\nline")).unwrap(),
        b"newline in name\n"
    );
    assert_eq!(
        fs::read(dst.join("it's \"quoted\" $(x).txt")).unwrap(),
        b"shell metacharacters\n"
    );
    assert_eq!(fs::read(dst.join("big.bin")).unwrap(), vec![7u8; 3 << 20]);
    assert_eq!(mode(&dst.join("bin/run.sh")), 0o750);
    assert_eq!(mtime(&dst.join("index.html")).0, 1_600_000_000);
    assert_eq!(mtime(&dst.join("css")).0, 1_200_000_000);
    assert_eq!(
        fs::read_link(dst.join("home.html")).unwrap(),
        Path::new("index.html")
    );
    assert!(dst.join("empty/dir").is_dir());
    assert!(!dst.join("cache.gz").exists());
}

const EXCL: &[&str] = &["--exclude", "*.gz"];

#[test]
fn initial_incremental_delete_and_excludes_to_an_rsync_daemon() {
    let lab = Lab::new();
    let d = Rsyncd::start(&lab.path("rsyncd"));
    populate(&lab);
    rsync_job(&lab, &d, "delete: true\nexclude: [\"*.gz\"]");
    let dst = d.module.join("web");
    let r = lab.run(&["run", "web"]);
    r.code(0);
    check_populated(&dst);
    assert_eq!(rsync_diff(&lab.src(), &dst, EXCL), "");
    let rec = lab.last();
    assert_eq!(rec["status"], "ok", "{rec}");
    // files counted from rsync's itemized output
    assert_eq!(rec["files_transferred"], 13, "{rec}");
    assert!(
        rec["bytes_transferred"].as_u64().unwrap() >= 3 << 20,
        "{rec}"
    );
    assert_eq!(rec["target"], d.url("web"));
    // the password is never in the output or the log
    let log = fs::read_to_string(lab.log_path()).unwrap();
    assert!(
        !log.contains(PASSWORD) && !r.stdout.contains(PASSWORD) && !r.stderr.contains(PASSWORD)
    );

    // no-op, also when listing the target
    lab.run(&["run", "web", "--verify"]).code(0);
    assert_eq!(lab.last()["files_transferred"], 0, "{}", lab.last());
    assert_eq!(lab.last()["files_deleted"], 0, "{}", lab.last());

    // incremental: one changed, one added, a file and a whole tree gone
    // from the source; one extra and one excluded file on the target
    lab.write("index.html", b"<h1>changed</h1>\n");
    lab.write("css/new.css", b"new\n");
    fs::remove_file(lab.src().join("with space.txt")).unwrap();
    fs::remove_dir_all(lab.src().join("old")).unwrap();
    fs::write(dst.join("target-only"), b"x").unwrap();
    fs::write(dst.join("kept.gz"), b"excluded on target").unwrap();
    lab.run(&["run", "web", "--verify"]).code(0);
    let rec = lab.last();
    assert_eq!(rec["status"], "ok", "{rec}");
    assert_eq!(rec["files_transferred"], 2, "{rec}");
    // with space.txt, target-only, old/a/b/c.txt, old/a/d.txt, old/a/b, old/a, old
    assert_eq!(rec["files_deleted"], 7, "{rec}");
    assert!(
        dst.join("kept.gz").exists(),
        "excluded entries are left alone"
    );
    assert!(!dst.join("old").exists());
    assert_eq!(rsync_diff(&lab.src(), &dst, EXCL), "");

    // a type change: file -> directory, directory -> file
    fs::remove_file(lab.src().join("index.html")).unwrap();
    lab.write("index.html/inner", b"now a dir\n");
    fs::remove_dir_all(lab.src().join("empty")).unwrap();
    lab.write("empty", b"now a file\n");
    lab.run(&["run", "web"]).code(0);
    assert_eq!(rsync_diff(&lab.src(), &dst, EXCL), "");
}

#[test]
fn host_module_form_with_port_and_a_new_nested_root() {
    let lab = Lab::new();
    let d = Rsyncd::start(&lab.path("rsyncd"));
    lab.write("a/b.txt", b"b\n");
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: sync@127.0.0.1::site/deep/er/root\n    rsync: {{ password_file: {}, port: {} }}\n",
        d.password_file.display(),
        d.port
    ));
    lab.run(&["check"]).code(0);
    lab.run(&["run", "web"]).code(0);
    assert_eq!(
        rsync_diff(&lab.src(), &d.module.join("deep/er/root"), &[]),
        ""
    );
    // module root as the target
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: rsync://sync@127.0.0.1:{}/site\n    delete: true\n    rsync: {{ password_file: {} }}\n",
        d.port,
        d.password_file.display()
    ));
    lab.run(&["run", "web"]).code(0);
    assert_eq!(rsync_diff(&lab.src(), &d.module, &[]), "");
}

#[test]
fn max_delete_and_empty_source_guards_hold_for_rsync_targets() {
    let lab = Lab::new();
    let d = Rsyncd::start(&lab.path("rsyncd"));
    for k in 0..5 {
        lab.write(&format!("f{k}"), b"x");
    }
    rsync_job(&lab, &d, "delete: true\nmax_delete: 2");
    lab.run(&["run", "web"]).code(0);
    for k in 0..4 {
        fs::remove_file(lab.src().join(format!("f{k}"))).unwrap();
    }
    lab.run(&["run", "web"]).code(1);
    let rec = lab.last();
    assert_eq!(rec["files_deleted"], 2, "{rec}");
    assert!(
        rec["reason"].as_str().unwrap().contains("max_delete"),
        "{rec}"
    );
    assert_eq!(listing(&d.module.join("web")).len(), 3);
    // an empty source deletes nothing
    fs::remove_file(lab.src().join("f4")).unwrap();
    lab.run(&["run", "web"]).code(1);
    assert_eq!(listing(&d.module.join("web")).len(), 3);
}

#[test]
fn wrong_password_is_permanent_with_rsyncs_message() {
    let lab = Lab::new();
    let d = Rsyncd::start(&lab.path("rsyncd"));
    lab.write("a", b"a");
    private_file(&lab.path("wrong.pass"), "not-the-password\n");
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: {}\n    rsync: {{ password_file: {} }}\n    retries: 3\n",
        d.url("web"),
        lab.path("wrong.pass").display()
    ));
    let t = Instant::now();
    lab.run(&["run", "web"]).code(1);
    let rec = lab.last();
    let reason = rec["reason"].as_str().unwrap();
    assert!(
        reason.contains("@ERROR: auth failed on module site"),
        "{reason}"
    );
    assert!(reason.contains("not retried"), "{reason}");
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "no backoff: {:?}",
        t.elapsed()
    );
    assert!(!d.module.join("web").exists());
}

#[test]
fn missing_module_is_permanent_with_rsyncs_message() {
    let lab = Lab::new();
    let d = Rsyncd::start(&lab.path("rsyncd"));
    lab.write("a", b"a");
    lab.config(&format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: rsync://sync@127.0.0.1:{}/nosuchmodule/x\n    {}\n    retries: 3\n",
        d.port,
        d.yaml()
    ));
    let t = Instant::now();
    lab.run(&["run", "web"]).code(1);
    let reason = lab.last()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("Unknown module 'nosuchmodule'"), "{reason}");
    assert!(reason.contains("not retried"), "{reason}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_daemon_that_is_down_is_retried_until_it_is_up() {
    let lab = Lab::new();
    let mut d = Rsyncd::start(&lab.path("rsyncd"));
    lab.write("a", b"a");
    rsync_job(&lab, &d, "retries: 4");
    d.stop();
    let child = lab.spawn(&["run", "web"]);
    std::thread::sleep(Duration::from_millis(1500));
    d.launch();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", lab.last());
    assert_eq!(rsync_diff(&lab.src(), &d.module.join("web"), &[]), "");
    // and down for good: retried, then failed with the reason
    d.stop();
    lab.write("b", b"b");
    rsync_job(&lab, &d, "retries: 1");
    lab.run(&["run", "web"]).code(1);
    let reason = lab.last()["reason"].as_str().unwrap().to_string();
    assert!(reason.contains("Connection refused"), "{reason}");
    assert!(reason.contains("after 1 retries"), "{reason}");
}

#[test]
fn check_refuses_a_readable_password_file_and_a_missing_rsync() {
    let lab = Lab::new();
    let d = Rsyncd::start(&lab.path("rsyncd"));
    lab.write("a", b"a");
    rsync_job(&lab, &d, "");
    lab.run(&["check"]).code(0);
    fs::set_permissions(&d.password_file, fs::Permissions::from_mode(0o644)).unwrap();
    let r = lab.run(&["check"]);
    r.code(2);
    assert!(r.stderr.contains("must be mode 0600"), "{}", r.stderr);
    assert!(!r.stderr.contains(PASSWORD));
    fs::set_permissions(&d.password_file, fs::Permissions::from_mode(0o600)).unwrap();
    // no rsync in PATH
    fs::create_dir(lab.path("emptybin")).unwrap();
    let out = lab
        .cmd()
        .arg("check")
        .env("PATH", lab.path("emptybin"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("job web") && err.contains("`rsync` binary"),
        "{err}"
    );
    // a job with only local targets does not need rsync
    lab.job("");
    let out = lab
        .cmd()
        .arg("check")
        .env("PATH", lab.path("emptybin"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn dry_run_lists_and_changes_nothing() {
    let lab = Lab::new();
    let d = Rsyncd::start(&lab.path("rsyncd"));
    lab.write("a", b"a");
    rsync_job(&lab, &d, "");
    let r = lab.run(&["run", "web", "--dry-run"]);
    r.code(0);
    assert!(r.stdout.contains(">f+++++++++ a"), "{}", r.stdout);
    assert!(!d.module.join("web").exists());
}

#[test]
fn checksum_compare_sends_only_changed_content() {
    let lab = Lab::new();
    let d = Rsyncd::start(&lab.path("rsyncd"));
    lab.write("same", b"same content");
    lab.write("changed", b"old content!");
    rsync_job(&lab, &d, "compare: checksum");
    lab.run(&["run", "web"]).code(0);
    let dst = d.module.join("web");
    // same size, same mtime, other content on the target
    fs::write(dst.join("changed"), b"OLD CONTENT!").unwrap();
    let m = mtime(&lab.src().join("changed"));
    set_mtime(&dst.join("changed"), m.0, m.1 as u32);
    lab.run(&["run", "web"]).code(0);
    let rec = lab.last();
    assert_eq!(rec["files_transferred"], 1, "{rec}");
    assert_eq!(fs::read(dst.join("changed")).unwrap(), b"old content!");
}

#[test]
fn many_files_go_in_parallel_batches() {
    let lab = Lab::new();
    let d = Rsyncd::start(&lab.path("rsyncd"));
    for k in 0..1500 {
        lab.write(&format!("d{}/f{k}", k % 3), format!("{k}").as_bytes());
    }
    rsync_job(&lab, &d, "streams: 4");
    lab.run(&["run", "web"]).code(0);
    let rec = lab.last();
    assert_eq!(rec["files_transferred"], 1500, "{rec}");
    assert_eq!(rsync_diff(&lab.src(), &d.module.join("web"), &[]), "");
}

/// Symlinks planted on the target (to a directory outside the module) are
/// replaced or deleted as links; nothing is written or deleted through them.
#[test]
fn symlinks_planted_on_the_target_are_never_followed() {
    let lab = Lab::new();
    let d = Rsyncd::start(&lab.path("rsyncd"));
    let outside = lab.path("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("keep"), b"precious").unwrap();
    lab.write("d/x", b"into d");
    lab.write("f", b"f");
    rsync_job(&lab, &d, "delete: true");
    lab.run(&["run", "web"]).code(0);
    let dst = d.module.join("web");
    // d becomes a link to the outside directory; e is a link only on the target
    fs::remove_dir_all(dst.join("d")).unwrap();
    std::os::unix::fs::symlink(&outside, dst.join("d")).unwrap();
    std::os::unix::fs::symlink(&outside, dst.join("e")).unwrap();
    lab.run(&["run", "web", "--verify"]).code(0);
    assert!(dst.join("d").symlink_metadata().unwrap().is_dir());
    assert_eq!(fs::read(dst.join("d/x")).unwrap(), b"into d");
    assert!(!dst.join("e").exists() && dst.join("e").symlink_metadata().is_err());
    assert_eq!(listing(&outside), ["keep"]);
    assert_eq!(fs::read(outside.join("keep")).unwrap(), b"precious");
    assert_eq!(rsync_diff(&lab.src(), &dst, &[]), "");
}

/// A directory gone from the source that still holds an excluded entry on
/// the target is kept, with a warning; nothing inside it is touched.
#[test]
fn a_directory_holding_excluded_entries_is_kept_with_a_warning() {
    let lab = Lab::new();
    let d = Rsyncd::start(&lab.path("rsyncd"));
    lab.write("gone/sub/f", b"f");
    lab.write("stay", b"s");
    rsync_job(&lab, &d, "delete: true\nexclude: [\"*.gz\"]");
    lab.run(&["run", "web"]).code(0);
    let dst = d.module.join("web");
    fs::write(dst.join("gone/sub/x.gz"), b"excluded").unwrap();
    fs::remove_dir_all(lab.src().join("gone")).unwrap();
    lab.run(&["run", "web", "--verify"]).code(0);
    let rec = lab.last();
    assert_eq!(rec["files_deleted"], 1, "only gone/sub/f: {rec}");
    let warnings = rec["warnings"].to_string();
    assert!(
        warnings.contains("gone/sub") && warnings.contains("directory not deleted"),
        "{rec}"
    );
    assert_eq!(fs::read(dst.join("gone/sub/x.gz")).unwrap(), b"excluded");
}
