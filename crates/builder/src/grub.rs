//! GRUB images made with `grub-mkimage`: one for UEFI (x86_64-efi or arm64-efi) and, on
//! x86_64, two for BIOS (i386-pc for disks, i386-pc-eltorito for discs). All carry the same modules and read
//! `/EFI/BOOT/grub.cfg` from the ESP of the disk they started from:
//!
//! - the UEFI image takes the device the firmware loaded it from (the ESP on a disk; on
//!   a disc, the disc, whose ISO 9660 view sends GRUB on to the ESP);
//! - the BIOS disk image names partition 1 of the disk the BIOS started (`(,gpt1)`);
//! - the BIOS disc image finds the ESP by its FAT volume id.
//!
//! Only discs are found by volume id: a disc is never written, while every copy on a
//! disk gets a volume id of its own on its first boot, and a search would find another
//! disk's ESP when several copies are attached.

use crate::rootfs::Tree;
use crate::run::{run, Cancel};
use anyhow::{bail, Result};
use oneimage_format::arch::Arch;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Modules built into every image, so GRUB needs nothing from disk but grub.cfg.
const MODULES: &[&str] = &[
    "part_gpt",
    "part_msdos",
    "fat",
    "ext2",
    "iso9660",
    "normal",
    "configfile",
    "linux",
    "boot",
    "echo",
    "test",
    "search",
    "search_fs_uuid",
    "search_label",
    "probe",
    "regexp",
    "serial",
    "terminal",
    "gzio",
    "xzio",
    "zstd",
    "ls",
    "cat",
    "reboot",
    "halt",
    "sleep",
    "chain",
    "loadenv",
];

/// Modules only the UEFI image has (graphics through the firmware).
const EFI_MODULES: &[&str] = &["all_video", "gfxterm", "efi_gop"];

/// Modules only the BIOS images have (BIOS disk access).
const BIOS_MODULES: &[&str] = &["biosdisk"];

/// Where the configuration and boot files live on the ESP.
pub const PREFIX: &str = "/EFI/BOOT";

/// The embedded configuration. It runs before normal mode, in GRUB's rescue parser, so
/// it has no `if`. From a disc, GRUB starts on the whole disc (cd0, or cd under BIOS)
/// and still reads the GPT on it, so the same search finds the ESP there.
fn early_config(esp_volume_id: u32) -> String {
    format!(
        "search --no-floppy --fs-uuid --set=root {}\nset prefix=($root){PREFIX}\n",
        oneimage_format::fat::volume_id_text(esp_volume_id)
    )
}

/// The `grub.cfg` the ISO view holds in `EFI/BOOT`: Debian's signed GRUB, started from a
/// disc, reads it (not the ESP's) and is sent on, by the same search as the embedded
/// configuration, to the ESP's boot menu.
pub fn disc_config(esp_volume_id: u32) -> String {
    format!(
        "# Written by oneimage: go on with the ESP's boot menu.\n{}source ($root){PREFIX}/grub.cfg\n",
        early_config(esp_volume_id)
    )
}

/// Writes the embedded configuration into `work` for grub-mkimage; returns its path.
fn early_config_file(esp_volume_id: u32, work: &Path) -> Result<PathBuf> {
    let path = work.join("grub-early.cfg");
    std::fs::write(&path, early_config(esp_volume_id))?;
    Ok(path)
}

/// GRUB's modules for `platform`: the root filesystem's when it has them (they match its
/// distribution, and a foreign architecture's cannot be installed on the build host),
/// else the build host's.
fn modules_dir(platform: &str, package: &str, tree: Option<&Tree>) -> Result<PathBuf> {
    let dir = format!("/usr/lib/grub/{platform}");
    if let Some(d) = tree.and_then(|t| t.file(&format!("{dir}/normal.mod"))) {
        return Ok(d.parent().expect("a file in a directory").to_path_buf());
    }
    let d = PathBuf::from(&dir);
    if !d.join("normal.mod").exists() {
        bail!("GRUB for {platform} not found in the root filesystem's or this host's {dir} (package {package}: add it to the root filesystem, or apt-get install it here)");
    }
    Ok(d)
}

fn mkimage(
    format: &str,
    prefix: &str,
    dir: &Path,
    early: &Path,
    extra: &[&str],
    out: &Path,
    cancel: Cancel,
) -> Result<()> {
    let mut cmd = Command::new("grub-mkimage");
    cmd.arg("-O")
        .arg(format)
        .arg("-d")
        .arg(dir)
        .args(["-p", prefix, "-c"])
        .arg(early)
        .arg("-o")
        .arg(out)
        .args(MODULES)
        .args(extra);
    run(
        &mut cmd,
        &format!("making the GRUB image for {format}"),
        cancel,
    )?;
    Ok(())
}

/// The ESP's partition number (GRUB's `gpt1`), which the BIOS disk image names.
const ESP_NUMBER: u32 = 1;

/// An embedded configuration that leaves `root` and `prefix` as GRUB set them from the
/// device it started from.
fn own_device_config(work: &Path) -> Result<PathBuf> {
    let path = work.join("grub-early-own-device.cfg");
    std::fs::write(
        &path,
        "# oneimage: the boot menu is on the device GRUB started from.\n",
    )?;
    Ok(path)
}

/// Makes GRUB's EFI application for `arch` (`BOOTX64.EFI`, `BOOTAA64.EFI`) at `out`,
/// from the modules of `tree` or the build host.
pub fn make_efi(
    arch: Arch,
    tree: Option<&Tree>,
    work: &Path,
    out: &Path,
    cancel: Cancel,
) -> Result<()> {
    let early = own_device_config(work)?;
    let platform = arch.grub_efi_platform();
    let dir = modules_dir(platform, arch.grub_efi_package(), tree)?;
    mkimage(platform, PREFIX, &dir, &early, EFI_MODULES, out, cancel)
}

/// GRUB for BIOS: `core` is core.img for a disk (its first sector is diskboot), `cdrom`
/// the no-emulation El Torito image (cdboot first), `boot_sector` GRUB's boot.img.
pub struct BiosImages {
    /// core.img for the BIOS boot partition.
    pub core: Vec<u8>,
    /// The El Torito image.
    pub cdrom: Vec<u8>,
    /// boot.img, the MBR boot code.
    pub boot_sector: Vec<u8>,
}

/// Makes GRUB's BIOS images in `work`.
pub fn make_bios(esp_volume_id: u32, work: &Path, cancel: Cancel) -> Result<BiosImages> {
    let early = early_config_file(esp_volume_id, work)?;
    let dir = modules_dir("i386-pc", "grub-pc-bin", None)?;
    let core = work.join("core.img");
    let cdrom = work.join("eltorito.img");
    mkimage(
        "i386-pc",
        &format!("(,gpt{ESP_NUMBER}){PREFIX}"),
        &dir,
        &own_device_config(work)?,
        BIOS_MODULES,
        &core,
        cancel,
    )?;
    mkimage(
        "i386-pc-eltorito",
        PREFIX,
        &dir,
        &early,
        BIOS_MODULES,
        &cdrom,
        cancel,
    )?;
    let read =
        |p: &Path| std::fs::read(p).map_err(|e| anyhow::anyhow!("reading {}: {e}", p.display()));
    Ok(BiosImages {
        core: read(&core)?,
        cdrom: read(&cdrom)?,
        boot_sector: read(&dir.join("boot.img"))?,
    })
}
