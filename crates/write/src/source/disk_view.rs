//! A disk read as an image: the first bytes of a block device, of which only some ranges
//! are read (the rest is given as zeros, never read) and some bytes are replaced. This
//! is how `oneimage install` hands the medium it booted from to the writer: the free
//! blocks of its root filesystem become zeros, and its partition table is the one of an
//! image exactly as long as what is copied.

use super::pipe::{self, PipeReader, CHUNK};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// What to read from the device, and what to put in place of some of its bytes.
#[derive(Debug, Clone)]
pub struct DiskView {
    /// The device (or file) read.
    pub device: PathBuf,
    /// Bytes of the image: the device's first `extent` bytes.
    pub extent: u64,
    /// Byte ranges `[start, end)` read from the device, sorted and not overlapping;
    /// every other byte of the extent is zero.
    pub read: Vec<(u64, u64)>,
    /// Bytes replacing the device's at an offset, applied in order after the reads.
    pub patches: Vec<(u64, Vec<u8>)>,
}

impl DiskView {
    /// Bytes read from the device.
    pub fn bytes_read(&self) -> u64 {
        self.read.iter().map(|(a, b)| b - a).sum()
    }

    /// Fills `buf` with the image's bytes at `off`.
    pub fn fill(&self, file: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
        buf.fill(0);
        let end = off + buf.len() as u64;
        let first = self.read.partition_point(|&(_, e)| e <= off);
        for &(a, b) in self.read[first..].iter().take_while(|&&(a, _)| a < end) {
            let (from, to) = (a.max(off), b.min(end));
            file.read_exact_at(&mut buf[(from - off) as usize..(to - off) as usize], from)
                .map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!("reading {} at byte {from}: {e}", self.device.display()),
                    )
                })?;
        }
        for (at, bytes) in &self.patches {
            let (a, b) = (*at, at + bytes.len() as u64);
            let (from, to) = (a.max(off), b.min(end));
            if from < to {
                buf[(from - off) as usize..(to - off) as usize]
                    .copy_from_slice(&bytes[(from - a) as usize..(to - a) as usize]);
            }
        }
        Ok(())
    }

    /// Streams the view from `file` on a producer thread.
    pub fn reader(self: &Arc<Self>, file: Arc<File>) -> PipeReader {
        let view = self.clone();
        pipe::spawn_with(view.device.display().to_string(), move |sink| {
            let mut off = 0u64;
            while off < view.extent {
                let n = ((view.extent - off) as usize).min(CHUNK);
                let mut buf = vec![0u8; n];
                view.fill(&file, &mut buf, off)?;
                sink.send(buf)?;
                off += n as u64;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_listed_ranges_are_read_and_patches_win() {
        let mut tmp = tempfile::NamedTempFile::new().unwrap();
        let data: Vec<u8> = (0..3 * CHUNK + 100).map(|i| (i % 251) as u8 + 1).collect();
        io::Write::write_all(&mut tmp, &data).unwrap();
        let view = Arc::new(DiskView {
            device: tmp.path().to_path_buf(),
            extent: data.len() as u64 - 50,
            read: vec![
                (10, 20),
                (CHUNK as u64 - 5, CHUNK as u64 + 5),
                (3 * CHUNK as u64, 3 * CHUNK as u64 + 40),
            ],
            patches: vec![(15, vec![0xee; 10]), (CHUNK as u64 * 3 + 45, vec![7; 10])],
        });
        let file = Arc::new(File::open(tmp.path()).unwrap());
        let mut out = Vec::new();
        io::Read::read_to_end(&mut view.reader(file), &mut out).unwrap();
        let mut want = vec![0u8; data.len() - 50];
        for &(a, b) in &view.read {
            want[a as usize..b as usize].copy_from_slice(&data[a as usize..b as usize]);
        }
        want[15..25].fill(0xee);
        want[3 * CHUNK + 45..3 * CHUNK + 50].fill(7);
        assert_eq!(out.len(), want.len());
        assert!(out == want, "the view differs from what was asked");
        assert_eq!(view.bytes_read(), 10 + 10 + 40);
    }
}
