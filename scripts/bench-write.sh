#!/usr/bin/env bash
# Benchmarks `oneimage write` against the tools users would otherwise use, in the same
# run, and prints the figures and ratios as Markdown (see docs/benchmarks-writer.md).
#
# Image: DEMO_IMAGE (default /work/main/out/debian-demo.img) when it exists, otherwise a
# synthetic 1 GiB GPT disk whose ext4 partition holds ~600 MiB of real files from /usr
# (DEMO_IMAGE=synthetic asks for it; a DEMO_IMAGE that is given but missing is an error).
# Targets: a regular file and a loop device. Needs root for the loop device.
# The writers are timed in REPEAT rounds (default 2), one run of each per round, with
# cold caches and a blank target (file removed, loop device discarded to zeros); the
# fastest run counts, and after every run the target must equal the image.
# BENCH_DIR=DIR keeps the image and artifacts in DIR and reuses them on the next run.
# BASELINE=/path/to/an/older/oneimage adds its `write` of the .zst and .xz, timed in the
# same rounds, and the ratios new / previous.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p oneimage -p oneimage-write --example bench >/dev/null
REPEAT=${REPEAT:-2}
if [ -n "${BENCH_DIR:-}" ]; then
  W=$BENCH_DIR; mkdir -p "$W"; KEEP=1
else
  W=$(mktemp -d /var/tmp/oneimage-bench.XXXXXX); KEEP=0
fi
LOOP=""
cleanup() {
  [ -n "$LOOP" ] && losetup -d "$LOOP" 2>/dev/null || true
  rm -f "$W/out.img" "$W/disk" "$W/log" "$W/oneimage" "$W/oneimage-previous" "$W/bench"
  [ "$KEEP" = 1 ] || rm -rf "$W"
}
trap cleanup EXIT
# Private copies, so that a rebuild in the tree during the run cannot swap them.
cp target/release/oneimage "$W/oneimage"
cp target/release/examples/bench "$W/bench"
O=$W/oneimage
B=$W/bench
P=""
if [ -n "${BASELINE:-}" ]; then
  cp "$BASELINE" "$W/oneimage-previous"
  P=$W/oneimage-previous
fi
# Every flag this script passes to `oneimage write` must exist in each binary.
for bin in "$O" $P; do
  help=$("$bin" write --help)
  for flag in --yes --force --json; do
    grep -q -- "$flag" <<<"$help" || { echo "FAILED: $bin write has no $flag" >&2; exit 1; }
  done
done
echo "oneimage: $("$O" --version) ($(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates Cargo.lock || echo ', with uncommitted changes'))" >&2
[ -z "$P" ] || echo "previous: $("$P" --version) ($BASELINE)" >&2
IMG=$W/bench.img
DEMO=${DEMO_IMAGE:-/work/main/out/debian-demo.img}
if [ -n "${DEMO_IMAGE:-}" ] && [ "$DEMO" != synthetic ] && [ ! -f "$DEMO" ]; then
  echo "FAILED: DEMO_IMAGE=$DEMO does not exist" >&2; exit 1
fi

if [ -f "$IMG.xz" ] && [ -f "$IMG.zst" ] && [ -f "$IMG.gz" ]; then
  echo "image: reusing $IMG and its artifacts" >&2
elif [ "$DEMO" != synthetic ] && [ -f "$DEMO" ]; then
  echo "image: $DEMO" >&2
  cp --sparse=always "$DEMO" "$IMG"
else
  echo "image: synthetic (1 GiB GPT disk, ext4 with ~600 MiB of files from /usr)" >&2
  python3 - "$W/stage" <<'PY'
import os, shutil, sys
dest, total, limit = sys.argv[1], 0, 600 << 20
for top in ["/usr/bin", "/usr/lib/x86_64-linux-gnu", "/usr/share"]:
    for root, dirs, files in os.walk(top):
        dirs.sort()
        for f in sorted(files):
            p = os.path.join(root, f)
            if total >= limit or not os.path.isfile(p) or os.path.islink(p):
                continue
            d = os.path.join(dest, os.path.relpath(root, "/"))
            os.makedirs(d, exist_ok=True)
            try:
                shutil.copyfile(p, os.path.join(d, f))
                total += os.path.getsize(p)
            except OSError:
                pass
