#!/usr/bin/env bash
# Builds the programs images carry, statically linked (glibc, static-pie), into
# target/agent/ (or $CARGO_TARGET_DIR/agent/), where `oneimage build` finds them:
# the boot agent oneimage-init, and oneimage itself, which an image runs to rebuild its
# boot after a kernel update.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo rustc --locked --profile agent -p oneimage-agent --bin oneimage-init -q -- \
  -C target-feature=+crt-static
# The release profile, so that the libraries are the ones `cargo build --release`
# makes anyway: only the program itself is linked again.
cargo rustc --locked --release -p oneimage --bin oneimage -q -- \
  -C target-feature=+crt-static
mkdir -p "$target/agent"
strip -o "$target/agent/oneimage.new" "$target/release/oneimage"
mv "$target/agent/oneimage.new" "$target/agent/oneimage"
