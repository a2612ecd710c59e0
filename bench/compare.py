#!/usr/bin/env python3
"""syncjob vs rsync, side by side in one run, on the same trees and the same
private loopback sshd. Run through bench/compare.sh.

Cases (each timed RUNS times, alternating syncjob and rsync, medians):
  web-initial      ~20k files ~200 MB to an empty target over ssh
  web-noop         the same again, nothing changed (syncjob: from its manifest)
  web-noop-list    the same with syncjob listing the target (--verify)
  web-mutate       1% changed, 0.5% added, 0.5% deleted (with delete), after a
                   run that left the target in sync (syncjob: planned from its manifest)
  web-mutate-list  the same, syncjob listing the target (--verify)
  web-local        initial copy local -> local
  small-initial    100k files of ~1 KB over ssh
  small-noop       the same again (small-noop-list: syncjob with --verify)
  big-initial      4 x 256 MiB over ssh (compared with the raw ssh pipe rate too)
  big-tail         one 256 MiB file changed in its last 1 MiB (rsync's delta case)
  *-initial-h      web/small/big initial copies with ssh.remote_helper: files go
                   to `syncjob helper` on the remote instead of SFTP
  big-tail-h       big-tail with the helper (only the changed blocks are sent)
  million-rss      (MILLION=1 only) peak RSS of a no-op plan over 1M files, local

Measured per run with wait4(): wall time, CPU (user+sys, including reaped
children such as rsync's ssh), peak RSS. Remote-side CPU (sshd, rsync's
receiver, sftp-server) is not included for either tool.
"""
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release", "syncjob")
MKTREE = os.path.join(ROOT, "bench", "mktree.py")
LAB = os.environ.get("LAB", "/tmp/syncjob-compare")
RUNS = int(os.environ.get("RUNS", "3"))
CASES = os.environ.get("CASES", "").split(",") if os.environ.get("CASES") else None
# targets on a tmpfs (root only); TMPFS=0 keeps them on the disk
TMPFS = os.geteuid() == 0 and os.environ.get("TMPFS", "1") != "0"
USER = os.environ.get("USER") or subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()


