//! `oneimage write`: the whole job, in order. Source and block map are opened and checked,
//! signatures verified, the target checked and opened; only then is anything written.
//! The copy is read back; a block device larger than the image gets its backup GPT moved
//! to the end; a file target gets its final name only when everything passed.

use crate::bmap::{self, Bmap};
use crate::progress::{Mode, Progress};
use crate::signature::{self, Keys};
use crate::source::Source;
use crate::target::{Checks, Target};
use crate::{copy, gpt_fix, verify};
use anyhow::{anyhow, bail, Result};
use std::path::{Path, PathBuf};

/// Called between the write and the readback with the path holding the written bytes
/// (tests use it to play a faulty target).
pub type BeforeVerify = Box<dyn Fn(&Path) -> Result<()>>;

/// Everything `write` needs.
pub struct WriteOptions {
    /// The image file, compressed or not.
    pub source: PathBuf,
    /// A block device or a file name.
    pub target: PathBuf,
    /// Block map to use instead of one found next to the source.
    pub bmap: Option<PathBuf>,
    /// Ignore any block map next to the source.
    pub no_bmap: bool,
    /// Write zeros where the image has none of its data.
    pub erase_unmapped: bool,
    /// OpenPGP keyrings.
    pub keyrings: Vec<PathBuf>,
    /// minisign / signify public keys.
    pub pubkeys: Vec<PathBuf>,
    /// Signature files for the source file, in addition to those found next to it.
    pub signatures: Vec<PathBuf>,
    /// Fail unless a signature was verified.
    pub require_signature: bool,
    /// Safety switches.
    pub checks: Checks,
    /// Decompression threads.
    pub threads: usize,
    /// How to show progress.
    pub progress: Mode,
    /// Hook between write and readback.
    pub before_verify: Option<BeforeVerify>,
}

impl WriteOptions {
    /// Options with defaults for `source` and `target`.
    pub fn new(source: impl Into<PathBuf>, target: impl Into<PathBuf>) -> WriteOptions {
        WriteOptions {
            source: source.into(),
            target: target.into(),
            bmap: None,
            no_bmap: false,
            erase_unmapped: false,
            keyrings: Vec::new(),
            pubkeys: Vec::new(),
            signatures: Vec::new(),
            require_signature: false,
            checks: Checks::default(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            progress: Mode::Quiet,
            before_verify: None,
        }
    }
}

/// What a successful write did.
#[derive(Debug, Clone)]
pub struct WriteReport {
    /// Image size in bytes.
    pub image_size: u64,
    /// Bytes written.
    pub written: u64,
    /// Bytes read back and found equal.
    pub verified: u64,
    /// The block map used, if any.
    pub bmap: Option<PathBuf>,
    /// Valid signatures.
    pub signatures: Vec<String>,
    /// The backup GPT was moved to the end of a larger device.
    pub gpt_moved: bool,
    /// Seconds spent writing (decompressing, checking, writing, syncing).
    pub write_seconds: f64,
    /// Seconds spent reading back.
    pub verify_seconds: f64,
}

/// Writes `opts.source` to `opts.target`, or explains why not.
pub fn write(opts: &WriteOptions) -> Result<WriteReport> {
    let mut progress = Progress::new(opts.progress);
    let src = Source::open(&opts.source)?;
    progress.message(
        "info",
        &format!("source {} ({})", src.path.display(), src.format),
    );
    let bmap_path = match (&opts.bmap, opts.no_bmap) {
        (Some(p), _) => Some(p.clone()),
        (None, false) => bmap::find_next_to(&src.path),
        (None, true) => None,
    };
    let map: Option<Bmap> = match &bmap_path {
        Some(p) => {
            let m = bmap::load(p)?;
            if let Some(sz) = src.image_size {
                if sz != m.image_size {
                    bail!("{}: the bmap is for a {}-byte image, but {} holds {sz} bytes: it belongs to another image", p.display(), m.image_size, src.path.display());
                }
            }
            progress.message(
                "info",
                &format!(
                    "block map {}: {} of {} bytes mapped",
                    p.display(),
                    m.mapped_bytes(),
                    m.image_size
                ),
            );
            Some(m)
        }
        None => None,
    };
    let keys = Keys::load(&opts.keyrings, &opts.pubkeys)?;
    let sigs = signature::check(&src, &keys, &opts.signatures, opts.threads, &mut progress)?;
    for g in &sigs.good {
        progress.message("info", &format!("good signature: {g}"));
    }
    for u in &sigs.unchecked {
        progress.message("warning", &format!("signature not checked: {u}"));
    }
    if sigs.good.is_empty() {
        let msg = format!("NO VERIFIED SIGNATURE for {}: its origin and integrity are not proven (give keys with --keyring / --pubkey, put the .asc/.sig/.minisig next to it)", src.path.display());
        if opts.require_signature {
            bail!("{msg}; --require-signature was given, nothing was written");
        }
        progress.message("WARNING", &msg);
    }
    let image_size = map.as_ref().map(|m| m.image_size).or(src.image_size);
    let target = Target::open(
        &opts.target,
        image_size.unwrap_or(0),
        &src.path,
        opts.checks,
    )?;
    let name = target.display();
    let started = std::time::Instant::now();
    let mut reader = src.reader(opts.threads)?;
    let copied = match copy::copy(
        &mut reader,
        map.as_ref(),
        image_size,
        &target,
        opts.erase_unmapped,
        &mut progress,
    ) {
        Ok(c) => c,
        Err(e) => {
            drop(reader);
            let what = target.abandon(image_size.unwrap_or(0).max(1 << 20));
            return Err(e.context(format!("writing {name} FAILED; {what}")));
        }
    };
    let result = (|| -> Result<f64> {
        target.sync().map_err(|e| anyhow!("syncing {name}: {e}"))?;
        if let Some(hook) = &opts.before_verify {
            hook(&target.current_path())?;
        }
        Ok(started.elapsed().as_secs_f64())
    })()
    .and_then(|t| {
        let v = verify::readback(&target, &copied.extents, &mut progress)?;
        Ok((t, v))
    });
    let (write_seconds, verified) = match result {
        Ok(v) => v,
        Err(e) => {
            let what = target.abandon(copied.image_size);
            return Err(e.context(format!("writing {name} FAILED; {what}")));
        }
    };
    let gpt_moved = if let Some(f) = target.device_file() {
        let dev = target.current_path();
        let moved = gpt_fix::move_backup_to_end(f, &dev, copied.image_size)?;
        if moved {
            progress.message(
                "info",
                &format!(
                    "moved the backup partition table to the end of {}",
                    dev.display()
                ),
            );
        }
        moved
    } else {
        target.finish()?;
        false
    };
    progress.message(
        "info",
        &format!(
            "{name}: wrote {} bytes of a {}-byte image and read them back: OK",
            copied.written, copied.image_size
        ),
    );
    Ok(WriteReport {
        image_size: copied.image_size,
        written: copied.written,
        verified,
        bmap: bmap_path,
        signatures: sigs.good,
        gpt_moved,
        write_seconds,
        verify_seconds: started.elapsed().as_secs_f64() - write_seconds,
    })
}
