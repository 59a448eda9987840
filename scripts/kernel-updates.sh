#!/usr/bin/env bash
# The kernel-update campaign: inside the booted demo, install Debian's newer kernel
# package (linux-image-6.12.N+deb12-amd64, fetched on the host), boot it, boot the
# previous kernel from the fallback entry and remove its package while it runs, cut the
# power at seeded moments in the middle of ESP updates, and check what is left on the
# ESP (fsck.fat, the menu, the files) after each step. Three runs:
#
#   1. UEFI, with initramfs-tools' own hook switched on (as on a real system: it
#      takes over ten minutes under emulation), and POINTS power cuts;
#   2. the same image with secure-boot = true, under enforcing Secure Boot;
#   3. UEFI again, with POINTS power cuts of seed SEED+1.
#
#   scripts/kernel-updates.sh [POINTS] [SEED]     (default: 6 points, seed 1)
#
# The test suite runs one UEFI run with one power cut and initramfs-tools' hook off.
set -euo pipefail
cd "$(dirname "$0")/.."
points=${1:-6}
seed=${2:-1}
scripts/setup.sh
scripts/build-agent.sh
cargo build --release --locked
run() {
  local name=$1
  shift
  echo "=== kernel updates: $name" >&2
  env "$@" cargo test --release --locked --test installed_system -- --exact \
    kernel_updates_reach_the_boot_and_removal_keeps_the_running_kernel --nocapture 2>&1 |
    tee "target/kernel-updates-$name.log" | grep -E "^power cut|^test |panicked" || true
  grep -q "^test result: ok" "target/kernel-updates-$name.log"
}
run uefi-initramfs-tools ONEIMAGE_WITH_INITRAMFS_TOOLS=1 \
  ONEIMAGE_KERNEL_POWER_CUTS="$points" ONEIMAGE_POWER_CUT_SEED="$seed"
run secure-boot ONEIMAGE_SECURE_BOOT=1 ONEIMAGE_KERNEL_POWER_CUTS=1 ONEIMAGE_POWER_CUT_SEED="$seed"
run uefi-seed$((seed + 1)) ONEIMAGE_KERNEL_POWER_CUTS="$points" \
  ONEIMAGE_POWER_CUT_SEED="$((seed + 1))"
echo "kernel updates: every run passed" >&2
