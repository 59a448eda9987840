//! GUID partition tables: the known partition types, writing a planned table (encoded by
//! gptman) and reading one back. Reading is done here, not by gptman: it checks every
//! header field before use, since the boot agent reads the tables of whatever disks are
//! plugged in, and gptman trusts entry counts and sizes (allocating and looping by them).

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
    /// The table could not be encoded.
    #[error("partition table: {0}")]
    Table(#[from] gptman::Error),
    /// Reading the disk failed.
    #[error("reading the partition table: {0}")]
    Io(#[from] std::io::Error),
    /// Neither a primary nor a backup header carries the GPT signature, with 512- or
    /// 4096-byte sectors.
    #[error("no GPT signature at LBA 1 or in the last sector (512- or 4096-byte sectors)")]
    NotFound,
    /// A header with the GPT signature was found, but it or its entries are not valid:
    /// why, for the primary and the backup copy.
    #[error("invalid GPT: {0}")]
    Invalid(String),
    /// The disk is too small to hold a GPT, or the sector size is not 512 or 4096.
    #[error("a disk of {bytes} bytes is too small for a GPT with {sector_size}-byte sectors")]
    TooSmall {
        /// Disk size in bytes.
        bytes: u64,
        /// Sector size in bytes.
        sector_size: u64,
    },
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
    /// Whether it is an EFI System Partition.
    pub fn is_esp(&self) -> bool {
        type_name(self.type_guid) == Some("esp")
    }

    /// Byte offset of the partition on a disk with `sector` bytes per LBA (saturating:
    /// a table [`read_table`] accepts never comes near the limit, a hand-made one may).
    pub fn offset(&self, sector: u64) -> u64 {
        self.first_lba.saturating_mul(sector)
    }
    /// Length in bytes on a disk with `sector` bytes per LBA (saturating, and 0 for an
    /// entry that ends before it starts).
    pub fn len(&self, sector: u64) -> u64 {
        self.last_lba
            .saturating_add(1)
            .saturating_sub(self.first_lba)
            .saturating_mul(sector)
    }
}

/// A partition table as read from a disk.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Table {
    /// Bytes per logical sector the table was found with.
    pub sector_size: u64,
    /// Disk GUID.
    pub disk_guid: Guid,
    /// First usable LBA.
    pub first_usable_lba: u64,
    /// Last usable LBA as recorded in the header.
    pub last_usable_lba: u64,
    /// LBA of the backup header: as the primary header records it, or where the backup
    /// was found when the primary is not valid.
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
    write_gpt(disk, sector_size, disk_guid, parts, true)
}

/// [`write_table`], leaving the MBR alone unless `protective_mbr`.
fn write_gpt<D: Read + Write + Seek>(
    disk: &mut D,
    sector_size: u64,
    disk_guid: Guid,
    parts: &[Partition],
    protective_mbr: bool,
) -> Result<(), GptError> {
    // gptman computes the usable area by subtraction from the disk size: a disk smaller
    // than two headers and two 128-entry arrays (or a bogus sector size) would underflow.
    let bytes = disk.seek(std::io::SeekFrom::End(0))?;
    let too_small = GptError::TooSmall { bytes, sector_size };
    if !matches!(sector_size, 512 | 4096) {
        return Err(too_small);
    }
    let array_lbas = (128 * 128u64).div_ceil(sector_size);
    if bytes / sector_size < 2 * (2 + array_lbas) + 1 {
        return Err(too_small);
    }
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
    if protective_mbr {
        gptman::GPT::write_protective_mbr_into(disk, sector_size)?;
    }
    Ok(())
}

/// The largest partition entry array [`read_table`] reads, in bytes (32768 entries of
/// 128 bytes; partitioning tools make 128 entries). Anything larger is refused before memory is allocated
/// for it: the array is the only thing whose size a header decides.
pub const MAX_ENTRY_ARRAY_BYTES: u64 = 4 << 20;

/// The largest partition entry [`read_table`] accepts, in bytes (UEFI allows 128 × 2^n).
pub const MAX_ENTRY_SIZE: u32 = 4096;

/// Bytes of a GPT header that carry fields (the rest of `header_size` is reserved).
const HEADER_FIELDS: usize = 92;

/// Why a header at one place could not be used.
enum HeaderError {
    /// No "EFI PART" signature there, or the disk ends before it.
    Absent,
    /// A signature, but a field, a checksum or an entry is wrong.
    Invalid(String),
}

