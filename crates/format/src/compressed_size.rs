//! The decompressed size that an `.xz` or `.zst` file records about itself, read from its
//! headers and indexes only, never by decompressing.
//!
//! The writer uses this to refuse, before it writes the first byte, an image that would
//! not fit its target. Both readers treat the file as hostile: every field is checked,
//! every sum is checked for overflow, and nothing is allocated or read beyond what the
//! file's own length allows, so a damaged or crafted file gives an error, not a panic, a
//! huge allocation or a long walk.

use std::io::{self, Read, Seek, SeekFrom};

/// Why the recorded decompressed size of a compressed file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SizeError {
    /// Reading or seeking the file failed.
    #[error("reading the compressed file: {0}")]
    Io(#[from] io::Error),
    /// A structure of the file is damaged, truncated or not what the format allows.
    #[error("{part} at byte {offset}: {detail}")]
    Invalid {
        /// The structure that is wrong, e.g. "xz stream footer".
        part: &'static str,
        /// Where that structure starts in the file.
        offset: u64,
        /// Which field is wrong and what was expected.
        detail: String,
    },
}

fn invalid(part: &'static str, offset: u64, detail: impl Into<String>) -> SizeError {
    SizeError::Invalid {
        part,
        offset,
        detail: detail.into(),
    }
}

/// Granularity of the reads: headers are found one small aligned read at a time, so a
/// walk over a large file touches a few KiB per header instead of the whole file.
const CHUNK: u64 = 4096;

/// Positioned reads through one buffer. Headers that sit close together (small zstd
/// blocks, an xz index next to its footer) come from one read; far-apart ones cost one
/// seek and one read each, never a read per byte.
struct Positioned<'a, R> {
    inner: &'a mut R,
    len: u64,
    start: u64,
    buf: Vec<u8>,
}

impl<'a, R: Read + Seek> Positioned<'a, R> {
    fn new(inner: &'a mut R) -> io::Result<Self> {
        let len = inner.seek(SeekFrom::End(0))?;
        Ok(Positioned {
            inner,
            len,
            start: 0,
            buf: Vec::new(),
        })
    }

    /// Whether `n` bytes at `pos` lie inside the file.
    fn has(&self, pos: u64, n: u64) -> bool {
        pos.checked_add(n).is_some_and(|end| end <= self.len)
    }

    /// The `n` bytes at `pos`; the caller has checked `has(pos, n)`, so the buffer is
    /// never larger than the file plus two chunks.
    fn at(&mut self, pos: u64, n: usize) -> io::Result<&[u8]> {
        let end = pos + n as u64;
        debug_assert!(end <= self.len);
        if pos < self.start || end > self.start + self.buf.len() as u64 {
            let load_start = pos - pos % CHUNK;
            let load_end = end.div_ceil(CHUNK).saturating_mul(CHUNK).min(self.len);
            // Taken out while reading, so a failed read leaves an empty buffer behind
            // rather than stale bytes labelled with the new offset. Not cleared: the read
            // overwrites every byte, and re-zeroing each chunk would cost more than it.
            let mut fresh = std::mem::take(&mut self.buf);
            fresh.resize((load_end - load_start) as usize, 0);
            self.inner.seek(SeekFrom::Start(load_start))?;
            self.inner.read_exact(&mut fresh)?;
            self.buf = fresh;
            self.start = load_start;
        }
        let off = (pos - self.start) as usize;
        Ok(&self.buf[off..off + n])
    }
}

fn le_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads `b.len()` (at most 8) bytes as a little-endian unsigned number.
fn le_uint(b: &[u8]) -> u64 {
    b.iter()
        .rev()
        .fold(0u64, |acc, &byte| (acc << 8) | u64::from(byte))
}

const XZ_HEADER_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
const XZ_FOOTER_MAGIC: [u8; 2] = [b'Y', b'Z'];
/// Stream header and stream footer are 12 bytes each.
const XZ_HEADER_LEN: u64 = 12;
/// Header, an index without records (8 bytes) and footer.
const XZ_MIN_STREAM: u64 = 32;
/// The largest index this reader accepts. The format allows 16 GiB, but an index of 64
/// MiB already lists millions of blocks, far beyond any image; a larger one is taken as
/// damage rather than read into memory.
pub const XZ_MAX_INDEX: u64 = 64 << 20;
/// Multibyte integers in xz carry at most 63 bits (format spec 1.2).
const XZ_VLI_MAX: u64 = u64::MAX / 2;
/// Unpadded Size is at least 5 (format spec 4.3.1) and, as the block is padded to a
/// multiple of four, at most the largest multibyte integer rounded down to four.
const XZ_UNPADDED_MIN: u64 = 5;
const XZ_UNPADDED_MAX: u64 = XZ_VLI_MAX & !3;

/// Sum of the uncompressed sizes recorded in the indexes of an `.xz` file.
///
/// Walks the file from its end: each stream footer gives the size of its index, the index
/// lists its blocks' sizes, and those lead back to the stream header, before which may lie
/// stream padding and another stream. Every CRC32 of footers, indexes and headers is
/// checked, and the walk must land exactly on byte 0. No block is decompressed. The
/// reader's position afterwards is unspecified.
pub fn xz_uncompressed_size<R: Read + Seek>(r: &mut R) -> Result<u64, SizeError> {
    let mut f = Positioned::new(r)?;
    let len = f.len;
    if len == 0 {
        return Err(invalid("xz file", 0, "the file is empty"));
    }
    if len % 4 != 0 {
        // Streams and stream padding are multiples of four (format spec 2), so a file
        // that is not was cut short or has bytes appended.
        return Err(invalid(
            "xz file",
            len,
            format!("the file is {len} bytes, not a multiple of four as every .xz file is (truncated, or something appended)"),
        ));
    }
    let mut end = len;
    let mut total: u64 = 0;
    loop {
        let stream_end = skip_xz_padding(&mut f, end)?;
        if stream_end == 0 {
            return Err(invalid(
                "xz stream padding",
                0,
                format!("the {end} bytes from the start of the file are all zero: an .xz file begins with a stream header, not padding"),
            ));
        }
        let (stream_start, size) = xz_stream(&mut f, stream_end)?;
        total = total.checked_add(size).ok_or_else(|| {
            invalid(
                "xz stream header",
                stream_start,
                format!("the stream's uncompressed size {size} overflows the total of the streams after it ({total})"),
            )
        })?;
        if stream_start == 0 {
            return Ok(total);
        }
        end = stream_start;
    }
}

/// Steps back over stream padding (zero bytes in groups of four) that ends at `end`.
fn skip_xz_padding<R: Read + Seek>(f: &mut Positioned<R>, mut end: u64) -> Result<u64, SizeError> {
    while end > 0 {
        // `end` and CHUNK are multiples of four, so the groups stay aligned to streams.
        let n = end.min(CHUNK);
        let bytes = f.at(end - n, n as usize)?;
        let zero = bytes
            .rchunks_exact(4)
            .take_while(|group| group.iter().all(|&b| b == 0))
            .count() as u64
            * 4;
        end -= zero;
        if zero < n {
            break;
        }
    }
    Ok(end)
}

