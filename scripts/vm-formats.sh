#!/usr/bin/env bash
# Converts the demo image to every virtual machine format `oneimage convert` makes and
# boots each one (qcow2, vmdk, vhdx, vdi and the OVA's disk) to the demo's marker in
# QEMU; the test suite boots only the qcow2.
#
#   scripts/vm-formats.sh
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build-agent.sh
ONEIMAGE_VM_FORMAT_BOOTS=qcow2,vmdk,vhdx,vdi,ova \
  cargo test --release --locked --test debian -- --exact vm_formats_are_checked_by_qemu_img_and_boot --nocapture
