//! The blocks of an ext2/3/4 filesystem that are in use, read from its superblock, group
//! descriptors and block bitmaps, so an installer can copy only those and leave zeros
//! everywhere else.
//!
//! The answer must be a superset of what the filesystem uses: a used block left out is
//! lost data, a free block kept only costs time. So everything that might hold metadata
//! is counted whether or not a bitmap says so, and features whose bitmaps mean something
//! else (bigalloc) or that are unknown are refused rather than guessed at.
//!
//! The filesystem is untrusted: every field is checked before it is used, all arithmetic
//! is checked, the number of groups is capped and the superblock must fit the input, so
//! crafted bytes give an error, not a panic, a huge allocation or a long walk. Reads go
//! one block at a time; memory grows with the number of used ranges only.

use std::io::{self, Read, Seek, SeekFrom};

/// Why the used blocks of a filesystem could not be found.
#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    /// Reading or seeking the input failed.
    #[error("reading the filesystem: {0}")]
    Io(#[from] io::Error),
    /// A structure is damaged or not what the format allows.
    #[error("{part}: {detail}")]
    Invalid {
        /// The structure that is wrong, e.g. "superblock" or "group descriptor 7".
        part: String,
        /// Which field is wrong and what was expected.
        detail: String,
    },
    /// The filesystem uses a feature whose block accounting this reader does not know.
    #[error("superblock: feature {feature} is not supported ({why})")]
    Unsupported {
        /// The feature's name, or its flag when it has none we know.
        feature: String,
        /// Why it matters for finding used blocks.
        why: &'static str,
    },
}

/// The used part of a filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsedBlocks {
    /// Bytes per block.
    pub block_size: u64,
    /// Blocks in the filesystem (its size is `block_size * blocks_count`).
    pub blocks_count: u64,
    /// Byte ranges `[start, end)` holding data or metadata, sorted, disjoint and not
    /// touching; everything else is free.
    pub ranges: Vec<(u64, u64)>,
    /// The journal has not been replayed: blocks it will write may still be free in the
    /// bitmaps, so a copy of only `ranges` can lose data. Copy everything instead.
    pub needs_recovery: bool,
}

fn invalid(part: impl Into<String>, detail: impl Into<String>) -> Ext4Error {
    Ext4Error::Invalid {
        part: part.into(),
        detail: detail.into(),
    }
}

/// Fails with a superblock error (a message naming the field) unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($msg:tt)*) => {
        if !$cond {
            return Err(invalid("superblock", format!($($msg)*)));
        }
    };
}

const MAGIC: u16 = 0xEF53;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
// Every incompat flag the kernel knows: an unknown one may change the layout.
const INCOMPAT_KNOWN: u32 = 0x0003_f7df;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_GDT_CSUM: u32 = 0x10;
const RO_COMPAT_BIGALLOC: u32 = 0x200;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;
// As above for ro_compat: these may change what a bitmap bit stands for.
const RO_COMPAT_KNOWN: u32 = 0x0001_ffff;
const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const BG_BLOCK_UNINIT: u16 = 0x2;
/// More groups than any real filesystem (2^24 groups of 128 MiB is 2 PiB) bounds the walk.
const MAX_GROUPS: u64 = 1 << 24;

fn le(b: &[u8], at: usize, width: usize) -> u64 {
    b[at..at + width]
        .iter()
        .rev()
        .fold(0, |v, &x| (v << 8) | u64::from(x))
}

/// Which groups hold a superblock backup (and with it a descriptor table copy).
#[derive(Debug, Clone, Copy)]
enum Backups {
    Every,
    Sparse,
    Two([u64; 2]),
}

/// What the walk needs from the superblock, every value checked.
#[derive(Debug)]
struct Layout {
    bs: u64,
    blocks: u64,
    first: u64,
    per_group: u64,
    groups: u64,
    desc_size: u64,
    descs_per_block: u64,
    /// The first descriptor block kept in meta groups (`gdt_blocks` without meta_bg).
    first_meta_bg: u64,
    meta_bg: bool,
    reserved_gdt: u64,
    itable_blocks: u64,
    backups: Backups,
    /// Whether BLOCK_UNINIT may be believed: the kernel ignores it without checksums.
    uninit_valid: bool,
    recover: bool,
}

