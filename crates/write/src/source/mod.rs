//! Image sources: the format is detected from the first bytes, never from the name, and
//! the image is decompressed in-process on a producer thread (and on several threads
//! where the format allows it), so the writer only sees a stream of image bytes.

pub mod pipe;
pub mod seekable;

use crate::tap::Tap;
use anyhow::{bail, Context, Result};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

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

/// An opened source file. It is opened once: every later read (format detection, size,
/// checks, the write itself) goes through this one handle, so a file replaced on disk
/// meanwhile is never what gets written.
#[derive(Debug)]
pub struct Source {
    /// The file as given.
    pub path: PathBuf,
    /// The open file.
    pub file: Arc<File>,
    /// Its detected format.
    pub format: Format,
    /// Size of the file itself.
    pub file_size: u64,
    /// Size of the image when the container records it (raw, xz index, zstd frame
    /// headers, seekable zstd table, zip directory).
    pub image_size: Option<u64>,
}

impl Source {
    /// Opens `path`, detects its format and reads the image size the container records.
    pub fn open(path: &Path) -> Result<Source> {
        let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let meta = f.metadata()?;
        if meta.is_dir() {
            bail!("{} is a directory, expected an image file", path.display());
        }
        let format = detect(&mut f).with_context(|| format!("reading {}", path.display()))?;
        let file = Arc::new(f);
        let mut at = TappedFile::new(file.clone(), meta.len(), None);
        let image_size = recorded_size(format, &mut at, path).with_context(|| {
            format!("{}: reading the size of the {format} image", path.display())
        })?;
        Ok(Source {
            path: path.to_path_buf(),
            file,
            format,
            file_size: meta.len(),
            image_size,
        })
    }

    /// Starts decompressing on background threads; the returned reader yields the image.
    /// Every byte of the source file, in order, also goes to `raw` (for checks over the
    /// file as downloaded), including bytes the decoder does not need.
    pub fn reader(&self, threads: usize, raw: Tap) -> Result<pipe::PipeReader> {
        let name = self.path.display().to_string();
        let threads = threads.max(1);
        let mut input = TappedFile::new(self.file.clone(), self.file_size, Some(raw));
        let format = self.format;
        let zip_index = match format {
            Format::Zip => Some(zip_member(&mut input.untapped(), &self.path)?.0),
            _ => None,
        };
        if format == Format::ZstdSeekable {
            let table = seekable::read_seek_table(&mut input.untapped())?.with_context(|| {
                format!("{}: the zstd seek table vanished", self.path.display())
            })?;
            return Ok(seekable::spawn_parallel(name, input, table, threads));
        }
        Ok(pipe::spawn_with(name, move |sink| {
            {
                let buffered = BufReader::with_capacity(1 << 20, &mut input);
                match format {
                    Format::Raw => sink.copy_from(&mut { buffered })?,
                    Format::Gzip => {
                        sink.copy_from(&mut flate2::bufread::MultiGzDecoder::new(buffered))?
                    }
                    Format::Bzip2 => {
                        sink.copy_from(&mut bzip2::bufread::MultiBzDecoder::new(buffered))?
                    }
                    Format::Xz => {
                        let stream = liblzma::stream::MtStreamBuilder::new()
                            .threads(threads as u32)
                            .memlimit_stop(u64::MAX)
                            .memlimit_threading(1 << 30)
                            .decoder()
                            .map_err(io::Error::other)?;
                        let dec = liblzma::bufread::XzDecoder::new_stream(buffered, stream);
                        sink.copy_from(&mut NoTrailing::new(dec, "xz"))?
                    }
                    Format::Zstd => {
                        let mut dec = zstd::stream::read::Decoder::with_buffer(buffered)?;
                        dec.window_log_max(31)?;
                        sink.copy_from(&mut dec)?
                    }
                    Format::Zip => {
                        let mut ar = zip::ZipArchive::new(buffered).map_err(io::Error::other)?;
                        let mut member = ar
                            .by_index(zip_index.unwrap_or(0))
                            .map_err(io::Error::other)?;
                        sink.copy_from(&mut member)?
                    }
                    Format::ZstdSeekable => unreachable!("handled above"),
                }
            }
            input.finish()
        }))
    }
}

/// The image size `format` records, read without decompressing.
fn recorded_size(format: Format, f: &mut TappedFile, path: &Path) -> Result<Option<u64>> {
    Ok(match format {
        Format::Raw => Some(f.len),
        Format::ZstdSeekable => seekable::read_seek_table(f)?.map(|t| t.decompressed_size()),
        Format::Zip => Some(zip_member(f, path)?.1),
        Format::Xz => Some(oneimage_format::compressed_size::xz_uncompressed_size(f)?),
        Format::Zstd => oneimage_format::compressed_size::zstd_content_size(f)?,
        // gzip keeps the size modulo 4 GiB only, bzip2 not at all.
        Format::Gzip | Format::Bzip2 => None,
    })
}

/// Positioned reads from the one open source file. With a tap, every byte of the file
/// goes to it exactly once and in order: a read that continues where the tapped bytes
/// end extends them; reads elsewhere (a zip directory at the end) are served untapped,
/// and [`TappedFile::finish`] taps whatever the decoder never read.
pub struct TappedFile {
    file: Arc<File>,
    len: u64,
    pos: u64,
    frontier: u64,
    tap: Option<Tap>,
}

impl TappedFile {
    fn new(file: Arc<File>, len: u64, tap: Option<Tap>) -> TappedFile {
        TappedFile {
            file,
            len,
            pos: 0,
            frontier: 0,
            tap,
        }
    }

    /// A reader over the same file that taps nothing (for directories and tables).
    fn untapped(&self) -> TappedFile {
        TappedFile::new(self.file.clone(), self.len, None)
    }

    /// Reads exactly `buf.len()` bytes at `off`, tapping them when they continue the
    /// tapped bytes.
    pub(crate) fn read_exact_at(&mut self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, off)?;
        self.tapped(buf, off);
        Ok(())
    }

    fn tapped(&mut self, data: &[u8], off: u64) {
        let end = off + data.len() as u64;
        if let Some(t) = &mut self.tap {
            if off <= self.frontier && end > self.frontier {
                t.send(&data[(self.frontier - off) as usize..]);
                self.frontier = end;
            }
        }
    }

    /// Taps the rest of the file after the decoder is done, then ends the tap.
    pub(crate) fn finish(mut self) -> io::Result<()> {
        if self.tap.is_none() {
            return Ok(());
        }
        let mut buf = vec![0u8; 1 << 20];
        while self.frontier < self.len {
            let n = ((self.len - self.frontier) as usize).min(buf.len());
            let at = self.frontier;
            self.read_exact_at(&mut buf[..n], at)?;
        }
        Ok(())
    }
}

impl Read for TappedFile {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = loop {
            match self.file.read_at(buf, self.pos) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r?,
            }
        };
        let at = self.pos;
        self.tapped(&buf[..n], at);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for TappedFile {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the file",
            )
        })?;
        Ok(self.pos)
    }
}

/// Finds the single file in a zip archive: (index, uncompressed size).
fn zip_member(f: &mut TappedFile, path: &Path) -> Result<(usize, u64)> {
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
