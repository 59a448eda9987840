//! Reading a FAT filesystem (the ESP) without mounting it: usage and the files it holds.

use crate::slice::Slice;
use std::io::{self, Read, Seek};

/// A FAT volume id as blkid, the kernel's by-uuid names and GRUB spell it: `78D0-DCFD`.
pub fn volume_id_text(id: u32) -> String {
    format!("{:04X}-{:04X}", id >> 16, id & 0xffff)
}

/// A file found on a FAT filesystem.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FatFile {
    /// Absolute path with `/` separators, as stored (long names preferred).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
}

/// What a FAT filesystem holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FatContents {
    /// Bytes in allocated clusters.
    pub used_bytes: u64,
    /// Every regular file, sorted by path.
    pub files: Vec<FatFile>,
    /// Contents of the GRUB configuration files found (`grub.cfg` anywhere, up to 1 MiB).
    pub grub_cfgs: Vec<(String, String)>,
}

/// Lists every file of the FAT filesystem in `[offset, offset + len)` of `disk`.
pub fn read_contents<R: Read + Seek>(disk: R, offset: u64, len: u64) -> io::Result<FatContents> {
    let fs = fatfs::FileSystem::new(
        Slice::new(disk, offset, len),
        fatfs::FsOptions::new().update_accessed_date(false),
    )?;
    let stats = fs.stats()?;
    let used =
        (stats.total_clusters() - stats.free_clusters()) as u64 * stats.cluster_size() as u64;
    let mut files = Vec::new();
    let mut grub_cfgs = Vec::new();
    let mut stack = vec![(String::new(), fs.root_dir())];
    while let Some((prefix, dir)) = stack.pop() {
        for entry in dir.iter() {
            let entry = entry?;
            let name = entry.file_name();
            if name == "." || name == ".." {
                continue;
            }
            let path = format!("{prefix}/{name}");
            if entry.is_dir() {
                stack.push((path, entry.to_dir()));
            } else {
                if name.eq_ignore_ascii_case("grub.cfg") && entry.len() <= 1 << 20 {
                    let mut text = String::new();
                    entry.to_file().read_to_string(&mut text)?;
                    grub_cfgs.push((path.clone(), text));
                }
                files.push(FatFile {
                    path,
                    size: entry.len(),
                });
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(FatContents {
        used_bytes: used,
        files,
        grub_cfgs,
    })
}
