//! The local target's listing under attack (issue 11): whoever can change
//! the target tree swaps a directory for a symlink to a directory outside
//! it, again and again, while runs list the target. No name from outside
//! may be listed: none planned for deletion, printed, or written to the
//! run log, and nothing outside changes.

mod common;

use common::{Lab, listing};
use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Swap `dir/sub` for a symlink to `to` and back until `stop`, each time
/// parking the real directory under a fresh name in `park` (so a run that
/// replaced the link meanwhile never stops the racer); returns the swaps.
fn swapper(
    dir: PathBuf,
    park: PathBuf,
    to: PathBuf,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let sub = dir.join("sub");
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let held = park.join(format!("sub.{n}"));
            if fs::symlink_metadata(&sub).is_ok_and(|m| m.is_dir())
                && fs::rename(&sub, &held).is_ok()
            {
                let _ = symlink(&to, &sub);
                n += 1;
                std::thread::sleep(Duration::from_micros(400));
                if fs::symlink_metadata(&sub).is_ok_and(|m| m.is_symlink()) {
                    let _ = fs::remove_file(&sub);
                }
                let _ = fs::rename(&held, &sub);
            }
            std::thread::sleep(Duration::from_micros(150));
        }
        n
    })
}

/// Every entry below `dir` with its content (files).
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = listing(dir)
        .into_iter()
        .map(|n| {
            let p = dir.join(&n);
            (n, fs::read(&p).unwrap_or_default())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_target_directory_swapped_during_listing_never_lists_an_outside_name() {
    let lab = Lab::new();
    lab.job("delete: true\nmax_delete: 100%\nverify_interval: 0");
    // entries listed before `sub` widen the window between reading the
    // root's names (`sub`: a directory) and entering `sub`
    for i in 0..2000 {
        lab.write(&format!("a{i:04}.txt"), b"inside");
    }
    for i in 0..300 {
        lab.write(&format!("sub/f{i:03}.txt"), b"inside");
    }
    lab.run(&["run", "web"]).code(0);
    let out = lab.path("outside");
    fs::create_dir_all(out.join("OUTSIDEdir")).unwrap();
    for i in 0..300 {
        fs::write(out.join(format!("OUTSIDE{i:03}")), b"outside").unwrap();
    }
    fs::write(out.join("OUTSIDEdir/OUTSIDEdeep"), b"outside").unwrap();
    let before = snapshot(&out);
    let park = lab.path("park");
    fs::create_dir(&park).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let racer = swapper(lab.dst(), park, out.clone(), stop.clone());
    let mut printed = String::new();
    for i in 0..60 {
        // a plan printed, and runs that carry their plans out
        let args: &[&str] = if i % 3 == 0 {
            &["run", "web", "--dry-run"]
        } else {
            &["-v", "run", "web", "--verify"]
        };
        let r = lab.run(args);
        printed.push_str(&r.stdout);
        printed.push_str(&r.stderr);
    }
    stop.store(true, Ordering::Relaxed);
    let swaps = racer.join().unwrap();
    assert!(swaps > 20, "the racer swapped only {swaps} times");

    assert_eq!(snapshot(&out), before, "the outside directory changed");
    let lines: Vec<&str> = printed.lines().filter(|l| l.contains("OUTSIDE")).collect();
    assert!(
        lines.is_empty(),
        "{} printed lines name outside entries in {swaps} swaps, e.g. {:?}",
        lines.len(),
        &lines[..lines.len().min(5)]
    );
    let log = fs::read_to_string(lab.log_path()).unwrap();
    let records = log.lines().filter(|l| l.contains("OUTSIDE")).count();
    assert_eq!(records, 0, "run log records name outside entries");
}
