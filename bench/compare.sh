#!/usr/bin/env bash
# syncjob vs rsync over a private loopback sshd, side by side in one run.
# Generates the trees on first use under $LAB (default /tmp/syncjob-compare,
# ~1.5 GB). RUNS=3 by default; CASES=web-initial,web-noop to pick cases;
# MILLION=1 adds the 1M-file peak-RSS case (slow; not for CI).
set -euo pipefail
cd "$(dirname "$0")/.."
for c in rsync ssh /usr/sbin/sshd python3; do
  command -v "$c" >/dev/null 2>&1 || [ -x "$c" ] || { echo "missing $c (apt-get install rsync openssh-server)" >&2; exit 1; }
done
cargo build --release -q
exec python3 bench/compare.py
