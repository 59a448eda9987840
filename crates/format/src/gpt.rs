//! GUID partition tables: the known partition types, writing a planned table and
//! reading one back. The on-disk encoding is gptman's; this module adds our types.

use crate::guid::Guid;
use std::io::{Read, Seek, Write};

/// The EFI System Partition type.
pub const TYPE_ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// The BIOS boot partition type (GRUB's core.img lives here).
pub const TYPE_BIOS_BOOT: &str = "21686148-6449-6e6f-744e-656564454649";
/// Discoverable Partitions: root for x86-64.
pub const TYPE_ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
/// Discoverable Partitions: root for arm64.
pub const TYPE_ROOT_ARM64: &str = "b921b045-1df0-41c3-af44-4c6f280d3fae";
/// Generic Linux filesystem data.
pub const TYPE_LINUX_DATA: &str = "0fc63daf-8483-4772-8e79-3d69d8477de4";

/// A short name for a known partition type GUID, such as `esp` or `root-x86-64`.
pub fn type_name(t: Guid) -> Option<&'static str> {
    let s = t.to_string();
    Some(match s.as_str() {
        TYPE_ESP => "esp",
        TYPE_BIOS_BOOT => "bios-boot",
        TYPE_ROOT_X86_64 => "root-x86-64",
        TYPE_ROOT_ARM64 => "root-arm64",
        TYPE_LINUX_DATA => "linux-data",
        _ => return None,
    })
}

/// Errors from reading or writing a partition table.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GptError {
    /// The table could not be encoded or decoded.
    #[error("partition table: {0}")]
    Table(#[from] gptman::Error),
    /// A planned partition does not fit the disk or overlaps another.
    #[error("partition {index} ({name}) spans LBA {start}..={end}, outside the usable LBA {first}..={last} or overlapping")]
    OutOfBounds {
        /// 1-based partition number.
        index: u32,
        /// Partition name.
        name: String,
        /// First LBA of the partition.
        start: u64,
        /// Last LBA of the partition.
        end: u64,
        /// First usable LBA of the disk.
        first: u64,
        /// Last usable LBA of the disk.
        last: u64,
    },
}

/// One partition as planned or as read from a disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Partition {
    /// 1-based index in the table.
    pub number: u32,
    /// Partition type GUID.
    pub type_guid: Guid,
    /// Unique partition GUID (what `root=PARTUUID=` names).
    pub guid: Guid,
    /// Partition name (UTF-16 on disk, at most 36 code units).
    pub name: String,
    /// First LBA.
    pub first_lba: u64,
    /// Last LBA, inclusive.
    pub last_lba: u64,
    /// Attribute bits.
    pub attributes: u64,
}

impl Partition {
    /// Byte offset of the partition on a disk with `sector` bytes per LBA.
    pub fn offset(&self, sector: u64) -> u64 {
        self.first_lba * sector
    }
    /// Length in bytes on a disk with `sector` bytes per LBA.
    pub fn len(&self, sector: u64) -> u64 {
        (self.last_lba + 1 - self.first_lba) * sector
    }
}

/// A partition table as read from a disk.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Table {
    /// Bytes per logical sector the table was found with.
    pub sector_size: u64,
    /// Disk GUID.
    pub disk_guid: Guid,
    /// First usable LBA.
    pub first_usable_lba: u64,
    /// Last usable LBA as recorded in the header.
    pub last_usable_lba: u64,
    /// LBA of the backup header as recorded in the primary header.
    pub backup_lba: u64,
    /// Partitions in use, by number.
    pub partitions: Vec<Partition>,
}

