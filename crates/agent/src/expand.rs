//! Expanding a compressed root (SquashFS, EROFS) into a read-write ext4 root, on a
//! disk's first persistent boot.
//!
//! The layout: the compressed partition stays where it is, as the factory copy the live
//! entry (and the DVD view) boots; the ext4 root goes into a new partition in the space
//! after the last one: `mke2fs`, then for SquashFS `unsquashfs` into it (on every core),
//! for EROFS `fsck.erofs --extract` and what it leaves out ([`crate::erofs_extract`]);
//! without either tool in the initramfs, `mke2fs -d` from the factory copy mounted
//! read-only.
//! Three writes, each redone harmlessly after a power cut:
//!
//! 1. the table gains the new partition, typed as plain Linux data and named
//!    `oneimage-expanding`, so nothing takes it for a root while it is being filled;
//! 2. `mke2fs` makes the filesystem from scratch (a cut leaves a partial one, which
//!    the next boot makes again: the first-boot record does not say "expanded" yet);
//!    when the image asks for encryption, inside a LUKS2 volume made on the partition
//!    first, so the root is never written in the clear;
//! 3. the table makes the new partition the root (the architecture's root type, named
//!    `root`) and the factory copy plain Linux data named `factory-root`, so tools that
//!    look for a root by type find the read-write one.
//!
//! Only after those does the first-boot record say the expansion is done; until it does,
//! the system is never booted from the new partition.

use crate::cmdline::Grow;
use crate::disks::Found;
use crate::log::say;
use oneimage_format::expansion::{EXPANDED_NAME, EXPANDING_NAME, FACTORY_NAME, MIN_FREE};
use oneimage_format::ext4_size::{minimal_bytes, Object, Usage};
use oneimage_format::gpt::{read_table, write_table, Partition, Table, TYPE_LINUX_DATA};
use oneimage_format::size::{align_up, format_size};
use oneimage_format::Guid;
use rustix::mount::{mount, unmount, MountFlags, UnmountFlags};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where the factory copy is mounted read-only while it is read.
const FACTORY_MOUNT: &str = "/run/oneimage/factory";

const MIB: u64 = 1 << 20;

/// The compressed filesystem on `node` (`squashfs` or `erofs`), or `None` for any other
/// (ext4 included).
pub fn compressed_kind(node: &Path) -> Option<&'static str> {
    let mut f = std::fs::File::open(node).ok()?;
    let kind = oneimage_format::probe::probe(&mut f).ok()??.kind;
    ["squashfs", "erofs"].into_iter().find(|k| *k == kind)
}

/// The factory copy, mounted read-only for as long as this lives.
struct FactoryMount;

impl FactoryMount {
    fn new(node: &Path, kind: &str) -> Result<FactoryMount, String> {
        std::fs::create_dir_all(FACTORY_MOUNT)
            .map_err(|e| format!("creating {FACTORY_MOUNT}: {e}"))?;
        mount(
            node,
            FACTORY_MOUNT,
            kind,
            MountFlags::RDONLY,
            None::<&std::ffi::CStr>,
        )
        .map_err(|e| {
            format!(
                "mounting {} ({kind}) read-only on {FACTORY_MOUNT}: {e}",
                node.display()
            )
        })?;
        Ok(FactoryMount)
    }
}

impl Drop for FactoryMount {
    fn drop(&mut self) {
        if let Err(e) = unmount(FACTORY_MOUNT, UnmountFlags::empty()) {
            say(&format!("unmounting {FACTORY_MOUNT}: {e}"));
        }
    }
}

/// unsquashfs in the initramfs (from a root that has squashfs-tools: the builder
/// installs it in a SquashFS root).
const UNSQUASHFS: &str = "/sbin/unsquashfs";

/// Where the new ext4 root is mounted while it is filled.
const NEW_ROOT_MOUNT: &str = "/run/oneimage/expanding";

