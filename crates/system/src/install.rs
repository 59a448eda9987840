//! `oneimage install`: inside a live session (started from a stick's live entry, or from
//! a DVD), copies the medium it started from onto another disk with oneimage's writer.
//!
//! The copy is the image the medium holds: everything before and after the root
//! partition, and of the root filesystem only its used blocks (its free blocks become
//! zeros, never read). Its partition table is rewritten for an image exactly as long as
//! the copy, and its first-boot record is left out, so the copy's first boot is the
//! first boot of a fresh copy: it takes its own identity (GUIDs, filesystem UUID, ESP
//! volume id) before anything writes to it, then grows to fill its disk.
//!
//! An encrypted copy (`--encrypt`, or as the image's `[encryption]` says) has its root
//! partition written as a new LUKS2 volume, made here and encrypted on the way by the
//! writer (`EncryptedPartition`): the target never holds the root's plaintext. The
//! medium's root may itself be encrypted (a build-key stick): its filesystem is read
//! through the mapping the live session opened.
//!
//! A live session mounts the root read-only without replaying its journal, so the
//! medium does not change while it is copied. A persistent session writes to its root:
//! copying it then would give a torn filesystem, so `install` refuses and says to boot
//! the live entry.

use anyhow::{bail, Context, Result};
use oneimage_builder::esp::MENU_SETTINGS_PATH;
use oneimage_format::encryption::{Outcome, Policy};
use oneimage_format::firstboot::State;
use oneimage_format::gpt::{self, Table};
use oneimage_format::luks2;
use oneimage_format::slice::Slice;
use oneimage_format::Guid;
use oneimage_write::source::disk_view::DiskView;
use oneimage_write::target::device::{whole_disk, Device};
use oneimage_write::target::mounts::{self, DevNum};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Where the agent mounts the root of a live session (read-only, under a RAM overlay).
pub const LIVE_LOWER: &str = "/run/oneimage/lower";

/// The medium the running live session started from.
#[derive(Debug, Clone)]
pub struct Medium {
    /// The whole disk read, e.g. `/dev/sda`, or the loop device over a DVD.
    pub device: PathBuf,
    /// Its device number.
    pub devnum: DevNum,
    /// The DVD drive behind the loop device, e.g. `/dev/sr0`.
    pub disc: Option<PathBuf>,
    /// The root partition's number.
    pub root_number: u32,
    /// The device-mapper device the live session opened an encrypted (LUKS2) root
    /// through, e.g. `/dev/dm-0`: the filesystem is read from it.
    pub root_mapping: Option<PathBuf>,
}

impl Medium {
    /// How to name it to the user.
    pub fn describe(&self) -> String {
        match &self.disc {
            Some(d) => format!("the disc in {}", d.display()),
            None => self.device.display().to_string(),
        }
    }

    /// Whether `d` (a whole disk) is this medium.
    pub fn is(&self, d: DevNum) -> bool {
        d == self.devnum || self.disc.as_ref().and_then(|p| rdev_of(p)) == Some(d)
    }
}

fn rdev_of(p: &Path) -> Option<DevNum> {
    let m = std::fs::metadata(p).ok()?;
    m.file_type()
        .is_block_device()
        .then(|| mounts::split_dev(m.rdev()))
}

/// The device number mounted at `point` in mountinfo `text`.
fn mounted_at(text: &str, point: &str) -> Option<DevNum> {
    mounts::parse_mountinfo(text)
        .into_iter()
        .find_map(|(d, points)| points.iter().any(|p| p == point).then_some(d))
}

/// Finds the medium of the running live session, or says why there is none: a
/// persistent session (boot the live entry), a system oneimage did not start.
pub fn find_medium() -> Result<Medium> {
    let info =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let Some(lower) = mounted_at(&info, LIVE_LOWER) else {
        let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
        if crate::boot_disk::cmdline_value(&cmdline, "oneimage.esp").is_some() {
            bail!("this system runs persistent: its root is mounted read-write and changes while it runs, so a copy of it would not be consistent; restart, choose the live entry (l) in the boot menu, and run `oneimage install` there");
        }
        bail!("this system was not started by oneimage (no oneimage.esp= on the kernel command line and no live root at {LIVE_LOWER}); boot the oneimage stick or DVD to install it");
    };
    let (mut sys, mut part) = crate::boot_disk::sys_partition(lower)?;
    let (mut root_dev, mut root_mapping) = (lower, None);
    if part.is_none() && sys.join("dm").is_dir() {
        // An encrypted root: the partition is the one device under the mapping.
        root_dev = single_slave(&sys)?;
        root_mapping =
            Some(PathBuf::from("/dev").join(sys.file_name().context("a device's name")?));
        (sys, part) = crate::boot_disk::sys_partition(root_dev)?;
    }
    let crate::boot_disk::SysPartition {
        number,
        disk_sys,
        disk_name: name,
    } = part.with_context(|| {
        format!(
            "the live root {} is not a partition of a disk",
            sys.display()
        )
    })?;
    let devnum = whole_disk(root_dev).context("the live root's disk")?;
    let disc = std::fs::read_to_string(disk_sys.join("loop/backing_file"))
        .ok()
        .map(|s| PathBuf::from(s.trim()));
    Ok(Medium {
        device: PathBuf::from(format!("/dev/{name}")),
        devnum,
        disc,
        root_number: number,
        root_mapping,
    })
}

