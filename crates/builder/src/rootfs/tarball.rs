//! Reading a root filesystem from a tarball (plain, gzip, xz or zstd), without privileges.

use super::{normalize, show, Entry, Kind, Tree};
use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// Opens `path` and wraps it in the decompressor its first bytes call for.
fn open_decompressed(path: &Path) -> Result<Box<dyn Read>> {
    let f = File::open(path).with_context(|| format!("opening tarball {}", path.display()))?;
    let mut r = BufReader::with_capacity(1 << 20, f);
    use oneimage_format::compression::{sniff, Compression};
    let head = r.fill_buf()?.to_vec();
    Ok(match sniff(&head) {
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(r)),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
        Compression::None => Box::new(r),
        c @ (Compression::Bzip2 | Compression::Zip) => bail!(
            "tarball {}: {} compression is not supported; use gzip, xz or zstd (or none)",
            path.display(),
            c.name()
        ),
    })
}

/// Adds every entry of the tarball at `path` to `tree`.
pub fn add_tarball(tree: &mut Tree, path: &Path) -> Result<()> {
    let ctx = || format!("reading tarball {}", path.display());
    let mut archive = tar::Archive::new(open_decompressed(path)?);
    let mut count = 0usize;
    for entry in archive.entries().with_context(ctx)? {
        let mut entry = entry.with_context(ctx)?;
        let name = entry.path().with_context(ctx)?.into_owned();
        let p = normalize(&name).with_context(ctx)?;
        let h = entry.header().clone();
        let mut meta = Entry {
            kind: Kind::Dir,
            mode: h.mode().with_context(ctx)? & 0o7777,
            uid: h.uid().with_context(ctx)? as u32,
            gid: h.gid().with_context(ctx)? as u32,
            mtime: h.mtime().with_context(ctx)? as i64,
            xattrs: Vec::new(),
        };
        if let Some(exts) = entry.pax_extensions().with_context(ctx)? {
            for ext in exts {
                // The tar crate splits PAX records at newlines, so a key or value that
                // holds one (an attribute value can) is unreadable: refused, by name.
                let ext = ext.with_context(|| {
                    format!(
                        "{}: {}: a PAX extended header record could not be read (the tar reader does not support a newline byte in a PAX key or value)",
                        path.display(),
                        show(&p)
                    )
                })?;
                let key = ext.key().map_err(|_| {
                    anyhow::anyhow!(
                        "{}: {}: the PAX key {} is not valid UTF-8",
                        path.display(),
                        show(&p),
                        show(ext.key_bytes())
                    )
                })?;
                let value = ext.value_bytes();
                let num = || -> Option<i64> {
                    let s = std::str::from_utf8(value).ok()?;
                    s.split('.').next()?.parse().ok()
                };
                match key {
                    "mtime" => meta.mtime = num().unwrap_or(meta.mtime),
                    "uid" => meta.uid = num().map(|v| v as u32).unwrap_or(meta.uid),
                    "gid" => meta.gid = num().map(|v| v as u32).unwrap_or(meta.gid),
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                            meta.xattrs.push((name.to_string(), value.to_vec()));
                        }
                    }
                }
            }
        }
        meta.xattrs.sort();
        let link = || -> Result<PathBuf> {
            Ok(entry
                .link_name()
                .with_context(ctx)?
                .with_context(|| format!("{}: link {p} has no target", path.display()))?
                .into_owned())
        };
        use tar::EntryType as T;
        meta.kind = match h.entry_type() {
            T::Directory => Kind::Dir,
            T::Regular | T::Continuous => Kind::File(h.size().with_context(ctx)?),
            T::Symlink => Kind::Symlink(link()?),
            T::Link => Kind::Hardlink(
                normalize(&link()?)
                    .with_context(|| format!("hardlink {}", show(&p)))
                    .with_context(ctx)?,
            ),
            T::Char | T::Block => {
                let major = h.device_major().with_context(ctx)?.unwrap_or(0);
                let minor = h.device_minor().with_context(ctx)?.unwrap_or(0);
                if h.entry_type() == T::Char {
                    Kind::Char(major, minor)
                } else {
                    Kind::Block(major, minor)
                }
            }
            T::Fifo => Kind::Fifo,
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => continue,
            other => bail!(
                "{}: {p}: unsupported tar entry type {other:?}",
                path.display()
            ),
        };
        tree.insert(&p, meta, |out| {
            std::io::copy(&mut entry, out).with_context(|| format!("extracting {}", show(&p)))?;
            Ok(())
        })
        .with_context(ctx)?;
        count += 1;
    }
    if count == 0 {
        bail!("tarball {} holds no files", path.display());
    }
    Ok(())
}