/// How the new ext4 root is filled from the factory copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// `unsquashfs` into the mounted ext4: decompresses on every core, where the
    /// kernel's SquashFS decompresses for one reader at a time.
    Unsquashfs,
    /// `fsck.erofs --extract` into the mounted ext4 (decompressing in userspace, twice
    /// as fast as the kernel's EROFS under emulation), then a walk of the kernel's mount
    /// for what it leaves out.
    ErofsExtract,
    /// `mke2fs -d` from the kernel's mount: libext2fs writes the ext4 block by block.
    MkfsD,
}

impl Fill {
    /// The fastest way the initramfs has for a root of `kind`.
    fn for_kind(kind: &str) -> Fill {
        if kind == "squashfs" && Path::new(UNSQUASHFS).exists() {
            Fill::Unsquashfs
        } else if kind == "erofs" && Path::new(crate::erofs_extract::FSCK_EROFS).exists() {
            Fill::ErofsExtract
        } else {
            Fill::MkfsD
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Fill::Unsquashfs => "mke2fs and unsquashfs",
            Fill::ErofsExtract => "mke2fs and fsck.erofs --extract",
            Fill::MkfsD => "mke2fs -d",
        }
    }
}

/// Makes ext4 on `target` with `mkfs_args` and fills it from the `kind` filesystem on
/// `factory` the way `fill` says (owners, modes, times, xattrs, hardlinks and device
/// nodes, as root).
fn make_and_fill(
    fill: Fill,
    factory: &Path,
    kind: &str,
    target: &Path,
    mkfs_args: &[&str],
) -> Result<(), String> {
    let target_s = target.display().to_string();
    let mut args = mkfs_args.to_vec();
    // `mke2fs -d` fills the filesystem as it makes it, from the factory copy mounted.
    let populate = fill == Fill::MkfsD;
    let factory_mount = populate
        .then(|| FactoryMount::new(factory, kind))
        .transpose()?;
    if populate {
        args.extend(["-d", FACTORY_MOUNT]);
    }
    args.push(&target_s);
    crate::run::tool_env(
        "/sbin/mke2fs",
        &args,
        &[("MKE2FS_CONFIG", "/etc/mke2fs.conf")],
    )?;
    if populate {
        drop(factory_mount);
        return Ok(());
    }
    std::fs::create_dir_all(NEW_ROOT_MOUNT)
        .map_err(|e| format!("creating {NEW_ROOT_MOUNT}: {e}"))?;
    mount(
        target,
        NEW_ROOT_MOUNT,
        "ext4",
        MountFlags::NOATIME,
        None::<&std::ffi::CStr>,
    )
    .map_err(|e| format!("mounting the new root {target_s} on {NEW_ROOT_MOUNT}: {e}"))?;
    let filled = if fill == Fill::Unsquashfs {
        let factory_s = factory.display().to_string();
        // -f: into the existing (mounted) directory; -n: no progress bar; -q: quiet;
        // -da/-fr: data and fragment caches of 64 MiB each (not 256), for small machines.
        crate::run::tool(
            UNSQUASHFS,
            &[
                "-f",
                "-n",
                "-q",
                "-da",
                "64",
                "-fr",
                "64",
                "-d",
                NEW_ROOT_MOUNT,
                &factory_s,
            ],
        )
    } else {
        let target = Path::new(NEW_ROOT_MOUNT);
        crate::erofs_extract::extract(factory, target).and_then(|()| {
            let _m = FactoryMount::new(factory, kind)?;
            let r = crate::erofs_extract::restore(Path::new(FACTORY_MOUNT), target)?;
            say(&format!(
                "expanding: put back what fsck.erofs leaves out: {} hardlinks, {} set-ID modes, {} extended attributes",
                r.hardlinks, r.modes, r.xattrs
            ));
            Ok(())
        })
    };
    let unmounted = unmount(NEW_ROOT_MOUNT, UnmountFlags::empty())
        .map_err(|e| format!("unmounting the new root from {NEW_ROOT_MOUNT}: {e}"));
    filled.and(unmounted)
}

