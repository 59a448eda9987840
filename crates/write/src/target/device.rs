//! Facts about a block device from sysfs, and the checks that decide whether we may
//! overwrite it.

use super::mounts::{self, DevNum};
use anyhow::{bail, Context, Result};
use oneimage_format::size::format_size;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A whole-disk block device as sysfs describes it.
#[derive(Debug, Clone)]
pub struct Device {
    /// The path the user gave.
    pub path: PathBuf,
    /// Kernel name, e.g. `sdb` or `loop3`.
    pub name: String,
    /// Device number.
    pub devnum: DevNum,
    /// Size in bytes.
    pub size: u64,
    /// Vendor and model, when the driver reports them.
    pub model: String,
    /// The kernel marks the media removable, or the disk hangs off USB.
    pub removable: bool,
    /// Read-only.
    pub read_only: bool,
    /// Partitions: (kernel name, device number).
    pub partitions: Vec<(String, DevNum)>,
    /// Devices stacked on top (device-mapper, md, ...), by kernel name.
    pub holders: Vec<String>,
    /// For a loop device, the file behind it.
    pub backing_file: Option<PathBuf>,
}

fn read_attr(dir: &Path, name: &str) -> Option<String> {
    std::fs::read_to_string(dir.join(name))
        .ok()
        .map(|s| s.trim().to_string())
}

/// The sysfs directory of device `d`, canonicalised.
fn sysfs_dir(d: DevNum) -> Result<PathBuf> {
    let link = PathBuf::from(format!("/sys/dev/block/{}:{}", d.0, d.1));
    link.canonicalize()
        .with_context(|| format!("looking up block device {}:{} in sysfs", d.0, d.1))
}

/// The whole disk that device `d` belongs to (itself when it is a whole disk).
pub fn whole_disk(d: DevNum) -> Option<DevNum> {
    let dir = sysfs_dir(d).ok()?;
    let disk = if dir.join("partition").exists() {
        dir.parent()?.to_path_buf()
    } else {
        dir
    };
    mounts::parse_devnum(&read_attr(&disk, "dev")?)
}

