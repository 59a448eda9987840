//! Block maps for the writer: loading one (the format is `oneimage_format::bmap`) and
//! finding the one next to a source the way bmaptool does.

use anyhow::{Context, Result};
pub use oneimage_format::bmap::{Bmap, Range};
use std::path::{Path, PathBuf};

/// Reads and parses a bmap file.
pub fn load(path: &Path) -> Result<Bmap> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading bmap {}", path.display()))?;
    Ok(Bmap::parse(&text, &path.display().to_string())?)
}

/// Looks for the bmap of `source` next to it the way bmaptool does: `NAME.bmap`, then
/// with one extension after another removed (`x.img.xz` -> `x.img.bmap` -> `x.bmap`).
pub fn find_next_to(source: &Path) -> Option<PathBuf> {
    let name = source.file_name()?.to_str()?;
    let mut base = name;
    loop {
        let cand = source.with_file_name(format!("{base}.bmap"));
        if cand.is_file() {
            return Some(cand);
        }
        base = &base[..base.rfind('.')?];
    }
}
