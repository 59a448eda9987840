//! `oneimage write`: the arguments, handed to `oneimage_write::write::write`.

use anyhow::Result;
use clap::Args;
use oneimage_write::progress::Mode;
use oneimage_write::target::Checks;
use oneimage_write::write::{write, WriteOptions};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Arguments of `oneimage write`.
#[derive(Args, Debug)]
pub struct WriteArgs {
    /// The image: raw, gz, bz2, xz, zstd or zip, recognised by content.
    pub source: PathBuf,
    /// A whole-disk block device (e.g. /dev/sdb) or a file name.
    pub target: PathBuf,
    /// Block map to use (default: SOURCE's name with .bmap, if present).
    #[arg(long, value_name = "FILE")]
    pub bmap: Option<PathBuf>,
    /// Ignore a block map next to the source (the image is still written exactly: zero
    /// blocks are zeroed on the target, never skipped).
    #[arg(long, conflicts_with = "bmap")]
    pub no_bmap: bool,
    /// Write to a device even when the image's size cannot be known before the end
    /// (gzip, bzip2, zstd without content sizes, and no bmap); a too small target is
    /// then erased and reported INCOMPLETE.
    #[arg(long)]
    pub allow_unknown_size: bool,
    /// OpenPGP keyring (armored or binary) to check .asc/.sig signatures with.
    #[arg(long, value_name = "FILE")]
    pub keyring: Vec<PathBuf>,
    /// minisign or signify public key to check .minisig/.sig signatures with.
    #[arg(long, value_name = "FILE")]
    pub pubkey: Vec<PathBuf>,
    /// A signature of SOURCE kept somewhere else than next to it.
    #[arg(long, value_name = "FILE")]
    pub signature: Vec<PathBuf>,
    /// Fail unless a signature was verified.
    #[arg(long)]
    pub require_signature: bool,
    /// Allow a target disk that is not removable.
    #[arg(long)]
    pub force: bool,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print progress and messages as JSON lines on stdout.
    #[arg(long)]
    pub json: bool,
    /// Decompression threads (default: all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
}

/// Runs `oneimage write`; `cancel` is set when the user interrupts it.
pub fn run(a: WriteArgs, cancel: Option<Arc<AtomicBool>>) -> Result<()> {
    let mut o = WriteOptions::new(a.source, a.target);
    o.cancel = cancel;
    o.bmap = a.bmap;
    o.no_bmap = a.no_bmap;
    o.keyrings = a.keyring;
    o.pubkeys = a.pubkey;
    o.signatures = a.signature;
    o.require_signature = a.require_signature;
    o.checks = Checks {
        force: a.force,
        yes: a.yes,
        allow_unknown_size: a.allow_unknown_size,
    };
    if let Some(t) = a.threads {
        o.threads = t.max(1);
    }
    o.progress = Mode::detect(a.json);
    let r = write(&o);
    if a.json {
        let v = match &r {
            Ok(r) => serde_json::json!({
                "event": "done", "ok": true, "image_size": r.image_size, "written": r.written, "zeroed": r.zeroed,
                "verified": r.verified, "signatures": r.signatures, "bmap_verified": r.bmap_verified, "gpt_moved": r.gpt_moved,
                "write_seconds": r.write_seconds, "verify_seconds": r.verify_seconds,
            }),
            Err(e) => serde_json::json!({"event": "done", "ok": false, "error": format!("{e:#}")}),
        };
        println!("{v}");
    }
    r.map(|_| ())
}
