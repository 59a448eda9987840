//! First-boot growth: when the image sits on a disk larger than itself, move the backup
//! GPT to the end of the disk, extend the root partition to fill it, and grow the ext4
//! filesystem (online, which ext4 journals).
//!
//! Every step looks at the disk as it is, not at a "done" flag, so a boot interrupted at
//! any point (power loss) simply does what is left, and a finished disk is left alone.

use crate::cmdline::Grow;
use crate::disks::Found;
use crate::log::say;
use oneimage_format::gpt::{backup_at_end, read_table, write_table};
use oneimage_format::size::format_size;
use std::path::Path;

const MIB: u64 = 1 << 20;

/// The size of a block device in bytes, from sysfs (which counts 512-byte units
/// whatever the sector size).
pub fn sysfs_bytes(name: &str) -> Result<u64, String> {
    let p = format!("/sys/class/block/{name}/size");
    let s = std::fs::read_to_string(&p).map_err(|e| format!("reading {p}: {e}"))?;
    let units = s.trim().parse::<u64>().map_err(|e| format!("{p}: {e}"))?;
    units
        .checked_mul(512)
        .ok_or_else(|| format!("{p}: {units} sectors do not fit in 64 bits of bytes"))
}

/// Extends the root partition to the end of its disk (and the GPT with it) when the disk
/// has room after it. Does nothing when the root is not the last partition.
pub fn grow_partition(found: &Found, grow: Grow) -> Result<(), String> {
    if grow == Grow::Off {
        say("growth is off (oneimage.grow=off)");
        return Ok(());
    }
    let dev = format!("/dev/{}", found.disk);
    let mut disk = crate::disks::open_rw(&dev)?;
    let table =
        read_table(&mut disk).map_err(|e| format!("reading the partition table of {dev}: {e}"))?;
    // read_table checked the table against the disk's size: the partitions lie inside
    // it and the sector size is 512 or 4096.
    let ss = table.sector_size;
    let disk_bytes = sysfs_bytes(&found.disk)?;
    let last_lba = (disk_bytes / ss)
        .checked_sub(1)
        .ok_or_else(|| format!("{dev} is empty"))?;
    let root = table
        .partitions
        .iter()
        .find(|p| p.number == found.number)
        .ok_or_else(|| format!("partition {} vanished from {dev}", found.number))?;
    if table.partitions.iter().any(|p| p.first_lba > root.last_lba) {
        say("the root partition is not the last one on the disk; not growing it");
        return Ok(());
    }
    let target_end = target_end(root.first_lba, root.last_lba, last_lba, ss, grow);
    if target_end == root.last_lba && backup_at_end(&mut disk, ss) {
        say(&format!(
            "the root partition fills {dev} ({}); nothing to grow",
            format_size(disk_bytes)
        ));
        return Ok(());
    }
    say(&format!(
        "growing: {dev} is {}; moving the backup partition table to the end and the root partition from {} to {}",
        format_size(disk_bytes),
        format_size(root.len(ss)),
        format_size(
            target_end
                .saturating_add(1)
                .saturating_sub(root.first_lba)
                .saturating_mul(ss)
        )
    ));
    let mut parts = table.partitions.clone();
    for p in parts.iter_mut().filter(|p| p.number == found.number) {
        p.last_lba = target_end;
    }
    write_table(&mut disk, ss, table.disk_guid, &parts)
        .map_err(|e| format!("writing the partition table of {dev}: {e}"))?;
    disk.sync_all().map_err(|e| format!("syncing {dev}: {e}"))?;
    say("partition table written");
    crate::disks::reread_partitions(&disk, &dev, &found.node);
    Ok(())
}

/// The size in bytes of the block device `node` (a partition, or the unlocked root
/// under /dev/mapper, which sysfs knows only by its dm-N name).
fn device_bytes(node: &Path) -> Result<u64, String> {
    use std::io::{Seek, SeekFrom};
    let mut f =
        std::fs::File::open(node).map_err(|e| format!("opening {}: {e}", node.display()))?;
    f.seek(SeekFrom::End(0))
        .map_err(|e| format!("finding the size of {}: {e}", node.display()))
}

/// Grows the ext4 filesystem mounted at `mountpoint` from `node` to fill its device.
pub fn grow_filesystem(found: &Found, mountpoint: &str) -> Result<(), String> {
    let part_bytes = device_bytes(&found.node)?;
    let mut dev = std::fs::File::open(&found.node)
        .map_err(|e| format!("opening {}: {e}", found.node.display()))?;
    let fs = oneimage_format::probe::probe(&mut dev)
        .map_err(|e| format!("reading {}: {e}", found.node.display()))?
        .ok_or_else(|| {
            format!(
                "{} holds no filesystem oneimage knows",
                found.node.display()
            )
        })?;
    let block = ext4_block_size(&found.node)?;
    let want_blocks = part_bytes / block;
    if fs.total_bytes / block >= want_blocks {
        return Ok(());
    }
    say(&format!(
        "growing the root filesystem from {} to {}",
        format_size(fs.total_bytes),
        format_size(want_blocks * block)
    ));
    let dir = std::fs::File::open(mountpoint).map_err(|e| format!("opening {mountpoint}: {e}"))?;
    // EXT4_IOC_RESIZE_FS = _IOW('f', 16, __u64): the new size in filesystem blocks.
    // SAFETY: the kernel reads one u64 from the pointer Setter passes; fd is a directory
    // on the mounted ext4 filesystem.
    let r = unsafe {
        rustix::ioctl::ioctl(
            &dir,
            rustix::ioctl::Setter::<0x4008_6610, u64>::new(want_blocks),
        )
    };
    r.map_err(|e| format!("growing the filesystem on {mountpoint}: {e}"))?;
    say(&format!(
        "root filesystem grown to {}",
        format_size(want_blocks * block)
    ));
    Ok(())
}

