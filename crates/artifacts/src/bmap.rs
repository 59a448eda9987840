//! Making the block map of an image file: its data extents (everything but holes,
//! found with SEEK_DATA / SEEK_HOLE) rounded out to whole blocks, each with a SHA-256.
//! Blocks of zeros that are data stay mapped: they may be partition table entries, free
//! FAT entries or filesystem metadata, and a writer that skipped them would leave the
//! target's old bytes there. `bmaptool create` maps the same blocks.

use anyhow::{Context, Result};
use oneimage_format::bmap::{Bmap, Range, BLOCK_SIZE};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// Creates the map of `image`: every block holding part of a data extent is mapped,
/// holes are not. The result depends only on the content and on where the holes are.
pub fn create(image: &Path) -> Result<Bmap> {
    let f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let size = f.metadata()?.len();
    let mut ranges: Vec<Range> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    for (start, end) in data_extents(&f, size)
        .with_context(|| format!("finding the data extents of {}", image.display()))?
    {
        let mut h = Sha256::new();
        let mut off = start;
        while off < end {
            let n = ((end - off) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], off)
                .with_context(|| format!("reading {} at byte {off}", image.display()))?;
            h.update(&buf[..n]);
            off += n as u64;
        }
        ranges.push(Range {
            first: start / BLOCK_SIZE,
            last: end.div_ceil(BLOCK_SIZE) - 1,
            sha256: Some(h.finalize().into()),
        });
    }
    Ok(Bmap {
        image_size: size,
        block_size: BLOCK_SIZE,
        ranges,
    })
}

/// Data extents of `f` rounded out to whole blocks (the last one cut at the file's end)
/// and merged where they touch; the whole file when the filesystem cannot tell holes.
pub fn data_extents(f: &File, size: u64) -> Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom as S};
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut off = 0u64;
    while off < size {
        let data = match seek(f, S::Data(off)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => {
                return Ok(if size == 0 { vec![] } else { vec![(0, size)] })
            }
            Err(e) => return Err(e).context("SEEK_DATA"),
        };
        if data >= size {
            break;
        }
        let hole = seek(f, S::Hole(data)).context("SEEK_HOLE")?.min(size);
        let a = data / BLOCK_SIZE * BLOCK_SIZE;
        let b = hole
            .div_ceil(BLOCK_SIZE)
            .saturating_mul(BLOCK_SIZE)
            .min(size);
        match out.last_mut() {
            Some(l) if l.1 >= a => l.1 = l.1.max(b),
            _ => out.push((a, b)),
        }
        off = hole.max(data + 1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_data_is_mapped_holes_are_not() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("img");
        let f = File::create(&p).unwrap();
        f.set_len(64 << 20).unwrap();
        // Written zeros at 8 MiB are data; bytes at 16 MiB + 100 are data.
        f.write_all_at(&vec![0u8; 1 << 20], 8 << 20).unwrap();
        f.write_all_at(b"x", (16 << 20) + 100).unwrap();
        f.sync_all().unwrap();
        let m = create(&p).unwrap();
        assert_eq!(m.image_size, 64 << 20);
        let mapped: Vec<(u64, u64)> = m.ranges.iter().map(|r| m.byte_range(r)).collect();
        assert!(
            mapped.iter().any(|&(a, b)| a <= 8 << 20 && b >= 9 << 20),
            "written zeros are mapped: {mapped:?}"
        );
        assert!(mapped
            .iter()
            .any(|&(a, b)| a <= (16 << 20) + 100 && b > (16 << 20) + 100));
        assert!(
            m.mapped_bytes() < 4 << 20,
            "holes are not mapped: {mapped:?}"
        );
    }
}
