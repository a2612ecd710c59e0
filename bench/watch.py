#!/usr/bin/env python3
"""syncjob watch vs lsyncd, side by side, on the same trees and the same
private loopback sshd. Run through bench/watch.sh.

1. one-file edit -> visible on the target: p50 / p99 / max over EDITS edits
   (default 200), to a local directory and over ssh; syncjob `watch:
   {delay: 0}`, lsyncd `default.rsync` / `default.rsyncssh` with `delay = 0`;
2. a new release: BURST files (default 10 000) written at once -> time until
   the target equals the source (from the first write and from the last),
   against a one-shot `syncjob run` of the same change;
3. idle CPU over IDLE seconds (default 60) with no change: syncjob watch,
   lsyncd, and a syncjob daemon with a 1 s schedule for comparison;
4. start-up to "watching" and to "target equal" on a 100k-file tree, peak
   RSS once there.

Each edit writes a different size, so that rsync's quick check (which
lsyncd relies on) sees it; syncjob would send a same-size edit too.
Environment: LAB (default /tmp/syncjob-watchbench), EDITS, BURST, IDLE,
CASES=latency,burst,idle,startup.
"""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from compare import BIN, MKTREE, USER, Sshd, gen, sh  # noqa: E402

LAB = os.environ.get("LAB", "/tmp/syncjob-watchbench")
EDITS = int(os.environ.get("EDITS", "200"))
BURST = int(os.environ.get("BURST", "10000"))
IDLE = int(os.environ.get("IDLE", "60"))
CASES = os.environ.get("CASES", "latency,burst,idle,startup").split(",")
# which tools run in the latency and burst cases (sj: syncjob watch, ls:
# lsyncd, run: the one-shot syncjob run of the burst)
TOOLS = os.environ.get("TOOLS", "sj,ls,run").split(",")
TMPFS = os.geteuid() == 0 and os.environ.get("TMPFS", "1") != "0"


def mount_tmpfs(d):
    os.makedirs(d, exist_ok=True)
    if TMPFS and subprocess.run(["mountpoint", "-q", d]).returncode != 0:
        sh("mount", "-t", "tmpfs", "-o", "size=4g", "tmpfs", d)


def umount(d):
    if TMPFS:
        subprocess.run(["umount", "-l", d], stderr=subprocess.DEVNULL)


def equal(src, dst):
    r = subprocess.run(["rsync", "-an", "--delete", "--itemize-changes", f"{src}/", f"{dst}/"],
                       capture_output=True, text=True)
    return r.returncode == 0 and r.stdout.strip() == ""


def wait_equal(src, dst, limit=600):
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < limit:
        if equal(src, dst):
            return time.perf_counter()
        time.sleep(0.05)
    raise SystemExit(f"{dst} never became equal to {src}")


def cpu_of(pid):
    """user+sys seconds of a process and its live children."""
    total = 0.0
    tck = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    try:
        for line in open(f"/proc/{pid}/task/{pid}/children").read().split():
            pids.append(int(line))
    except OSError:
        pass
    for p in pids:
        try:
            f = open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()
            total += (int(f[11]) + int(f[12])) / tck
        except OSError:
            pass
    return total


def rss_peak(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


class Tool:
    """A syncjob watch / daemon or lsyncd process."""

    def __init__(self, name, cmd, log):
        self.name = name
        self.log = log
        self.p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(log, "w"))

    def logged(self, what, limit=600):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < limit:
            if what in open(self.log, errors="replace").read():
                return time.perf_counter()
            if self.p.poll() is not None:
                raise SystemExit(f"{self.name} exited:\n{open(self.log).read()}")
            time.sleep(0.01)
        raise SystemExit(f"{self.name} never logged {what!r}:\n{open(self.log).read()}")

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(30)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()


def syncjob_jobs(path, src, remote, sshd, extra=""):
    with open(path, "w") as f:
        f.write(f"""jobs:
  w:
    source: {src}
    remote: {remote}
    delete: true
    ssh: {{ identity: {sshd.d}/id_ed25519, known_hosts: {sshd.d}/known_hosts }}
{extra}""")


def syncjob(name, src, remote, sshd, extra="    watch: {delay: 0}\n", cmd=("watch", "w")):
    d = f"{LAB}/run-{name}"
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    syncjob_jobs(f"{d}/jobs.yaml", src, remote, sshd, extra)
    return Tool(name, [BIN, "-c", f"{d}/jobs.yaml", "--state-dir", f"{d}/state", *cmd], f"{d}/stderr.log")


