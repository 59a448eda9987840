//! The EFI System Partition producer: GRUB for x86_64-efi made with `grub-mkimage`,
//! its `grub.cfg`, the kernel and initramfs, in a FAT32 filesystem made with
//! `mkfs.vfat --invariant` and filled with mtools (no mounts, no root).

use crate::kernel::Kernel;
use crate::run::{run, Cancel};
use crate::spec::SizePolicy;
use anyhow::{bail, Context, Result};
use oneimage_format::arch::Arch;
use oneimage_format::size::{align_up, format_size};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The ESP directory holding the kernels and initramfs images.
pub const BOOT_DIR: &str = "/oneimage";

/// One kernel the boot menu offers: its release and its files on the ESP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootKernel {
    /// Kernel release, e.g. `6.1.0-50-amd64`.
    pub version: String,
    /// Path of the kernel image on the ESP.
    pub kernel: String,
    /// Path of the initramfs on the ESP.
    pub initrd: String,
}

impl BootKernel {
    /// The ESP names of kernel `version` with these contents. Names carry a digest of the
    /// content, so a rebuilt initramfs or a reinstalled kernel is written under a new name
    /// and never over a file the current menu boots.
    pub fn named(version: &str, kernel: &[u8], initrd: &[u8]) -> BootKernel {
        BootKernel {
            version: version.to_string(),
            kernel: format!("{BOOT_DIR}/vmlinuz-{version}-{}", short_digest(kernel)),
            initrd: format!("{BOOT_DIR}/initrd-{version}-{}.img", short_digest(initrd)),
        }
    }

    /// The kernel release that an ESP file name made by [`BootKernel::named`] belongs to.
    pub fn version_of(file_name: &str) -> Option<&str> {
        let rest = file_name
            .strip_prefix("vmlinuz-")
            .or_else(|| file_name.strip_prefix("initrd-"))?;
        let rest = rest.strip_suffix(".img").unwrap_or(rest);
        let (version, digest) = rest.rsplit_once('-')?;
        (digest.len() == 12 && digest.bytes().all(|b| b.is_ascii_hexdigit()) && !version.is_empty())
            .then_some(version)
    }
}

fn short_digest(data: &[u8]) -> String {
    use sha2::Digest;
    let d = sha2::Sha256::digest(data);
    d[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// What the boot menu says and passes, apart from the kernels, and what its initramfs
/// images must hold: fixed at build time and kept in the root filesystem
/// ([`MENU_SETTINGS_PATH`]), so that a kernel update writes the same menu and the same
/// kind of initramfs the build did.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MenuSettings {
    /// Menu entry title.
    pub title: String,
    /// Kernel command line, apart from `root=` and `oneimage.esp=` (which grub.cfg
    /// adds).
    pub cmdline: String,
    /// The root partition's GUID as built (what a copy keeps until its first boot),
    /// used when GRUB cannot read the disk's table.
    pub root_partuuid: String,
    /// The root partition's number in the table.
    pub root_number: u32,
    /// GRUB menu timeout in seconds.
    pub timeout: u32,
    /// Timestamp for the files the menu's initramfs images hold.
    pub epoch: i64,
    /// The image's encryption policy (`oneimage_format::encryption::Policy`'s name):
    /// anything but `off` puts cryptsetup in the initramfs. Absent in images built
    /// before encryption existed.
    #[serde(default = "encryption_off")]
    pub encryption: String,
    /// Whether the encrypted root lets discards through.
    #[serde(default)]
    pub encryption_discards: bool,
}

fn encryption_off() -> String {
    "off".into()
}

/// Where the root filesystem keeps its [`MenuSettings`] (TOML).
pub const MENU_SETTINGS_PATH: &str = "/etc/oneimage/boot.toml";

/// What the ESP needs to know.
pub struct EspParams<'a> {
    /// The image's architecture (which loader, which GRUB).
    pub arch: Arch,
    /// The root filesystem, whose GRUB modules are used when it has them.
    pub tree: Option<&'a crate::rootfs::Tree>,
    /// Volume label.
    pub label: &'a str,
    /// FAT volume id.
    pub volume_id: u32,
    /// Size: fixed, or content plus headroom.
    pub size: SizePolicy,
    /// The boot menu.
    pub menu: &'a MenuSettings,
    /// Leave room for two more kernels and their initramfs images (kernel updates).
    pub room_for_updates: bool,
    /// Boot through Debian's signed shim and GRUB (Secure Boot) instead of our own GRUB.
    pub signed: Option<SignedLoaders>,
}