/// The device number of the one device under the device-mapper device at sysfs `sys`.
fn single_slave(sys: &Path) -> Result<DevNum> {
    let names: Vec<_> = std::fs::read_dir(sys.join("slaves"))
        .with_context(|| format!("reading {}", sys.join("slaves").display()))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    let [name] = names.as_slice() else {
        bail!(
            "the live root {} is a device-mapper device over {} devices; oneimage opens its root over one partition",
            sys.display(),
            names.len()
        );
    };
    let dev = std::fs::read_to_string(sys.join("slaves").join(name).join("dev"))
        .context("reading the device number of the live root's partition")?;
    let (major, minor) = dev
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .with_context(|| format!("{dev:?}: not a device number"))?;
    Ok((major, minor))
}

/// Whether partition `p` of `disk` holds a compressed root (SquashFS, EROFS).
fn is_compressed_root(disk: &mut File, p: &gpt::Partition, ss: u64) -> bool {
    let mut fs = Slice::new(disk, p.offset(ss), p.len(ss));
    oneimage_format::probe::probe(&mut fs)
        .ok()
        .flatten()
        .is_some_and(|f| oneimage_format::expansion::is_compressed(&f.kind))
}

/// Bytes after the last partition that the backup GPT takes: its entries and header.
fn backup_gpt_bytes(ss: u64) -> u64 {
    ((128 * 128u64).div_ceil(ss) + 1) * ss
}

/// The size of the ISO 9660 volume whose descriptor is at byte 32768 of `disk`, if any.
fn iso_volume_size(disk: &mut File) -> Result<Option<u64>> {
    let mut pvd = [0u8; 2048];
    disk.seek(SeekFrom::Start(32768))?;
    disk.read_exact(&mut pvd)?;
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return Ok(None);
    }
    let blocks = u32::from_le_bytes(pvd[80..84].try_into().expect("4 bytes"));
    let block = u16::from_le_bytes([pvd[128], pvd[129]]);
    Ok(Some(u64::from(blocks) * u64::from(block)))
}

