#!/usr/bin/env python3
"""Which SSH cipher moves files fastest on this machine, over the loopback
sshd: for each cipher, an sshd offering only that cipher (`Ciphers`), then
  pipe    `ssh -c CIPHER host 'cat >/dev/null'` of one 256 MiB file (OpenSSH
          on both ends),
  sftp    syncjob copying the 4 x 256 MiB `big` tree over SFTP
          (`remote_helper: none`, the embedded libssh2 client),
  helper  the same through `syncjob helper` on the remote.
Figures: MiB/s (wall time), and CPU seconds per GiB moved on each side:
the client (syncjob's own user+sys time) and the server (the sshd
processes of the session, read as the listener's reaped-children time).
CPU per GiB does not grow with the machine's load the way wall time does,
so on a busy machine it is the figure to choose by. Medians of RUNS
(default 3). Run through bench/ciphers.sh.
"""
import os
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare  # noqa: E402  (same directory)

CIPHERS = os.environ.get(
    "CIPHERS", "aes128-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr").split(",")


def mib_s(nbytes, secs):
    return nbytes / secs / (1 << 20)


def server_cpu(sshd):
    """CPU seconds of the sshd listener's reaped children (the sessions)."""
    pid = int(open(f"{sshd.d}/sshd.pid").read())
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[13]) + int(f[14])) / os.sysconf("SC_CLK_TCK")


def one_cipher(cipher, big, total, T):
    sshd = compare.Sshd(f"{compare.LAB}/sshd-ciphers", extra=f"Ciphers {cipher}")
    try:
        url = f"ssh://{compare.USER}@127.0.0.1:{sshd.port}{T}/big"
        cfg = f"{compare.LAB}/ciphers.yaml"
        compare.write_jobs(cfg, {"sftp": (big, url, "none"), "helper": (big, url, compare.BIN)}, sshd)
        state = f"{compare.LAB}/state-ciphers"
        got = {k: [] for k in ("pipe", "sftp", "sftp_c", "sftp_s", "helper", "helper_c", "helper_s")}
        gib = total / (1 << 30)
        first = sorted(os.listdir(big))[0]
        size = os.path.getsize(f"{big}/{first}")
        for _ in range(compare.RUNS):
            t0 = time.perf_counter()
            with open(f"{big}/{first}", "rb") as f:
                compare.sh("ssh", "-c", cipher, *sshd.opts.split(), f"{compare.USER}@127.0.0.1",
                           "cat >/dev/null", stdin=f)
            got["pipe"].append(mib_s(size, time.perf_counter() - t0))
            for job in ("sftp", "helper"):
                shutil.rmtree(f"{T}/big", ignore_errors=True)
                shutil.rmtree(f"{state}/manifests", ignore_errors=True)
                compare.sh("sync")
                s0 = server_cpu(sshd)
                wall, cpu, _, _ = compare.measure(
                    [compare.BIN, "-c", cfg, "--state-dir", state, "-q", "run", job])
                time.sleep(0.5)  # the session's processes reaped
                got[job].append(mib_s(total, wall))
                got[job + "_c"].append(cpu / gib)
                got[job + "_s"].append((server_cpu(sshd) - s0) / gib)
        return {k: statistics.median(v) for k, v in got.items()}
    finally:
        sshd.stop()


def main():
    os.makedirs(f"{compare.LAB}/trees", exist_ok=True)
    big = f"{compare.LAB}/trees/big"
    compare.gen("big", big)
    total = sum(os.path.getsize(f"{big}/{f}") for f in os.listdir(big))
    T = f"{compare.LAB}/targets-ciphers"
    os.makedirs(T, exist_ok=True)
    if compare.TMPFS:
        compare.sh("mount", "-t", "tmpfs", "-o", "size=3g", "tmpfs", T)
    try:
        rows = []
        for c in CIPHERS:
            r = one_cipher(c, big, total, T)
            print(f"  {c}: {r}", file=sys.stderr, flush=True)
            rows.append((c, r))
    finally:
        if compare.TMPFS:
            subprocess.run(["umount", "-l", T])
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nciphers over loopback ssh, MiB/s, medians of {compare.RUNS}, {os.cpu_count()} cores, "
          f"load average at the end {load}")
    print("(MiB/s wall; CPU s/GiB client+server)")
    print(f"{'cipher':<31}{'pipe':>6}{'sftp':>6}{'cpu c+s':>13}{'helper':>8}{'cpu c+s':>13}")
    for c, r in rows:
        print(f"{c:<31}{r['pipe']:>6.0f}{r['sftp']:>6.0f}{r['sftp_c']:>6.2f}+{r['sftp_s']:<6.2f}"
              f"{r['helper']:>8.0f}{r['helper_c']:>6.2f}+{r['helper_s']:<6.2f}")


if __name__ == "__main__":
    main()