/// Debian's Microsoft-signed shim, its MOK manager, and the GRUB Debian signed for it.
#[derive(Debug, Clone)]
pub struct SignedLoaders {
    /// `shimx64.efi.signed` / `shimaa64.efi.signed` (package shim-signed).
    pub shim: PathBuf,
    /// `mmx64.efi.signed` / `mmaa64.efi.signed` (package shim-signed).
    pub mok_manager: PathBuf,
    /// `grubx64.efi.signed` / `grubaa64.efi.signed` (grub-efi-amd64-signed,
    /// grub-efi-arm64-signed).
    pub grub: PathBuf,
}

/// Finds the signed boot loaders for `arch` in the root filesystem, or else on the build
/// host.
pub fn find_signed_loaders(tree: &crate::rootfs::Tree, arch: Arch) -> Result<SignedLoaders> {
    let find = |path: &str, package: &str| -> Result<PathBuf> {
        if let Some(file) = tree.file(path) {
            return Ok(file);
        }
        let host = PathBuf::from(path);
        if host.exists() {
            return Ok(host);
        }
        bail!("boot.secure-boot = true needs {path} (package {package}) in the root filesystem or on the build host")
    };
    let x = arch.efi_suffix();
    let grub_package = format!("grub-efi-{}-signed", arch.debian());
    Ok(SignedLoaders {
        shim: find(&format!("/usr/lib/shim/shim{x}.efi.signed"), "shim-signed")?,
        mok_manager: find(&format!("/usr/lib/shim/mm{x}.efi.signed"), "shim-signed")?,
        grub: find(
            &format!(
                "/usr/lib/grub/{}-signed/grub{x}.efi.signed",
                arch.grub_efi_platform()
            ),
            &grub_package,
        )?,
    })
}

/// GRUB's environment block on the ESP, in which the persistent entry marks the disk GRUB
/// started from (see [`grub_cfg`]).
pub const BOOT_MARK_FILE: &str = "oneimage.env";
/// The variable of that mark.
pub const BOOT_MARK_VAR: &str = "oneimage_booted";

