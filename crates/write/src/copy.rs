//! The copy: image bytes from the source stream go to the target, only where the block
//! map (or, without one, a non-zero block) says there is data. Each bmap range is checked
//! against its SHA-256 as it streams by; every written extent is hashed for the readback.
//! The first MiB (the partition tables) is held back and written last, so an interrupted
//! write does not leave a disk that looks bootable.

use crate::bmap::Bmap;
use crate::progress::Progress;
use crate::source::read_up_to;
use crate::target::{AlignedBuf, Target};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::io::Read;

/// Bytes at the start of the image that are written last.
pub const HOLD_BACK: u64 = 1 << 20;
const BUF: usize = 4 << 20;
const MAX_EXTENT: u64 = 64 << 20;
const BLOCK: usize = 4096;

/// A piece of the target that the copy wrote and the readback must find again.
#[derive(Debug, Clone)]
pub struct Extent {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
    /// SHA-256 of the bytes written there.
    pub sha256: [u8; 32],
}

/// What the copy did.
#[derive(Debug, Clone)]
pub struct Copied {
    /// Bytes in the image.
    pub image_size: u64,
    /// Bytes written to the target (data and erased ranges).
    pub written: u64,
    /// The written extents, in order.
    pub extents: Vec<Extent>,
}

struct Writer<'a> {
    target: &'a Target,
    limit: u64,
    held: Vec<u8>,
    extents: Vec<Extent>,
    cur: Option<(u64, u64, Sha256)>,
    written: u64,
}

impl Writer<'_> {
    /// Records an extent whose hash the caller computed (a checked bmap range).
    fn push_extent(&mut self, start: u64, end: u64, sha256: [u8; 32]) {
        self.close_extent();
        self.extents.push(Extent { start, end, sha256 });
    }

    /// Writes `data` at `off` (holding back the first MiB); with `record`, hashes it
    /// into the current extent for the readback.
    fn put(&mut self, data: &[u8], off: u64, record: bool) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let len = data.len() as u64;
        let end = off + len;
        if end > self.limit {
            bail!(
                "the image does not fit: it goes on past byte {} but {} has only {} bytes",
                self.limit,
                self.target.display(),
                self.limit
            );
        }
        match &mut self.cur {
            _ if !record => {}
            Some((_, e, h)) if *e == off && end - off <= MAX_EXTENT => {
                h.update(data);
                *e = end;
            }
            _ => {
                self.close_extent();
                let mut h = Sha256::new();
                h.update(data);
                self.cur = Some((off, end, h));
            }
        }
        if let Some((s, _, _)) = self.cur {
            if end - s >= MAX_EXTENT {
                self.close_extent();
            }
        }
        let mut data = data;
        let mut off = off;
        if off < HOLD_BACK {
            let n = ((HOLD_BACK - off) as usize).min(data.len());
            let at = off as usize;
            if self.held.len() < at + n {
                self.held.resize(at + n, 0);
            }
            self.held[at..at + n].copy_from_slice(&data[..n]);
            data = &data[n..];
            off += n as u64;
        }
        if !data.is_empty() {
            self.target
                .write_at(data, off)
                .with_context(|| format!("writing {} at byte {off}", self.target.display()))?;
        }
        self.written += len;
        Ok(())
    }

    fn close_extent(&mut self) {
        if let Some((s, e, h)) = self.cur.take() {
            self.extents.push(Extent {
                start: s,
                end: e,
                sha256: h.finalize().into(),
            });
        }
    }
}