impl Device {
    /// Reads what sysfs says about the block device at `path`.
    pub fn inspect(path: &Path, rdev: u64) -> Result<Device> {
        let devnum = mounts::split_dev(rdev);
        let dir = sysfs_dir(devnum)?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if dir.join("partition").exists() {
            let disk = dir
                .parent()
                .and_then(|p| p.file_name())
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            bail!(
                "{} is partition {name} of /dev/{disk}; give the whole disk (/dev/{disk}), the image has its own partition table",
                path.display()
            );
        }
        let sectors: u64 = read_attr(&dir, "size")
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("{}: reading its size from sysfs", path.display()))?;
        let model = [
            read_attr(&dir, "device/vendor"),
            read_attr(&dir, "device/model"),
        ]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
        let usb = dir.to_string_lossy().contains("/usb");
        let mut partitions = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                let p = e.path();
                if p.join("partition").exists() {
                    if let Some(d) = read_attr(&p, "dev").and_then(|s| mounts::parse_devnum(&s)) {
                        partitions.push((e.file_name().to_string_lossy().into_owned(), d));
                    }
                }
            }
        }
        partitions.sort();
        let mut holders: Vec<String> = std::fs::read_dir(dir.join("holders"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for (p, _) in &partitions {
            if let Ok(rd) = std::fs::read_dir(dir.join(p).join("holders")) {
                holders.extend(
                    rd.flatten()
                        .map(|e| e.file_name().to_string_lossy().into_owned()),
                );
            }
        }
        Ok(Device {
            path: path.to_path_buf(),
            devnum,
            size: sectors * 512,
            model: if model.is_empty() {
                "unknown model".into()
            } else {
                model
            },
            removable: read_attr(&dir, "removable").as_deref() == Some("1") || usb,
            read_only: read_attr(&dir, "ro").as_deref() == Some("1"),
            partitions,
            holders,
            backing_file: read_attr(&dir, "loop/backing_file")
                .filter(|s| !s.is_empty())
                .map(PathBuf::from),
            name,
        })
    }

    /// Refuses the device when overwriting it would be unsafe or cannot work.
    pub fn check(&self, image_size: u64, source: &Path, force: bool) -> Result<()> {
        let p = self.path.display();
        let mounted = mounts::mounted();
        let mut used = Vec::new();
        let all: Vec<(String, DevNum)> = std::iter::once((self.name.clone(), self.devnum))
            .chain(self.partitions.iter().cloned())
            .collect();
        for (n, d) in &all {
            if let Some(points) = mounted.get(d) {
                used.push(format!("/dev/{n} is mounted on {}", points.join(", ")));
            }
        }
        let swaps = mounts::swap_devices();
        for (n, d) in &all {
            if swaps.contains(d) {
                used.push(format!("/dev/{n} is in use as swap"));
            }
        }
        if let Some(why) = super::system_disks::system_disks().get(&self.devnum) {
            bail!(
                "{p} holds the running system ({}); refusing to overwrite it",
                why.join("; ")
            );
        }
        if !used.is_empty() {
            bail!("{p} is in use: {}; unmount it first", used.join("; "));
        }
        if !self.holders.is_empty() {
            bail!(
                "{p} is in use by {} (device-mapper, RAID or LVM); stop those first",
                self.holders.join(", ")
            );
        }
        let src_meta =
            std::fs::metadata(source).with_context(|| format!("reading {}", source.display()))?;
        let src_dev = if src_meta.file_type().is_block_device() {
            mounts::split_dev(src_meta.rdev())
        } else {
            mounts::split_dev(src_meta.dev())
        };
        if whole_disk(src_dev) == Some(self.devnum) || src_dev == self.devnum {
            bail!(
                "{p} holds the source file {}; refusing to overwrite it",
                source.display()
            );
        }
        if let Some(b) = &self.backing_file {
            let same = std::fs::metadata(b)
                .map(|m| m.dev() == src_meta.dev() && m.ino() == src_meta.ino())
                .unwrap_or(false);
            if same {
                bail!(
                    "{p} is a loop device over the source file {}; refusing to overwrite it",
                    source.display()
                );
            }
        }
        if self.read_only {
            bail!("{p} is read-only (write-protect switch or read-only device)");
        }
        if self.size < image_size {
            bail!(
                "{p} is too small: {} ({} bytes), the image needs {} ({} bytes)",
                format_size(self.size),
                self.size,
                format_size(image_size),
                image_size
            );
        }
        if !self.removable && !force {
            bail!("{p} ({}, {}) is not a removable disk; if you really mean to overwrite it, add --force", self.model, format_size(self.size));
        }
        Ok(())
    }

    /// A few lines describing the device and what is on it now.
    pub fn describe(&self, file: &std::fs::File) -> String {
        use std::fmt::Write as _;
        let mut s = format!(
            "{}: {}, {} ({} bytes){}{}",
            self.path.display(),
            self.model,
            format_size(self.size),
            self.size,
            if self.removable {
                ", removable"
            } else {
                ", NOT removable"
            },
            self.backing_file
                .as_ref()
                .map(|b| format!(", loop device over {}", b.display()))
                .unwrap_or_default()
        );
        match file.try_clone() {
            Ok(mut f) => match oneimage_format::gpt::read_table(&mut f) {
                Ok(t) if !t.partitions.is_empty() => {
                    for part in &t.partitions {
                        let mut sl = oneimage_format::slice::Slice::new(
                            &mut f,
                            part.offset(t.sector_size),
                            part.len(t.sector_size),
                        );
                        let fs = oneimage_format::probe::probe(&mut sl)
                            .ok()
                            .flatten()
                            .map(|i| format!("{} {:?}", i.kind, i.label))
                            .unwrap_or_else(|| "unknown content".into());
                        let _ = write!(
                            s,
                            "\n  partition {} {:?}: {}, {}",
                            part.number,
                            part.name,
                            format_size(part.len(t.sector_size)),
                            fs
                        );
                    }
                }
                _ => match oneimage_format::probe::probe(&mut f).ok().flatten() {
                    Some(i) => {
                        let _ = write!(s, "\n  no GPT; a {} filesystem {:?}", i.kind, i.label);
                    }
                    None => s.push_str("\n  no GPT partition table and no known filesystem"),
                },
            },
            Err(e) => {
                let _ = write!(s, "\n  (cannot read it: {e})");
            }
        }
        s
    }
}
