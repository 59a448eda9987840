#!/usr/bin/env bash
# Builds the Debian package of oneimage: target/deb/oneimage_VERSION_amd64.deb (or under
# $CARGO_TARGET_DIR). It holds the tool (/usr/bin/oneimage), the static programs images
# carry for both architectures (/usr/lib/oneimage/x86_64 and /usr/lib/oneimage/aarch64,
# where the tool finds them), the example specs and the documentation, and declares what
# building and booting x86_64 images needs; arm64 builds need the Suggests.
#
#   scripts/build-deb.sh            then: apt install ./target/deb/oneimage_*_amd64.deb
#
# The same sources give the same package: file times are the last commit's, and
# dpkg-deb takes SOURCE_DATE_EPOCH for its own.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
case $target in /*) ;; *) target=$PWD/$target ;; esac
version=$(cargo metadata --no-deps --format-version 1 --offline |
  python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "oneimage"))')
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 1767225600)}

scripts/build-agent.sh
scripts/build-agent-aarch64.sh
cargo build --release --locked -q -p oneimage --bin oneimage

root=$(mktemp -d "$target/deb-root.XXXXXX")
trap 'rm -rf "$root"' EXIT
install -D -m 0755 "$target/release/oneimage" "$root/usr/bin/oneimage"
strip "$root/usr/bin/oneimage"
for m in x86_64 aarch64; do
  from=$target/agent
  [ "$m" = x86_64 ] || from=$target/agent/$m
  for p in oneimage-init oneimage; do
    install -D -m 0755 "$from/$p" "$root/usr/lib/oneimage/$m/$p"
  done
done
mkdir -p "$root/usr/share/oneimage" "$root/usr/share/doc/oneimage"
cp -a examples "$root/usr/share/oneimage/examples"
install -m 0644 README.md "$root/usr/share/doc/oneimage/README.md"
cp -a docs "$root/usr/share/doc/oneimage/docs"
cat > "$root/usr/share/doc/oneimage/copyright" <<'EOF'
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: oneimage

Files: *
License: MIT or Apache-2.0
 On Debian systems the Apache License 2.0 is in /usr/share/common-licenses/Apache-2.0.
EOF
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
mkdir -p "$root/DEBIAN"
cat > "$root/DEBIAN/control" <<EOF
Package: oneimage
Version: $version
Architecture: amd64
Maintainer: oneimage developers <oneimage@localhost>
Installed-Size: $size
Section: admin
Priority: optional
Depends: libc6 (>= 2.36), libgcc-s1, e2fsprogs, dosfstools, mtools, grub-common, grub-efi-amd64-bin, grub-pc-bin, mmdebstrap, uidmap, qemu-utils, qemu-system-x86, ovmf
Recommends: seabios, shim-signed, grub-efi-amd64-signed, xz-utils, zstd, squashfs-tools-ng, squashfs-tools, erofs-utils, fakeroot, attr
Suggests: qemu-user-static, binfmt-support, arch-test, qemu-system-arm, qemu-efi-aarch64, bmap-tools
Homepage: https://github.com/oneimage/oneimage
Description: build, write and boot one generic Linux OS image
 oneimage builds one image file that boots from a USB stick or disk (persistent),
 from a DVD, in a virtual machine, or live with nothing written; writes it safely
 to a stick; converts it to qcow2, VMDK, VHDX, VDI or an OVA; and boots it in QEMU.
 Images are reproducible and built without root, for x86_64 and arm64.
EOF
# Owners root (--root-owner-group), modes normalised, times fixed: the same package from
# the same sources.
find "$root" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
find "$root" -type d -exec chmod 0755 {} +
find "$root/usr/share" -type f -exec chmod 0644 {} +
mkdir -p "$target/deb"
out=$target/deb/oneimage_${version}_amd64.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$out.partial" >/dev/null
mv "$out.partial" "$out"
echo "$out"
