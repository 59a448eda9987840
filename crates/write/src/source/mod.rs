//! Image sources: the format is detected from the first bytes, never from the name, and
//! the image is decompressed in-process on a producer thread (and on several threads
//! where the format allows it), so the writer only sees a stream of image bytes.

pub mod disk_view;
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

/// Most memory the xz decoder may use: xz -9 needs 65 MiB and the largest dictionary
/// xz offers (1.5 GiB, `--lzma2=dict=1536MiB`) needs more than this, so no preset and
/// nothing oneimage makes is refused, while a crafted header cannot ask for 4 GiB.
pub const XZ_MEMLIMIT: u64 = 1 << 30;
/// Largest zstd window decoded, as a power of two: 128 MiB, what `zstd -d` itself
/// accepts without `--long` or `--memory` (every level up to `--ultra -22` fits it).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

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
    /// A disk read as an image ([`disk_view::DiskView`]): the medium `install` copies.
    DiskView,
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
            Format::DiskView => "disk",
        })
    }
}

/// Detects the format of `head` (the first bytes of a file) alone; a zstd file is
/// reported as [`Format::Zstd`] here, [`detect`] looks for a seek table.
pub fn detect_magic(head: &[u8]) -> Format {
    use oneimage_format::compression::{sniff, Compression};
    match sniff(head) {
        Compression::None => Format::Raw,
        Compression::Gzip => Format::Gzip,
        Compression::Bzip2 => Format::Bzip2,
        Compression::Xz => Format::Xz,
        Compression::Zstd => Format::Zstd,
        Compression::Zip => Format::Zip,
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
    /// For [`Format::DiskView`], what is read of the disk.
    pub view: Option<Arc<disk_view::DiskView>>,
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
            view: None,
        })
    }

    /// Opens the device of `view` to read it as an image of `view.extent` bytes.
    pub fn from_view(view: disk_view::DiskView) -> Result<Source> {
        let f = File::open(&view.device)
            .with_context(|| format!("opening {}", view.device.display()))?;
        Ok(Source {
            path: view.device.clone(),
            file: Arc::new(f),
            format: Format::DiskView,
            file_size: view.extent,
            image_size: Some(view.extent),
            view: Some(Arc::new(view)),
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
        if let Some(view) = &self.view {
            return Ok(view.reader(self.file.clone()));
        }
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
                            .threads(u32::try_from(threads).unwrap_or(u32::MAX))
                            .memlimit_stop(XZ_MEMLIMIT)
                            .memlimit_threading(XZ_MEMLIMIT)
                            .decoder()
                            .map_err(io::Error::other)?;
                        let dec = liblzma::bufread::XzDecoder::new_stream(buffered, stream);
                        let mut dec = NoTrailing::new(dec, "xz");
                        sink.copy_from(&mut MapErr(&mut dec, xz_error))?
                    }
                    Format::Zstd => {
                        let mut dec = zstd::stream::read::Decoder::with_buffer(buffered)?;
                        dec.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
                        sink.copy_from(&mut MapErr(&mut dec, zstd_error))?
                    }
                    Format::Zip => {
                        let mut ar = zip::ZipArchive::new(buffered).map_err(io::Error::other)?;
                        let mut member = ar
                            .by_index(zip_index.unwrap_or(0))
                            .map_err(io::Error::other)?;
                        sink.copy_from(&mut member)?
                    }
                    Format::ZstdSeekable | Format::DiskView => unreachable!("handled above"),
                }
            }
            input.finish()
        }))
    }
}

