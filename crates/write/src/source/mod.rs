//! Image sources: the format is detected from the first bytes, never from the name, and
//! the image is decompressed in-process on a producer thread (and on several threads
//! where the format allows it), so the writer only sees a stream of image bytes.

pub mod pipe;
pub mod seekable;

use anyhow::{bail, Context, Result};
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The container or compression of a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// An uncompressed image.
    Raw,
    /// gzip (one or more members).
    Gzip,
    /// bzip2 (one or more streams).
    Bzip2,
    /// xz; multi-block files are decoded on several threads.
    Xz,
    /// zstd frames without a seek table.
    Zstd,
    /// zstd seekable format: independent frames decoded on several threads.
    ZstdSeekable,
    /// A zip archive holding exactly one file.
    Zip,
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Format::Raw => "raw",
            Format::Gzip => "gzip",
            Format::Bzip2 => "bzip2",
            Format::Xz => "xz",
            Format::Zstd => "zstd",
            Format::ZstdSeekable => "zstd (seekable)",
            Format::Zip => "zip",
        })
    }
}

/// Detects the format of `head` (the first bytes of a file) alone; a zstd file is
/// reported as [`Format::Zstd`] here, [`detect`] looks for a seek table.
pub fn detect_magic(head: &[u8]) -> Format {
    if head.starts_with(&[0x1f, 0x8b]) {
        Format::Gzip
    } else if head.starts_with(b"BZh") && head.len() > 3 && (b'1'..=b'9').contains(&head[3]) {
        Format::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Format::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Format::Zstd
    } else if head.len() >= 4
        && u32::from_le_bytes(head[..4].try_into().unwrap()) & 0xffff_fff0 == 0x184d_2a50
    {
        // A skippable frame first: only zstd files start like this.
        Format::Zstd
    } else if head.starts_with(b"PK\x03\x04") {
        Format::Zip
    } else {
        Format::Raw
    }
}

/// Detects the format of the file `f` from its content.
pub fn detect(f: &mut File) -> std::io::Result<Format> {
    let mut head = [0u8; 16];
    f.seek(SeekFrom::Start(0))?;
    let n = read_up_to(f, &mut head)?;
    let fmt = detect_magic(&head[..n]);
    f.seek(SeekFrom::Start(0))?;
    if fmt == Format::Zstd && seekable::read_seek_table(f)?.is_some() {
        f.seek(SeekFrom::Start(0))?;
        return Ok(Format::ZstdSeekable);
    }
    f.seek(SeekFrom::Start(0))?;
    Ok(fmt)
}

pub(crate) fn read_up_to<R: Read + ?Sized>(r: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// An opened source file.
#[derive(Debug)]
pub struct Source {
    /// The file as given.
    pub path: PathBuf,
    /// Its detected format.
    pub format: Format,
    /// Size of the file itself.
    pub file_size: u64,
    /// Size of the image when the container records it (raw, seekable zstd, zip).
    pub image_size: Option<u64>,
}

impl Source {
    /// Opens `path` and detects its format.
    pub fn open(path: &Path) -> Result<Source> {
        let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let meta = f.metadata()?;
        if meta.is_dir() {
            bail!("{} is a directory, expected an image file", path.display());
        }
        let format = detect(&mut f).with_context(|| format!("reading {}", path.display()))?;
        let image_size = match format {
            Format::Raw => Some(meta.len()),
            Format::ZstdSeekable => seekable::read_seek_table(&mut f)?
                .map(|t| t.frames.iter().map(|fr| fr.decompressed as u64).sum()),
            Format::Zip => Some(zip_member(path)?.1),
            _ => None,
        };
        Ok(Source {
            path: path.to_path_buf(),
            format,
            file_size: meta.len(),
            image_size,
        })
    }

    /// Starts decompressing on background threads; the returned reader yields the image.
    pub fn reader(&self, threads: usize) -> Result<pipe::PipeReader> {
        let path = self.path.clone();
        let name = self.path.display().to_string();
        let threads = threads.max(1);
        let open = || File::open(&path).with_context(|| format!("opening {}", path.display()));
        Ok(match self.format {
            Format::Raw => pipe::spawn(name, BufReader::with_capacity(1 << 20, open()?)),
            Format::Gzip => pipe::spawn(
                name,
                flate2::bufread::MultiGzDecoder::new(BufReader::with_capacity(1 << 20, open()?)),
            ),
            Format::Bzip2 => pipe::spawn(
                name,
                bzip2::bufread::MultiBzDecoder::new(BufReader::with_capacity(1 << 20, open()?)),
            ),
            Format::Xz => {
                let stream = liblzma::stream::MtStreamBuilder::new()
                    .threads(threads as u32)
                    .memlimit_stop(u64::MAX)
                    .memlimit_threading(1 << 30)
                    .decoder()
                    .context("starting the xz decoder")?;
                let dec = liblzma::bufread::XzDecoder::new_stream(
                    BufReader::with_capacity(1 << 20, open()?),
                    stream,
                );
                pipe::spawn(name, NoTrailing::new(dec, "xz"))
            }
            Format::Zstd => {
                let mut dec = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(
                    1 << 20,
                    open()?,
                ))?;
                dec.window_log_max(31)?;
                pipe::spawn(name, dec)
            }
            Format::ZstdSeekable => seekable::spawn_parallel(&path, threads)?,
            Format::Zip => {
                let (index, _) = zip_member(&path)?;
                let f = open()?;
                pipe::spawn_with(name, move |sink| {
                    let mut ar =
                        zip::ZipArchive::new(BufReader::new(f)).map_err(std::io::Error::other)?;
                    let mut member = ar.by_index(index).map_err(std::io::Error::other)?;
                    sink.copy_from(&mut member)
                })
            }
        })
    }
}

