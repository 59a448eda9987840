//! Booting an image in QEMU the way a user would: UEFI firmware with its own writable
//! variable store (or a BIOS), the image attached as a disk, a USB stick or a DVD, and
//! changed in place as a real stick would be, or through a throw-away overlay with
//! `snapshot`.

mod accel;
mod console;
mod firmware;
mod qmp;

pub use console::{Expect, Outcome};
pub use firmware::Firmware;

use anyhow::{bail, Context, Result};
use oneimage_format::arch::Arch;
use oneimage_format::size::format_size;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// The BIOS QEMU loads by default (Debian's `seabios` package).
const SEABIOS: &str = "/usr/share/seabios/bios-256k.bin";

/// Text of oneimage's boot menu that shows GRUB is waiting for a key.
const MENU_READY: &str = "(live: nothing is written to the disk)";

/// QEMU cache modes `disk_cache` may name: `directsync` and `none` bypass the host's
/// page cache, so what the guest did not write is lost when the power is cut.
pub const DISK_CACHE_MODES: [&str; 3] = ["writeback", "none", "directsync"];

/// How to boot.
#[derive(Debug, Clone)]
pub struct QemuOptions {
    /// The disk image.
    pub image: PathBuf,
    /// Leave the image untouched: writes go to a temporary overlay.
    pub snapshot: bool,
    /// Enlarge the disk to this many bytes first (sparse), like a bigger USB stick.
    pub disk_size: Option<u64>,
    /// No window; the serial console is read by us.
    pub headless: bool,
    /// Stop with success when this text appears on the serial console.
    pub expect: Option<String>,
    /// Give up after this long.
    pub timeout: Option<Duration>,
    /// Guest memory in MiB.
    pub memory_mib: u32,
    /// Print the serial console to stdout as it arrives.
    pub echo_console: bool,
    /// Write the serial console to this file (headless runs).
    pub console_log: Option<PathBuf>,
    /// Boot menu entry to pick for this run (`persistent`, `live`, or `previous`: the
    /// previous kernel's persistent entry), headless runs only.
    pub entry: Option<String>,
    /// Once the expected text appeared, press the power button and wait for the guest to
    /// shut down cleanly instead of stopping QEMU at once.
    pub poweroff: bool,
    /// Once the expected text appeared, let the guest run this much longer, then cut its
    /// power (kill QEMU): for power-loss tests.
    pub power_cut_after: Option<Duration>,
    /// QEMU's cache mode for the disks (`writeback`, `none`, `directsync`); QEMU's
    /// default (writeback) when unset.
    pub disk_cache: Option<String>,
    /// Which firmware boots the machine.
    pub firmware: FirmwareKind,
    /// How the image is attached.
    pub media: Media,
    /// More disks (raw files) attached as internal disks after the image, never booted
    /// from: a second disk or a stick left plugged in. Written in place, like the image,
    /// unless `snapshot`.
    pub extra_disks: Vec<PathBuf>,
    /// Console prompts to answer in order: (text to wait for, reply typed with Enter).
    pub answers: Vec<(String, String)>,
    /// The machine's architecture; by default the image's (its root partition type), or
    /// this host's for images that do not tell.
    pub arch: Option<Arch>,
}

/// The machine's firmware.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirmwareKind {
    /// UEFI (OVMF) without Secure Boot.
    Uefi,
    /// UEFI with Microsoft's keys enrolled and Secure Boot enforcing, as on a PC from a
    /// shop.
    UefiSecureBoot,
    /// A PC BIOS (SeaBIOS, QEMU's default).
    Bios,
}

impl FirmwareKind {
    /// Every firmware.
    pub const ALL: [FirmwareKind; 3] = [
        FirmwareKind::Uefi,
        FirmwareKind::UefiSecureBoot,
        FirmwareKind::Bios,
    ];

    /// The name `--firmware` takes.
    pub fn name(self) -> &'static str {
        match self {
            FirmwareKind::Uefi => "uefi",
            FirmwareKind::UefiSecureBoot => "uefi-secure-boot",
            FirmwareKind::Bios => "bios",
        }
    }
}

impl std::str::FromStr for FirmwareKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        FirmwareKind::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .with_context(|| format!("firmware {s:?}: expected uefi, uefi-secure-boot or bios"))
    }
}

