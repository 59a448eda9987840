//! The zstd seekable format: independent zstd frames followed by a skippable frame that
//! lists each frame's compressed and decompressed size. Plain `zstd -d` reads such a file
//! as ordinary concatenated frames; we use the table to decode frames on several threads.

use super::pipe::{self, PipeReader};
use anyhow::{Context, Result};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::sync_channel;

const SKIPPABLE_MAGIC: u32 = 0x184d_2a5e;
const SEEKABLE_MAGIC: u32 = 0x8f92_eab1;
const FOOTER: u64 = 9;
/// Frames larger than this are refused (the format's own limit is 1 GiB).
const MAX_FRAME: u32 = 1 << 30;

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
    if u32::from_le_bytes(foot[5..9].try_into().unwrap()) != SEEKABLE_MAGIC {
        return Ok(None);
    }
    let count = u32::from_le_bytes(foot[0..4].try_into().unwrap()) as u64;
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
    if u32::from_le_bytes(hdr[0..4].try_into().unwrap()) != SKIPPABLE_MAGIC
        || u32::from_le_bytes(hdr[4..8].try_into().unwrap()) as u64 != table_len
    {
        return Ok(None);
    }
    let mut raw = vec![0u8; (count * entry) as usize];
    f.read_exact(&mut raw)?;
    let frames: Vec<FrameEntry> = raw
        .chunks(entry as usize)
        .map(|c| FrameEntry {
            compressed: u32::from_le_bytes(c[0..4].try_into().unwrap()),
            decompressed: u32::from_le_bytes(c[4..8].try_into().unwrap()),
        })
        .collect();
    let total: u64 = frames.iter().map(|e| e.compressed as u64).sum();
    if total != start || frames.iter().any(|e| e.decompressed > MAX_FRAME) {
        return Ok(None);
    }
    f.seek(SeekFrom::Start(0))?;
    Ok(Some(SeekTable { frames }))
}

/// Decodes a seekable file on `threads` threads, in order.
pub fn spawn_parallel(path: &Path, threads: usize) -> Result<PipeReader> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let table = read_seek_table(&mut f)?
        .with_context(|| format!("{}: the zstd seek table vanished", path.display()))?;
    let mut offsets = Vec::with_capacity(table.frames.len());
    let mut off = 0u64;
    for e in &table.frames {
        offsets.push((off, *e));
        off += e.compressed as u64;
    }
    let name = path.display().to_string();
    Ok(pipe::spawn_with(name, move |sink| {
        let n = threads.max(1).min(offsets.len().max(1));
        std::thread::scope(|s| -> io::Result<()> {
            let mut rxs = Vec::new();
            for k in 0..n {
                let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(2);
                rxs.push(rx);
                let mine: Vec<(usize, (u64, FrameEntry))> = offsets
                    .iter()
                    .copied()
                    .enumerate()
                    .skip(k)
                    .step_by(n)
                    .collect();
                let f = &f;
                s.spawn(move || {
                    let mut dec = match zstd::bulk::Decompressor::new() {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = tx.send(Err(e));
                            return;
                        }
                    };
                    for (i, (off, e)) in mine {
                        let r = decode_frame(f, &mut dec, i, off, e);
                        let failed = r.is_err();
                        if tx.send(r).is_err() || failed {
                            return;
                        }
                    }
                });
            }
            for i in 0..offsets.len() {
                match rxs[i % n].recv() {
                    Ok(Ok(buf)) => sink.send(buf)?,
                    Ok(Err(e)) => return Err(e),
                    Err(_) => return Err(io::Error::other("a zstd decoder thread stopped")),
                }
            }
            Ok(())
        })
    }))
}

fn decode_frame(
    f: &File,
    dec: &mut zstd::bulk::Decompressor<'_>,
    index: usize,
    off: u64,
    e: FrameEntry,
) -> io::Result<Vec<u8>> {
    let mut comp = vec![0u8; e.compressed as usize];
    f.read_exact_at(&mut comp, off)?;
    let mut out = Vec::with_capacity(e.decompressed as usize);
    let n = dec
        .decompress_to_buffer(&comp, &mut out)
        .map_err(|err| bad(format!("zstd frame {index} at byte {off}: {err}")))?;
    if n != e.decompressed as usize {
        return Err(bad(format!(
            "zstd frame {index} at byte {off} decompressed to {n} bytes, the seek table says {}",
            e.decompressed
        )));
    }
    Ok(out)
}

