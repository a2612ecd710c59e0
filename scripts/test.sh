#!/usr/bin/env bash
# The whole test suite, as CI runs it. Installs what the tests need when it is
# missing (apt-get, when root), then checks formatting and lints and runs
# every test. Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v rsync >/dev/null 2>&1 || need+=(rsync)
[ -x /usr/sbin/sshd ] || need+=(openssh-server)
{ command -v ssh-keygen && command -v ssh; } >/dev/null 2>&1 || need+=(openssh-client)
command -v flock >/dev/null 2>&1 || need+=(util-linux)
command -v pkg-config >/dev/null 2>&1 || need+=(pkg-config)
# the ssh2 crate builds libssh2 against the system OpenSSL
dpkg -s libssl-dev >/dev/null 2>&1 || need+=(libssl-dev)
# tests/metrics.rs checks the text with promtool; tests/cluster.rs starts etcd
command -v promtool >/dev/null 2>&1 || need+=(prometheus)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "installing: ${need[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "missing: ${need[*]}; install them with: sudo apt-get install ${need[*]}" >&2
    exit 1
  fi
fi

# the packaging test builds the .deb with cargo-deb
if ! cargo deb --version >/dev/null 2>&1; then
  echo "installing cargo-deb (cargo install --locked cargo-deb)" >&2
  cargo install --locked --quiet cargo-deb
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
# the SSH tests again with the system's ssh binary as the transport
SYNCJOB_TEST_SSH_CLIENT=openssh cargo test --test ssh --test faults --test ssh_config \
  --test ssh_auto_helper --test ssh_certs --test secstate_ssh --test secfs --test helper_job \
  --test secsftp
bash tests/packaging.sh