impl Layout {
    fn parse(sb: &[u8; 1024], input_len: u64) -> Result<Layout, Ext4Error> {
        let magic = le(sb, 0x38, 2) as u16;
        ensure!(
            magic == MAGIC,
            "s_magic {magic:#06x} is not ext2/3/4 (expected 0xef53)"
        );
        let log = le(sb, 0x18, 4);
        ensure!(
            log <= 6,
            "s_log_block_size {log} is out of range (expected 0..=6)"
        );
        let bs = 1024u64 << log;
        let (compat, incompat, ro) = (
            le(sb, 0x5c, 4) as u32,
            le(sb, 0x60, 4) as u32,
            le(sb, 0x64, 4) as u32,
        );
        let unsupported = |feature: String, why| Err(Ext4Error::Unsupported { feature, why });
        if incompat & INCOMPAT_JOURNAL_DEV != 0 {
            return unsupported("journal_dev".into(), "an external journal has no groups");
        }
        if incompat & !INCOMPAT_KNOWN != 0 {
            let flag = incompat & !INCOMPAT_KNOWN;
            return unsupported(format!("incompat {flag:#x}"), "unknown layout");
        }
        if ro & RO_COMPAT_BIGALLOC != 0 {
            return unsupported("bigalloc".into(), "bitmap bits are clusters, not blocks");
        }
        if ro & !RO_COMPAT_KNOWN != 0 {
            let flag = ro & !RO_COMPAT_KNOWN;
            return unsupported(format!("ro_compat {flag:#x}"), "unknown block accounting");
        }
        let wide = incompat & INCOMPAT_64BIT != 0;
        let blocks = le(sb, 0x4, 4) | if wide { le(sb, 0x150, 4) << 32 } else { 0 };
        let first = le(sb, 0x14, 4);
        // The superblock is at byte 1024: block 1 with 1 KiB blocks, inside block 0 else.
        let want_first = u64::from(bs == 1024);
        ensure!(
            first == want_first,
            "s_first_data_block {first} is wrong for {bs}-byte blocks (expected {want_first})"
        );
        let fits = blocks.checked_mul(bs).is_some_and(|s| s <= input_len);
        ensure!(
            blocks > first && fits,
            "s_blocks_count {blocks} of {bs} bytes does not fit the {input_len}-byte input \
             (expected {}..={})",
            first + 1,
            input_len / bs
        );
        let per_group = le(sb, 0x20, 4);
        ensure!(
            (8..=8 * bs).contains(&per_group),
            "s_blocks_per_group {per_group} is out of range (expected 8..={})",
            8 * bs
        );
        let groups = (blocks - first).div_ceil(per_group);
        ensure!(
            groups <= MAX_GROUPS,
            "{groups} block groups are too many (expected at most {MAX_GROUPS})"
        );
        let inodes_per_group = le(sb, 0x28, 4);
        ensure!(
            (1..=8 * bs).contains(&inodes_per_group),
            "s_inodes_per_group {inodes_per_group} is out of range (expected 1..={})",
            8 * bs
        );
        // Revision 0 has no s_inode_size field.
        let inode_size = if le(sb, 0x4c, 4) == 0 {
            128
        } else {
            le(sb, 0x58, 2)
        };
        ensure!(
            (128..=bs).contains(&inode_size) && inode_size.is_power_of_two(),
            "s_inode_size {inode_size} is invalid (expected a power of two in 128..={bs})"
        );
        let desc_size = if wide { le(sb, 0xfe, 2) } else { 32 };
        ensure!(
            (32 << u8::from(wide)..=bs).contains(&desc_size) && desc_size.is_power_of_two(),
            "s_desc_size {desc_size} is invalid with 64bit (expected a power of two in 64..={bs})"
        );
        let descs_per_block = bs / desc_size;
        let gdt_blocks = groups.div_ceil(descs_per_block);
        let meta_bg = incompat & INCOMPAT_META_BG != 0;
        let first_meta_bg = if meta_bg {
            le(sb, 0x104, 4)
        } else {
            gdt_blocks
        };
        ensure!(
            first_meta_bg <= gdt_blocks,
            "s_first_meta_bg {first_meta_bg} is beyond the {gdt_blocks} descriptor blocks"
        );
        let reserved_gdt = le(sb, 0xce, 2);
        // They are the resize inode's indirect block's entries, so at most one block of them.
        ensure!(
            reserved_gdt <= bs / 4,
            "s_reserved_gdt_blocks {reserved_gdt} is too many (expected at most {})",
            bs / 4
        );
        let backups = if compat & COMPAT_SPARSE_SUPER2 != 0 {
            Backups::Two([le(sb, 0x24c, 4), le(sb, 0x250, 4)])
        } else if ro & RO_COMPAT_SPARSE_SUPER != 0 {
            Backups::Sparse
        } else {
            Backups::Every
        };
        Ok(Layout {
            bs,
            blocks,
            first,
            per_group,
            groups,
            desc_size,
            descs_per_block,
            first_meta_bg,
            meta_bg,
            reserved_gdt,
            itable_blocks: (inodes_per_group * inode_size).div_ceil(bs),
            backups,
            uninit_valid: ro & (RO_COMPAT_GDT_CSUM | RO_COMPAT_METADATA_CSUM) != 0,
            recover: incompat & INCOMPAT_RECOVER != 0,
        })
    }