/// The image size `format` records, read without decompressing.
fn recorded_size(format: Format, f: &mut TappedFile, path: &Path) -> Result<Option<u64>> {
    Ok(match format {
        Format::Raw | Format::DiskView => Some(f.len),
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
fn zip_member<R: Read + Seek>(f: R, path: &Path) -> Result<(usize, u64)> {
    let mut ar = zip::ZipArchive::new(BufReader::new(f))
        .with_context(|| format!("{}: reading the zip directory", path.display()))?;
    let mut files = Vec::new();
    for i in 0..ar.len() {
        let m = ar
            .by_index_raw(i)
            .with_context(|| format!("{}: reading zip member {i}", path.display()))?;
        if m.is_file() {
            files.push((i, m.size(), m.name().to_string()));
        }
    }
    match files.as_slice() {
        [(i, size, _)] => Ok((*i, *size)),
        [] => bail!("{}: the zip archive holds no file", path.display()),
        many => bail!(
            "{}: the zip archive holds {} files ({}{}), expected exactly one image",
            path.display(),
            many.len(),
            // A crafted directory can list millions: name a few.
            many.iter()
                .take(8)
                .map(|m| m.2.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            if many.len() > 8 { ", ..." } else { "" }
        ),
    }
}

/// A reader whose errors pass through a function, to say in the user's terms what a
/// library's error means.
struct MapErr<R>(R, fn(io::Error) -> io::Error);

impl<R: Read> Read for MapErr<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(self.1)
    }
}

/// liblzma's "memory limit reached", said with the limit and what makes such files.
fn xz_error(e: io::Error) -> io::Error {
    let memlimit = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<liblzma::stream::Error>())
        .is_some_and(|i| matches!(i, liblzma::stream::Error::MemLimit));
    if !memlimit {
        return e;
    }
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "the xz file needs more than {} MiB of memory to decompress (a dictionary larger than any xz preset's); oneimage stops at that limit: decompress it first with xz -d",
            XZ_MEMLIMIT >> 20
        ),
    )
}

