#!/usr/bin/env bash
# The Debian package on a fresh Debian 12: builds the .deb (scripts/build-deb.sh), makes
# a bookworm chroot holding only Debian's essential packages, apt, and the .deb with the
# dependencies it declares (mmdebstrap --variant=apt --include=./oneimage_*.deb), then,
# inside it, builds the demo from the packaged example spec and boots it in QEMU to the
# demo's marker. Needs root (a chroot with /proc, /sys and /dev) and Debian's mirror.
#
#   scripts/deb-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "deb-test: run as root (it makes a chroot)" >&2; exit 1; }
scripts/setup.sh
deb=$(scripts/build-deb.sh | tail -n 1)
echo "deb-test: $deb ($(stat -c %s "$deb") bytes)"
dpkg-deb --info "$deb" | sed -n '/Depends/,/Suggests/p'
work=$(mktemp -d /var/tmp/oneimage-deb-test.XXXXXX)
cleanup() {
  for m in dev/pts dev sys proc; do umount -l "$work/root/$m" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
start=$(date +%s)
# The hook makes the .deb's directory visible inside the chroot, where dpkg runs.
mmdebstrap --mode=root --variant=apt --hook-dir=/usr/share/mmdebstrap/hooks/file-mirror-automount \
  --include="$deb" bookworm "$work/root"
echo "deb-test: chroot with the package made in $(($(date +%s) - start)) s"
for m in proc sys dev dev/pts; do mount --bind "/$m" "$work/root/$m"; done
# What the package installed is all there is: no Rust toolchain, no source tree.
chroot "$work/root" sh -c '! command -v cargo && ! command -v rustc && test ! -e /work/main'
chroot "$work/root" dpkg -L oneimage | grep -E '^/usr/(bin|lib/oneimage)/'
start=$(date +%s)
chroot "$work/root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
  oneimage build /usr/share/oneimage/examples/debian.toml -o /root/out
echo "deb-test: demo built inside the chroot in $(($(date +%s) - start)) s"
start=$(date +%s)
chroot "$work/root" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
  oneimage qemu /root/out/debian-demo.img --snapshot --headless --quiet \
  --expect "oneimage-demo: booted" --timeout 900 --console-log /root/out/console.log
echo "deb-test: booted to the marker in $(($(date +%s) - start)) s"
grep -a "oneimage-demo: booted" "$work/root/root/out/console.log"
echo "deb-test: passed"