    fn group_start(&self, g: u64) -> u64 {
        // Cannot overflow: groups * per_group is at most blocks + per_group.
        self.first + g * self.per_group
    }

    /// The kernel's `ext4_bg_has_super`.
    fn has_super(&self, g: u64) -> bool {
        let power_of = |b: u64| {
            let mut n = b;
            while n < g {
                n *= b;
            }
            n == g
        };
        match self.backups {
            _ if g == 0 => true,
            Backups::Two(b) => b.contains(&g),
            Backups::Every => true,
            Backups::Sparse => g == 1 || g & 1 == 1 && (power_of(3) || power_of(5) || power_of(7)),
        }
    }

    /// Blocks at the start of group `g` that hold a superblock and descriptor copies: all
    /// a BLOCK_UNINIT group uses of itself (the kernel's `ext4_num_base_meta_clusters`).
    fn base_meta(&self, g: u64) -> u64 {
        let sb = u64::from(self.has_super(g));
        if !self.meta_bg || g < self.first_meta_bg * self.descs_per_block {
            if sb == 0 {
                return 0;
            }
            return sb + self.first_meta_bg + self.reserved_gdt;
        }
        let in_meta = g % self.descs_per_block;
        sb + u64::from(in_meta == 0 || in_meta == 1 || in_meta == self.descs_per_block - 1)
    }

    /// Where descriptor block `n` is (the kernel's `descriptor_loc`).
    fn gdt_block(&self, n: u64) -> u64 {
        if n < self.first_meta_bg {
            return self.first + 1 + n;
        }
        let g = n * self.descs_per_block;
        self.group_start(g) + u64::from(self.has_super(g))
    }
}

/// Used block runs, merged as they come; sorted and merged again whenever the list has
/// doubled, so it stays within about twice the number of distinct runs.
#[derive(Default)]
struct Runs {
    v: Vec<(u64, u64)>,
    compacted: usize,
}

impl Runs {
    fn add(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        if let Some(last) = self.v.last_mut() {
            if last.0 <= start && start <= last.1 {
                last.1 = last.1.max(end);
                return;
            }
        }
        self.v.push((start, end));
        if self.v.len() > 2 * self.compacted + 4096 {
            self.compact();
        }
    }

