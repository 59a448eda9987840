//! Giving one copy of an image its own identity: the root filesystem's UUID, the ESP's
//! volume id, then the disk and partition GUIDs (one table write, backup first). The
//! agent does it on a copy's first boot, `install` right after writing a copy. Every
//! value comes from the first-boot record's seed ([`crate::firstboot::Identity`]), so
//! doing it again after a power cut writes the same bytes.

use crate::firstboot::Identity;
use crate::gpt::{self, Partition, Table};
use crate::Guid;
use std::io::{Read, Seek, SeekFrom, Write};

/// ext4 superblock fields (see the kernel's ext4.h).
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

/// What changing the UUID of an ext4 filesystem takes, from its superblock (the 1024
/// bytes at byte 1024).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UuidChange {
    /// It has that UUID already.
    Done,
    /// `tune2fs -U` changes it by rewriting the superblocks only.
    Tune2fs,
    /// Its metadata checksums depend on the UUID (metadata_csum without
    /// metadata_csum_seed): changing it rewrites every checksum, which a power cut could
    /// leave half done, so it keeps its UUID.
    Keep,
}

/// Decides how the filesystem on `fs` (a partition's bytes) gets UUID `uuid`, from its
/// superblock.
pub fn uuid_change_of<R: Read + Seek>(fs: &mut R, uuid: Guid) -> Result<UuidChange, String> {
    let mut sb = [0u8; 1024];
    fs.seek(SeekFrom::Start(1024))
        .and_then(|_| fs.read_exact(&mut sb))
        .map_err(|e| format!("reading its superblock: {e}"))?;
    uuid_change(&sb, uuid)
}

/// Decides how the filesystem with superblock `sb` gets UUID `uuid`.
pub fn uuid_change(sb: &[u8], uuid: Guid) -> Result<UuidChange, String> {
    if sb.len() < 1024 || u16::from_le_bytes([sb[56], sb[57]]) != 0xEF53 {
        return Err("it holds no ext4 filesystem (no superblock magic)".into());
    }
    if sb[104..120] == uuid.0 {
        return Ok(UuidChange::Done);
    }
    let le32 = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
    if le32(100) & RO_COMPAT_METADATA_CSUM != 0 && le32(96) & INCOMPAT_CSUM_SEED == 0 {
        return Ok(UuidChange::Keep);
    }
    Ok(UuidChange::Tune2fs)
}

/// Gives the copy on `disk` (whose table is `table`) the identity `id`.
/// `set_root_uuid` changes the root filesystem's UUID (it runs `tune2fs` on the root
/// partition, which needs a device node). The caller syncs the disk and has the kernel
/// read the new table.
pub fn apply<D: Read + Write + Seek>(
    disk: &mut D,
    table: &Table,
    id: &Identity,
    set_root_uuid: &mut dyn FnMut(Guid) -> Result<(), String>,
) -> Result<(), String> {
    set_root_uuid(id.root_fs_uuid)?;
    let ss = table.sector_size;
    for esp in table.partitions.iter().filter(|p| p.is_esp()) {
        set_fat_volume_id(disk, esp, ss, id.esp_volume_id)?;
    }
    let parts: Vec<Partition> = table
        .partitions
        .iter()
        .map(|p| Partition {
            guid: id.partition(p.number),
            ..p.clone()
        })
        .collect();
    gpt::write_table(disk, ss, id.disk, &parts)
        .map_err(|e| format!("writing the partition table: {e}"))?;
    disk.flush().map_err(|e| format!("flushing the disk: {e}"))
}

/// Sets the volume id of the FAT filesystem in partition `esp` (boot sector and its
/// FAT32 backup).
fn set_fat_volume_id<D: Read + Write + Seek>(
    disk: &mut D,
    esp: &Partition,
    ss: u64,
    id: u32,
) -> Result<(), String> {
    let (at, len) = (esp.offset(ss), esp.len(ss));
    let mut boot = [0u8; 512];
    disk.seek(SeekFrom::Start(at))
        .and_then(|_| disk.read_exact(&mut boot))
        .map_err(|e| format!("reading the ESP's boot sector: {e}"))?;
    let offsets = crate::fat::volume_id_offsets(&boot, len)
        .map_err(|e| format!("the ESP (partition {}): {e}", esp.number))?;
    for o in offsets {
        disk.seek(SeekFrom::Start(at + o))
            .and_then(|_| disk.write_all(&id.to_le_bytes()))
            .map_err(|e| format!("writing the ESP's volume id: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_uuid_free_of_checksums_is_changed() {
        let mut sb = vec![0u8; 1024];
        assert!(uuid_change(&sb, Guid([1; 16])).is_err());
        sb[56..58].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[104..120].copy_from_slice(&[1; 16]);
        assert_eq!(uuid_change(&sb, Guid([1; 16])), Ok(UuidChange::Done));
        assert_eq!(uuid_change(&sb, Guid([2; 16])), Ok(UuidChange::Tune2fs));
        sb[100..104].copy_from_slice(&RO_COMPAT_METADATA_CSUM.to_le_bytes());
        assert_eq!(uuid_change(&sb, Guid([2; 16])), Ok(UuidChange::Keep));
        sb[96..100].copy_from_slice(&INCOMPAT_CSUM_SEED.to_le_bytes());
        assert_eq!(uuid_change(&sb, Guid([2; 16])), Ok(UuidChange::Tune2fs));
    }
}
