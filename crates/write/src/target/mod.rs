//! Write targets: a regular file (written under a temporary name, renamed when verified)
//! or a whole-disk block device (checked, opened exclusively, written with direct I/O).

pub mod device;
pub mod mounts;
pub mod system_disks;

use anyhow::{bail, Context, Result};
use device::Device;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, IsTerminal, Write};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// Alignment used for direct I/O (a multiple of every logical block size in use).
pub const ALIGN: usize = 4096;

/// Safety switches for opening a block device.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checks {
    /// Allow a disk that is not removable.
    pub force: bool,
    /// Do not ask for confirmation.
    pub yes: bool,
    /// Write to a device although the image's size is not known before the end.
    pub allow_unknown_size: bool,
}

/// An opened target.
pub enum Target {
    /// A regular file, written under a temporary name in the same directory.
    File {
        /// The temporary file (deleted if dropped).
        tmp: tempfile::NamedTempFile,
        /// The name it gets when complete.
        dest: PathBuf,
    },
    /// A block device.
    Device {
        /// What we know about it.
        dev: Device,
        /// Opened with O_EXCL | O_DIRECT.
        direct: File,
        /// Opened without O_DIRECT, for unaligned pieces.
        buffered: File,
    },
}

/// A buffer whose slice starts on an [`ALIGN`] boundary, as direct I/O requires.
pub struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes.
    pub fn new(len: usize) -> AlignedBuf {
        let raw = vec![0u8; len + ALIGN];
        let start = raw.as_ptr().align_offset(ALIGN);
        AlignedBuf { raw, start, len }
    }
    /// The aligned bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.raw[self.start..self.start + self.len]
    }
    /// The aligned bytes, writable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.raw[self.start..self.start + self.len]
    }
}

impl Target {
    /// Opens `path` for an image of `image_size` bytes read from `source`, after every
    /// safety check; for a block device, shows it and asks unless `checks.yes`.
    pub fn open(
        path: &Path,
        image_size: Option<u64>,
        source: &Path,
        checks: Checks,
    ) -> Result<Target> {
        let meta = match std::fs::metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        match meta {
            Some(m) if m.file_type().is_block_device() => {
                // Opened once, exclusively, before any check: the checks below look at
                // the device this handle holds (its number from fstat), so the path
                // cannot be switched to another device between the checks and the write.
                let buffered = match OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
                    .open(path)
                {
                    Ok(f) => f,
                    Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                        // Say why when we can (mounted, a holder); else that it is busy.
                        use std::os::unix::fs::MetadataExt;
                        let dev = Device::inspect(path, m.rdev())?;
                        dev.check(image_size.unwrap_or(0), source, checks.force)?;
                        bail!(
                            "{} is in use (mounted, or held open exclusively by another program)",
                            path.display()
                        );
                    }
                    Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
                };
                let meta = buffered
                    .metadata()
                    .with_context(|| format!("reading {}", path.display()))?;
                if !meta.file_type().is_block_device() {
                    bail!(
                        "{} changed while it was opened: it is no longer a block device",
                        path.display()
                    );
                }
                use std::os::unix::fs::MetadataExt;
                let dev = Device::inspect(path, meta.rdev())?;
                match image_size {
                    Some(size) => dev.check(size, source, checks.force)?,
                    None if checks.allow_unknown_size => dev.check(0, source, checks.force)?,
                    None => {
                        dev.check(0, source, checks.force)?;
                        bail!("the size of the image inside {} is not recorded in its format, so it cannot be checked against {} before writing; give the image's block map (--bmap FILE), or pass --allow-unknown-size to write anyway (a target that turns out too small is then erased and reported INCOMPLETE)", source.display(), path.display());
                    }
                }
                confirm(&dev, &buffered, checks.yes)?;
                // The direct-I/O handle is the same open device, reached through this
                // process's own descriptor rather than the path.
                let direct = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
                    .open(format!(
                        "/proc/self/fd/{}",
                        std::os::fd::AsRawFd::as_raw_fd(&buffered)
                    ))
                    .with_context(|| format!("opening {} for direct I/O", path.display()))?;
                Ok(Target::Device {
                    dev,
                    direct,
                    buffered,
                })
            }
            Some(m) if m.is_dir() => bail!(
                "{} is a directory; expected a block device or a file name",
                path.display()
            ),
            Some(m) if !m.is_file() => bail!(
                "{} is neither a block device nor a regular file",
                path.display()
            ),
            other => {
                if path.starts_with("/dev") {
                    bail!("{} does not exist: no such device (is the stick plugged in?); nothing was written and no file was created", path.display());
                }
                if let Some(m) = other {
                    use std::os::unix::fs::MetadataExt;
                    let s = std::fs::metadata(source)?;
                    if s.dev() == m.dev() && s.ino() == m.ino() {
                        bail!("{} is the source file itself", path.display());
                    }
                }
                let dir = match path.parent() {
                    Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                let name = path
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let tmp = tempfile::Builder::new()
                    .prefix(&format!(".{name}.partial-"))
                    .tempfile_in(&dir)
                    .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
                use std::os::unix::fs::PermissionsExt;
                tmp.as_file()
                    .set_permissions(std::fs::Permissions::from_mode(0o644))
                    .with_context(|| format!("setting the mode of {}", tmp.path().display()))?;
                tmp.as_file()
                    .set_len(image_size.unwrap_or(0))
                    .with_context(|| format!("sizing {}", tmp.path().display()))?;
                Ok(Target::File {
                    tmp,
                    dest: path.to_path_buf(),
                })
            }
        }
    }

