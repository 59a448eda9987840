#!/usr/bin/env bash
# Boots the demo image in every firmware/medium combination oneimage supports and prints
# the time to the demo's marker for each (QEMU; TCG emulation unless KVM works). The
# Secure Boot rows use the demo built with `secure-boot = true`.
#
#   scripts/boot-matrix.sh   (uses the root filesystem the tests cache, or makes one)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-agent.sh
cargo build --release --locked -q
bin=$PWD/target/release/oneimage
cache=target/tmp/rootfs-cache
work=$(mktemp -d /var/tmp/oneimage-boot-matrix.XXXXXX)
trap 'rm -rf "$work"' EXIT
sed -e "s|overlay = \"debian-overlay\"|overlay = \"$PWD/examples/debian-overlay\"|" \
  -e 's|^\[boot\]$|[boot]\nsecure-boot = true|' examples/debian.toml > "$work/secure.toml"
"$bin" build examples/debian.toml -o "$work/plain" --rootfs-cache "$cache" >/dev/null 2>&1
"$bin" build "$work/secure.toml" -o "$work/secure" --rootfs-cache "$cache" >/dev/null 2>&1
failed=0
printf '%-18s %-11s %s\n' firmware media "seconds to marker"
for cell in "uefi disk" "uefi usb" "uefi cdrom" "uefi scsi-cdrom" "bios disk" "bios usb" \
  "bios cdrom" "uefi-secure-boot disk" "uefi-secure-boot cdrom"; do
  set -- $cell
  image=$work/plain/debian-demo.img
  [ "$1" = uefi-secure-boot ] && image=$work/secure/debian-demo.img
  snapshot=--snapshot
  case $2 in *cdrom) snapshot= ;; esac
  s=$(date +%s.%N)
  log=$work/$1-$2.log
  if "$bin" qemu "$image" $snapshot --headless --quiet --firmware "$1" --media "$2" \
    --expect "oneimage-demo: booted" --timeout 900 --console-log "$log" >/dev/null 2>&1; then
    e=$(date +%s.%N)
    printf '%-18s %-11s %.1f\n' "$1" "$2" "$(echo "$e - $s" | bc)"
  else
    printf '%-18s %-11s FAILED; the console ended with:\n' "$1" "$2"
    tail -n 30 "$log" | sed 's/^/    /'
    failed=1
  fi
done
exit $failed
