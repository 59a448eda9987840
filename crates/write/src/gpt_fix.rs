//! Moving the backup GPT to the end of a target larger than the image, so firmware and
//! partitioning tools see a consistent table covering the whole disk.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::path::Path;

/// If `dev` is larger than the image and the image has a GPT whose backup sits at the
/// image's end, rewrites both headers so the backup is at the disk's end. Returns
/// whether anything changed. The partitions themselves are untouched.
pub fn move_backup_to_end(file: &File, dev: &Path, image_size: u64) -> Result<bool> {
    let mut f = file;
    let disk_size = f.seek(SeekFrom::End(0))?;
    if disk_size <= image_size {
        return Ok(false);
    }
    let moved = oneimage_format::gpt::move_backup_to_end(&mut f)
        .with_context(|| format!("{}: moving the backup partition table", dev.display()))?;
    if !moved {
        return Ok(false);
    }
    f.sync_all()?;
    let t = oneimage_format::gpt::read_table(&mut f)
        .with_context(|| format!("{}: reading the partition table back", dev.display()))?;
    if t.backup_lba != disk_size / t.sector_size - 1 {
        anyhow::bail!(
            "{}: the backup partition table is at LBA {} after moving it, expected {}",
            dev.display(),
            t.backup_lba,
            disk_size / t.sector_size - 1
        );
    }
    reread_partitions(f);
    Ok(true)
}

/// Asks the kernel to read the new partition table (BLKRRPART); errors are ignored
/// (a loop device without partition scanning refuses, which is harmless).
pub fn reread_partitions(f: &File) {
    // BLKRRPART = _IO(0x12, 95)
    const BLKRRPART: rustix::ioctl::Opcode = 0x125f;
    // SAFETY: BLKRRPART takes no argument and only reads the fd's device.
    let _ = unsafe { rustix::ioctl::ioctl(f, rustix::ioctl::NoArg::<BLKRRPART>::new()) };
}