    /// The name to show.
    pub fn display(&self) -> String {
        match self {
            Target::File { dest, .. } => dest.display().to_string(),
            Target::Device { dev, .. } => dev.path.display().to_string(),
        }
    }

    /// The path holding the bytes right now (the temporary file for a file target).
    pub fn current_path(&self) -> PathBuf {
        match self {
            Target::File { tmp, .. } => tmp.path().to_path_buf(),
            Target::Device { dev, .. } => dev.path.clone(),
        }
    }

    /// Size of the target (the image size for a file).
    pub fn size(&self) -> Result<u64> {
        Ok(match self {
            Target::File { tmp, .. } => tmp.as_file().metadata()?.len(),
            Target::Device { dev, .. } => dev.size,
        })
    }

    /// The file descriptor for ordinary (cached) I/O on a block device.
    pub fn device_file(&self) -> Option<&File> {
        match self {
            Target::Device { buffered, .. } => Some(buffered),
            Target::File { .. } => None,
        }
    }

    /// Whether this is a block device.
    pub fn is_device(&self) -> bool {
        matches!(self, Target::Device { .. })
    }

    /// The open file to do I/O of `buf` at `off` through: on a device, the direct-I/O
    /// handle when both are aligned, otherwise the buffered one.
    fn handle(&self, buf: &[u8], off: u64) -> &File {
        match self {
            Target::File { tmp, .. } => tmp.as_file(),
            Target::Device { direct, .. } if is_aligned(buf, off) => direct,
            Target::Device { buffered, .. } => buffered,
        }
    }

    /// Writes `buf` at `off`; direct I/O when `buf` and `off` are aligned.
    pub fn write_at(&self, buf: &[u8], off: u64) -> io::Result<()> {
        self.handle(buf, off).write_all_at(buf, off)
    }

    /// Reads exactly `buf.len()` bytes at `off`, bypassing the page cache where it can.
    pub fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<()> {
        self.handle(buf, off).read_exact_at(buf, off)
    }