/// Adds up what the tree below `dir` takes on ext4 (hardlinks once).
fn usage_of(dir: &Path) -> Result<Usage, String> {
    let mut u = Usage::default();
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![(dir.to_path_buf(), String::new())];
    u.add("/", Object::Dir, 0);
    while let Some((real, path)) = stack.pop() {
        let rd =
            std::fs::read_dir(&real).map_err(|e| format!("reading {}: {e}", real.display()))?;
        for e in rd {
            let e = e.map_err(|e| format!("reading {}: {e}", real.display()))?;
            let m = e
                .metadata()
                .map_err(|err| format!("reading {}: {err}", e.path().display()))?;
            let name = format!("{path}/{}", e.file_name().to_string_lossy());
            let t = m.file_type();
            let object = if t.is_dir() {
                stack.push((e.path(), name.clone()));
                Object::Dir
            } else if t.is_symlink() {
                Object::Symlink(m.len())
            } else if t.is_file() {
                if m.nlink() > 1 && !seen.insert(m.ino()) {
                    Object::Hardlink
                } else {
                    Object::File(m.len())
                }
            } else {
                Object::Special
            };
            u.add(&name, object, 0);
        }
    }
    Ok(u)
}

/// Bytes the ext4 root made from the factory copy on `node` needs, with [`MIN_FREE`]
/// free.
pub fn needed_bytes(node: &Path, kind: &str) -> Result<u64, String> {
    let _m = FactoryMount::new(node, kind)?;
    let (data, inodes) = usage_of(Path::new(FACTORY_MOUNT))?.totals();
    Ok(minimal_bytes(data, inodes, MIN_FREE))
}

/// Where the expanded root goes on a disk whose last sector is `disk_last_lba`: the
/// first MiB boundary after the last partition, up to where growth `grow` says (at
/// least `needed` bytes). Says why when the disk is too small.
pub fn layout(
    table: &Table,
    disk_last_lba: u64,
    number: u32,
    guid: Guid,
    type_guid: Guid,
    needed: u64,
    grow: Grow,
) -> Result<Partition, String> {
    let ss = table.sector_size;
    let per_mib = MIB / ss;
    let end_of_last = table
        .partitions
        .iter()
        .filter(|p| p.number != number)
        .map(|p| p.last_lba)
        .max()
        .unwrap_or(0);
    let first = align_up(end_of_last + 1, per_mib);
    let min_last = first + needed.div_ceil(ss) - 1;
    let limit = crate::grow::target_end(first, first, disk_last_lba, ss, Grow::Fill);
    if min_last > limit {
        let free = (limit + 1).saturating_sub(first) * ss;
        return Err(format!(
            "the disk is {}; the read-write root needs {} after the image, and {} is free",
            format_size((disk_last_lba + 1) * ss),
            format_size(needed),
            format_size(free)
        ));
    }
    let last = match grow {
        Grow::Off => min_last,
        g => crate::grow::target_end(first, min_last, disk_last_lba, ss, g),
    };
    Ok(Partition {
        number,
        type_guid,
        guid,
        name: EXPANDING_NAME.into(),
        first_lba: first,
        last_lba: last,
        attributes: 0,
    })
}

/// The number the expanded root's partition gets (see `oneimage_format::expansion`).
pub fn new_number(table: &Table) -> u32 {
    oneimage_format::expansion::expanded_number(table)
}

/// An expansion into a new LUKS2 volume: the passphrase the user chose, and the
/// header's UUID.
pub struct IntoLuks<'a> {
    /// The passphrase.
    pub passphrase: &'a [u8],
    /// The header's UUID (the copy's own).
    pub uuid: Guid,
}

