#!/usr/bin/env bash
# The arm64 campaign: sets up foreign-architecture builds (scripts/setup-arm64.sh),
# cross-compiles the aarch64 agent and static tool, then runs every arm64 test
# (crates/cli/tests/arm64.rs): the demo built twice byte-identical, the independent
# checks, first boot on a disk three times larger (growth), a USB stick, a DVD, and the
# live entry writing nothing. Everything boots in qemu-system-aarch64 under TCG.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/setup-arm64.sh
scripts/build-agent.sh
scripts/build-agent-aarch64.sh
cargo build --workspace --release --locked
cargo test --release --locked --test arm64 -- --include-ignored --test-threads=2
