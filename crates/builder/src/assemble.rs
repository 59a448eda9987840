//! Assembly: the image file, the ESP copied into place (its holes stay holes), the GPT,
//! GRUB for BIOS, and the ISO 9660 view.

use crate::grub::BiosImages;
use crate::plan::{Plan, SECTOR};
use anyhow::{bail, Context, Result};
use oneimage_format::gpt::Partition;
use oneimage_format::size::align_up;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Creates (or recreates) the image file at `path`, sparse, `bytes` long.
pub fn create_image(path: &Path, bytes: u64) -> Result<()> {
    let _ = std::fs::remove_file(path);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_len(bytes)
        .with_context(|| format!("sizing {}", path.display()))?;
    Ok(())
}

/// Completes the image at `disk_path`, whose root filesystem is already in place: copies
/// the ESP in, writes the partition table, installs GRUB for BIOS when the plan has a
/// BIOS boot partition, and syncs. Returns where GRUB's El Torito image went.
pub fn finish(
    plan: &Plan,
    esp: &Path,
    bios: Option<&BiosImages>,
    disk_path: &Path,
) -> Result<Option<(u64, u64)>> {
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk_path)
        .with_context(|| format!("opening {}", disk_path.display()))?;
    if disk.metadata()?.len() != plan.total_bytes {
        anyhow::bail!(
            "{} is not {} bytes long as planned",
            disk_path.display(),
            plan.total_bytes
        );
    }
    copy_sparse(esp, &disk, plan.esp.offset(SECTOR))?;
    oneimage_format::gpt::write_table(&mut disk, SECTOR, plan.disk_guid, &plan.partitions())
        .with_context(|| format!("writing the partition table of {}", disk_path.display()))?;
    let cdrom = match (&plan.bios_boot, bios) {
        (Some(part), Some(images)) => Some(
            install_bios(&disk, part, images)
                .with_context(|| format!("installing GRUB for BIOS in {}", disk_path.display()))?,
        ),
        (None, None) => None,
        _ => bail!("internal error: a BIOS boot partition needs GRUB's BIOS images, and only it"),
    };
    disk.sync_all()?;
    Ok(cdrom)
}

/// Does what `grub-bios-setup` would: boot code into the MBR (partition table kept),
/// core.img at the start of the BIOS boot partition; the El Torito image goes after it,
/// 2048-byte aligned. Returns the El Torito image's (offset, length).
fn install_bios(disk: &File, part: &Partition, images: &BiosImages) -> Result<(u64, u64)> {
    use oneimage_format::grub_pc::{boot_sector, place_core};
    use oneimage_format::iso9660::SECTOR as ISO_SECTOR;
    let mut mbr = [0u8; 512];
    disk.read_exact_at(&mut mbr, 0)?;
    let mbr = boot_sector(&images.boot_sector, &mbr, part.first_lba)?;
    let mut core = images.core.clone();
    place_core(&mut core, part.first_lba)?;
    let start = part.offset(SECTOR);
    let cdrom_at = align_up(start + core.len() as u64, ISO_SECTOR);
    let end = start + part.len(SECTOR);
    if cdrom_at + images.cdrom.len() as u64 > end {
        bail!(
            "GRUB's BIOS images ({} + {} bytes) do not fit the {}-byte BIOS boot partition",
            core.len(),
            images.cdrom.len(),
            part.len(SECTOR)
        );
    }
    disk.write_all_at(&core, start)?;
    disk.write_all_at(&images.cdrom, cdrom_at)?;
    disk.write_all_at(&mbr, 0)?;
    Ok((cdrom_at, images.cdrom.len() as u64))
}

/// Copies the data ranges of `src` into `dst` at `offset`, skipping only holes: zero
/// blocks that are data (free FAT entries, for one) are written, so they are mapped in
/// the image's bmap and land on a used stick as zeros.
pub fn copy_sparse(src: &Path, dst: &File, offset: u64) -> Result<()> {
    use rustix::fs::{seek, SeekFrom};
    let f = File::open(src).with_context(|| format!("opening {}", src.display()))?;
    let len = f.metadata()?.len();
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    while pos < len {
        let start = match seek(&f, SeekFrom::Data(pos)) {
            Ok(s) => s,
            Err(rustix::io::Errno::NXIO) => break,
            Err(e) => return Err(e).with_context(|| format!("finding data in {}", src.display())),
        };
        let end = seek(&f, SeekFrom::Hole(start)).unwrap_or(len).min(len);
        let mut p = start;
        while p < end {
            let n = ((end - p) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], p)?;
            dst.write_all_at(&buf[..n], offset + p)?;
            p += n as u64;
        }
        pos = end;
    }
    Ok(())
}

/// Makes the finished image at `disk_path` an ISO 9660 volume as well: its files ESP.IMG
/// and ROOT.IMG are the partitions' bytes, El Torito's BIOS entry is GRUB's CD image
/// (`bios_cdrom`) and its UEFI entry the ESP. `EFI/BOOT/GRUB.CFG` is for Debian's signed
/// GRUB, which, started from a disc, reads `grub.cfg` from the disc's directory it was
/// loaded from, not from the ESP.
pub fn write_iso_view(
    plan: &Plan,
    label: &str,
    epoch: i64,
    esp_volume_id: u32,
    bios_cdrom: Option<(u64, u64)>,
    disk_path: &Path,
) -> Result<()> {
    use oneimage_format::iso9660::{write_view, FileData, IsoFile, IsoView};
    let extent = |path: &str, offset: u64, len: u64| IsoFile {
        path: path.to_string(),
        data: FileData::Extent { offset, len },
    };
    let mut files = vec![
        extent("ESP.IMG", plan.esp.offset(SECTOR), plan.esp.len(SECTOR)),
        extent("ROOT.IMG", plan.root.offset(SECTOR), plan.root.len(SECTOR)),
        IsoFile {
            path: "EFI/BOOT/GRUB.CFG".into(),
            data: FileData::Inline(crate::grub::disc_config(esp_volume_id).into_bytes()),
        },
    ];
    if let Some((offset, len)) = bios_cdrom {
        files.push(extent("BOOT/BIOS.IMG", offset, len));
    }
    let view = IsoView {
        volume_id: label.to_string(),
        epoch,
        image_bytes: plan.total_bytes,
        files,
        bios_boot: bios_cdrom,
        efi_boot: Some((plan.esp.offset(SECTOR), plan.esp.len(SECTOR))),
    };
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk_path)
        .with_context(|| format!("opening {}", disk_path.display()))?;
    write_view(&mut disk, &view)
        .with_context(|| format!("writing the ISO 9660 view of {}", disk_path.display()))?;
    disk.sync_all()?;
    Ok(())
}
