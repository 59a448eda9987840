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
//! A live session mounts the root read-only without replaying its journal, so the
//! medium does not change while it is copied. A persistent session writes to its root:
//! copying it then would give a torn filesystem, so `install` refuses and says to boot
//! the live entry.

use anyhow::{bail, Context, Result};
use oneimage_format::gpt::{self, Table};
use oneimage_format::slice::Slice;
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
    let (sys, part) = crate::boot_disk::sys_partition(lower)?;
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
    let devnum = whole_disk(lower).context("the live root's disk")?;
    let disc = std::fs::read_to_string(disk_sys.join("loop/backing_file"))
        .ok()
        .map(|s| PathBuf::from(s.trim()));
    Ok(Medium {
        device: PathBuf::from(format!("/dev/{name}")),
        devnum,
        disc,
        root_number: number,
    })
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
/// partition table and blank first-boot record put in.
pub fn plan(medium: &Medium, say: &dyn Fn(&str)) -> Result<DiskView> {
    let dev = &medium.device;
    let mut disk = File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
    let on_disk = gpt::read_table(&mut disk)
        .with_context(|| format!("reading the partition table of {}", dev.display()))?;
    let ss = on_disk.sector_size;
    let root = on_disk
        .partitions
        .iter()
        .find(|p| p.number == medium.root_number)
        .with_context(|| format!("{} has no partition {}", dev.display(), medium.root_number))?;
    {
        use std::io::{Read, Seek, SeekFrom};
        let mut magic = [0u8; 6];
        disk.seek(SeekFrom::Start(root.offset(ss)))
            .and_then(|_| disk.read_exact(&mut magic))
            .with_context(|| format!("reading partition {} of {}", root.number, dev.display()))?;
        if oneimage_format::luks2::is_luks(&magic) {
            bail!(
                "the root on {} (partition {}) is encrypted (LUKS): installing an encrypted system is not supported by this version of oneimage; nothing was written",
                dev.display(),
                root.number
            );
        }
    }
    // A compressed root is the image's own: a partition its first boot expanded it into
    // on this medium is not, and is left out (the copy expands on its own first boot).
    let compressed = is_compressed_root(&mut disk, root, ss);
    let table = if compressed {
        oneimage_format::expansion::image_table(&on_disk, medium.root_number)
    } else {
        on_disk.clone()
    };
    if table.partitions.len() != on_disk.partitions.len() {
        say("the compressed root was expanded on this medium: copying the image without the expanded root");
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
    if extent > device_size {
        bail!(
            "{}: the image it holds would end at byte {extent}, past the device's end ({device_size} bytes)",
            medium.describe()
        );
    }
    let (root_at, root_len) = (root.offset(ss), root.len(ss));
    let used = if compressed {
        // Compressed: every block is in use.
        None
    } else {
        let mut fs = Slice::new(&mut disk, root_at, root_len);
        match oneimage_format::ext4_used::used_ranges(&mut fs) {
            Ok(u) if u.needs_recovery => {
                // Blocks its journal would allocate may be free in the bitmaps.
                say("the root filesystem was not cleanly unmounted (its journal holds changes): copying all of it");
                None
            }
            Ok(u) => Some(u.ranges),
            Err(e @ oneimage_format::ext4_used::Ext4Error::Unsupported { .. }) => {
                say(&format!("{e}: copying all of the root filesystem"));
                None
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "reading the root filesystem's block bitmaps (partition {} of {})",
                        root.number,
                        dev.display()
                    )
                })
            }
        }
    };
    let mut read = vec![(0, root_at)];
    match used {
        Some(ranges) => read.extend(
            ranges
                .iter()
                .map(|&(a, b)| (root_at + a, root_at + b.min(root_len))),
        ),
        None => read.push((root_at, root_at + root_len)),
    }
    read.push((root_at + root_len, extent));
    read.retain(|(a, b)| a < b);
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
}

/// Copies the running live session's medium onto `o.target` with the writer (every
/// check of `oneimage write` but the one for removable disks: installing means writing
/// to an internal disk), then reads it all back.
pub fn install(
    o: InstallOptions,
    say: &dyn Fn(&str),
) -> Result<oneimage_write::write::WriteReport> {
    let medium = find_medium()?;
    refuse_medium(&medium, &o.target)?;
    let view = plan(&medium, say)?;
    say(&format!(
        "copying the {} image on {}: {} read, the root filesystem's free space written as zeros",
        oneimage_format::size::format_size(view.extent),
        medium.describe(),
        oneimage_format::size::format_size(view.bytes_read())
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
    give_identity(&o.target, medium.root_number, say).with_context(|| {
        format!(
            "{} holds a complete copy, but giving it its own identity failed (its first boot will)",
            o.target.display()
        )
    })?;
    Ok(report)
}

/// Gives the copy on `target` its own identity, the first step of its first boot, through
/// the same record the agent keeps: a record with a new seed, the identity, then the
/// record of it done. A power cut anywhere leaves no record (the first boot does it all)
/// or one the first boot resumes with the same seed.
fn give_identity(target: &Path, root_number: u32, say: &dyn Fn(&str)) -> Result<()> {
    use oneimage_format::firstboot::{self as record, State, Step};
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
    let mut seed = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .context("reading /dev/urandom")?;
    let mut state = State::new(table.disk_guid, root.guid, root_number, seed);
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
    oneimage_format::identity::apply(&mut disk, &table, &id, &mut |uuid| {
        if compressed {
            Ok(())
        } else {
            set_ext4_uuid(&node, uuid)
        }
    })
    .map_err(|e| anyhow::anyhow!("{}: {e}", target.display()))?;
    disk.sync_all()?;
    oneimage_write::gpt_fix::reread_partitions(&disk);
    save(&mut disk, &state.with_done(Step::Identity))?;
    say(&format!(
        "the copy has its own identity: disk {}, root filesystem {}, ESP volume id {}",
        id.disk,
        id.root_fs_uuid,
        oneimage_format::fat::volume_id_text(id.esp_volume_id)
    ));
    Ok(())
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
