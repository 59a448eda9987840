//! Reading the zstd seekable format: the seek table (`oneimage_format::zstd_seekable`)
//! lists independent frames, which are decoded on several threads and handed on in order.

use super::pipe::{self, PipeReader};
use anyhow::{Context, Result};
pub use oneimage_format::zstd_seekable::read_seek_table;
use oneimage_format::zstd_seekable::FrameEntry;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::mpsc::sync_channel;

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
