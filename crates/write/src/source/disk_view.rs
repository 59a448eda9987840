//! A disk read as an image: the first bytes of a block device, of which only some ranges
//! are read (the rest is given as zeros, never read) and some bytes are replaced. This
//! is how `oneimage install` hands the medium it booted from to the writer: the free
//! blocks of its root filesystem become zeros, and its partition table is the one of an
//! image exactly as long as what is copied. An encrypted install replaces the root
//! partition with a LUKS2 volume made on the way ([`EncryptedPartition`]): the target
//! never holds the root's plaintext.

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
    /// A partition written as a LUKS2 volume, replacing whatever else gives its bytes.
    pub encrypted: Option<EncryptedPartition>,
}

/// A partition of the image written as a LUKS2 volume: its header (from the
/// partition's start to the data segment), then a filesystem read from another device
/// and encrypted with aes-xts-plain64 under the volume key, to the partition's end.
#[derive(Clone)]
pub struct EncryptedPartition {
    /// The partition's first byte in the image.
    pub at: u64,
    /// Its length.
    pub len: u64,
    /// The LUKS2 header and keyslots area; the data segment starts after it.
    pub header: Arc<Vec<u8>>,
    /// The volume key.
    pub key: Arc<[u8; 64]>,
    /// The device the plaintext filesystem is read from.
    pub source: PathBuf,
    /// Where on `source` the plaintext starts.
    pub source_at: u64,
    /// Byte ranges of the plaintext (from its start) read from `source`, sorted and not
    /// overlapping; every other byte of the payload is encrypted zeros.
    pub read: Vec<(u64, u64)>,
}

impl std::fmt::Debug for EncryptedPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("EncryptedPartition")
            .field("at", &self.at)
            .field("len", &self.len)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Reads into `buf` (bytes `off..` of a stream) the parts of `ranges` (sorted, not
/// overlapping) that fall in it, from `file` (named `path`), where stream byte `x` is
/// file byte `base + x`; other bytes of `buf` are left as they are.
fn read_ranges(
    file: &File,
    path: &std::path::Path,
    base: u64,
    ranges: &[(u64, u64)],
    buf: &mut [u8],
    off: u64,
) -> io::Result<()> {
    let end = off + buf.len() as u64;
    let first = ranges.partition_point(|&(_, e)| e <= off);
    for &(a, b) in ranges[first..].iter().take_while(|&&(a, _)| a < end) {
        let (from, to) = (a.max(off), b.min(end));
        file.read_exact_at(
            &mut buf[(from - off) as usize..(to - off) as usize],
            base + from,
        )
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reading {} at byte {}: {e}", path.display(), base + from),
            )
        })?;
    }
    Ok(())
}

/// Bytes of one aes-xts sector.
const SECTOR: u64 = 512;

impl EncryptedPartition {
    /// Puts the partition's bytes that fall in `buf` (the image's bytes at `off`) in it.
    fn fill(&self, source: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
        let end = off + buf.len() as u64;
        let data_at = self.at + self.header.len() as u64;
        let (from, to) = (off.max(self.at), end.min(data_at));
        if from < to {
            buf[(from - off) as usize..(to - off) as usize]
                .copy_from_slice(&self.header[(from - self.at) as usize..(to - self.at) as usize]);
        }
        let (from, to) = (off.max(data_at), end.min(self.at + self.len));
        if from >= to {
            return Ok(());
        }
        if !(from - data_at).is_multiple_of(SECTOR) || !(to - data_at).is_multiple_of(SECTOR) {
            return Err(io::Error::other(format!(
                "the encrypted partition's bytes {from}..{to} are not whole 512-byte sectors"
            )));
        }
        let plain = &mut buf[(from - off) as usize..(to - off) as usize];
        plain.fill(0);
        let p_from = from - data_at;
        read_ranges(
            source,
            &self.source,
            self.source_at,
            &self.read,
            plain,
            p_from,
        )?;
        // aes-xts on every core: the encryption, not the disk, is what limits the copy.
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = (plain.len() as u64 / SECTOR).div_ceil(threads as u64) * SECTOR;
        let first_sector = p_from / SECTOR;
        std::thread::scope(|s| {
            for (i, piece) in plain.chunks_mut(per.max(SECTOR) as usize).enumerate() {
                let sector = first_sector + i as u64 * per / SECTOR;
                let key = &self.key[..];
                s.spawn(move || oneimage_format::luks2::encrypt_sectors(key, sector, piece));
            }
        });
        Ok(())
    }
}