/// What of the medium is copied: the extent of the image, the ranges read, and the new
/// partition table and blank first-boot record put in. With `volume`, the copy's root
/// partition is that new LUKS2 volume holding the medium's root filesystem, made as it
/// is written (the partition grows by the header's room when it has not got it).
pub fn plan(
    medium: &Medium,
    volume: Option<&oneimage_format::luks2::Made>,
    say: &dyn Fn(&str),
) -> Result<DiskView> {
    let dev = &medium.device;
    let mut disk = File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let on_disk = gpt::read_table(&mut disk)
        .with_context(|| format!("reading the partition table of {}", dev.display()))?;
    let ss = on_disk.sector_size;
    let root = on_disk
        .partitions
        .iter()
        .find(|p| p.number == medium.root_number)
        .with_context(|| format!("{} has no partition {}", dev.display(), medium.root_number))?
        .clone();
    let (root_at, root_len) = (root.offset(ss), root.len(ss));
    let mut magic = [0u8; 6];
    disk.seek(SeekFrom::Start(root_at))
        .and_then(|_| disk.read_exact(&mut magic))
        .with_context(|| format!("reading partition {} of {}", root.number, dev.display()))?;
    let luks = oneimage_format::luks2::is_luks(&magic);
    // A compressed root is the image's own: a partition its first boot expanded it into
    // on this medium is not, and is left out (the copy expands on its own first boot).
    let compressed = !luks && is_compressed_root(&mut disk, &root, ss);
    if compressed && volume.is_some() {
        bail!("the root on {} is compressed: its copy cannot be encrypted while it is written; the copy's first boot expands it straight into a new LUKS2 volume when the image asks for encryption ([encryption] mode = \"offer\" or \"require\")", dev.display());
    }
    let mut table = if compressed {
        oneimage_format::expansion::image_table(&on_disk, medium.root_number)
    } else {
        on_disk.clone()
    };
    if table.partitions.len() != on_disk.partitions.len() {
        say("the compressed root was expanded on this medium: copying the image without the expanded root");
    }
    // Where the root filesystem is read: the partition, or the mapping the live
    // session opened an encrypted root through.
    let (fs_path, fs_at) = match (&medium.root_mapping, luks) {
        (Some(m), true) => (m.clone(), 0),
        (None, true) if volume.is_some() => bail!(
            "the root on {} (partition {}) is encrypted, but this live session did not open it; nothing was written",
            dev.display(),
            root.number
        ),
        _ => (dev.clone(), root_at),
    };
    let mut fs_file =
        File::open(&fs_path).with_context(|| format!("opening {}", fs_path.display()))?;
    let fs_room = if fs_path == *dev {
        root_len
    } else {
        fs_file.seek(SeekFrom::End(0))?
    };
    let used = if compressed || (luks && volume.is_none()) {
        // Compressed, or an encrypted root copied as it is: every block is in use.
        None
    } else {
        let mut fs = Slice::new(&mut fs_file, fs_at, fs_room);
        match oneimage_format::ext4_used::used_ranges(&mut fs) {
            Ok(u) if u.needs_recovery => {
                // Blocks its journal would allocate may be free in the bitmaps.
                say("the root filesystem was not cleanly unmounted (its journal holds changes): copying all of it");
                Some((
                    vec![(0, u.blocks_count * u.block_size)],
                    u.blocks_count * u.block_size,
                ))
            }
            Ok(u) => Some((u.ranges, u.blocks_count * u.block_size)),
            Err(e @ oneimage_format::ext4_used::Ext4Error::Unsupported { .. })
                if volume.is_none() =>
            {
                say(&format!("{e}: copying all of the root filesystem"));
                None
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "reading the root filesystem's block bitmaps ({})",
                        fs_path.display()
                    )
                })
            }
        }
    };
    let mut encrypted = None;
    if let Some(v) = volume {
        let (ranges, fs_len) = used.clone().context("the root filesystem's size")?;
        let needed = (v.header.len() as u64 + fs_len).next_multiple_of(ss);
        let root_index = table
            .partitions
            .iter()
            .position(|p| p.number == root.number)
            .context("the root partition in the copy's table")?;
        let mut new_len = root_len;
        if needed > root_len {
            let last = table
                .partitions
                .iter()
                .map(|p| p.last_lba)
                .max()
                .unwrap_or(0);
            if table.partitions[root_index].last_lba != last {
                bail!(
                    "the root partition {} of {} has no room for a LUKS2 header ({} more bytes) and is not the last partition, so it cannot grow in the copy",
                    root.number,
                    dev.display(),
                    needed - root_len
                );
            }
            table.partitions[root_index].last_lba += (needed - root_len) / ss;
            new_len = needed;
            say(&format!(
                "the root partition grows by {} in the copy: the room of its LUKS2 header",
                oneimage_format::size::format_size(needed - root_len)
            ));
        }
        encrypted = Some(oneimage_write::source::disk_view::EncryptedPartition {
            at: root_at,
            len: new_len,
            header: std::sync::Arc::new(v.header.clone()),
            key: std::sync::Arc::new(v.volume_key),
            source: fs_path.clone(),
            source_at: fs_at,
            read: ranges
                .iter()
                .map(|&(a, b)| (a, b.min(fs_len)))
                .filter(|(a, b)| a < b)
                .collect(),
        });
    }
    let parts_end = table
        .partitions
        .iter()
        .map(|p| (p.last_lba + 1) * ss)
        .max()
        .unwrap_or(0);
    let iso = iso_volume_size(&mut disk)
        .with_context(|| format!("reading {} at byte 32768", dev.display()))?;
    let extent = (parts_end + backup_gpt_bytes(ss))
        .max(iso.unwrap_or(0))
        .next_multiple_of(4096);
    let device_size = disk.seek(SeekFrom::End(0))?;
    let mut read = vec![(0, root_at)];
    match (&encrypted, used) {
        (Some(_), _) => {}
        (None, Some((ranges, _))) => read.extend(
            ranges
                .iter()
                .map(|&(a, b)| (root_at + a, root_at + b.min(root_len))),
        ),
        (None, None) => read.push((root_at, root_at + root_len)),
    }
    let root_end = root_at + encrypted.as_ref().map_or(root_len, |e| e.len);
    read.push((root_end, extent.min(device_size)));
    read.retain(|(a, b)| a < b);
    if extent > device_size && encrypted.is_none() {
        bail!(
            "{}: the image it holds would end at byte {extent}, past the device's end ({device_size} bytes)",
            medium.describe()
        );
    }
    let mut patches = table_for_extent(&mut disk, &table, extent)
        .with_context(|| format!("{}: the partition table for the copy", dev.display()))?;
    for at in oneimage_format::firstboot::SLOT_OFFSETS {
        patches.push((at, vec![0; oneimage_format::firstboot::RECORD_LEN]));
    }
    Ok(DiskView {
        device: dev.clone(),
        extent,
        read,
        patches,
        encrypted,
    })
}

