#!/usr/bin/env bash
# Runs the tests the suite leaves to campaigns (`#[ignore = "campaign: ..."]`): more
# boot routes of the same image (SCSI and BIOS DVDs, a USB stick, Secure Boot from a
# DVD), the install from a DVD, and the timed zstd check. `scripts/test.sh` keeps one
# test of each feature; this runs the rest with the same assertions.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-agent.sh
cargo build --workspace --release --locked
# arm64 has its own campaign (scripts/arm64.sh), which first cross-compiles its agent.
cargo test --workspace --release --locked --no-fail-fast -- --ignored --skip arm64 --test-threads=2