/// Finds the single file in a zip archive: (index, uncompressed size).
fn zip_member(path: &Path) -> Result<(usize, u64)> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut ar = zip::ZipArchive::new(BufReader::new(f))
        .with_context(|| format!("{}: reading the zip directory", path.display()))?;
    let mut files = Vec::new();
    for i in 0..ar.len() {
        let m = ar.by_index_raw(i)?;
        if m.is_file() {
            files.push((i, m.size(), m.name().to_string()));
        }
    }
    match files.as_slice() {
        [(i, size, _)] => Ok((*i, *size)),
        [] => bail!("{}: the zip archive holds no file", path.display()),
        many => bail!(
            "{}: the zip archive holds {} files ({}), expected exactly one image",
            path.display(),
            many.len(),
            many.iter()
                .map(|m| m.2.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// Fails when data follows the end of a single-stream decoder's input.
struct NoTrailing<R: BufRead> {
    dec: liblzma::bufread::XzDecoder<R>,
    what: &'static str,
    done: bool,
}

impl<R: BufRead> NoTrailing<R> {
    fn new(dec: liblzma::bufread::XzDecoder<R>, what: &'static str) -> Self {
        NoTrailing {
            dec,
            what,
            done: false,
        }
    }
}

impl<R: BufRead> Read for NoTrailing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.done {
            return Ok(0);
        }
        let n = self.dec.read(buf)?;
        if n == 0 && !buf.is_empty() {
            self.done = true;
            let rest = self.dec.get_mut().fill_buf()?;
            if !rest.is_empty() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("data follows the end of the {} stream", self.what),
                ));
            }
        }
        Ok(n)
    }
}

/// Strips one compression suffix (`.gz`, `.bz2`, `.xz`, `.zst`, `.zip`) from a file name.
pub fn strip_compression_suffix(name: &str) -> Option<&str> {
    for s in [".gz", ".bz2", ".xz", ".zst", ".zstd", ".zip"] {
        if let Some(base) = name.strip_suffix(s) {
            return Some(base);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_numbers() {
        assert_eq!(detect_magic(&[0x1f, 0x8b, 8, 0]), Format::Gzip);
        assert_eq!(detect_magic(b"BZh91AY&SY"), Format::Bzip2);
        assert_eq!(detect_magic(b"BZhx"), Format::Raw);
        assert_eq!(
            detect_magic(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0, 4]),
            Format::Xz
        );
        assert_eq!(detect_magic(&[0x28, 0xb5, 0x2f, 0xfd, 0x24]), Format::Zstd);
        assert_eq!(
            detect_magic(&[0x5e, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]),
            Format::Zstd
        );
        assert_eq!(detect_magic(b"PK\x03\x04\x14\x00"), Format::Zip);
        assert_eq!(detect_magic(&[0u8; 512]), Format::Raw);
        assert_eq!(detect_magic(b""), Format::Raw);
    }

    #[test]
    fn suffixes() {
        assert_eq!(strip_compression_suffix("a.img.xz"), Some("a.img"));
        assert_eq!(strip_compression_suffix("a.img.zst"), Some("a.img"));
        assert_eq!(strip_compression_suffix("a.img"), None);
    }
}
