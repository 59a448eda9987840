//! Reading the zstd seekable format: the seek table (`oneimage_format::zstd_seekable`)
//! lists independent frames, which are decoded on several threads and handed on in order.

use super::pipe::{self, PipeReader};
use super::TappedFile;
pub use oneimage_format::zstd_seekable::read_seek_table;
use oneimage_format::zstd_seekable::{FrameEntry, SeekTable};
use std::io;
use std::sync::mpsc::sync_channel;

/// Most bytes of frames the decoder threads hold at once; frames of `MAX_FRAME`
/// (64 MiB) still get three threads, the usual 4 MiB ones fifty.
const IN_FLIGHT: u64 = 1 << 30;

/// Decodes a seekable file on `threads` threads; the frames are read in file order from
/// `input` (so its tap sees the file in order) and their images come out in order.
pub fn spawn_parallel(
    name: String,
    mut input: TappedFile,
    table: SeekTable,
    threads: usize,
) -> PipeReader {
    pipe::spawn_with(name, move |sink| {
        // Each thread holds up to five frames (two queued, one decoding, two done), so
        // large frames get fewer threads: at most IN_FLIGHT bytes of frames at once.
        let largest = table
            .frames
            .iter()
            .map(|f| u64::from(f.decompressed).max(u64::from(f.compressed)))
            .max()
            .unwrap_or(0);
        let fit = (IN_FLIGHT / (5 * largest.max(1))).max(1) as usize;
        let n = threads.max(1).min(table.frames.len().max(1)).min(fit);
        std::thread::scope(|s| -> io::Result<()> {
            let mut work = Vec::new();
            let mut done = Vec::new();
            for _ in 0..n {
                let (wtx, wrx) = sync_channel::<(usize, u64, FrameEntry, Vec<u8>)>(2);
                let (dtx, drx) = sync_channel::<io::Result<Vec<u8>>>(2);
                work.push(wtx);
                done.push(drx);
                s.spawn(move || {
                    let mut dec = match zstd::bulk::Decompressor::new() {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = dtx.send(Err(e));
                            return;
                        }
                    };
                    for (i, off, e, comp) in wrx {
                        let r = decode_frame(&mut dec, i, off, e, &comp);
                        let failed = r.is_err();
                        if dtx.send(r).is_err() || failed {
                            return;
                        }
                    }
                });
            }
            let mut off = 0u64;
            let mut next_out = 0usize;
            for (i, e) in table.frames.iter().enumerate() {
                let mut comp = vec![0u8; e.compressed as usize];
                input.read_exact_at(&mut comp, off)?;
                // Keep at most `n` frames in flight: collect the oldest before more go out.
                if i >= next_out + n {
                    sink.send(collect(&done[next_out % n])?)?;
                    next_out += 1;
                }
                if work[i % n].send((i, off, *e, comp)).is_err() {
                    return Err(io::Error::other("a zstd decoder thread stopped"));
                }
                off += e.compressed as u64;
            }
            drop(work);
            while next_out < table.frames.len() {
                sink.send(collect(&done[next_out % n])?)?;
                next_out += 1;
            }
            input.finish()
        })
    })
}

fn collect(rx: &std::sync::mpsc::Receiver<io::Result<Vec<u8>>>) -> io::Result<Vec<u8>> {
    match rx.recv() {
        Ok(r) => r,
        Err(_) => Err(io::Error::other("a zstd decoder thread stopped")),
    }
}

fn decode_frame(
    dec: &mut zstd::bulk::Decompressor<'_>,
    index: usize,
    off: u64,
    e: FrameEntry,
    comp: &[u8],
) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(e.decompressed as usize);
    let n = dec
        .decompress_to_buffer(comp, &mut out)
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