/// The medium's partition table written for a disk of `extent` bytes: the bytes of the
/// primary copy (with the MBR) and of the backup, as patches.
fn table_for_extent(disk: &mut File, table: &Table, extent: u64) -> Result<Vec<(u64, Vec<u8>)>> {
    let ss = table.sector_size;
    let head_len = 2 * ss + backup_gpt_bytes(ss) - ss;
    let mut head = vec![0u8; head_len as usize];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut head)?;
    let tail_len = backup_gpt_bytes(ss);
    let mut w = Window {
        len: extent,
        head,
        tail_at: extent - tail_len,
        tail: vec![0u8; tail_len as usize],
        pos: 0,
    };
    gpt::rewrite_table(&mut w, table)?;
    Ok(vec![(0, w.head), (w.tail_at, w.tail)])
}

/// A disk of `len` bytes of which only the first and last few sectors exist: enough for
/// the GPT code to write both tables.
struct Window {
    len: u64,
    head: Vec<u8>,
    tail_at: u64,
    tail: Vec<u8>,
    pos: u64,
}

impl Window {
    fn region(&mut self, n: usize) -> std::io::Result<&mut [u8]> {
        let (at, end) = (self.pos, self.pos + n as u64);
        if end <= self.head.len() as u64 {
            return Ok(&mut self.head[at as usize..end as usize]);
        }
        if at >= self.tail_at && end <= self.len {
            let o = (at - self.tail_at) as usize;
            return Ok(&mut self.tail[o..o + n]);
        }
        Err(std::io::Error::other(format!(
            "the table for the copy touches bytes {at}..{end}, outside its head and tail"
        )))
    }
}

impl Read for Window {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len();
        buf.copy_from_slice(self.region(n)?);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Write for Window {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.region(buf.len())?.copy_from_slice(buf);
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Seek for Window {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        }
        .ok_or_else(|| std::io::Error::other("seek out of range"))?;
        Ok(self.pos)
    }
}

/// A disk `install` could be pointed at, and why it would be refused, if it would.
#[derive(Debug)]
pub struct Candidate {
    /// What sysfs says about it.
    pub device: Device,
    /// usb, sata, nvme, virtio, mmc, scsi.
    pub transport: String,
    /// Its size, model, and partitions with what they hold.
    pub description: String,
    /// Why `install` refuses it, if it does.
    pub refused: Option<String>,
}

/// How the disk at sysfs path `sys` is attached, from the path of its device.
fn transport(sys: &Path) -> String {
    let p = sys.to_string_lossy();
    let name = sys
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let kind = if p.contains("/usb") {
        "usb"
    } else if name.starts_with("nvme") {
        "nvme"
    } else if name.starts_with("mmcblk") {
        "mmc"
    } else if p.contains("/ata") {
        "sata"
    } else if name.starts_with("vd") || p.contains("/virtio") {
        "virtio"
    } else {
        "scsi"
    };
    kind.to_string()
}

/// The disks of this machine other than the medium, each with why `install` would
/// refuse it for an image of `extent` bytes.
pub fn candidates(medium: &Medium, extent: u64) -> Vec<Candidate> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/block")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        // Optical drives, RAM, loop, device-mapper and md devices are not install targets.
        if ["loop", "ram", "zram", "sr", "dm-", "md", "nbd"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let path = PathBuf::from(format!("/dev/{name}"));
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let Ok(device) = Device::inspect(&path, meta.rdev()) else {
            continue;
        };
        if device.size == 0 || medium.is(device.devnum) {
            continue;
        }
        let sys = std::fs::canonicalize(format!("/sys/block/{name}")).unwrap_or_default();
        let description = File::open(&path)
            .map(|f| device.describe(&f))
            .unwrap_or_else(|e| format!("{}: cannot be opened: {e}", path.display()));
        let refused = device
            .check(extent, &medium.device, true)
            .err()
            .map(|e| format!("{e:#}"));
        out.push(Candidate {
            transport: transport(&sys),
            device,
            description,
            refused,
        });
    }
    out
}

