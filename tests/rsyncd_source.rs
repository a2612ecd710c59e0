//! The source's owner against an rsync daemon target (issue 11, finding 2
//! for the system `rsync` that sends the source): the `nobody` user owning
//! the source swaps a directory for a symlink to a root-only directory
//! while root's run sends a big file. The secret must never reach the
//! module. Needs root (skipped otherwise) and a real `rsync --daemon`.
//! `SWAP=OwnLinkOldRsync` or `SWAP=RootsLink` runs one variant only.

mod common;

use common::rsyncd::{Rsyncd, rsync_job};
use common::{Lab, is_root, listing};
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Whether rsync's receiver is writing a temporary file of `name` in `dir`.
fn receiving(dir: &Path, name: &str) -> bool {
    let prefix = format!(".{name}.");
    fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with(&prefix))
    })
}

/// The system `rsync` (first in PATH).
fn which_rsync() -> std::path::PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("rsync"))
        .find(|p| p.is_file())
        .expect("rsync installed")
}

/// How the attacker makes `sub` lead to the root-only directory.
#[derive(Clone, Copy, Debug)]
enum Swap {
    /// a symlink of their own, against an rsync that follows any symlink
    /// (rsync before 3.5, emulated by `--insecure-links`)
    OwnLinkOldRsync,
    /// a symlink root made in the tree (rsync 3.5 follows root's links),
    /// renamed into place: the system rsync as it is
    RootsLink,
}

#[test]
fn a_source_directory_swapped_by_its_owner_leaks_no_root_only_file_to_an_rsync_daemon() {
    if !is_root() {
        eprintln!("skipped: needs root (the attacker is the `nobody` user)");
        return;
    }
    let only = std::env::var("SWAP").unwrap_or_default();
    for swap in [Swap::OwnLinkOldRsync, Swap::RootsLink] {
        if only.is_empty() || format!("{swap:?}") == only {
            attack(swap);
        }
    }
}

fn attack(swap: Swap) {
    let lab = Lab::new();
    fs::set_permissions(lab.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let d = Rsyncd::start(&lab.path("rsyncd"));
    // one stream: `a_big` is sent before `sub/secret.txt`
    rsync_job(&lab, &d, "verify_interval: 0\nstreams: 1");
    lab.write("a_big", &vec![7u8; 400 << 20]);
    lab.write("sub/secret.txt", b"decoy");
    let private = common::root_only_secret(&lab);
    common::give_to_nobody(&lab.src());
    let bin = lab.path("bin");
    fs::create_dir(&bin).unwrap();
    let mut path = std::env::var_os("PATH").unwrap_or_default();
    let link = match swap {
        Swap::OwnLinkOldRsync => {
            let real = which_rsync();
            let w = bin.join("rsync");
            let text = format!(
                "#!/bin/sh\nexec {} --insecure-links \"$@\"\n",
                real.display()
            );
            fs::write(&w, text).unwrap();
            fs::set_permissions(&w, fs::Permissions::from_mode(0o755)).unwrap();
            let mut p = bin.clone().into_os_string();
            p.push(":");
            p.push(&path);
            path = p;
            None
        }
        Swap::RootsLink => {
            // made by root after the chown: root's own link
            let l = lab.src().join("zz-root-link");
            std::os::unix::fs::symlink(&private, &l).unwrap();
            Some(l)
        }
    };
    // the attacker, ready: renames `sub` and puts the link there when told
    let script = common::ATTACKER_READY.to_string()
        + "os.rename(sys.argv[1] + '/sub', sys.argv[1] + '/sub.old')\nif sys.argv[3]:\n    os.rename(sys.argv[3], sys.argv[1] + '/sub')\nelse:\n    os.symlink(sys.argv[2], sys.argv[1] + '/sub')\n";
    let mut attacker = Command::new("setpriv")
        .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", &script])
        .arg(lab.src())
        .arg(&private)
        .arg(link.map(|l| l.into_os_string()).unwrap_or_default())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    common::await_ready(&mut attacker);
    let mut child = lab
        .cmd()
        .args(["run", "web"])
        .env("PATH", &path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // once the big file is on its way, `sub` becomes the link
    let web = d.module.join("web");
    let t = Instant::now();
    while !receiving(&web, "a_big") && t.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        receiving(&web, "a_big"),
        "{swap:?}: the big file was never sent"
    );
    attacker.stdin.take().unwrap().write_all(b"go\n").unwrap();
    assert!(
        attacker.wait().unwrap().success(),
        "{swap:?}: the swap as nobody failed"
    );
    child.wait().unwrap();
    let rec = lab.last();
    eprintln!("{swap:?}: {rec}");
    let got = fs::read(web.join("sub/secret.txt")).ok();
    assert_ne!(
        got.as_deref(),
        Some(&b"TOPSECRET"[..]),
        "{swap:?}: the secret leaked\n{rec}"
    );
    assert_ne!(
        got.as_deref(),
        Some(&b"decoy"[..]),
        "{swap:?}: the swap came after the copy: the test proves nothing"
    );
    for n in listing(&d.module) {
        let p = d.module.join(&n);
        if p.is_file() && !p.is_symlink() && !n.ends_with("a_big") {
            assert_ne!(fs::read(&p).unwrap(), b"TOPSECRET", "{swap:?}: {n} leaked");
        }
    }
    // the big file made it: the sender could read the owner's files
    assert_eq!(
        fs::metadata(web.join("a_big")).map(|m| m.len()).ok(),
        Some(400 << 20),
        "{swap:?}: {rec}"
    );
    let text = fs::read_to_string(lab.log_path()).unwrap();
    assert!(!text.contains(common::rsyncd::PASSWORD));
}