/// How the image is attached to the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Media {
    /// An internal disk (virtio).
    Disk,
    /// A USB stick (usb-storage on an XHCI controller).
    Usb,
    /// A DVD in a SATA drive; read-only by nature.
    Cdrom,
    /// A DVD in a SCSI drive (virtio-scsi); read-only by nature.
    ScsiCdrom,
}

impl std::str::FromStr for Media {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Media::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .with_context(|| format!("media {s:?}: expected disk, usb, cdrom or scsi-cdrom"))
    }
}

impl Media {
    /// Every medium.
    pub const ALL: [Media; 4] = [Media::Disk, Media::Usb, Media::Cdrom, Media::ScsiCdrom];

    /// The name `--media` takes.
    pub fn name(self) -> &'static str {
        match self {
            Media::Disk => "disk",
            Media::Usb => "usb",
            Media::Cdrom => "cdrom",
            Media::ScsiCdrom => "scsi-cdrom",
        }
    }

    fn is_disc(self) -> bool {
        matches!(self, Media::Cdrom | Media::ScsiCdrom)
    }

    /// QEMU devices that attach drive `disk0` as this medium, first in boot order.
    fn devices(self, arch: Arch) -> &'static [&'static str] {
        match self {
            // Arm's virt machine has no IDE, and AAVMF has no AHCI driver: its DVD drive
            // is on virtio-scsi, as on Arm clouds.
            Media::Cdrom if arch == Arch::Arm64 => Media::ScsiCdrom.devices(arch),
            Media::Disk => &["-device", "virtio-blk-pci,drive=disk0,bootindex=1"],
            Media::Usb => &[
                "-device",
                "qemu-xhci,id=xhci",
                "-device",
                "usb-storage,bus=xhci.0,drive=disk0,removable=on,bootindex=1",
            ],
            Media::Cdrom => &["-device", "ide-cd,drive=disk0,bootindex=1"],
            Media::ScsiCdrom => &[
                "-device",
                "virtio-scsi-pci,id=scsi0",
                "-device",
                "scsi-cd,bus=scsi0.0,drive=disk0,bootindex=1",
            ],
        }
    }
}

/// The architecture a raw image is for, from its root partition's type; this host's when
/// the image does not tell (another format, no GPT, no known root type).
pub fn image_arch(image: &Path) -> Result<Arch> {
    let host =
        Arch::host().context("this host's architecture has no oneimage images: pass --arch")?;
    let mut f =
        std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let Ok(table) = oneimage_format::gpt::read_table(&mut f) else {
        return Ok(host);
    };
    Ok(table
        .partitions
        .iter()
        .find_map(|p| Arch::from_root_type(p.type_guid))
        .unwrap_or(host))
}

/// Resizes `image` up to `size` bytes, sparse; refuses to shrink.
pub fn grow_image(image: &Path, size: u64) -> Result<()> {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .with_context(|| format!("opening {} to enlarge it", image.display()))?;
    let cur = f.metadata()?.len();
    if size < cur {
        bail!(
            "--disk-size {} is smaller than {} ({}); refusing to shrink the image",
            format_size(size),
            image.display(),
            format_size(cur)
        );
    }
    f.set_len(size)?;
    Ok(())
}