impl DiskView {
    /// Bytes read from the device (and the encrypted partition's source).
    pub fn bytes_read(&self) -> u64 {
        let encrypted: u64 = self
            .encrypted
            .iter()
            .flat_map(|e| e.read.iter().map(|(a, b)| b - a))
            .sum();
        self.read.iter().map(|(a, b)| b - a).sum::<u64>() + encrypted
    }

    /// Fills `buf` with the image's bytes at `off`; `source` is the encrypted
    /// partition's plaintext device, when there is one.
    pub fn fill(
        &self,
        file: &File,
        source: Option<&File>,
        buf: &mut [u8],
        off: u64,
    ) -> io::Result<()> {
        buf.fill(0);
        let end = off + buf.len() as u64;
        read_ranges(file, &self.device, 0, &self.read, buf, off)?;
        for (at, bytes) in &self.patches {
            let (a, b) = (*at, at + bytes.len() as u64);
            let (from, to) = (a.max(off), b.min(end));
            if from < to {
                buf[(from - off) as usize..(to - off) as usize]
                    .copy_from_slice(&bytes[(from - a) as usize..(to - a) as usize]);
            }
        }
        if let (Some(e), Some(source)) = (&self.encrypted, source) {
            e.fill(source, buf, off)?;
        }
        Ok(())
    }

    /// Streams the view from `file` on a producer thread.
    pub fn reader(self: &Arc<Self>, file: Arc<File>) -> PipeReader {
        let view = self.clone();
        pipe::spawn_with(view.device.display().to_string(), move |sink| {
            let source = match &view.encrypted {
                Some(e) => Some(File::open(&e.source).map_err(|err| {
                    io::Error::new(err.kind(), format!("opening {}: {err}", e.source.display()))
                })?),
                None => None,
            };
            let mut off = 0u64;
            while off < view.extent {
                let n = ((view.extent - off) as usize).min(CHUNK);
                let mut buf = vec![0u8; n];
                view.fill(&file, source.as_ref(), &mut buf, off)?;
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
            encrypted: None,
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

    /// The encrypted partition, streamed in chunks and encrypted on several threads, is
    /// the header then the plaintext (zeros where nothing is read) encrypted in one go
    /// with the sector numbers from the data segment's start.
    #[test]
    fn an_encrypted_partition_is_its_header_then_its_encrypted_filesystem() {
        let mut src = tempfile::NamedTempFile::new().unwrap();
        let fs: Vec<u8> = (0..3 * CHUNK).map(|i| (i % 253) as u8 ^ 0x5a).collect();
        io::Write::write_all(&mut src, &[0xee; 4096]).unwrap();
        io::Write::write_all(&mut src, &fs).unwrap();
        let header_len = CHUNK + 4096;
        let at = 2 * CHUNK as u64 - 512;
        let len = header_len as u64 + fs.len() as u64 + 8192;
        let read = vec![(0, 5000), (CHUNK as u64, 2 * CHUNK as u64 + 1024)];
        let part = EncryptedPartition {
            at,
            len,
            header: Arc::new(vec![0xcd; header_len]),
            key: Arc::new([7; 64]),
            source: src.path().to_path_buf(),
            source_at: 4096,
            read: read.clone(),
        };
        let device = tempfile::NamedTempFile::new().unwrap();
        let view = Arc::new(DiskView {
            device: device.path().to_path_buf(),
            extent: at + len + CHUNK as u64,
            read: vec![],
            patches: vec![],
            encrypted: Some(part),
        });
        let mut out = Vec::new();
        let file = Arc::new(File::open(device.path()).unwrap());
        io::Read::read_to_end(&mut view.reader(file), &mut out).unwrap();
        let mut plain = vec![0u8; len as usize - header_len];
        for (a, b) in read {
            plain[a as usize..b as usize].copy_from_slice(&fs[a as usize..b as usize]);
        }
        oneimage_format::luks2::encrypt_sectors(&[7; 64], 0, &mut plain);
        let at = at as usize;
        assert!(out[..at].iter().all(|&b| b == 0));
        assert!(out[at..at + header_len].iter().all(|&b| b == 0xcd));
        assert!(out[at + header_len..at + len as usize] == plain[..]);
        assert!(out[at + len as usize..].iter().all(|&b| b == 0));
    }
}