/// The GRUB configuration written to `/EFI/BOOT/grub.cfg`, for `kernels`, newest first.
///
/// The newest kernel gets the persistent entry (the default) and a live one, both
/// reachable by hotkey (`p`, `l`) from a serial console; the one before it gets a
/// persistent (`o`, for "older") and a live entry; any further kernel (the running one,
/// kept after its package was removed) one persistent entry.
///
/// The kernel is told the root and the ESP of the disk GRUB started from, read from
/// that disk's table at boot (`probe`): every copy gets its own GUIDs on its first boot,
/// so the values of the build could name another disk's root. They are the fallback
/// when GRUB cannot read them. Copies that never booted carry the same GUIDs: the
/// persistent entries also set `oneimage_booted=1` in the environment block of the ESP
/// they started from (not on a disc, which cannot be written), and the agent, finding
/// several disks alike, takes the one marked.
pub fn grub_cfg(m: &MenuSettings, kernels: &[BootKernel]) -> String {
    let title = m.title.replace(['\'', '\n', '\r'], "");
    let args = format!(
        "root=PARTUUID=${{oneimage_root}} oneimage.esp=${{oneimage_esp}} {}",
        m.cmdline
    );
    let mut cfg = format!(
        "# Written by oneimage.\n\
         # PCs: GRUB's own serial terminal on COM1 beside the screen. Arm machines have\n\
         # no COM1; their firmware's console already reaches the serial port.\n\
         if [ \"$grub_cpu\" = x86_64 -o \"$grub_cpu\" = i386 ]; then\n\
         \tserial --unit=0 --speed=115200\n\
         \tterminal_input console serial\n\
         \tterminal_output console serial\n\
         fi\n\
         set timeout={timeout}\n\
         set default=persistent\n\
         # The disk GRUB started from names the root: the agent takes no root from\n\
         # another disk.\n\
         set oneimage_root={root}\n\
         set oneimage_esp=\n\
         probe --set=oneimage_esp --part-uuid $root\n\
         if regexp --set=1:oneimage_disk '^(.*),gpt[0-9]+$' $root; then\n\
         \tprobe --set=oneimage_root --part-uuid (${{oneimage_disk}},gpt{number})\n\
         fi\n",
        timeout = m.timeout,
        root = m.root_partuuid,
        number = m.root_number,
    );
    let persistent = |id: &str, hotkey: Option<char>, title: &str, k: &BootKernel| {
        let hotkey = hotkey.map(|c| format!(" --hotkey={c}")).unwrap_or_default();
        format!(
            "menuentry '{title}' --id {id}{hotkey} {{\n\
             \tif ! regexp '^cd' $root; then\n\
             \t\tset {mark}=1\n\
             \t\tsave_env --file ($root){prefix}/{file} {mark}\n\
             \tfi\n\
             \tlinux {kernel} {args}\n\
             \tinitrd {initrd}\n\
             }}\n",
            mark = BOOT_MARK_VAR,
            file = BOOT_MARK_FILE,
            prefix = crate::grub::PREFIX,
            kernel = k.kernel,
            initrd = k.initrd,
        )
    };
    let live = |id: &str, hotkey: Option<char>, title: &str, k: &BootKernel| {
        let hotkey = hotkey.map(|c| format!(" --hotkey={c}")).unwrap_or_default();
        format!(
            "menuentry '{title} (live: nothing is written to the disk)' --id {id}{hotkey} {{\n\
             \tlinux {kernel} {args} oneimage.mode=live\n\
             \tinitrd {initrd}\n\
             }}\n",
            kernel = k.kernel,
            initrd = k.initrd,
        )
    };
    for (i, k) in kernels.iter().enumerate() {
        let v = k.version.replace(['\'', '\n', '\r'], "");
        match i {
            0 => {
                cfg += &persistent("persistent", Some('p'), &title, k);
                cfg += &live("live", Some('l'), &title, k);
            }
            1 => {
                let t = format!("{title}, previous kernel {v}");
                cfg += &persistent("previous", Some('o'), &t, k);
                cfg += &live("previous-live", None, &t, k);
            }
            _ => {
                let t = format!("{title}, kernel {v}");
                cfg += &persistent(&format!("kernel-{i}"), None, &t, k);
            }
        }
    }
    cfg
}

