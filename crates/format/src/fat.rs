//! Reading a FAT filesystem (the ESP) without mounting it: usage and the files it holds.
//!
//! The volume may be hostile (an image downloaded from anywhere, an old USB stick), so
//! this is a small reader of its own rather than a general FAT library: every field of
//! the boot sector is checked before any arithmetic uses it, every cluster number is
//! checked against the volume, cluster chains end after at most as many links as the
//! volume has clusters, each directory is read once, and the files, nesting and bytes
//! read are capped. Damaged or crafted volumes give an error, never a panic or a hang.

use crate::slice::Slice;
use std::collections::BTreeSet;
use std::io::{self, Read, Seek, SeekFrom};

/// Most files listed from one filesystem: far more than any ESP holds, few enough that
/// a hostile one cannot fill memory with names.
pub const MAX_FILES: usize = 100_000;
/// Deepest directory nesting walked.
pub const MAX_DEPTH: usize = 32;
/// Largest `grub.cfg` whose text is read.
const MAX_GRUB_CFG: u64 = 1 << 20;
/// Largest FAT read into memory: 16 million FAT32 clusters, a 64 GiB ESP of 4 KiB
/// clusters. Larger ones are refused rather than read.
const MAX_FAT_BYTES: u64 = 64 << 20;
/// Most directory bytes read in all: 2 MiB is the largest directory FAT allows
/// (65536 entries), and an ESP has a few dozen small ones.
const MAX_DIR_BYTES: u64 = 64 << 20;
/// Largest directory, in entries (the FAT specification's limit).
const MAX_DIR_ENTRIES: u64 = 65_536;

/// A FAT volume id as blkid, the kernel's by-uuid names and GRUB spell it: `78D0-DCFD`.
pub fn volume_id_text(id: u32) -> String {
    format!("{:04X}-{:04X}", id >> 16, id & 0xffff)
}

/// Where a FAT volume keeps its volume id: byte offsets inside the volume of the id in
/// the boot sector and, for FAT32, in the backup boot sector (both must change together,
/// or fsck.fat reports that they differ).
pub fn volume_id_offsets(boot_sector: &[u8], len: u64) -> io::Result<Vec<u64>> {
    let g = Geometry::parse(boot_sector, len)?;
    if g.kind != Kind::Fat32 {
        return Ok(vec![39]);
    }
    let mut at = vec![67];
    // BPB_BkBootSec: 0 or 0xFFFF when there is no backup; it lies in the reserved area.
    let backup = le16(boot_sector, 50);
    let bps = le16(boot_sector, 11);
    let reserved = le16(boot_sector, 14);
    if backup != 0 && backup != 0xFFFF {
        if backup >= reserved {
            return Err(invalid(format!(
                "not a FAT filesystem: backup boot sector {backup} outside the {reserved} reserved sectors"
            )));
        }
        at.push(u64::from(backup) * u64::from(bps) + 67);
    }
    Ok(at)
}

/// The volume id a boot sector holds (after [`volume_id_offsets`] accepted it).
pub fn volume_id(boot_sector: &[u8], len: u64) -> io::Result<u32> {
    let at = volume_id_offsets(boot_sector, len)?[0] as usize;
    Ok(le32(boot_sector, at))
}

/// A file found on a FAT filesystem.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FatFile {
    /// Absolute path with `/` separators, as stored (long names preferred).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// What a FAT filesystem holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FatContents {
    /// Bytes in allocated clusters.
    pub used_bytes: u64,
    /// Every regular file, sorted by path.
    pub files: Vec<FatFile>,
    /// Contents of the GRUB configuration files found (`grub.cfg` anywhere, up to 1 MiB).
    pub grub_cfgs: Vec<(String, String)>,
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn le16(b: &[u8], o: usize) -> u32 {
    u32::from(u16::from_le_bytes([b[o], b[o + 1]]))
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fat12,
    Fat16,
    Fat32,
}

/// Where everything is, from a boot sector whose every field was checked.
#[derive(Debug)]
struct Geometry {
    kind: Kind,
    cluster_bytes: u64,
    /// Byte offset of the first FAT.
    fat_at: u64,
    fat_bytes: u64,
    /// FAT12/16: the fixed root directory region (offset, bytes); FAT32: unused.
    root_region: (u64, u64),
    /// FAT32: the root directory's first cluster.
    root_cluster: u32,
    /// Byte offset of cluster 2.
    data_at: u64,
    /// Data clusters: valid cluster numbers are 2 to `clusters + 1`.
    clusters: u32,
}