/// Refuses `target` when it is the medium itself, with a message saying so.
pub fn refuse_medium(medium: &Medium, target: &Path) -> Result<()> {
    let meta =
        std::fs::metadata(target).with_context(|| format!("reading {}", target.display()))?;
    if !meta.file_type().is_block_device() {
        bail!("{} is not a block device; `install` writes to a whole disk such as /dev/nvme0n1 or /dev/sda (`oneimage write` writes image files)", target.display());
    }
    let d = mounts::split_dev(meta.rdev());
    if medium.is(d) || whole_disk(d).is_some_and(|w| medium.is(w)) {
        bail!(
            "{} is the medium this system was started from ({}); choose another disk",
            target.display(),
            medium.describe()
        );
    }
    Ok(())
}

/// Whether the copy's root is encrypted, as asked on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EncryptChoice {
    /// As the image says: always for `require`, `build-key` and an encrypted medium;
    /// asked for `offer`; never for `off`.
    #[default]
    AsTheImageSays,
    /// Encrypt (refused for an image that cannot unlock an encrypted root).
    Encrypt,
    /// Do not encrypt (refused where the image requires encryption).
    Plain,
}

/// What `install` needs.
pub struct InstallOptions {
    /// The whole disk to install onto.
    pub target: PathBuf,
    /// Do not ask for confirmation.
    pub yes: bool,
    /// How the writer shows progress.
    pub progress: oneimage_write::progress::Mode,
    /// Set to stop the copy; the target is then erased.
    pub cancel: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// Whether the copy's root is encrypted.
    pub encrypt: EncryptChoice,
    /// Where the new passphrase is read from (its first line), instead of asking.
    pub passphrase_file: Option<PathBuf>,
}

/// Asks the user for one line without showing it; `Ok(None)` when nobody can answer
/// (no terminal).
pub type AskSecret<'a> = &'a dyn Fn(&str) -> Result<Option<String>>;

/// The encryption policy of the running image, from its boot settings (`off` for an
/// image made before encryption existed).
fn image_policy() -> Result<Policy> {
    if !Path::new(MENU_SETTINGS_PATH).exists() {
        return Ok(Policy::Off);
    }
    let settings = crate::update_boot::read_settings()?;
    settings
        .encryption
        .parse()
        .map_err(|e| anyhow::anyhow!("{MENU_SETTINGS_PATH}: encryption = {e}"))
}

/// The passphrase of the copy's LUKS2 volume, or `None` when the copy is not encrypted.
fn choose_passphrase(
    o: &InstallOptions,
    policy: Policy,
    medium_encrypted: bool,
    ask: AskSecret<'_>,
) -> Result<Option<String>> {
    let must = medium_encrypted || matches!(policy, Policy::Require | Policy::BuildKey);
    match o.encrypt {
        EncryptChoice::Plain if medium_encrypted => bail!(
            "the root of this medium is encrypted: its copy is encrypted too (leave out --no-encrypt); nothing was written"
        ),
        EncryptChoice::Plain if must => bail!(
            "this image requires encryption ([encryption] mode = \"{policy}\"): its copy is encrypted (leave out --no-encrypt); nothing was written"
        ),
        EncryptChoice::Plain => return Ok(None),
        EncryptChoice::Encrypt if policy == Policy::Off && !medium_encrypted => bail!(
            "this image was built without encryption ([encryption] mode = \"off\"): its initramfs has no cryptsetup to unlock an encrypted root; build it with mode = \"offer\" or \"require\"; nothing was written"
        ),
        EncryptChoice::AsTheImageSays if policy == Policy::Off && !medium_encrypted => {
            return Ok(None)
        }
        _ => {}
    }
    if let Some(f) = &o.passphrase_file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("reading the passphrase from {}", f.display()))?;
        let p = text.lines().next().unwrap_or("").to_string();
        if p.is_empty() {
            bail!("{}: the first line (the passphrase) is empty", f.display());
        }
        return Ok(Some(p));
    }
    let may_decline = !must && o.encrypt == EncryptChoice::AsTheImageSays;
    let prompt = if may_decline {
        "New passphrase for the copy's encrypted root (empty: do not encrypt): "
    } else {
        "New passphrase for the copy's encrypted root: "
    };
    loop {
        let Some(first) = ask(prompt)? else {
            bail!("the copy's root is encrypted and no passphrase can be asked (standard input is not a terminal): give one with --passphrase-file FILE; nothing was written");
        };
        if first.is_empty() {
            if may_decline {
                return Ok(None);
            }
            eprintln!("oneimage: install: an empty passphrase is not allowed");
            continue;
        }
        let again = ask("The same passphrase again: ")?.unwrap_or_default();
        if again == first {
            return Ok(Some(first));
        }
        eprintln!("oneimage: install: the two passphrases differ; again");
    }
}