/// Makes the expanded root (at least `needed` bytes, see [`needed_bytes`]) in partition
/// `number` (GUID `guid`, filesystem UUID `fs_uuid`) from the factory copy `found` holds
/// (a `kind` filesystem), inside a new LUKS2 volume with `into_luks`; returns the new
/// root. Redone from the start after a power cut (see the module's comment).
#[allow(clippy::too_many_arguments)]
pub fn expand(
    found: &Found,
    kind: &str,
    needed: u64,
    number: u32,
    guid: Guid,
    fs_uuid: Guid,
    grow: Grow,
    into_luks: Option<IntoLuks<'_>>,
) -> Result<Found, String> {
    let dev = format!("/dev/{}", found.disk);
    let mut disk = crate::disks::open_rw(&dev)?;
    let table =
        read_table(&mut disk).map_err(|e| format!("reading the partition table of {dev}: {e}"))?;
    let ss = table.sector_size;
    let disk_last = (crate::grow::sysfs_bytes(&found.disk)? / ss)
        .checked_sub(1)
        .ok_or_else(|| format!("{dev} is empty"))?;
    let factory = table
        .partitions
        .iter()
        .find(|p| p.number == found.number)
        .ok_or_else(|| format!("partition {} vanished from {dev}", found.number))?
        .clone();
    let data_type: Guid = TYPE_LINUX_DATA.parse().expect("constant");
    let want = layout(&table, disk_last, number, guid, data_type, needed, grow)?;
    let existing = table.partitions.iter().find(|p| p.number == number);
    let new = match existing {
        // Made by a boot cut short: the same partition, perhaps already final.
        Some(p) if p.guid == guid && p.first_lba == want.first_lba => p.clone(),
        Some(p) => {
            return Err(format!(
                "partition {number} of {dev} ({}) is not the one this copy's expansion made; not touching it",
                p.name
            ))
        }
        None => {
            say(&format!(
                "expanding: new partition {number} on {dev}, {} from {}",
                format_size(want.len(ss)),
                format_size(want.offset(ss))
            ));
            let mut parts = table.partitions.clone();
            parts.push(want.clone());
            write_table(&mut disk, ss, table.disk_guid, &parts)
                .map_err(|e| format!("writing the partition table of {dev}: {e}"))?;
            disk.sync_all().map_err(|e| format!("syncing {dev}: {e}"))?;
            want
        }
    };
    let node = partition_node_after_reread(&disk, &dev, &found.disk, number)?;

    let fill = Fill::for_kind(kind);
    say(&format!(
        "expanding: making ext4 on {} ({}) from the {kind} root, with {}",
        node.display(),
        format_size(new.len(ss)),
        fill.describe()
    ));
    let started = std::time::Instant::now();
    {
        // Into LUKS2: the filesystem is made inside the volume, never in the clear.
        let luks = match &into_luks {
            Some(l) => Some(crate::crypt::Volume::format_and_open(
                &node,
                l.passphrase,
                l.uuid,
            )?),
            None => None,
        };
        let target = luks.as_ref().map_or(node.clone(), |v| v.node());
        let uuid = fs_uuid.to_string();
        let mkfs = [
            "-q",
            "-F",
            "-t",
            "ext4",
            "-L",
            EXPANDED_NAME,
            "-U",
            &uuid,
            "-E",
            "lazy_itable_init=1,nodiscard",
        ];
        make_and_fill(fill, &found.node, kind, &target, &mkfs)?;
        let node_s = target.display().to_string();
        let f = std::fs::File::open(&target).map_err(|e| format!("opening {node_s}: {e}"))?;
        f.sync_all().map_err(|e| format!("syncing {node_s}: {e}"))?;
        drop(f);
        // Closed before the table is written again: the kernel re-reads no table of a
        // disk with a partition in use.
        if let Some(v) = luks {
            v.close()?;
        }
    }
    say(&format!(
        "expanding: the ext4 root is made ({:.1} s)",
        started.elapsed().as_secs_f64()
    ));

    let root_type = factory.type_guid;
    let parts: Vec<Partition> = table
        .partitions
        .iter()
        .filter(|p| p.number != number)
        .map(|p| {
            if p.number == found.number && p.type_guid != data_type {
                Partition {
                    type_guid: data_type,
                    name: FACTORY_NAME.into(),
                    ..p.clone()
                }
            } else {
                p.clone()
            }
        })
        .chain(std::iter::once(Partition {
            type_guid: if root_type == data_type {
                // A boot cut short after this write: the factory is plain data now, and
                // the new partition has the root type already.
                new.type_guid
            } else {
                root_type
            },
            name: EXPANDED_NAME.into(),
            ..new.clone()
        }))
        .collect();
    write_table(&mut disk, ss, table.disk_guid, &parts)
        .map_err(|e| format!("writing the partition table of {dev}: {e}"))?;
    disk.sync_all().map_err(|e| format!("syncing {dev}: {e}"))?;
    let node = partition_node_after_reread(&disk, &dev, &found.disk, number)?;
    Ok(Found {
        disk: found.disk.clone(),
        number,
        node,
        optical: false,
    })
}