/// Checks the stream flags: the first byte and the high nibble of the second are reserved
/// and must be zero (format spec 2.1.1.2). The check type itself does not matter here,
/// since the index's Unpadded Size already includes the check.
fn xz_flags_ok(flags: [u8; 2]) -> bool {
    flags[0] == 0 && flags[1] & 0xf0 == 0
}

/// Reads the stream that ends at `end`; returns where it starts and its uncompressed size.
fn xz_stream<R: Read + Seek>(f: &mut Positioned<R>, end: u64) -> Result<(u64, u64), SizeError> {
    if end < XZ_MIN_STREAM {
        return Err(invalid(
            "xz stream",
            0,
            format!("a stream ending at byte {end} would be {end} bytes, less than the {XZ_MIN_STREAM} bytes of the smallest stream (header, empty index, footer)"),
        ));
    }
    let footer_pos = end - XZ_HEADER_LEN;
    let footer: [u8; 12] = f.at(footer_pos, 12)?.try_into().expect("12 bytes");
    const PART: &str = "xz stream footer";
    if footer[10..12] != XZ_FOOTER_MAGIC {
        return Err(invalid(
            PART,
            footer_pos,
            format!("footer magic is {:02x} {:02x}, expected 59 5a (\"YZ\"): the file is truncated, has something appended, or is not .xz", footer[10], footer[11]),
        ));
    }
    let stored_crc = le_u32(&footer[0..4]);
    let crc = crc32fast::hash(&footer[4..10]);
    if stored_crc != crc {
        return Err(invalid(
            PART,
            footer_pos,
            format!("CRC32 {stored_crc:#010x} does not match {crc:#010x}, computed over the backward size and stream flags"),
        ));
    }
    let flags = [footer[8], footer[9]];
    if !xz_flags_ok(flags) {
        return Err(invalid(
            PART,
            footer_pos,
            format!(
                "stream flags {:02x} {:02x} have reserved bits set (expected 00 0x)",
                flags[0], flags[1]
            ),
        ));
    }
    // Stored as the index size in units of four, minus one (format spec 2.1.2.2).
    let index_len = (u64::from(le_u32(&footer[4..8])) + 1) * 4;
    if index_len > footer_pos - XZ_HEADER_LEN {
        return Err(invalid(
            PART,
            footer_pos,
            format!("backward size {index_len} points before the start of the file (at most {} bytes fit between the start, a 12-byte stream header and the footer)", footer_pos - XZ_HEADER_LEN),
        ));
    }
    if index_len > XZ_MAX_INDEX {
        return Err(invalid(
            PART,
            footer_pos,
            format!("backward size {index_len} is larger than the {XZ_MAX_INDEX} bytes accepted for an index"),
        ));
    }
    let index_pos = footer_pos - index_len;
    let (blocks_len, size) = xz_index(f.at(index_pos, index_len as usize)?, index_pos)?;
    let Some(header_pos) = index_pos
        .checked_sub(blocks_len)
        .and_then(|p| p.checked_sub(XZ_HEADER_LEN))
    else {
        return Err(invalid(
            "xz index",
            index_pos,
            format!("its blocks take {blocks_len} bytes, more than the {} bytes between the start of the file, a 12-byte stream header and the index", index_pos - XZ_HEADER_LEN),
        ));
    };
    let header: [u8; 12] = f.at(header_pos, 12)?.try_into().expect("12 bytes");
    const HEAD: &str = "xz stream header";
    if header[0..6] != XZ_HEADER_MAGIC {
        return Err(invalid(
            HEAD,
            header_pos,
            format!("magic bytes are {:02x?}, expected fd 37 7a 58 5a 00: the block sizes in the index at byte {index_pos} do not lead back to a stream header", &header[0..6]),
        ));
    }
    let stored_crc = le_u32(&header[8..12]);
    let crc = crc32fast::hash(&header[6..8]);
    if stored_crc != crc {
        return Err(invalid(
            HEAD,
            header_pos,
            format!("CRC32 {stored_crc:#010x} does not match {crc:#010x}, computed over the stream flags"),
        ));
    }
    if header[6..8] != flags {
        return Err(invalid(
            HEAD,
            header_pos,
            format!("stream flags {:02x} {:02x} differ from the footer's {:02x} {:02x} at byte {footer_pos}", header[6], header[7], flags[0], flags[1]),
        ));
    }
    Ok((header_pos, size))
}

/// Decodes an xz multibyte integer (format spec 1.2) from `b[*at..end]`: 7 bits a byte,
/// low bits first, at most 9 bytes, and no needless zero byte at the end.
fn xz_vli(b: &[u8], at: &mut usize, end: usize) -> Result<u64, &'static str> {
    let mut value = 0u64;
    for i in 0..9 {
        let p = *at + i;
        if p >= end {
            return Err("runs past the end of the list of records");
        }
        let byte = b[p];
        if i > 0 && byte == 0 {
            return Err("is not in its shortest form (a trailing zero byte)");
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            *at = p + 1;
            return Ok(value);
        }
    }
    Err("is longer than nine bytes")
}

/// Checks an index (format spec 4) read at file offset `pos`; returns the bytes its
/// blocks take in the stream (each Unpadded Size rounded up to four) and the sum of their
/// uncompressed sizes.
fn xz_index(b: &[u8], pos: u64) -> Result<(u64, u64), SizeError> {
    const PART: &str = "xz index";
    let err = |detail: String| invalid(PART, pos, detail);
    // The footer's backward size is at least 4 and `b` is that long; an index with the
    // indicator, a record count, padding and CRC32 is at least 8.
    if b.len() < 8 {
        return Err(err(format!(
            "the backward size makes it {} bytes, less than the 8 bytes of an index without records",
            b.len()
        )));
    }
    let body_end = b.len() - 4;
    let stored_crc = le_u32(&b[body_end..]);
    let crc = crc32fast::hash(&b[..body_end]);
    if stored_crc != crc {
        return Err(err(format!(
            "CRC32 {stored_crc:#010x} does not match {crc:#010x}, computed over the {body_end} bytes before it (the backward size of the footer or the index is damaged)"
        )));
    }
    if b[0] != 0 {
        return Err(err(format!(
            "index indicator is {:#04x}, expected 0x00",
            b[0]
        )));
    }
    let mut at = 1;
    let count =
        xz_vli(b, &mut at, body_end).map_err(|why| err(format!("the number of records {why}")))?;
    // Each record takes at least two bytes, so the count cannot exceed what the index
    // holds; checking it first bounds the loop below by the index size, not the field.
    let room = (body_end - at) as u64 / 2;
    if count > room {
        return Err(err(format!(
            "the number of records is {count}, but an index of {} bytes has room for at most {room}",
            b.len()
        )));
    }
    let mut blocks: u64 = 0;
    let mut size: u64 = 0;
    for record in 0..count {
        let record_pos = pos + at as u64;
        let unpadded = xz_vli(b, &mut at, body_end).map_err(|why| {
            err(format!(
                "record {record} at byte {record_pos}: unpadded size {why}"
            ))
        })?;
        let uncompressed = xz_vli(b, &mut at, body_end).map_err(|why| {
            err(format!(
                "record {record} at byte {record_pos}: uncompressed size {why}"
            ))
        })?;
        if !(XZ_UNPADDED_MIN..=XZ_UNPADDED_MAX).contains(&unpadded) {
            return Err(err(format!(
                "record {record} at byte {record_pos}: unpadded size {unpadded} is outside {XZ_UNPADDED_MIN}..={XZ_UNPADDED_MAX}"
            )));
        }
        // Cannot overflow: unpadded is at most 2^63 - 4.
        let padded = unpadded.div_ceil(4) * 4;
        blocks = blocks
            .checked_add(padded)
            .filter(|&t| t <= XZ_VLI_MAX)
            .ok_or_else(|| {
                err(format!(
                    "record {record} at byte {record_pos}: the blocks' total size passes 2^63 - 1 bytes"
                ))
            })?;
        size = size
            .checked_add(uncompressed)
            .filter(|&t| t <= XZ_VLI_MAX)
            .ok_or_else(|| {
                err(format!(
                    "record {record} at byte {record_pos}: the total uncompressed size passes 2^63 - 1 bytes"
                ))
            })?;
    }
    // Index padding: zero bytes up to the next multiple of four, which must be where the
    // CRC32 starts (format spec 4.4).
    let padded_end = at.div_ceil(4) * 4;
    if padded_end != body_end {
        return Err(err(format!(
            "its {count} records end at byte {} and padding would put the CRC32 at byte {}, but the backward size puts it at byte {}",
            pos + at as u64,
            pos + padded_end as u64,
            pos + body_end as u64
        )));
    }
    if let Some(i) = (at..body_end).find(|&i| b[i] != 0) {
        return Err(err(format!(
            "index padding byte at {} is {:#04x}, expected 0x00",
            pos + i as u64,
            b[i]
        )));
    }
    Ok((blocks, size))
}

