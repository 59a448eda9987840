//! The copy: every byte of the image's extent on the target becomes the image's byte,
//! whatever the target held before. Blocks of data are written; runs of zero blocks are
//! zeroed on a device (BLKZEROOUT, which a loop device or an SSD does without moving the
//! bytes) and left as holes in a new file. A block map only checks the data's SHA-256 as
//! it streams by: an unmapped block is still compared with zero, never skipped.
//!
//! The partition tables must not look valid before the end: the target's head and tail
//! are erased before the first byte ([`Target::invalidate`]), the image's first MiB is
//! held back, and the last few MiB of the stream are written only by [`Copy::complete`],
//! after the caller has checked signatures and sums. So an interruption at any point
//! leaves a target that no firmware or partitioning tool takes for a disk.

use crate::bmap::Bmap;
use crate::progress::Progress;
use crate::source::pipe::PipeReader;
use crate::tap::Tap;
use crate::target::{AlignedBuf, Target};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};

/// Bytes at the start of the image that are written last (the MBR, both GPT views, the
/// ISO 9660 descriptors).
pub const HOLD_BACK: u64 = 1 << 20;
/// How far behind the stream writes are kept, so that the end of the image (the backup
/// GPT) is written only after the checks passed, whether or not the size is known.
const TAIL_DELAY: u64 = 4 << 20;
const MAX_EXTENT: u64 = 64 << 20;
const BLOCK: usize = 4096;

/// A piece of the image's extent that the readback must find on the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Extent {
    /// Bytes with this SHA-256.
    Data {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
        /// SHA-256 of the image's bytes there.
        sha256: [u8; 32],
    },
    /// Zeros.
    Zero {
        /// First byte.
        start: u64,
        /// One past the last byte.
        end: u64,
    },
}

impl Extent {
    /// (first byte, one past the last).
    pub fn range(&self) -> (u64, u64) {
        match *self {
            Extent::Data { start, end, .. } | Extent::Zero { start, end } => (start, end),
        }
    }
}

/// What the copy did.
#[derive(Debug, Clone)]
pub struct Copied {
    /// Bytes in the image.
    pub image_size: u64,
    /// Bytes of data written to the target.
    pub written: u64,
    /// Bytes of zeros put on the target (zeroed on a device, holes in a file).
    pub zeroed: u64,
    /// The image's whole extent, in order.
    pub extents: Vec<Extent>,
}

enum Op {
    Data { off: u64, buf: AlignedBuf },
    Zero { off: u64, len: u64 },
}

impl Op {
    fn end(&self) -> u64 {
        match self {
            Op::Data { off, buf } => off + buf.as_slice().len() as u64,
            Op::Zero { off, len } => off + len,
        }
    }
}

/// A copy whose stream has been read; the end of the image and its first MiB are still
/// to be written by [`Copy::complete`].
pub struct Copy<'a> {
    target: &'a Target,
    pending: VecDeque<Op>,
    head: Vec<u8>,
    /// What was copied.
    pub copied: Copied,
}

struct Stream<'a> {
    target: &'a Target,
    limit: u64,
    pending: VecDeque<Op>,
    head: Vec<u8>,
    extents: Vec<Extent>,
    cur: Option<(u64, u64, Sha256)>,
    written: u64,
    zeroed: u64,
}