/// Argon2id's memory (KiB) and time cost for a new keyslot, like cryptsetup's: about
/// two seconds on this machine, with up to 1 GiB and half its memory.
fn kdf_cost() -> (u32, u32) {
    const TARGET: f64 = 2.0;
    let total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(2 << 20);
    let max_kib = (1u64 << 20).min(total_kib / 2).max(64 << 10);
    // One pass over 64 MiB gives the cost of a KiB.
    let probe_kib = 64u32 << 10;
    let started = std::time::Instant::now();
    let params = argon2::Params::new(probe_kib, 1, 1, Some(32)).expect("valid argon2 parameters");
    let mut out = [0u8; 32];
    let _ = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(b"probe", b"oneimage kdf probe", &mut out);
    let per_kib = started.elapsed().as_secs_f64() / f64::from(probe_kib);
    let time_at_max = (TARGET / (per_kib * max_kib as f64)).floor();
    if time_at_max >= 4.0 {
        (max_kib as u32, time_at_max.min(1000.0) as u32)
    } else {
        let kib = (TARGET / (per_kib * 4.0)).clamp(32.0 * 1024.0, max_kib as f64);
        (kib as u32, 4)
    }
}

/// Copies the running live session's medium onto `o.target` with the writer (every
/// check of `oneimage write` but the one for removable disks: installing means writing
/// to an internal disk), then reads it all back. An encrypted copy's root is a new
/// LUKS2 volume from its first written byte: the target never holds its plaintext.
pub fn install(
    o: InstallOptions,
    ask: AskSecret<'_>,
    say: &dyn Fn(&str),
) -> Result<oneimage_write::write::WriteReport> {
    let medium = find_medium()?;
    refuse_medium(&medium, &o.target)?;
    let policy = image_policy()?;
    let passphrase = choose_passphrase(&o, policy, medium.root_mapping.is_some(), ask)?;
    let mut seed = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .context("reading /dev/urandom")?;
    let volume = match &passphrase {
        Some(p) => {
            let (memory, time) = kdf_cost();
            say(&format!(
                "making the copy's LUKS2 header: aes-xts-plain64, argon2id with {} MiB and {time} passes",
                memory >> 10
            ));
            let mut urandom = File::open("/dev/urandom").context("opening /dev/urandom")?;
            let mut failed = None;
            let secrets = luks2::Secrets::from_source(&mut |b| {
                if let Err(e) = urandom.read_exact(b) {
                    failed = Some(e);
                }
            });
            if let Some(e) = failed {
                return Err(e).context("reading /dev/urandom");
            }
            let probe = State::new(Guid([0; 16]), Guid([0; 16]), medium.root_number, seed);
            let made = luks2::make_header_with(
                &luks2::BuildKey {
                    passphrase: p.as_bytes(),
                    seed: "",
                    uuid: probe.identity().luks_uuid,
                    label: "oneimage-root",
                    kdf_memory_kib: memory,
                    kdf_time: time,
                },
                &secrets,
            )
            .map_err(|e| anyhow::anyhow!("making the LUKS2 header: {e}"))?;
            Some(made)
        }
        None => None,
    };
    let view = plan(&medium, volume.as_ref(), say)?;
    say(&format!(
        "copying the {} image on {}: {} read, the root filesystem's free space written as zeros{}",
        oneimage_format::size::format_size(view.extent),
        medium.describe(),
        oneimage_format::size::format_size(view.bytes_read()),
        if volume.is_some() {
            "; the root written encrypted (LUKS2)"
        } else {
            ""
        }
    ));
    let mut w = oneimage_write::write::WriteOptions::new(&medium.device, &o.target);
    w.view = Some(view);
    w.checks = oneimage_write::target::Checks {
        force: true,
        yes: o.yes,
        allow_unknown_size: false,
    };
    w.progress = o.progress;
    w.cancel = o.cancel;
    let report = oneimage_write::write::write(&w)?;
    let encryption = match (&passphrase, policy) {
        (Some(p), _) => Encryption::Encrypted(p),
        (None, Policy::Off) => Encryption::Off,
        (None, _) => Encryption::Declined,
    };
    give_identity(&o.target, medium.root_number, seed, policy, encryption, say).with_context(
        || {
            format!(
                "{} holds a complete copy, but giving it its own identity failed (its first boot will)",
                o.target.display()
            )
        },
    )?;
    Ok(report)
}

