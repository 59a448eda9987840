#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests that build real Debian images and
# boot them in QEMU. Installs what is needed first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-agent.sh
cargo build --workspace --release --locked
cargo test --workspace --release --locked --no-fail-fast -- --test-threads=2