def lsyncd(name, src, dst, sshd, ssh):
    d = f"{LAB}/run-{name}"
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    if ssh:
        sync = f"""sync {{ default.rsyncssh, source = "{src}", host = "{USER}@127.0.0.1", targetdir = "{dst}",
  delay = 0, rsync = {{ archive = true }},
  ssh = {{ port = {sshd.port}, identityFile = "{sshd.d}/id_ed25519",
          options = {{ StrictHostKeyChecking = "yes", UserKnownHostsFile = "{sshd.d}/known_hosts",
                      GlobalKnownHostsFile = "/dev/null", IdentitiesOnly = "yes", BatchMode = "yes" }} }} }}"""
    else:
        sync = f"""sync {{ default.rsync, source = "{src}", target = "{dst}", delay = 0,
  rsync = {{ archive = true }} }}"""
    with open(f"{d}/lsyncd.lua", "w") as f:
        f.write(f"""settings {{ nodaemon = true, logfile = "{d}/lsyncd.log", statusFile = "{d}/status",
  statusInterval = 3600 }}
{sync}
""")
    open(f"{d}/lsyncd.log", "w").close()
    t = Tool(name, ["lsyncd", f"{d}/lsyncd.lua"], f"{d}/stderr.log")
    t.log = f"{d}/lsyncd.log"
    return t


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def edit_latency(src, dst, rel):
    lat = []
    for i in range(EDITS):
        body = ("edit %d " % i) + "x" * (i % 97) + "\n"
        data = body.encode()
        t0 = time.perf_counter()
        with open(f"{src}/{rel}", "wb") as f:
            f.write(data)
        target = f"{dst}/{rel}"
        while True:
            try:
                with open(target, "rb") as f:
                    if f.read() == data:
                        break
            except OSError:
                pass
            if time.perf_counter() - t0 > 30:
                raise SystemExit(f"edit {i} never reached {target}")
            time.sleep(0.0002)
        lat.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.05)
    return lat


def case_latency(sshd, results):
    src = f"{LAB}/web"
    gen("web", src)
    rel = "bench-edit.php"
    with open(f"{src}/{rel}", "w") as f:
        f.write("start\n")
    for name, kind, ssh in [("syncjob local", "sj", False), ("lsyncd local", "ls", False),
                            ("syncjob ssh", "sj", True), ("lsyncd ssh", "ls", True)]:
        if kind not in TOOLS:
            continue
        dst = f"{LAB}/t/lat-{kind}-{'ssh' if ssh else 'local'}"
        shutil.rmtree(dst, ignore_errors=True)
        os.makedirs(dst)
        if kind == "sj":
            remote = f"ssh://{USER}@127.0.0.1:{sshd.port}{dst}" if ssh else dst
            t = syncjob(name.replace(" ", "-"), src, remote, sshd)
            t.logged("watching")
        else:
            t = lsyncd(name.replace(" ", "-"), src, dst, sshd, ssh)
        wait_equal(src, dst)
        time.sleep(1)
        lat = edit_latency(src, dst, rel)
        t.stop()
        results.append(f"{name:<16} {EDITS:>6} {statistics.median(lat):9.1f} {pct(lat, 99):9.1f} {max(lat):9.1f}")


def burst(src, n, tag):
    d = f"{src}/release-{tag}"
    os.makedirs(d)
    for i in range(n):
        sub = f"{d}/m{i % 100:02d}"
        if i < 100:
            os.makedirs(sub)
        with open(f"{sub}/f{i}.php", "w") as f:
            f.write(f"<?php // file {i} of release {tag}\n" + "x" * (i % 500) + "\n")


def case_burst(sshd, results):
    base = f"{LAB}/web"
    gen("web", base)
    for name, kind in [("syncjob watch", "sj"), ("lsyncd", "ls"), ("syncjob run", "run")]:
        if kind not in TOOLS:
            continue
        src = f"{LAB}/burst-src-{kind}"
        dst = f"{LAB}/t/burst-{kind}"
        for d in (src, dst):
            shutil.rmtree(d, ignore_errors=True)
        sh("cp", "-a", base, src)
        os.makedirs(dst)
        remote = f"ssh://{USER}@127.0.0.1:{sshd.port}{dst}"
        if kind == "run":
            d = f"{LAB}/run-burst-run"
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            syncjob_jobs(f"{d}/jobs.yaml", src, remote, sshd)
            run = [BIN, "-c", f"{d}/jobs.yaml", "--state-dir", f"{d}/state", "-q", "run", "w"]
            sh(*run)
            t0 = time.perf_counter()
            burst(src, BURST, "1")
            t1 = time.perf_counter()
            sh(*run)
            t2 = time.perf_counter()
            results.append(f"{name:<16} {BURST:>6} {'-':>12} {t2 - t1:12.2f}   (writing took {t1 - t0:.2f} s)")
            continue
        if kind == "sj":
            # the default delay (100 ms, max_delay 2 s): a release is sent in
            # few batches, not one per file event
            t = syncjob("burst-sj", src, remote, sshd, extra="    watch: true\n")
            t.logged("watching")
        else:
            t = lsyncd("burst-ls", src, dst, sshd, True)
        wait_equal(src, dst)
        time.sleep(1)
        w0 = time.time()
        t0 = time.perf_counter()
        burst(src, BURST, "1")
        t1 = time.perf_counter()
        t2 = wait_equal(src, dst)
        t.stop()
        note = ""
        if kind == "sj":
            # the target was equal when the last batch ended: its record's
            # finished_at, not the end of the rsync poll that saw it (one
            # `rsync -an` of the whole tree, ~0.5 s here, is not the tool's
            # time; the one-shot run is timed to its exit)
            ends = batch_ends(f"{LAB}/run-burst-sj/state/runs.jsonl", w0)
            if ends:
                t2 = min(t2, t0 + max(ends) - w0)
            note = f"   ({len(ends)} batches, writing took {t1 - t0:.2f} s)"
        results.append(f"{name:<16} {BURST:>6} {t2 - t0:12.2f} {t2 - t1:12.2f}{note}")