PY
  truncate -s 1G "$IMG"
  E2FSPROGS_FAKE_TIME=1767225600 mkfs.ext4 -q -F -E offset=1048576 -U 0b1e0b1e-0000-4000-8000-000000000001 \
    -d "$W/stage" "$IMG" 1020M
  # The partition table last: mke2fs clears the start of the file it is given.
  sgdisk -n 1:2048:-1M -t 1:8300 -U 0b1e0b1e-0000-4000-8000-000000000002 \
    -u 1:0b1e0b1e-0000-4000-8000-000000000003 "$IMG" >/dev/null
  "$O" inspect "$IMG" >&2
  rm -rf "$W/stage"
fi
SIZE=$(stat -c %s "$IMG")

now() { date +%s.%N; }
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
drop() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }
# CPU seconds (user + system) used so far by this shell's finished children.
cpu() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($16 + $17) / hz }' "/proc/$$/stat"; }
# timed LABEL CMD...: runs CMD N times (default 1) with cold caches, each run after the
# untimed command PREP and followed by the untimed command CHECK (both optional); keeps
# in T[LABEL] the fastest run, also across calls (so rounds can interleave writers), and
# in CPU[LABEL] the least CPU time a run used (kernel threads' work, such as writeback of
# the page cache or a loop device's I/O, not counted).
declare -A T CPU SPLIT
timed() {
  local label=$1; shift
  local n=${N:-1} best=${T[$label]:-} least=${CPU[$label]:-} i s t c
  for ((i = 0; i < n; i++)); do
    [ -z "${PREP:-}" ] || eval "$PREP"
    drop
    c=$(cpu)
    s=$(now)
    if ! "$@" >"$W/log" 2>&1; then echo "FAILED: $label" >&2; cat "$W/log" >&2; exit 1; fi
    t=$(secs "$s" "$(now)")
    c=$(secs "$c" "$(cpu)")
    if [ -z "$best" ] || awk -v a="$t" -v b="$best" 'BEGIN { exit !(a < b) }'; then best=$t; fi
    if [ -z "$least" ] || awk -v a="$c" -v b="$least" 'BEGIN { exit !(a < b) }'; then least=$c; fi
    if [ -n "${CHECK:-}" ] && ! eval "$CHECK"; then
      echo "FAILED: $label: the target differs from the image" >&2; exit 1
    fi
    echo "  $label: $t s, CPU $c s" >&2
  done
  T[$label]=$best
  CPU[$label]=$least
}

if [ ! -f "$IMG.gz" ]; then
  echo "artifacts (oneimage build's emit step, levels: zstd -19 seekable, xz -6 multi-block)" >&2
  timed emit "$B" emit "$IMG"
  timed gzip sh -c "gzip -6 -c '$IMG' > '$IMG.gz'"
else
  T[emit]="(reused)"; T[gzip]="(reused)"
fi
MAPPED=$(python3 - "$IMG.bmap" <<'PY'
import re, sys
x = open(sys.argv[1]).read()
bs = int(re.search(r"<BlockSize>\s*(\d+)", x).group(1))
print(sum((int(b) - int(a) + 1) * bs for a, b in
          ((m.group(1), m.group(2) or m.group(1)) for m in re.finditer(r">\s*(\d+)(?:-(\d+))?\s*</Range>", x))))
PY
)

