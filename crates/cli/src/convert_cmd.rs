//! `oneimage convert`: the arguments, handed to `oneimage_builder::vm_formats::convert`.

use anyhow::Result;
use oneimage_builder::run::Cancel;
use oneimage_builder::vm_formats::{convert, ConvertOptions, VmFormat};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Arguments of `oneimage convert`.
#[derive(clap::Args, Debug)]
pub struct ConvertArgs {
    /// The raw image.
    pub image: PathBuf,
    /// The format: qcow2, vmdk, vhdx, vdi, or ova (an OVF package with a streamOptimized
    /// VMDK, UEFI firmware and a SATA disk).
    #[arg(long, value_name = "FORMAT")]
    pub to: VmFormat,
    /// Where to write it (default: the image's name with the format's extension, next to
    /// it).
    #[arg(long, short = 'o', value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// qcow2: compress it.
    #[arg(long)]
    pub compress: bool,
    /// vmdk: the streamOptimized subformat.
    #[arg(long)]
    pub stream_optimized: bool,
}

/// Runs `oneimage convert`; `cancel` is set when the user interrupts it.
pub fn run(a: ConvertArgs, cancel: Option<Arc<AtomicBool>>) -> Result<()> {
    let out = convert(
        &a.image,
        a.to,
        a.output.as_deref(),
        ConvertOptions {
            compress: a.compress,
            stream_optimized: a.stream_optimized,
        },
        Cancel::new(cancel.as_deref()),
    )?;
    println!("{}", out.display());
    Ok(())
}
