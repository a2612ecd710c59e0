#!/usr/bin/env bash
# Build the Debian package: release binary, man pages and completions
# generated from the CLI definitions, then `cargo deb --no-build`.
# Needs cargo-deb (cargo install cargo-deb). Prints the .deb's path.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked >&2
rm -rf target/assets
target/release/syncjob generate --dir target/assets
cargo deb --no-build >&2
debs=$(ls -t target/debian/syncjob_*.deb)
echo "${debs%%$'\n'*}"
