#!/usr/bin/env bash
# Benchmark: building an image from a prepared root filesystem tree, compared in the same
# run with bookworm's systemd-repart (CopyFiles=, Format=) and with a bare `mkfs.ext4 -d`
# of the same tree (the floor). Prints seconds (best of RUNS) and ratios.
#
#   scripts/bench-build.sh [ROOTFS.tar]   (default: the Debian tarball the tests cache)
#
# Needs root: the tree is unpacked with its real owners, and bookworm's systemd-repart
# (v252) populates filesystems by loop-mounting them. Its ESP cannot be made here (the
# host kernel has no vfat), so repart builds the root partition only, while oneimage
# builds the whole image (ESP with GRUB, kernel and initramfs, plus the root).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${RUNS:-3}
tarball=${1:-$(ls target/tmp/rootfs-cache/mmdebstrap-*.tar 2>/dev/null | head -n1)}
[ -f "$tarball" ] || { echo "usage: $0 ROOTFS.tar (or run the tests once to cache one)" >&2; exit 2; }
cargo build --release --locked -q
bin=$PWD/target/release/oneimage
work=$(mktemp -d /var/tmp/oneimage-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/tree"
tar -xpf "$tarball" --xattrs --xattrs-include='*' -C "$work/tree"
tree_mib=$(du -sm "$work/tree" | cut -f1)
files=$(find "$work/tree" | wc -l)

cat > "$work/spec.toml" <<EOS
name = "bench"
source-date-epoch = 1767225600
[rootfs]
directory = "tree"
[root]
size = "minimal"
EOS
# The root size oneimage picks is used for the others too, so all make the same filesystem size.
"$bin" build "$work/spec.toml" -o "$work/probe" >/dev/null 2>&1
root_bytes=$("$bin" inspect --json "$work/probe/bench.img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitions"][1]["size"])')
rm -rf "$work/probe"

mkdir -p "$work/repart.d"
cat > "$work/repart.d/10-root.conf" <<EOS
[Partition]
Type=root
Format=ext4
CopyFiles=/:/
SizeMinBytes=$root_bytes
SizeMaxBytes=$root_bytes
EOS

best() { sort -n | head -n1; }
timeit() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; sync; e=$(date +%s.%N); echo "$e - $s" | bc; }

ours() { rm -rf "$work/out"; "$bin" build "$work/spec.toml" -o "$work/out"; sync "$work/out/bench.img"; }
repart() {
  rm -f "$work/repart.img"
  systemd-repart --empty=create --size=$((root_bytes + 4 * 1048576)) --dry-run=no \
    --definitions="$work/repart.d" --root="$work/tree" \
    --seed=5a5a5a5a-5a5a-4a5a-8a5a-5a5a5a5a5a5a "$work/repart.img"
}
floor() {
  rm -f "$work/floor.img"; truncate -s "$root_bytes" "$work/floor.img"
  mkfs.ext4 -q -F -d "$work/tree" "$work/floor.img"
}

declare -A t
for name in ours repart floor; do
  t[$name]=$(for _ in $(seq "$runs"); do timeit $name; done | best)
done
echo "tree: $tree_mib MiB, $files files; root filesystem $((root_bytes / 1048576)) MiB; best of $runs runs"
printf '%-44s %8.2f s\n' "oneimage build (whole image)" "${t[ours]}"
printf '%-44s %8.2f s\n' "systemd-repart $(systemd-repart --version | head -n1 | cut -d' ' -f2) (root partition only)" "${t[repart]}"
printf '%-44s %8.2f s\n' "mkfs.ext4 -d (root filesystem only, floor)" "${t[floor]}"
printf 'ratio oneimage / systemd-repart: %.2f\n' "$(echo "${t[ours]} / ${t[repart]}" | bc -l)"
printf 'ratio oneimage / mkfs.ext4 -d:   %.2f\n' "$(echo "${t[ours]} / ${t[floor]}" | bc -l)"
