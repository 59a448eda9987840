#!/usr/bin/env bash
# Benchmark: oneimage's own initramfs against the root filesystem's Debian initramfs
# (initramfs-tools) on the same image: initramfs size and boot time to the demo marker
# (UEFI, QEMU; TCG emulation unless KVM works). Prints figures and ratios.
#
#   RUNS=2 scripts/bench-boot.sh [ROOTFS.tar]   (default: the tarball the tests cache)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-2}
tarball=${1:-$(ls target/tmp/rootfs-cache/mmdebstrap-*.tar 2>/dev/null | head -n1)}
[ -f "$tarball" ] || { echo "usage: $0 ROOTFS.tar (or run the tests once to cache one)" >&2; exit 2; }
scripts/build-agent.sh
cargo build --release --locked -q
bin=$PWD/target/release/oneimage
work=$(mktemp -d /var/tmp/oneimage-bench-boot.XXXXXX)
trap 'rm -rf "$work"' EXIT
for kind in oneimage rootfs; do
  cat > "$work/$kind.toml" <<EOS
name = "$kind"
source-date-epoch = 1767225600
[rootfs]
tarball = "$(realpath "$tarball")"
overlay = "$PWD/examples/debian-overlay"
[boot]
cmdline = "console=tty0 console=ttyS0,115200"
timeout = 0
initramfs = "$kind"
EOS
  "$bin" build "$work/$kind.toml" -o "$work" >/dev/null 2>&1
done
size() { "$bin" inspect --json "$work/$1.img" | python3 -c 'import json,sys; print([f["size"] for f in json.load(sys.stdin)["partitions"][0]["boot_files"] if f["path"].startswith("/oneimage/initrd-")][0])'; }
boot() {
  local s e
  s=$(date +%s.%N)
  "$bin" qemu "$work/$1.img" --snapshot --headless --quiet --expect "oneimage-demo: booted" --timeout 900 >/dev/null 2>&1
  e=$(date +%s.%N)
  echo "$e - $s" | bc
}
declare -A sz t
for kind in oneimage rootfs; do
  sz[$kind]=$(size $kind)
  t[$kind]=$(for _ in $(seq "$runs"); do boot $kind; done | sort -n | head -n1)
done
echo "initramfs size: oneimage $((sz[oneimage] / 1024)) KiB, Debian initramfs-tools $((sz[rootfs] / 1024)) KiB, ratio $(echo "scale=3; ${sz[oneimage]} / ${sz[rootfs]}" | bc)"
printf 'boot to marker (best of %s): oneimage %.1f s, Debian initramfs-tools %.1f s, ratio %.2f\n' \
  "$runs" "${t[oneimage]}" "${t[rootfs]}" "$(echo "${t[oneimage]} / ${t[rootfs]}" | bc -l)"
