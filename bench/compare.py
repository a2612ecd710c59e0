#!/usr/bin/env python3
"""syncjob vs rsync, side by side in one run, on the same trees and the same
private loopback sshd. Run through bench/compare.sh.

Cases (each timed RUNS times, alternating syncjob and rsync, medians).
syncjob runs with its default settings; the bench's sshd puts a `syncjob`
on the remote PATH (see Sshd), as rsync is there, so the default
`ssh.remote_helper: auto` finds it and files go to `syncjob helper`:
  web-initial      ~20k files ~200 MB to an empty target over ssh
  web-noop         the same again, nothing changed (syncjob: from its manifest)
  web-noop-list    the same with syncjob listing the target (--verify)
  web-mutate       1% changed, 0.5% added, 0.5% deleted (with delete), after a
                   run that left the target in sync (syncjob: planned from its manifest)
  web-mutate-list  the same, syncjob listing the target (--verify)
  web-local        initial copy local -> local
  small-initial    100k files of ~1 KB over ssh
  small-noop       the same again (small-noop-list: syncjob with --verify)
  big-initial      4 x 256 MiB over ssh (compared with the raw ssh pipe rate too,
                   measured after each of its runs)
  big-tail         one 256 MiB file changed in its last 1 MiB (rsync's delta case)
  big-insert       one byte inserted at the start of one 256 MiB file
  *-sftp           web/small/big initial, big-tail and big-insert with
                   `ssh.remote_helper: none` (no syncjob on the remote: SFTP)
  million-rss      (MILLION=1 only) peak RSS of a no-op plan over 1M files, local
(The former `*-h` cases, with an explicit `remote_helper`, are the default
cases now.) The issue's goals are printed beside the ratios.

Measured per run with wait4(): wall time, CPU (user+sys, including reaped
children such as rsync's ssh), peak RSS; and the server side's CPU (sshd,
its sessions, sftp-server, syncjob helper, rsync's receiver) from a cgroup
the bench sshd is moved into (root only; `nan` otherwise).
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
BIN = os.environ.get("BIN") or os.path.join(ROOT, "target", "release", "syncjob")
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
    """A private sshd on loopback. `extra`: sshd_config lines put first (the
    first value of a key wins). Its sessions get PATH=D/bin:/usr/local/bin:
    /usr/bin:/bin through `SetEnv`, and D/bin/syncjob is a link to the
    build under test: syncjob is "installed on the remote PATH" as rsync is
    (in /usr/bin), without touching the system; D/bin goes with the lab."""

    def __init__(self, d, extra=""):
        self.d = d
        os.makedirs(d, exist_ok=True)
        os.makedirs(f"{d}/bin", exist_ok=True)
        if os.path.lexists(f"{d}/bin/syncjob"):
            os.remove(f"{d}/bin/syncjob")
        os.symlink(BIN, f"{d}/bin/syncjob")
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
            f.write(f"""{extra}
Port {self.port}
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
SetEnv HOME={d}/home PATH={d}/bin:/usr/local/bin:/usr/bin:/bin
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
        # the "installed" syncjob goes with the server
        if os.path.lexists(f"{self.d}/bin/syncjob"):
            os.remove(f"{self.d}/bin/syncjob")


class ServerCpu:
    """CPU time of the bench sshd and everything it starts (its sessions,
    sftp-server, syncjob helper, rsync's receiver): the sshd is moved into
    a cgroup of its own (cgroup v2 `cpu.stat`, or v1 `cpuacct`), whose
    usage is read around each run. Root only; `None` figures otherwise."""

    def __init__(self, pid, name):
        self.read = None
        for base, usage, scale in (("/sys/fs/cgroup", "cpu.stat", None),
                                   ("/sys/fs/cgroup/cpuacct", "cpuacct.usage", 1e9)):
            d = f"{base}/{name}"
            try:
                if scale is None and not os.path.exists(f"{base}/cgroup.controllers"):
                    continue
                os.makedirs(d, exist_ok=True)
                with open(f"{d}/cgroup.procs", "w") as f:
                    f.write(str(pid))
            except OSError:
                continue
            self.dir = d
            if scale is None:
                def read(d=d):
                    for line in open(f"{d}/cpu.stat"):
                        k, v = line.split()
                        if k == "usage_usec":
                            return int(v) / 1e6
                self.read = read
            else:
                self.read = lambda d=d: int(open(f"{d}/cpuacct.usage").read()) / 1e9
            return

    def seconds(self):
        return self.read() if self.read else None

    def remove(self):
        if self.read:
            try:
                # the sshd has exited; an empty cgroup can go
                os.rmdir(self.dir)
            except OSError:
                pass


