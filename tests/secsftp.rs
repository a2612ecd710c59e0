//! Symlinks planted in an SSH target reached over SFTP (no remote helper,
//! `ssh.remote_helper: none`), issue 11 finding 1: SFTP works by path and
//! the server follows symlinked parents, so every parent directory is
//! checked with LSTAT before anything is written, made, removed or chmod-ed
//! below it, and attributes are set with `lsetstat@openssh.com` (never
//! through a symlink). Each test performs the attack against a real sshd.

mod common;

use common::sshd::Sshd;
use common::{Lab, mode, rsync_diff, snapshot, until};
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};

/// How long a change may take to show, polled (the watcher retries a
/// failed batch with a full sync; generous for a loaded machine).
const WAIT: std::time::Duration = std::time::Duration::from_secs(90);

/// An outside directory (with a subdirectory `deep`) and a 0600 secret
/// beside the lab's trees.
fn outside(lab: &Lab) -> (PathBuf, PathBuf) {
    let out = lab.path("outside");
    fs::create_dir_all(out.join("deep")).unwrap();
    fs::write(out.join("gone.txt"), b"outside: must stay").unwrap();
    fs::write(out.join("keep.txt"), b"outside: keep").unwrap();
    fs::write(out.join("deep/d.txt"), b"outside: deep").unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o755)).unwrap();
    let secret = lab.path("secret");
    fs::write(&secret, b"secret: 0600").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    (out, secret)
}

/// The job `web` to the lab's `dst/` over SFTP only.
fn sftp_job(lab: &Lab, s: &Sshd, extra: &str) {
    let mut y = format!(
        "jobs:\n  web:\n    source: {{src}}\n    remote: {}\n    delete: true\n    max_delete: 100%\n    {}\n",
        s.url(&lab.dst()),
        s.ssh_yaml_with(", remote_helper: none")
    );
    for l in extra.lines() {
        y.push_str("    ");
        y.push_str(l);
        y.push('\n');
    }
    lab.config(&y);
}

fn seed(lab: &Lab) {
    lab.write("sub/a.txt", b"a1");
    lab.write("sub/gone.txt", b"to delete");
    lab.write("sub/deep/d.txt", b"d");
    lab.write("top/deep/x.txt", b"x1");
    lab.write("top/deep/gone.txt", b"to delete");
    lab.write("conf.txt", b"conf");
    lab.write("conf2.txt", b"conf2");
    lab.write("m/f.txt", b"m");
    fs::set_permissions(lab.src().join("m"), fs::Permissions::from_mode(0o755)).unwrap();
}

/// Plant the links: `dst/sub` and `dst/top/deep` → `outside` (a top-level
/// and a nested parent), `dst/m` → `outside` (a directory whose mode
/// changes), `dst/conf.txt` (a mode change) and `dst/conf2.txt` (a
/// content change) → the secret.
fn plant(lab: &Lab, out: &Path, secret: &Path) {
    let dst = lab.dst();
    for (rel, to) in [
        ("sub", out),
        ("top/deep", out),
        ("m", out),
        ("conf.txt", secret),
        ("conf2.txt", secret),
    ] {
        let p = dst.join(rel);
        if fs::symlink_metadata(&p).unwrap().is_dir() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
        symlink(to, &p).unwrap();
    }
}

/// Change the source under every planted link: rewrite, add, delete,
/// chmod.
fn change_source(lab: &Lab) {
    let src = lab.src();
    lab.write("sub/a.txt", b"a2, longer");
    lab.write("sub/new.txt", b"new");
    lab.write("sub/deep/e.txt", b"e");
    lab.write("sub/fresh/f.txt", b"f");
    fs::remove_file(src.join("sub/gone.txt")).unwrap();
    lab.write("top/deep/x.txt", b"x2, longer");
    lab.write("top/deep/y.txt", b"y");
    fs::remove_file(src.join("top/deep/gone.txt")).unwrap();
    fs::set_permissions(src.join("conf.txt"), fs::Permissions::from_mode(0o666)).unwrap();
    lab.write("conf2.txt", b"conf2, rewritten");
    fs::set_permissions(src.join("m"), fs::Permissions::from_mode(0o777)).unwrap();
    fs::set_permissions(src.join("m/f.txt"), fs::Permissions::from_mode(0o666)).unwrap();
}