const ZSTD_MAGIC: u32 = 0xfd2f_b528;
const ZSTD_SKIPPABLE: std::ops::RangeInclusive<u32> = 0x184d_2a50..=0x184d_2a5f;
/// No block holds more than 128 KiB, compressed or not (RFC 8878 3.1.1.2.4).
const ZSTD_BLOCK_MAX: u64 = 128 << 10;

/// Sum of the Frame_Content_Size fields of a `.zst` file's frames, or `None` when a frame
/// does not record its size.
///
/// Walks the file from the start, frame by frame: skippable frames are stepped over, and
/// each zstd frame's header is read and its blocks walked by their 3-byte headers (never
/// decoded) to find where the frame ends. A file that is empty, truncated, has bytes
/// after its last frame, sets a reserved bit or uses the reserved block type is an error,
/// and so is a frame whose content size cannot be what its blocks hold. Every frame is
/// checked even after one without a size was seen. The reader's position afterwards is
/// unspecified.
pub fn zstd_content_size<R: Read + Seek>(r: &mut R) -> Result<Option<u64>, SizeError> {
    let mut f = Positioned::new(r)?;
    let len = f.len;
    if len == 0 {
        return Err(invalid("zstd file", 0, "the file is empty"));
    }
    let mut pos = 0;
    let mut total = Some(0u64);
    while pos < len {
        if !f.has(pos, 4) {
            return Err(invalid(
                "zstd frame",
                pos,
                format!("only {} bytes remain, too few for a frame's 4-byte magic number (truncated, or something appended)", len - pos),
            ));
        }
        let magic = le_u32(f.at(pos, 4)?);
        if ZSTD_SKIPPABLE.contains(&magic) {
            if !f.has(pos, 8) {
                return Err(invalid(
                    "zstd skippable frame",
                    pos,
                    "the file ends inside the 4-byte frame size",
                ));
            }
            let size = u64::from(le_u32(f.at(pos + 4, 4)?));
            if !f.has(pos + 8, size) {
                return Err(invalid(
                    "zstd skippable frame",
                    pos,
                    format!("frame size {size} runs past the end of the file at byte {len}"),
                ));
            }
            pos += 8 + size;
            continue;
        }
        if magic != ZSTD_MAGIC {
            return Err(invalid(
                "zstd frame",
                pos,
                format!("magic number is {magic:#010x}, expected {ZSTD_MAGIC:#010x} (zstd) or 0x184d2a50..=0x184d2a5f (skippable)"),
            ));
        }
        let (end, content) = zstd_frame(&mut f, pos)?;
        total = match (total, content) {
            (Some(t), Some(c)) => Some(t.checked_add(c).ok_or_else(|| {
                invalid(
                    "zstd frame header",
                    pos + 4,
                    format!(
                        "frame content size {c} overflows the total of the frames before it ({t})"
                    ),
                )
            })?),
            _ => None,
        };
        pos = end;
    }
    Ok(total)
}

