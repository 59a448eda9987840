#!/usr/bin/env bash
# Builds the boot agent oneimage-init as a static program (glibc, static-pie) into
# target/agent/oneimage-init, where `oneimage build` finds it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo rustc --locked --profile agent -p oneimage-agent --bin oneimage-init -q -- \
  -C target-feature=+crt-static
