#!/usr/bin/env bash
# Packaging test (run by scripts/test.sh): builds the .deb with cargo-deb and
# inspects it: file list, the binary inside runs and validates the shipped
# example, man pages and completions are there, the systemd unit passes
# `systemd-analyze verify` (when systemd-analyze exists), logrotate syntax
# (when logrotate exists).
set -euo pipefail
cd "$(dirname "$0")/.."
fail() { echo "packaging test FAILED: $*" >&2; exit 1; }

deb=$(bash packaging/build-deb.sh)
[ -f "$deb" ] || fail "no .deb built"
list=$(dpkg-deb -c "$deb" | awk '{print $6}')
for f in ./usr/bin/syncjob ./lib/systemd/system/syncjob.service \
         ./etc/syncjob/jobs.yaml.example ./etc/logrotate.d/syncjob \
         ./usr/share/man/man1/syncjob.1.gz ./usr/share/man/man1/syncjob-run.1.gz \
         ./usr/share/bash-completion/completions/syncjob \
         ./usr/share/zsh/vendor-completions/_syncjob \
         ./usr/share/fish/vendor_completions.d/syncjob.fish \
         ./usr/share/doc/syncjob/README.md; do
  grep -qx -- "$f" <<<"$list" || fail "$f missing from $deb"
done
# Outputs are read whole before they are matched: under pipefail,
# `cmd | grep -q` fails whenever grep exits at its match before cmd's
# last write (dpkg-deb writes one field per write; SIGPIPE, exit 141).
control=$(dpkg-deb -f "$deb" Package Version Depends)
grep -q '^Package: syncjob$' <<<"$control" || fail "control: $control"
depends=$(dpkg-deb -f "$deb" Depends)
grep -q libssl <<<"$depends" || fail "Depends lacks libssl: $depends"

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg-deb -x "$deb" "$root"
bin="$root/usr/bin/syncjob"
version=$("$bin" --version)
want="syncjob $(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)"
[ "$version" = "$want" ] || fail "--version: '$version', want '$want'"
# the shipped example is valid (its include of jobs.d may match nothing);
# its source and keys are not on this machine, which check reports with
# exit 1 (local problems), never 2 (an invalid file)
rc=0
"$bin" -c "$root/etc/syncjob/jobs.yaml.example" --state-dir "$root/state" check >/dev/null 2>&1 || rc=$?
[ "$rc" -le 1 ] || fail "the shipped example does not pass check (exit $rc)"
man=$(zcat "$root/usr/share/man/man1/syncjob.1.gz")
grep -q '^\.TH syncjob' <<<"$man" || fail "man page"
bash -n "$root/usr/share/bash-completion/completions/syncjob" || fail "bash completion"

if command -v systemd-analyze >/dev/null 2>&1; then
  unit="$root/syncjob.service"
  sed "s#/usr/bin/syncjob#$bin#" "$root/lib/systemd/system/syncjob.service" >"$unit"
  out=$(systemd-analyze verify --man=no "$unit" 2>&1) || fail "systemd-analyze verify: $out"
  [ -z "$out" ] || fail "systemd-analyze verify warns: $out"
  echo "systemd-analyze verify: ok"
else
  echo "systemd-analyze not found: unit not verified" >&2
fi
if command -v logrotate >/dev/null 2>&1; then
  logrotate -d "$root/etc/logrotate.d/syncjob" >/dev/null 2>&1 || fail "logrotate -d"
fi
echo "packaging test: ok ($deb, $(stat -c %s "$deb") bytes)"
