//! Against the real inotify of the running kernel.

use super::*;
use std::fs;
use std::time::Instant;

/// Read until `done` says so or `secs` pass; returns what was seen.
fn collect(
    w: &mut Watcher,
    secs: u64,
    done: &dyn Fn(&[Change], &[Signal]) -> bool,
) -> (Vec<Change>, Vec<Signal>) {
    let (mut cs, mut ss) = (Vec::new(), Vec::new());
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until && !done(&cs, &ss) {
        if w.wait(Duration::from_millis(50)) {
            w.read(&mut |c| cs.push(c), &mut |s| ss.push(s)).unwrap();
        }
    }
    (cs, ss)
}

fn has(cs: &[Change], c: Change) -> bool {
    cs.contains(&c)
}

#[test]
fn a_new_deep_tree_is_reported_whole_and_watched() {
    let d = tempfile::tempdir().unwrap();
    let mut w = Watcher::new(d.path(), Filter::default()).unwrap();
    assert_eq!(w.watch_all().unwrap(), 1);
    fs::create_dir_all(d.path().join("a/b/c")).unwrap();
    fs::write(d.path().join("a/b/c/f"), "x").unwrap();
    let (cs, _) = collect(&mut w, 5, &|cs, _| has(cs, Change::Tree("a".into())));
    assert!(has(&cs, Change::Tree("a".into())), "{cs:?}");
    // every level got its watch: a later change deep inside is seen
    assert_eq!(w.watch_count(), 4);
    fs::write(d.path().join("a/b/c/g"), "y").unwrap();
    let (cs, _) = collect(&mut w, 5, &|cs, _| has(cs, Change::Entry("a/b/c/g".into())));
    assert!(has(&cs, Change::Entry("a/b/c/g".into())), "{cs:?}");
}

#[test]
fn excluded_paths_are_not_watched_nor_reported() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("cache/deep")).unwrap();
    let mut w = Watcher::new(d.path(), Filter::new(&["/cache/", "*.tmp"]).unwrap()).unwrap();
    assert_eq!(w.watch_all().unwrap(), 1);
    fs::write(d.path().join("cache/deep/x"), "x").unwrap();
    fs::write(d.path().join("x.tmp"), "x").unwrap();
    fs::write(d.path().join(".syncjob-tmp.1.2.y"), "x").unwrap();
    fs::write(d.path().join("real"), "x").unwrap();
    let (cs, _) = collect(&mut w, 5, &|cs, _| has(cs, Change::Entry("real".into())));
    assert!(has(&cs, Change::Entry("real".into())));
    assert!(
        cs.iter()
            .all(|c| matches!(c, Change::Entry(p) if p == Path::new("real"))),
        "{cs:?}"
    );
}

#[test]
fn a_queue_overflow_is_reported() {
    let d = tempfile::tempdir().unwrap();
    let mut w = Watcher::new(d.path(), Filter::default()).unwrap();
    w.watch_all().unwrap();
    // two events per file, more than the kernel's queue holds (16384 by
    // default: fs.inotify.max_queued_events), none read meanwhile
    let queue = read_sysctl("max_queued_events").unwrap_or(16384);
    for i in 0..(queue / 2 + 1000) {
        fs::write(d.path().join(format!("f{i}")), "").unwrap();
    }
    let (_, ss) = collect(&mut w, 10, &|_, ss| ss.contains(&Signal::Overflow));
    assert!(ss.contains(&Signal::Overflow));
    assert!(w.stats().overflows.load(Ordering::Relaxed) >= 1);
}

#[test]
fn the_watch_limit_names_the_sysctl_and_the_count_needed() {
    let d = tempfile::tempdir().unwrap();
    for i in 0..5 {
        fs::create_dir_all(d.path().join(format!("d{i}/e"))).unwrap();
    }
    let mut w = Watcher::new(d.path(), Filter::default()).unwrap();
    w.max_watches = Some(4);
    let e = w.watch_all().unwrap_err().to_string();
    assert!(e.contains("fs.inotify.max_user_watches"), "{e}");
    assert!(e.contains("needs 11 watches"), "{e}");
}

#[test]
fn the_root_going_away_is_reported_and_a_moved_out_dir_is_forgotten() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("src");
    fs::create_dir_all(root.join("m/n")).unwrap();
    let mut w = Watcher::new(&root, Filter::default()).unwrap();
    assert_eq!(w.watch_all().unwrap(), 3);
    fs::rename(root.join("m"), d.path().join("outside")).unwrap();
    let (cs, _) = collect(&mut w, 5, &|cs, _| has(cs, Change::Tree("m".into())));
    assert!(has(&cs, Change::Tree("m".into())), "{cs:?}");
    assert_eq!(w.watch_count(), 1);
    // changes out there are not ours
    fs::write(d.path().join("outside/n/x"), "x").unwrap();
    fs::remove_dir_all(&root).unwrap();
    let (cs, ss) = collect(&mut w, 5, &|_, ss| ss.contains(&Signal::RootGone));
    assert!(ss.contains(&Signal::RootGone), "{ss:?}");
    assert!(
        cs.iter()
            .all(|c| !matches!(c, Change::Entry(p) | Change::Tree(p) if p.starts_with("n"))),
        "{cs:?}"
    );
}

#[test]
fn a_rename_inside_the_tree_is_one_move_and_its_watches_follow() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir_all(d.path().join("a/b")).unwrap();
    fs::create_dir_all(d.path().join("cache")).unwrap();
    fs::write(d.path().join("f"), "x").unwrap();
    let mut w = Watcher::new(d.path(), Filter::new(&["/cache/"]).unwrap()).unwrap();
    assert_eq!(w.watch_all().unwrap(), 3);
    fs::rename(d.path().join("a"), d.path().join("z")).unwrap();
    fs::rename(d.path().join("f"), d.path().join("z/g")).unwrap();
    let mv = |a: &str, b: &str| Change::Move(a.into(), b.into());
    let (cs, _) = collect(&mut w, 5, &|cs, _| has(cs, mv("f", "z/g")));
    assert_eq!(cs, vec![mv("a", "z"), mv("f", "z/g")], "{cs:?}");
    assert_eq!(w.watch_count(), 3);
    // the moved watches report under the new name
    fs::write(d.path().join("z/b/new"), "y").unwrap();
    let (cs, _) = collect(&mut w, 5, &|cs, _| has(cs, Change::Entry("z/b/new".into())));
    assert!(has(&cs, Change::Entry("z/b/new".into())), "{cs:?}");
    // into an excluded place: a deletion; out of it: a creation
    fs::rename(d.path().join("z"), d.path().join("cache/z")).unwrap();
    let (cs, _) = collect(&mut w, 5, &|cs, _| !cs.is_empty());
    assert_eq!(cs, vec![Change::Tree("z".into())]);
    fs::rename(d.path().join("cache/z"), d.path().join("back")).unwrap();
    let (cs, _) = collect(&mut w, 5, &|cs, _| !cs.is_empty());
    assert_eq!(cs, vec![Change::Tree("back".into())]);
    assert_eq!(w.watch_count(), 3);
}
