//! `oneimage write`: the whole job, in order. The source is opened once; the block map,
//! `SHA256SUMS` and signature files are read and checked; the image size is checked
//! against the target, opened once and checked; its partition tables are erased; then
//! the image is streamed onto it while the signature and checksum checks read the same
//! bytes. Only when they pass are the end and the first MiB of the image written. The
//! whole extent is read back; a block device larger than the image gets its backup GPT
//! moved to the end; a file target gets its final name only when everything passed. Any
//! failure or interruption erases the target's partition tables (or removes the
//! temporary file) and says INCOMPLETE.

use crate::bmap::{self, Bmap};
use crate::progress::{Mode, Progress};
use crate::signature::{self, Keys};
use crate::source::disk_view::DiskView;
use crate::source::Source;
use crate::tap::Tap;
use crate::target::{Checks, Target};
use crate::{copy, gpt_fix, verify};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Called between the write and the readback with the path holding the written bytes
/// (tests use it to play a faulty target).
pub type BeforeVerify = Box<dyn Fn(&Path) -> Result<()>>;

/// Called after each piece of the image is handed to the target, with the bytes copied
/// so far (tests use it to change the source in the middle of a write).
pub type DuringCopy = Box<dyn Fn(u64)>;

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
    /// Hook during the copy.
    pub during_copy: Option<DuringCopy>,
    /// Set (by a signal handler) to stop the write; the target is then erased.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Read this view of a disk as the image instead of the file `source` (`install`
    /// copying the medium it booted from; no signature applies to it).
    pub view: Option<DiskView>,
}

impl WriteOptions {
    /// Options with defaults for `source` and `target`.
    pub fn new(source: impl Into<PathBuf>, target: impl Into<PathBuf>) -> WriteOptions {
        WriteOptions {
            source: source.into(),
            target: target.into(),
            bmap: None,
            no_bmap: false,
            keyrings: Vec::new(),
            pubkeys: Vec::new(),
            signatures: Vec::new(),
            require_signature: false,
            checks: Checks::default(),
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            progress: Mode::Quiet,
            before_verify: None,
            during_copy: None,
            cancel: None,
            view: None,
        }
    }
}

