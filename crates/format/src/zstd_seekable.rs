//! The seek table of the zstd seekable format: a skippable frame at the end of a file of
//! independent zstd frames, listing each frame's compressed and decompressed size. Plain
//! `zstd -d` reads such a file as ordinary concatenated frames and skips the table.

use std::io::{self, Read, Seek, SeekFrom};

/// Magic of the skippable frame that holds the table.
pub const SKIPPABLE_MAGIC: u32 = 0x184d_2a5e;
/// Magic at the very end of the file.
pub const SEEKABLE_MAGIC: u32 = 0x8f92_eab1;
/// Bytes of the table's footer (frame count, descriptor, magic).
pub const FOOTER: u64 = 9;
/// Frames larger than this are refused (the format's own limit is 1 GiB).
pub const MAX_FRAME: u32 = 1 << 30;

/// One frame as the seek table lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameEntry {
    /// Bytes of the zstd frame in the file.
    pub compressed: u32,
    /// Bytes it decompresses to.
    pub decompressed: u32,
}

/// A parsed seek table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeekTable {
    /// The frames in file order.
    pub frames: Vec<FrameEntry>,
}

impl SeekTable {
    /// Total decompressed bytes.
    pub fn decompressed_size(&self) -> u64 {
        self.frames.iter().map(|f| f.decompressed as u64).sum()
    }

    /// The table as it is appended to the file (a skippable frame, no checksums).
    pub fn to_bytes(&self) -> Vec<u8> {
        let table_len = self.frames.len() as u32 * 8 + FOOTER as u32;
        let mut t = Vec::with_capacity(table_len as usize + 8);
        t.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        t.extend_from_slice(&table_len.to_le_bytes());
        for e in &self.frames {
            t.extend_from_slice(&e.compressed.to_le_bytes());
            t.extend_from_slice(&e.decompressed.to_le_bytes());
        }
        t.extend_from_slice(&(self.frames.len() as u32).to_le_bytes());
        t.push(0);
        t.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
        t
    }
}

fn le32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads the seek table at the end of `f`; `None` when there is none or it does not
/// describe the file exactly (then the file is decoded as plain zstd).
pub fn read_seek_table<F: Read + Seek>(f: &mut F) -> io::Result<Option<SeekTable>> {
    let len = f.seek(SeekFrom::End(0))?;
    if len < FOOTER + 8 {
        return Ok(None);
    }
    let mut foot = [0u8; FOOTER as usize];
    f.seek(SeekFrom::End(-(FOOTER as i64)))?;
    f.read_exact(&mut foot)?;
    if le32(&foot[5..9]) != SEEKABLE_MAGIC {
        return Ok(None);
    }
    let count = le32(&foot[0..4]) as u64;
    let desc = foot[4];
    if desc & 0x7c != 0 {
        return Ok(None);
    }
    let entry = if desc & 0x80 != 0 { 12 } else { 8 };
    let table_len = count * entry + FOOTER;
    if table_len + 8 > len {
        return Ok(None);
    }
    let start = len - table_len - 8;
    f.seek(SeekFrom::Start(start))?;
    let mut hdr = [0u8; 8];
    f.read_exact(&mut hdr)?;
    if le32(&hdr[0..4]) != SKIPPABLE_MAGIC || le32(&hdr[4..8]) as u64 != table_len {
        return Ok(None);
    }
    let mut raw = vec![0u8; (count * entry) as usize];
    f.read_exact(&mut raw)?;
    let frames: Vec<FrameEntry> = raw
        .chunks(entry as usize)
        .map(|c| FrameEntry {
            compressed: le32(&c[0..4]),
            decompressed: le32(&c[4..8]),
        })
        .collect();
    let total: u64 = frames.iter().map(|e| e.compressed as u64).sum();
    if total != start || frames.iter().any(|e| e.decompressed > MAX_FRAME) {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(0))?;
    Ok(Some(SeekTable { frames }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn table_round_trip_and_truncation() {
        let t = SeekTable {
            frames: vec![
                FrameEntry {
                    compressed: 3,
                    decompressed: 100,
                },
                FrameEntry {
                    compressed: 5,
                    decompressed: 7,
                },
            ],
        };
        let mut file = vec![0xaau8; 8];
        file.extend(t.to_bytes());
        assert_eq!(
            read_seek_table(&mut Cursor::new(&file)).unwrap(),
            Some(t.clone())
        );
        assert_eq!(t.decompressed_size(), 107);
        file.truncate(file.len() - 1);
        assert_eq!(read_seek_table(&mut Cursor::new(&file)).unwrap(), None);
        // Frames that do not add up to the data before the table: not a seekable file.
        let mut short = vec![0xaau8; 7];
        short.extend(t.to_bytes());
        assert_eq!(read_seek_table(&mut Cursor::new(&short)).unwrap(), None);
    }
}
