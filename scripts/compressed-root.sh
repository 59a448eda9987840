#!/usr/bin/env bash
# The compressed-root campaign: the demo built as SquashFS and as EROFS, twice each
# (byte-identical), its tree compared with the ext4 demo's (the three roots mounted
# read-only from the images and compared with rsync: names, types, owners, modes,
# times, hardlinks, xattrs, ACLs, contents), each first boot's expansion compared with
# its factory copy the same way, then the campaign tests: later boots from
# the expanded root, the live entry, a disk too small, EROFS expansion, every boot
# route, power cuts all through the expansion (ONEIMAGE_POWER_CUTS,
# ONEIMAGE_POWER_CUT_SEED), install from an expanded stick, and a kernel update on an
# expanded root. Every test runs even when one fails; the script fails at the end then.
# Needs root (loop mounts) and about 25 GiB of free space.
#
#   scripts/compressed-root.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
command -v rsync >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q rsync
scripts/build-agent.sh
cargo build --release --locked -q
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
bin=$target/release/oneimage
cache=$target/tmp/rootfs-cache
work=$(mktemp -d /var/tmp/oneimage-compressed.XXXXXX)
cleanup() {
  for m in "$work"/mnt-*; do mountpoint -q "$m" 2>/dev/null && umount "$m"; done
  rm -rf "$work"
}
trap cleanup EXIT

for fs in ext4 squashfs erofs; do
  # The demo's own spec with only the root filesystem changed: the same name and seed,
  # so the same identifiers and boot settings (/etc/oneimage/boot.toml) in every root.
  # squashfs-tools and erofs-utils are listed in every one: the builder adds them to a
  # SquashFS and an EROFS root (their first boots expand with unsquashfs and
  # fsck.erofs), so the three get the same packages.
  spec=$work/debian-$fs.toml
  sed -e "s|^overlay = \"debian-overlay\"|overlay = \"$PWD/examples/debian-overlay\"|" \
      -e "s|^headroom = \"256M\"|filesystem = \"$fs\"|" \
      -e 's|"e2fsprogs"\]|"e2fsprogs", "squashfs-tools", "erofs-utils"]|' examples/debian.toml >"$spec"
  grep -q '"erofs-utils"' "$spec" || { echo "compressed-root: could not add squashfs-tools and erofs-utils to $spec" >&2; exit 1; }
  "$bin" build "$spec" -o "$work/$fs-a" --rootfs-cache "$cache" 2>"$work/$fs.log"
  if [ "$fs" != ext4 ]; then
    "$bin" build "$spec" -o "$work/$fs-b" --rootfs-cache "$cache" 2>>"$work/$fs.log"
    a=$(sha256sum <"$work/$fs-a"/*.img) b=$(sha256sum <"$work/$fs-b"/*.img)
    [ "$a" = "$b" ] || { echo "compressed-root: two $fs builds differ" >&2; exit 1; }
    echo "compressed-root: $fs: two builds byte-identical (${a%% *})"
  fi
  img=$(ls "$work/$fs-a"/*.img)
  start=$(LC_ALL=C sgdisk -i 2 "$img" | awk '/First sector/ {print $3}')
  end=$(LC_ALL=C sgdisk -i 2 "$img" | awk '/Last sector/ {print $3}')
  mkdir "$work/mnt-$fs"
  mount -o ro,loop,offset=$((start * 512)),sizelimit=$(((end - start + 1) * 512)) "$img" "$work/mnt-$fs"
done
for fs in squashfs erofs; do
  # -n: compare only; -c: by content; -i: list every difference; -H -A -X: hardlinks,
  # ACLs, xattrs; --numeric-ids: owners as numbers.
  # ext4's lost+found is mke2fs's, not the tree's.
  diffs=$(rsync -naicHAX --numeric-ids --delete --exclude=/lost+found "$work/mnt-ext4/" "$work/mnt-$fs/" || true)
  if [ -z "$diffs" ]; then
    echo "compressed-root: $fs root = ext4 root (rsync -naicHAX --numeric-ids: no difference)"
  else
    echo "compressed-root: $fs root differs from the ext4 root:"
    echo "$diffs"
    # SquashFS has no POSIX ACLs; the build warns about each path it drops them from.
    if [ "$fs" = squashfs ] && ! echo "$diffs" | grep -vq 'var/log/journal/$'; then
      grep -q "SquashFS cannot hold system.posix_acl_access" "$work/squashfs.log" &&
        echo "compressed-root: (only the ACLs of var/log/journal, which SquashFS cannot hold; the build said so)" &&
        continue
    fi
    exit 1
  fi
done

# The expansion itself, checked the same way: each compressed demo's first boot, cut
# the moment the expansion is recorded done (the new root is synced and unmounted
# then), and the expanded ext4 (partition 4) compared with its factory copy
# (partition 2) with rsync. SquashFS is filled by unsquashfs, EROFS by fsck.erofs and
# the agent's walk for what it leaves out.
mount_part() { # image partition-number mountpoint
  local s e
  s=$(LC_ALL=C sgdisk -i "$2" "$1" | awk '/First sector/ {print $3}')
  e=$(LC_ALL=C sgdisk -i "$2" "$1" | awk '/Last sector/ {print $3}')
  mkdir -p "$3"
  mount -o ro,loop,offset=$((s * 512)),sizelimit=$(((e - s + 1) * 512)) "$1" "$3"
}
for fs in squashfs erofs; do
  x=$work/expanded-$fs.img
  cp --sparse=always "$(ls "$work/$fs-a"/*.img)" "$x"
  "$bin" qemu "$x" --headless --quiet --disk-size 3G --timeout 900 \
    --expect "oneimage-init: first boot: step expand done" --power-cut-after 0 \
    --console-log "$work/expand-$fs.log" >/dev/null
  grep "oneimage-init: expanding: making ext4" "$work/expand-$fs.log"
  mount_part "$x" 2 "$work/mnt-factory-$fs"
  mount_part "$x" 4 "$work/mnt-expanded-$fs"
  diffs=$(rsync -naicHAX --numeric-ids --delete --exclude=/lost+found "$work/mnt-factory-$fs/" "$work/mnt-expanded-$fs/" || true)
  umount "$work/mnt-factory-$fs" "$work/mnt-expanded-$fs"
  if [ -n "$diffs" ]; then
    echo "compressed-root: the expanded $fs root differs from its factory copy:"
    echo "$diffs"
    exit 1
  fi
  echo "compressed-root: expanded $fs root = its factory copy (rsync -naicHAX --numeric-ids: no difference)"
  rm -f "$x"
done

failed=0
cargo test --release --locked --test compressed_root -- --include-ignored --test-threads=1 || failed=1
for t in install_from_an_expanded_compressed_stick_expands_again_on_the_internal_disk \
         kernel_update_on_an_expanded_compressed_root_reaches_the_boot; do
  cargo test --release --locked --test installed_system -- --ignored --exact "$t" || failed=1
done
[ "$failed" = 0 ] || { echo "compressed-root: some tests failed (see above)" >&2; exit 1; }
