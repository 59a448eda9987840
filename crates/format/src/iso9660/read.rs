//! Reading any ISO 9660 volume's primary descriptor, directory tree and El Torito
//! catalog: what `inspect` shows and the tests compare with xorriso.

use super::eltorito::parse_catalog;
use super::{le32, IsoEntry, IsoSummary, BOOT_RECORD, PVD, SECTOR};
use std::collections::BTreeSet;
use std::io::{self, Read, Seek, SeekFrom};

/// Limits for hostile input, far beyond any view oneimage writes (or xorriso's for a
/// boot disc): directory depth, sectors of one directory, directories and files read.
/// A volume beyond them is listed up to them.
const MAX_DEPTH: usize = 8;
const MAX_DIR_SECTORS: u64 = 64;
const MAX_DIRS: usize = 256;
const MAX_FILES: usize = 4096;

fn read_sector<R: Read + Seek>(r: &mut R, lba: u64) -> io::Result<Vec<u8>> {
    let mut b = vec![0u8; SECTOR as usize];
    r.seek(SeekFrom::Start(lba * SECTOR))?;
    r.read_exact(&mut b)?;
    Ok(b)
}

/// Reads the ISO 9660 view of `r`, if it has one (any ISO 9660 volume, not only ours).
pub fn read_view<R: Read + Seek>(r: &mut R) -> io::Result<Option<IsoSummary>> {
    let len = r.seek(SeekFrom::End(0))?;
    if len < (PVD + 1) * SECTOR {
        return Ok(None);
    }
    let pvd = read_sector(r, PVD)?;
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return Ok(None);
    }
    let volume_id = String::from_utf8_lossy(&pvd[40..72]).trim_end().to_string();
    let volume_bytes = le32(&pvd, 80) * u64::from(u16::from_le_bytes([pvd[128], pvd[129]]));
    let mut files: Vec<IsoEntry> = Vec::new();
    // Breadth first, so the root's files come first. A directory is read once, however
    // many records name it (a record naming its own parent would loop).
    let mut dirs = vec![(String::new(), le32(&pvd, 156 + 2), le32(&pvd, 156 + 10), 0)];
    let mut read = BTreeSet::new();
    let mut i = 0;
    while i < dirs.len() {
        let (prefix, lba, size, depth) = dirs[i].clone();
        i += 1;
        if !read.insert(lba) {
            continue;
        }
        let mut continuing = false;
        for s in 0..size.div_ceil(SECTOR).min(MAX_DIR_SECTORS) {
            if (lba + s + 1) * SECTOR > len {
                break;
            }
            let sec = read_sector(r, lba + s)?;
            let mut o = 0usize;
            while o < sec.len() && sec[o] != 0 {
                let rec = sec[o] as usize;
                if o + rec > sec.len() || rec < 34 {
                    break;
                }
                let (ext, size, flags, nlen) = (
                    le32(&sec, o + 2),
                    le32(&sec, o + 10),
                    sec[o + 25],
                    sec[o + 32] as usize,
                );
                let raw = &sec[o + 33..(o + 33 + nlen).min(o + rec)];
                o += rec;
                if nlen == 1 && raw[0] <= 1 {
                    continue;
                }
                let name = String::from_utf8_lossy(raw);
                let name = name.split(';').next().unwrap_or_default();
                let path = if prefix.is_empty() {
                    name.to_string()
                } else {
                    format!("{prefix}/{name}")
                };
                if flags & 2 != 0 {
                    if depth < MAX_DEPTH && dirs.len() < MAX_DIRS {
                        dirs.push((path, ext, size, depth + 1));
                    }
                    continue;
                }
                let full = files.len() >= MAX_FILES;
                match files.last_mut() {
                    Some(f) if continuing && f.path == path => f.extents.push((ext * SECTOR, size)),
                    _ if full => {}
                    _ => files.push(IsoEntry {
                        path,
                        extents: vec![(ext * SECTOR, size)],
                    }),
                }
                continuing = flags & 0x80 != 0;
            }
        }
    }
    let mut boot_entries = Vec::new();
    if len < (BOOT_RECORD + 1) * SECTOR {
        return Ok(Some(IsoSummary {
            volume_id,
            volume_bytes,
            files,
            boot_entries,
        }));
    }
    // El Torito puts its boot record right after the primary descriptor.
    let br = read_sector(r, BOOT_RECORD)?;
    if br[0] == 0 && &br[1..6] == b"CD001" && br[7..30] == *b"EL TORITO SPECIFICATION" {
        let at = le32(&br, 0x47);
        if (at + 1) * SECTOR <= len {
            boot_entries = parse_catalog(&read_sector(r, at)?);
        }
    }
    Ok(Some(IsoSummary {
        volume_id,
        volume_bytes,
        files,
        boot_entries,
    }))
}
