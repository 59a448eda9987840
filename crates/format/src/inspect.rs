//! What is inside a disk image, read without mounting: the partition table, each
//! partition's filesystem, and the boot files on the ESP.

use crate::fat::{read_contents, FatFile};
use crate::gpt::{read_table, type_name, GptError, Partition};
use crate::probe::{probe, FsInfo};
use crate::slice::Slice;
use std::io::{self, Read, Seek, SeekFrom};

/// One partition and what it holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionReport {
    /// Table entry.
    #[serde(flatten)]
    pub entry: Partition,
    /// Short type name, when the type is known.
    pub type_name: Option<&'static str>,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// Filesystem, if one was recognised.
    pub filesystem: Option<FsInfo>,
    /// Files that boot the system, for an ESP (every file on it).
    pub boot_files: Vec<FatFile>,
    /// Boot menu entries of the GRUB configuration on an ESP.
    pub boot_entries: Vec<crate::grubcfg::BootEntry>,
    /// A problem met while reading this partition.
    pub error: Option<String>,
}

/// The whole image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Image size in bytes.
    pub size: u64,
    /// Bytes per sector of the partition table.
    pub sector_size: u64,
    /// Disk GUID.
    pub disk_guid: crate::Guid,
    /// Whether the backup header sits in the last sector, as it should.
    pub backup_at_end: bool,
    /// Partitions in table order.
    pub partitions: Vec<PartitionReport>,
    /// GRUB's BIOS boot code in the MBR, if there is some.
    pub bios_boot: Option<crate::grub_pc::InstalledGrub>,
    /// The image's ISO 9660 view and El Torito entries, if it has them.
    pub iso: Option<crate::iso9660::IsoSummary>,
}

/// Errors from inspecting an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// No readable GPT.
    #[error("no GUID partition table found: {0}")]
    NoTable(#[from] GptError),
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads the image in `disk`.
pub fn inspect<R: Read + Seek>(disk: &mut R) -> Result<Report, InspectError> {
    let size = disk.seek(SeekFrom::End(0))?;
    let table = read_table(disk)?;
    let ss = table.sector_size;
    let mut partitions = Vec::new();
    for p in &table.partitions {
        let (offset, len) = (p.offset(ss), p.len(ss));
        let mut rep = PartitionReport {
            entry: p.clone(),
            type_name: type_name(p.type_guid),
            offset,
            size: len,
            filesystem: None,
            boot_files: Vec::new(),
            boot_entries: Vec::new(),
            error: None,
        };
        if offset + len > size {
            rep.error = Some(format!(
                "partition ends at byte {}, beyond the image ({size} bytes)",
                offset + len
            ));
            partitions.push(rep);
            continue;
        }
        let mut part = Slice::new(&mut *disk, offset, len);
        rep.filesystem = probe(&mut part)?;
        if rep.filesystem.as_ref().is_some_and(|f| f.kind == "vfat") {
            match read_contents(Slice::new(&mut *disk, offset, len), 0, len) {
                Ok(c) => {
                    if let Some(fs) = rep.filesystem.as_mut() {
                        fs.used_bytes = Some(c.used_bytes);
                    }
                    if rep.type_name == Some("esp") {
                        rep.boot_files = c.files;
                        for (path, text) in &c.grub_cfgs {
                            rep.boot_entries.extend(crate::grubcfg::entries(path, text));
                        }
                    }
                }
                Err(e) => rep.error = Some(format!("reading FAT filesystem: {e}")),
            }
        }
        partitions.push(rep);
    }
    Ok(Report {
        size,
        sector_size: ss,
        disk_guid: table.disk_guid,
        backup_at_end: table.backup_lba == size / ss - 1,
        partitions,
        bios_boot: read_bios_boot(disk, size)?,
        iso: crate::iso9660::read_view(disk)?,
    })
}

fn read_bios_boot<R: Read + Seek>(
    disk: &mut R,
    size: u64,
) -> io::Result<Option<crate::grub_pc::InstalledGrub>> {
    let mut mbr = [0u8; 512];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut mbr)?;
    let Some(at) = crate::grub_pc::core_sector(&mbr) else {
        return Ok(None);
    };
    let mut first = [0u8; 512];
    // The sector number comes from the disk: anything past its end reads as "not found".
    let start = at
        .checked_mul(512)
        .filter(|s| s.checked_add(512).is_some_and(|e| e <= size));
    let Some(start) = start else {
        return Ok(Some(crate::grub_pc::InstalledGrub {
            core_sector: at,
            core_sectors: 0,
        }));
    };
    disk.seek(SeekFrom::Start(start))?;
    disk.read_exact(&mut first)?;
    Ok(Some(crate::grub_pc::installed(at, &first)))
}
