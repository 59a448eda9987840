#!/usr/bin/env bash
# The power-loss campaign: cuts the power of the demo's VM at seeded moments all through
# its first boot's work (identity, table writes, filesystem growth; one point in three
# also cuts the resumed boot), with QEMU's cache=directsync so that nothing the guest
# did not write survives, then checks that the next boot finishes the work and that
# sgdisk, e2fsck and fsck.fat find the disk clean.
#
#   scripts/power-loss.sh [POINTS] [SEED]     (default: 24 points, seed 1)
#
# Each point prints where its cut fell (the agent's last line before it). The test
# suite runs the first point of seed 1 (a cut during the filesystem's growth).
set -euo pipefail
cd "$(dirname "$0")/.."
points=${1:-24}
seed=${2:-1}
scripts/setup.sh
scripts/build-agent.sh
cargo build --release --locked
ONEIMAGE_POWER_CUTS=$points ONEIMAGE_POWER_CUT_SEED=$seed \
  cargo test --release --locked --test debian -- --exact \
  first_boot_survives_power_cuts_at_seeded_moments --nocapture 2>&1 |
  tee "target/power-loss-seed$seed.log"