    /// Makes `len` bytes at `off` read as zeros. On a device this is BLKZEROOUT (the
    /// kernel picks the fastest way the device offers, writing zeros at worst), or plain
    /// zeros where the range is not sector-aligned; a new file is zero already.
    pub fn zero_range(&self, off: u64, len: u64) -> io::Result<()> {
        let Target::Device { direct, .. } = self else {
            return Ok(());
        };
        if off.is_multiple_of(512) && len.is_multiple_of(512) && len > 0 {
            // _IO(0x12, 127)
            const BLKZEROOUT: rustix::ioctl::Opcode = 0x127f;
            // SAFETY: BLKZEROOUT reads a u64[2] (offset, length) that lives for the call.
            let r = unsafe {
                rustix::ioctl::ioctl(
                    direct,
                    rustix::ioctl::Setter::<BLKZEROOUT, [u64; 2]>::new([off, len]),
                )
            };
            if r.is_ok() {
                return Ok(());
            }
        }
        let zeros = AlignedBuf::new((1 << 20).min(len as usize));
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(1 << 20) as usize;
            self.write_at(&zeros.as_slice()[..n], off + done)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Before the first byte of a device is written: erases the first MiB, the MiB
    /// before the image's end (when known) and the device's last MiB, where partition
    /// tables (primary and backup GPT, MBR, ISO 9660 descriptors) live, so the target is
    /// no disk at all until the copy writes them last.
    pub fn invalidate(&self, image_size: Option<u64>) -> io::Result<()> {
        let Target::Device { dev, .. } = self else {
            return Ok(());
        };
        let mib = 1u64 << 20;
        let mut ranges = vec![(0, mib.min(dev.size))];
        if let Some(s) = image_size.filter(|&s| s <= dev.size) {
            ranges.push((s.saturating_sub(mib), s));
        }
        ranges.push((dev.size.saturating_sub(mib), dev.size));
        for (a, b) in ranges {
            // Sector-aligned outward, within the device.
            let a = a / 4096 * 4096;
            let b = b.div_ceil(4096).saturating_mul(4096).min(dev.size);
            let zeros = AlignedBuf::new((b - a) as usize);
            self.write_at(zeros.as_slice(), a)?;
        }
        self.sync()
    }

    /// Flushes everything to the media and drops cached pages so reads hit the media.
    pub fn sync(&self) -> io::Result<()> {
        let files: Vec<&File> = match self {
            Target::File { tmp, .. } => vec![tmp.as_file()],
            Target::Device {
                direct, buffered, ..
            } => vec![buffered, direct],
        };
        for f in files {
            f.sync_all()?;
            let _ = rustix::fs::fadvise(f, 0, None, rustix::fs::Advice::DontNeed);
        }
        Ok(())
    }

    /// Makes the result final: a file target is renamed to its name.
    pub fn finish(self) -> Result<()> {
        if let Target::File { tmp, dest } = self {
            tmp.as_file().sync_all()?;
            tmp.persist(&dest)
                .map_err(|e| e.error)
                .with_context(|| format!("renaming the finished image to {}", dest.display()))?;
            if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
                if let Ok(d) = File::open(dir) {
                    let _ = d.sync_all();
                }
            }
        }
        Ok(())
    }

    /// After a failure: a file target is deleted (by dropping it); on a device the
    /// partition tables at both ends of the image are zeroed so the half-written disk
    /// is not mistaken for a good one. Returns what was done.
    pub fn abandon(self, image_size: u64) -> String {
        match &self {
            Target::File { tmp, dest } => {
                format!(
                    "{} is INCOMPLETE and was not created; removed the partial file {}",
                    dest.display(),
                    tmp.path().display()
                )
            }
            Target::Device { dev, .. } => {
                if self.invalidate(Some(image_size)).is_ok() {
                    format!("{} is INCOMPLETE; its partition tables were erased so it is not mistaken for a good copy", dev.path.display())
                } else {
                    format!(
                        "{} is INCOMPLETE and could not even be erased; do not use it",
                        dev.path.display()
                    )
                }
            }
        }
    }
}

fn is_aligned(buf: &[u8], off: u64) -> bool {
    buf.as_ptr().align_offset(ALIGN) == 0
        && buf.len().is_multiple_of(ALIGN)
        && off.is_multiple_of(ALIGN as u64)
}

/// Shows the device and asks for `yes` on the terminal; refuses without a terminal.
fn confirm(dev: &Device, f: &File, yes: bool) -> Result<()> {
    eprintln!("oneimage: target {}", dev.describe(f));
    if yes {
        return Ok(());
    }
    if !io::stdin().is_terminal() {
        bail!(
            "refusing to overwrite {} without confirmation: standard input is not a terminal; add --yes to confirm",
            dev.path.display()
        );
    }
    eprint!(
        "oneimage: everything on {} will be lost. Type yes to continue: ",
        dev.path.display()
    );
    io::stderr().flush()?;
    let mut line = String::new();
    io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "yes" {
        bail!("not confirmed; {} was not touched", dev.path.display());
    }
    Ok(())
}
