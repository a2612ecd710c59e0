#!/usr/bin/env bash
# What metrics and the cluster lock cost the scheduler: the daemon with an
# every-second job for DURATION seconds (default 30) three times: plain;
# with `metrics:` scraped every second; with `cluster:` on a local etcd
# (Debian etcd-server, started here on free loopback ports). Prints the
# lateness of the firings (started_at - scheduled_for, p50/p99/max) and,
# for the scraped run, the time one /metrics scrape took.
#
# Usage: bash bench/observe.sh   (needs python3, etcd; BIN=path to use
# another build than target/release/syncjob)
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-30}
if [ -z "${BIN:-}" ]; then
  cargo build --release -q
  BIN=$PWD/target/release/syncjob
fi
W=$(mktemp -d "${TMPDIR:-/tmp}/syncjob-observe.XXXXXX")
EPID=""
DPID=""
trap 'kill $DPID $EPID 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$W"' EXIT
mkdir -p "$W/src"
for i in $(seq 200); do echo "file $i" > "$W/src/f$i.txt"; done
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

run() { # name, extra top-level YAML
  local name=$1 extra=$2
  printf '%s\njobs:\n  tick:\n    source: %s\n    remote: %s\n    schedule: "* * * * * *"\n' \
    "$extra" "$W/src" "$W/dst-$name" > "$W/$name.yaml"
  "$BIN" -c "$W/$name.yaml" --state-dir "$W/state-$name" daemon 2>"$W/$name.err" &
  DPID=$!
  if [ "$name" = metrics ]; then
    sleep 1
    local addr
    addr=$(grep -o 'metrics on http://[^/]*' "$W/$name.err" | sed 's|metrics on http://||')
    python3 - "$addr" "$DURATION" > "$W/scrape.ms" <<'PY'
import sys, time, urllib.request
addr, dur = sys.argv[1], float(sys.argv[2])
end = time.time() + dur - 1
while time.time() < end:
    t = time.perf_counter()
    urllib.request.urlopen(f"http://{addr}/metrics").read()
    print((time.perf_counter() - t) * 1000)
    time.sleep(1)
PY
  else
    sleep "$DURATION"
  fi
  kill -TERM $DPID; wait $DPID || true
  DPID=""
}

run plain ""
run metrics "metrics: 127.0.0.1:0"
C=$(port); P=$(port)
etcd --name b --data-dir "$W/etcd" --listen-client-urls "http://127.0.0.1:$C" \
  --advertise-client-urls "http://127.0.0.1:$C" --listen-peer-urls "http://127.0.0.1:$P" \
  --initial-advertise-peer-urls "http://127.0.0.1:$P" --initial-cluster "b=http://127.0.0.1:$P" \
  >"$W/etcd.log" 2>&1 &
EPID=$!
sleep 2
run cluster "cluster: {etcd: [http://127.0.0.1:$C], ttl: 10s, prefix: /bench}"

python3 - "$W" "$DURATION" <<'PY'
import json, sys
from datetime import datetime
w, dur = sys.argv[1], sys.argv[2]
def pct(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
print(f"every-second job for {dur} s, lateness after the due instant (ms)")
print(f"{'':24}{'firings':>8}{'p50':>9}{'p99':>9}{'max':>9}")
for name in ["plain", "metrics", "cluster"]:
    late = []
    for line in open(f"{w}/state-{name}/runs.jsonl"):
        r = json.loads(line)
        if r.get("scheduled_for"):
            d = datetime.fromisoformat(r["scheduled_for"]); s = datetime.fromisoformat(r["started_at"])
            late.append((s - d).total_seconds() * 1000)
    label = {"plain": "plain", "metrics": "metrics, scraped 1/s", "cluster": "cluster (etcd, ttl 10s)"}[name]
    print(f"{label:24}{len(late):>8}{pct(late,50):>9.2f}{pct(late,99):>9.2f}{max(late):>9.2f}")
s = [float(x) for x in open(f"{w}/scrape.ms")]
print(f"/metrics scrape: {len(s)} scrapes, p50 {pct(s,50):.2f} ms, max {max(s):.2f} ms")
PY