/// Boots the image and returns how the run ended.
pub fn run(opts: &QemuOptions) -> Result<Outcome> {
    let image = &opts.image;
    let meta = std::fs::metadata(image).with_context(|| format!("image {}", image.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", image.display());
    }
    let tmp = tempfile::Builder::new()
        .prefix("oneimage-qemu-")
        .tempdir()?;
    let arch = match opts.arch {
        Some(a) => a,
        None => image_arch(image)?,
    };
    if arch == Arch::Arm64 && opts.firmware == FirmwareKind::Bios {
        bail!(
            "{}: arm64 machines have no BIOS; boot with --firmware uefi",
            image.display()
        );
    }
    // UEFI firmware code and its variable store; a BIOS keeps nothing.
    let uefi = match opts.firmware {
        FirmwareKind::Bios => None,
        kind => {
            let fw = Firmware::find(arch, kind == FirmwareKind::UefiSecureBoot)?;
            let vars = if opts.snapshot {
                let v = tmp.path().join("vars.fd");
                std::fs::copy(&fw.vars_template, &v)?;
                v
            } else {
                fw.persistent_vars(image)?
            };
            Some((fw, vars))
        }
    };
    let secure_boot = opts.firmware == FirmwareKind::UefiSecureBoot;

    if let Some(c) = &opts.disk_cache {
        if !DISK_CACHE_MODES.contains(&c.as_str()) {
            bail!("disk cache mode {c:?}: expected one of {DISK_CACHE_MODES:?}");
        }
    }
    let cache = opts
        .disk_cache
        .as_ref()
        .map(|c| format!(",cache={c}"))
        .unwrap_or_default();
    let cdrom = opts.media.is_disc();
    let format = {
        let mut head = Vec::with_capacity(512);
        std::io::Read::read_to_end(
            &mut std::io::Read::take(
                std::fs::File::open(image)
                    .with_context(|| format!("opening {}", image.display()))?,
                512,
            ),
            &mut head,
        )?;
        oneimage_format::vm_disk::sniff(&head)
    };
    let fmt = format.qemu_name();
    if format != oneimage_format::vm_disk::DiskFormat::Raw {
        if cdrom {
            bail!(
                "{} is a {fmt} file: a DVD holds a raw image (--media {})",
                image.display(),
                opts.media.name()
            );
        }
        if opts.disk_size.is_some() && !opts.snapshot {
            bail!(
                "{} is a {fmt} file: --disk-size enlarges raw images in place; add --snapshot to boot it on a larger disk, or resize it with qemu-img resize",
                image.display()
            );
        }
    }
    if cdrom && opts.disk_size.is_some() {
        bail!(
            "--disk-size makes no sense for a DVD (--media {})",
            opts.media.name()
        );
    }
    let drive = if cdrom {
        format!(
            "file={},format=raw,if=none,id=disk0,media=cdrom,readonly=on",
            image.display()
        )
    } else if opts.snapshot {
        // A qcow2 overlay keeps the image untouched and can be larger than it.
        let overlay = tmp.path().join("overlay.qcow2");
        // A raw image's size is its file's; other formats know their own (qemu-img
        // takes the backing file's size when none is given).
        let size = match format {
            oneimage_format::vm_disk::DiskFormat::Raw => {
                Some(opts.disk_size.unwrap_or(meta.len()).max(meta.len()))
            }
            _ => opts.disk_size,
        };
        let abs = std::fs::canonicalize(image)?;
        let mut cmd = Command::new("qemu-img");
        cmd.env("LC_ALL", "C")
            .args(["create", "-q", "-f", "qcow2", "-F", fmt, "-b"])
            .arg(&abs)
            .arg(&overlay)
            .args(size.map(|s| s.to_string()));
        let out = cmd
            .output()
            .context("running qemu-img (apt-get install qemu-utils)")?;
        if !out.status.success() {
            bail!(
                "qemu-img create failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        format!(
            "file={},format=qcow2,if=none,id=disk0{cache}",
            overlay.display()
        )
    } else {
        if let Some(size) = opts.disk_size {
            grow_image(image, size)?;
        }
        format!(
            "file={},format={fmt},if=none,id=disk0{cache}",
            image.display()
        )
    };

    let (program, package) = match arch {
        Arch::X86_64 => ("qemu-system-x86_64", "qemu-system-x86"),
        Arch::Arm64 => ("qemu-system-aarch64", "qemu-system-arm"),
    };
    let mut cmd = Command::new(program);
    let machine = match arch {
        // The Secure Boot firmware keeps its variables safe behind SMM.
        Arch::X86_64 if secure_boot => "q35,smm=on",
        Arch::X86_64 => "q35",
        // AAVMF keeps its variables in the second flash, like OVMF without SMM.
        Arch::Arm64 => "virt",
    };
    cmd.args(["-machine", machine, "-m"])
        .arg(opts.memory_mib.to_string());
    if arch == Arch::Arm64 {
        if Arch::host() == Some(Arch::Arm64) && accel::kvm_opens() {
            cmd.args(["-accel", "kvm", "-cpu", "host", "-smp", "2"]);
        } else {
            eprintln!("oneimage: emulating an arm64 CPU (TCG), which is slow");
            // Cortex-A72: no pointer authentication or SVE, whose emulation costs much.
            cmd.args(["-accel", "tcg", "-cpu", "cortex-a72", "-smp", "2"]);
        }
    } else if accel::kvm_works() {
        cmd.args(["-accel", "kvm", "-cpu", "host", "-smp", "2"]);
    } else {
        eprintln!("oneimage: KVM is not usable here; emulating the CPU (TCG), which is slower");
        // One CPU under emulation: Debian's kernels (6.1 and 6.12) now and then stopped
        // for good early in a two-CPU boot under TCG on a busy host (after bringing up
        // the second CPU, or just after switching clocksources), about one boot in fifty
        // in the test suite; a second emulated CPU gains little when the host's cores
        // are busy anyway.
        cmd.args(["-accel", "tcg", "-cpu", "max", "-smp", "1"]);
    }
    if secure_boot && arch == Arch::X86_64 {
        cmd.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
    }
    if let Some((fw, vars)) = &uefi {
        cmd.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={}",
                fw.code.display()
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
    } else if !Path::new(SEABIOS).exists() {
        bail!("BIOS firmware {SEABIOS} not found (apt-get install seabios)");
    }
    cmd.arg("-drive")
        .arg(drive)
        .args(opts.media.devices(arch))
        .args(["-nic", "none", "-no-reboot"]);
    for (i, disk) in opts.extra_disks.iter().enumerate() {
        let meta =
            std::fs::metadata(disk).with_context(|| format!("extra disk {}", disk.display()))?;
        if !meta.is_file() {
            bail!("extra disk {} is not a regular file", disk.display());
        }
        // QEMU splits -drive options at commas; a comma in the path is doubled.
        let path = disk.display().to_string().replace(',', ",,");
        let snapshot = if opts.snapshot { ",snapshot=on" } else { "" };
        cmd.arg("-drive")
            .arg(format!(
                "file={path},format=raw,if=none,id=extra{i}{snapshot}{cache}"
            ))
            .arg("-device")
            .arg(format!("virtio-blk-pci,drive=extra{i}"));
    }
    let graphical = !opts.headless && std::env::var_os("DISPLAY").is_some();
    if opts.headless {
        cmd.args(["-display", "none", "-monitor", "none", "-qmp"])
            .arg(format!(
                "unix:{},server=on,wait=off",
                tmp.path().join("qmp.sock").display()
            ))
            .args([
                "-chardev",
                "stdio,id=ser0,signal=off",
                "-serial",
                "chardev:ser0",
            ]);
        // stdin is the serial console's keyboard, used to pick a menu entry and to
        // answer prompts.
        cmd.stdin(if opts.entry.is_some() || !opts.answers.is_empty() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped());
    } else if graphical {
        cmd.args(["-serial", "mon:stdio"]);
    } else {
        cmd.arg("-nographic");
    }
    eprintln!("oneimage: {cmd:?}");
    if !opts.headless {
        let status = cmd
            .status()
            .with_context(|| format!("running {program} (apt-get install {package})"))?;
        return Ok(Outcome::Exited(status.code()));
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("running {program} (apt-get install {package})"))?;
    let expect = Expect {
        text: opts.expect.clone(),
        timeout: opts.timeout,
        echo: opts.echo_console,
        log: opts.console_log.clone(),
        poweroff: opts.poweroff.then(|| tmp.path().join("qmp.sock")),
        cut_after: opts.power_cut_after,
        answers: opts.answers.clone(),
        press: match opts.entry.as_deref() {
            None => None,
            // oneimage's grub.cfg gives each entry a hotkey; the menu shows the live
            // entry's title, which says when GRUB is ready for a key.
            Some("live") => Some((MENU_READY.to_string(), b"l".to_vec())),
            Some("persistent") => Some((MENU_READY.to_string(), b"p".to_vec())),
            Some("previous") => Some((MENU_READY.to_string(), b"o".to_vec())),
            Some(other) => bail!("--entry {other}: expected persistent, live or previous"),
        },
    };
    let outcome = console::watch(child, &expect)?;
    drop(tmp);
    Ok(outcome)
}