def sh(*args, **kw):
    return subprocess.run(args, check=True, **kw)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Sshd:
    def __init__(self, d):
        self.d = d
        os.makedirs(d, exist_ok=True)
        for k in ("host_key", "id_ed25519"):
            if not os.path.exists(f"{d}/{k}"):
                sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{d}/{k}")
        shutil.copy(f"{d}/id_ed25519.pub", f"{d}/authorized_keys")
        os.makedirs(f"{d}/home", exist_ok=True)
        self.port = free_port()
        hostpub = " ".join(open(f"{d}/host_key.pub").read().split()[:2])
        with open(f"{d}/known_hosts", "w") as f:
            f.write(f"[127.0.0.1]:{self.port} {hostpub}\n")
        with open(f"{d}/sshd_config", "w") as f:
            f.write(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {d}/host_key
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 100:30:200
MaxSessions 64
LogLevel ERROR
Subsystem sftp internal-sftp
SetEnv HOME={d}/home
""")
        os.makedirs("/run/sshd", exist_ok=True)
        sh("/usr/sbin/sshd", "-f", f"{d}/sshd_config", "-E", f"{d}/sshd.log")
        for _ in range(100):
            if os.path.exists(f"{d}/sshd.pid"):
                break
            time.sleep(0.05)
        self.opts = (f"-p {self.port} -i {d}/id_ed25519 -o IdentitiesOnly=yes -o BatchMode=yes "
                     f"-o StrictHostKeyChecking=yes -o UserKnownHostsFile={d}/known_hosts "
                     f"-o GlobalKnownHostsFile=/dev/null")

    def stop(self):
        try:
            pid = int(open(f"{self.d}/sshd.pid").read())
            os.kill(pid, 15)
        except Exception:
            pass


def measure(cmd, env=None):
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    err = p.stderr.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"command failed ({code}): {' '.join(cmd)}\n{err}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024.0


def gen(kind, dest, seed=1):
    if not os.path.exists(dest):
        sh(sys.executable, MKTREE, "gen", kind, dest, "--seed", str(seed), stdout=subprocess.DEVNULL)


def reset(src, dst):
    """Make dst an exact copy of src (untimed)."""
    sh("rsync", "-a", "--delete", f"{src}/", f"{dst}/")


def write_jobs(path, jobs, sshd):
    lines = ["jobs:"]
    for name, (src, remote, *helper) in jobs.items():
        more = f", remote_helper: {BIN}" if helper and helper[0] else ""
        lines += [f"  {name}:", f"    source: {src}", f"    remote: {remote}", "    delete: true",
                  "    retries: 0",
                  f"    streams: {os.environ.get('STREAMS', '4')}",
                  f"    ssh: {{ identity: {sshd.d}/id_ed25519, known_hosts: {sshd.d}/known_hosts{more} }}"]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    os.makedirs(LAB, exist_ok=True)
    trees = f"{LAB}/trees"
    os.makedirs(trees, exist_ok=True)
    sshd = Sshd(f"{LAB}/sshd")
    ssh_url = lambda p: f"ssh://{USER}@127.0.0.1:{sshd.port}{p}"
    rsync_ssh = ["rsync", "-a", "--delete", "-e", f"ssh {sshd.opts}"]
    rdest = lambda p: f"{USER}@127.0.0.1:{p}/"
    try:
        gen("web", f"{trees}/web")
        if not os.path.exists(f"{trees}/web-mut"):
            sh("cp", "-a", f"{trees}/web", f"{trees}/web-mut")
            sh(sys.executable, MKTREE, "mutate", f"{trees}/web-mut", stdout=subprocess.DEVNULL)
        gen("small", f"{trees}/small")
        gen("big", f"{trees}/big")
        if not os.path.exists(f"{trees}/big-tail"):
            sh("cp", "-a", f"{trees}/big", f"{trees}/big-tail")
            f0 = sorted(os.listdir(f"{trees}/big-tail"))[0]
            with open(f"{trees}/big-tail/{f0}", "r+b") as f:
                f.seek(-(1 << 20), 2)
                f.write(os.urandom(1 << 20))
        T = f"{LAB}/targets"
        os.makedirs(T, exist_ok=True)
        if TMPFS:
            # targets on a tmpfs: the tools' own costs, without ext4's inode
            # allocator slowing down after each rm -rf of a target (it skips
            # recently deleted inodes: seen as `recently_deleted` in perf,
            # varying runs by 2-4x for both tools)
            sh("mount", "-t", "tmpfs", "-o", "size=12g", "tmpfs", T)
        jobs = {
            "web": (f"{trees}/web", ssh_url(f"{T}/sj-web")),
            "webmut": (f"{trees}/web-mut", ssh_url(f"{T}/sj-web")),
            "webscratch": (f"{trees}/web-scratch", ssh_url(f"{T}/sj-web")),
            "weblocal": (f"{trees}/web", f"{T}/sj-web-local"),
            "small": (f"{trees}/small", ssh_url(f"{T}/sj-small")),
            "big": (f"{trees}/big", ssh_url(f"{T}/sj-big")),
            "bigtail": (f"{trees}/big-tail", ssh_url(f"{T}/sj-big")),
            # the same through `syncjob helper` on the remote (ssh.remote_helper)
            "webh": (f"{trees}/web", ssh_url(f"{T}/sj-web"), True),
            "smallh": (f"{trees}/small", ssh_url(f"{T}/sj-small"), True),
            "bigh": (f"{trees}/big", ssh_url(f"{T}/sj-big"), True),
            "bigtailh": (f"{trees}/big-tail", ssh_url(f"{T}/sj-big"), True),
        }
        cfg = f"{LAB}/jobs.yaml"
        write_jobs(cfg, jobs, sshd)
        sj = lambda job: [BIN, "-c", cfg, "--state-dir", f"{LAB}/state", "-q", "run", job]

        def forget(tool):
            # syncjob's target is changed behind its back: drop its manifests
            if tool == "sj":
                shutil.rmtree(f"{LAB}/state/manifests", ignore_errors=True)

        def rm(p, tool):
            shutil.rmtree(p, ignore_errors=True)
            forget(tool)

        def reset_t(src, dst, tool):
            reset(src, dst)
            forget(tool)

        def mutate_prep(tool):
            scratch = f"{trees}/web-scratch"
            reset(f"{trees}/web", scratch)
            reset_t(f"{trees}/web", f"{T}/{tool}-web", tool)
            if tool == "sj":
                # a run that finds the target in sync leaves the manifest
                sh(*sj("webscratch"), "--verify", stdout=subprocess.DEVNULL)
            sh(sys.executable, MKTREE, "mutate", scratch, stdout=subprocess.DEVNULL)

        # case: (name, syncjob cmd, rsync cmd, prepare(tool) run untimed before each timed run)
        cases = [
            ("web-initial", sj("web"), rsync_ssh + [f"{trees}/web/", rdest(f"{T}/rs-web")],
             lambda tool: rm(f"{T}/{tool}-web", tool)),
            ("web-noop", sj("web"), rsync_ssh + [f"{trees}/web/", rdest(f"{T}/rs-web")],
             lambda tool: None),
            # the same with a full listing of the target (what happens once per
            # verify_interval, or with verify_interval: 0)
            ("web-noop-list", sj("web") + ["--verify"], rsync_ssh + [f"{trees}/web/", rdest(f"{T}/rs-web")],
             lambda tool: None),
            # the source changes after a run that left the target in sync (the
            # daemon's case): syncjob plans against its manifest
            ("web-mutate", sj("webscratch"), rsync_ssh + [f"{trees}/web-scratch/", rdest(f"{T}/rs-web")],
             lambda tool: mutate_prep(tool)),
            # the same, syncjob listing the target (--verify)
            ("web-mutate-list", sj("webmut") + ["--verify"], rsync_ssh + [f"{trees}/web-mut/", rdest(f"{T}/rs-web")],
             lambda tool: reset_t(f"{trees}/web", f"{T}/{tool}-web", tool)),
            ("web-local", sj("weblocal"), ["rsync", "-a", "--delete", f"{trees}/web/", f"{T}/rs-web-local/"],
             lambda tool: rm(f"{T}/{tool}-web-local", tool)),
            ("small-initial", sj("small"), rsync_ssh + [f"{trees}/small/", rdest(f"{T}/rs-small")],
             lambda tool: rm(f"{T}/{tool}-small", tool)),
            ("small-noop", sj("small"), rsync_ssh + [f"{trees}/small/", rdest(f"{T}/rs-small")],
             lambda tool: None),
            ("small-noop-list", sj("small") + ["--verify"], rsync_ssh + [f"{trees}/small/", rdest(f"{T}/rs-small")],
             lambda tool: None),
            ("big-initial", sj("big"), rsync_ssh + [f"{trees}/big/", rdest(f"{T}/rs-big")],
             lambda tool: rm(f"{T}/{tool}-big", tool)),
            ("big-tail", sj("bigtail"), rsync_ssh + [f"{trees}/big-tail/", rdest(f"{T}/rs-big")],
             lambda tool: reset_t(f"{trees}/big", f"{T}/{tool}-big", tool)),
            # syncjob with ssh.remote_helper (syncjob on the remote, as rsync
            # needs rsync there) against the same rsync runs
            ("web-initial-h", sj("webh"), rsync_ssh + [f"{trees}/web/", rdest(f"{T}/rs-web")],
             lambda tool: rm(f"{T}/{tool}-web", tool)),
            ("small-initial-h", sj("smallh"), rsync_ssh + [f"{trees}/small/", rdest(f"{T}/rs-small")],
             lambda tool: rm(f"{T}/{tool}-small", tool)),
            ("big-initial-h", sj("bigh"), rsync_ssh + [f"{trees}/big/", rdest(f"{T}/rs-big")],
             lambda tool: rm(f"{T}/{tool}-big", tool)),
            # the helper sends only the changed blocks (fixed 128 KiB blocks)
            ("big-tail-h", sj("bigtailh"), rsync_ssh + [f"{trees}/big-tail/", rdest(f"{T}/rs-big")],
             lambda tool: reset_t(f"{trees}/big", f"{T}/{tool}-big", tool)),
        ]
        results = []
        for name, sj_cmd, rs_cmd, prep in cases:
            if CASES and name not in CASES:
                continue
            m = {"sj": [], "rs": []}
            for i in range(RUNS):
                order = [("sj", sj_cmd), ("rs", rs_cmd)] if i % 2 == 0 else [("rs", rs_cmd), ("sj", sj_cmd)]
                for tool, cmd in order:
                    prep(tool)
                    sh("sync")
                    m[tool].append(measure(cmd))
            med = {t: tuple(statistics.median(x[k] for x in v) for k in range(3)) for t, v in m.items()}
            results.append((name, med))
            print(f"  {name}: syncjob {med['sj'][0]:.2f}s, rsync {med['rs'][0]:.2f}s", file=sys.stderr, flush=True)

        # raw ssh pipe rate over the big files
        big = sorted(os.listdir(f"{trees}/big"))
        total = sum(os.path.getsize(f"{trees}/big/{f}") for f in big)
        pipe = []
        for _ in range(RUNS):
            t0 = time.perf_counter()
            with open(f"{trees}/big/{big[0]}", "rb") as f:
                sh("ssh", *sshd.opts.split(), f"{USER}@127.0.0.1", "cat >/dev/null", stdin=f)
            pipe.append(os.path.getsize(f"{trees}/big/{big[0]}") / (time.perf_counter() - t0))
        pipe_rate = statistics.median(pipe)

        print()
        where = "targets on tmpfs" if TMPFS else "targets on disk"
        print(f"syncjob vs rsync, medians of {RUNS} runs, {os.cpu_count()} cores, loopback ssh, {where}")
        print(f"{'case':<15}{'syncjob s':>10}{'rsync s':>9}{'ratio':>7}   {'sj cpu':>7}{'rs cpu':>7}   {'sj MiB':>7}{'rs MiB':>7}")
        for name, med in results:
            sjw, sjc, sjr = med["sj"]
            rsw, rsc, rsr = med["rs"]
            print(f"{name:<15}{sjw:>10.2f}{rsw:>9.2f}{sjw / rsw:>7.2f}   {sjc:>7.2f}{rsc:>7.2f}   {sjr:>7.1f}{rsr:>7.1f}")
        print(f"raw ssh pipe (cat >/dev/null): {pipe_rate / (1 << 20):.0f} MiB/s")
        for case in ("big-initial", "big-initial-h"):
            bi = dict(results).get(case)
            if bi:
                rate = total / bi["sj"][0]
                print(f"  syncjob {case} {rate / (1 << 20):.0f} MiB/s = {rate / pipe_rate * 100:.0f}% of the pipe")
        if os.environ.get("MILLION") == "1":
            million(trees)
    finally:
        sshd.stop()
        if TMPFS:
            subprocess.run(["umount", "-l", f"{LAB}/targets"])


def million(trees):
    """Peak RSS of syncjob planning a no-op over 1M tiny files, local."""
    d = f"{trees}/million"
    if not os.path.exists(d):
        for i in range(1000):
            sub = f"{d}/{i:03d}"
            os.makedirs(sub)
            for j in range(1000):
                with open(f"{sub}/{j:03d}", "w") as f:
                    f.write("x")
    cfg = f"{LAB}/million.yaml"
    with open(cfg, "w") as f:
        f.write(f"jobs:\n  m:\n    source: {d}\n    remote: {LAB}/targets/million\n")
    run = [BIN, "-c", cfg, "--state-dir", f"{LAB}/state", "-q", "run", "m"]
    shutil.rmtree(f"{LAB}/targets/million", ignore_errors=True)
    shutil.rmtree(f"{LAB}/state/manifests/m", ignore_errors=True)
    first = measure(run)
    noop = measure(run)
    listed = measure(run + ["--verify"])
    print(f"1M files local: initial {first[0]:.1f}s peak {first[2]:.0f} MiB; "
          f"no-op {noop[0]:.1f}s peak {noop[2]:.0f} MiB; "
          f"no-op listing the target (--verify) {listed[0]:.1f}s peak {listed[2]:.0f} MiB")


if __name__ == "__main__":
    main()