impl From<std::io::Error> for HeaderError {
    fn from(e: std::io::Error) -> Self {
        HeaderError::Invalid(format!("reading: {e}"))
    }
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn le64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn guid_at(b: &[u8], at: usize) -> Guid {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[at..at + 16]);
    Guid::from_gpt_bytes(a)
}

/// Reads `buf.len()` bytes at byte `lba * sector_size`, with the multiplication checked.
fn read_at<D: Read + Seek>(
    disk: &mut D,
    lba: u64,
    sector_size: u64,
    buf: &mut [u8],
) -> Result<(), HeaderError> {
    let at = lba
        .checked_mul(sector_size)
        .ok_or_else(|| HeaderError::Invalid(format!("LBA {lba} overflows a byte offset")))?;
    disk.seek(std::io::SeekFrom::Start(at))?;
    disk.read_exact(buf)?;
    Ok(())
}

/// Reads and checks the header in sector `lba` of a disk of `disk_lbas` sectors, then its
/// entry array; every field is checked against the disk and the others before it is used.
fn read_copy<D: Read + Seek>(
    disk: &mut D,
    sector_size: u64,
    lba: u64,
    disk_lbas: u64,
) -> Result<Table, HeaderError> {
    use HeaderError::{Absent, Invalid};
    if lba >= disk_lbas {
        return Err(Absent);
    }
    let ss = usize::try_from(sector_size).map_err(|_| Absent)?;
    let mut sector = vec![0u8; ss];
    read_at(disk, lba, sector_size, &mut sector)?;
    if &sector[0..8] != b"EFI PART" {
        return Err(Absent);
    }
    let last_lba = disk_lbas - 1;
    let revision = le32(&sector, 8);
    if revision >> 16 != 1 {
        return Err(Invalid(format!("revision {revision:#010x}, not 1.x")));
    }
    let header_size = le32(&sector, 12);
    if !(HEADER_FIELDS as u64..=sector_size).contains(&u64::from(header_size)) {
        return Err(Invalid(format!(
            "header size {header_size}, not between {HEADER_FIELDS} and the sector size {sector_size}"
        )));
    }
    let stored_crc = le32(&sector, 16);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&sector[0..16]);
    crc.update(&[0; 4]);
    crc.update(&sector[20..header_size as usize]);
    let crc = crc.finalize();
    if crc != stored_crc {
        return Err(Invalid(format!(
            "header checksum {stored_crc:#010x}, computed {crc:#010x}"
        )));
    }
    let (my_lba, alternate_lba) = (le64(&sector, 24), le64(&sector, 32));
    let (first_usable, last_usable) = (le64(&sector, 40), le64(&sector, 48));
    let entries_lba = le64(&sector, 72);
    let (count, entry_size) = (le32(&sector, 80), le32(&sector, 84));
    let entries_crc = le32(&sector, 88);
    if my_lba != lba {
        return Err(Invalid(format!(
            "the header in LBA {lba} says it is in LBA {my_lba}"
        )));
    }
    if alternate_lba > last_lba || alternate_lba == my_lba {
        return Err(Invalid(format!(
            "the other header's LBA {alternate_lba} is past the end of the disk (last LBA {last_lba}) or this header's own"
        )));
    }
    if first_usable > last_usable || last_usable > last_lba {
        return Err(Invalid(format!(
            "usable LBAs {first_usable}..={last_usable} are reversed or past the end of the disk (last LBA {last_lba})"
        )));
    }
    let usable = first_usable..=last_usable;
    if usable.contains(&my_lba) || usable.contains(&alternate_lba) {
        return Err(Invalid(format!(
            "the headers in LBA {my_lba} and {alternate_lba} lie inside the usable LBAs {first_usable}..={last_usable}"
        )));
    }
    if !(128..=MAX_ENTRY_SIZE).contains(&entry_size)
        || entry_size % 128 != 0
        || !(entry_size / 128).is_power_of_two()
    {
        return Err(Invalid(format!(
            "partition entries of {entry_size} bytes, not 128 × 2^n up to {MAX_ENTRY_SIZE}"
        )));
    }
    // u32 × u32 always fits a u64.
    let array_bytes = u64::from(count) * u64::from(entry_size);
    if array_bytes > MAX_ENTRY_ARRAY_BYTES {
        return Err(Invalid(format!(
            "{count} partition entries of {entry_size} bytes ({array_bytes} bytes), more than the {MAX_ENTRY_ARRAY_BYTES} bytes accepted"
        )));
    }
    let array_lbas = array_bytes.div_ceil(sector_size);
    if array_lbas > 0 {
        let array_last = entries_lba
            .checked_add(array_lbas - 1)
            .filter(|&end| end <= last_lba)
            .ok_or_else(|| {
                Invalid(format!(
                    "the partition entries at LBA {entries_lba} ({array_lbas} sectors) run past the end of the disk (last LBA {last_lba})"
                ))
            })?;
        let array = entries_lba..=array_last;
        if array.contains(&my_lba)
            || array.contains(&alternate_lba)
            || (entries_lba <= last_usable && array_last >= first_usable)
        {
            return Err(Invalid(format!(
                "the partition entries in LBA {entries_lba}..={array_last} overlap a header or the usable LBAs {first_usable}..={last_usable}"
            )));
        }
    }
    // Bounded by MAX_ENTRY_ARRAY_BYTES above.
    let mut array = vec![0u8; array_bytes as usize];
    read_at(disk, entries_lba, sector_size, &mut array)?;
    let crc = crc32fast::hash(&array);
    if crc != entries_crc {
        return Err(Invalid(format!(
            "partition entry checksum {entries_crc:#010x}, computed {crc:#010x}"
        )));
    }
    let mut partitions = Vec::new();
    for (i, e) in array.chunks_exact(entry_size as usize).enumerate() {
        let type_guid = guid_at(e, 0);
        if type_guid.is_nil() {
            continue;
        }
        // At most MAX_ENTRY_ARRAY_BYTES / 128 entries: the number fits a u32.
        let number = i as u32 + 1;
        let (first, last) = (le64(e, 32), le64(e, 40));
        if first > last || first < first_usable || last > last_usable {
            return Err(Invalid(format!(
                "partition {number} spans LBA {first}..={last}, reversed or outside the usable LBAs {first_usable}..={last_usable}"
            )));
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        partitions.push(Partition {
            number,
            type_guid,
            guid: guid_at(e, 16),
            name: char::decode_utf16(units)
                .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect(),
            first_lba: first,
            last_lba: last,
            attributes: le64(e, 48),
        });
    }
    let mut by_start: Vec<&Partition> = partitions.iter().collect();
    by_start.sort_by_key(|p| p.first_lba);
    for w in by_start.windows(2) {
        if w[1].first_lba <= w[0].last_lba {
            return Err(Invalid(format!(
                "partitions {} (LBA {}..={}) and {} (LBA {}..={}) overlap",
                w[0].number,
                w[0].first_lba,
                w[0].last_lba,
                w[1].number,
                w[1].first_lba,
                w[1].last_lba
            )));
        }
    }
    let mut guids: Vec<Guid> = partitions.iter().map(|p| p.guid).collect();
    guids.sort_by_key(|g| g.to_gpt_bytes());
    if let Some(w) = guids.windows(2).find(|w| w[0] == w[1]) {
        return Err(Invalid(format!("two partitions have the GUID {}", w[0])));
    }
    // The backup header is the one that is not at LBA 1.
    let backup_lba = if my_lba == 1 { alternate_lba } else { my_lba };
    Ok(Table {
        sector_size,
        disk_guid: guid_at(&sector, 56),
        first_usable_lba: first_usable,
        last_usable_lba: last_usable,
        backup_lba,
        partitions,
    })
}

