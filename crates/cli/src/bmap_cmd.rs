//! `oneimage bmap`: writes a bmap 2.0 block map for any image.

use anyhow::{Context, Result};
use clap::Args;
use std::io::Write;
use std::path::PathBuf;

/// Arguments of `oneimage bmap`.
#[derive(Args, Debug)]
pub struct BmapArgs {
    /// The uncompressed image.
    pub image: PathBuf,
    /// Where to write the map (default: IMAGE.bmap; `-` for stdout).
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Runs `oneimage bmap`.
pub fn run(a: BmapArgs) -> Result<()> {
    let map = oneimage_artifacts::bmap::create(&a.image)?;
    let xml = map.to_xml();
    let out = a.output.unwrap_or_else(|| {
        let mut s = a.image.clone().into_os_string();
        s.push(".bmap");
        PathBuf::from(s)
    });
    if out.as_os_str() == "-" {
        std::io::stdout().write_all(xml.as_bytes())?;
        return Ok(());
    }
    let dir = out
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    tmp.as_file().write_all(xml.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(&out)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!(
        "oneimage: {}: {} of {} bytes mapped",
        out.display(),
        map.mapped_bytes(),
        map.image_size
    );
    Ok(())
}