    fn compact(&mut self) {
        self.v.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(self.v.len());
        for &(s, e) in &self.v {
            match out.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => out.push((s, e)),
            }
        }
        self.v = out;
        self.compacted = self.v.len();
    }
}

fn read_block<R: Read + Seek>(fs: &mut R, l: &Layout, b: u64, buf: &mut [u8]) -> io::Result<()> {
    // `b` is below `blocks`, and `blocks * bs` was checked to fit the input.
    fs.seek(SeekFrom::Start(b * l.bs))?;
    fs.read_exact(buf)
}

/// Byte ranges `[start, end)` of the filesystem in `fs` that hold data or metadata,
/// sorted and merged; everything else is free. `fs` must hold the filesystem from its
/// first byte (a partition); it may be longer than the filesystem, not shorter.
pub fn used_ranges<R: Read + Seek>(fs: &mut R) -> Result<UsedBlocks, Ext4Error> {
    let input_len = fs.seek(SeekFrom::End(0))?;
    if input_len < 2048 {
        return Err(invalid(
            "superblock",
            format!("the input is {input_len} bytes (expected at least 2048)"),
        ));
    }
    let mut sb = [0u8; 1024];
    fs.seek(SeekFrom::Start(1024))?;
    fs.read_exact(&mut sb)?;
    let l = Layout::parse(&sb, input_len)?;
    let bs = l.bs as usize;
    let mut runs = Runs::default();
    // The boot block and the block holding the primary superblock.
    runs.add(0, l.first + 1);
    let (mut gdt, mut bitmap) = (vec![0u8; bs], vec![0u8; bs]);
    let mut gdt_loaded = None;
    for g in 0..l.groups {
        let n = g / l.descs_per_block;
        if gdt_loaded != Some(n) {
            let at = l.gdt_block(n);
            if at >= l.blocks {
                return Err(invalid(
                    format!("group descriptor block {n}"),
                    format!("at block {at}, beyond the {} blocks", l.blocks),
                ));
            }
            read_block(fs, &l, at, &mut gdt)?;
            runs.add(at, at + 1);
            gdt_loaded = Some(n);
        }
        let at = ((g % l.descs_per_block) * l.desc_size) as usize;
        let d = &gdt[at..at + l.desc_size as usize];
        let field = |lo: usize, hi: usize| {
            le(d, lo, 4)
                | if l.desc_size >= 64 {
                    le(d, hi, 4) << 32
                } else {
                    0
                }
        };
        let part = || format!("group descriptor {g}");
        let (block_bitmap, inode_bitmap, itable) = (field(0, 0x20), field(4, 0x24), field(8, 0x28));
        for (name, at, len) in [
            ("bg_block_bitmap", block_bitmap, 1),
            ("bg_inode_bitmap", inode_bitmap, 1),
            ("bg_inode_table", itable, l.itable_blocks),
        ] {
            if at.checked_add(len).is_none_or(|end| end > l.blocks) || at < l.first {
                return Err(invalid(
                    part(),
                    format!(
                        "{name} {at} (+{len} blocks) is outside blocks {}..{}",
                        l.first, l.blocks
                    ),
                ));
            }
            // Counted wherever they are: with flex_bg they sit in other groups, which
            // may be BLOCK_UNINIT themselves.
            runs.add(at, at + len);
        }
        let start = l.group_start(g);
        let count = l.per_group.min(l.blocks - start);
        if l.uninit_valid && le(d, 0x12, 2) as u16 & BG_BLOCK_UNINIT != 0 {
            runs.add(start, start + l.base_meta(g).min(count));
            continue;
        }
        read_block(fs, &l, block_bitmap, &mut bitmap)?;
        let bit = |i: u64| bitmap[(i / 8) as usize] >> (i % 8) & 1 == 1;
        let whole = |i: u64, byte: u8| {
            i.is_multiple_of(8) && i + 8 <= count && bitmap[(i / 8) as usize] == byte
        };
        let mut i = 0;
        while i < count {
            while i < count && !bit(i) {
                i += if whole(i, 0) { 8 } else { 1 };
            }
            let run = i;
            while i < count && bit(i) {
                i += if whole(i, 0xff) { 8 } else { 1 };
            }
            runs.add(start + run, start + i);
        }
    }
    runs.compact();
    Ok(UsedBlocks {
        block_size: l.bs,
        blocks_count: l.blocks,
        ranges: runs.v.iter().map(|&(s, e)| (s * l.bs, e * l.bs)).collect(),
        needs_recovery: l.recover,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Fuzz, Rng};
    use std::io::Cursor;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    /// An e2fsprogs tool, also where a user's PATH lacks the sbin directories.
    fn tool(name: &str) -> Command {
        let path = ["/usr/sbin", "/sbin"]
            .iter()
            .map(|d| Path::new(d).join(name))
            .find(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from(name));
        let mut cmd = Command::new(path);
        cmd.env("LC_ALL", "C");
        cmd
    }

    /// Runs a tool and insists it worked: a missing tool fails the test rather than
    /// skipping it, since a skipped oracle would let a data-losing bug pass.
    fn run(cmd: &mut Command) -> Output {
        let out = cmd.output().unwrap_or_else(|e| {
            panic!("cannot run {cmd:?}: {e} (these tests need e2fsprogs: mkfs.ext4, dumpe2fs, debugfs, e2fsck)")
        });
        assert!(
            out.status.success(),
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// A directory of files with random content and sizes, a few of them megabytes long
    /// so they span groups; returns it with the files' paths and contents.
    fn populate(dir: &Path, seed: u64, big: usize) -> Vec<(String, Vec<u8>)> {
        let mut rng = Rng::new(seed);
        let mut files = Vec::new();
        for i in 0..big {
            let len = (3 << 20) + rng.index(4 << 20);
            files.push((format!("big{i}"), rng.bytes(len)));
        }
        for i in 0..40 {
            let max = if rng.one_in(4) { 300_000 } else { 5000 };
            let len = rng.index(max);
            files.push((format!("d/sub{}/f{i}", i % 3), rng.bytes(len)));
        }
        for (name, bytes) in &files {
            let p = dir.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        files
    }

    fn mkfs(path: &Path, size: u64, args: &[&str], from: &Path) {
        std::fs::File::create(path).unwrap().set_len(size).unwrap();
        run(tool("mkfs.ext4")
            .args(["-F", "-q"])
            .args(args)
            .arg("-d")
            .arg(from)
            .arg(path));
    }

    /// What dumpe2fs says: the block size; per block, whether it is used (not listed in
    /// any group's "Free blocks"); and the block ranges of the BLOCK_UNINIT groups.
    fn oracle(img: &Path) -> (u64, Vec<bool>, Vec<(usize, usize)>) {
        let out = run(tool("dumpe2fs").arg(img));
        let text = String::from_utf8(out.stdout).unwrap();
        let field = |name: &str| -> u64 {
            let line = text.lines().find(|l| l.starts_with(name)).unwrap();
            line[name.len()..].trim().parse().unwrap()
        };
        let span = |s: &str| -> (usize, usize) {
            let (a, b) = s.split_once('-').unwrap_or((s, s));
            (a.parse().unwrap(), b.parse().unwrap())
        };
        let mut used = vec![true; field("Block count:") as usize];
        let mut uninit = Vec::new();
        for line in text.lines() {
            if let Some(list) = line.strip_prefix("  Free blocks: ") {
                for (a, b) in list.split(", ").filter(|s| !s.is_empty()).map(span) {
                    used[a..=b].fill(false);
                }
            } else if line.starts_with("Group ") && line.contains("BLOCK_UNINIT") {
                let blocks = line.split("(Blocks ").nth(1).unwrap();
                uninit.push(span(&blocks[..blocks.find(')').unwrap()]));
            }
        }
        (field("Block size:"), used, uninit)
    }

    fn used_of(img: &Path) -> UsedBlocks {
        let u = used_ranges(&mut std::fs::File::open(img).unwrap()).unwrap();
        let size = u.block_size * u.blocks_count;
        for w in u.ranges.windows(2) {
            assert!(w[0].1 < w[1].0, "ranges not sorted and merged: {w:?}");
        }
        for &(s, e) in &u.ranges {
            assert!(s < e && e <= size && s % u.block_size == 0 && e % u.block_size == 0);
        }
        u
    }

    /// Every shape: our ranges hold every block dumpe2fs counts as used, and little else;
    /// a copy of only those ranges is a filesystem e2fsck accepts, with the same files.
    #[test]
    fn ext4_used_matches_e2fsprogs_and_copies() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        let files = populate(&src, 7, 3);
        let shapes: &[(&str, &[&str])] = &[
            ("default", &["-b", "4096"]),
            ("1k", &["-b", "1024"]),
            ("no_flex_bg", &["-b", "1024", "-O", "^flex_bg"]),
            (
                "meta_bg",
                &["-b", "1024", "-g", "1024", "-O", "meta_bg,^resize_inode"],
            ),
            (
                "no_64bit",
                &[
                    "-b",
                    "4096",
                    "-g",
                    "1024",
                    "-O",
                    "^64bit,^metadata_csum,uninit_bg",
                ],
            ),
            ("sparse_super2", &["-b", "1024", "-O", "sparse_super2"]),
            ("ext2", &["-t", "ext2", "-b", "1024"]),
        ];
        let mut uninit_seen = 0;
        for (name, args) in shapes {
            let img = tmp.path().join(format!("{name}.img"));
            mkfs(&img, 64 << 20, args, &src);
            // Holes between the remaining files, so the bitmaps are not one long run.
            let doomed = tmp.path().join("rm.cmds");
            let rm: String = (0..40)
                .step_by(2)
                .map(|i| format!("rm /d/sub{}/f{i}\n", i % 3))
                .collect();
            std::fs::write(&doomed, format!("rm /big0\n{rm}")).unwrap();
            run(tool("debugfs").arg("-w").arg("-f").arg(&doomed).arg(&img));
            let (bs, oracle_used, uninit) = oracle(&img);
            uninit_seen += uninit.len();
            let u = used_of(&img);
            assert_eq!(
                (u.block_size, u.blocks_count),
                (bs, oracle_used.len() as u64)
            );
            assert!(!u.needs_recovery, "{name}");
            let mut ours = vec![false; oracle_used.len()];
            for &(s, e) in &u.ranges {
                ours[(s / bs) as usize..(e / bs) as usize].fill(true);
            }
            let missing: Vec<usize> = (0..ours.len())
                .filter(|&b| oracle_used[b] && !ours[b])
                .collect();
            assert!(
                missing.is_empty(),
                "{name}: used blocks left out: {missing:?}"
            );
            // Where we read a bitmap we must agree with it exactly: an extra block there
            // is a misread bitmap. In BLOCK_UNINIT groups there is no bitmap on disk and
            // libext2fs makes one up much as the kernel does, so counting a few more
            // metadata blocks there is allowed (a superset is safe), within 1% of the fs.
            let extra: Vec<usize> = (0..ours.len())
                .filter(|&b| ours[b] && !oracle_used[b])
                .collect();
            let in_uninit = |b: &usize| uninit.iter().any(|&(s, e)| (s..=e).contains(b));
            assert!(
                extra.iter().all(in_uninit) && extra.len() <= ours.len() / 100,
                "{name}: counted as used but free by dumpe2fs: {extra:?}"
            );
            eprintln!(
                "{name}: {} used blocks of {}, in {} ranges, {} more than dumpe2fs, {} BLOCK_UNINIT groups",
                ours.iter().filter(|&&b| b).count(),
                ours.len(),
                u.ranges.len(),
                extra.len(),
                uninit.len()
            );

            let copy = tmp.path().join(format!("{name}.copy"));
            let mut from = std::fs::File::open(&img).unwrap();
            let mut to = std::fs::File::create(&copy).unwrap();
            to.set_len(64 << 20).unwrap();
            for &(s, e) in &u.ranges {
                from.seek(SeekFrom::Start(s)).unwrap();
                to.seek(SeekFrom::Start(s)).unwrap();
                io::copy(&mut (&mut from).take(e - s), &mut to).unwrap();
            }
            drop(to);
            run(tool("e2fsck").arg("-fn").arg(&copy));
            for (path, bytes) in files
                .iter()
                .filter(|(p, _)| p == "big1" || p.ends_with("f7"))
            {
                let out = run(tool("debugfs")
                    .arg("-R")
                    .arg(format!("cat /{path}"))
                    .arg(&copy));
                assert!(out.stdout == *bytes, "{name}: /{path} differs in the copy");
            }
        }
        assert!(
            uninit_seen > 0,
            "no shape had a BLOCK_UNINIT group to check"
        );
    }

    /// A small real filesystem (1 KiB blocks, four groups) in memory.
    fn small_image(tmp: &Path) -> Vec<u8> {
        let src = tmp.join("small");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("a"), vec![7u8; 100_000]).unwrap();
        let img = tmp.join("small.img");
        mkfs(&img, 4 << 20, &["-b", "1024", "-g", "1024"], &src);
        std::fs::read(img).unwrap()
    }

    fn err_with(img: &[u8], at: usize, bytes: &[u8]) -> String {
        let mut img = img.to_vec();
        img[at..at + bytes.len()].copy_from_slice(bytes);
        used_ranges(&mut Cursor::new(img)).unwrap_err().to_string()
    }

    #[test]
    fn ext4_used_crafted_superblocks() {
        let tmp = tempfile::tempdir().unwrap();
        let img = small_image(tmp.path());
        assert!(used_ranges(&mut Cursor::new(&img)).is_ok());
        let sb = 1024;
        let cases: &[(usize, &[u8], &str)] = &[
            (0x38, &[0x53, 0xee], "s_magic 0xee53"),
            (
                0x18,
                &40u32.to_le_bytes(),
                "s_log_block_size 40 is out of range",
            ),
            (0x20, &0u32.to_le_bytes(), "s_blocks_per_group 0"),
            (0x04, &u32::MAX.to_le_bytes(), "s_blocks_count 4294967295"),
            (0x150, &u32::MAX.to_le_bytes(), "s_blocks_count"),
            (0xfe, &3u16.to_le_bytes(), "s_desc_size 3"),
            (0x14, &0u32.to_le_bytes(), "s_first_data_block 0"),
            (0x28, &0u32.to_le_bytes(), "s_inodes_per_group 0"),
            (0x58, &100u16.to_le_bytes(), "s_inode_size 100"),
            (0x104, &9u32.to_le_bytes(), ""), // ignored without meta_bg
            (0x62, &[0x80], "incompat 0x800000"),
            (0x65, &[0x02], "bigalloc"),
        ];
        for &(off, bytes, want) in cases {
            let mut patched = img.clone();
            patched[sb + off..sb + off + bytes.len()].copy_from_slice(bytes);
            let r = used_ranges(&mut Cursor::new(patched));
            if want.is_empty() {
                assert!(r.is_ok(), "{off:#x}: {r:?}");
                continue;
            }
            let msg = r.unwrap_err().to_string();
            assert!(msg.contains(want), "{off:#x}: {msg:?} lacks {want:?}");
            assert!(msg.contains("superblock"), "{msg}");
        }
        // Group descriptor 0 (block 2) pointing its bitmap past the end.
        let msg = err_with(&img, 2048, &u32::MAX.to_le_bytes());
        assert!(
            msg.contains("group descriptor 0") && msg.contains("bg_block_bitmap 4294967295"),
            "{msg}"
        );
        // The same with only the high half (64-byte descriptors) set.
        let msg = err_with(&img, 2048 + 0x20, &1u32.to_le_bytes());
        assert!(msg.contains("bg_block_bitmap 42949"), "{msg}");
        let msg = used_ranges(&mut Cursor::new(&img[..1500]))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("1500 bytes"), "{msg}");
        let mut rec = img.clone();
        rec[sb + 0x60] |= INCOMPAT_RECOVER as u8;
        assert!(used_ranges(&mut Cursor::new(rec)).unwrap().needs_recovery);
    }

    /// A 2^50-byte input of zeros but for a superblock: the group cap, not the input
    /// size, must stop a filesystem of 2^37 tiny groups.
    #[test]
    fn ext4_used_refuses_too_many_groups() {
        struct Huge(u64, [u8; 1024]);
        impl Read for Huge {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(1024);
                for (i, b) in buf[..n].iter_mut().enumerate() {
                    let at = self.0 + i as u64;
                    *b = if (1024..2048).contains(&at) {
                        self.1[at as usize - 1024]
                    } else {
                        0
                    };
                }
                self.0 += n as u64;
                Ok(n)
            }
        }
        impl Seek for Huge {
            fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
                self.0 = match to {
                    SeekFrom::Start(n) => n,
                    SeekFrom::End(d) => (1u64 << 50).saturating_add_signed(d),
                    SeekFrom::Current(d) => self.0.saturating_add_signed(d),
                };
                Ok(self.0)
            }
        }
        let mut sb = [0u8; 1024];
        sb[0x38..0x3a].copy_from_slice(&MAGIC.to_le_bytes());
        sb[0x14] = 1;
        sb[0x20] = 8;
        sb[0x28] = 8;
        sb[0x60] = INCOMPAT_64BIT as u8;
        sb[0xfe] = 64;
        sb[0x150] = 1 << 7; // 2^39 blocks
        let msg = used_ranges(&mut Huge(0, sb)).unwrap_err().to_string();
        assert!(msg.contains("block groups are too many"), "{msg}");
    }

    /// Reads `head` over the start of `base`: a mutated front without copying the image.
    struct Overlay<'a> {
        head: &'a [u8],
        base: &'a [u8],
        pos: u64,
    }

    impl Read for Overlay<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let pos = usize::try_from(self.pos).unwrap_or(usize::MAX);
            let src = if pos < self.head.len() {
                &self.head[pos..]
            } else {
                self.base.get(pos..).unwrap_or(&[])
            };
            let n = buf.len().min(src.len());
            buf[..n].copy_from_slice(&src[..n]);
            self.pos += n as u64;
            Ok(n)
        }
    }

    impl Seek for Overlay<'_> {
        fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
            self.pos = match to {
                SeekFrom::Start(n) => n,
                SeekFrom::End(d) => (self.base.len() as u64).saturating_add_signed(d),
                SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
            };
            Ok(self.pos)
        }
    }

    /// Any first 8 KiB (superblock, descriptors, reserved descriptor blocks) over a
    /// real filesystem: never a panic, and accepted answers stay inside the input.
    #[test]
    fn fuzz_ext4_used() {
        let tmp = tempfile::tempdir().unwrap();
        let img = small_image(tmp.path());
        let report = Fuzz::new("fuzz_ext4_used").run(
            |m, _| {
                let mut head = m
                    .hot(&[1024..1024 + 0x160, 2048..2048 + 256])
                    .mutate(&img[..8192]);
                head.resize(8192, 0);
                head
            },
            |head| {
                let mut r = Overlay {
                    head,
                    base: &img,
                    pos: 0,
                };
                let Ok(u) = used_ranges(&mut r) else {
                    return false;
                };
                let size = u.block_size * u.blocks_count;
                assert!(size <= img.len() as u64);
                assert!(u.ranges.windows(2).all(|w| w[0].1 < w[1].0));
                assert!(u.ranges.iter().all(|&(s, e)| s < e && e <= size));
                true
            },
        );
        assert!(report.accepted > 100, "{report:?}");
    }
}
