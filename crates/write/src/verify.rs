//! Readback verification: after the target is synced and its cache dropped, every
//! extent the copy wrote is read back and compared with the hash of what was written.

use crate::copy::Extent;
use crate::progress::Progress;
use crate::target::{AlignedBuf, Target};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

const BUF: usize = 4 << 20;

/// Reads back `extents` from `target`; returns the bytes verified.
pub fn readback(target: &Target, extents: &[Extent], progress: &mut Progress) -> Result<u64> {
    let total: u64 = extents.iter().map(|e| e.end - e.start).sum();
    progress.begin("verifying", total);
    let mut buf = AlignedBuf::new(BUF);
    for e in extents {
        let mut h = Sha256::new();
        let mut off = e.start;
        while off < e.end {
            let n = ((e.end - off) as usize).min(BUF);
            // Direct I/O needs aligned lengths: read whole blocks and hash what counts.
            let n_al = n.div_ceil(crate::target::ALIGN) * crate::target::ALIGN;
            let aligned =
                off % crate::target::ALIGN as u64 == 0 && target.size()? >= off + n_al as u64;
            let slice = if aligned {
                &mut buf.as_mut_slice()[..n_al]
            } else {
                &mut buf.as_mut_slice()[..n]
            };
            target
                .read_at(slice, off)
                .with_context(|| format!("reading back {} at byte {off}", target.display()))?;
            h.update(&buf.as_slice()[..n]);
            off += n as u64;
            progress.add(n as u64);
        }
        let got: [u8; 32] = h.finalize().into();
        if got != e.sha256 {
            progress.end();
            bail!(
                "readback failed: bytes {}..{} of {} differ from what was written; the target is faulty or was changed during the write",
                e.start,
                e.end,
                target.display()
            );
        }
    }
    progress.end();
    Ok(total)
}
