//! The disk the running system started from: its root partition, as the kernel mounted
//! it, and its ESP, as GRUB named it (`oneimage.esp=` on the kernel command line).

use anyhow::{bail, Context, Result};
use oneimage_format::Guid;
use std::path::{Path, PathBuf};

/// Why the running system has no disk boot to work on; not an error for a kernel hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotBootedFromDisk(pub String);

impl std::fmt::Display for NotBootedFromDisk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NotBootedFromDisk {}

/// The running system's boot disk.
#[derive(Debug, Clone)]
pub struct BootDisk {
    /// The whole disk, e.g. `/dev/vda`.
    pub disk: PathBuf,
    /// Its kernel name, e.g. `vda`.
    pub name: String,
    /// The ESP partition, e.g. `/dev/vda1`.
    pub esp: PathBuf,
    /// The ESP's device number.
    pub esp_devnum: (u32, u32),
}

/// The value of `key=` on a kernel command line (the last one counts, as for the kernel).
pub fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .next_back()
}

/// Finds the disk the running system started from, or says why there is none to work on
/// (as a [`NotBootedFromDisk`] error): a chroot, a live session, a disc, a system that
/// oneimage's boot menu did not start.
pub fn find() -> Result<BootDisk> {
    let cmdline = std::fs::read_to_string("/proc/cmdline").map_err(|_| {
        NotBootedFromDisk("/proc/cmdline cannot be read: not a running system (a chroot?)".into())
    })?;
    find_with(&cmdline, Path::new("/"))
}

fn not(why: impl Into<String>) -> anyhow::Error {
    NotBootedFromDisk(why.into()).into()
}

fn find_with(cmdline: &str, root: &Path) -> Result<BootDisk> {
    let Some(esp) = cmdline_value(cmdline, "oneimage.esp").filter(|v| !v.is_empty()) else {
        return Err(not(
            "this system was not started by oneimage's boot menu (no oneimage.esp= on the kernel command line)",
        ));
    };
    let esp: Guid = esp
        .parse()
        .map_err(|_| anyhow::anyhow!("/proc/cmdline: oneimage.esp={esp}: expected a GUID"))?;
    if cmdline_value(cmdline, "oneimage.mode") == Some("live") {
        return Err(not(
            "this is a live session: the disk it started from is left as it is",
        ));
    }
    let st = rustix::fs::stat(root).context("stat /")?;
    let (major, minor) = (rustix::fs::major(st.st_dev), rustix::fs::minor(st.st_dev));
    if major == 0 {
        return Err(not(
            "the root filesystem is not on a disk partition (a live session, or a disc)",
        ));
    }
    let (sys, part) = sys_partition((major, minor))?;
    let Some(SysPartition {
        disk_sys,
        disk_name: name,
        ..
    }) = part
    else {
        bail!(
            "the root filesystem is on {}, which is not a partition of a disk",
            sys.display()
        );
    };
    let disk = PathBuf::from(format!("/dev/{name}"));
    let mut f =
        std::fs::File::open(&disk).with_context(|| format!("opening {}", disk.display()))?;
    let table = oneimage_format::gpt::read_table(&mut f)
        .with_context(|| format!("reading the partition table of {}", disk.display()))?;
    // GRUB read the ESP's GUID before the agent gave a fresh copy its own identity on
    // its first boot: then the GUID named is the build's, and the root's disk has one
    // ESP under its new GUID.
    let esps: Vec<_> = table.partitions.iter().filter(|p| p.is_esp()).collect();
    let part = match table.partitions.iter().find(|p| p.guid == esp) {
        Some(p) => p,
        None if esps.len() == 1 => esps[0],
        None => bail!(
            "the ESP the boot menu named (oneimage.esp={esp}) is not on the root's disk {}, which has {} ESPs: refusing to guess",
            disk.display(),
            esps.len()
        ),
    };
    for item in std::fs::read_dir(&disk_sys)? {
        let item = item?;
        let number = std::fs::read_to_string(item.path().join("partition")).unwrap_or_default();
        if number.trim() == part.number.to_string() {
            let dev = std::fs::read_to_string(item.path().join("dev"))?;
            let devnum = oneimage_write::target::mounts::parse_devnum(&dev)
                .with_context(|| format!("{}/dev: {dev:?}", item.path().display()))?;
            return Ok(BootDisk {
                disk,
                esp: PathBuf::from(format!("/dev/{}", item.file_name().to_string_lossy())),
                esp_devnum: devnum,
                name,
            });
        }
    }
    bail!(
        "{} has the ESP as partition {}, but the kernel shows no such partition",
        disk.display(),
        part.number
    )
}

/// A partition as sysfs shows it.
pub(crate) struct SysPartition {
    /// Its number in the disk's table.
    pub number: u32,
    /// The whole disk's sysfs directory.
    pub disk_sys: PathBuf,
    /// The whole disk's kernel name, e.g. `sda`.
    pub disk_name: String,
}

/// Looks device `devnum` up in /sys: its sysfs directory, and what makes it a partition
/// of a disk (nothing when it is not one).
pub(crate) fn sys_partition(devnum: (u32, u32)) -> Result<(PathBuf, Option<SysPartition>)> {
    let (major, minor) = devnum;
    let sys = std::fs::canonicalize(format!("/sys/dev/block/{major}:{minor}"))
        .with_context(|| format!("finding the device {major}:{minor} in /sys"))?;
    let Some(number) = std::fs::read_to_string(sys.join("partition"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
    else {
        return Ok((sys, None));
    };
    let disk_sys = sys.parent().context("a partition's disk")?.to_path_buf();
    let disk_name = disk_sys
        .file_name()
        .context("a disk's name")?
        .to_string_lossy()
        .into_owned();
    Ok((
        sys,
        Some(SysPartition {
            number,
            disk_sys,
            disk_name,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_value_counts() {
        let c = "root=PARTUUID=x oneimage.esp=A rw oneimage.esp=B quiet";
        assert_eq!(cmdline_value(c, "oneimage.esp"), Some("B"));
        assert_eq!(cmdline_value(c, "oneimage.mode"), None);
        assert_eq!(cmdline_value("oneimage.esp=", "oneimage.esp"), Some(""));
    }

    #[test]
    fn no_disk_boot_is_named_as_such() {
        for (cmdline, says) in [
            ("root=/dev/sda2 rw", "not started by oneimage's boot menu"),
            ("oneimage.esp= rw", "not started by oneimage's boot menu"),
            (
                "oneimage.esp=01234567-89ab-cdef-0123-456789abcdef oneimage.mode=live",
                "live session",
            ),
        ] {
            let e = find_with(cmdline, Path::new("/")).unwrap_err();
            assert!(e.is::<NotBootedFromDisk>(), "{cmdline}: {e:#}");
            assert!(e.to_string().contains(says), "{cmdline}: {e:#}");
        }
        let e = find_with("oneimage.esp=nonsense", Path::new("/")).unwrap_err();
        assert!(!e.is::<NotBootedFromDisk>());
        assert!(e.to_string().contains("expected a GUID"), "{e:#}");
    }
}