SERVER = None


def measure(cmd, env=None):
    s0 = SERVER.seconds() if SERVER else None
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    # the server's sessions end just after the client: let them be counted
    time.sleep(0.2)
    s1 = SERVER.seconds() if SERVER else None
    err = p.stderr.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise SystemExit(f"command failed ({code}): {' '.join(cmd)}\n{err}")
    server = s1 - s0 if s0 is not None and s1 is not None else float("nan")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024.0, server


def gen(kind, dest, seed=1):
    if not os.path.exists(dest):
        sh(sys.executable, MKTREE, "gen", kind, dest, "--seed", str(seed), stdout=subprocess.DEVNULL)


def reset(src, dst):
    """Make dst an exact copy of src (untimed)."""
    sh("rsync", "-a", "--delete", f"{src}/", f"{dst}/")


def write_jobs(path, jobs, sshd):
    lines = ["jobs:"]
    for name, (src, remote, *helper) in jobs.items():
        # default settings, but for `remote_helper: none` on the *-sftp jobs
        more = f", remote_helper: {helper[0]}" if helper else ""
        lines += [f"  {name}:", f"    source: {src}", f"    remote: {remote}", "    delete: true",
                  "    retries: 0"]
        if os.environ.get("STREAMS"):
            lines.append(f"    streams: {os.environ['STREAMS']}")
        lines.append(f"    ssh: {{ identity: {sshd.d}/id_ed25519, known_hosts: {sshd.d}/known_hosts{more} }}")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


# the goals: ratio to rsync (≤), or share of the raw ssh pipe (≥)
GOALS = {"web-initial": "<=0.8", "small-initial": "<=0.7", "big-tail": "<=0.5",
         "big-insert": "<=0.5", "web-initial-sftp": "<=1.0", "big-initial": ">=95%pipe"}


def goal_cell(name, ratio, pipe_share):
    g = GOALS.get(name)
    if not g:
        return ""
    if g.endswith("%pipe"):
        met = pipe_share is not None and pipe_share * 100 >= float(g[2:-5])
        return f"{g} {'met' if met else 'NOT met'}"
    return f"{g} {'met' if ratio <= float(g[2:]) else 'NOT met'}"


def helper_used(state):
    """Whether the auto probe found the remote helper (its cache says so)."""
    d = f"{state}/remote-helper"
    try:
        return any(open(f"{d}/{f}").read().startswith("present") for f in os.listdir(d))
    except OSError:
        return False


