//! Recognising the filesystem in a partition from its superblock, without mounting.

use std::io::{self, Read, Seek, SeekFrom};

/// What a partition holds, as far as its superblock tells.
///
/// Superblocks come from any disk (an image being inspected, a stick about to be
/// overwritten, a disk the boot agent grows): every field is checked before arithmetic
/// uses it, and a field out of range means "not recognised".
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FsInfo {
    /// `ext4`, `ext2/3`, `vfat`, `squashfs` or `erofs`.
    pub kind: String,
    /// Volume label (may be empty).
    pub label: String,
    /// Filesystem UUID or FAT volume id, as the kernel's by-uuid names show it.
    pub uuid: String,
    /// Total size in bytes.
    pub total_bytes: u64,
    /// Bytes in use, when the superblock records it.
    pub used_bytes: Option<u64>,
}

fn le16(b: &[u8], o: usize) -> u64 {
    u16::from_le_bytes([b[o], b[o + 1]]) as u64
}
fn le32(b: &[u8], o: usize) -> u64 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap()) as u64
}
fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .trim_end_matches(['\0', ' '])
        .to_string()
}

/// Probes `dev` (positioned anywhere; it is seeked) and returns what it holds, or `None`.
pub fn probe<R: Read + Seek>(dev: &mut R) -> io::Result<Option<FsInfo>> {
    let mut head = vec![0u8; 4096];
    dev.seek(SeekFrom::Start(0))?;
    let n = read_full(dev, &mut head)?;
    head.truncate(n);
    if let Some(i) = probe_ext(&head) {
        return Ok(Some(i));
    }
    if let Some(i) = probe_fat(&head) {
        return Ok(Some(i));
    }
    if head.len() >= 96 && &head[0..4] == b"hsqs" {
        return Ok(Some(FsInfo {
            kind: "squashfs".into(),
            label: String::new(),
            uuid: String::new(),
            total_bytes: u64::from_le_bytes(head[40..48].try_into().unwrap()),
            used_bytes: None,
        }));
    }
    if let Some(i) = probe_erofs(&head) {
        return Ok(Some(i));
    }
    Ok(None)
}

/// EROFS: a superblock at byte 1024 (see the kernel's erofs_fs.h).
fn probe_erofs(head: &[u8]) -> Option<FsInfo> {
    let sb = head.get(1024..1024 + 128)?;
    if le32(sb, 0) != 0xE0F5_E1E2 {
        return None;
    }
    // Blocks of 512 bytes to 64 KiB; another shift is not EROFS.
    let bits = sb[12];
    if !(9..=16).contains(&bits) {
        return None;
    }
    Some(FsInfo {
        kind: "erofs".into(),
        label: text(&sb[64..80]),
        uuid: uuid_text(&sb[48..64]),
        total_bytes: le32(sb, 36) << bits,
        used_bytes: None,
    })
}

/// A UUID's 16 bytes as the kernel's by-uuid names show them.
fn uuid_text(u: &[u8]) -> String {
    crate::Guid(u.try_into().expect("16 bytes")).to_string()
}

fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn probe_ext(head: &[u8]) -> Option<FsInfo> {
    let sb = head.get(1024..2048)?;
    if le16(sb, 56) != 0xEF53 {
        return None;
    }
    // ext4 blocks are 1 KiB to 64 KiB (a shift of 0 to 6); any other shift is not ext4,
    // and shifting by it would overflow.
    let log = le32(sb, 24);
    if log > 6 {
        return None;
    }
    let block = 1024u64 << log;
    let incompat = le32(sb, 96);
    let is64 = incompat & 0x80 != 0;
    let hi = |o: usize| if is64 { le32(sb, o) << 32 } else { 0 };
    let blocks = le32(sb, 4) | hi(0x150);
    let free = le32(sb, 12) | hi(0x158);
    let uuid = uuid_text(&sb[104..120]);
    // extents (0x40) or flex_bg (0x200) mark ext4.
    let kind = if incompat & 0x240 != 0 {
        "ext4"
    } else {
        "ext2/3"
    };
    Some(FsInfo {
        kind: kind.into(),
        label: text(&sb[120..136]),
        uuid,
        // At most 2^64 blocks of 64 KiB: bytes saturate rather than wrap.
        total_bytes: blocks.saturating_mul(block),
        used_bytes: Some(blocks.saturating_sub(free).saturating_mul(block)),
    })
}

