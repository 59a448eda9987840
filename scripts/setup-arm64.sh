#!/usr/bin/env bash
# What building and booting arm64 images needs on an x86_64 Debian 12 host, beyond
# scripts/setup.sh: qemu-user-static and binfmt_misc (mmdebstrap runs the arm64 packages'
# scripts through it), arch-test (mmdebstrap checks with it), qemu-system-aarch64 and
# AAVMF (the arm64 UEFI firmware). Safe to run again.
set -euo pipefail
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
pkgs=(qemu-user-static binfmt-support arch-test qemu-system-arm qemu-efi-aarch64)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup-arm64: installing ${missing[*]}"
  $sudo apt-get update -q
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
# Containers and minimal hosts may not have binfmt_misc mounted; the packages' scripts
# register the interpreters only where it is.
if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
  $sudo mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
  $sudo update-binfmts --enable qemu-aarch64 2>/dev/null || $sudo update-binfmts --import qemu-aarch64
fi
if ! arch-test arm64 >/dev/null; then
  echo "setup-arm64: arm64 programs still do not run here (arch-test arm64 failed)" >&2
  exit 1
fi
