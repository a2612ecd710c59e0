#!/usr/bin/env bash
# Throughput per SSH cipher over a private loopback sshd (see ciphers.py):
# the raw ssh pipe, syncjob over SFTP and through the remote helper.
# CIPHERS=a,b to pick; RUNS=3 by default; BIN=path to test another build.
set -euo pipefail
cd "$(dirname "$0")/.."
for c in ssh /usr/sbin/sshd python3; do
  command -v "$c" >/dev/null 2>&1 || [ -x "$c" ] || { echo "missing $c (apt-get install openssh-server)" >&2; exit 1; }
done
[ -n "${BIN:-}" ] || cargo build --release -q
exec python3 bench/ciphers.py