impl Geometry {
    /// Reads the boot sector (BIOS parameter block) of a volume of `len` bytes.
    fn parse(b: &[u8], len: u64) -> io::Result<Geometry> {
        let bad = |what: &str| invalid(format!("not a FAT filesystem: {what}"));
        if b.len() < 512 || b[510] != 0x55 || b[511] != 0xAA {
            return Err(bad("no boot sector signature"));
        }
        let bps = le16(b, 11);
        if !matches!(bps, 512 | 1024 | 2048 | 4096) {
            return Err(bad(&format!("{bps} bytes per sector")));
        }
        let spc = u32::from(b[13]);
        if !spc.is_power_of_two() || spc > 128 {
            return Err(bad(&format!("{spc} sectors per cluster")));
        }
        let reserved = le16(b, 14);
        let fats = u32::from(b[16]);
        let root_entries = le16(b, 17);
        let total = match le16(b, 19) {
            0 => le32(b, 32),
            n => n,
        };
        let fat_sectors = match le16(b, 22) {
            0 => le32(b, 36),
            n => n,
        };
        if reserved == 0 || fats == 0 || fat_sectors == 0 || total == 0 {
            return Err(bad("a zero reserved, FAT or sector count"));
        }
        // All in u64 from numbers of at most 32 bits times at most 4096: no overflow.
        let (bps, spc) = (u64::from(bps), u64::from(spc));
        let root_sectors = (u64::from(root_entries) * 32).div_ceil(bps);
        let fat_total = u64::from(fats) * u64::from(fat_sectors);
        let first_data = u64::from(reserved) + fat_total + root_sectors;
        let total = u64::from(total);
        let data_sectors = total
            .checked_sub(first_data)
            .filter(|&d| d >= spc)
            .ok_or_else(|| bad("no room for data after the FATs"))?;
        if total * bps > len {
            return Err(bad(&format!(
                "{} bytes claimed in a {len}-byte partition",
                total * bps
            )));
        }
        let clusters = data_sectors / spc;
        // The type follows from the cluster count alone (Microsoft's FAT specification).
        let kind = match clusters {
            0..4085 => Kind::Fat12,
            4085..65525 => Kind::Fat16,
            _ => Kind::Fat32,
        };
        if (kind == Kind::Fat32) != (root_entries == 0) {
            return Err(bad("root directory entries do not match the FAT type"));
        }
        // FAT32 cluster numbers have 28 bits, some of them reserved.
        let clusters = u32::try_from(clusters)
            .ok()
            .filter(|&c| c <= 0x0FFF_FFF4)
            .ok_or_else(|| bad(&format!("{clusters} clusters")))?;
        let fat_bytes = u64::from(fat_sectors) * bps;
        let needed = match kind {
            Kind::Fat12 => (u64::from(clusters) + 2) * 3 / 2 + 1,
            Kind::Fat16 => (u64::from(clusters) + 2) * 2,
            Kind::Fat32 => (u64::from(clusters) + 2) * 4,
        };
        if fat_bytes < needed {
            return Err(bad(&format!(
                "a {fat_bytes}-byte FAT for {clusters} clusters"
            )));
        }
        let root_cluster = if kind == Kind::Fat32 { le32(b, 44) } else { 0 };
        let g = Geometry {
            kind,
            cluster_bytes: spc * bps,
            fat_at: u64::from(reserved) * bps,
            fat_bytes: needed,
            root_region: ((u64::from(reserved) + fat_total) * bps, root_sectors * bps),
            root_cluster,
            data_at: first_data * bps,
            clusters,
        };
        if kind == Kind::Fat32 && !g.valid(root_cluster) {
            return Err(bad(&format!("root directory at cluster {root_cluster}")));
        }
        Ok(g)
    }

    fn valid(&self, cluster: u32) -> bool {
        cluster >= 2 && cluster - 2 < self.clusters
    }

    /// Byte offset of a valid cluster.
    fn cluster_at(&self, cluster: u32) -> u64 {
        self.data_at + u64::from(cluster - 2) * self.cluster_bytes
    }
}

/// The FAT, read once, and the volume it describes.
struct Volume<R> {
    disk: R,
    g: Geometry,
    fat: Vec<u8>,
    dir_bytes_left: u64,
}

/// What follows a cluster in its chain.
enum Link {
    Next(u32),
    End,
}

impl<R: Read + Seek> Volume<R> {
    fn read_at(&mut self, off: u64, buf: &mut [u8]) -> io::Result<()> {
        self.disk.seek(SeekFrom::Start(off))?;
        self.disk.read_exact(buf)
    }

    /// The FAT entry of a valid cluster (which the FAT was checked to hold).
    fn entry(&self, c: u32) -> u32 {
        let c = c as usize;
        match self.g.kind {
            Kind::Fat12 => {
                let v = le16(&self.fat, c + c / 2);
                if c.is_multiple_of(2) {
                    v & 0xFFF
                } else {
                    v >> 4
                }
            }
            Kind::Fat16 => le16(&self.fat, 2 * c),
            Kind::Fat32 => le32(&self.fat, 4 * c) & 0x0FFF_FFFF,
        }
    }