/// Makes the ESP filesystem image at `out`; returns its size in bytes.
pub fn make_esp(
    kernel: &Kernel,
    p: &EspParams,
    out: &Path,
    work: &Path,
    cancel: Cancel,
) -> Result<u64> {
    let stage = work.join("esp");
    let boot = stage.join("EFI/BOOT");
    let ours = stage.join("oneimage");
    std::fs::create_dir_all(&boot)?;
    std::fs::create_dir_all(&ours)?;
    match &p.signed {
        // shim (signed by Microsoft's UEFI CA) checks Debian's GRUB, which asks shim to
        // check the kernel. That GRUB reads grub.cfg from the directory it was loaded
        // from when there is no /EFI/debian.
        Some(l) => {
            let x = p.arch.efi_suffix();
            for (src, name) in [
                (&l.shim, p.arch.efi_loader().to_string()),
                (&l.grub, format!("grub{x}.efi")),
                (&l.mok_manager, format!("mm{x}.efi")),
            ] {
                std::fs::copy(src, boot.join(name))
                    .with_context(|| format!("copying {}", src.display()))?;
            }
        }
        None => {
            let loader = boot.join(p.arch.efi_loader());
            crate::grub::make_efi(p.arch, p.tree, work, &loader, cancel)?;
        }
    }
    let initrd = kernel
        .initrd
        .as_ref()
        .context("no initramfs to boot with")?;
    let kernel_bytes = std::fs::read(&kernel.image)
        .with_context(|| format!("reading kernel {}", kernel.image.display()))?;
    let initrd_bytes =
        std::fs::read(initrd).with_context(|| format!("reading initramfs {}", initrd.display()))?;
    let entry = BootKernel::named(&kernel.version, &kernel_bytes, &initrd_bytes);
    for (path, bytes) in [
        (&entry.kernel, &kernel_bytes),
        (&entry.initrd, &initrd_bytes),
    ] {
        std::fs::write(stage.join(path.trim_start_matches('/')), bytes)?;
    }
    std::fs::write(boot.join("grub.cfg"), grub_cfg(p.menu, &[entry]))?;
    std::fs::write(
        boot.join(BOOT_MARK_FILE),
        oneimage_format::grubenv::block(&[(BOOT_MARK_VAR, "0")]).expect("fits"),
    )?;
    // A kernel update writes the new kernel and initramfs before it removes the old
    // ones (and keeps the previous kernel as a fallback): room for two more of each,
    // a quarter larger, as kernels grow.
    let updates = if p.room_for_updates {
        2 * (align_up(kernel_bytes.len() as u64, 4096) + align_up(initrd_bytes.len() as u64, 4096))
            * 5
            / 4
    } else {
        0
    };

    let mut content = 0u64;
    let mut paths = Vec::new();
    for item in walkdir::WalkDir::new(&stage).sort_by_file_name() {
        let item = item?;
        content += align_up(item.metadata()?.len(), 4096);
        paths.push(item.path().to_path_buf());
    }
    // Children first, so setting a file's time does not change its directory's again.
    for path in paths.iter().rev() {
        set_times(path, p.menu.epoch)?;
    }
    let size = match p.size {
        SizePolicy::Fixed(n) => {
            if n < content + (2 << 20) {
                bail!(
                    "esp.size = {} is too small for the boot files ({})",
                    format_size(n),
                    format_size(content)
                );
            }
            align_up(n, 1 << 20)
        }
        SizePolicy::Minimal { headroom } => align_up(
            (content + updates + headroom + content / 10).max(64 << 20),
            1 << 20,
        ),
    };
    let f = std::fs::File::create(out)?;
    f.set_len(size)?;
    drop(f);
    run(
        Command::new("mkfs.vfat")
            .args(["-F", "32", "--invariant", "-i"])
            .arg(format!("{:08X}", p.volume_id))
            .arg("-n")
            .arg(p.label)
            .arg(out),
        "making the ESP filesystem",
        cancel,
    )?;
    let mut mcopy = Command::new("mcopy");
    mcopy
        .env("MTOOLS_SKIP_CHECK", "1")
        .env("SOURCE_DATE_EPOCH", p.menu.epoch.to_string())
        .args(["-s", "-p", "-m", "-Q", "-i"])
        .arg(out)
        .arg(stage.join("EFI"))
        .arg(&ours)
        .arg("::/");
    run(&mut mcopy, "copying boot files to the ESP", cancel)?;
    run(
        Command::new("fsck.fat").arg("-n").arg(out),
        "checking the ESP",
        cancel,
    )?;
    Ok(size)
}

