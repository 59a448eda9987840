//! Assembly: the image file, the ESP copied into place (holes stay holes), the GPT.

use crate::plan::{Plan, SECTOR};
use anyhow::{Context, Result};
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
/// the ESP in, writes the partition table and syncs.
pub fn finish(plan: &Plan, esp: &Path, disk_path: &Path) -> Result<()> {
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
    oneimage_format::gpt::write_table(
        &mut disk,
        SECTOR,
        plan.disk_guid,
        &[plan.esp.clone(), plan.root.clone()],
    )
    .with_context(|| format!("writing the partition table of {}", disk_path.display()))?;
    disk.sync_all()?;
    Ok(())
}

/// Copies the data ranges of `src` into `dst` at `offset`, skipping holes and zero blocks.
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
            if buf[..n].iter().any(|&b| b != 0) {
                dst.write_all_at(&buf[..n], offset + p)?;
            }
            p += n as u64;
        }
        pos = end;
    }
    Ok(())
}

/// Makes the finished image at `disk_path` an ISO 9660 volume as well: its files ESP.IMG
/// and ROOT.IMG are the partitions' bytes, and El Torito's UEFI entry is the ESP.
pub fn write_iso_view(plan: &Plan, label: &str, epoch: i64, disk_path: &Path) -> Result<()> {
    use oneimage_format::iso9660::{write_view, IsoFile, IsoView};
    let file = |name: &str, p: &oneimage_format::gpt::Partition| IsoFile {
        name: name.to_string(),
        offset: p.offset(SECTOR),
        len: p.len(SECTOR),
    };
    let view = IsoView {
        volume_id: label.to_string(),
        epoch,
        image_bytes: plan.total_bytes,
        files: vec![file("ESP.IMG", &plan.esp), file("ROOT.IMG", &plan.root)],
        efi_boot: Some((plan.esp.offset(SECTOR), plan.esp.len(SECTOR))),
    };
    let mut disk = std::fs::OpenOptions::new()
        .write(true)
        .open(disk_path)
        .with_context(|| format!("opening {}", disk_path.display()))?;
    write_view(&mut disk, &view)
        .with_context(|| format!("writing the ISO 9660 view of {}", disk_path.display()))?;
    disk.sync_all()?;
    Ok(())
}