    fn link(&self, c: u32) -> io::Result<Link> {
        let v = self.entry(c);
        let end = match self.g.kind {
            Kind::Fat12 => 0xFF8,
            Kind::Fat16 => 0xFFF8,
            Kind::Fat32 => 0x0FFF_FFF8,
        };
        if v >= end {
            Ok(Link::End)
        } else if self.g.valid(v) {
            Ok(Link::Next(v))
        } else {
            Err(invalid(format!(
                "cluster {c} links to {v:#x}: free, bad or outside the volume"
            )))
        }
    }

    /// The clusters of the chain starting at `first`, at most `max` of them (the
    /// callers' chains are short: a directory or a small file). A chain that comes back
    /// to a cluster it holds loops, and is an error rather than the same bytes again.
    fn chain(&self, first: u32, max: u64) -> io::Result<Vec<u32>> {
        if !self.g.valid(first) {
            return Err(invalid(format!("a chain starts at cluster {first:#x}")));
        }
        let mut out = vec![first];
        let mut seen = BTreeSet::from([first]);
        let mut c = first;
        while (out.len() as u64) < max {
            match self.link(c)? {
                Link::End => return Ok(out),
                Link::Next(n) => {
                    if !seen.insert(n) {
                        return Err(invalid(format!("the chain from cluster {first} loops")));
                    }
                    out.push(n);
                    c = n;
                }
            }
        }
        Ok(out)
    }

    /// The raw bytes of a directory: the root region, or its cluster chain.
    fn dir_bytes(&mut self, first: Option<u32>) -> io::Result<Vec<u8>> {
        let max_bytes = MAX_DIR_ENTRIES * 32;
        let mut buf = match first {
            None => {
                let (at, len) = self.g.root_region;
                let len = len.min(max_bytes);
                self.charge(len)?;
                let mut b = vec![0u8; len as usize];
                self.read_at(at, &mut b)?;
                b
            }
            Some(first) => {
                let chain = self.chain(first, max_bytes.div_ceil(self.g.cluster_bytes))?;
                let mut b = Vec::new();
                for c in chain {
                    self.charge(self.g.cluster_bytes)?;
                    let at = b.len();
                    b.resize(at + self.g.cluster_bytes as usize, 0);
                    let off = self.g.cluster_at(c);
                    self.read_at(off, &mut b[at..])?;
                }
                b
            }
        };
        buf.truncate(max_bytes as usize);
        Ok(buf)
    }

    fn charge(&mut self, n: u64) -> io::Result<()> {
        self.dir_bytes_left = self.dir_bytes_left.checked_sub(n).ok_or_else(|| {
            invalid(format!(
                "more than {MAX_DIR_BYTES} bytes of directories: cross-linked directories"
            ))
        })?;
        Ok(())
    }

    /// The first `size` bytes of the file starting at `first`.
    fn file(&mut self, first: u32, size: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        if size == 0 {
            return Ok(out);
        }
        let need = size.div_ceil(self.g.cluster_bytes);
        let chain = self.chain(first, need)?;
        if (chain.len() as u64) < need {
            return Err(invalid(format!(
                "a {size}-byte file has a chain of {} clusters",
                chain.len()
            )));
        }
        for c in chain {
            let n = (size - out.len() as u64).min(self.g.cluster_bytes) as usize;
            let at = out.len();
            out.resize(at + n, 0);
            let off = self.g.cluster_at(c);
            self.read_at(off, &mut out[at..])?;
        }
        Ok(out)
    }

    fn used_bytes(&self) -> u64 {
        let used = (2..self.g.clusters + 2)
            .filter(|&c| self.entry(c) != 0)
            .count() as u64;
        used * self.g.cluster_bytes
    }
}

/// One entry of a directory, long name resolved.
struct Entry {
    name: String,
    dir: bool,
    first: u32,
    size: u32,
}