/// Has the kernel read the table again and waits for partition `number`'s node.
fn partition_node_after_reread(
    disk: &std::fs::File,
    dev: &str,
    name: &str,
    number: u32,
) -> Result<PathBuf, String> {
    let guess = crate::disks::guess_node(name, number);
    crate::disks::reread_partitions(disk, dev, &guess);
    crate::disks::partition_node(name, number)
        .ok_or_else(|| format!("the kernel shows no partition {number} of {dev}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(disk_sectors: u64) -> Table {
        Table {
            sector_size: 512,
            disk_guid: Guid([1; 16]),
            partitions: vec![
                Partition {
                    number: 1,
                    type_guid: Guid([2; 16]),
                    guid: Guid([3; 16]),
                    name: "esp".into(),
                    first_lba: 2048,
                    last_lba: 133119,
                    attributes: 0,
                },
                Partition {
                    number: 2,
                    type_guid: Guid([4; 16]),
                    guid: Guid([5; 16]),
                    name: "root".into(),
                    first_lba: 133120,
                    last_lba: 133120 + 2 * 162 * 1024 - 1,
                    attributes: 0,
                },
            ],
            first_usable_lba: 34,
            last_usable_lba: disk_sectors - 34,
            backup_lba: disk_sectors - 1,
        }
    }

    #[test]
    fn the_expanded_root_follows_the_image_aligned_and_fills_as_growth_says() {
        let t = table(3 * 1024 * 2048);
        let last = 3 * 1024 * 2048 - 1;
        let need = 700 * MIB;
        let p = layout(&t, last, 3, Guid([6; 16]), Guid([7; 16]), need, Grow::Fill).unwrap();
        assert_eq!(p.first_lba % 2048, 0);
        assert!(p.first_lba > t.partitions[1].last_lba);
        assert!(p.last_lba <= last - 33 && p.last_lba > last - 33 - 2048);
        assert_eq!((p.last_lba + 1) % 2048, 0);
        assert_eq!(p.name, EXPANDING_NAME);
        let off = layout(&t, last, 3, Guid([6; 16]), Guid([7; 16]), need, Grow::Off).unwrap();
        assert_eq!(off.len(512), need);
        let capped = layout(
            &t,
            last,
            3,
            Guid([6; 16]),
            Guid([7; 16]),
            need,
            Grow::UpTo(1 << 30),
        )
        .unwrap();
        assert_eq!(capped.len(512), 1 << 30);
        let small = layout(
            &t,
            last,
            3,
            Guid([6; 16]),
            Guid([7; 16]),
            need,
            Grow::UpTo(1),
        )
        .unwrap();
        assert_eq!(small.len(512), need, "never below what the content needs");
        assert_eq!(new_number(&t), 3);
    }

    #[test]
    fn a_disk_without_room_is_refused_with_its_sizes() {
        let t = table(600 * 2048);
        let e = layout(
            &t,
            600 * 2048 - 1,
            3,
            Guid([6; 16]),
            Guid([7; 16]),
            700 * MIB,
            Grow::Fill,
        )
        .unwrap_err();
        assert!(e.contains("needs 700.0 MiB"), "{e}");
        assert!(e.contains("the disk is 600.0 MiB"), "{e}");
    }
}