floor() { # copies only the mapped ranges (direct I/O on a device), no decompression, no hashing
  python3 - "$IMG" "$IMG.bmap" "$1" <<'PY'
import mmap, os, re, stat, sys
img, bmap, dst = sys.argv[1:]
x = open(bmap).read()
bs = int(re.search(r"<BlockSize>\s*(\d+)", x).group(1))
size = int(re.search(r"<ImageSize>\s*(\d+)", x).group(1))
dev = os.path.exists(dst) and stat.S_ISBLK(os.stat(dst).st_mode)
i = os.open(img, os.O_RDONLY)
o = os.open(dst, os.O_WRONLY | os.O_CREAT | (os.O_DIRECT if dev else 0), 0o644)
buf = mmap.mmap(-1, 8 << 20)  # page-aligned, as O_DIRECT needs
for m in re.finditer(r">\s*(\d+)(?:-(\d+))?\s*</Range>", x):
    a = int(m.group(1)) * bs
    b = min((int(m.group(2) or m.group(1)) + 1) * bs, size)
    while a < b:
        n = os.preadv(i, [memoryview(buf)[: min(b - a, 8 << 20)]], a)
        os.pwritev(o, [memoryview(buf)[: (n + 511) // 512 * 512 if dev else n]], a)
        a += n
if not dev and os.fstat(o).st_size < size:
    os.ftruncate(o, size)
os.fsync(o)
PY
}

# The writers, in the order they run in each round and appear in the tables.
WRITERS=("oneimage zst" "oneimage xz")
[ -z "$P" ] || WRITERS+=("previous oneimage zst" "previous oneimage xz")
WRITERS+=("bmaptool zst" "bmaptool xz" "xz -T0 -dc, dd" "zstd -dc, dd" "dd raw" "floor (mapped bytes only)")

run_targets() { # $1 = kind (file|loop), $2 = target path
  local k=$1 t=$2 direct="" r l
  declare -A C
  [ "$k" = loop ] && direct="oflag=direct"
  C["oneimage zst"]="'$O' write --yes --force '$IMG.zst' '$t'"
  C["oneimage xz"]="'$O' write --yes --force '$IMG.xz' '$t'"
  C["previous oneimage zst"]="'$P' write --yes --force '$IMG.zst' '$t'"
  C["previous oneimage xz"]="'$P' write --yes --force '$IMG.xz' '$t'"
  C["bmaptool zst"]="bmaptool copy '$IMG.zst' '$t'"
  C["bmaptool xz"]="bmaptool copy '$IMG.xz' '$t'"
  C["xz -T0 -dc, dd"]="xz -T0 -dc '$IMG.xz' | dd of='$t' bs=4M iflag=fullblock $direct conv=fsync status=none"
  C["zstd -dc, dd"]="zstd -q -dc '$IMG.zst' | dd of='$t' bs=4M iflag=fullblock $direct conv=fsync status=none"
  C["dd raw"]="dd if='$IMG' of='$t' bs=4M $direct conv=fsync status=none"
  C["floor (mapped bytes only)"]="$(declare -f floor); IMG='$IMG' floor '$t'"
  # A blank target before every run: no file, or a loop device whose blocks read as zeros.
  if [ "$k" = file ]; then PREP="rm -f '$t'"; else PREP="blkdiscard -f '$t' 2>/dev/null"; fi
  CHECK="cmp -n '$SIZE' '$IMG' '$t' >/dev/null"
  echo "target: $k ($(uptime))" >&2
  LOADS+=("$k start $(uptime | sed 's/.*load average: //')")
  N=1
  for ((r = 1; r <= REPEAT; r++)); do
    echo " round $r of $REPEAT" >&2
    for l in "${WRITERS[@]}"; do
      timed "$k $l" sh -c "${C[$l]}"
    done
  done
  echo "target: $k done ($(uptime))" >&2
  LOADS+=("end $(uptime | sed 's/.*load average: //')")
  # Where oneimage's time goes: its own report of the write and the readback.
  for l in "oneimage" ${P:+"previous oneimage"}; do
    local bin=$O
    [ "$l" = oneimage ] || bin=$P
    eval "$PREP"
    drop
    "$bin" write --yes --force --json "$IMG.zst" "$t" | tail -1 > "$W/done.json"
    eval "$CHECK" || { echo "FAILED: $k $l --json: the target differs from the image" >&2; exit 1; }
    SPLIT[$k $l]=$(python3 -c "import json; d = json.load(open('$W/done.json')); print('%.2f s decompressing, checking and writing (%s bytes of data, %s of zeros), %.2f s reading back' % (d['write_seconds'], d.get('written', '?'), d.get('zeroed', 'none'), d['verify_seconds']))")
  done
  PREP=""; CHECK=""
}

LOADS=()
run_targets file "$W/out.img"
rm -f "$W/out.img"
if [ -e /dev/loop-control ]; then
  truncate -s "$SIZE" "$W/disk"
  LOOP=$(losetup -f --show "$W/disk")
  run_targets loop "$LOOP"
else
  echo "SKIPPED loop device: /dev/loop-control is absent" >&2
fi

echo "decompression (to memory; oneimage in-process, the tools to /dev/null)" >&2
N=$REPEAT
timed "dec oneimage zst" "$B" decode "$IMG.zst"
timed "dec zstd -dc" sh -c "zstd -q -dc '$IMG.zst' > /dev/null"
timed "dec oneimage xz" "$B" decode "$IMG.xz"
timed "dec xz -T0 -dc" sh -c "xz -T0 -dc '$IMG.xz' > /dev/null"
timed "dec xz -T1 -dc" sh -c "xz -T1 -dc '$IMG.xz' > /dev/null"
timed "dec oneimage gz" "$B" decode "$IMG.gz"
timed "dec gzip -dc" sh -c "gzip -dc '$IMG.gz' > /dev/null"

mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
echo
echo "Image: $(mib "$SIZE") MiB, $(mib "$MAPPED") MiB mapped; $(nproc) cores; $(date -u +%Y-%m-%d); REPEAT=$REPEAT"
echo "Load average (1, 5, 15 min):"; printf '%s\n' "${LOADS[@]/#/- }"
echo
echo "| compressed | size (MiB) | % of image |"
echo "|---|---|---|"
for f in zst xz gz; do
  s=$(stat -c %s "$IMG.$f")
  echo "| .img.$f | $(mib "$s") | $(awk -v a="$s" -v b="$SIZE" 'BEGIN { printf "%.1f", 100 * a / b }') |"
done
echo
echo "Artifacts (zst + xz + bmap + SHA256SUMS): ${T[emit]} s; gzip -6 alone: ${T[gzip]} s"
echo
for k in file loop; do
  [ -n "${T[$k oneimage zst]:-}" ] || continue
  echo "| write to a $k | seconds | vs oneimage zst | CPU seconds |"
  echo "|---|---|---|---|"
  for l in "${WRITERS[@]}"; do
    echo "| $l | ${T[$k $l]} | $(ratio "${T[$k $l]}" "${T[$k oneimage zst]}")x | ${CPU[$k $l]} |"
  done
  echo
  echo "To a $k, oneimage against the others (time / their time; below 1 is faster):"
  echo "oneimage zst / bmaptool zst $(ratio "${T[$k oneimage zst]}" "${T[$k bmaptool zst]}")x," \
    "/ zstd -dc, dd $(ratio "${T[$k oneimage zst]}" "${T[$k zstd -dc, dd]}")x;" \
    "oneimage xz / bmaptool xz $(ratio "${T[$k oneimage xz]}" "${T[$k bmaptool xz]}")x," \
    "/ xz -T0 -dc, dd $(ratio "${T[$k oneimage xz]}" "${T[$k xz -T0 -dc, dd]}")x"
  if [ -n "$P" ]; then
    echo "new / previous: zst $(ratio "${T[$k oneimage zst]}" "${T[$k previous oneimage zst]}")x," \
      "xz $(ratio "${T[$k oneimage xz]}" "${T[$k previous oneimage xz]}")x;" \
      "CPU time: zst $(ratio "${CPU[$k oneimage zst]}" "${CPU[$k previous oneimage zst]}")x," \
      "xz $(ratio "${CPU[$k oneimage xz]}" "${CPU[$k previous oneimage xz]}")x"
  fi
  echo
  for l in "oneimage" ${P:+"previous oneimage"}; do
    echo "$l zst to a $k (one --json run): ${SPLIT[$k $l]}"
  done
  echo
done
echo "| decompress | seconds | MiB/s of image | CPU seconds |"
echo "|---|---|---|---|"
for l in "oneimage zst" "zstd -dc" "oneimage xz" "xz -T0 -dc" "xz -T1 -dc" "oneimage gz" "gzip -dc"; do
  echo "| $l | ${T[dec $l]} | $(awk -v b="$SIZE" -v t="${T[dec $l]}" 'BEGIN { printf "%.0f", b / 1048576 / t }') | ${CPU[dec $l]} |"
done
