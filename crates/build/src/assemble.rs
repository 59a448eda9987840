//! Assembly: partition images copied into place (holes stay holes), then the GPT.

use crate::plan::{Plan, SECTOR};
use anyhow::{Context, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Writes the disk image for `plan` at `out` from the ESP and root filesystem images.
pub fn assemble(plan: &Plan, esp: &Path, root: &Path, out: &Path) -> Result<()> {
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(out)
        .with_context(|| format!("creating {}", out.display()))?;
    disk.set_len(plan.total_bytes)?;
    copy_sparse(esp, &disk, plan.esp.offset(SECTOR))?;
    copy_sparse(root, &disk, plan.root.offset(SECTOR))?;
    oneimage_format::gpt::write_table(
        &mut disk,
        SECTOR,
        plan.disk_guid,
        &[plan.esp.clone(), plan.root.clone()],
    )
    .with_context(|| format!("writing the partition table of {}", out.display()))?;
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
