//! The ESP, mounted for writing: where it is already mounted, or on a private mount
//! point under `/run` for as long as the value lives.
//!
//! A private mount is made `dirsync`: a rename is then on the disk, in order, before the
//! call returns (the new directory entry written before the old one is removed and the
//! replaced file's clusters freed), which is what makes switching the boot menu by one
//! rename safe against power loss.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A mounted ESP.
pub struct EspMount {
    /// Where its files are.
    pub dir: PathBuf,
    /// Our own mount, unmounted on drop (with the directory).
    private: Option<tempfile::TempDir>,
}

impl EspMount {
    /// Mounts `device` (number `devnum`) unless it is mounted already.
    pub fn mount(device: &Path, devnum: (u32, u32)) -> Result<EspMount> {
        let mounted = oneimage_write::target::mounts::mounted();
        if let Some(dir) = mounted.get(&devnum).and_then(|m| m.first()) {
            return Ok(EspMount {
                dir: PathBuf::from(dir),
                private: None,
            });
        }
        std::fs::create_dir_all("/run/oneimage")?;
        let dir = tempfile::Builder::new()
            .prefix("esp-")
            .tempdir_in("/run/oneimage")
            .context("making a mount point under /run/oneimage")?;
        let out = Command::new("mount")
            .env("LC_ALL", "C")
            .args(["-t", "vfat", "-o", "dirsync,nodev,nosuid,noexec"])
            .arg(device)
            .arg(dir.path())
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!(
                "mounting the ESP {} failed: {}",
                device.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(EspMount {
            dir: dir.path().to_path_buf(),
            private: Some(dir),
        })
    }

    /// Writes everything to the disk.
    pub fn sync(&self) -> Result<()> {
        let d = std::fs::File::open(&self.dir)?;
        rustix::fs::syncfs(&d).with_context(|| format!("syncing {}", self.dir.display()))
    }
}

impl Drop for EspMount {
    fn drop(&mut self) {
        if let Some(dir) = self.private.take() {
            let _ = self.sync();
            let ok = Command::new("umount")
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                // Never remove files below a mount that is still there.
                let _ = dir.keep();
            }
        }
    }
}
