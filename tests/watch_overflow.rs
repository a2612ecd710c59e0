//! A real inotify queue overflow, end to end. Alone in its own test
//! binary: it lowers the machine-wide fs.inotify.max_queued_events while
//! its watcher starts, which a watcher of another test started in that
//! moment would take too (test binaries run one after another).

mod common;

use common::watch::{Proc, WAIT, converges, watch_records};
use common::{Lab, is_root, until};
use std::fs;

/// Lowers fs.inotify.max_queued_events while the watcher starts (it takes
/// its queue size then), and puts it back.
struct QueueLimit(String);

impl QueueLimit {
    fn set(n: u32) -> QueueLimit {
        let p = "/proc/sys/fs/inotify/max_queued_events";
        let old = fs::read_to_string(p).unwrap();
        fs::write(p, n.to_string()).unwrap();
        QueueLimit(old)
    }
}

impl Drop for QueueLimit {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/fs/inotify/max_queued_events", self.0.trim());
    }
}

#[test]
fn a_real_queue_overflow_becomes_a_full_sync_with_its_reason() {
    if !is_root() {
        eprintln!("skipped: lowering fs.inotify.max_queued_events needs root");
        return;
    }
    let lab = Lab::new();
    lab.write("seed", b"x");
    lab.job("delete: true\nwatch: {delay: 200ms}");
    let p = {
        let _limit = QueueLimit::set(16);
        let p = Proc::start(&lab, &["watch", "web"], &[]);
        p.wait_for("watching");
        p
    };
    converges(&lab.src(), &lab.dst(), &[], &p);
    for i in 0..3000 {
        lab.write(&format!("burst/{}/{i}", i % 30), b"y");
    }
    p.wait_for("overflow");
    converges(&lab.src(), &lab.dst(), &[], &p);
    let ok = until(WAIT, || {
        watch_records(&lab).iter().any(|r| {
            r["status"] == "ok"
                && r["reason"]
                    .as_str()
                    .is_some_and(|s| s.contains("full sync: inotify event queue overflow"))
        })
    });
    assert!(ok, "{:?}\n{}", watch_records(&lab), p.stderr());
}
