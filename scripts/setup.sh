#!/usr/bin/env bash
# Installs what oneimage needs on Debian 12: the packages in scripts/packages.txt and,
# when cargo is missing, says how to get a Rust toolchain. Safe to run again.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
mapfile -t pkgs < <(grep -v '^#' "$here/packages.txt" | sed '/^\s*$/d')
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
updated=0
# Twice: installing one package can remove another that conflicts with it (a machine
# with a backported qemu-utils loses it to qemu-system-x86's own version), and the
# second pass puts it back in the version that fits.
for pass in 1 2; do
  missing=()
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ "${#missing[@]}" -eq 0 ] && break
  echo "setup: installing ${missing[*]}"
  if [ "$updated" = 0 ]; then $sudo apt-get update -q; updated=1; fi
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
done
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || {
    echo "setup: $p could not be installed" >&2
    exit 1
  }
done
if ! command -v cargo >/dev/null; then
  echo "setup: cargo not found; install Rust (1.88 or newer) with rustup: https://rustup.rs" >&2
  exit 1
fi
