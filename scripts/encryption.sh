#!/usr/bin/env bash
# The encryption campaign: examples/debian-encrypt-first-boot.toml and
# examples/debian-encrypt-build-key.toml built twice each (byte-identical), then every
# encryption test: the first boot and the one after (the suite's), three wrong
# passphrases then the right one, a declined offer (examples/debian-encrypt-offer.toml),
# the live entry on an encrypted disk, power cuts all through the encryption
# (ONEIMAGE_POWER_CUTS, ONEIMAGE_POWER_CUT_SEED; the span they are spread over is
# measured on an uncut boot first, or ONEIMAGE_ENCRYPT_CUT_SPAN_MS), the
# build-key image's rekey (the suite's), its live boot from a DVD, and power cuts all
# through its rekey (ONEIMAGE_REKEY_CUT_SPAN_MS, or measured), and encrypted installs
# (from an `offer` stick, and from a build-key stick). Every test runs even when
# one fails; the script fails at the end then. Needs about 20 GiB of free space.
#
#   scripts/encryption.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-agent.sh
cargo build --release --locked -q
target=${CARGO_TARGET_DIR:-target}
case $target in /*) ;; *) target=$PWD/$target ;; esac
bin=$target/release/oneimage
cache=$target/tmp/rootfs-cache
work=$(mktemp -d /var/tmp/oneimage-encryption.XXXXXX)
trap 'rm -rf "$work"' EXIT

for example in debian-encrypt-first-boot debian-encrypt-build-key; do
  spec=$work/$example.toml
  sed -e "s|^overlay = \"debian-overlay\"|overlay = \"$PWD/examples/debian-overlay\"|" \
    "examples/$example.toml" >"$spec"
  for run in a b; do
    "$bin" build "$spec" -o "$work/$run" --rootfs-cache "$cache" 2>"$work/$run.log"
  done
  a=$(sha256sum <"$work/a"/*.img) b=$(sha256sum <"$work/b"/*.img)
  [ "$a" = "$b" ] || { echo "encryption: two builds of $example differ" >&2; exit 1; }
  echo "encryption: $example: two builds byte-identical (${a%% *})"
  rm -rf "$work/a" "$work/b"
done

failed=0
cargo test --release --locked --test encryption -- --include-ignored --test-threads=1 --nocapture || failed=1
# Encrypted installs: from a stick that offers encryption (the suite's), and from a
# stick encrypted when built.
for t in an_encrypted_install_writes_no_plaintext_and_the_copy_boots_asking_for_its_passphrase \
         an_install_from_a_build_key_stick_is_encrypted_under_a_new_key; do
  cargo test --release --locked --test installed_system -- --include-ignored --exact "$t" || failed=1
done
[ "$failed" = 0 ] || { echo "encryption: some tests failed (see above)" >&2; exit 1; }
