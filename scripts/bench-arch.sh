#!/usr/bin/env bash
# arm64 against x86_64, on this (x86_64) host, in one run: the demo built with an empty
# root filesystem cache (mmdebstrap included: arm64's package scripts run emulated) and
# again with the cache filled, then booted to the demo's marker under TCG (arm64:
# qemu-system-aarch64 emulating a Cortex-A72; x86_64: qemu-system-x86_64). Prints the
# seconds and the arm64/x86_64 ratios.
#
#   scripts/bench-arch.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/setup-arm64.sh
scripts/build-agent.sh
scripts/build-agent-aarch64.sh
cargo build --release --locked -q
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
bin=$target/release/oneimage
work=$(mktemp -d /var/tmp/oneimage-bench-arch.XXXXXX)
trap 'rm -rf "$work"' EXIT
# Seconds a command takes; its output goes to $work/log, shown if it fails.
secs() {
  local s
  s=$(date +%s.%N)
  "$@" >"$work/log" 2>&1 || { echo "bench-arch: failed: $*" >&2; tail -n 30 "$work/log" >&2; exit 1; }
  echo "$(date +%s.%N) - $s" | bc
}
declare -A cold warm boot size
for arch in x86_64 arm64; do
  spec=examples/debian.toml
  [ "$arch" = arm64 ] && spec=examples/debian-arm64.toml
  cold[$arch]=$(secs "$bin" build "$spec" -o "$work/$arch-cold" --rootfs-cache "$work/cache-$arch")
  warm[$arch]=$(secs "$bin" build "$spec" -o "$work/$arch-warm" --rootfs-cache "$work/cache-$arch")
  image=$(ls "$work/$arch-warm"/*.img)
  size[$arch]=$(stat -c %s "$image")
  boot[$arch]=$(secs "$bin" qemu "$image" --snapshot --headless --quiet \
    --expect "oneimage-demo: booted" --timeout 1800)
done
printf '%-34s %10s %10s %8s\n' "" x86_64 arm64 ratio
row() { printf '%-34s %10.1f %10.1f %8.2f\n' "$1" "$2" "$3" "$(echo "$3 / $2" | bc -l)"; }
row "build, empty cache (s)" "${cold[x86_64]}" "${cold[arm64]}"
row "build, cached root filesystem (s)" "${warm[x86_64]}" "${warm[arm64]}"
row "boot to the marker, TCG (s)" "${boot[x86_64]}" "${boot[arm64]}"
row "image size (MiB)" "$(echo "${size[x86_64]} / 1048576" | bc -l)" "$(echo "${size[arm64]} / 1048576" | bc -l)"
