//! The zstd seekable format's writer: independent frames of a fixed size, compressed on
//! several threads, then the seek table (see `oneimage_format::zstd_seekable`).

use oneimage_format::zstd_seekable::{FrameEntry, SeekTable};
use std::io::{self, Read, Write};

fn read_up_to<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Compresses `input` into the seekable format: frames of `frame_size` bytes, each
/// with a content checksum, compressed on `threads` threads at `level`. The output
/// depends only on the input, `level` and `frame_size`. Returns the bytes written.
pub fn compress_seekable<R: Read, W: Write>(
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
            let n = read_up_to(&mut input, &mut buf)?;
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
    let t = SeekTable { frames: entries }.to_bytes();
    out.write_all(&t)?;
    Ok(written + t.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use oneimage_format::zstd_seekable::read_seek_table;
    use std::io::Cursor;

    #[test]
    fn round_trip_and_plain_zstd_reads_it() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| (i % 251) as u8 ^ (i >> 9) as u8)
            .collect();
        let mut out = Vec::new();
        compress_seekable(&data[..], &mut out, 3, 65536, 2).unwrap();
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
        compress_seekable(&data[..], &mut one, 3, 65536, 1).unwrap();
        assert_eq!(one, out);
    }

    #[test]
    fn truncated_file_has_no_table() {
        let mut out = Vec::new();
        compress_seekable(&[7u8; 100_000][..], &mut out, 1, 4096, 1).unwrap();
        out.truncate(out.len() - 3);
        assert_eq!(read_seek_table(&mut Cursor::new(&out)).unwrap(), None);
    }
}