/// Finding 1 over SFTP: after a run, target directories (top-level and
/// nested) become symlinks to a directory outside and a file a symlink to
/// a 0600 secret; the source changes below each; the next run, planned
/// from a fresh listing or from the manifest, must not write, delete or
/// chmod anything outside, and later runs converge.
#[test]
fn symlinks_planted_in_an_sftp_target_are_never_written_through() {
    for extra in ["verify_interval: 0", "verify_interval: 1h"] {
        let lab = Lab::new();
        let s = Sshd::start(&lab.path("sshd"));
        sftp_job(&lab, &s, extra);
        seed(&lab);
        lab.run(&["run", "web"]).code(0);
        let (out, secret) = outside(&lab);
        let before = snapshot(&out);
        let out_mode = mode(&out);
        plant(&lab, &out, &secret);
        change_source(&lab);
        let r = lab.run(&["run", "web"]);
        assert_eq!(
            snapshot(&out),
            before,
            "{extra}: outside changed\n{}{}",
            r.stdout,
            r.stderr
        );
        assert_eq!(mode(&out), out_mode, "{extra}: outside was chmod-ed");
        assert_eq!(fs::read(&secret).unwrap(), b"secret: 0600", "{extra}");
        assert_eq!(mode(&secret), 0o600, "{extra}: the secret was chmod-ed");
        // the target converges: the links are replaced, never followed
        lab.run(&["run", "web"]);
        lab.run(&["run", "web"]).code(0);
        let dst = lab.dst();
        assert_eq!(rsync_diff(&lab.src(), &dst, &[]), "", "{extra}");
        for d in ["sub", "top/deep", "m"] {
            assert!(fs::symlink_metadata(dst.join(d)).unwrap().is_dir(), "{d}");
        }
        for f in ["conf.txt", "conf2.txt"] {
            assert!(fs::symlink_metadata(dst.join(f)).unwrap().is_file(), "{f}");
        }
        assert_eq!(snapshot(&out), before, "{extra}");
        assert_eq!(mode(&out), out_mode, "{extra}");
        assert_eq!(mode(&secret), 0o600, "{extra}");
    }
}