fn set_times(path: &Path, epoch: i64) -> Result<()> {
    use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD};
    let t = Timespec {
        tv_sec: epoch,
        tv_nsec: 0,
    };
    utimensat(
        CWD,
        path,
        &Timestamps {
            last_access: t,
            last_modification: t,
        },
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .with_context(|| format!("setting times of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> MenuSettings {
        MenuSettings {
            title: "Demo".into(),
            cmdline: "rw console=ttyS0".into(),
            root_partuuid: "01234567-89ab-cdef-0123-456789abcdef".into(),
            root_number: 2,
            timeout: 3,
            epoch: 0,
            encryption: "off".into(),
            encryption_discards: false,
        }
    }

    #[test]
    fn names_carry_the_release_and_a_digest_of_the_content() {
        let a = BootKernel::named("6.1.0-50-amd64", b"kernel", b"initrd");
        assert!(a.kernel.starts_with("/oneimage/vmlinuz-6.1.0-50-amd64-"));
        assert!(a.initrd.starts_with("/oneimage/initrd-6.1.0-50-amd64-"));
        assert!(a.initrd.ends_with(".img"));
        // Other content, other names; the same content, the same names.
        let b = BootKernel::named("6.1.0-50-amd64", b"kernel", b"initrd, rebuilt");
        assert_eq!(a.kernel, b.kernel);
        assert_ne!(a.initrd, b.initrd);
        assert_eq!(a, BootKernel::named("6.1.0-50-amd64", b"kernel", b"initrd"));
        for path in [&a.kernel, &a.initrd, &b.initrd] {
            let name = path.rsplit('/').next().unwrap();
            assert_eq!(
                BootKernel::version_of(name),
                Some("6.1.0-50-amd64"),
                "{name}"
            );
        }
        for other in [
            "vmlinuz",
            "initrd.img",
            "vmlinuz-6.1-xyz",
            "grub.cfg",
            "vmlinuz--0123456789ab",
        ] {
            assert_eq!(BootKernel::version_of(other), None, "{other}");
        }
    }

    #[test]
    fn the_menu_offers_the_newest_kernel_first_and_the_previous_as_fallback() {
        let new = BootKernel::named("6.12.7+deb12-amd64", b"k2", b"i2");
        let old = BootKernel::named("6.1.0-50-amd64", b"k1", b"i1");
        let kept = BootKernel::named("6.1.0-40-amd64", b"k0", b"i0");
        let cfg = grub_cfg(&settings(), &[new.clone(), old.clone(), kept.clone()]);
        let entries = oneimage_format::grubcfg::entries("grub.cfg", &cfg);
        let ids: Vec<_> = entries.iter().map(|e| e.id.clone().unwrap()).collect();
        assert_eq!(
            ids,
            [
                "persistent",
                "live",
                "previous",
                "previous-live",
                "kernel-2"
            ]
        );
        let kernels: Vec<&str> = entries
            .iter()
            .map(|e| e.kernel.as_deref().unwrap())
            .collect();
        assert_eq!(
            kernels,
            [
                &new.kernel,
                &new.kernel,
                &old.kernel,
                &old.kernel,
                &kept.kernel
            ]
            .map(String::as_str)
        );
        assert!(cfg.contains("set default=persistent\n"));
        assert!(cfg.contains("--id previous --hotkey=o {"));
        assert!(cfg.contains("'Demo, previous kernel 6.1.0-50-amd64'"));
        // Live entries write nothing, not even the boot mark.
        for e in &entries {
            let live = e.id.as_deref().unwrap().ends_with("live");
            assert_eq!(
                e.cmdline.as_deref().unwrap().contains("oneimage.mode=live"),
                live,
                "{e:?}"
            );
        }
        assert_eq!(cfg.matches("save_env").count(), 3);
    }

    #[test]
    fn titles_cannot_break_out_of_their_quotes() {
        let mut m = settings();
        m.title = "It's\nmenuentry 'x' {".into();
        let cfg = grub_cfg(&m, &[BootKernel::named("6.1", b"k", b"i")]);
        assert_eq!(oneimage_format::grubcfg::entries("grub.cfg", &cfg).len(), 2);
    }
}
