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
/// Frames that decompress to more than this are refused. Each decoder thread holds a
/// few frames at once, so this bounds the writer's memory; oneimage's own files use
/// 64 KiB to 64 MiB frames (`zstd-frame-size`), and the format itself allows 1 GiB.
pub const MAX_FRAME: u32 = 64 << 20;
/// Most frames a table may list: 16 million frames of 64 KiB are a 1 TiB image, and
/// the table then takes 128 MiB of memory.
pub const MAX_FRAMES: u32 = 1 << 24;
/// Fewest bytes a zstd frame takes (magic, frame header, one block header), so a file
/// of `n` bytes holds at most `n / 9` of them.
const MIN_FRAME: u64 = 9;

/// Most bytes a frame of `n` decompressed bytes takes when compressed (zstd's
/// `ZSTD_COMPRESSBOUND`): a larger one is not a frame of that size.
pub fn compress_bound(n: u64) -> u64 {
    let small = if n < 128 << 10 {
        ((128 << 10) - n) >> 11
    } else {
        0
    };
    n + (n >> 8) + small
}

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
    let count = u64::from(le32(&foot[0..4]));
    let desc = foot[4];
    if desc & 0x7c != 0 {
        return Ok(None);
    }
    let entry = if desc & 0x80 != 0 { 12 } else { 8 };
    // At most 2^32 entries of 12 bytes: no overflow in u64.
    let table_len = count * entry + FOOTER;
    let Some(start) = len.checked_sub(table_len + 8) else {
        return Ok(None);
    };
    // The count is bounded by the frames the data before the table can hold and by
    // MAX_FRAMES, before anything is sized by it.
    if count > u64::from(MAX_FRAMES) || count * MIN_FRAME > start {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(start))?;
    let mut hdr = [0u8; 8];
    f.read_exact(&mut hdr)?;
    if le32(&hdr[0..4]) != SKIPPABLE_MAGIC || le32(&hdr[4..8]) as u64 != table_len {
        return Ok(None);
    }
    let mut frames = Vec::with_capacity(count as usize);
    let mut total = 0u64;
    let mut raw = [0u8; 12];
    let mut table = std::io::BufReader::new(&mut *f);
    for _ in 0..count {
        table.read_exact(&mut raw[..entry as usize])?;
        let e = FrameEntry {
            compressed: le32(&raw[0..4]),
            decompressed: le32(&raw[4..8]),
        };
        total += u64::from(e.compressed);
        let fits = u64::from(e.compressed) <= compress_bound(u64::from(e.decompressed));
        if e.decompressed > MAX_FRAME || !fits || total > start {
            return Ok(None);
        }
        frames.push(e);
    }
    drop(table);
    if total != start {
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
                    compressed: 10,
                    decompressed: 100,
                },
                FrameEntry {
                    compressed: 12,
                    decompressed: 7,
                },
            ],
        };
        let mut file = vec![0xaau8; 22];
        file.extend(t.to_bytes());
        assert_eq!(
            read_seek_table(&mut Cursor::new(&file)).unwrap(),
            Some(t.clone())
        );
        assert_eq!(t.decompressed_size(), 107);
        file.truncate(file.len() - 1);
        assert_eq!(read_seek_table(&mut Cursor::new(&file)).unwrap(), None);
        // Frames that do not add up to the data before the table: not a seekable file.
        let mut short = vec![0xaau8; 21];
        short.extend(t.to_bytes());
        assert_eq!(read_seek_table(&mut Cursor::new(&short)).unwrap(), None);
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::testing::Fuzz;
    use std::io::Cursor;

    /// A file of `frames` (random bytes standing in for zstd frames) and its table,
    /// with per-frame checksums when `checksums`.
    fn file(frames: &[FrameEntry], checksums: bool, fill: u8) -> Vec<u8> {
        let data: u64 = frames.iter().map(|f| u64::from(f.compressed)).sum();
        let mut out = vec![fill; data as usize];
        if !checksums {
            out.extend(
                SeekTable {
                    frames: frames.to_vec(),
                }
                .to_bytes(),
            );
            return out;
        }
        let table_len = frames.len() as u32 * 12 + FOOTER as u32;
        out.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
        out.extend_from_slice(&table_len.to_le_bytes());
        for f in frames {
            out.extend_from_slice(&f.compressed.to_le_bytes());
            out.extend_from_slice(&f.decompressed.to_le_bytes());
            out.extend_from_slice(&[0xab; 4]);
        }
        out.extend_from_slice(&(frames.len() as u32).to_le_bytes());
        out.push(0x80);
        out.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
        out
    }

    /// Seek tables (valid ones round-trip; mutated ones, mostly in the table) never
    /// panic, and a table that is accepted covers the file exactly with bounded frames.
    #[test]
    fn fuzz_seek_table() {
        let report = Fuzz::new("fuzz_seek_table").run(
            |m, _| {
                let n = m.rng.index(40);
                let frames: Vec<FrameEntry> = (0..n)
                    .map(|_| FrameEntry {
                        compressed: 9 + m.rng.below(300) as u32,
                        decompressed: 300 + m.rng.below(1 << 22) as u32,
                    })
                    .collect();
                let checksums = m.rng.one_in(3);
                let f = file(&frames, checksums, m.rng.next_u64() as u8);
                if m.rng.one_in(4) {
                    // Unmutated: it must read back as written.
                    let t = read_seek_table(&mut Cursor::new(&f)).unwrap();
                    assert_eq!(t.map(|t| t.frames), Some(frames));
                    return f;
                }
                let entry = if checksums { 12 } else { 8 };
                let table = f.len() - n * entry - FOOTER as usize - 8;
                m.hot(std::slice::from_ref(&(table..f.len()))).mutate(&f)
            },
            |input| {
                let t = read_seek_table(&mut Cursor::new(input)).expect("in memory");
                let Some(t) = t else { return false };
                let covered: u64 = t.frames.iter().map(|f| u64::from(f.compressed)).sum();
                let entry = if input[input.len() - 5] & 0x80 != 0 {
                    12
                } else {
                    8
                };
                let table = t.frames.len() as u64 * entry + FOOTER + 8;
                assert_eq!(covered + table, input.len() as u64);
                assert!(t.frames.iter().all(|f| f.decompressed <= MAX_FRAME));
                true
            },
        );
        assert!(
            report.accepted > 2000 && report.accepted < report.cases,
            "{report:?}"
        );
    }

    /// A reader of `len` bytes, zeros but for `patches` (offset, bytes), that counts
    /// what it hands out: a huge file without the memory.
    struct Sparse {
        len: u64,
        patches: Vec<(u64, Vec<u8>)>,
        pos: u64,
        read: u64,
    }

    impl Read for Sparse {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = (self.len.saturating_sub(self.pos)).min(buf.len() as u64) as usize;
            for (i, b) in buf[..n].iter_mut().enumerate() {
                let p = self.pos + i as u64;
                *b = self
                    .patches
                    .iter()
                    .find(|(at, bytes)| p >= *at && p - at < bytes.len() as u64)
                    .map_or(0, |(at, bytes)| bytes[(p - at) as usize]);
            }
            self.pos += n as u64;
            self.read += n as u64;
            Ok(n)
        }
    }

    impl Seek for Sparse {
        fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
            self.pos = match to {
                SeekFrom::Start(p) => p,
                SeekFrom::End(d) => self.len.checked_add_signed(d).unwrap(),
                SeekFrom::Current(d) => self.pos.checked_add_signed(d).unwrap(),
            };
            Ok(self.pos)
        }
    }

    /// A 1 TiB file whose table claims 357 million entries (4 GiB of table, its
    /// skippable frame header consistent): the count is refused from the footer, before
    /// anything is allocated or read by it. It used to allocate and read all 4 GiB.
    #[test]
    fn huge_counts_are_refused_before_reading() {
        let count = (u32::MAX - FOOTER as u32) / 12;
        let table_len = count as u64 * 12 + FOOTER;
        let len = 1u64 << 40;
        let mut hdr = SKIPPABLE_MAGIC.to_le_bytes().to_vec();
        hdr.extend_from_slice(&(table_len as u32).to_le_bytes());
        let mut foot = count.to_le_bytes().to_vec();
        foot.push(0x80);
        foot.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
        let mut f = Sparse {
            len,
            patches: vec![(len - table_len - 8, hdr), (len - FOOTER, foot)],
            pos: 0,
            read: 0,
        };
        assert_eq!(read_seek_table(&mut f).unwrap(), None);
        assert!(f.read < 1 << 20, "{} bytes read", f.read);
        // A frame claiming more than MAX_FRAME, or more compressed bytes than any frame
        // of its size takes, is not one.
        for (compressed, decompressed) in [(100, MAX_FRAME + 1), (1 << 20, 1000)] {
            let frames = [FrameEntry {
                compressed,
                decompressed,
            }];
            let file = file(&frames, false, 0);
            assert_eq!(read_seek_table(&mut Cursor::new(file)).unwrap(), None);
        }
    }
}