/// Moves the backup GPT of `disk` to its last sector when the disk grew past it (an image
/// written to a larger disk), rewriting both copies with the same disk GUID and
/// partitions (backup first, as [`write_table`] does; a hybrid MBR is kept). Returns whether it moved; a disk
/// without a valid table is left alone (`Ok(false)`). The writer and the agent's
/// first-boot growth both relocate the backup through [`write_table`].
pub fn move_backup_to_end<D: Read + Write + Seek>(disk: &mut D) -> Result<bool, GptError> {
    let Ok(table) = read_table(disk) else {
        return Ok(false);
    };
    if backup_at_end(disk, table.sector_size) {
        return Ok(false);
    }
    rewrite_table(disk, &table)?;
    Ok(true)
}

/// Writes `table` (its disk GUID and partitions) onto `disk` for the disk's current
/// length: both GPT copies, the backup in the last sector. A hybrid MBR (partitions of
/// its own next to the GPT, as on isohybrid images) is kept as it is; a protective one
/// is made to cover the whole disk.
pub fn rewrite_table<D: Read + Write + Seek>(disk: &mut D, table: &Table) -> Result<(), GptError> {
    let mut mbr = [0u8; 512];
    disk.seek(std::io::SeekFrom::Start(0))?;
    disk.read_exact(&mut mbr)?;
    let types: Vec<u8> = (0..4).map(|i| mbr[446 + 16 * i + 4]).collect();
    let protective = types[0] == 0xee && types[1..].iter().all(|&t| t == 0);
    write_gpt(
        disk,
        table.sector_size,
        table.disk_guid,
        &table.partitions,
        protective,
    )
}