impl Stream<'_> {
    fn check_fits(&self, end: u64) -> Result<()> {
        if end > self.limit {
            bail!(
                "the image does not fit: it goes on past byte {} but {} has only {} bytes",
                self.limit,
                self.target.display(),
                self.limit
            );
        }
        Ok(())
    }

    /// Records `data` at `off` for the readback and queues its write.
    fn data(&mut self, data: &[u8], off: u64) -> Result<()> {
        let end = off + data.len() as u64;
        self.check_fits(end)?;
        match &mut self.cur {
            Some((s, e, h)) if *e == off && end - *s <= MAX_EXTENT => {
                h.update(data);
                *e = end;
            }
            _ => {
                self.close_data();
                let mut h = Sha256::new();
                h.update(data);
                self.cur = Some((off, end, h));
            }
        }
        self.written += data.len() as u64;
        let (data, off) = self.hold_head(data, off);
        if !data.is_empty() {
            let mut buf = AlignedBuf::new(data.len());
            buf.as_mut_slice().copy_from_slice(data);
            self.pending.push_back(Op::Data { off, buf });
        }
        Ok(())
    }

    /// Records `len` zero bytes at `off` and queues their zeroing.
    fn zero(&mut self, off: u64, len: u64) -> Result<()> {
        let end = off + len;
        self.check_fits(end)?;
        self.close_data();
        match self.extents.last_mut() {
            Some(Extent::Zero { end: e, .. }) if *e == off => *e = end,
            _ => self.extents.push(Extent::Zero { start: off, end }),
        }
        self.zeroed += len;
        // The head buffer is zero already; only bytes past it are queued.
        let from = off.max(HOLD_BACK);
        if from < end {
            match self.pending.back_mut() {
                Some(Op::Zero { off: o, len: l }) if *o + *l == from => *l += end - from,
                _ => self.pending.push_back(Op::Zero {
                    off: from,
                    len: end - from,
                }),
            }
        }
        Ok(())
    }

    /// Keeps the part of `data` in the first MiB in memory; returns the rest.
    fn hold_head<'d>(&mut self, data: &'d [u8], off: u64) -> (&'d [u8], u64) {
        if off >= HOLD_BACK {
            return (data, off);
        }
        let n = ((HOLD_BACK - off) as usize).min(data.len());
        let at = off as usize;
        if self.head.len() < at + n {
            self.head.resize(at + n, 0);
        }
        self.head[at..at + n].copy_from_slice(&data[..n]);
        (&data[n..], off + n as u64)
    }

    fn close_data(&mut self) {
        if let Some((start, end, h)) = self.cur.take() {
            self.extents.push(Extent::Data {
                start,
                end,
                sha256: h.finalize().into(),
            });
        }
    }

    /// Carries out the queued operations that lie more than [`TAIL_DELAY`] behind `front`.
    fn flush_before(&mut self, front: u64) -> Result<()> {
        while let Some(op) = self.pending.front() {
            if op.end() + TAIL_DELAY > front {
                break;
            }
            let op = self.pending.pop_front().expect("checked above");
            apply(self.target, &op)?;
        }
        Ok(())
    }
}

fn apply(target: &Target, op: &Op) -> Result<()> {
    match op {
        Op::Data { off, buf } => target
            .write_at(buf.as_slice(), *off)
            .with_context(|| format!("writing {} at byte {off}", target.display())),
        Op::Zero { off, len } => target.zero_range(*off, *len).with_context(|| {
            format!(
                "zeroing {} bytes of {} at byte {off}",
                len,
                target.display()
            )
        }),
    }
}

/// What steers a copy from outside.
#[derive(Clone, Copy, Default)]
pub struct Control<'c> {
    /// Set to stop the copy with an error.
    pub cancel: Option<&'c AtomicBool>,
    /// Told the bytes copied so far after each piece.
    pub during: Option<&'c dyn Fn(u64)>,
}