/// The 8.3 name of a short entry, lower-cased where Windows NT's case bits say so.
fn short_name(e: &[u8]) -> String {
    let decode = |b: &[u8], lower: bool| -> String {
        let mut b = b.to_vec();
        // 0x05 stands for a first byte 0xE5, which marks deleted entries.
        if b.first() == Some(&0x05) {
            b[0] = 0xE5;
        }
        let end = b.iter().rposition(|&c| c != b' ').map_or(0, |i| i + 1);
        b[..end]
            .iter()
            .map(|&c| match c {
                0x20..=0x7e if lower => (c as char).to_ascii_lowercase(),
                0x20..=0x7e => c as char,
                // Code-page characters: which page is unknown, so none is guessed.
                _ => char::REPLACEMENT_CHARACTER,
            })
            .collect()
    };
    let base = decode(&e[0..8], e[12] & 0x08 != 0);
    let ext = decode(&e[8..11], e[12] & 0x10 != 0);
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

fn short_checksum(e: &[u8]) -> u8 {
    e[..11]
        .iter()
        .fold(0u8, |s, &c| s.rotate_right(1).wrapping_add(c))
}

/// The entries of a directory's raw bytes. Long names are used when their pieces are
/// complete, in order and match their short entry's checksum; otherwise the short
/// name is.
fn entries(raw: &[u8], fat32: bool) -> Vec<Entry> {
    let mut out = Vec::new();
    // The long name being collected, last piece first: (checksum of its short entry,
    // order of the piece expected next, 0 when complete; the pieces).
    let mut long: Option<(u8, u8, Vec<[u16; 13]>)> = None;
    for e in raw.chunks_exact(32) {
        match e[0] {
            0 => break,
            0xE5 => {
                long = None;
                continue;
            }
            _ => {}
        }
        let attr = e[11];
        if attr & 0x3F == 0x0F {
            let order = e[0] & 0x1F;
            let units: [u16; 13] = std::array::from_fn(|i| {
                let o = [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30][i];
                u16::from_le_bytes([e[o], e[o + 1]])
            });
            long = match long.take() {
                _ if e[0] & 0x40 != 0 && (1..=20).contains(&order) => {
                    Some((e[13], order - 1, vec![units]))
                }
                Some((sum, next, mut pieces)) if next > 0 && order == next && sum == e[13] => {
                    pieces.push(units);
                    Some((sum, next - 1, pieces))
                }
                _ => None,
            };
            continue;
        }
        let pieces = long.take();
        if attr & 0x08 != 0 {
            continue; // the volume label
        }
        let name = match pieces {
            Some((sum, 0, pieces)) if sum == short_checksum(e) => {
                let units: Vec<u16> = pieces
                    .iter()
                    .rev()
                    .flatten()
                    .copied()
                    .take_while(|&u| u != 0)
                    .collect();
                String::from_utf16_lossy(&units)
            }
            _ => short_name(e),
        };
        if name == "." || name == ".." || name.is_empty() {
            continue;
        }
        let hi = if fat32 { le16(e, 20) << 16 } else { 0 };
        out.push(Entry {
            name,
            dir: attr & 0x10 != 0,
            first: hi | le16(e, 26),
            size: le32(e, 28),
        });
    }
    out
}

/// Reads the boot sector and the FAT of the volume in `[offset, offset + len)`.
fn open_volume<R: Read + Seek>(disk: R, offset: u64, len: u64) -> io::Result<Volume<Slice<R>>> {
    let mut disk = Slice::new(disk, offset, len);
    let mut boot = [0u8; 512];
    disk.read_exact(&mut boot)?;
    let g = Geometry::parse(&boot, len)?;
    if g.fat_bytes > MAX_FAT_BYTES {
        return Err(invalid(format!(
            "a {}-byte FAT: larger than the {MAX_FAT_BYTES} bytes read",
            g.fat_bytes
        )));
    }
    let mut fat = vec![0u8; g.fat_bytes as usize];
    disk.seek(SeekFrom::Start(g.fat_at))?;
    disk.read_exact(&mut fat)?;
    Ok(Volume {
        disk,
        g,
        fat,
        dir_bytes_left: MAX_DIR_BYTES,
    })
}

/// `(offset, length)` of some bytes on a disk.
pub type ByteRange = (u64, u64);

/// Where the bytes of the file at `path` (`/`-separated, names compared without regard
/// to case) lie in `disk`: byte ranges relative to the start of `disk` (not of the
/// volume), in file order, and the file's size; `None` when there is no such file.
/// For rewriting a small file in place (GRUB's environment block does the same).
pub fn file_ranges<R: Read + Seek>(
    disk: R,
    offset: u64,
    len: u64,
    path: &str,
) -> io::Result<Option<(Vec<ByteRange>, u64)>> {
    let mut v = open_volume(disk, offset, len)?;
    let fat32 = v.g.kind == Kind::Fat32;
    let mut dir = fat32.then_some(v.g.root_cluster);
    let names: Vec<&str> = path.split('/').filter(|n| !n.is_empty()).collect();
    for (i, name) in names.iter().enumerate() {
        let raw = v.dir_bytes(dir)?;
        let Some(e) = entries(&raw, fat32)
            .into_iter()
            .find(|e| e.name.eq_ignore_ascii_case(name))
        else {
            return Ok(None);
        };
        let last = i + 1 == names.len();
        if e.dir == last {
            return Ok(None);
        }
        if !last {
            dir = Some(e.first);
            continue;
        }
        let size = u64::from(e.size);
        if size == 0 {
            return Ok(Some((Vec::new(), 0)));
        }
        let need = size.div_ceil(v.g.cluster_bytes);
        let chain = v.chain(e.first, need)?;
        if (chain.len() as u64) < need {
            return Err(invalid(format!(
                "{path}: a {size}-byte file has a chain of {} clusters",
                chain.len()
            )));
        }
        let mut left = size;
        let ranges = chain
            .iter()
            .map(|&c| {
                let n = left.min(v.g.cluster_bytes);
                left -= n;
                (offset + v.g.cluster_at(c), n)
            })
            .collect();
        return Ok(Some((ranges, size)));
    }
    Ok(None)
}

/// Lists every file of the FAT filesystem in `[offset, offset + len)` of `disk`.
pub fn read_contents<R: Read + Seek>(disk: R, offset: u64, len: u64) -> io::Result<FatContents> {
    let mut v = open_volume(disk, offset, len)?;
    let fat32 = v.g.kind == Kind::Fat32;
    let root = fat32.then_some(v.g.root_cluster);
    let mut files = Vec::new();
    let mut grub_cfgs = Vec::new();
    // Each directory is read once: one listed twice (or inside itself) is an error.
    let mut seen = BTreeSet::new();
    let mut stack = vec![(String::new(), 0usize, root)];
    while let Some((prefix, depth, first)) = stack.pop() {
        if let Some(c) = first {
            if !seen.insert(c) {
                return Err(invalid(format!(
                    "{prefix}: a directory that is already listed elsewhere (cluster {c})"
                )));
            }
        }
        let raw = v.dir_bytes(first)?;
        for e in entries(&raw, fat32) {
            let path = format!("{prefix}/{}", e.name);
            if e.dir {
                if depth >= MAX_DEPTH {
                    return Err(invalid(format!(
                        "{path}: directories nested deeper than {MAX_DEPTH}"
                    )));
                }
                stack.push((path, depth + 1, Some(e.first)));
                continue;
            }
            if files.len() >= MAX_FILES {
                return Err(invalid(format!("more than {MAX_FILES} files")));
            }
            let size = u64::from(e.size);
            if e.name.eq_ignore_ascii_case("grub.cfg") && size <= MAX_GRUB_CFG {
                let text = v.file(e.first, size)?;
                grub_cfgs.push((path.clone(), String::from_utf8_lossy(&text).into_owned()));
            }
            files.push(FatFile { path, size });
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(FatContents {
        used_bytes: v.used_bytes(),
        files,
        grub_cfgs,
    })
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::testing::{Fuzz, Rng};
    use std::io::{Cursor, SeekFrom, Write};

    /// A FAT filesystem of `sectors` 512-byte sectors made by fatfs, holding a random
    /// tree (nested directories, long and short names, a grub.cfg); returns the image
    /// and the files as `read_contents` should list them.
    fn random_fs(rng: &mut Rng, sectors: u32, fat: fatfs::FatType) -> (Vec<u8>, Vec<FatFile>) {
        let mut disk = Cursor::new(vec![0u8; sectors as usize * 512]);
        fatfs::format_volume(
            &mut disk,
            fatfs::FormatVolumeOptions::new()
                .fat_type(fat)
                .bytes_per_cluster(match fat {
                    fatfs::FatType::Fat12 => 512 << rng.below(3),
                    _ => 512,
                })
                .volume_label(*b"ESP        "),
        )
        .unwrap();
        let mut files = Vec::new();
        {
            let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).unwrap();
            let mut dirs = vec![String::new()];
            for i in 0..rng.below(12) {
                let parent = rng.pick(&dirs).clone();
                let name = match rng.below(4) {
                    0 => format!("GRUB{i}.CFG"),
                    1 => format!("a long name with spaces {i}.txt"),
                    2 => format!("d{i}"),
                    _ => format!("F{i}"),
                };
                let path = format!("{parent}/{name}");
                if name.starts_with('d') {
                    fs.root_dir().create_dir(&path[1..]).unwrap();
                    dirs.push(path);
                    continue;
                }
                let data = if rng.one_in(3) {
                    b"menuentry 'x' { linux /vmlinuz }\n".repeat(1 + rng.index(40))
                } else {
                    let n = rng.index(3000);
                    rng.bytes(n)
                };
                let mut f = fs.root_dir().create_file(&path[1..]).unwrap();
                f.write_all(&data).unwrap();
                files.push(FatFile {
                    path,
                    size: data.len() as u64,
                });
            }
            if rng.one_in(2) {
                let mut f = fs.root_dir().create_file("grub.cfg").unwrap();
                f.write_all(b"set timeout=0\nmenuentry 'a' {\n}\n").unwrap();
                files.push(FatFile {
                    path: "/grub.cfg".into(),
                    size: 32,
                });
            }
        }
        files.sort_by(|a, b| a.path.cmp(&b.path));
        (disk.into_inner(), files)
    }

    /// What the builder makes (mkfs.vfat FAT32, filled by mcopy with lower-case, long
    /// and nested names) is listed exactly, with its grub.cfg text and the used bytes
    /// fsck.fat counts.
    /// The volume id changed in place (boot sector and FAT32 backup) is what blkid reads,
    /// and fsck.fat finds nothing to fix (it compares the two boot sectors).
    #[test]
    fn volume_id_changed_in_place_satisfies_blkid_and_fsck_fat() {
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        for (fat, size) in [("32", 40u64 << 20), ("16", 20 << 20)] {
            let img = dir.path().join(format!("fat{fat}.img"));
            std::fs::File::create(&img).unwrap().set_len(size).unwrap();
            let run = |c: &mut Command| {
                let out = c
                    .env("LC_ALL", "C")
                    .output()
                    .unwrap_or_else(|e| panic!("{c:?}: {e}"));
                assert!(out.status.success(), "{c:?}: {out:?}");
                String::from_utf8_lossy(&out.stdout).trim().to_string()
            };
            run(Command::new("mkfs.vfat")
                .args(["-F", fat, "-i", "1234ABCD"])
                .arg(&img));
            let mut bytes = std::fs::read(&img).unwrap();
            assert_eq!(volume_id(&bytes[..512], size).unwrap(), 0x1234_ABCD);
            let at = volume_id_offsets(&bytes[..512], size).unwrap();
            assert_eq!(at.len(), if fat == "32" { 2 } else { 1 }, "FAT{fat}");
            for o in at {
                bytes[o as usize..o as usize + 4].copy_from_slice(&0xC0FF_EE42u32.to_le_bytes());
            }
            std::fs::write(&img, &bytes).unwrap();
            let id = run(Command::new("blkid")
                .args(["-p", "-o", "value", "-s", "UUID"])
                .arg(&img));
            assert_eq!(id, volume_id_text(0xC0FF_EE42), "FAT{fat}");
            run(Command::new("fsck.fat").arg("-n").arg(&img));
            assert_eq!(volume_id(&bytes[..512], size).unwrap(), 0xC0FF_EE42);
        }
        // Not FAT, or a backup boot sector outside the reserved area: an error.
        assert!(volume_id_offsets(&[0u8; 512], 1 << 20).is_err());
    }

    #[test]
    fn reads_what_mkfs_vfat_and_mcopy_write() {
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("esp.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(40 << 20)
            .unwrap();
        let ok = |c: &mut Command| {
            let out = c
                .env("LC_ALL", "C")
                .output()
                .unwrap_or_else(|e| panic!("{c:?}: {e}"));
            assert!(out.status.success(), "{c:?}: {out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        ok(Command::new("mkfs.vfat")
            .args(["-F", "32", "-n", "ESP"])
            .arg(&img));
        let src = dir.path().join("EFI");
        std::fs::create_dir_all(src.join("BOOT/deeper/a long directory name")).unwrap();
        std::fs::write(src.join("BOOT/BOOTX64.EFI"), vec![7u8; 70_000]).unwrap();
        std::fs::write(src.join("BOOT/grub.cfg"), "set timeout=3\n").unwrap();
        std::fs::write(src.join("BOOT/deeper/Mixed Case Name.conf"), "x").unwrap();
        std::fs::write(src.join("BOOT/deeper/a long directory name/e"), "").unwrap();
        ok(Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-s", "-Q", "-i"])
            .arg(&img)
            .arg(&src)
            .arg("::/"));
        // Where a file's bytes are, for rewriting it in place: read through the ranges,
        // they are the file (found whatever the case of the path).
        let bytes = std::fs::read(&img).unwrap();
        let at = |p: &str| file_ranges(std::fs::File::open(&img).unwrap(), 0, 40 << 20, p).unwrap();
        for (path, want) in [
            ("/efi/boot/GRUB.CFG", b"set timeout=3\n".to_vec()),
            ("/EFI/BOOT/BOOTX64.EFI", vec![7u8; 70_000]),
        ] {
            let (ranges, size) = at(path).unwrap();
            assert_eq!(size, want.len() as u64);
            let got: Vec<u8> = ranges
                .iter()
                .flat_map(|&(o, n)| bytes[o as usize..(o + n) as usize].to_vec())
                .collect();
            assert_eq!(got, want, "{path}");
        }
        assert_eq!(at("/EFI/BOOT/missing"), None);
        assert_eq!(at("/EFI/BOOT"), None, "a directory is not a file");
        assert_eq!(at("/EFI/BOOT/grub.cfg/x"), None);
        let c = read_contents(std::fs::File::open(&img).unwrap(), 0, 40 << 20).unwrap();
        let files: Vec<(&str, u64)> = c.files.iter().map(|f| (f.path.as_str(), f.size)).collect();
        assert_eq!(
            files,
            [
                ("/EFI/BOOT/BOOTX64.EFI", 70_000),
                ("/EFI/BOOT/deeper/Mixed Case Name.conf", 1),
                ("/EFI/BOOT/deeper/a long directory name/e", 0),
                ("/EFI/BOOT/grub.cfg", 14),
            ]
        );
        assert_eq!(
            c.grub_cfgs,
            [(
                "/EFI/BOOT/grub.cfg".to_string(),
                "set timeout=3\n".to_string()
            )]
        );
        // fsck.fat -v ends with "esp.img: 9 files, 141/80628 clusters" (in use, the
        // root directory's included).
        let report = ok(Command::new("fsck.fat").arg("-nv").arg(&img));
        let line = report.lines().find(|l| l.contains(" files, ")).unwrap();
        let used: u64 = line
            .rsplit(' ')
            .nth(1)
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let cluster: u64 = report
            .lines()
            .find_map(|l| l.trim().strip_suffix(" bytes per cluster"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(c.used_bytes, used * cluster, "{report}");
    }

    /// Property: every tree fatfs writes (FAT12, FAT16) is listed exactly, and the used
    /// bytes are what fatfs counts.
    #[test]
    fn fuzz_fat_round_trip() {
        // Each case formats and fills a filesystem: a fifth of the usual count.
        Fuzz::new("fuzz_fat_round_trip").cost(5).run(
            |m, _| m.rng.bytes(8),
            |seed| {
                let mut rng = Rng::new(u64::from_le_bytes(seed.try_into().unwrap()));
                let (sectors, fat) = if rng.one_in(2) {
                    (400, fatfs::FatType::Fat12)
                } else {
                    (4200, fatfs::FatType::Fat16)
                };
                let (img, want) = random_fs(&mut rng, sectors, fat);
                let len = img.len() as u64;
                let c = read_contents(Cursor::new(&img), 0, len).unwrap();
                assert_eq!(c.files, want);
                let fs = fatfs::FileSystem::new(Cursor::new(img), fatfs::FsOptions::new()).unwrap();
                let st = fs.stats().unwrap();
                let used = u64::from(st.total_clusters() - st.free_clusters());
                assert_eq!(c.used_bytes, used * u64::from(st.cluster_size()));
                let cfgs = want.iter().filter(|f| f.path.ends_with("grub.cfg")).count();
                assert_eq!(c.grub_cfgs.len(), cfgs);
                assert!(c.used_bytes <= len);
                true
            },
        );
    }

    /// A FAT16 volume whose root holds the directory `d` (with a file in it), its
    /// geometry, and where the directory's entry in the root is.
    fn with_a_directory() -> (Vec<u8>, Geometry, usize) {
        let mut disk = Cursor::new(vec![0u8; 4200 * 512]);
        fatfs::format_volume(
            &mut disk,
            fatfs::FormatVolumeOptions::new()
                .fat_type(fatfs::FatType::Fat16)
                .bytes_per_cluster(512),
        )
        .unwrap();
        {
            let fs = fatfs::FileSystem::new(&mut disk, fatfs::FsOptions::new()).unwrap();
            fs.root_dir().create_dir("d").unwrap();
            fs.root_dir()
                .create_file("d/f")
                .unwrap()
                .write_all(b"x")
                .unwrap();
        }
        let img = disk.into_inner();
        let g = Geometry::parse(&img[..512], img.len() as u64).unwrap();
        assert_eq!(g.kind, Kind::Fat16);
        let root = g.root_region.0 as usize;
        let entry = (0..16)
            .map(|i| root + 32 * i)
            .find(|&e| img[e] == b'D' && img[e + 11] == 0x10)
            .unwrap();
        (img, g, entry)
    }

    /// What fatfs, which this reader replaced, did with hostile volumes: a
    /// subdirectory at cluster 0 (fatfs's root: the root inside itself) was walked
    /// without end and a cluster number of 1 panicked (`fuzz_fat_read` cases 42 and
    /// 1034); a directory whose chain loops and never reaches an end-of-directory entry
    /// loops in its code, as does a directory that contains itself. All are errors
    /// now, returned at once.
    #[test]
    fn loops_and_bad_clusters_are_errors() {
        let (base, g, entry) = with_a_directory();
        let cluster = u16::from_le_bytes([base[entry + 26], base[entry + 27]]);
        let fat_entry = g.fat_at as usize + 2 * cluster as usize;
        let dir_at = g.cluster_at(u32::from(cluster)) as usize;
        let read = |img: &[u8]| read_contents(Cursor::new(img), 0, img.len() as u64);
        assert_eq!(read(&base).unwrap().files.len(), 1);

        let mut looped = base.clone();
        looped[fat_entry..fat_entry + 2].copy_from_slice(&cluster.to_le_bytes());
        for e in (dir_at..dir_at + g.cluster_bytes as usize).step_by(32) {
            if looped[e] == 0 {
                looped[e] = 0xE5; // deleted: no end-of-directory entry anywhere
            }
        }
        let t = std::time::Instant::now();
        let e = read(&looped).unwrap_err().to_string();
        assert!(t.elapsed().as_secs() < 2, "took {:?}", t.elapsed());
        assert!(e.contains("loops"), "{e}");

        for cluster in [0u16, 1, 0xFFF7, 0xFFFF] {
            let mut bad = base.clone();
            bad[entry + 26..entry + 28].copy_from_slice(&cluster.to_le_bytes());
            let e = read(&bad).unwrap_err().to_string();
            assert!(
                e.contains(&format!("starts at cluster {cluster:#x}")),
                "{e}"
            );
        }

        let mut inside = base.clone();
        let sub = dir_at + 64; // after "." and "..": the file, made a directory that is d
        inside[sub + 11] = 0x10;
        inside[sub + 26..sub + 28].copy_from_slice(&cluster.to_le_bytes());
        let e = read(&inside).unwrap_err().to_string();
        assert!(e.contains("already listed"), "{e}");
    }

    /// `fuzz_fat_read` case 1034: a FAT32 root directory at cluster 1 made fatfs panic.
    #[test]
    fn fat32_root_outside_the_data_area_is_an_error() {
        let mut img = random_fs(&mut Rng::new(1), 70_000, fatfs::FatType::Fat32).0;
        let len = img.len() as u64;
        assert!(read_contents(Cursor::new(&img), 0, len).is_ok());
        for root in [0u32, 1, 0x0FFF_FFFF] {
            img[44..48].copy_from_slice(&root.to_le_bytes());
            let e = read_contents(Cursor::new(&img), 0, len).unwrap_err();
            assert!(e.to_string().contains("root directory at cluster"), "{e}");
        }
    }

    /// `head` over `base`: a large image whose first bytes were mutated, without copying
    /// all of it for every case.
    struct Overlay<'a> {
        head: &'a [u8],
        base: &'a [u8],
        len: u64,
        pos: u64,
    }

    impl Read for Overlay<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.pos >= self.len {
                return Ok(0);
            }
            let p = self.pos as usize;
            let src = if p < self.head.len() {
                &self.head[p..]
            } else {
                &self.base[p..self.len as usize]
            };
            let n = src.len().min(buf.len()).min((self.len - self.pos) as usize);
            buf[..n].copy_from_slice(&src[..n]);
            self.pos += n as u64;
            Ok(n)
        }
    }

    impl Seek for Overlay<'_> {
        fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
            self.pos = match to {
                SeekFrom::Start(p) => p,
                SeekFrom::End(d) => self.len.saturating_add_signed(d),
                SeekFrom::Current(d) => self.pos.saturating_add_signed(d),
            };
            Ok(self.pos)
        }
    }

    /// Mutated FAT12, FAT16 and FAT32 filesystems (boot sector, FSInfo, FATs, directory
    /// entries, cut short) are read without a panic, in bounded time, with bounded
    /// results: cyclic cluster chains and directories that contain themselves end.
    #[test]
    fn fuzz_fat_read() {
        let mut rng = Rng::new(0xfa7);
        let bases = [
            random_fs(&mut rng, 400, fatfs::FatType::Fat12).0,
            random_fs(&mut rng, 4200, fatfs::FatType::Fat16).0,
            random_fs(&mut rng, 70_000, fatfs::FatType::Fat32).0,
        ];
        // Where the metadata is: boot sectors and FSInfo, the FATs' first entries, and
        // the first directory clusters (the root of FAT12/16 follows the FATs).
        let head = 640 << 10;
        let report = Fuzz::new("fuzz_fat_read").run(
            |m, case| {
                let base = &bases[case as usize % 3];
                let head = head.min(base.len());
                let hot = [0..96, 512..1024, 6144..6656, 1024..4096, 4096..head];
                let mut h = m.hot(&hot).mutate(&base[..head]);
                // A few cases cut the whole image short.
                let len = if m.rng.one_in(10) {
                    m.rng.below(base.len() as u64)
                } else {
                    base.len() as u64
                };
                h.extend_from_slice(&(case % 3).to_le_bytes());
                h.extend_from_slice(&len.to_le_bytes());
                h
            },
            |input| {
                let (h, tail) = input.split_at(input.len() - 16);
                let which = u64::from_le_bytes(tail[..8].try_into().unwrap()) as usize;
                let len = u64::from_le_bytes(tail[8..].try_into().unwrap());
                let disk = || Overlay {
                    head: h,
                    base: &bases[which],
                    len,
                    pos: 0,
                };
                // Locating a file in place: never a panic, and only ranges inside the
                // volume, adding up to the file's size.
                for path in ["/EFI/BOOT/grub.cfg", "/a/b/c", "/oneimage/x"] {
                    if let Ok(Some((ranges, size))) = file_ranges(disk(), 0, len, path) {
                        assert!(ranges
                            .iter()
                            .all(|&(o, n)| o.checked_add(n).is_some_and(|e| e <= len)));
                        assert_eq!(ranges.iter().map(|r| r.1).sum::<u64>(), size);
                    }
                }
                let Ok(c) = read_contents(disk(), 0, len) else {
                    return false;
                };
                assert!(c.files.len() <= MAX_FILES, "{} files", c.files.len());
                assert!(c.grub_cfgs.iter().all(|(_, t)| t.len() <= 1 << 20));
                true
            },
        );
        assert!(
            report.accepted > 1000 && report.accepted < report.cases,
            "{report:?}"
        );
    }
}