/// What a successful write did.
#[derive(Debug, Clone)]
pub struct WriteReport {
    /// Image size in bytes.
    pub image_size: u64,
    /// Bytes of data written.
    pub written: u64,
    /// Bytes of zeros put on the target where the image has zeros.
    pub zeroed: u64,
    /// Bytes read back and found equal (the image's whole extent).
    pub verified: u64,
    /// The block map used, if any.
    pub bmap: Option<PathBuf>,
    /// Valid signatures.
    pub signatures: Vec<String>,
    /// How the block map was proven authentic, if it was.
    pub bmap_verified: Option<String>,
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
    let src = match &opts.view {
        Some(v) => Source::from_view(v.clone())?,
        None => Source::open(&opts.source)?,
    };
    progress.message(
        "info",
        &format!(
            "source {} ({}{})",
            src.path.display(),
            src.format,
            match src.image_size {
                Some(s) if src.format != crate::source::Format::Raw => format!(", {s}-byte image"),
                _ => String::new(),
            }
        ),
    );
    let mut bmap_path = match (&opts.bmap, opts.no_bmap) {
        (Some(p), _) => Some(p.clone()),
        (None, false) => bmap::find_next_to(&src.path),
        (None, true) => None,
    };
    // The block map is read once; these bytes are checked and parsed.
    let bmap_bytes = match &bmap_path {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading bmap {}", p.display()))?),
        None => None,
    };
    let keys = Keys::load(&opts.keyrings, &opts.pubkeys)?;
    let plan = signature::plan(
        &src,
        keys,
        &opts.signatures,
        bmap_path.as_deref().zip(bmap_bytes.as_deref()),
        &mut progress,
    )?;
    for u in &plan.report.unchecked {
        progress.message("warning", &format!("signature not checked: {u}"));
    }
    if plan.provable == 0 && src.view.is_none() {
        let msg = format!("NO VERIFIED SIGNATURE for {}: its origin and integrity are not proven (give keys with --keyring / --pubkey, put the .asc/.sig/.minisig next to it)", src.path.display());
        if opts.require_signature {
            bail!("{msg}; --require-signature was given, nothing was written");
        }
        progress.message("WARNING", &msg);
    }
    let bmap_verified = plan.bmap_verified.clone();
    if let (Some(p), None, true) = (&bmap_path, &bmap_verified, plan.provable > 0) {
        if opts.require_signature {
            progress.message(
                "warning",
                &format!(
                    "ignoring the block map {}: no signature or signed SHA256SUMS covers it",
                    p.display()
                ),
            );
            bmap_path = None;
        } else {
            progress.message(
                "warning",
                &format!(
                    "the block map {} is not covered by a signature or a signed SHA256SUMS",
                    p.display()
                ),
            );
        }
    }
    let map: Option<Bmap> = match (&bmap_path, &bmap_bytes) {
        (Some(p), Some(bytes)) => {
            let text = std::str::from_utf8(bytes)
                .with_context(|| format!("{}: the bmap is not UTF-8 text", p.display()))?;
            let m = Bmap::parse(text, &p.display().to_string())?;
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
        _ => None,
    };
    let image_size = map.as_ref().map(|m| m.image_size).or(src.image_size);
    let target = Target::open(&opts.target, image_size, &src.path, opts.checks)?;
    let name = target.display();
    let cancel = opts.cancel.as_deref();
    let fail = |target: Target, size: u64, e: anyhow::Error| -> anyhow::Error {
        let what = target.abandon(size);
        e.context(format!("writing {name} FAILED; {what}"))
    };
    let started = std::time::Instant::now();
    if let Err(e) = target.invalidate(image_size) {
        let e = anyhow::Error::new(e).context("erasing the old partition tables");
        return Err(fail(target, image_size.unwrap_or(1 << 20), e));
    }
    let mut file_tap = Tap::default();
    let mut image_tap = Tap::default();
    let running = plan.start(&mut file_tap, &mut image_tap);
    let streamed = src.reader(opts.threads, file_tap).and_then(|mut reader| {
        let c = copy::copy(
            &mut reader,
            map.as_ref(),
            image_size,
            &target,
            image_tap,
            copy::Control {
                cancel,
                during: opts.during_copy.as_deref(),
            },
            &mut progress,
        );
        // Stop the decoder (and with it the file checks) before waiting for them.
        drop(reader);
        c
    });
    let pending = match streamed {
        Ok(p) => p,
        Err(e) => {
            drop(running);
            return Err(fail(target, image_size.unwrap_or(1 << 20), e));
        }
    };
    let size = pending.copied.image_size;
    let sigs = match running.finish() {
        Ok(r) => r,
        Err(e) => {
            return Err(fail(
                target,
                size,
                e.context("the bytes written are not the ones signed"),
            ))
        }
    };
    for g in &sigs.good {
        progress.message("info", &format!("good signature: {g}"));
    }
    let result = pending.complete().and_then(|copied| {
        if let Some(hook) = &opts.before_verify {
            hook(&target.current_path())?;
        }
        let write_seconds = started.elapsed().as_secs_f64();
        let verified = verify::readback(&target, &copied.extents, cancel, &mut progress)?;
        Ok((copied, write_seconds, verified))
    });
    let (copied, write_seconds, verified) = match result {
        Ok(v) => v,
        Err(e) => return Err(fail(target, size, e)),
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
            "{name}: wrote {} bytes of data and {} bytes of zeros of a {}-byte image and read all of it back: OK",
            copied.written, copied.zeroed, copied.image_size
        ),
    );
    Ok(WriteReport {
        image_size: copied.image_size,
        written: copied.written,
        zeroed: copied.zeroed,
        verified,
        bmap: bmap_path,
        signatures: sigs.good,
        bmap_verified,
        gpt_moved,
        write_seconds,
        verify_seconds: started.elapsed().as_secs_f64() - write_seconds,
    })
}