fn ext4_block_size(node: &Path) -> Result<u64, String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f =
        std::fs::File::open(node).map_err(|e| format!("opening {}: {e}", node.display()))?;
    let mut sb = [0u8; 4];
    f.seek(SeekFrom::Start(1024 + 24))
        .and_then(|_| f.read_exact(&mut sb))
        .map_err(|e| format!("reading {}: {e}", node.display()))?;
    block_size(u32::from_le_bytes(sb)).ok_or_else(|| {
        format!(
            "{}: the superblock's block size field is {}, not 0 to 6 (1 to 64 KiB)",
            node.display(),
            u32::from_le_bytes(sb)
        )
    })
}

/// The block size an ext4 superblock's `s_log_block_size` means: 1 KiB to 64 KiB, or
/// nothing for a larger shift.
fn block_size(log: u32) -> Option<u64> {
    (log <= 6).then(|| 1024u64 << log)
}

/// The last LBA the root partition should end at: the last whole MiB before the backup
/// table (33 sectors at the end of the disk), at most `grow` bytes long, never shrinking.
/// A disk too small for that leaves the partition as it is.
pub fn target_end(first: u64, current_last: u64, disk_last_lba: u64, ss: u64, grow: Grow) -> u64 {
    let per_mib = (MIB / ss.max(1)).max(1);
    // Sectors before the backup table, rounded down to whole MiB.
    let Some(aligned) = disk_last_lba
        .checked_sub(32)
        .map(|sectors| sectors / per_mib * per_mib)
        .and_then(|s| s.checked_sub(1))
    else {
        return current_last;
    };
    let capped = match grow {
        Grow::UpTo(bytes) => aligned.min(first.saturating_add(bytes / ss.max(1)).saturating_sub(1)),
        Grow::Fill | Grow::Off => aligned,
    };
    capped.max(current_last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_is_aligned_capped_and_never_smaller() {
        // A 3 GiB disk; root starts at 65 MiB and ends at 1 GiB.
        let (first, last, disk_last) = (65 * 2048, 2 * 1024 * 1024 - 1, 3 * 2 * 1024 * 1024 - 1);
        let fill = target_end(first, last, disk_last, 512, Grow::Fill);
        assert_eq!((fill + 1) % 2048, 0, "ends on a MiB boundary");
        assert!(fill <= disk_last - 33 && fill > disk_last - 33 - 2048);
        let capped = target_end(first, last, disk_last, 512, Grow::UpTo(2 << 30));
        assert_eq!(capped, first + (2u64 << 30) / 512 - 1);
        assert_eq!(
            target_end(first, last, disk_last, 512, Grow::UpTo(1 << 20)),
            last
        );
        // 4096-byte sectors: 256 to the MiB.
        let (first4, last4, disk_last4) = (65 * 256, 1024 * 256 - 1, 3 * 1024 * 256 - 1);
        let fill4 = target_end(first4, last4, disk_last4, 4096, Grow::Fill);
        assert_eq!((fill4 + 1) % 256, 0);
        assert!(fill4 <= disk_last4 - 33 && fill4 > disk_last4 - 33 - 256);
    }

    #[test]
    fn target_never_underflows_or_overflows() {
        // Disks smaller than the backup table, zero-byte growth, limits at u64::MAX.
        for disk_last in [0, 1, 31, 32, 33, 2047] {
            assert_eq!(
                target_end(34, 40, disk_last, 512, Grow::Fill),
                40,
                "{disk_last}"
            );
        }
        assert_eq!(target_end(34, 40, 1 << 30, 512, Grow::UpTo(0)), 40);
        assert_eq!(target_end(34, 40, 1 << 30, 512, Grow::UpTo(100)), 40);
        let huge = target_end(
            u64::MAX - 5,
            u64::MAX - 1,
            u64::MAX,
            512,
            Grow::UpTo(u64::MAX),
        );
        assert_eq!(huge, u64::MAX - 1);
        assert!(target_end(2048, 4095, u64::MAX, 512, Grow::Fill) < u64::MAX - 32);
    }

    #[test]
    fn block_size_shifts_are_bounded() {
        assert_eq!(block_size(0), Some(1024));
        assert_eq!(block_size(2), Some(4096));
        assert_eq!(block_size(6), Some(65536));
        assert_eq!(block_size(7), None);
        assert_eq!(block_size(u32::MAX), None);
    }
}