/// Reads the zstd frame whose magic number is at `start`; returns where it ends and its
/// Frame_Content_Size, if recorded.
fn zstd_frame<R: Read + Seek>(
    f: &mut Positioned<R>,
    start: u64,
) -> Result<(u64, Option<u64>), SizeError> {
    const PART: &str = "zstd frame header";
    let len = f.len;
    let hdr = start + 4;
    if !f.has(hdr, 1) {
        return Err(invalid(
            PART,
            hdr,
            "the file ends before the frame header descriptor",
        ));
    }
    let d = f.at(hdr, 1)?[0];
    if d & 0x08 != 0 {
        return Err(invalid(
            PART,
            hdr,
            format!("frame header descriptor {d:#04x} sets reserved bit 3, which must be zero"),
        ));
    }
    let single_segment = d & 0x20 != 0;
    let checksum = d & 0x04 != 0;
    let window_len = usize::from(!single_segment);
    let dict_len = [0, 1, 2, 4][usize::from(d & 3)];
    // A single-segment frame always records its size, in one byte when the flag is 0.
    let fcs_len = match d >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    let header_len = 1 + window_len + dict_len + fcs_len;
    if !f.has(hdr, header_len as u64) {
        return Err(invalid(
            PART,
            hdr,
            format!("descriptor {d:#04x} calls for a {header_len}-byte header, which runs past the end of the file at byte {len}"),
        ));
    }
    let h = f.at(hdr, header_len)?;
    let fcs_at = 1 + window_len + dict_len;
    let content = match fcs_len {
        0 => None,
        // The 2-byte form starts at 256: smaller sizes fit the 1-byte form.
        2 => Some(le_uint(&h[fcs_at..fcs_at + 2]) + 256),
        n => Some(le_uint(&h[fcs_at..fcs_at + n])),
    };
    let window = if single_segment {
        // Single segment: the window is the whole content (RFC 8878 3.1.1.1.2).
        content.unwrap_or(0)
    } else {
        let wd = h[1];
        let base = 1u64 << (10 + (wd >> 3));
        base + base / 8 * u64::from(wd & 7)
    };
    let block_max = window.min(ZSTD_BLOCK_MAX);

    // Walk the blocks. `plain` is the content of raw and RLE blocks, whose size is
    // exact; a compressed block holds at most `block_max` bytes.
    let mut pos = hdr + header_len as u64;
    let mut plain: u64 = 0;
    let mut compressed: u64 = 0;
    loop {
        const BLOCK: &str = "zstd block header";
        if !f.has(pos, 3) {
            return Err(invalid(
                BLOCK,
                pos,
                format!("the file ends at byte {len}, inside the frame at byte {start} before its last block (truncated)"),
            ));
        }
        let b = f.at(pos, 3)?;
        let bh = u32::from(b[0]) | u32::from(b[1]) << 8 | u32::from(b[2]) << 16;
        let last = bh & 1 != 0;
        let kind = (bh >> 1) & 3;
        let size = u64::from(bh >> 3);
        let stored = match kind {
            0 | 2 => size,
            1 => 1, // RLE: one byte, repeated `size` times
            _ => {
                return Err(invalid(
                    BLOCK,
                    pos,
                    format!("block type 3 is reserved (header bytes {b:02x?})"),
                ))
            }
        };
        if size.max(stored) > block_max {
            return Err(invalid(
                BLOCK,
                pos,
                format!("block size {size} is larger than the frame's maximum block size {block_max} (the smaller of its window size {window} and 128 KiB)"),
            ));
        }
        if !f.has(pos + 3, stored) {
            return Err(invalid(
                BLOCK,
                pos,
                format!("the block's {stored} bytes run past the end of the file at byte {len} (truncated)"),
            ));
        }
        if kind == 2 {
            compressed += 1;
        } else {
            plain = plain.checked_add(size).ok_or_else(|| {
                invalid(
                    BLOCK,
                    pos,
                    "the frame's raw and RLE blocks add up to more than 2^64 bytes",
                )
            })?;
        }
        pos += 3 + stored;
        if last {
            break;
        }
    }
    if checksum {
        if !f.has(pos, 4) {
            return Err(invalid(
                "zstd frame checksum",
                pos,
                format!("the file ends at byte {len}, before the frame's 4-byte content checksum (truncated)"),
            ));
        }
        pos += 4;
    }
    if let Some(c) = content {
        // The decoder demands that the blocks produce exactly the content size, so a size
        // they cannot produce is a damaged header, not a file to trust.
        let most = compressed.saturating_mul(block_max).saturating_add(plain);
        if c < plain || c > most {
            return Err(invalid(
                PART,
                hdr,
                format!("frame content size {c} cannot be what its blocks hold: {plain} bytes in raw and RLE blocks plus {compressed} compressed blocks of at most {block_max} bytes each"),
            ));
        }
    }
    Ok((pos, content))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::File;
    use std::io::{Cursor, Write};
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    /// A small seeded generator (xorshift64*), so every run mutates the same way.
    struct Rng(u64);

    impl Rng {
        fn new(seed: u64) -> Rng {
            Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
        }
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        /// A number in `0..n` (`n > 0`).
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Seeded test input mixing text-like runs, noise and zeros, so that compressors
    /// write compressed blocks as well as stored ones.
    fn data(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = Rng::new(seed);
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let run = (1 + rng.below(8192) as usize).min(len - out.len());
            match rng.below(3) {
                0 => out.extend((0..run).map(|i| b'a' + ((rng.next() >> (i % 8)) & 0x0f) as u8)),
                1 => out.extend((0..run).map(|_| rng.next() as u8)),
                _ => out.extend(std::iter::repeat_n(0u8, run)),
            }
        }
        out
    }

    /// Incompressible seeded bytes.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut rng = Rng::new(seed);
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&rng.next().to_le_bytes());
        }
        out.truncate(len);
        out
    }

    fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Whether `tool -t` accepts the file: the constructed test files must be ones the
    /// real decompressor takes, or refuses, as the test claims.
    fn tool_accepts(tool: &str, path: &Path) -> bool {
        Command::new(tool)
            .arg("-t")
            .arg("-q")
            .arg(path)
            .stderr(Stdio::null())
            .status()
            .unwrap_or_else(|e| panic!("{tool}: {e}"))
            .success()
    }

    /// Compresses `input` with the real `xz` and returns the `.xz` bytes.
    fn xz(dir: &Path, name: &str, input: &[u8], args: &[&str]) -> Vec<u8> {
        let src = dir.join(name);
        std::fs::write(&src, input).unwrap();
        run(Command::new("xz")
            .args(args)
            .args(["-k", "-f", "-q"])
            .arg(&src));
        std::fs::read(dir.join(format!("{name}.xz"))).unwrap()
    }

    /// Compresses `input` with the real `zstd` (from a file, so it knows the size unless
    /// told not to record it) and returns the `.zst` bytes.
    fn zstd(dir: &Path, name: &str, input: &[u8], args: &[&str]) -> Vec<u8> {
        let src = dir.join(name);
        let dst = dir.join(format!("{name}.zst"));
        std::fs::write(&src, input).unwrap();
        run(Command::new("zstd")
            .args(args)
            .args(["-f", "-q", "-o"])
            .arg(&dst)
            .arg(&src));
        std::fs::read(dst).unwrap()
    }

    fn put(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn xz_file(path: &Path) -> Result<u64, SizeError> {
        xz_uncompressed_size(&mut File::open(path).unwrap())
    }

    fn zstd_file(path: &Path) -> Result<Option<u64>, SizeError> {
        zstd_content_size(&mut File::open(path).unwrap())
    }

    /// Writes `bytes` as `name`, checks that `xz -t` accepts them and returns our size.
    fn xz_valid(dir: &Path, name: &str, bytes: &[u8]) -> u64 {
        let p = put(dir, name, bytes);
        assert!(tool_accepts("xz", &p), "xz -t refuses {name}");
        xz_file(&p).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn zstd_valid(dir: &Path, name: &str, bytes: &[u8]) -> Option<u64> {
        let p = put(dir, name, bytes);
        assert!(tool_accepts("zstd", &p), "zstd -t refuses {name}");
        zstd_file(&p).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    /// Writes `bytes`, checks that `xz -t` refuses them too and returns our error text.
    fn xz_refused(dir: &Path, name: &str, bytes: &[u8]) -> String {
        let p = put(dir, name, bytes);
        assert!(!tool_accepts("xz", &p), "xz -t accepts {name}");
        match xz_file(&p) {
            Ok(n) => panic!("{name}: size {n} read from a file xz refuses"),
            Err(e) => e.to_string(),
        }
    }

    fn zstd_refused(dir: &Path, name: &str, bytes: &[u8]) -> String {
        let p = put(dir, name, bytes);
        assert!(!tool_accepts("zstd", &p), "zstd -t accepts {name}");
        match zstd_file(&p) {
            Ok(n) => panic!("{name}: size {n:?} read from a file zstd refuses"),
            Err(e) => e.to_string(),
        }
    }

    /// Counts what a reader is asked for, to bound the work on any input.
    struct Counting<R> {
        inner: R,
        reads: u64,
        bytes: u64,
    }

    impl<R: Read> Read for Counting<R> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.reads += 1;
            self.bytes += n as u64;
            Ok(n)
        }
    }

    impl<R: Seek> Seek for Counting<R> {
        fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
            self.inner.seek(to)
        }
    }

    fn counting(bytes: &[u8]) -> Counting<Cursor<&[u8]>> {
        Counting {
            inner: Cursor::new(bytes),
            reads: 0,
            bytes: 0,
        }
    }

    #[test]
    fn xz_single_threaded() {
        let dir = tempfile::tempdir().unwrap();
        let input = data(1, 700_000);
        let f = xz(dir.path(), "a", &input, &["-T1", "-6"]);
        assert_eq!(xz_valid(dir.path(), "a.xz", &f), 700_000);
    }

    #[test]
    fn xz_every_check_type() {
        // The check's size is part of each block's Unpadded Size; every kind must add up.
        let dir = tempfile::tempdir().unwrap();
        let input = data(2, 50_001);
        for check in ["none", "crc32", "crc64", "sha256"] {
            let f = xz(
                dir.path(),
                check,
                &input,
                &["-T1", &format!("--check={check}")],
            );
            assert_eq!(xz_valid(dir.path(), &format!("{check}.xz"), &f), 50_001);
        }
    }

    #[test]
    fn xz_multithreaded_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let input = data(3, (3 << 20) + 12_345);
        let f = xz(
            dir.path(),
            "mt",
            &input,
            &["-T2", "--block-size=1MiB", "-1"],
        );
        let n = xz_valid(dir.path(), "mt.xz", &f);
        assert_eq!(n, (3 << 20) + 12_345);
        // The index really lists several blocks: four records, the count byte says so.
        let backward = (u64::from(le_u32(&f[f.len() - 8..f.len() - 4])) + 1) * 4;
        let index = &f[f.len() - 12 - backward as usize..];
        assert_eq!(index[1], 4, "expected 4 blocks in the index");
    }

    #[test]
    fn xz_many_blocks_single_threaded() {
        let dir = tempfile::tempdir().unwrap();
        let input = data(4, 200_000);
        let f = xz(dir.path(), "many", &input, &["-T1", "--block-size=4KiB"]);
        assert_eq!(xz_valid(dir.path(), "many.xz", &f), 200_000);
    }

    #[test]
    fn xz_concatenated_streams_and_padding() {
        let dir = tempfile::tempdir().unwrap();
        let a = xz(dir.path(), "a", &data(5, 123_457), &["-T1"]);
        let b = xz(
            dir.path(),
            "b",
            &data(6, 65_536),
            &["-T2", "--block-size=16KiB"],
        );
        let empty = xz(dir.path(), "e", &[], &[]);

        let two = [a.clone(), b.clone()].concat();
        assert_eq!(xz_valid(dir.path(), "two.xz", &two), 123_457 + 65_536);

        // What `head -c 8 /dev/zero >> f.xz` makes.
        let tail = [a.clone(), vec![0; 8]].concat();
        assert_eq!(xz_valid(dir.path(), "tail.xz", &tail), 123_457);

        // Padding between streams, an empty stream, and more padding after.
        let mixed = [
            a.clone(),
            vec![0; 4],
            empty.clone(),
            vec![0; 12],
            b.clone(),
            vec![0; 4096 + 8],
        ]
        .concat();
        assert_eq!(xz_valid(dir.path(), "mixed.xz", &mixed), 123_457 + 65_536);

        // Padding longer than one read chunk, so the backward skip takes several reads.
        let long = [b, vec![0; 3 * CHUNK as usize + 4]].concat();
        assert_eq!(xz_valid(dir.path(), "long.xz", &long), 65_536);
    }

    #[test]
    fn xz_empty_input() {
        let dir = tempfile::tempdir().unwrap();
        let f = xz(dir.path(), "empty", &[], &[]);
        assert_eq!(f.len(), 32, "header, empty index, footer");
        assert_eq!(xz_valid(dir.path(), "empty.xz", &f), 0);
    }

    /// Recomputes the footer CRC32 of the stream ending at `end`, after a test changed its
    /// backward size, so that the check under test is the one that fails.
    fn fix_footer_crc(f: &mut [u8], end: usize) {
        let crc = crc32fast::hash(&f[end - 8..end - 2]);
        f[end - 12..end - 8].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn xz_refusals_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let good = xz(d, "g", &data(7, 40_000), &["-T1", "--block-size=8KiB"]);
        let n = good.len();

        let e = xz_refused(d, "cut1.xz", &good[..n - 1]);
        assert!(e.contains("not a multiple of four"), "{e}");
        let e = xz_refused(d, "cut4.xz", &good[..n - 4]);
        assert!(
            e.starts_with("xz stream footer at byte") && e.contains("footer magic"),
            "{e}"
        );
        let e = xz_refused(d, "nul.xz", &[]);
        assert!(e.contains("empty"), "{e}");
        let e = xz_refused(d, "zeros.xz", &[0; 64]);
        assert!(e.contains("all zero"), "{e}");

        // Padding before the first stream: xz refuses it, and so must we.
        let e = xz_refused(d, "lead.xz", &[vec![0; 4], good.clone()].concat());
        assert_eq!(
            e,
            "xz stream padding at byte 0: the 4 bytes from the start of the file are all zero: an .xz file begins with a stream header, not padding"
        );

        // Padding that is not a multiple of four.
        let e = xz_refused(d, "pad3.xz", &[good.clone(), vec![0; 3]].concat());
        assert!(e.contains("not a multiple of four"), "{e}");

        // Garbage after the stream.
        let e = xz_refused(d, "junk.xz", &[good.clone(), b"junk".to_vec()].concat());
        assert!(e.contains("footer magic"), "{e}");

        // A flipped bit in the footer's backward size: the CRC32 catches it.
        let mut bad = good.clone();
        bad[n - 8] ^= 0x10;
        let e = xz_refused(d, "crc.xz", &bad);
        assert!(e.contains("xz stream footer") && e.contains("CRC32"), "{e}");

        // A backward size pointing before the file, with a correct CRC32.
        let mut bad = good.clone();
        bad[n - 8..n - 4].copy_from_slice(&30_864_197u32.to_le_bytes());
        fix_footer_crc(&mut bad, n);
        let e = xz_refused(d, "back.xz", &bad);
        assert_eq!(
            e,
            format!(
                "xz stream footer at byte {}: backward size 123456792 points before the start of the file (at most {} bytes fit between the start, a 12-byte stream header and the footer)",
                n - 12,
                n - 24
            )
        );

        // A backward size one group too large: the index CRC32 no longer matches.
        let mut bad = good.clone();
        let stored = le_u32(&bad[n - 8..n - 4]);
        bad[n - 8..n - 4].copy_from_slice(&(stored + 1).to_le_bytes());
        fix_footer_crc(&mut bad, n);
        let e = xz_refused(d, "idx.xz", &bad);
        assert!(
            e.starts_with("xz index at byte") && e.contains("CRC32"),
            "{e}"
        );

        // Reserved stream flag bits, with a correct CRC32.
        let mut bad = good.clone();
        bad[n - 3] |= 0x40;
        fix_footer_crc(&mut bad, n);
        let e = xz_refused(d, "flags.xz", &bad);
        assert!(e.contains("reserved bits"), "{e}");

        // Footer flags that differ from the header's (another check type).
        let mut bad = good.clone();
        bad[n - 3] ^= 0x05;
        fix_footer_crc(&mut bad, n);
        let e = xz_refused(d, "differ.xz", &bad);
        assert!(
            e.starts_with("xz stream header at byte 0") && e.contains("differ"),
            "{e}"
        );

        // A damaged stream header.
        let mut bad = good.clone();
        bad[1] = b'8';
        let e = xz_refused(d, "magic.xz", &bad);
        assert!(e.contains("magic bytes"), "{e}");
        let mut bad = good.clone();
        bad[9] ^= 1;
        let e = xz_refused(d, "hcrc.xz", &bad);
        assert!(
            e.starts_with("xz stream header at byte 0") && e.contains("CRC32"),
            "{e}"
        );
    }

    /// Builds one stream by hand around an index body, with correct CRC32s, so index
    /// fields that xz never writes can be tested. `blocks` bytes of zeros stand in for
    /// the blocks: only their length matters here.
    fn hand_stream(blocks: usize, records: &[u8]) -> Vec<u8> {
        let flags = [0u8, 1];
        let mut s = XZ_HEADER_MAGIC.to_vec();
        s.extend_from_slice(&flags);
        s.extend_from_slice(&crc32fast::hash(&flags).to_le_bytes());
        s.extend(std::iter::repeat_n(0, blocks));
        let mut index = vec![0u8];
        index.extend_from_slice(records);
        while index.len() % 4 != 0 {
            index.push(0);
        }
        let crc = crc32fast::hash(&index);
        index.extend_from_slice(&crc.to_le_bytes());
        let backward = (index.len() / 4 - 1) as u32;
        s.extend_from_slice(&index);
        let mut tail = backward.to_le_bytes().to_vec();
        tail.extend_from_slice(&flags);
        s.extend_from_slice(&crc32fast::hash(&tail).to_le_bytes());
        s.extend_from_slice(&tail);
        s.extend_from_slice(&XZ_FOOTER_MAGIC);
        s
    }

    fn xz_bytes(b: &[u8]) -> Result<u64, SizeError> {
        xz_uncompressed_size(&mut Cursor::new(b))
    }

    #[test]
    fn xz_index_fields() {
        // One record: unpadded 5 (rounded to 8 bytes of blocks), uncompressed 300 (ac 02).
        assert_eq!(xz_bytes(&hand_stream(8, &[1, 5, 0xac, 0x02])).unwrap(), 300);
        // Two records, sizes in the 63-bit range: 2^62 each would pass 2^63 - 1 together.
        let big = [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x40];
        let mut recs = vec![2, 5];
        recs.extend_from_slice(&big);
        recs.push(5);
        recs.extend_from_slice(&big);
        let e = xz_bytes(&hand_stream(16, &recs)).unwrap_err().to_string();
        assert!(e.contains("passes 2^63 - 1"), "{e}");
        // Non-minimal multibyte integer (300 written with a trailing zero byte).
        let e = xz_bytes(&hand_stream(8, &[1, 5, 0xac, 0x82, 0x00]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("shortest form"), "{e}");
        // A ten-byte integer.
        let e = xz_bytes(&hand_stream(
            8,
            &[
                1, 5, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("longer than nine bytes"), "{e}");
        // Unpadded size below the minimum of five.
        let e = xz_bytes(&hand_stream(4, &[1, 4, 1]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unpadded size 4 is outside"), "{e}");
        // A record count far larger than the index could hold.
        let e = xz_bytes(&hand_stream(8, &[0xff, 0xff, 0xff, 0x7f, 5, 1]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("has room for at most"), "{e}");
        // Blocks larger than the space before the index.
        let e = xz_bytes(&hand_stream(8, &[1, 0x80, 0x01, 1]))
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("xz index at byte") && e.contains("its blocks take 128 bytes"),
            "{e}"
        );
        // Blocks smaller than that space: the walk lands inside zeros, not on a header.
        let e = xz_bytes(&hand_stream(16, &[1, 5, 1]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("magic bytes"), "{e}");
        // The last record's uncompressed size runs into the CRC32.
        let e = xz_bytes(&hand_stream(16, &[2, 5, 1, 5, 0x81, 0x81, 0x81]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("record 1") && e.contains("uncompressed size runs past"),
            "{e}"
        );
        // An index indicator that is not zero.
        let mut s = hand_stream(8, &[1, 5, 1]);
        let index_pos = 12 + 8;
        s[index_pos] = 1;
        let crc = crc32fast::hash(&s[index_pos..index_pos + 4]);
        s[index_pos + 4..index_pos + 8].copy_from_slice(&crc.to_le_bytes());
        let e = xz_bytes(&s).unwrap_err().to_string();
        assert!(e.contains("index indicator is 0x01"), "{e}");
    }

    #[test]
    fn xz_index_limit() {
        // A footer whose backward size is over the limit but inside the file; the index
        // is not read at all (all zeros here, so its CRC32 would fail otherwise).
        let total = XZ_MAX_INDEX as usize + 64;
        let mut f = vec![0u8; total];
        f[..6].copy_from_slice(&XZ_HEADER_MAGIC);
        let stored = ((XZ_MAX_INDEX + 4) / 4 - 1) as u32;
        f[total - 8..total - 4].copy_from_slice(&stored.to_le_bytes());
        f[total - 2..].copy_from_slice(&XZ_FOOTER_MAGIC);
        fix_footer_crc(&mut f, total);
        let mut r = counting(&f);
        let e = xz_uncompressed_size(&mut r).unwrap_err().to_string();
        assert!(e.contains("larger than the 67108864 bytes accepted"), "{e}");
        assert!(r.bytes <= 2 * CHUNK, "read {} bytes", r.bytes);
    }

    /// A skippable frame with `len` bytes of user data.
    fn skippable(nibble: u8, len: usize) -> Vec<u8> {
        let mut s = (0x184d_2a50u32 + u32::from(nibble)).to_le_bytes().to_vec();
        s.extend_from_slice(&(len as u32).to_le_bytes());
        s.extend((0..len).map(|i| i as u8));
        s
    }

    #[test]
    fn zstd_default() {
        let dir = tempfile::tempdir().unwrap();
        let input = data(11, 1_000_003);
        let f = zstd(dir.path(), "a", &input, &[]);
        assert_eq!(zstd_valid(dir.path(), "a.zst", &f), Some(1_000_003));
        // A few bytes: the 1-byte, single-segment form of the content size.
        let f = zstd(dir.path(), "b", b"hello", &[]);
        assert_eq!(zstd_valid(dir.path(), "b.zst", &f), Some(5));
        // Between 256 and 65791 bytes: the 2-byte form, which starts at 256.
        let f = zstd(dir.path(), "c", &data(12, 40_000), &["--no-check"]);
        assert_eq!(f[4] >> 6, 1, "expected the 2-byte content size form");
        assert_eq!(zstd_valid(dir.path(), "c.zst", &f), Some(40_000));
        let f = zstd(dir.path(), "d", &data(12, 256), &[]);
        assert_eq!(zstd_valid(dir.path(), "d.zst", &f), Some(256));
    }

    #[test]
    fn zstd_without_content_size() {
        let dir = tempfile::tempdir().unwrap();
        let f = zstd(dir.path(), "a", &data(13, 300_000), &["--no-content-size"]);
        assert_eq!(zstd_valid(dir.path(), "a.zst", &f), None);
        // One frame without a size makes the whole file's size unknown.
        let g = zstd(dir.path(), "b", &data(14, 1000), &[]);
        assert_eq!(zstd_valid(dir.path(), "ab.zst", &[g, f].concat()), None);
    }

    #[test]
    fn zstd_empty_input() {
        let dir = tempfile::tempdir().unwrap();
        let f = zstd(dir.path(), "e", &[], &[]);
        assert_eq!(zstd_valid(dir.path(), "e.zst", &f), Some(0));
    }

    #[test]
    fn zstd_frames_and_skippable_frames() {
        let dir = tempfile::tempdir().unwrap();
        let a = zstd(dir.path(), "a", &data(15, 200_000), &[]);
        let b = zstd(dir.path(), "b", &data(16, 77_777), &["-19"]);
        let c = zstd(dir.path(), "c", &[], &[]);
        let multi = [a.clone(), b.clone(), c].concat();
        assert_eq!(zstd_valid(dir.path(), "m.zst", &multi), Some(277_777));

        let front = [skippable(0, 100), a.clone()].concat();
        assert_eq!(zstd_valid(dir.path(), "f.zst", &front), Some(200_000));

        // Skippable frames everywhere, an empty one, and a larger one that spans chunks.
        let all = [
            skippable(0xf, 0),
            a,
            skippable(3, 3 * CHUNK as usize),
            b,
            skippable(7, 1),
        ]
        .concat();
        assert_eq!(zstd_valid(dir.path(), "s.zst", &all), Some(277_777));
    }

    #[test]
    fn zstd_multithreaded_long() {
        let dir = tempfile::tempdir().unwrap();
        let input = data(17, (6 << 20) + 7);
        let f = zstd(dir.path(), "mt", &input, &["-T2", "--long", "-3"]);
        assert_eq!(zstd_valid(dir.path(), "mt.zst", &f), Some((6 << 20) + 7));
        let f = zstd(
            dir.path(),
            "ml",
            &input,
            &["-T2", "--long=24", "--no-content-size"],
        );
        assert_eq!(zstd_valid(dir.path(), "ml.zst", &f), None);
    }

    #[test]
    fn zstd_raw_and_rle_blocks() {
        let dir = tempfile::tempdir().unwrap();
        // Noise is stored in raw blocks; zeros in RLE blocks.
        let f = zstd(dir.path(), "n", &noise(18, 700_000), &["-1"]);
        assert_eq!(zstd_valid(dir.path(), "n.zst", &f), Some(700_000));
        let f = zstd(dir.path(), "z", &vec![0u8; 1_000_000], &[]);
        assert_eq!(zstd_valid(dir.path(), "z.zst", &f), Some(1_000_000));
    }

    #[test]
    fn zstd_refusals_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let good = zstd(d, "g", b"hello", &[]);
        // 28 b5 2f fd | 20 05 (single segment, size 5) | 29 00 00 (last raw block, 5) |
        // hello | checksum
        assert_eq!(good.len(), 4 + 2 + 3 + 5 + 4, "{good:02x?}");
        let n = good.len();

        let e = zstd_refused(d, "nul.zst", &[]);
        assert!(e.contains("empty"), "{e}");
        let e = zstd_refused(d, "cut.zst", &good[..n - 1]);
        assert!(e.starts_with("zstd frame checksum at byte 14"), "{e}");
        let e = zstd_refused(d, "cutb.zst", &good[..10]);
        assert!(
            e.starts_with("zstd block header at byte 6") && e.contains("run past"),
            "{e}"
        );
        let e = zstd_refused(d, "cuth.zst", &good[..5]);
        assert!(e.contains("descriptor"), "{e}");
        let e = zstd_refused(d, "junk.zst", &[good.clone(), b"junk".to_vec()].concat());
        assert!(
            e.starts_with("zstd frame at byte 18: magic number is 0x6b6e756a"),
            "{e}"
        );
        let e = zstd_refused(d, "short.zst", &[good.clone(), vec![0; 3]].concat());
        assert!(e.contains("only 3 bytes remain"), "{e}");

        let mut bad = good.clone();
        bad[4] |= 0x08;
        let e = zstd_refused(d, "res.zst", &bad);
        assert!(e.contains("reserved bit 3"), "{e}");

        let mut bad = good.clone();
        bad[6] |= 0x06;
        let e = zstd_refused(d, "type.zst", &bad);
        assert!(e.contains("block type 3 is reserved"), "{e}");

        // The content size says 9 but the one raw block holds 5.
        let mut bad = good.clone();
        bad[5] = 9;
        let e = zstd_refused(d, "fcs.zst", &bad);
        assert!(
            e.contains("frame content size 9 cannot be what its blocks hold"),
            "{e}"
        );

        // A raw block larger than the single-segment window (the content size).
        let mut bad = good.clone();
        bad[6] = (6 << 3) | 1;
        bad.insert(9, b'!');
        let e = zstd_refused(d, "big.zst", &bad);
        assert!(
            e.contains("larger than the frame's maximum block size 5"),
            "{e}"
        );

        // A skippable frame whose size runs past the end.
        let mut bad = skippable(1, 10);
        bad.truncate(17);
        let e = zstd_refused(d, "skip.zst", &bad);
        assert!(
            e.starts_with("zstd skippable frame at byte 0: frame size 10 runs past"),
            "{e}"
        );
    }

    #[test]
    fn zstd_walk_reads_headers_only() {
        // 16 MiB of noise: 128 raw blocks of 128 KiB. The walk must read a few KiB per
        // block header, not the blocks.
        let dir = tempfile::tempdir().unwrap();
        let f = zstd(dir.path(), "n", &noise(19, 16 << 20), &["-1", "-T2"]);
        let mut r = counting(&f);
        assert_eq!(zstd_content_size(&mut r).unwrap(), Some(16 << 20));
        assert!(
            r.bytes * 16 < f.len() as u64,
            "read {} of {} bytes",
            r.bytes,
            f.len()
        );
        assert!(r.reads <= 2 * 128 + 8, "{} reads", r.reads);
    }

    /// Applies one seeded mutation to `f` (a valid file); returns whether it only cut the
    /// file short.
    fn mutate(rng: &mut Rng, f: &mut Vec<u8>, fix_xz_crcs: bool) -> bool {
        let len = f.len() as u64;
        // Most damage goes where the headers, indexes and footers are.
        let near_ends = |rng: &mut Rng| {
            let k = rng.below(96.min(len));
            if rng.below(2) == 0 {
                k as usize
            } else {
                (len - 1 - k) as usize
            }
        };
        match rng.below(8) {
            0 => {
                let p = rng.below(len) as usize;
                f[p] ^= 1 << rng.below(8);
            }
            1 => {
                let p = near_ends(rng);
                f[p] ^= 1 << rng.below(8);
            }
            2 => {
                f.truncate(rng.below(len) as usize);
                return true;
            }
            3 => {
                for _ in 0..1 + rng.below(8) {
                    let p = near_ends(rng);
                    f[p] = rng.next() as u8;
                }
            }
            4 => {
                // A random length field: a little-endian number of random width at a
                // random place near the ends (backward size, frame sizes, block sizes).
                let p = near_ends(rng);
                let width = [1, 2, 3, 4, 8][rng.below(5) as usize];
                let v = match rng.below(3) {
                    0 => rng.below(256),
                    1 => u64::MAX - rng.below(256),
                    _ => rng.next(),
                };
                for (i, b) in v.to_le_bytes().iter().take(width).enumerate() {
                    if let Some(slot) = f.get_mut(p + i) {
                        *slot = *b;
                    }
                }
            }
            5 => {
                let n = rng.below(16) as usize;
                let zero = rng.below(2) == 0;
                f.extend((0..n).map(|_| if zero { 0 } else { rng.next() as u8 }));
            }
            6 => {
                let p = rng.below(len) as usize;
                let n = (1 + rng.below(16) as usize).min(f.len() - p);
                if rng.below(2) == 0 {
                    f.drain(p..p + n);
                } else {
                    let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                    f.splice(p..p, bytes);
                }
            }
            _ => {
                let p = rng.below(len) as usize;
                f[p] = rng.next() as u8;
            }
        }
        if fix_xz_crcs {
            // Make the last stream's footer and index CRC32s right again where the
            // footer still gives a usable backward size, so the damage reaches the index
            // records, the padding and the walk back, not only the CRC checks.
            let n = f.len();
            if n >= 12 && n.is_multiple_of(4) {
                let backward = (u64::from(le_u32(&f[n - 8..n - 4])) + 1) * 4;
                fix_footer_crc(f, n);
                if let Some(index_pos) = (n as u64 - 12).checked_sub(backward) {
                    let (s, e) = (index_pos as usize, n - 16);
                    let crc = crc32fast::hash(&f[s..e]);
                    f[e..e + 4].copy_from_slice(&crc.to_le_bytes());
                }
            }
        }
        false
    }

    /// The work any input may cost: a bounded number of reads and bytes read.
    fn assert_bounded(what: &str, len: usize, reads: u64, bytes: u64) {
        let len = len as u64;
        assert!(
            reads <= len / 2 + 16,
            "{what}: {reads} reads of a {len}-byte file"
        );
        assert!(
            bytes <= 4 * len + 16 * CHUNK,
            "{what}: {bytes} bytes read of a {len}-byte file"
        );
    }

    #[test]
    fn mutations_never_panic_or_run_away() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let empty_xz = xz(d, "e", &[], &[]);
        let xz_bases: Vec<(Vec<u8>, u64)> = vec![
            (xz(d, "x1", &data(21, 30_000), &["-T1"]), 30_000),
            (
                xz(
                    d,
                    "x2",
                    &data(22, 40_000),
                    &["-T1", "--block-size=2KiB", "--check=crc32"],
                ),
                40_000,
            ),
            (
                [
                    xz(d, "x3", &data(23, 5_000), &["--check=none"]),
                    vec![0; 8],
                    empty_xz,
                    vec![0; 4],
                ]
                .concat(),
                5_000,
            ),
        ];
        let zstd_bases: Vec<(Vec<u8>, Option<u64>)> = vec![
            (zstd(d, "z1", &data(24, 300_000), &[]), Some(300_000)),
            (
                [
                    skippable(2, 40),
                    zstd(d, "z2", &data(25, 20_000), &["-19"]),
                    zstd(d, "z3", &[0; 200_000], &[]),
                ]
                .concat(),
                Some(220_000),
            ),
            (
                zstd(d, "z4", &noise(26, 150_000), &["--no-content-size"]),
                None,
            ),
        ];
        for (f, size) in &xz_bases {
            assert_eq!(xz_bytes(f).unwrap(), *size);
        }
        for (f, size) in &zstd_bases {
            assert_eq!(zstd_content_size(&mut Cursor::new(f)).unwrap(), *size);
        }

        let mut rng = Rng::new(0x0e1_6a9e);
        let mut runs = 0;
        let (mut ok, mut parts) = (0, std::collections::BTreeSet::new());
        for round in 0..2_000 {
            for (base, size) in &xz_bases {
                let mut f = base.clone();
                let cut = mutate(&mut rng, &mut f, round % 2 == 1);
                let mut r = counting(&f);
                match xz_uncompressed_size(&mut r) {
                    Ok(n) => {
                        ok += 1;
                        assert!(
                            !cut || n <= *size,
                            "round {round}: a cut file claims {n} > {size}"
                        );
                    }
                    Err(SizeError::Invalid { part, .. }) => {
                        parts.insert(part);
                    }
                    Err(e) => panic!("round {round}: {e}"),
                }
                assert_bounded("xz", f.len(), r.reads, r.bytes);
                runs += 1;
            }
            for (base, size) in &zstd_bases {
                let mut f = base.clone();
                let cut = mutate(&mut rng, &mut f, false);
                let mut r = counting(&f);
                match zstd_content_size(&mut r) {
                    Ok(n) => {
                        ok += 1;
                        if let (true, Some(n), Some(size)) = (cut, n, size) {
                            assert!(n <= *size, "round {round}: a cut file claims {n} > {size}");
                        }
                    }
                    Err(SizeError::Invalid { part, .. }) => {
                        parts.insert(part);
                    }
                    Err(e) => panic!("round {round}: {e}"),
                }
                assert_bounded("zstd", f.len(), r.reads, r.bytes);
                runs += 1;
            }
        }
        assert!(runs >= 10_000);
        // The mutations reach the deep checks, not only the first one.
        for part in [
            "xz file",
            "xz stream footer",
            "xz index",
            "xz stream header",
            "zstd frame",
            "zstd frame header",
            "zstd block header",
            "zstd frame checksum",
        ] {
            assert!(
                parts.contains(part),
                "no mutation reached {part}: {parts:?}"
            );
        }
        assert!(ok > 100, "only {ok} mutated files still read");
    }

    /// Run with `cargo test -p oneimage-format -- --ignored`: builds a 1 GiB `.zst` of
    /// noise (about 2 GiB through zstd) and checks that reading its size is fast.
    #[test]
    #[ignore = "writes a 1 GiB file"]
    fn zstd_one_gib_is_fast() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.zst");
        let mut child = Command::new("zstd")
            .args(["-1", "-T2", "-q", "--stream-size=1073741824", "-o"])
            .arg(&path)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let mut rng = Rng::new(27);
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..1024 {
            for w in chunk.chunks_exact_mut(8) {
                w.copy_from_slice(&rng.next().to_le_bytes());
            }
            stdin.write_all(&chunk).unwrap();
        }
        drop(stdin);
        assert!(child.wait().unwrap().success());
        let start = std::time::Instant::now();
        let n = zstd_content_size(&mut File::open(&path).unwrap()).unwrap();
        let took = start.elapsed();
        assert_eq!(n, Some(1 << 30));
        assert!(took.as_millis() < 1000, "took {took:?}");
        eprintln!("1 GiB .zst walked in {took:?}");
    }
}
