//! End-to-end runs of the real binary on temp trees, local → local.

mod common;
use common::*;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn populate(lab: &Lab) {
    lab.write("index.html", b"<h1>hello</h1>\n");
    lab.write("css/site.css", b"body{}\n");
    lab.write("deep/a/b/c/d.txt", b"deep\n");
    lab.write("with space.txt", b"space\n");
    lab.write("\u{fc}n\u{ef}c\u{f6}d\u{e9}.txt", b"unicode\n");
    lab.write("-leading-dash", b"dash\n");
    lab.write("new\nline", b"newline in name\n");
    lab.write("bin/run.sh", b"#!/bin/sh\necho hi\n");
    fs::set_permissions(
        lab.src().join("bin/run.sh"),
        fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    lab.write("secret.conf", b"key=1\n");
    fs::set_permissions(
        lab.src().join("secret.conf"),
        fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    fs::create_dir_all(lab.src().join("empty/dir")).unwrap();
    std::os::unix::fs::symlink("index.html", lab.src().join("home.html")).unwrap();
    std::os::unix::fs::symlink("../../etc/passwd", lab.src().join("css/outside")).unwrap();
    std::os::unix::fs::symlink("missing-target", lab.src().join("dangling")).unwrap();
    // distinctive mtimes with nanoseconds, set last (dirs after their contents)
    set_mtime(&lab.src().join("index.html"), 1_600_000_000, 123_456_789);
    set_mtime(&lab.src().join("css/site.css"), 1_500_000_000, 1);
    set_mtime(&lab.src().join("home.html"), 1_400_000_000, 0);
    set_mtime(&lab.src().join("empty/dir"), 1_300_000_000, 500);
    set_mtime(&lab.src().join("css"), 1_200_000_000, 0);
}

#[test]
fn initial_sync_mirrors_contents_modes_mtimes_links_and_odd_names() {
    let lab = Lab::new();
    populate(&lab);
    lab.job("delete: true");
    let r = lab.run(&["run", "web"]);
    r.code(0);
    let dst = lab.dst();
    assert_eq!(
        fs::read(dst.join("index.html")).unwrap(),
        b"<h1>hello</h1>\n"
    );
    assert_eq!(
        fs::read(dst.join("new\nline")).unwrap(),
        b"newline in name\n"
    );
    assert_eq!(fs::read(dst.join("-leading-dash")).unwrap(), b"dash\n");
    assert_eq!(mode(&dst.join("bin/run.sh")), 0o750);
    assert_eq!(mode(&dst.join("secret.conf")), 0o600);
    assert_eq!(mtime(&dst.join("index.html")), (1_600_000_000, 123_456_789));
    assert_eq!(mtime(&dst.join("css/site.css")), (1_500_000_000, 1));
    assert_eq!(
        mtime(&dst.join("css")),
        (1_200_000_000, 0),
        "directory mtime kept after writing into it"
    );
    assert_eq!(mtime(&dst.join("empty/dir")), (1_300_000_000, 500));
    assert!(dst.join("empty/dir").is_dir());
    assert_eq!(
        fs::read_link(dst.join("home.html")).unwrap(),
        Path::new("index.html")
    );
    assert_eq!(
        fs::read_link(dst.join("css/outside")).unwrap(),
        Path::new("../../etc/passwd")
    );
    assert!(
        fs::symlink_metadata(dst.join("css/outside"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read_link(dst.join("dangling")).unwrap(),
        Path::new("missing-target")
    );
    // rsync finds nothing left to do
    assert_eq!(rsync_diff(&lab.src(), &dst, &[]), "");
    // no temporary file left behind
    assert!(listing(&dst).iter().all(|n| !n.contains(".syncjob-tmp.")));
    let rec = lab.last();
    assert_eq!(rec["status"], "ok");
    assert_eq!(rec["trigger"], "manual");
    assert_eq!(rec["files_transferred"], 9);
    assert_eq!(rec["files_scanned"], 12);
    assert_eq!(
        rec["bytes_transferred"],
        15 + 7 + 5 + 6 + 8 + 5 + 16 + 18 + 6
    );
}

#[test]
fn incremental_transfers_only_changed_files_and_full_transfers_all() {
    let lab = Lab::new();
    populate(&lab);
    lab.job("");
    lab.run(&["run", "web"]).code(0);
    // a no-op run transfers nothing
    lab.run(&["run", "web"]).code(0);
    assert_eq!(lab.last()["files_transferred"], 0);
    // same size, new mtime: transferred
    lab.write("index.html", b"<h1>HELLO</h1>\n");
    set_mtime(&lab.src().join("index.html"), 1_600_000_100, 0);
    // only the mode changes: attributes set, no transfer
    fs::set_permissions(
        lab.src().join("secret.conf"),
        fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    lab.run(&["run", "web"]).code(0);
    let rec = lab.last();
    assert_eq!(rec["files_transferred"], 1);
    assert_eq!(
        fs::read(lab.dst().join("index.html")).unwrap(),
        b"<h1>HELLO</h1>\n"
    );
    assert_eq!(mode(&lab.dst().join("secret.conf")), 0o640);
    assert_eq!(rsync_diff(&lab.src(), &lab.dst(), &[]), "");

    lab.job("mode: full");
    lab.run(&["run", "web"]).code(0);
    assert_eq!(lab.last()["files_transferred"], 9);
    assert_eq!(lab.last()["mode"], "full");
}

#[test]
fn checksum_compare_finds_same_size_same_mtime_changes() {
    let lab = Lab::new();
    lab.write("a.txt", b"aaaa");
    set_mtime(&lab.src().join("a.txt"), 1_000_000_000, 0);
    lab.job("");
    lab.run(&["run", "web"]).code(0);
    // change content behind the quick check's back
    fs::write(lab.dst().join("a.txt"), b"bbbb").unwrap();
    set_mtime(&lab.dst().join("a.txt"), 1_000_000_000, 0);
    lab.run(&["run", "web"]).code(0);
    assert_eq!(
        fs::read(lab.dst().join("a.txt")).unwrap(),
        b"bbbb",
        "size+mtime cannot see it"
    );
    lab.job("compare: checksum");
    lab.run(&["run", "web"]).code(0);
    assert_eq!(fs::read(lab.dst().join("a.txt")).unwrap(), b"aaaa");
    assert_eq!(lab.last()["files_transferred"], 1);
}

#[test]
fn delete_removes_extras_only_when_asked_and_keeps_excluded() {
    let lab = Lab::new();
    lab.write("keep.txt", b"k");
    lab.write("cache.gz", b"source gz, excluded");
    lab.write("info/x.txt", b"excluded dir");
    lab.write("app/info/y.txt", b"not anchored: copied");
    fs::create_dir_all(lab.dst().join("old/sub")).unwrap();
    fs::write(lab.dst().join("old/sub/f"), b"old").unwrap();
    fs::write(lab.dst().join("extra.txt"), b"extra").unwrap();
    fs::write(lab.dst().join("target-only.gz"), b"excluded on target").unwrap();
    fs::create_dir_all(lab.dst().join("info")).unwrap();
    fs::write(lab.dst().join("info/target.txt"), b"excluded dir on target").unwrap();

    lab.job("exclude: [\"*.gz\", \"/info/\"]");
    lab.run(&["run", "web"]).code(0);
    assert!(
        lab.dst().join("extra.txt").exists(),
        "no delete without `delete: true`"
    );
    assert!(!lab.dst().join("cache.gz").exists(), "excluded: not copied");
    assert!(lab.dst().join("app/info/y.txt").exists());
    assert!(!lab.dst().join("info/x.txt").exists());

    lab.job("exclude: [\"*.gz\", \"/info/\"]\ndelete: true");
    lab.run(&["run", "web"]).code(0);
    assert_eq!(
        listing(&lab.dst()),
        [
            "app",
            "app/info",
            "app/info/y.txt",
            "info",
            "info/target.txt",
            "keep.txt",
            "target-only.gz"
        ]
    );
    assert_eq!(lab.last()["files_deleted"], 4);
}

#[test]
fn entries_that_change_type_are_replaced() {
    let lab = Lab::new();
    lab.write("was-dir", b"now a file");
    fs::create_dir_all(lab.src().join("was-file")).unwrap();
    lab.write("was-file/inner", b"i");
    lab.write("was-link", b"file now");
    std::os::unix::fs::symlink("elsewhere", lab.src().join("was-file2")).unwrap();
    fs::create_dir_all(lab.dst().join("was-dir/sub")).unwrap();
    fs::write(lab.dst().join("was-dir/sub/x"), b"x").unwrap();
    fs::write(lab.dst().join("was-file"), b"f").unwrap();
    std::os::unix::fs::symlink("/etc", lab.dst().join("was-link")).unwrap();
    fs::write(lab.dst().join("was-file2"), b"f").unwrap();
    lab.job("delete: true");
    lab.run(&["run", "web"]).code(0);
    assert_eq!(fs::read(lab.dst().join("was-dir")).unwrap(), b"now a file");
    assert_eq!(fs::read(lab.dst().join("was-file/inner")).unwrap(), b"i");
    assert!(
        fs::symlink_metadata(lab.dst().join("was-link"))
            .unwrap()
            .is_file()
    );
    assert_eq!(
        fs::read_link(lab.dst().join("was-file2")).unwrap(),
        Path::new("elsewhere")
    );
    assert_eq!(rsync_diff(&lab.src(), &lab.dst(), &[]), "");
}

#[test]
fn a_symlinked_directory_on_the_target_is_not_written_through() {
    let lab = Lab::new();
    let outside = lab.path("outside");
    fs::create_dir_all(&outside).unwrap();
    lab.write("d/file", b"inside");
    fs::create_dir_all(lab.dst()).unwrap();
    std::os::unix::fs::symlink(&outside, lab.dst().join("d")).unwrap();
    lab.job("");
    lab.run(&["run", "web"]).code(0);
    assert!(
        listing(&outside).is_empty(),
        "nothing written outside the target"
    );
    assert!(lab.dst().join("d").is_dir());
    assert!(
        !fs::symlink_metadata(lab.dst().join("d"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn special_files_are_skipped_with_a_warning() {
    let lab = Lab::new();
    lab.write("a.txt", b"a");
    let fifo = lab.src().join("pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    lab.job("delete: true");
    lab.run(&["run", "web"]).code(0);
    assert!(!lab.dst().join("pipe").exists());
    let rec = lab.last();
    assert_eq!(rec["status"], "ok");
    assert_eq!(rec["warnings"][0]["path"], "pipe");
    assert!(
        rec["warnings"][0]["message"]
            .as_str()
            .unwrap()
            .contains("special file")
    );
}

#[test]
fn missing_source_fails_and_deletes_nothing() {
    let lab = Lab::new();
    fs::remove_dir(lab.src()).unwrap();
    fs::create_dir_all(lab.dst()).unwrap();
    fs::write(lab.dst().join("precious"), b"p").unwrap();
    lab.job("delete: true");
    let r = lab.run(&["run", "web"]);
    r.code(1);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
    assert!(lab.dst().join("precious").exists());
    let rec = lab.last();
    assert_eq!(rec["status"], "failed");
    assert!(rec["reason"].as_str().unwrap().contains("does not exist"));
}

#[test]
fn empty_source_with_delete_is_refused_unless_allowed() {
    let lab = Lab::new();
    fs::create_dir_all(lab.dst()).unwrap();
    fs::write(lab.dst().join("precious"), b"p").unwrap();
    lab.job("delete: true");
    let r = lab.run(&["run", "web"]);
    r.code(1);
    assert!(lab.dst().join("precious").exists());
    assert!(lab.last()["reason"].as_str().unwrap().contains("empty"));
    // without delete an empty source is harmless
    lab.job("");
    lab.run(&["run", "web"]).code(0);
    lab.job("delete: true\nallow_empty_source: true");
    lab.run(&["run", "web"]).code(0);
    assert!(!lab.dst().join("precious").exists());
}

#[test]
fn max_delete_stops_deleting_at_the_limit() {
    let lab = Lab::new();
    lab.write("keep", b"k");
    fs::create_dir_all(lab.dst()).unwrap();
    for i in 0..10 {
        fs::write(lab.dst().join(format!("extra{i}")), b"x").unwrap();
    }
    lab.job("delete: true\nmax_delete: 3");
    let r = lab.run(&["run", "web"]);
    r.code(1);
    let left = listing(&lab.dst())
        .iter()
        .filter(|n| n.starts_with("extra"))
        .count();
    assert_eq!(left, 7, "exactly 3 deleted");
    let rec = lab.last();
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["files_deleted"], 3);
    assert!(
        rec["reason"]
            .as_str()
            .unwrap()
            .contains("max_delete (3) reached: 7 deletions not done")
    );
    assert!(
        lab.dst().join("keep").exists(),
        "the rest of the run proceeds"
    );
}

/// Plans bigger than the executor's windows (256 actions of a kind, 4096
/// copies): every action is made and applied once, in order, and the
/// delete limit holds across windows.
#[test]
fn plans_larger_than_one_window_are_applied_whole() {
    let lab = Lab::new();
    for d in 0..300 {
        fs::create_dir_all(lab.src().join(format!("d{d:03}"))).unwrap();
    }
    for i in 0..5000 {
        lab.write(&format!("d{:03}/f{i}", i % 300), format!("{i}").as_bytes());
    }
    fs::create_dir_all(lab.dst()).unwrap();
    for i in 0..600 {
        fs::write(lab.dst().join(format!("extra{i:03}")), b"x").unwrap();
    }
    lab.job("delete: true\nmax_delete: 550");
    lab.run(&["run", "web"]).code(1);
    let rec = lab.last();
    assert_eq!(rec["files_transferred"], 5000, "{rec}");
    assert_eq!(rec["files_deleted"], 550, "{rec}");
    let left = listing(&lab.dst())
        .iter()
        .filter(|n| n.starts_with("extra"))
        .count();
    assert_eq!(left, 50);
    // the rest converges once the limit allows it
    lab.job("delete: true");
    lab.run(&["run", "web"]).code(0);
    assert_eq!(rsync_diff(&lab.src(), &lab.dst(), &["-c"]), "");
    // directory mtimes were set after their contents (none differ)
    for d in [0, 150, 299] {
        let n = format!("d{d:03}");
        assert_eq!(
            mtime(&lab.src().join(&n)),
            mtime(&lab.dst().join(&n)),
            "{n}"
        );
    }
}

#[test]
fn dry_run_prints_the_plan_and_changes_nothing() {
    let lab = Lab::new();
    lab.write("new.txt", b"n");
    lab.write("dir/f", b"f");
    fs::create_dir_all(lab.dst()).unwrap();
    fs::write(lab.dst().join("gone"), b"g").unwrap();
    lab.job("delete: true");
    let r = lab.run(&["run", "web", "--dry-run"]);
    r.code(0);
    let lines: Vec<&str> = r.stdout.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        lines,
        [
            "*deleting   gone",
            "cd+++++++++ dir/",
            ">f+++++++++ dir/f",
            ">f+++++++++ new.txt",
            ".d..t...... ./"
        ]
    );
    assert_eq!(listing(&lab.dst()), ["gone"]);
    assert_eq!(lab.last()["status"], "dry_run");
}

#[test]
fn stale_temporary_files_are_removed() {
    let lab = Lab::new();
    lab.write("a", b"a");
    fs::create_dir_all(lab.dst()).unwrap();
    fs::write(lab.dst().join(".syncjob-tmp.999.0.a"), b"partial").unwrap();
    lab.job("");
    lab.run(&["run", "web"]).code(0);
    assert_eq!(listing(&lab.dst()), ["a"]);
}

#[test]
fn run_all_and_unknown_job() {
    let lab = Lab::new();
    lab.write("a", b"a");
    lab.config(
        "jobs:\n  one:\n    source: {src}\n    remote: {dir}/one\n  two:\n    source: {src}\n    remote: [{dir}/two, {dir}/three]\n",
    );
    lab.run(&["run", "--all"]).code(0);
    for d in ["one", "two", "three"] {
        assert_eq!(fs::read(lab.path(d).join("a")).unwrap(), b"a");
    }
    assert_eq!(lab.log().len(), 3, "one record per job run and target");
    let r = lab.run(&["run", "nope"]);
    r.code(2);
    assert!(r.stderr.contains("no job named \"nope\""), "{}", r.stderr);
}

#[test]
fn permission_denied_on_a_source_file_is_reported_and_the_rest_proceeds() {
    if is_root() {
        eprintln!("skipped: root reads every file");
        return;
    }
    let lab = Lab::new();
    lab.write("ok.txt", b"ok");
    lab.write("locked.txt", b"no");
    fs::set_permissions(
        lab.src().join("locked.txt"),
        fs::Permissions::from_mode(0o000),
    )
    .unwrap();
    lab.job("");
    lab.run(&["run", "web"]).code(1);
    assert!(lab.dst().join("ok.txt").exists());
    let rec = lab.last();
    assert_eq!(rec["errors"][0]["path"], "locked.txt");
}

#[test]
fn hooks_run_around_the_job_with_its_outcome() {
    let lab = Lab::new();
    lab.write("a.txt", b"a");
    let out = lab.path("hook.out");
    lab.job(&format!(
        "after: 'echo \"$SYNCJOB_JOB $SYNCJOB_STATUS $SYNCJOB_FILES_TRANSFERRED\" >> {0}'\non_failure: 'echo failed >> {0}'",
        out.display()
    ));
    lab.run(&["run", "web"]).code(0);
    assert_eq!(fs::read_to_string(&out).unwrap(), "web ok 1\n");
    // a failing before hook aborts the run before any change
    fs::remove_dir_all(lab.dst()).unwrap();
    lab.job(&format!(
        "before: 'echo not now; exit 4'\non_failure: 'echo \"failed: $SYNCJOB_REASON\" >> {}'",
        out.display()
    ));
    lab.run(&["run", "web"]).code(1);
    assert!(!lab.dst().exists());
    let rec = lab.last();
    assert_eq!(rec["status"], "failed");
    assert_eq!(rec["reason"], "before hook failed (exit 4): not now");
    assert!(
        fs::read_to_string(&out)
            .unwrap()
            .ends_with("failed: before hook failed (exit 4): not now\n")
    );
    let hooks = rec["hooks"].as_array().expect("hooks in the record");
    assert_eq!(hooks[0]["hook"], "before");
    assert_eq!(hooks[0]["ok"], false);
    assert_eq!(hooks[0]["output"], "not now");
    assert_eq!(hooks[1]["hook"], "on_failure");
    assert_eq!(hooks[1]["ok"], true);

    // hook output (stdout and stderr) is captured into the record
    lab.job("before: echo warming up\nafter: 'echo \"sent $SYNCJOB_FILES_TRANSFERRED\"; echo oops >&2; exit 3'");
    // (the target was removed behind syncjob's back: --verify lists it)
    lab.run(&["run", "web", "--verify"]).code(0);
    let rec = lab.last();
    assert_eq!(
        rec["status"], "ok",
        "a failing after hook does not fail the run"
    );
    let hooks = rec["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2, "{rec}");
    assert_eq!(hooks[0]["output"], "warming up");
    assert_eq!(hooks[1]["hook"], "after");
    assert_eq!(hooks[1]["status"], "exit 3");
    let output = hooks[1]["output"].as_str().unwrap();
    assert!(
        output.contains("sent 1") && output.contains("oops"),
        "{output}"
    );
    // without hooks the field is absent
    lab.job("");
    lab.run(&["run", "web"]).code(0);
    assert!(lab.last().get("hooks").is_none());
}

#[test]
fn an_unchanged_source_skips_listing_the_target_until_verify() {
    let lab = Lab::new();
    lab.write("a.txt", b"a");
    lab.write("d/b.txt", b"b");
    lab.job("delete: true");
    lab.run(&["run", "web"]).code(0);
    let first = lab.last();
    assert!(first.get("target_state").is_none(), "the first run lists");
    let manifests = lab.state().join("manifests/web");
    assert_eq!(fs::read_dir(&manifests).unwrap().count(), 1);

    // nothing changed: decided from the manifest
    lab.run(&["run", "web"]).code(0);
    let rec = lab.last();
    assert_eq!(rec["target_state"], "manifest", "{rec}");
    assert_eq!(rec["files_transferred"], 0);

    // drift on the target is not seen from the manifest ...
    fs::write(lab.dst().join("a.txt"), b"edited on the target").unwrap();
    lab.run(&["run", "web"]).code(0);
    assert_eq!(lab.last()["target_state"], "manifest");
    // ... but a full listing (--verify, or after verify_interval) repairs it
    lab.run(&["run", "web", "--verify"]).code(0);
    let rec = lab.last();
    assert!(rec.get("target_state").is_none());
    assert_eq!(rec["files_transferred"], 1);
    assert_eq!(fs::read(lab.dst().join("a.txt")).unwrap(), b"a");
    // and refreshes the manifest
    lab.run(&["run", "web"]).code(0);
    assert_eq!(lab.last()["target_state"], "manifest");

    // a source change is planned against the manifest (no listing) and
    // transferred
    lab.write("d/b.txt", b"bb");
    lab.write("new.txt", b"n");
    lab.write("gone.txt", b"g");
    lab.run(&["run", "web"]).code(0);
    let rec = lab.last();
    assert_eq!(rec["target_state"], "manifest");
    assert_eq!(rec["files_transferred"], 3);
    assert_eq!(rsync_diff(&lab.src(), &lab.dst(), &["-c"]), "");
    // a delete of an entry already gone on the target is fine
    fs::remove_file(lab.dst().join("gone.txt")).unwrap();
    fs::remove_file(lab.src().join("gone.txt")).unwrap();
    lab.run(&["run", "web"]).code(0);
    assert_eq!(lab.last()["files_deleted"], 0);
    assert_eq!(rsync_diff(&lab.src(), &lab.dst(), &["-c"]), "");
    // a target wiped behind syncjob's back: the manifest-planned run fails,
    // forgets the manifest, and the next run lists and repairs
    fs::remove_dir_all(lab.dst()).unwrap();
    lab.write("d/b.txt", b"bbb");
    lab.run(&["run", "web"]).code(1);
    lab.run(&["run", "web"]).code(0);
    assert!(lab.last().get("target_state").is_none());
    assert_eq!(rsync_diff(&lab.src(), &lab.dst(), &["-c"]), "");
    lab.run(&["run", "web"]).code(0);

    // a failed run forgets the manifest: the next run lists again
    lab.job("delete: true\nmax_delete: 0");
    lab.run(&["run", "web"]).code(0);
    lab.run(&["run", "web"]).code(0);
    assert_eq!(lab.last()["target_state"], "manifest");
    fs::remove_file(lab.src().join("new.txt")).unwrap();
    lab.run(&["run", "web"]).code(1);
    assert_eq!(
        fs::read_dir(&manifests).unwrap().count(),
        0,
        "manifest removed"
    );
    fs::write(lab.src().join("new.txt"), b"n").unwrap();
    set_mtime(&lab.src().join("new.txt"), 1_600_000_000, 0);
    set_mtime(&lab.dst().join("new.txt"), 1_600_000_000, 0);
    lab.run(&["run", "web"]).code(0);
    assert!(
        lab.last().get("target_state").is_none(),
        "listed after a failure"
    );

    // verify_interval: 0 never uses a manifest; other settings invalidate it
    lab.job("delete: true\nverify_interval: 0");
    lab.run(&["run", "web"]).code(0);
    lab.run(&["run", "web"]).code(0);
    assert!(lab.last().get("target_state").is_none());
    lab.job("delete: true");
    lab.run(&["run", "web"]).code(0);
    lab.run(&["run", "web"]).code(0);
    assert_eq!(lab.last()["target_state"], "manifest");
    lab.job("delete: true\nexclude: [\"*.tmp\"]");
    lab.run(&["run", "web"]).code(0);
    assert!(
        lab.last().get("target_state").is_none(),
        "excludes changed: the old manifest does not apply"
    );
    // a damaged manifest is ignored
    lab.run(&["run", "web"]).code(0);
    assert_eq!(lab.last()["target_state"], "manifest");
    let m = fs::read_dir(&manifests)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    // damaged entries: not used to plan a change (the run lists)
    let mut bytes = fs::read(&m).unwrap();
    let last = bytes.len() - 3;
    bytes[last] ^= 0xff;
    fs::write(&m, &bytes).unwrap();
    lab.write("a.txt", b"a2");
    lab.run(&["run", "web"]).code(0);
    assert!(lab.last().get("target_state").is_none());
    assert_eq!(rsync_diff(&lab.src(), &lab.dst(), &["-c"]), "");
    // a damaged header: ignored altogether
    lab.run(&["run", "web"]).code(0);
    assert_eq!(lab.last()["target_state"], "manifest");
    let mut bytes = fs::read(&m).unwrap();
    bytes[20] ^= 0xff;
    fs::write(&m, &bytes).unwrap();
    lab.run(&["run", "web"]).code(0);
    assert!(lab.last().get("target_state").is_none());
}
