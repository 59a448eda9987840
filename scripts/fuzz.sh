#!/usr/bin/env bash
# Runs every fuzz and property target (the tests named fuzz_* in oneimage-format,
# oneimage-write and oneimage-agent) far longer than the test suite does: the same
# tests, with ONEIMAGE_FUZZ_CASES cases for each of several seeds, built optimised but
# with overflow checks and debug assertions (the "fuzz" profile), so an overflow is a
# finding here as it is in `cargo test`. It prints what it ran and every finding (the
# input is saved; the line says how to replay it) and exits non-zero if there was one.
#
#   scripts/fuzz.sh                 # every target, 100000 cases per seed, seeds 1 2 3
#   ONEIMAGE_FUZZ_CASES=1000000 ONEIMAGE_FUZZ_SEEDS="11 12" scripts/fuzz.sh fuzz_fat fuzz_iso
#
# Arguments pick targets by name (any part of it); targets that do several ordinary
# cases' work per case (writing a whole filesystem first) run a fraction of the count.
# ONEIMAGE_FUZZ_THREADS (default 2) targets run at once; findings' inputs go to
# ONEIMAGE_FUZZ_FINDINGS (default: a new directory under target/fuzz-findings).
set -euo pipefail
cd "$(dirname "$0")/.."

cases=${ONEIMAGE_FUZZ_CASES:-100000}
seeds=${ONEIMAGE_FUZZ_SEEDS:-"1 2 3"}
threads=${ONEIMAGE_FUZZ_THREADS:-2}
filters=("${@:-fuzz_}")
target_dir=${CARGO_TARGET_DIR:-target}
findings=$(realpath -m "${ONEIMAGE_FUZZ_FINDINGS:-$target_dir/fuzz-findings/$(date +%Y%m%d-%H%M%S)}")
mkdir -p "$findings"
log=$(mktemp)
trap 'rm -f "$log"' EXIT

# (package, cargo target selection) pairs.
packages=("oneimage-format --lib" "oneimage-write --lib" "oneimage-agent --bins")

echo "fuzz.sh: $cases cases per target and seed, seeds: $seeds, targets: ${filters[*]}"
echo "fuzz.sh: building (profile fuzz)"
for p in "${packages[@]}"; do
    # shellcheck disable=SC2086 # the package and its target selection are two words
    cargo test --locked --profile fuzz -p $p --no-run 2>&1 | grep -E '^(error|warning)' || true
done

failed=0
start=$SECONDS
for seed in $seeds; do
    for p in "${packages[@]}"; do
        echo "fuzz.sh: seed $seed, ${p%% *}"
        # shellcheck disable=SC2086
        if ! ONEIMAGE_FUZZ_SEED=$seed ONEIMAGE_FUZZ_CASES=$cases ONEIMAGE_FUZZ_FINDINGS=$findings \
            cargo test --locked --profile fuzz -p $p -- "${filters[@]}" --nocapture \
            --test-threads="$threads" >"$log" 2>&1; then
            failed=1
        fi
        # The targets' own summary lines, then anything that went wrong.
        grep -o 'fuzz fuzz_[a-z0-9_]*: .*' "$log" | sed 's/^/  /' || true
        grep -E 'FINDING|panicked at|^test .* FAILED|^error' "$log" | sed 's/^/  /' || true
        if grep -q 'running 0 tests' "$log"; then
            echo "  (no target here matches ${filters[*]})"
        fi
    done
done

echo "fuzz.sh: $((SECONDS - start)) s"
if [ "$failed" -ne 0 ] || [ -n "$(ls -A "$findings")" ]; then
    echo "fuzz.sh: FINDINGS; their inputs are in $findings:"
    ls -l "$findings"
    exit 1
fi
echo "fuzz.sh: no findings"
