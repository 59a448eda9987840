#!/usr/bin/env bash
# Builds the demo image (examples/debian.toml: Debian 12 with systemd) and boots it
# headless in QEMU until it prints "oneimage-demo: booted". Installs what is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-agent.sh
cargo build --release --locked
mkdir -p out
target/release/oneimage build examples/debian.toml -o out --rootfs-cache out/cache
target/release/oneimage qemu out/debian-demo.img --snapshot --headless \
  --expect "oneimage-demo: booted" --timeout 900
