//! Readback verification: after the target is synced and its cache dropped, the image's
//! whole extent is read back: data is compared with the hash of what was written, and
//! every other byte must be zero, whatever the target held before.

use crate::copy::Extent;
use crate::progress::Progress;
use crate::target::{AlignedBuf, Target, ALIGN};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::sync::atomic::{AtomicBool, Ordering};

const BUF: usize = 4 << 20;

/// Reads back `extents` from `target`; returns the bytes verified.
pub fn readback(
    target: &Target,
    extents: &[Extent],
    cancel: Option<&AtomicBool>,
    progress: &mut Progress,
) -> Result<u64> {
    let total: u64 = extents
        .iter()
        .map(|e| {
            let (a, b) = e.range();
            b - a
        })
        .sum();
    progress.begin("verifying", total);
    let mut buf = AlignedBuf::new(BUF);
    let size = target.size()?;
    for e in extents {
        let (start, end) = e.range();
        let mut h = Sha256::new();
        let mut off = start;
        while off < end {
            if cancel.is_some_and(|c| c.load(Ordering::Relaxed)) {
                bail!("interrupted");
            }
            let n = ((end - off) as usize).min(BUF);
            // Direct I/O needs aligned lengths: read whole blocks and look at what counts.
            let n_al = n.div_ceil(ALIGN) * ALIGN;
            let aligned = off % ALIGN as u64 == 0 && size >= off + n_al as u64;
            let slice = if aligned {
                &mut buf.as_mut_slice()[..n_al]
            } else {
                &mut buf.as_mut_slice()[..n]
            };
            target
                .read_at(slice, off)
                .with_context(|| format!("reading back {} at byte {off}", target.display()))?;
            let got = &buf.as_slice()[..n];
            match e {
                Extent::Data { .. } => h.update(got),
                Extent::Zero { .. } => {
                    if let Some(i) = got.iter().position(|&b| b != 0) {
                        progress.end();
                        bail!(
                            "readback failed: byte {} of {} is not zero as in the image; the target is faulty or was changed during the write",
                            off + i as u64,
                            target.display()
                        );
                    }
                }
            }
            off += n as u64;
            progress.add(n as u64);
        }
        if let Extent::Data { sha256, .. } = e {
            let got: [u8; 32] = h.finalize().into();
            if &got != sha256 {
                progress.end();
                bail!(
                    "readback failed: bytes {start}..{end} of {} differ from what was written; the target is faulty or was changed during the write",
                    target.display()
                );
            }
        }
    }
    progress.end();
    Ok(total)
}
