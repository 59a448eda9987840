#!/usr/bin/env bash
# The demo as ext4, SquashFS and EROFS, in one run:
#  - the image and its published downloads (.zst at zstd-level 19, .xz at xz-level 6,
#    what [artifacts] zstd/xz write by default);
#  - the first-boot expansion against the usual way, both in the same VM (QEMU, TCG),
#    from a cold page cache onto a virtio disk: the agent's own time for it (its line
#    `expanding: the ext4 root is made (N s)`, on a 3 GiB disk), then,
#    on the next boot (from the expanded root, the factory copy cold again), a unit
#    that waits for the rest of the boot to finish, then does it the usual way onto an
#    empty second 3 GiB disk: mkfs.ext4, mount,
#    `unsquashfs` or `fsck.erofs --extract` from the factory partition, unmount, sync.
#    Three rounds, medians shown; the ratio's goal is 1.2 or less;
#  - the time to boot live from a DVD (SATA, UEFI) to the demo's marker under TCG.
# --expansion-only skips the downloads and the DVD boots.
#
#   scripts/bench-compressed.sh [--expansion-only]
set -euo pipefail
only_expansion=0
[ "${1:-}" = --expansion-only ] && only_expansion=1
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-agent.sh
cargo build --release --locked -q
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
bin=$target/release/oneimage
cache=$target/tmp/rootfs-cache
work=$(mktemp -d /var/tmp/oneimage-bench-compressed.XXXXXX)
cleanup() {
  for m in "$work"/mnt-*; do mountpoint -q "$m" 2>/dev/null && umount "$m"; done
  rm -rf "$work"
}
trap cleanup EXIT
secs() {
  local s
  s=$(date +%s.%N)
  "$@" >"$work/log" 2>&1 || { echo "bench-compressed: failed: $*" >&2; tail -n 30 "$work/log" >&2; exit 1; }
  echo "$(date +%s.%N) - $s" | bc
}
declare -A img zst xz dvd ours theirs
all=(ext4 squashfs erofs)
[ "$only_expansion" = 1 ] && all=(squashfs erofs)
for fs in "${all[@]}"; do
  spec=examples/debian-$fs.toml
  [ "$fs" = ext4 ] && spec=examples/debian.toml
  # The same spec with the compressed downloads switched on.
  sed -e "s|^overlay = \"debian-overlay\"|overlay = \"$PWD/examples/debian-overlay\"|" "$spec" >"$work/$fs.toml"
  [ "$only_expansion" = 1 ] || printf '\n[artifacts]\nzstd = true\nxz = true\n' >>"$work/$fs.toml"
  "$bin" build "$work/$fs.toml" -o "$work/$fs" --rootfs-cache "$cache" 2>"$work/$fs.log"
  image=$(ls "$work/$fs"/*.img)
  if [ "$only_expansion" = 0 ]; then
    img[$fs]=$(stat -c %s "$image")
    zst[$fs]=$(stat -c %s "$image.zst")
    xz[$fs]=$(stat -c %s "$image.xz")
    dvd[$fs]=$(secs "$bin" qemu "$image" --snapshot --headless --quiet --media cdrom \
      --expect "oneimage-demo: booted" --timeout 1800)
  fi
  [ "$fs" = ext4 ] && continue
  # The same image with the usual way's unit (and erofs-utils for fsck.erofs).
  cp -a examples/debian-overlay "$work/overlay-$fs"
  mkdir -p "$work/overlay-$fs/usr/local/sbin"
  cat >"$work/overlay-$fs/usr/local/sbin/oneimage-bench-unpack" <<'EOF'
#!/bin/sh
# The usual way of making a read-write root of the compressed factory copy (partition
# 2), onto the empty second disk; only on a persistent boot with that disk attached.
set -eu
[ -b /dev/vdb ] || exit 0
if [ "$(findmnt -no SOURCE /)" != /dev/vda4 ]; then
  echo "oneimage-bench: not booted from the expanded root (/dev/vda4)" >/dev/console
  exit 0
fi
# Alone on the machine, as the agent is in the initramfs: the rest of the boot first.
while systemctl list-jobs --no-legend | grep -q .; do
  sleep 1
done
kind=$(blkid -o value -s TYPE /dev/vda2)
start=$(date +%s.%N)
mkfs.ext4 -q -F -E lazy_itable_init=1,nodiscard /dev/vdb
mount /dev/vdb /mnt
case $kind in
  squashfs) unsquashfs -f -n -q -d /mnt /dev/vda2 ;;
  erofs) fsck.erofs --extract=/mnt --overwrite /dev/vda2 ;;
esac
umount /mnt
sync
end=$(date +%s.%N)
echo "oneimage-bench: the usual way ($kind) took $(awk "BEGIN { printf \"%.2f\", $end - $start }") s" >/dev/console
EOF
  chmod 755 "$work/overlay-$fs/usr/local/sbin/oneimage-bench-unpack"
  cat >"$work/overlay-$fs/etc/systemd/system/oneimage-bench-unpack.service" <<'EOF'
[Unit]
Description=oneimage benchmark: the usual way of unpacking the compressed root

[Service]
# Not waited for by the boot, which it waits for (see the script).
Type=simple
ExecStart=/usr/local/sbin/oneimage-bench-unpack

[Install]
WantedBy=multi-user.target
EOF
  ln -s ../oneimage-bench-unpack.service \
    "$work/overlay-$fs/etc/systemd/system/multi-user.target.wants/oneimage-bench-unpack.service"
  sed -e "s|^overlay = \"debian-overlay\"|overlay = \"$work/overlay-$fs\"|" \
    -e 's|"e2fsprogs"\]|"e2fsprogs", "erofs-utils"]|' "$spec" >"$work/$fs-bench.toml"
  "$bin" build "$work/$fs-bench.toml" -o "$work/$fs-bench" --rootfs-cache "$cache" 2>"$work/$fs-bench.log"
  bench_image=$(ls "$work/$fs-bench"/*.img)
  a=() b=()
  for round in 1 2 3; do
    cp --sparse=always "$bench_image" "$work/disk.img"
    rm -f "$work/spare.img" "$work/disk.img.efivars.fd"
    truncate -s $((3 << 30)) "$work/spare.img"
    # First boot: the agent expands (no spare disk attached: the unit does nothing).
    "$bin" qemu "$work/disk.img" --headless --quiet --poweroff --timeout 1800 \
      --disk-size $((3 << 30)) --expect "oneimage-demo: booted" --console-log "$work/first.log" >/dev/null
    a+=("$(sed -n 's/.*expanding: the ext4 root is made (\([0-9.]*\) s).*/\1/p' "$work/first.log" | head -n 1)")
    # The next boot: the usual way onto the spare disk, the factory copy cold again.
    "$bin" qemu "$work/disk.img" --headless --quiet --poweroff --timeout 1800 \
      --extra-disk "$work/spare.img" --expect "oneimage-bench:" --console-log "$work/next.log" >/dev/null
    b+=("$(sed -n 's/.*oneimage-bench: the usual way ([a-z]*) took \([0-9.]*\) s.*/\1/p' "$work/next.log" | head -n 1)")
    if [ -z "${a[-1]}" ] || [ -z "${b[-1]}" ]; then
      keep=$(mktemp -d /var/tmp/oneimage-bench-compressed-failed.XXXXXX)
      cp "$work/first.log" "$work/next.log" "$keep/"
      echo "bench-compressed: $fs round $round: a boot did not report its time (consoles kept in $keep)" >&2
      exit 1
    fi
  done
  ours[$fs]=$(printf '%s\n' "${a[@]}" | sort -n | sed -n 2p)
  theirs[$fs]=$(printf '%s\n' "${b[@]}" | sort -n | sed -n 2p)
  echo "bench-compressed: $fs expansion rounds: the agent ${a[*]} s; the usual way ${b[*]} s" >&2
  rm -f "$work/disk.img" "$work/spare.img" "$work/disk.img.efivars.fd"
done
mib() { echo "scale=1; $1 / 1048576" | bc; }
if [ "$only_expansion" = 0 ]; then
  printf '%-10s %10s %10s %10s %14s\n' root "image MiB" ".zst MiB" ".xz MiB" "DVD live boot s"
  for fs in ext4 squashfs erofs; do
    printf '%-10s %10s %10s %10s %14.1f\n' "$fs" "$(mib "${img[$fs]}")" "$(mib "${zst[$fs]}")" "$(mib "${xz[$fs]}")" "${dvd[$fs]}"
  done
fi
printf '\n%-10s %18s %22s %8s\n' root "first boot's s" "mkfs+mount+unpack s" ratio
for fs in squashfs erofs; do
  printf '%-10s %18.1f %22.1f %8.2f\n' "$fs" "${ours[$fs]}" "${theirs[$fs]}" "$(echo "${ours[$fs]} / ${theirs[$fs]}" | bc -l)"
done
