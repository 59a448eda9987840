//! The disk layout, decided up front from the partition sizes: every offset is known
//! before a byte is written, and the plan can be printed.

use oneimage_format::arch::Arch;
use oneimage_format::gpt::{Partition, TYPE_BIOS_BOOT, TYPE_ESP};
use oneimage_format::size::{align_up, format_size};
use oneimage_format::Guid;
use std::fmt;

/// Sector size of the disk image.
pub const SECTOR: u64 = 512;
/// Partition alignment.
pub const ALIGN: u64 = 1 << 20;
/// The BIOS boot partition fills the gap between the ISO 9660 view (which ends at
/// 64 KiB) and the ESP at 1 MiB: GRUB's core.img for disks and its El Torito image.
const BIOS_BOOT_FIRST: u64 = oneimage_format::iso9660::END / SECTOR;

/// The planned image: size, disk GUID and partitions.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Total image size in bytes.
    pub total_bytes: u64,
    /// Disk GUID.
    pub disk_guid: Guid,
    /// The ESP.
    pub esp: Partition,
    /// The root partition.
    pub root: Partition,
    /// GRUB's BIOS boot partition (x86_64 images), before the ESP.
    pub bios_boot: Option<Partition>,
}

/// The root partition's number in the table (GRUB's `gpt2`).
pub const ROOT_NUMBER: u32 = 2;

/// Identifiers derived from the seed.
pub struct Ids {
    /// Disk GUID.
    pub disk: Guid,
    /// ESP partition GUID.
    pub esp_part: Guid,
    /// Root partition GUID (`root=PARTUUID=`).
    pub root_part: Guid,
    /// BIOS boot partition GUID.
    pub bios_part: Guid,
    /// Root filesystem UUID.
    pub root_fs: Guid,
    /// FAT volume id of the ESP.
    pub esp_volume_id: u32,
}

impl Ids {
    /// Derives every identifier of an image from `seed`.
    pub fn from_seed(seed: &str) -> Ids {
        let vol = Guid::derive(seed, "esp-volume-id").0;
        Ids {
            disk: Guid::derive(seed, "disk"),
            esp_part: Guid::derive(seed, "esp-partition"),
            root_part: Guid::derive(seed, "root-partition"),
            bios_part: Guid::derive(seed, "bios-boot-partition"),
            root_fs: Guid::derive(seed, "root-filesystem"),
            esp_volume_id: u32::from_be_bytes([vol[0], vol[1], vol[2], vol[3]]),
        }
    }
}

impl Plan {
    /// Lays out an ESP of `esp_bytes` and a root of `root_bytes`, 1 MiB aligned, with a
    /// BIOS boot partition before them when `bios` is set.
    pub fn new(ids: &Ids, arch: Arch, esp_bytes: u64, root_bytes: u64, bios: bool) -> Plan {
        let esp_first = ALIGN / SECTOR;
        let esp_len = align_up(esp_bytes, ALIGN) / SECTOR;
        let root_first = esp_first + esp_len;
        let root_len = align_up(root_bytes, ALIGN) / SECTOR;
        // 1 MiB after the root holds the backup GPT (33 sectors) and keeps the end aligned.
        let total_bytes = (root_first + root_len) * SECTOR + ALIGN;
        Plan {
            total_bytes,
            disk_guid: ids.disk,
            esp: Partition {
                number: 1,
                type_guid: TYPE_ESP.parse().expect("constant"),
                guid: ids.esp_part,
                name: "esp".into(),
                first_lba: esp_first,
                last_lba: esp_first + esp_len - 1,
                attributes: 0,
            },
            root: Partition {
                number: ROOT_NUMBER,
                type_guid: arch.root_type().parse().expect("constant"),
                guid: ids.root_part,
                name: oneimage_format::expansion::root_partition_name(arch),
                first_lba: root_first,
                last_lba: root_first + root_len - 1,
                attributes: 0,
            },
            bios_boot: bios.then(|| Partition {
                number: 3,
                type_guid: TYPE_BIOS_BOOT.parse().expect("constant"),
                guid: ids.bios_part,
                name: "bios-boot".into(),
                first_lba: BIOS_BOOT_FIRST,
                last_lba: esp_first - 1,
                attributes: 0,
            }),
        }
    }

    /// The partitions in table order.
    pub fn partitions(&self) -> Vec<Partition> {
        let mut v = vec![self.esp.clone(), self.root.clone()];
        v.extend(self.bios_boot.clone());
        v
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "disk {} ({}), GUID {}",
            format_size(self.total_bytes),
            self.total_bytes,
            self.disk_guid
        )?;
        for p in &self.partitions() {
            writeln!(
                f,
                "  p{} {:<12} offset {:>12}  size {:>10}  PARTUUID {}",
                p.number,
                p.name,
                p.offset(SECTOR),
                format_size(p.len(SECTOR)),
                p.guid
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_ordered() {
        let p = Plan::new(
            &Ids::from_seed("s"),
            Arch::X86_64,
            64 << 20,
            100 << 20,
            true,
        );
        assert_eq!(p.esp.offset(SECTOR), 1 << 20);
        assert_eq!(p.root.offset(SECTOR), 65 << 20);
        assert_eq!(p.root.len(SECTOR), 100 << 20);
        assert_eq!(p.total_bytes, 166 << 20);
        let bios = p.bios_boot.unwrap();
        assert_eq!(bios.offset(SECTOR), 64 << 10);
        assert_eq!(bios.offset(SECTOR) + bios.len(SECTOR), 1 << 20);
    }
}