/// What became of the copy's encryption.
enum Encryption<'a> {
    /// The image does not encrypt.
    Off,
    /// The copy's root is LUKS2, with this passphrase.
    Encrypted(&'a str),
    /// Offered and declined: the copy's first boot does not ask again.
    Declined,
}

/// Gives the copy on `target` its own identity, the first step of its first boot, through
/// the same record the agent keeps: a record with the seed, the identity, then the
/// record of it done (and of the encryption, when `install` decided it). A power cut
/// anywhere leaves no record (the first boot does it all) or one the first boot resumes
/// with the same seed.
fn give_identity(
    target: &Path,
    root_number: u32,
    seed: [u8; 32],
    policy: Policy,
    encryption: Encryption<'_>,
    say: &dyn Fn(&str),
) -> Result<()> {
    use oneimage_format::firstboot::{self as record, Step};
    let mut disk = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(target)
        .with_context(|| format!("opening {}", target.display()))?;
    let table = gpt::read_table(&mut disk)
        .with_context(|| format!("reading the partition table of {}", target.display()))?;
    let root = table
        .partitions
        .iter()
        .find(|p| p.number == root_number)
        .with_context(|| format!("{} has no partition {root_number}", target.display()))?;
    let mut state = State::new(table.disk_guid, root.guid, root_number, seed).encrypting(policy);
    // A compressed root has no UUID to change; the copy's first boot expands it, into
    // a filesystem made with the new one.
    let compressed = is_compressed_root(&mut disk, root, table.sector_size);
    if compressed {
        state = state.expanding_into(oneimage_format::expansion::expanded_number(&table));
    }
    let save = |disk: &mut File, state: &State| -> Result<()> {
        record::write(disk, state)
            .and_then(|_| disk.sync_all())
            .with_context(|| format!("writing the first-boot record on {}", target.display()))
    };
    save(&mut disk, &state)?;
    let node = partition_node(&disk, target, root_number)?;
    let id = state.identity();
    oneimage_format::identity::apply(&mut disk, &table, &id, &mut |uuid| match encryption {
        _ if compressed => Ok(()),
        Encryption::Encrypted(p) => set_ext4_uuid_inside(&node, p, uuid),
        _ => set_ext4_uuid(&node, uuid),
    })
    .map_err(|e| anyhow::anyhow!("{}: {e}", target.display()))?;
    disk.sync_all()?;
    oneimage_write::gpt_fix::reread_partitions(&disk);
    state = state.with_done(Step::Identity);
    match encryption {
        Encryption::Off => {}
        Encryption::Encrypted(_) => state = state.with_encryption_done(Outcome::Encrypted),
        Encryption::Declined => state = state.with_encryption_done(Outcome::Declined),
    }
    save(&mut disk, &state)?;
    say(&format!(
        "the copy has its own identity: disk {}, root filesystem {}, ESP volume id {}{}",
        id.disk,
        id.root_fs_uuid,
        oneimage_format::fat::volume_id_text(id.esp_volume_id),
        match encryption {
            Encryption::Encrypted(_) => format!(", LUKS2 header {}", id.luks_uuid),
            _ => String::new(),
        }
    ));
    Ok(())
}

/// Sets the UUID of the ext4 filesystem inside the LUKS2 volume on `node`: opened with
/// cryptsetup for the change, then closed.
fn set_ext4_uuid_inside(
    node: &Path,
    passphrase: &str,
    uuid: oneimage_format::Guid,
) -> Result<(), String> {
    const MAPPING: &str = "oneimage-install";
    let mut open = std::process::Command::new("cryptsetup");
    open.args(["open", "--type", "luks2", "--key-file=-"])
        .arg(node)
        .arg(MAPPING)
        .stdin(std::process::Stdio::piped());
    let mut child = open
        .spawn()
        .map_err(|e| format!("running cryptsetup open: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(passphrase.as_bytes())
            .map_err(|e| format!("giving cryptsetup the passphrase: {e}"))?;
    }
    let status = child
        .wait()
        .map_err(|e| format!("waiting for cryptsetup open: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cryptsetup open {} failed ({status}): the new volume does not open with its passphrase",
            node.display()
        ));
    }
    let mapped = PathBuf::from(format!("/dev/mapper/{MAPPING}"));
    let set = set_ext4_uuid(&mapped, uuid);
    let mut close = std::process::Command::new("cryptsetup");
    close.args(["close", MAPPING]);
    let closed = oneimage_builder::run::run(
        &mut close,
        "closing the copy's LUKS2 volume",
        Default::default(),
    )
    .map(|_| ())
    .map_err(|e| format!("{e:#}"));
    set.and(closed)
}