/// Copies the image from `src` to `target`. With `map`, only its ranges are written and
/// checked; without, blocks of zeros are skipped. `erase` writes zeros over what is
/// skipped (for dirty media). `image_size` is enforced when known.
pub fn copy(
    src: &mut dyn Read,
    map: Option<&Bmap>,
    image_size: Option<u64>,
    target: &Target,
    erase: bool,
    progress: &mut Progress,
) -> Result<Copied> {
    let limit = target
        .size()?
        .max(if target.is_device() { 0 } else { u64::MAX });
    let mut w = Writer {
        target,
        limit,
        held: Vec::new(),
        extents: Vec::new(),
        cur: None,
        written: 0,
    };
    let total = image_size.or(map.map(|m| m.image_size)).unwrap_or(0);
    progress.begin("writing", total);
    let mut buf = AlignedBuf::new(BUF);
    let zeros = AlignedBuf::new(BUF);
    let mut off = 0u64;
    // Index of the bmap range being streamed, and its running hash.
    let mut ri = 0usize;
    let mut rhash: Option<Sha256> = None;
    loop {
        let n = read_up_to(src, buf.as_mut_slice()).context("reading the image")?;
        if n == 0 {
            break;
        }
        if let Some(sz) = image_size.or(map.map(|m| m.image_size)) {
            if off + n as u64 > sz {
                bail!("the image is longer than {sz} bytes, the size its {} gives: the file is damaged or the bmap belongs to another image", if map.is_some() { "bmap" } else { "container" });
            }
        }
        let data = &buf.as_slice()[..n];
        match map {
            Some(m) => {
                let mut pos = off;
                let end = off + n as u64;
                while pos < end {
                    let next_range = m.ranges.get(ri).map(|r| m.byte_range(r));
                    match next_range {
                        Some((a, b)) if pos >= a => {
                            let e = end.min(b);
                            let piece = &data[(pos - off) as usize..(e - off) as usize];
                            rhash.get_or_insert_with(Sha256::new).update(piece);
                            w.put(piece, pos, false)?;
                            pos = e;
                            if e == b {
                                let r = &m.ranges[ri];
                                let got: [u8; 32] =
                                    rhash.take().unwrap_or_default().finalize().into();
                                w.push_extent(a, b, got);
                                if let Some(want) = r.sha256 {
                                    if got != want {
                                        bail!("the image does not match its bmap: blocks {}-{} (bytes {a}..{b}) have SHA-256 {} but the bmap says {}; the source is damaged or the bmap belongs to another image", r.first, r.last, oneimage_format::hash::hex(&got), oneimage_format::hash::hex(&want));
                                    }
                                }
                                ri += 1;
                            }
                        }
                        other => {
                            let e = other.map(|(a, _)| a.min(end)).unwrap_or(end);
                            if erase && target.is_device() {
                                let len = (e - pos) as usize;
                                let mut done = 0;
                                while done < len {
                                    let k = (len - done).min(BUF);
                                    w.put(&zeros.as_slice()[..k], pos + done as u64, true)?;
                                    done += k;
                                }
                            }
                            pos = e;
                        }
                    }
                }
            }
            None => {
                // Runs of non-zero (or, when erasing, all) blocks are written.
                let mut i = 0;
                while i < n {
                    let j = (i + BLOCK).min(n);
                    let zero = data[i..j].iter().all(|&b| b == 0);
                    if zero && !(erase && target.is_device()) {
                        i = j;
                        continue;
                    }
                    let mut k = j;
                    while k < n {
                        let k2 = (k + BLOCK).min(n);
                        if !(erase && target.is_device()) && data[k..k2].iter().all(|&b| b == 0) {
                            break;
                        }
                        k = k2;
                    }
                    w.put(&data[i..k], off + i as u64, true)?;
                    i = k;
                }
            }
        }
        off += n as u64;
        progress.add(n as u64);
    }
    progress.end();
    if let Some(sz) = image_size.or(map.map(|m| m.image_size)) {
        if off != sz {
            bail!("the image ended after {off} bytes, but its {} says {sz}: the source is truncated or the bmap belongs to another image", if map.is_some() { "bmap" } else { "container" });
        }
    }
    if let Some(m) = map {
        if ri != m.ranges.len() {
            bail!(
                "the image ended before the bmap's range {} of {}: the source is truncated",
                ri + 1,
                m.ranges.len()
            );
        }
    }
    if off > w.limit {
        bail!("{} is too small for the {off}-byte image", target.display());
    }
    w.close_extent();
    if !target.is_device() {
        if let crate::target::Target::File { tmp, .. } = target {
            tmp.as_file().set_len(off)?;
        }
    }
    // The held-back head last, once everything else is in place. Only bytes that were
    // written go back; gaps inside it are left alone, like any unmapped range.
    for e in w.extents.iter().filter(|e| e.start < HOLD_BACK) {
        let (s, t) = (e.start as usize, e.end.min(HOLD_BACK) as usize);
        target
            .write_at(&w.held[s..t], s as u64)
            .with_context(|| format!("writing {} at byte {s}", target.display()))?;
    }
    Ok(Copied {
        image_size: off,
        written: w.written,
        extents: w.extents,
    })
}
