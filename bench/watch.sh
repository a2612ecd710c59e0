#!/usr/bin/env bash
# syncjob watch vs lsyncd (Debian package lsyncd) over a private loopback
# sshd, side by side: one-file edit latency, a 10k-file release, idle CPU,
# start-up and RSS on a 100k-file tree. See bench/watch.py for the knobs
# (EDITS, BURST, IDLE, CASES, LAB, TMPFS=0).
set -euo pipefail
cd "$(dirname "$0")/.."
for c in rsync ssh /usr/sbin/sshd python3 lsyncd; do
  command -v "$c" >/dev/null 2>&1 || [ -x "$c" ] || { echo "missing $c (apt-get install rsync openssh-server lsyncd)" >&2; exit 1; }
done
cargo build --release -q
exec python3 bench/watch.py