fn bad(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Compresses `input` into the seekable format: frames of `frame_size` bytes, each
/// with a content checksum, compressed on `threads` threads at `level`. The output
/// depends only on the input, `level` and `frame_size`. Returns the bytes written.
pub fn compress<R: Read, W: Write>(
    mut input: R,
    mut out: W,
    level: i32,
    frame_size: usize,
    threads: usize,
) -> io::Result<u64> {
    let threads = threads.max(1);
    let mut entries = Vec::new();
    let mut written = 0u64;
    loop {
        let mut batch = Vec::new();
        for _ in 0..threads * 2 {
            let mut buf = vec![0u8; frame_size];
            let n = super::read_up_to(&mut input, &mut buf)?;
            if n == 0 {
                break;
            }
            buf.truncate(n);
            batch.push(buf);
            if n < frame_size {
                break;
            }
        }
        if batch.is_empty() {
            break;
        }
        let last = batch.last().map(|b| b.len() < frame_size).unwrap_or(true);
        let per = batch.len().div_ceil(threads);
        let results: Vec<io::Result<Vec<Vec<u8>>>> = std::thread::scope(|s| {
            let hs: Vec<_> = batch
                .chunks(per)
                .map(|group| {
                    s.spawn(move || -> io::Result<Vec<Vec<u8>>> {
                        let mut c = zstd::bulk::Compressor::new(level)?;
                        c.set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))?;
                        group.iter().map(|b| c.compress(b)).collect()
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("zstd compressor thread"))
                .collect()
        });
        let mut i = 0;
        for group in results {
            for frame in group? {
                out.write_all(&frame)?;
                written += frame.len() as u64;
                entries.push(FrameEntry {
                    compressed: frame.len() as u32,
                    decompressed: batch[i].len() as u32,
                });
                i += 1;
            }
        }
        if last {
            break;
        }
    }
    let table_len = entries.len() as u32 * 8 + FOOTER as u32;
    let mut t = Vec::with_capacity(table_len as usize + 8);
    t.extend_from_slice(&SKIPPABLE_MAGIC.to_le_bytes());
    t.extend_from_slice(&table_len.to_le_bytes());
    for e in &entries {
        t.extend_from_slice(&e.compressed.to_le_bytes());
        t.extend_from_slice(&e.decompressed.to_le_bytes());
    }
    t.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    t.push(0);
    t.extend_from_slice(&SEEKABLE_MAGIC.to_le_bytes());
    out.write_all(&t)?;
    Ok(written + t.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn round_trip_and_plain_zstd_reads_it() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i % 251) as u8 ^ (i >> 9) as u8)
            .collect();
        let mut out = Vec::new();
        compress(&data[..], &mut out, 3, 65536, 2).unwrap();
        let t = read_seek_table(&mut Cursor::new(&out)).unwrap().unwrap();
        assert_eq!(t.frames.len(), 5);
        assert_eq!(
            t.frames
                .iter()
                .map(|f| f.decompressed as usize)
                .sum::<usize>(),
            data.len()
        );
        // An ordinary decoder skips the seek table.
        assert_eq!(zstd::decode_all(&out[..]).unwrap(), data);
        // Thread count does not change the bytes.
        let mut one = Vec::new();
        compress(&data[..], &mut one, 3, 65536, 1).unwrap();
        assert_eq!(one, out);
    }

    #[test]
    fn truncated_file_has_no_table() {
        let mut out = Vec::new();
        compress(&[7u8; 100_000][..], &mut out, 1, 4096, 1).unwrap();
        out.truncate(out.len() - 3);
        assert_eq!(read_seek_table(&mut Cursor::new(&out)).unwrap(), None);
    }
}