/// A symlink planted where the manifest says a directory is, and nothing
/// else changes there but one file's mode: the run planned from the
/// manifest sets that mode with `lsetstat` below a checked parent, never
/// through the link; the next run lists afresh and converges.
#[test]
fn a_mode_change_planned_from_the_manifest_never_chmods_through_a_link() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    sftp_job(&lab, &s, "verify_interval: 1h");
    lab.write("sub/deep/d.txt", b"d");
    lab.write("f.txt", b"f");
    lab.run(&["run", "web"]).code(0);
    let (out, secret) = outside(&lab);
    fs::set_permissions(out.join("deep/d.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    let before = snapshot(&out);
    let dst = lab.dst();
    fs::remove_dir_all(dst.join("sub")).unwrap();
    symlink(&out, dst.join("sub")).unwrap();
    fs::remove_file(dst.join("f.txt")).unwrap();
    symlink(&secret, dst.join("f.txt")).unwrap();
    let src = lab.src();
    fs::set_permissions(
        src.join("sub/deep/d.txt"),
        fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    fs::set_permissions(src.join("f.txt"), fs::Permissions::from_mode(0o666)).unwrap();
    let r = lab.run(&["run", "web"]);
    assert_eq!(
        snapshot(&out),
        before,
        "outside changed\n{}{}",
        r.stdout,
        r.stderr
    );
    assert_eq!(mode(&secret), 0o600, "the secret was chmod-ed");
    assert_ne!(r.code, 0, "a replaced link is reported: {}", r.stdout);
    let said = format!("{}{}", r.stdout, r.stderr);
    assert!(said.contains("symlink"), "{said}");
    eprintln!("{said}");
    lab.run(&["run", "web"]);
    lab.run(&["run", "web"]).code(0);
    assert_eq!(rsync_diff(&src, &dst, &[]), "");
    assert_eq!(snapshot(&out), before);
    assert_eq!(mode(&secret), 0o600);
}

/// `syncjob watch` keeps its SFTP connection open between batches: a
/// directory it wrote into in one batch, swapped for a link to an outside
/// directory before the next batch, is checked again by that batch, so
/// nothing lands outside; the target converges to real directories.
#[test]
fn a_link_planted_between_two_watch_batches_is_not_written_through() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    sftp_job(&lab, &s, "watch: {delay: 0}");
    lab.write("sub/a.txt", b"a");
    let (out, _) = outside(&lab);
    let before = snapshot(&out);
    let _stop = start_watch(&lab);
    let dst = lab.dst();
    assert!(
        until(WAIT, || dst.join("sub/a.txt").exists()),
        "{}",
        said(&lab)
    );
    // a batch that writes into `sub` on the kept connection
    lab.write("sub/b.txt", b"b");
    assert!(
        until(WAIT, || dst.join("sub/b.txt").exists()),
        "{}",
        said(&lab)
    );
    fs::rename(dst.join("sub"), lab.path("sub.was")).unwrap();
    symlink(&out, dst.join("sub")).unwrap();
    lab.write("sub/c.txt", b"c");
    lab.write("sub/deeper/d.txt", b"d");
    // the batch met the link: replaced, the files sent again later (the
    // code before the fix wrote them through the link, into `out`)
    let real = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    let landed = until(WAIT, || {
        out.join("c.txt").exists() || (real(&dst.join("sub")) && dst.join("sub/c.txt").exists())
    });
    assert_eq!(snapshot(&out), before, "{}", said(&lab));
    assert!(landed, "{}", said(&lab));
    assert!(until(WAIT, || dst.join("sub/deeper/d.txt").exists()));
    assert_eq!(snapshot(&out), before);
}

/// A directory renamed in the source is renamed on the target by the
/// watcher (posix-rename); a link planted at a parent of the old name must
/// not carry that rename outside the target (the rename before the fix
/// moved `outside/deep` to `outside/moved`).
#[test]
fn a_watched_rename_is_never_made_through_a_planted_link() {
    let lab = Lab::new();
    let s = Sshd::start(&lab.path("sshd"));
    sftp_job(&lab, &s, "watch: {delay: 0}");
    lab.write("sub/deep/d.txt", b"d");
    let (out, _) = outside(&lab);
    let before = snapshot(&out);
    let _stop = start_watch(&lab);
    let dst = lab.dst();
    assert!(
        until(WAIT, || dst.join("sub/deep/d.txt").exists()),
        "{}",
        said(&lab)
    );
    fs::rename(dst.join("sub"), lab.path("sub.was")).unwrap();
    symlink(&out, dst.join("sub")).unwrap();
    fs::rename(lab.path("src/sub/deep"), lab.path("src/sub/moved")).unwrap();
    let real = |p: &Path| fs::symlink_metadata(p).is_ok_and(|m| m.is_dir());
    let landed = until(WAIT, || {
        out.join("moved").exists()
            || (real(&dst.join("sub")) && dst.join("sub/moved/d.txt").exists())
    });
    assert_eq!(snapshot(&out), before, "{}", said(&lab));
    assert!(landed, "{}", said(&lab));
}

/// `syncjob watch web` in the background, its stderr in `watch.err`;
/// killed when the guard drops.
fn start_watch(lab: &Lab) -> KillOnDrop {
    let err = fs::File::create(lab.path("watch.err")).unwrap();
    let child = lab
        .cmd()
        .args(["watch", "web"])
        .stdout(std::process::Stdio::null())
        .stderr(err)
        .spawn()
        .unwrap();
    KillOnDrop(child)
}

/// The watcher's stderr.
fn said(lab: &Lab) -> String {
    fs::read_to_string(lab.path("watch.err")).unwrap_or_default()
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
