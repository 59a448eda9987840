//! Moving the backup GPT to the end of a target larger than the image, so firmware and
//! partitioning tools see a consistent table covering the whole disk.

use anyhow::{Context, Result};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
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
    // gptman trusts a header's entry count and size (it allocates and loops by them): a
    // crafted image's table reaches it only once read_table has checked every field.
    if oneimage_format::gpt::read_table(&mut f).is_err() {
        return Ok(false); // no valid GPT in the image: nothing to move
    }
    f.seek(SeekFrom::Start(0))?;
    let mut gpt = match gptman::GPT::find_from(&mut f) {
        Ok(g) => g,
        Err(_) => return Ok(false), // no GPT in the image: nothing to move
    };
    let ss = gpt.sector_size;
    if gpt.header.backup_lba == disk_size / ss - 1 {
        return Ok(false);
    }
    let first_usable = gpt.header.first_usable_lba;
    gpt.header
        .update_from(&mut f, ss)
        .with_context(|| format!("{}: resizing the partition table", dev.display()))?;
    gpt.header.first_usable_lba = first_usable;
    gpt.write_into(&mut f)
        .with_context(|| format!("{}: writing the partition table", dev.display()))?;
    if protective_mbr(f)? {
        gptman::GPT::write_protective_mbr_into(&mut f, ss)
            .with_context(|| format!("{}: updating the protective MBR", dev.display()))?;
    }
    f.sync_all()?;
    f.seek(SeekFrom::Start(0))?;
    let t = oneimage_format::gpt::read_table(&mut f)
        .with_context(|| format!("{}: reading the partition table back", dev.display()))?;
    if t.backup_lba != disk_size / ss - 1 {
        anyhow::bail!(
            "{}: the backup partition table is at LBA {} after moving it, expected {}",
            dev.display(),
            t.backup_lba,
            disk_size / ss - 1
        );
    }
    reread_partitions(f);
    Ok(true)
}

fn protective_mbr(mut f: &File) -> Result<bool> {
    let mut mbr = [0u8; 512];
    f.seek(SeekFrom::Start(0))?;
    f.read_exact(&mut mbr)?;
    let types: Vec<u8> = (0..4).map(|i| mbr[446 + 16 * i + 4]).collect();
    Ok(types[0] == 0xee && types[1..].iter().all(|&t| t == 0))
}

/// Asks the kernel to read the new partition table (BLKRRPART); errors are ignored
/// (a loop device without partition scanning refuses, which is harmless).
pub fn reread_partitions(f: &File) {
    // BLKRRPART = _IO(0x12, 95)
    const BLKRRPART: rustix::ioctl::Opcode = 0x125f;
    // SAFETY: BLKRRPART takes no argument and only reads the fd's device.
    let _ = unsafe { rustix::ioctl::ioctl(f, rustix::ioctl::NoArg::<BLKRRPART>::new()) };
}
