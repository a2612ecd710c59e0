#!/usr/bin/env bash
# Scheduler precision: syncjob's daemon with an every-second job, beside the
# classic `while true; do rsync -a src/ dst/; sleep 1; done` loop, both for
# DURATION seconds (default 60) on the same small tree.
#
# syncjob: lateness = started_at - scheduled_for of each run (from its log).
# shell loop: lateness of the n-th iteration = its start - (first start + n s);
#   this is also its drift, since the loop has no notion of a schedule.
# Prints p50 / p99 / max lateness and the drift after the last firing.
#
# Usage: bash bench/scheduler.sh            (needs rsync, python3, cargo)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-60}
cargo build --release -q
BIN=$PWD/target/release/syncjob
W=$(mktemp -d "${TMPDIR:-/tmp}/syncjob-sched.XXXXXX")
trap 'kill $DPID $LPID 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/src"
for i in $(seq 200); do echo "file $i" > "$W/src/f$i.txt"; done
cat > "$W/jobs.yaml" <<YAML
jobs:
  tick:
    source: $W/src
    remote: $W/dst-syncjob
    schedule: "* * * * * *"
YAML

"$BIN" -c "$W/jobs.yaml" --state-dir "$W/state" daemon 2>"$W/daemon.err" &
DPID=$!
(
  while true; do
    date +%s.%N >> "$W/loop.times"
    rsync -a "$W/src/" "$W/dst-loop/"
    sleep 1
  done
) &
LPID=$!
sleep "$DURATION"
kill -TERM $DPID; wait $DPID || true
kill $LPID; wait $LPID 2>/dev/null || true

python3 - "$W/state/runs.jsonl" "$W/loop.times" "$DURATION" <<'PY'
import json, sys
from datetime import datetime
log, times, dur = sys.argv[1], sys.argv[2], sys.argv[3]
def pct(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
late, due = [], []
for line in open(log):
    r = json.loads(line)
    if r.get("scheduled_for"):
        d = datetime.fromisoformat(r["scheduled_for"]); s = datetime.fromisoformat(r["started_at"])
        late.append((s - d).total_seconds() * 1000); due.append(d.timestamp())
missed = (max(due) - min(due) + 1) - len(due)
t = [float(x) for x in open(times)]
loop_late = [(x - (t[0] + i)) * 1000 for i, x in enumerate(t)]
print(f"every-second job for {dur} s, lateness after the due instant (ms)")
print(f"{'':24}{'firings':>8}{'p50':>9}{'p99':>9}{'max':>9}{'drift at end':>14}")
print(f"{'syncjob daemon':24}{len(late):>8}{pct(late,50):>9.2f}{pct(late,99):>9.2f}{max(late):>9.2f}{late[-1]:>11.2f} ms   missed: {int(missed)}")
print(f"{'while rsync; sleep 1':24}{len(t):>8}{pct(loop_late,50):>9.1f}{pct(loop_late,99):>9.1f}{max(loop_late):>9.1f}{loop_late[-1]:>11.1f} ms")
PY