/// Streams the image from `src` onto `target`, handing every image byte to `image_tap`
/// as well. With `map`, each mapped range's SHA-256 is checked. `image_size` (when known)
/// is enforced. Returns before the last [`TAIL_DELAY`] bytes and the first MiB are
/// written.
pub fn copy<'a>(
    src: &mut PipeReader,
    map: Option<&Bmap>,
    image_size: Option<u64>,
    target: &'a Target,
    mut image_tap: Tap,
    control: Control,
    progress: &mut Progress,
) -> Result<Copy<'a>> {
    let Control { cancel, during } = control;
    let limit = if target.is_device() {
        target.size()?
    } else {
        u64::MAX
    };
    let mut w = Stream {
        target,
        limit,
        pending: VecDeque::new(),
        head: Vec::new(),
        extents: Vec::new(),
        cur: None,
        written: 0,
        zeroed: 0,
    };
    let size = image_size.or(map.map(|m| m.image_size));
    let whose = if map.is_some() { "bmap" } else { "container" };
    progress.begin("writing", size.unwrap_or(0));
    let mut off = 0u64;
    // Index of the bmap range being streamed, and its running hash.
    let mut ri = 0usize;
    let mut rhash: Option<Sha256> = None;
    // A block cut by the end of a chunk is completed from the next one.
    let mut carry: Vec<u8> = Vec::new();
    loop {
        if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
            bail!("interrupted");
        }
        let chunk = src.next_chunk().context("reading the image")?;
        let Some(chunk) = chunk else { break };
        let n = chunk.len() as u64;
        if let Some(sz) = size {
            if off + n > sz {
                bail!("the image is longer than {sz} bytes, the size its {whose} gives: the file is damaged or the bmap belongs to another image");
            }
        }
        image_tap.send(&chunk);
        if let Some(m) = map {
            check_ranges(m, &chunk, off, &mut ri, &mut rhash)?;
        }
        let data: Vec<u8> = if carry.is_empty() {
            chunk
        } else {
            let mut d = std::mem::take(&mut carry);
            d.extend_from_slice(&chunk);
            d
        };
        let base = off + n - data.len() as u64;
        let whole = data.len() / BLOCK * BLOCK;
        emit_blocks(&mut w, &data[..whole], base)?;
        carry.extend_from_slice(&data[whole..]);
        off += n;
        w.flush_before(off)?;
        progress.add(n);
        if let Some(f) = during {
            f(off);
        }
    }
    if !carry.is_empty() {
        emit_blocks(&mut w, &carry, off - carry.len() as u64)?;
    }
    drop(image_tap);
    progress.end();
    if let Some(sz) = size {
        if off != sz {
            bail!("the image ended after {off} bytes, but its {whose} says {sz}: the source is truncated or the bmap belongs to another image");
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
    w.close_data();
    w.head.resize(off.min(HOLD_BACK) as usize, 0);
    Ok(Copy {
        target,
        pending: w.pending,
        head: w.head,
        copied: Copied {
            image_size: off,
            written: w.written,
            zeroed: w.zeroed,
            extents: w.extents,
        },
    })
}

/// Splits `data` (at image offset `off`) into runs of data blocks and of zero blocks.
fn emit_blocks(w: &mut Stream, data: &[u8], off: u64) -> Result<()> {
    let mut i = 0;
    while i < data.len() {
        let zero = is_zero(&data[i..(i + BLOCK).min(data.len())]);
        let mut k = (i + BLOCK).min(data.len());
        while k < data.len() && is_zero(&data[k..(k + BLOCK).min(data.len())]) == zero {
            k = (k + BLOCK).min(data.len());
        }
        if zero {
            w.zero(off + i as u64, (k - i) as u64)?;
        } else {
            w.data(&data[i..k], off + i as u64)?;
        }
        i = k;
    }
    Ok(())
}

fn is_zero(b: &[u8]) -> bool {
    // OR-ing fixed-size pieces lets the compiler use vector instructions; this runs over
    // every byte of the image.
    let mut pieces = b.chunks_exact(64);
    for p in &mut pieces {
        if p.iter().fold(0u8, |acc, &x| acc | x) != 0 {
            return false;
        }
    }
    pieces.remainder().iter().all(|&x| x == 0)
}

/// Hashes the parts of `chunk` (at image offset `off`) inside the bmap's ranges and
/// checks each range's SHA-256 when it is complete.
fn check_ranges(
    m: &Bmap,
    chunk: &[u8],
    off: u64,
    ri: &mut usize,
    rhash: &mut Option<Sha256>,
) -> Result<()> {
    let end = off + chunk.len() as u64;
    let mut pos = off;
    while pos < end {
        let Some((a, b)) = m.ranges.get(*ri).map(|r| m.byte_range(r)) else {
            break;
        };
        if pos < a {
            pos = a.min(end);
            continue;
        }
        let e = end.min(b);
        rhash
            .get_or_insert_with(Sha256::new)
            .update(&chunk[(pos - off) as usize..(e - off) as usize]);
        pos = e;
        if e == b {
            let r = &m.ranges[*ri];
            let got: [u8; 32] = rhash.take().unwrap_or_default().finalize().into();
            if let Some(want) = r.sha256 {
                if got != want {
                    bail!("the image does not match its bmap: blocks {}-{} (bytes {a}..{b}) have SHA-256 {} but the bmap says {}; the source is damaged or the bmap belongs to another image", r.first, r.last, oneimage_format::hash::hex(&got), oneimage_format::hash::hex(&want));
                }
            }
            *ri += 1;
        }
    }
    Ok(())
}

impl Copy<'_> {
    /// Writes what was held back: the end of the image, then (after a sync) its first
    /// MiB, then syncs again. Call it only once every check of the source passed.
    pub fn complete(mut self) -> Result<Copied> {
        while let Some(op) = self.pending.pop_front() {
            apply(self.target, &op)?;
        }
        let t = self.target;
        t.sync()
            .with_context(|| format!("syncing {}", t.display()))?;
        if !self.head.is_empty() {
            let mut buf = AlignedBuf::new(self.head.len());
            buf.as_mut_slice().copy_from_slice(&self.head);
            t.write_at(buf.as_slice(), 0)
                .with_context(|| format!("writing {} at byte 0", t.display()))?;
        }
        if let Target::File { tmp, .. } = t {
            tmp.as_file().set_len(self.copied.image_size)?;
        }
        t.sync()
            .with_context(|| format!("syncing {}", t.display()))?;
        Ok(self.copied)
    }
}