fn probe_fat(head: &[u8]) -> Option<FsInfo> {
    if head.len() < 512 || head[510] != 0x55 || head[511] != 0xaa {
        return None;
    }
    let bps = le16(head, 11);
    if !matches!(bps, 512 | 1024 | 2048 | 4096) || head[13] == 0 {
        return None;
    }
    let total = match le16(head, 19) {
        0 => le32(head, 32),
        n => n,
    };
    let (id_off, label_off, kind_off) = if le16(head, 22) == 0 {
        (67, 71, 82)
    } else {
        (39, 43, 54)
    };
    if &head[kind_off..kind_off + 3] != b"FAT" {
        return None;
    }
    let id = le32(head, id_off);
    Some(FsInfo {
        kind: "vfat".into(),
        label: text(&head[label_off..label_off + 11]),
        uuid: crate::fat::volume_id_text(id as u32),
        total_bytes: total * bps,
        used_bytes: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn recognises_nothing_in_zeros() {
        assert_eq!(probe(&mut Cursor::new(vec![0u8; 8192])).unwrap(), None);
    }

    /// Found by `fuzz_probe`: a 64-bit block count whose bytes exceed 2^64 overflowed a
    /// multiplication (now saturated), and a block size shift of 64 or more overflowed
    /// the shift (now not ext4).
    #[test]
    fn out_of_range_ext_fields_are_handled() {
        let mut img = vec![0u8; 4096];
        let sb = &mut img[1024..2048];
        sb[56..58].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[96..100].copy_from_slice(&0x80u32.to_le_bytes()); // 64-bit block counts
        sb[0x150..0x154].copy_from_slice(&0xffff_ffffu32.to_le_bytes());
        let i = probe(&mut Cursor::new(&img)).unwrap().unwrap();
        assert_eq!(i.total_bytes, u64::MAX, "saturates rather than wraps");
        let sb = &mut img[1024..2048];
        sb[0x150..0x154].copy_from_slice(&0u32.to_le_bytes());
        sb[24..28].copy_from_slice(&64u32.to_le_bytes());
        assert_eq!(probe(&mut Cursor::new(&img)).unwrap(), None);
        let sb = &mut img[1024..2048];
        sb[24..28].copy_from_slice(&6u32.to_le_bytes());
        sb[4..8].copy_from_slice(&3u32.to_le_bytes());
        let i = probe(&mut Cursor::new(&img)).unwrap().unwrap();
        assert_eq!(i.total_bytes, 3 << 16, "64 KiB blocks are the largest");
    }

    #[test]
    fn reads_ext4_superblock_fields() {
        let mut img = vec![0u8; 8192];
        let sb = &mut img[1024..2048];
        sb[4..8].copy_from_slice(&1000u32.to_le_bytes());
        sb[12..16].copy_from_slice(&400u32.to_le_bytes());
        sb[24..28].copy_from_slice(&2u32.to_le_bytes()); // 4096-byte blocks
        sb[56..58].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[96..100].copy_from_slice(&0x240u32.to_le_bytes());
        sb[104..120].copy_from_slice(&[0x11; 16]);
        sb[120..124].copy_from_slice(b"root");
        let i = probe(&mut Cursor::new(img)).unwrap().unwrap();
        assert_eq!(i.kind, "ext4");
        assert_eq!(i.label, "root");
        assert_eq!(i.total_bytes, 4096000);
        assert_eq!(i.used_bytes, Some(600 * 4096));
        assert_eq!(i.uuid, "11111111-1111-1111-1111-111111111111");
        // A block size shift past 64 KiB, or a block count past 2^64 bytes: no panic.
        let mut bad = vec![0u8; 8192];
        bad[1024..2048].copy_from_slice(&img_sb(u32::MAX, u32::MAX, 2));
        assert_eq!(
            probe(&mut Cursor::new(bad.clone()))
                .unwrap()
                .unwrap()
                .total_bytes,
            u64::MAX
        );
        bad[1024 + 24..1024 + 28].copy_from_slice(&40u32.to_le_bytes());
        assert_eq!(probe(&mut Cursor::new(bad)).unwrap(), None);
    }

    /// An ext4 superblock with `blocks` (low and high 32 bits) of 1024 << `log` bytes.
    fn img_sb(blocks_lo: u32, blocks_hi: u32, log: u32) -> [u8; 1024] {
        let mut sb = [0u8; 1024];
        sb[4..8].copy_from_slice(&blocks_lo.to_le_bytes());
        sb[24..28].copy_from_slice(&log.to_le_bytes());
        sb[56..58].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[96..100].copy_from_slice(&0x2c0u32.to_le_bytes()); // extents, 64bit, flex_bg
        sb[0x150..0x154].copy_from_slice(&blocks_hi.to_le_bytes());
        sb
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::testing::Fuzz;
    use std::io::Cursor;

    /// Superblocks and boot sectors the probe knows: ext4, FAT16, FAT32, squashfs.
    fn bases() -> Vec<Vec<u8>> {
        let mut ext = vec![0u8; 4096];
        let sb = &mut ext[1024..2048];
        sb[4..8].copy_from_slice(&1000u32.to_le_bytes());
        sb[12..16].copy_from_slice(&400u32.to_le_bytes());
        sb[24..28].copy_from_slice(&2u32.to_le_bytes());
        sb[56..58].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[96..100].copy_from_slice(&0x2c0u32.to_le_bytes());
        sb[0x150..0x154].copy_from_slice(&7u32.to_le_bytes());
        sb[120..124].copy_from_slice(b"root");
        let mut fat = Vec::new();
        for (total, fat_type) in [
            (8192u32, fatfs::FatType::Fat16),
            (70_000, fatfs::FatType::Fat32),
        ] {
            let mut disk = Cursor::new(vec![0u8; total as usize * 512]);
            fatfs::format_volume(
                &mut disk,
                fatfs::FormatVolumeOptions::new()
                    .fat_type(fat_type)
                    .volume_label(*b"ESP        "),
            )
            .unwrap();
            fat.push(disk.into_inner()[..4096].to_vec());
        }
        let mut sq = vec![0u8; 4096];
        sq[0..4].copy_from_slice(b"hsqs");
        sq[40..48].copy_from_slice(&(1u64 << 30).to_le_bytes());
        [vec![ext], fat, vec![sq]].concat()
    }

    /// Any first 4 KiB (mutated superblocks, boot sectors, cut short) probes without a
    /// panic or an I/O error, and what it reports is consistent.
    #[test]
    fn fuzz_probe() {
        let bases = bases();
        let report = Fuzz::new("fuzz_probe").run(
            |m, case| {
                let base = &bases[case as usize % bases.len()];
                m.hot(&[0..96, 1024..1124, 1024 + 0x150..1024 + 0x160])
                    .mutate(base)
            },
            |input| {
                let info = probe(&mut Cursor::new(input)).expect("an in-memory read cannot fail");
                if let Some(i) = &info {
                    assert!(i.used_bytes.is_none_or(|u| u <= i.total_bytes), "{i:?}");
                    assert!(i.label.len() <= 16 * 3, "{i:?}");
                }
                info.is_some()
            },
        );
        assert!(
            report.accepted > 1000 && report.accepted < report.cases,
            "{report:?}"
        );
    }
}