def main():
    os.makedirs(LAB, exist_ok=True)
    trees = f"{LAB}/trees"
    os.makedirs(trees, exist_ok=True)
    sshd = Sshd(f"{LAB}/sshd")
    global SERVER
    SERVER = ServerCpu(int(open(f"{LAB}/sshd/sshd.pid").read()), f"syncjob-bench-{os.getpid()}")
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
        if not os.path.exists(f"{trees}/big-insert"):
            sh("cp", "-a", f"{trees}/big", f"{trees}/big-insert")
            f0 = sorted(os.listdir(f"{trees}/big-insert"))[0]
            p = f"{trees}/big-insert/{f0}"
            # streamed: a 256 MiB buffer here would be counted in every
            # child's peak RSS (a forked child starts with the parent's pages)
            with open(f"{trees}/big/{f0}", "rb") as fin, open(p, "wb") as fout:
                fout.write(b"\x5a")
                shutil.copyfileobj(fin, fout, 1 << 20)
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
            "biginsert": (f"{trees}/big-insert", ssh_url(f"{T}/sj-big")),
            # no syncjob on the remote: SFTP only
            "websftp": (f"{trees}/web", ssh_url(f"{T}/sj-web"), "none"),
            "smallsftp": (f"{trees}/small", ssh_url(f"{T}/sj-small"), "none"),
            "bigsftp": (f"{trees}/big", ssh_url(f"{T}/sj-big"), "none"),
            "bigtailsftp": (f"{trees}/big-tail", ssh_url(f"{T}/sj-big"), "none"),
            "biginsertsftp": (f"{trees}/big-insert", ssh_url(f"{T}/sj-big"), "none"),
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
            ("big-insert", sj("biginsert"), rsync_ssh + [f"{trees}/big-insert/", rdest(f"{T}/rs-big")],
             lambda tool: reset_t(f"{trees}/big", f"{T}/{tool}-big", tool)),
            # no syncjob on the remote (ssh.remote_helper: none): SFTP
            ("web-initial-sftp", sj("websftp"), rsync_ssh + [f"{trees}/web/", rdest(f"{T}/rs-web")],
             lambda tool: rm(f"{T}/{tool}-web", tool)),
            ("small-initial-sftp", sj("smallsftp"), rsync_ssh + [f"{trees}/small/", rdest(f"{T}/rs-small")],
             lambda tool: rm(f"{T}/{tool}-small", tool)),
            ("big-initial-sftp", sj("bigsftp"), rsync_ssh + [f"{trees}/big/", rdest(f"{T}/rs-big")],
             lambda tool: rm(f"{T}/{tool}-big", tool)),
            ("big-tail-sftp", sj("bigtailsftp"), rsync_ssh + [f"{trees}/big-tail/", rdest(f"{T}/rs-big")],
             lambda tool: reset_t(f"{trees}/big", f"{T}/{tool}-big", tool)),
            ("big-insert-sftp", sj("biginsertsftp"), rsync_ssh + [f"{trees}/big-insert/", rdest(f"{T}/rs-big")],
             lambda tool: reset_t(f"{trees}/big", f"{T}/{tool}-big", tool)),
        ]
        big = sorted(os.listdir(f"{trees}/big"))
        total = sum(os.path.getsize(f"{trees}/big/{f}") for f in big)
        pipe = []

        def measure_pipe():
            # raw ssh pipe rate over one big file, taken beside the big
            # cases so that it sees the same load
            t0 = time.perf_counter()
            with open(f"{trees}/big/{big[0]}", "rb") as f:
                sh("ssh", *sshd.opts.split(), f"{USER}@127.0.0.1", "cat >/dev/null", stdin=f)
            pipe.append(os.path.getsize(f"{trees}/big/{big[0]}") / (time.perf_counter() - t0))

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
                if name.startswith("big-initial"):
                    measure_pipe()
            med = {t: tuple(statistics.median(x[k] for x in v) for k in range(4)) for t, v in m.items()}
            results.append((name, med))
            print(f"  {name}: syncjob {med['sj'][0]:.2f}s, rsync {med['rs'][0]:.2f}s", file=sys.stderr, flush=True)

        if not pipe:
            for _ in range(RUNS):
                measure_pipe()
        pipe_rate = statistics.median(pipe)

        print()
        where = "targets on tmpfs" if TMPFS else "targets on disk"
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
        print(f"syncjob vs rsync, medians of {RUNS} runs, {os.cpu_count()} cores, loopback ssh, {where}, "
              f"load average at the end {load}")
        print(f"remote helper found on the remote PATH by `auto`: {'yes' if helper_used(f'{LAB}/state') else 'NO'}")
        print("cpu: user+sys seconds of the client side (rsync's with its ssh); srv: of the server "
              "side (the sshd's cgroup: sessions, sftp-server, syncjob helper, rsync's receiver)")
        print(f"{'case':<19}{'syncjob s':>10}{'rsync s':>9}{'ratio':>7}   {'sj cpu':>7}{'rs cpu':>7}"
              f"{'sj srv':>7}{'rs srv':>7}   {'sj MiB':>7}{'rs MiB':>7}   goal")
        for name, med in results:
            sjw, sjc, sjr, sjs = med["sj"]
            rsw, rsc, rsr, rss = med["rs"]
            share = (total / sjw / pipe_rate) if name.startswith("big-initial") else None
            print(f"{name:<19}{sjw:>10.2f}{rsw:>9.2f}{sjw / rsw:>7.2f}   {sjc:>7.2f}{rsc:>7.2f}"
                  f"{sjs:>7.2f}{rss:>7.2f}   {sjr:>7.1f}{rsr:>7.1f}   {goal_cell(name, sjw / rsw, share)}")
        print(f"raw ssh pipe (cat >/dev/null): {pipe_rate / (1 << 20):.0f} MiB/s")
        for case in ("big-initial", "big-initial-sftp"):
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
        if SERVER:
            time.sleep(0.5)
            SERVER.remove()


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
