//! `syncjob import sersync|crontab`: golden files for each fixture under
//! tests/fixtures/, each output loads with `check`, the same input gives
//! the same bytes, and the sersync setup of the seed runs against a real
//! rsync daemon. `UPDATE_GOLDEN=1 cargo test --test import` rewrites the
//! golden files.

mod common;
use common::rsyncd::{Rsyncd, USER};
use common::*;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

const FIX: &str = "tests/fixtures";

fn import(args: &[&str]) -> Run {
    Run::from(
        Command::new(BIN)
            .arg("import")
            .args(args)
            .env("TZ", "UTC")
            .output()
            .unwrap(),
    )
}

/// Compare with (or, with UPDATE_GOLDEN=1, write) the golden file.
fn golden(path: &str, got: &str) {
    let p = PathBuf::from(path);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        fs::write(&p, got).unwrap();
        return;
    }
    let want = fs::read_to_string(&p).unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(
        got, want,
        "output differs from {path} (UPDATE_GOLDEN=1 rewrites it)"
    );
}

/// The generated file loads with `syncjob check` (the fixtures' password
/// file `/etc/rsync.pas` replaced by a private file that exists here).
fn loads_with_check(yaml: &str) {
    let lab = Lab::new();
    let pass = lab.path("rsync.pas");
    common::rsyncd::private_file(&pass, "x\n");
    fs::write(
        lab.path("jobs.yaml"),
        yaml.replace("/etc/rsync.pas", pass.to_str().unwrap()),
    )
    .unwrap();
    let r = lab.run(&["check"]);
    // valid (a config problem is exit 2); exit 1 only for what is missing
    // on this machine but would be on the pushing host (the source tree,
    // an identity file)
    if r.code == 1 {
        for l in r.stderr.lines() {
            assert!(
                l.contains("does not exist")
                    || l.contains("No such file")
                    || l.contains("found on this machine"),
                "check found more than a missing source or key: {}",
                r.stderr
            );
        }
    } else {
        r.code(0);
    }
}

#[test]
fn sersync_fixtures_match_their_golden_files_and_load() {
    for name in ["seed", "several-remotes", "ssh", "filters-off"] {
        let xml = format!("{FIX}/sersync/{name}.xml");
        let r = import(&["sersync", &xml]);
        r.code(0);
        golden(&format!("{FIX}/sersync/{name}.yaml"), &r.stdout);
        loads_with_check(&r.stdout);
        // stable: the same input gives the same bytes
        assert_eq!(import(&["sersync", &xml]).stdout, r.stdout);
    }
}

#[test]
fn malformed_sersync_xml_is_an_error_with_line_and_column() {
    let r = import(&["sersync", &format!("{FIX}/sersync/malformed.xml")]);
    r.code(2);
    assert!(r.stdout.is_empty());
    golden(&format!("{FIX}/sersync/malformed.err"), &r.stderr);
    assert!(
        r.stderr.contains("malformed.xml:6:2: malformed XML"),
        "{}",
        r.stderr
    );
}

#[test]
fn crontab_fixtures_match_their_golden_files_and_load() {
    for (name, args) in [
        ("user.crontab", vec!["crontab"]),
        ("system.crontab", vec!["crontab"]),
        ("loop.sh", vec!["crontab", "--loop"]),
        ("loop-oneline.sh", vec!["crontab", "--loop"]),
    ] {
        let input = format!("{FIX}/crontab/{name}");
        let mut a = args.clone();
        a.push(&input);
        let r = import(&a);
        r.code(0);
        golden(&format!("{FIX}/crontab/{name}.yaml"), &r.stdout);
        loads_with_check(&r.stdout);
        assert_eq!(import(&a).stdout, r.stdout);
    }
}

#[test]
fn crontab_from_stdin_and_nothing_to_carry_over() {
    let out = Command::new(BIN)
        .args(["import", "crontab", "-"])
        .stdin(fs::File::open(format!("{FIX}/crontab/user.crontab")).unwrap())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("from standard input"));
    assert!(text.contains("tp5shop:"));
    // a script without a loop: the reason, exit 1, no file written
    let lab = Lab::new();
    let o = lab.path("jobs.yaml");
    let r = import(&[
        "crontab",
        "--loop",
        &format!("{FIX}/crontab/loop-bad.sh"),
        "-o",
        o.to_str().unwrap(),
    ]);
    r.code(1);
    assert!(r.stdout.contains("no `while` loop"), "{}", r.stdout);
    assert!(!o.exists());
}

#[test]
fn output_file_is_written_whole_and_only_with_o() {
    let lab = Lab::new();
    let o = lab.path("out/jobs.yaml");
    fs::create_dir(lab.path("out")).unwrap();
    let xml = format!("{FIX}/sersync/seed.xml");
    let printed = import(&["sersync", &xml]);
    let r = import(&["sersync", &xml, "-o", o.to_str().unwrap()]);
    r.code(0);
    assert!(r.stdout.is_empty());
    assert_eq!(fs::read_to_string(&o).unwrap(), printed.stdout);
    assert_eq!(
        listing(&lab.path("out")),
        ["jobs.yaml"],
        "no temporary file left"
    );
}

/// The seed's setup (rsyncd module with auth users and a secrets file,
/// sersync pushing to it): imported, it runs against the test daemon.
#[test]
fn imported_sersync_config_runs_against_the_rsync_daemon() {
    let lab = Lab::new();
    let d = Rsyncd::start(&lab.path("rsyncd"));
    lab.write("index.php", b"<?php echo 1;\n");
    lab.write("static/app.js", b"x\n");
    lab.write("a.svn", b"skipped\n");
    let xml = fs::read_to_string(format!("{FIX}/sersync/seed.xml"))
        .unwrap()
        .replace("/usr/local/nginx/html/tp5shop", lab.src().to_str().unwrap())
        .replace("192.168.17.101", "127.0.0.1")
        .replace("name=\"tp5shop\"", "name=\"site\"")
        .replace(
            "<auth start=\"false\" users=\"root\" passwordfile=\"/etc/rsync.pas\"/>",
            &format!(
                "<auth start=\"true\" users=\"{USER}\" passwordfile=\"{}\"/>",
                d.password_file.display()
            ),
        )
        .replace(
            "<userDefinedPort start=\"false\" port=\"874\"/>",
            &format!("<userDefinedPort start=\"true\" port=\"{}\"/>", d.port),
        )
        .replace("<filter start=\"false\">", "<filter start=\"true\">");
    let x = lab.path("confxml.xml");
    fs::write(&x, xml).unwrap();
    import(&[
        "sersync",
        x.to_str().unwrap(),
        "-o",
        lab.path("jobs.yaml").to_str().unwrap(),
    ])
    .code(0);
    let jobs = fs::read_to_string(lab.path("jobs.yaml")).unwrap();
    assert!(jobs.contains(&format!("{USER}@127.0.0.1::site")), "{jobs}");
    lab.run(&["check"]).code(0);
    fs::write(
        d.module.join("stale.html"),
        b"deleted: inotify delete was on",
    )
    .unwrap();
    lab.run(&["run", "--all"]).code(0);
    // the filter (.*)\.svn and ^static/* were translated to *.svn and /static
    assert!(!d.module.join("a.svn").exists());
    assert!(!d.module.join("static").exists());
    assert!(!d.module.join("stale.html").exists());
    assert_eq!(
        rsync_diff(
            &lab.src(),
            &d.module,
            &["--exclude", "*.svn", "--exclude", "/static"]
        ),
        ""
    );
}
