#!/usr/bin/env bash
# What first-boot encryption costs, in one run, in the same VM (QEMU under TCG here):
#  - the demo's first persistent boot, plain (examples/debian.toml) and encrypted
#    (examples/debian-encrypt-first-boot.toml), on a disk three times the image: the
#    first-boot work each reports, and the encryption's own time (cryptsetup reencrypt
#    --encrypt, argon2id's benchmark included);
#  - the encryption's throughput (the root partition's data over that time, and as
#    cryptsetup's own progress reports it) against
#    `cryptsetup benchmark --cipher aes-xts-plain64 --key-size 512` run in the same VM
#    (the encrypted demo with a unit that runs it before the marker).
#
#   scripts/bench-encryption.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-agent.sh
cargo build --release --locked -q
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
bin=$target/release/oneimage
cache=$target/tmp/rootfs-cache
work=$(mktemp -d /var/tmp/oneimage-bench-encryption.XXXXXX)
trap 'rm -rf "$work"' EXIT
pass="bench passphrase"

# The demo's overlay, plus a unit that runs cryptsetup's benchmark before the marker.
cp -a examples/debian-overlay "$work/overlay"
cat >"$work/overlay/etc/systemd/system/oneimage-bench-crypt.service" <<'EOF'
[Unit]
Description=cryptsetup benchmark of aes-xts for oneimage's encryption benchmark
Before=oneimage-demo.service

[Service]
Type=oneshot
# The AES-XTS pieces the initramfs loads before it encrypts, so that the benchmark
# measures the same implementation (udev would not load aesni_intel by itself here).
ExecStartPre=-/sbin/modprobe -a aesni_intel xts
ExecStart=/bin/sh -c 'cryptsetup benchmark --cipher aes-xts-plain64 --key-size 512 2>&1 | sed "s/^/oneimage-bench: /" > /dev/console'

[Install]
WantedBy=multi-user.target
EOF
ln -s ../oneimage-bench-crypt.service "$work/overlay/etc/systemd/system/multi-user.target.wants/oneimage-bench-crypt.service"

build() { # spec name
  sed -e "s|^overlay = \"debian-overlay\"|overlay = \"$work/overlay\"|" "examples/$1.toml" >"$work/$1.toml"
  "$bin" build "$work/$1.toml" -o "$work/$1" --rootfs-cache "$cache" >/dev/null 2>"$work/$1.log"
  ls "$work/$1"/*.img
}
boot() { # image log answers...
  local image=$1 log=$2
  shift 2
  local len
  len=$(stat -c %s "$image")
  "$bin" qemu "$image" --headless --quiet --poweroff --timeout 1800 \
    --disk-size $((3 * len)) --expect "oneimage-demo: booted" --console-log "$log" "$@" >/dev/null
}
plain=$(build debian)
enc=$(build debian-encrypt-first-boot)
# The bytes cryptsetup encrypts: the root partition as built (the boot grows it), less
# the header's room.
first=$(LC_ALL=C sgdisk -i 2 "$enc" | awk '/First sector/ {print $3}')
last=$(LC_ALL=C sgdisk -i 2 "$enc" | awk '/Last sector/ {print $3}')
bytes=$(((last - first + 1) * 512 - 32 * 1048576))
boot "$plain" "$work/plain.log"
boot "$enc" "$work/enc.log" \
  --answer "Choose a passphrase to encrypt the disk=$pass" --answer "Repeat the passphrase=$pass"

work_s() { sed -n 's/.*first-boot work took \([0-9.]*\) s.*/\1/p' "$1" | head -n 1; }
plain_s=$(work_s "$work/plain.log")
enc_total_s=$(work_s "$work/enc.log")
enc_s=$(sed -n 's/.*first boot: \/dev\/vda2 encrypted in \([0-9.]*\) s.*/\1/p' "$work/enc.log" | head -n 1)
[ -n "$plain_s" ] && [ -n "$enc_total_s" ] && [ -n "$enc_s" ] ||
  { echo "bench-encryption: a boot did not report its times" >&2; exit 1; }
mibs=$(echo "scale=1; $bytes / 1048576 / $enc_s" | bc)
# What cryptsetup itself measured while it encrypted (its last progress line).
cs_mibs=$(sed -n 's/.*oneimage-init: reencrypt: [0-9]*% ([0-9]* of [0-9]* MiB, \([0-9.]*\) MiB\/s).*/\1/p' "$work/enc.log" | tail -n 1)
# cryptsetup benchmark's decryption and encryption columns for aes-xts 512b.
bench=$(grep -a 'oneimage-bench: *aes-xts *512b' "$work/enc.log" | head -n 1)
[ -n "$bench" ] || { echo "bench-encryption: no cryptsetup benchmark on the console" >&2; exit 1; }
enc_bench=$(echo "$bench" | awk '{print $4}')
echo "bench-encryption: cryptsetup benchmark in the VM: ${bench#*oneimage-bench: }"
printf '%-40s %10s\n' "first-boot work, plain demo (s)" "$plain_s"
printf '%-40s %10s\n' "first-boot work, encrypted demo (s)" "$enc_total_s"
printf '%-40s %10s\n' "  of which the encryption (s)" "$enc_s"
printf '%-40s %10s\n' "  encrypted (MiB)" "$((bytes / 1048576))"
printf '%-40s %10s\n' "encryption throughput, whole step (MiB/s)" "$mibs"
printf '%-40s %10s\n' "  as cryptsetup measured it (MiB/s)" "${cs_mibs:-?}"
printf '%-40s %10s\n' "cryptsetup benchmark encrypt (MiB/s)" "$enc_bench"
printf '%-40s %10s\n' "ratio (ours / benchmark)" "$(echo "scale=2; $mibs / $enc_bench" | bc)"