/// The device node of partition `number` of the whole disk `disk`, once the kernel has
/// read its table (asked here) and made the node.
fn partition_node(disk: &File, path: &Path, number: u32) -> Result<PathBuf> {
    oneimage_write::gpt_fix::reread_partitions(disk);
    let name = std::fs::canonicalize(path)?
        .file_name()
        .context("a disk's name")?
        .to_string_lossy()
        .into_owned();
    let started = std::time::Instant::now();
    loop {
        let found = std::fs::read_dir(format!("/sys/class/block/{name}"))
            .into_iter()
            .flatten()
            .flatten()
            .find(|e| {
                std::fs::read_to_string(e.path().join("partition"))
                    .is_ok_and(|n| n.trim() == number.to_string())
            })
            .map(|e| PathBuf::from("/dev").join(e.file_name()));
        match found {
            Some(node) if node.exists() => return Ok(node),
            _ if started.elapsed() > std::time::Duration::from_secs(10) => bail!(
                "the kernel shows no partition {number} on {} after reading its table",
                path.display()
            ),
            _ => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// Sets the UUID of the ext4 filesystem on `node` with tune2fs, unless that would
/// rewrite every checksum (see `oneimage_format::identity::UuidChange`).
fn set_ext4_uuid(node: &Path, uuid: oneimage_format::Guid) -> Result<(), String> {
    use oneimage_format::identity::{uuid_change_of, UuidChange};
    let change = File::open(node)
        .map_err(|e| e.to_string())
        .and_then(|mut f| uuid_change_of(&mut f, uuid))
        .map_err(|e| format!("{}: {e}", node.display()))?;
    match change {
        UuidChange::Done | UuidChange::Keep => Ok(()),
        UuidChange::Tune2fs => {
            let mut cmd = std::process::Command::new("tune2fs");
            cmd.arg("-U").arg(uuid.to_string()).arg(node);
            oneimage_builder::run::run(
                &mut cmd,
                "setting the root filesystem's UUID",
                Default::default(),
            )
            .map(|_| ())
            .map_err(|e| format!("{e:#}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_live_root_is_found_in_mountinfo() {
        let info = "22 1 0:21 / / rw,relatime - overlay overlay rw,lowerdir=/run/oneimage/lower\n\
                    30 22 8:2 / /run/oneimage/lower ro,relatime - ext4 /dev/sda2 ro,norecovery\n\
                    31 22 0:5 / /dev rw - devtmpfs devtmpfs rw\n";
        assert_eq!(mounted_at(info, LIVE_LOWER), Some((8, 2)));
        assert_eq!(mounted_at(info, "/home"), None);
    }

    #[test]
    fn the_copy_gets_a_table_for_its_own_length() {
        use oneimage_format::gpt::{Partition, TYPE_LINUX_DATA};
        use oneimage_format::Guid;
        // A medium 64 MiB long whose image is 8 MiB, its backup table at the device end.
        let mut f = tempfile::tempfile().unwrap();
        f.set_len(64 << 20).unwrap();
        let parts = vec![Partition {
            number: 1,
            type_guid: TYPE_LINUX_DATA.parse().unwrap(),
            guid: Guid::derive("t", "p1"),
            name: "root".into(),
            first_lba: 2048,
            last_lba: 16383 - 33,
            attributes: 0,
        }];
        gpt::write_table(&mut f, 512, Guid::derive("t", "disk"), &parts).unwrap();
        let table = gpt::read_table(&mut f).unwrap();
        let extent = 8 << 20;
        let patches = table_for_extent(&mut f, &table, extent).unwrap();
        let mut copy = std::io::Cursor::new(vec![0u8; extent as usize]);
        for (at, bytes) in &patches {
            copy.get_mut()[*at as usize..*at as usize + bytes.len()].copy_from_slice(bytes);
        }
        let t = gpt::read_table(&mut copy).unwrap();
        assert_eq!(t.partitions, parts);
        assert_eq!(t.disk_guid, table.disk_guid);
        assert_eq!(t.backup_lba, extent / 512 - 1);
        assert!(gpt::backup_at_end(&mut copy, 512));
        // sgdisk agrees.
        let tmp = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(tmp.path(), copy.get_ref()).unwrap();
        let out = std::process::Command::new("sgdisk")
            .env("LC_ALL", "C")
            .arg("-v")
            .arg(tmp.path())
            .output()
            .expect("sgdisk (package gdisk) must be installed");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("No problems found"),
            "{text}"
        );
    }
}
