#!/usr/bin/env bash
# Builds what scripts/build-agent.sh builds (oneimage-init and oneimage, statically
# linked), for aarch64 on an x86_64 host, into target/agent/aarch64/ (or
# $CARGO_TARGET_DIR/agent/aarch64/). rustup here has no aarch64 std, so the build runs
# with Debian's rustc, which cross-compiles once libstd-rust-dev:arm64 is installed;
# the workspace needs a newer rustc than stable Debian has, hence testing (forky), in a
# chroot cached under the target dir. Needs root (mmdebstrap, chroot, bind mounts).
# ONEIMAGE_CROSS_SUITE=sid uses unstable if testing's packages can't be installed.
set -euo pipefail
cd "$(dirname "$0")/.."
ws="$PWD"
mkdir -p "${CARGO_TARGET_DIR:-target}"
target="$(realpath "${CARGO_TARGET_DIR:-target}")"
registry="${CARGO_HOME:-$HOME/.cargo}/registry"
suite="${ONEIMAGE_CROSS_SUITE:-forky}"
root="$target/tmp/cross-aarch64-$suite"

# The chroot is made under a temporary name and renamed only once complete, so an
# interrupted run starts again instead of building in a half-made tree. The mirror
# reachable here can be a frozen copy whose Release files are past Valid-Until: only
# that date check is turned off, signatures are still checked.
if [ ! -e "$root/.complete" ]; then
  rm -rf "$root.new" && mkdir -p "$(dirname "$root")"
  mmdebstrap --mode=root --variant=essential --architectures=amd64,arm64 \
    --aptopt='Acquire::Check-Valid-Until "false"' \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
    --include=rustc,cargo,libstd-rust-dev:arm64,gcc-aarch64-linux-gnu,libc6-dev-arm64-cross,binutils-aarch64-linux-gnu \
    "$suite" "$root.new" http://deb.debian.org/debian
  touch "$root.new/.complete"
  rm -rf "$root" && mv "$root.new" "$root"
fi

mkdir -p "$target/agent/aarch64" "$registry"
# A private mount namespace: the bind mounts go away with it, whatever happens. The
# workspace is mounted read-only (--locked: nothing is written there), the target dir
# and the crate registry read-write; --offline, as the chroot has no network use.
# Fixed paths inside (/ws, /cargo) keep the binaries the same wherever the tree is.
unshare --mount --propagation private bash -euo pipefail -c '
  root=$1
  mkdir -p "$root/ws" "$root/tgt" "$root/cargo/registry"
  mount --rbind /dev "$root/dev" && mount -t proc proc "$root/proc"
  mount -o bind,ro "$2" "$root/ws"
  mount --bind "$3" "$root/tgt" && mount --bind "$4" "$root/cargo/registry"
  exec env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root CARGO_HOME=/cargo \
    CARGO_TARGET_DIR=/tgt/aarch64-build CARGO_BUILD_TARGET=aarch64-unknown-linux-gnu \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar \
    chroot "$root" bash -euo pipefail -c "
      cd /ws
      cargo rustc --locked --offline --profile agent -p oneimage-agent --bin oneimage-init -q -- \
        -C target-feature=+crt-static
      cargo rustc --locked --offline --release -p oneimage --bin oneimage -q -- \
        -C target-feature=+crt-static
      out=/tgt/aarch64-build/aarch64-unknown-linux-gnu
      cp \$out/agent/oneimage-init /tgt/agent/aarch64/oneimage-init.new
      aarch64-linux-gnu-strip -o /tgt/agent/aarch64/oneimage.new \$out/release/oneimage"
' _ "$root" "$ws" "$target" "$registry"
mv "$target/agent/aarch64/oneimage-init.new" "$target/agent/aarch64/oneimage-init"
mv "$target/agent/aarch64/oneimage.new" "$target/agent/aarch64/oneimage"