/// True when `disk` holds a valid backup GPT (header and entries) in its last sector.
pub fn backup_at_end<D: Read + Seek>(disk: &mut D, sector_size: u64) -> bool {
    let Ok(len) = disk.seek(std::io::SeekFrom::End(0)) else {
        return false;
    };
    let lbas = len / sector_size.max(1);
    lbas >= 2 && read_copy(disk, sector_size, lbas - 1, lbas).is_ok()
}

/// Reads the partition table, trying 512- and 4096-byte sectors: the primary copy, or
/// the backup in the last sector when the primary is missing or not valid.
///
/// Every header field is checked against the disk's size and the other fields before it
/// is used (sizes, counts, LBAs, checksums; entries inside the usable area, in order and
/// not overlapping; distinct partition GUIDs), with checked arithmetic, so a crafted disk
/// gets an error, never a panic, a loop over billions of entries or a large allocation:
/// at most two sectors and [`MAX_ENTRY_ARRAY_BYTES`] are read per copy tried.
pub fn read_table<D: Read + Seek>(disk: &mut D) -> Result<Table, GptError> {
    let len = disk.seek(std::io::SeekFrom::End(0))?;
    for sector_size in [512u64, 4096] {
        let lbas = len / sector_size;
        if lbas < 2 {
            continue;
        }
        let primary = match read_copy(disk, sector_size, 1, lbas) {
            Ok(t) => return Ok(t),
            Err(e) => e,
        };
        let backup = match read_copy(disk, sector_size, lbas - 1, lbas) {
            Ok(t) => return Ok(t),
            Err(e) => e,
        };
        let why = |e: HeaderError| match e {
            HeaderError::Absent => "no signature".to_string(),
            HeaderError::Invalid(why) => why,
        };
        if let (HeaderError::Absent, HeaderError::Absent) = (&primary, &backup) {
            continue;
        }
        return Err(GptError::Invalid(format!(
            "{sector_size}-byte sectors: primary header: {}; backup header: {}",
            why(primary),
            why(backup)
        )));
    }
    Err(GptError::NotFound)
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
    fn the_backup_moves_to_the_end_of_a_grown_disk() {
        let mut disk = Cursor::new(valid_disk());
        let before = read_table(&mut disk).unwrap();
        assert!(
            !move_backup_to_end(&mut disk).unwrap(),
            "already at the end"
        );
        disk.get_mut().resize(9 << 20, 0);
        assert!(move_backup_to_end(&mut disk).unwrap());
        let after = read_table(&mut disk).unwrap();
        assert!(backup_at_end(&mut disk, 512));
        assert_eq!(after.partitions, before.partitions);
        assert_eq!(after.disk_guid, before.disk_guid);
        assert_eq!(after.backup_lba, (9 << 20) / 512 - 1);
        // A hybrid MBR (a partition of its own next to the GPT) is kept byte for byte.
        let mut disk = Cursor::new(valid_disk());
        disk.get_mut()[446 + 16 + 4] = 0x0c;
        let mbr: Vec<u8> = disk.get_ref()[..512].to_vec();
        disk.get_mut().resize(9 << 20, 0);
        assert!(move_backup_to_end(&mut disk).unwrap());
        assert_eq!(&disk.get_ref()[..512], &mbr[..]);
        // No table: nothing to move.
        let mut blank = Cursor::new(vec![0u8; 4 << 20]);
        assert!(!move_backup_to_end(&mut blank).unwrap());
    }

    /// A 4 MiB disk with two partitions, written by write_table.
    fn valid_disk() -> Vec<u8> {
        let mut disk = Cursor::new(vec![0u8; 4 << 20]);
        let parts = vec![part(1, 2048, 4095), part(2, 4096, 6000)];
        write_table(&mut disk, 512, Guid::derive("t", "disk"), &parts).unwrap();
        disk.into_inner()
    }

    /// Changes the header in `lba` with `edit` and seals it again: the entry array's
    /// checksum, then the header's, recomputed (when they can be), so the change gets past
    /// the checksums to the checks of the fields themselves.
    fn edit_header(disk: &mut [u8], lba: usize, edit: impl Fn(&mut [u8])) {
        let h = lba * 512;
        edit(&mut disk[h..h + 512]);
        let le32 = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
        let entries = u64::from_le_bytes(disk[h + 72..h + 80].try_into().unwrap()) as usize;
        let bytes = le32(disk, h + 80) as usize * le32(disk, h + 84) as usize;
        if let Some(array) = entries
            .checked_mul(512)
            .and_then(|at| disk.get(at..at.checked_add(bytes)?))
        {
            let crc = crc32fast::hash(array);
            disk[h + 88..h + 92].copy_from_slice(&crc.to_le_bytes());
        }
        let size = (le32(disk, h + 12) as usize).clamp(92, 512);
        disk[h + 16..h + 20].fill(0);
        let crc = crc32fast::hash(&disk[h..h + size]);
        disk[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
    }

    /// A change to a disk or a header sector.
    type Edit = Box<dyn Fn(&mut [u8])>;

    fn set32(at: usize, v: u32) -> impl Fn(&mut [u8]) {
        move |b: &mut [u8]| b[at..at + 4].copy_from_slice(&v.to_le_bytes())
    }

    fn set64(at: usize, v: u64) -> impl Fn(&mut [u8]) {
        move |b: &mut [u8]| b[at..at + 8].copy_from_slice(&v.to_le_bytes())
    }

    /// Applies `edit` to both headers and returns read_table's error message.
    fn refused(edit: impl Fn(&mut [u8])) -> String {
        let mut disk = valid_disk();
        let last = disk.len() / 512 - 1;
        edit_header(&mut disk, 1, &edit);
        edit_header(&mut disk, last, &edit);
        match read_table(&mut Cursor::new(disk)) {
            Ok(t) => panic!("accepted {t:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn crafted_headers_are_refused_with_the_reason() {
        let disk_lbas = (4u64 << 20) / 512;
        let cases: Vec<(Edit, &str)> = vec![
            (
                Box::new(set32(80, u32::MAX)),
                "4294967295 partition entries of 128 bytes",
            ),
            (Box::new(set32(84, 0)), "partition entries of 0 bytes"),
            (Box::new(set32(84, 100)), "partition entries of 100 bytes"),
            (Box::new(set32(84, 384)), "partition entries of 384 bytes"),
            (
                Box::new(set32(84, 1 << 31)),
                "partition entries of 2147483648 bytes",
            ),
            (Box::new(set32(12, 91)), "header size 91"),
            (Box::new(set32(12, 513)), "header size 513"),
            (Box::new(set32(8, 0x0002_0000)), "revision"),
            (
                Box::new(set64(72, disk_lbas - 2)),
                "run past the end of the disk",
            ),
            (
                Box::new(set64(72, u64::MAX)),
                "run past the end of the disk",
            ),
            (
                Box::new(set64(72, 40)),
                "overlap a header or the usable LBAs",
            ),
            (Box::new(set64(40, u64::MAX)), "reversed or past the end"),
            (Box::new(set64(48, disk_lbas)), "reversed or past the end"),
            (
                Box::new(set64(32, disk_lbas + 5)),
                "past the end of the disk",
            ),
            (Box::new(set64(24, 7)), "says it is in LBA 7"),
            (
                Box::new(|b: &mut [u8]| {
                    // First and last usable LBA swapped.
                    let (f, l) = (b[40..48].to_vec(), b[48..56].to_vec());
                    b[40..48].copy_from_slice(&l);
                    b[48..56].copy_from_slice(&f);
                }),
                "reversed",
            ),
        ];
        for (edit, want) in cases {
            let err = refused(edit);
            assert!(err.contains(want), "{want:?} not in {err:?}");
            assert!(
                err.contains("primary header") && err.contains("backup header"),
                "{err}"
            );
        }
    }

    #[test]
    fn crafted_entries_are_refused_with_the_reason() {
        // Entry 2 (bytes 128.. of the array at LBA 2) moved onto entry 1, past the end of
        // the usable area, or made to end before it starts; then two partitions with one GUID.
        let entry = |first: u64, last: u64| {
            move |d: &mut [u8]| {
                d[1024 + 128 + 32..1024 + 128 + 40].copy_from_slice(&first.to_le_bytes());
                d[1024 + 128 + 40..1024 + 128 + 48].copy_from_slice(&last.to_le_bytes());
            }
        };
        let disk_lbas = (4u64 << 20) / 512;
        let cases: Vec<(Edit, &str)> = vec![
            (Box::new(entry(3000, 5000)), "overlap"),
            (
                Box::new(entry(4096, disk_lbas + 100)),
                "outside the usable LBAs",
            ),
            (Box::new(entry(5000, 4096)), "reversed"),
            (Box::new(entry(0, u64::MAX)), "outside the usable LBAs"),
            (
                Box::new(|d: &mut [u8]| {
                    let g = d[1024 + 16..1024 + 32].to_vec();
                    d[1024 + 128 + 16..1024 + 128 + 32].copy_from_slice(&g);
                }),
                "two partitions have the GUID",
            ),
        ];
        for (edit, want) in cases {
            let mut disk = valid_disk();
            edit(&mut disk);
            // Seal the primary only: the backup, untouched, is then what is read.
            edit_header(&mut disk, 1, |_| {});
            let t = read_table(&mut Cursor::new(disk.clone())).unwrap();
            assert_eq!(t.partitions[1].first_lba, 4096, "{want}: backup used");
            // With the backup gone too, the reason is given.
            let last = disk.len() - 512;
            disk[last..].fill(0);
            let err = read_table(&mut Cursor::new(disk)).unwrap_err().to_string();
            assert!(err.contains(want), "{want:?} not in {err:?}");
        }
    }

    #[test]
    fn backup_is_used_when_the_primary_is_damaged_and_sizes_are_bounded() {
        let mut disk = valid_disk();
        disk[512 + 100] ^= 1; // reserved bytes after the fields: covered by no checksum
        disk[512 + 20] ^= 1; // the header's reserved field: covered by its checksum
        let t = read_table(&mut Cursor::new(disk.clone())).unwrap();
        assert_eq!(t.partitions.len(), 2);
        assert_eq!(t.backup_lba, (4 << 20) / 512 - 1);
        // A table of 32768 entries (4 MiB) is still read; one more entry is refused
        // before anything is allocated for it.
        let mut big = Cursor::new(vec![0u8; 16 << 20]);
        write_table(&mut big, 512, Guid::derive("t", "disk"), &[]).unwrap();
        let mut big = big.into_inner();
        let last = big.len() / 512 - 1;
        let at_limit = |b: &mut [u8]| {
            b[80..84].copy_from_slice(&32768u32.to_le_bytes());
            b[40..48].copy_from_slice(&(2 + 8192u64).to_le_bytes());
        };
        edit_header(&mut big, 1, at_limit);
        big[last * 512..].fill(0);
        let t = read_table(&mut Cursor::new(big.clone())).unwrap();
        assert_eq!(t.first_usable_lba, 8194);
        edit_header(&mut big, 1, set32(80, 32769));
        let err = read_table(&mut Cursor::new(big)).unwrap_err().to_string();
        assert!(err.contains("more than the 4194304 bytes"), "{err}");
        // Too small to write a table on.
        let mut tiny = Cursor::new(vec![0u8; 33 * 512]);
        assert!(matches!(
            write_table(&mut tiny, 512, Guid::derive("t", "disk"), &[]),
            Err(GptError::TooSmall { .. })
        ));
        assert!(matches!(
            read_table(&mut Cursor::new(vec![0u8; 100])),
            Err(GptError::NotFound)
        ));
    }

    #[test]
    fn four_kib_sectors_are_found() {
        let mut disk = Cursor::new(vec![0u8; 8 << 20]);
        let parts = vec![part(1, 256, 511), part(2, 512, 1500)];
        write_table(&mut disk, 4096, Guid::derive("t", "disk"), &parts).unwrap();
        let t = read_table(&mut disk).unwrap();
        assert_eq!(t.sector_size, 4096);
        assert_eq!(t.partitions, parts);
        assert!(backup_at_end(&mut disk, 4096));
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