/// Writes a protective MBR (bytes 446..512 only, so boot code survives) and both GPT
/// copies for `parts` onto `disk`, whose current length is the disk size.
pub fn write_table<D: Read + Write + Seek>(
    disk: &mut D,
    sector_size: u64,
    disk_guid: Guid,
    parts: &[Partition],
) -> Result<(), GptError> {
    let mut gpt = gptman::GPT::new_from(disk, sector_size, disk_guid.to_gpt_bytes())?;
    let (first, last) = (gpt.header.first_usable_lba, gpt.header.last_usable_lba);
    let mut sorted: Vec<&Partition> = parts.iter().collect();
    sorted.sort_by_key(|p| p.first_lba);
    let mut prev_end = first.saturating_sub(1);
    for p in sorted {
        if p.first_lba < first
            || p.last_lba > last
            || p.first_lba <= prev_end
            || p.last_lba < p.first_lba
        {
            return Err(GptError::OutOfBounds {
                index: p.number,
                name: p.name.clone(),
                start: p.first_lba,
                end: p.last_lba,
                first,
                last,
            });
        }
        prev_end = p.last_lba;
    }
    for p in parts {
        gpt[p.number] = gptman::GPTPartitionEntry {
            partition_type_guid: p.type_guid.to_gpt_bytes(),
            unique_partition_guid: p.guid.to_gpt_bytes(),
            starting_lba: p.first_lba,
            ending_lba: p.last_lba,
            attribute_bits: p.attributes,
            partition_name: p.name.as_str().into(),
        };
    }
    // Backup first: if writing stops half-way (power loss during a first-boot growth),
    // either the old primary is still whole, or the new backup is, and readers that
    // find the primary broken fall back to it.
    let mut backup = gpt.header.clone();
    backup.primary_lba = gpt.header.backup_lba;
    backup.backup_lba = gpt.header.primary_lba;
    backup.partition_entry_lba = gpt.header.last_usable_lba + 1;
    let entries: Vec<gptman::GPTPartitionEntry> = gpt.iter().map(|(_, e)| e.clone()).collect();
    backup.write_into(disk, sector_size, &entries)?;
    disk.flush().map_err(gptman::Error::from)?;
    gpt.write_into(disk)?;
    gptman::GPT::write_protective_mbr_into(disk, sector_size)?;
    Ok(())
}

/// True when `disk` holds a valid backup GPT header in its last sector.
pub fn backup_at_end<D: Read + Seek>(disk: &mut D, sector_size: u64) -> bool {
    let Ok(len) = disk.seek(std::io::SeekFrom::End(0)) else {
        return false;
    };
    let last = len / sector_size - 1;
    if disk
        .seek(std::io::SeekFrom::Start(last * sector_size))
        .is_err()
    {
        return false;
    }
    matches!(gptman::GPTHeader::read_from(disk), Ok(h) if h.primary_lba == last)
}

/// Reads the partition table, trying 512- and 4096-byte sectors.
pub fn read_table<D: Read + Seek>(disk: &mut D) -> Result<Table, GptError> {
    let gpt = gptman::GPT::find_from(disk)?;
    let partitions = gpt
        .iter()
        .filter(|(_, e)| e.is_used())
        .map(|(n, e)| Partition {
            number: n,
            type_guid: Guid::from_gpt_bytes(e.partition_type_guid),
            guid: Guid::from_gpt_bytes(e.unique_partition_guid),
            name: e.partition_name.as_str().to_string(),
            first_lba: e.starting_lba,
            last_lba: e.ending_lba,
            attributes: e.attribute_bits,
        })
        .collect();
    Ok(Table {
        sector_size: gpt.sector_size,
        disk_guid: Guid::from_gpt_bytes(gpt.header.disk_guid),
        first_usable_lba: gpt.header.first_usable_lba,
        last_usable_lba: gpt.header.last_usable_lba,
        backup_lba: gpt.header.backup_lba,
        partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn part(n: u32, first: u64, last: u64) -> Partition {
        Partition {
            number: n,
            type_guid: TYPE_LINUX_DATA.parse().unwrap(),
            guid: Guid::derive("t", &n.to_string()),
            name: format!("p{n}"),
            first_lba: first,
            last_lba: last,
            attributes: 0,
        }
    }

    #[test]
    fn round_trip() {
        let mut disk = Cursor::new(vec![0u8; 8 << 20]);
        let parts = vec![part(1, 2048, 4095), part(2, 4096, 10000)];
        write_table(&mut disk, 512, Guid::derive("t", "disk"), &parts).unwrap();
        let bytes = disk.get_ref();
        assert_eq!(&bytes[512..520], b"EFI PART");
        assert_eq!(bytes[450], 0xee);
        assert_eq!(&bytes[510..512], &[0x55, 0xaa]);
        let t = read_table(&mut disk).unwrap();
        assert_eq!(t.partitions, parts);
        assert_eq!(t.backup_lba, (8 << 20) / 512 - 1);
        assert!(backup_at_end(&mut disk, 512));
        // The disk grows: the backup is no longer at the end.
        disk.get_mut().resize(16 << 20, 0);
        assert!(!backup_at_end(&mut disk, 512));
    }

    #[test]
    fn refuses_overlap_and_overflow() {
        let mut disk = Cursor::new(vec![0u8; 8 << 20]);
        let g = Guid::derive("t", "disk");
        assert!(write_table(
            &mut disk,
            512,
            g,
            &[part(1, 2048, 5000), part(2, 4096, 6000)]
        )
        .is_err());
        assert!(write_table(&mut disk, 512, g, &[part(1, 2048, 1 << 20)]).is_err());
    }
}