def batch_ends(log, since):
    """finished_at (epoch s) of the watch records started after `since`."""
    import datetime
    out = []
    for line in open(log):
        r = json.loads(line)
        if datetime.datetime.fromisoformat(r["started_at"]).timestamp() >= since:
            out.append(datetime.datetime.fromisoformat(r["finished_at"]).timestamp())
    return out


def case_idle(sshd, results):
    src = f"{LAB}/web"
    gen("web", src)
    tools = []
    for name, kind in [("syncjob watch", "sj"), ("lsyncd", "ls"), ("syncjob 1s sched", "sched")]:
        dst = f"{LAB}/t/idle-{kind}"
        shutil.rmtree(dst, ignore_errors=True)
        os.makedirs(dst)
        if kind == "sj":
            t = syncjob("idle-sj", src, dst, sshd, extra="    watch: true\n")
        elif kind == "ls":
            t = lsyncd("idle-ls", src, dst, sshd, False)
        else:
            t = syncjob("idle-sched", src, dst, sshd, extra="    schedule: \"* * * * * *\"\n", cmd=("daemon",))
        wait_equal(src, dst)
        tools.append((name, t))
    time.sleep(2)
    before = [(n, t, cpu_of(t.p.pid)) for n, t in tools]
    time.sleep(IDLE)
    for n, t, c0 in before:
        c = cpu_of(t.p.pid) - c0
        results.append(f"{n:<16} {IDLE:>4} s {c:8.2f} s {100 * c / IDLE:8.2f} %")
        t.stop()


def case_startup(sshd, results):
    src = f"{LAB}/small"
    gen("small", src)
    for name, kind in [("syncjob watch", "sj"), ("lsyncd", "ls")]:
        dst = f"{LAB}/t/start-{kind}"
        shutil.rmtree(dst, ignore_errors=True)
        os.makedirs(dst)
        t0 = time.perf_counter()
        if kind == "sj":
            t = syncjob("start-sj", src, dst, sshd, extra="    watch: true\n")
            tw = t.logged("watching")
        else:
            t = lsyncd("start-ls", src, dst, sshd, False)
            tw = t.logged("Startup of")
        te = wait_equal(src, dst)
        time.sleep(1)
        rss = rss_peak(t.p.pid)
        t.stop()
        results.append(f"{name:<16} {tw - t0:10.2f} {te - t0:10.2f} {rss:10.1f}")


def main():
    os.makedirs(LAB, exist_ok=True)
    mount_tmpfs(f"{LAB}/t")
    sshd = Sshd(f"{LAB}/sshd")
    out = []
    try:
        if "latency" in CASES:
            r = []
            case_latency(sshd, r)
            out += [f"one-file edit -> on the target (ms), {EDITS} edits, delay 0",
                    f"{'':<16} {'edits':>6} {'p50':>9} {'p99':>9} {'max':>9}", *r, ""]
        if "burst" in CASES:
            r = []
            case_burst(sshd, r)
            out += [f"new release: {BURST} files written at once, over ssh (s until the target equals the source)",
                    f"{'':<16} {'files':>6} {'from start':>12} {'after write':>12}", *r, ""]
        if "idle" in CASES:
            r = []
            case_idle(sshd, r)
            out += ["idle CPU, no change (20k-file web tree, local target)",
                    f"{'':<16} {'over':>6} {'cpu':>10} {'of a core':>10}", *r, ""]
        if "startup" in CASES:
            r = []
            case_startup(sshd, r)
            out += ["start-up on a 100k-file tree (1000 dirs), local target",
                    f"{'':<16} {'watching s':>10} {'equal s':>10} {'peak MiB':>10}", *r, ""]
    finally:
        sshd.stop()
        umount(f"{LAB}/t")
    print("\n".join(out))


if __name__ == "__main__":
    main()