/// zstd's "Frame requires too much memory for decoding", said with the limit.
fn zstd_error(e: io::Error) -> io::Error {
    if !e.to_string().contains("too much memory") {
        return e;
    }
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "a zstd frame asks for a window larger than {} MiB (window log {ZSTD_WINDOW_LOG_MAX}; made with zstd --long=28 or more?), more than oneimage decodes, as zstd -d without --long: decompress it first with zstd -d --long=31",
            1u64 << (ZSTD_WINDOW_LOG_MAX - 20)
        ),
    )
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
    use oneimage_format::testing::{Fuzz, Rng};
    use std::io::Write;

    /// The formats are the shared sniffer's (`oneimage_format::compression`, tested
    /// there), with zip and raw as the writer names them.
    #[test]
    fn magic_numbers() {
        assert_eq!(detect_magic(&[0x1f, 0x8b, 8, 0]), Format::Gzip);
        assert_eq!(detect_magic(b"PK\x03\x04\x14\x00"), Format::Zip);
        assert_eq!(detect_magic(&[0u8; 512]), Format::Raw);
    }

    /// Seeded image bytes: runs of zeros, text and noise, as disk images have.
    fn image(rng: &mut Rng, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        while out.len() < len {
            let run = (1 + rng.index(8192)).min(len - out.len());
            match rng.below(3) {
                0 => out.resize(out.len() + run, 0),
                1 => out.extend((0..run).map(|i| b"oneimage "[i % 9])),
                _ => out.extend(rng.bytes(run)),
            }
        }
        out
    }

    fn write_all<W: Write>(mut w: W, data: &[u8]) -> W {
        w.write_all(data).unwrap();
        w
    }

    /// The image in every format the writer reads, as other tools make them.
    fn every_format(img: &[u8]) -> Vec<(Format, Vec<u8>)> {
        let gz = write_all(
            flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()),
            img,
        );
        let bz = write_all(
            bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast()),
            img,
        );
        let xz = write_all(liblzma::write::XzEncoder::new(Vec::new(), 1), img);
        let stream = liblzma::stream::MtStreamBuilder::new()
            .threads(2)
            .block_size(16 << 10)
            .preset(1)
            .encoder()
            .unwrap();
        let xz_blocks = write_all(
            liblzma::write::XzEncoder::new_stream(Vec::new(), stream),
            img,
        );
        let mut seekable = Vec::new();
        oneimage_artifacts::zstd::compress_seekable(img, &mut seekable, 3, 16 << 10, 2).unwrap();
        let mut zip = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        zip.start_file("disk.img", zip::write::SimpleFileOptions::default())
            .unwrap();
        zip.write_all(img).unwrap();
        vec![
            (Format::Raw, img.to_vec()),
            (Format::Gzip, gz.finish().unwrap()),
            (Format::Bzip2, bz.finish().unwrap()),
            (Format::Xz, xz.finish().unwrap()),
            (Format::Xz, xz_blocks.finish().unwrap()),
            (Format::Zstd, zstd::encode_all(img, 3).unwrap()),
            (Format::Zstd, zstd::bulk::compress(img, 3).unwrap()),
            (Format::ZstdSeekable, seekable),
            (Format::Zip, zip.finish().unwrap().into_inner()),
        ]
    }

    /// Opens `path` and decodes at most `cap` bytes of its image: the error if any.
    fn open_and_read(path: &Path, cap: u64) -> Result<(Source, Vec<u8>)> {
        let src = Source::open(path)?;
        let mut out = Vec::new();
        src.reader(2, Tap::default())?
            .take(cap)
            .read_to_end(&mut out)?;
        Ok((src, out))
    }

    #[test]
    fn every_format_reads_back() {
        let img = image(&mut Rng::new(1), 300_000);
        let dir = tempfile::tempdir().unwrap();
        for (i, (fmt, bytes)) in every_format(&img).into_iter().enumerate() {
            let p = dir.path().join(format!("f{i}"));
            std::fs::write(&p, bytes).unwrap();
            let (src, out) = open_and_read(&p, u64::MAX).unwrap();
            assert_eq!(src.format, fmt, "{i}");
            assert!(out == img, "{i}: {fmt}");
        }
    }

    /// Mutated files of every format (headers, indexes, tables, directories and
    /// trailers mostly): opening never panics, and decoding either yields bytes or
    /// fails with an error (a decoder thread that panicked would say so), in bounded
    /// time and memory. At most 1 MiB is decoded, so a file that inflates without end
    /// is cut off, not waited for.
    #[test]
    fn fuzz_source() {
        let img = image(&mut Rng::new(2), 64 << 10);
        let bases = every_format(&img);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("source");
        let mut opened = 0;
        // Each case writes a file and starts decoder threads: a fifth of the count.
        let report = Fuzz::new("fuzz_source").cost(5).run(
            |m, case| {
                let (_, base) = &bases[case as usize % bases.len()];
                let n = base.len();
                m.hot(&[0..64, n.saturating_sub(160)..n]).mutate(base)
            },
            |input| {
                std::fs::write(&path, input).unwrap();
                match open_and_read(&path, 1 << 20) {
                    Ok((src, out)) => {
                        opened += 1;
                        if let Some(n) = src.image_size {
                            assert!(
                                out.len() as u64 <= n.max(1 << 20) || src.format != Format::Raw
                            );
                        }
                        true
                    }
                    Err(e) => {
                        let e = format!("{e:#}");
                        assert!(!e.contains("panicked"), "{e}");
                        false
                    }
                }
            },
        );
        assert!(opened > 100 && report.accepted < report.cases, "{report:?}");
    }

    /// Zip archives as zip tools make them: stored and deflated members, a directory
    /// entry beside the file, zip64 records, and two files (refused).
    fn zips(img: &[u8]) -> Vec<Vec<u8>> {
        use zip::write::SimpleFileOptions;
        let opts = [
            SimpleFileOptions::default(),
            SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored),
            SimpleFileOptions::default().large_file(true),
        ];
        let mut out = Vec::new();
        for (i, o) in opts.iter().enumerate() {
            let mut z = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
            if i == 2 {
                z.add_directory("images/", *o).unwrap();
            }
            z.start_file("images/disk.img", *o).unwrap();
            z.write_all(img).unwrap();
            out.push(z.finish().unwrap().into_inner());
        }
        let mut z = zip::ZipWriter::new(io::Cursor::new(Vec::new()));
        for name in ["a.img", "b.img"] {
            z.start_file(name, opts[0]).unwrap();
            z.write_all(&img[..100]).unwrap();
        }
        out.push(z.finish().unwrap().into_inner());
        out
    }

    /// Mutated zip archives (local headers, the central directory and its end record,
    /// zip64 records, member data): finding the member never panics and says what is
    /// wrong, and decoding the member it finds (at most 1 MiB) ends in bytes or an error.
    #[test]
    fn fuzz_zip() {
        let img = image(&mut Rng::new(3), 20_000);
        let bases = zips(&img);
        let path = Path::new("fuzz.zip");
        let report = Fuzz::new("fuzz_zip").run(
            |m, case| {
                let base = &bases[case as usize % bases.len()];
                let n = base.len();
                m.hot(&[0..80, n.saturating_sub(200)..n]).mutate(base)
            },
            |input| {
                let (i, _size) = match zip_member(io::Cursor::new(input), path) {
                    Ok(found) => found,
                    Err(e) => {
                        assert!(format!("{e:#}").contains("fuzz.zip"), "{e:#}");
                        return false;
                    }
                };
                let mut ar = zip::ZipArchive::new(io::Cursor::new(input)).unwrap();
                if let Ok(member) = ar.by_index(i) {
                    let mut out = Vec::new();
                    let _ = member.take(1 << 20).read_to_end(&mut out);
                }
                true
            },
        );
        assert!(
            report.accepted > 1000 && report.accepted < report.cases,
            "{report:?}"
        );
    }

    /// An xz file made with `dict` in its LZMA2 properties (byte as the format codes
    /// it): a small file whose one block header is edited, its CRC32 made right.
    fn xz_with_dict(dict: u8) -> Vec<u8> {
        let mut xz = write_all(liblzma::write::XzEncoder::new(Vec::new(), 1), b"hello")
            .finish()
            .unwrap();
        // The block header follows the 12-byte stream header: its size, flags, then
        // the LZMA2 filter (ID 0x21, one property byte: the dictionary size).
        let size = (usize::from(xz[12]) + 1) * 4;
        let header = &mut xz[12..12 + size];
        let at = header.windows(2).position(|w| w == [0x21, 0x01]).unwrap() + 2;
        header[at] = dict;
        let crc = crc32fast::hash(&header[..size - 4]);
        header[size - 4..].copy_from_slice(&crc.to_le_bytes());
        xz
    }

    /// A zstd frame whose header asks for a window of 2^`log` bytes (it needs far less).
    fn zstd_with_window(log: u8) -> Vec<u8> {
        let mut enc = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
        enc.include_contentsize(false).unwrap();
        let mut z = write_all(enc, b"hello").finish().unwrap();
        // Frame header descriptor: not single-segment, so a window descriptor follows.
        assert_eq!(z[4] & 0x20, 0);
        z[5] = (log - 10) << 3;
        z
    }

    /// What `xz -9` and `zstd --long=27` make decodes; a dictionary or window beyond the
    /// limits is refused with an error that names the limit and the way out.
    #[test]
    fn decompressor_memory_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        // LZMA2 dictionary bytes: 28 is 64 MiB (xz -9), 37 is 1.5 GiB, 40 is 4 GiB - 1.
        for (dict, ok) in [(28, true), (37, false), (40, false)] {
            std::fs::write(&p, xz_with_dict(dict)).unwrap();
            match open_and_read(&p, u64::MAX) {
                Ok((_, out)) => assert!(ok && out == b"hello", "{dict}"),
                Err(e) => {
                    let e = format!("{e:#}");
                    assert!(!ok && e.contains("1024 MiB of memory"), "{dict}: {e}");
                }
            }
        }
        for (log, ok) in [(27, true), (28, false), (31, false)] {
            std::fs::write(&p, zstd_with_window(log)).unwrap();
            match open_and_read(&p, u64::MAX) {
                Ok((_, out)) => assert!(ok && out == b"hello", "{log}"),
                Err(e) => {
                    let e = format!("{e:#}");
                    assert!(!ok && e.contains("larger than 128 MiB"), "{log}: {e}");
                }
            }
        }
    }

    /// A seekable file whose frames exceed MAX_FRAME is not decoded frame by frame on
    /// several threads (each would hold a few such frames); it is still valid zstd, and
    /// is decoded as that, on one thread within the zstd window limit.
    #[test]
    fn seekable_frames_beyond_the_limit_decode_as_plain_zstd() {
        let big = oneimage_format::zstd_seekable::MAX_FRAME as usize + 4096;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.img.zst");
        let mut f = std::fs::File::create(&p).unwrap();
        oneimage_artifacts::zstd::compress_seekable(
            io::repeat(0).take(big as u64),
            &mut f,
            1,
            big,
            1,
        )
        .unwrap();
        let src = Source::open(&p).unwrap();
        assert_eq!(
            (src.format, src.image_size),
            (Format::Zstd, Some(big as u64))
        );
        let mut n = 0;
        let mut r = src.reader(2, Tap::default()).unwrap();
        while let Some(chunk) = r.next_chunk().unwrap() {
            assert!(chunk.iter().all(|&b| b == 0));
            n += chunk.len();
        }
        assert_eq!(n, big);
    }

    #[test]
    fn suffixes() {
        assert_eq!(strip_compression_suffix("a.img.xz"), Some("a.img"));
        assert_eq!(strip_compression_suffix("a.img.zst"), Some("a.img"));
        assert_eq!(strip_compression_suffix("a.img"), None);
    }
}
