//! `oneimage update-boot`: after a kernel package was installed or removed, put the
//! newest kernels, with oneimage initramfs images made from the running system, on the
//! ESP the system started from, and switch the boot menu to them.
//!
//! Safe against power loss at any point: new files are written under new names (names
//! carry a digest of the content) and synced; then the menu is switched by one rename of
//! `grub.cfg`; only then are files the new menu does not name removed. Until the rename
//! the old menu boots the old files, which are untouched; after it the new one boots
//! the new files, which are complete. A run cut short is finished by the next one.

use crate::boot_disk::{self, BootDisk};
use crate::esp_mount::EspMount;
use anyhow::{bail, Context, Result};
use oneimage_builder::esp::{grub_cfg, BootKernel, MenuSettings, BOOT_DIR, MENU_SETTINGS_PATH};
use oneimage_builder::initramfs::{self, RunningSystem};
use oneimage_builder::kernel::version_cmp;
use oneimage_format::arch::Arch;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The boot menu on the ESP, relative to its root.
const GRUB_CFG: &str = "EFI/BOOT/grub.cfg";
/// How many installed kernels the menu offers: the newest, and the one before it as a
/// fallback.
const KERNELS_KEPT: usize = 2;
/// Suffix of files being written; left-overs of a run cut short are removed.
const PARTIAL: &str = ".partial";

/// What a kernel package did, as its hook says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookEvent {
    /// Kernel release installed.
    Installed(String),
    /// Kernel release removed.
    Removed(String),
}

/// What `update-boot` did.
#[derive(Debug, Clone)]
pub struct Updated {
    /// The ESP written.
    pub esp: PathBuf,
    /// The kernels the menu now offers, the default first.
    pub kernels: Vec<BootKernel>,
    /// Files written to the ESP.
    pub written: Vec<String>,
    /// Files removed from the ESP.
    pub removed: Vec<String>,
    /// The menu changed.
    pub menu_changed: bool,
}

/// The kernels installed in the running system, oldest first: Debian's
/// `/boot/vmlinuz-RELEASE`, or `/usr/lib/modules/RELEASE/vmlinuz`.
pub fn installed_kernels() -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/boot") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(v) = name.strip_prefix("vmlinuz-") {
                if e.path().is_file() && !v.is_empty() {
                    found.push((v.to_string(), e.path()));
                }
            }
        }
    }
    if let Ok(dir) = std::fs::read_dir("/usr/lib/modules") {
        for e in dir.flatten() {
            let v = e.file_name().to_string_lossy().into_owned();
            let image = e.path().join("vmlinuz");
            if image.is_file() && !found.iter().any(|(f, _)| *f == v) {
                found.push((v, image));
            }
        }
    }
    found.sort_by(|a, b| version_cmp(&a.0, &b.0));
    found
}

/// The kernel release running now.
fn running_release() -> Result<String> {
    Ok(rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned())
}

/// Which kernels get on the menu, newest first: the [`KERNELS_KEPT`] newest installed
/// ones (not the one a removal hook names) and the running one, which is never taken
/// off the menu (`on_esp` says what the ESP has for it, if its package is gone).
fn choose(
    installed: &[(String, PathBuf)],
    removed: Option<&str>,
    running: &str,
) -> (Vec<(String, PathBuf)>, bool) {
    let mut chosen: Vec<(String, PathBuf)> = installed
        .iter()
        .rev()
        .filter(|(v, _)| Some(v.as_str()) != removed)
        .take(KERNELS_KEPT)
        .cloned()
        .collect();
    let mut keep_running_from_esp = false;
    if !chosen.iter().any(|(v, _)| v == running) {
        match installed
            .iter()
            .find(|(v, _)| v == running && Some(v.as_str()) != removed)
        {
            Some(k) => chosen.push(k.clone()),
            None => keep_running_from_esp = true,
        }
    }
    (chosen, keep_running_from_esp)
}

pub(crate) fn read_settings() -> Result<MenuSettings> {
    let text = std::fs::read_to_string(MENU_SETTINGS_PATH)
        .with_context(|| format!("reading {MENU_SETTINGS_PATH} (the boot menu's settings)"))?;
    toml::from_str(&text).with_context(|| format!("{MENU_SETTINGS_PATH}: not valid settings"))
}

/// Writes `data` as `dir/name` unless a file of that name holds it already: under a
/// temporary name first, synced, then renamed. Returns whether it wrote.
fn put_file(dir: &Path, name: &str, data: &[u8]) -> Result<bool> {
    let path = dir.join(name);
    if std::fs::read(&path).is_ok_and(|old| old == data) {
        return Ok(false);
    }
    let partial = dir.join(format!("{name}{PARTIAL}"));
    let mut f = std::fs::File::create(&partial)
        .with_context(|| format!("creating {}", partial.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("writing {}", partial.display()))?;
    drop(f);
    std::fs::rename(&partial, &path)
        .with_context(|| format!("renaming {} to {}", partial.display(), path.display()))?;
    std::fs::File::open(dir)?.sync_all()?;
    Ok(true)
}

/// The kernel and initramfs the current menu boots `release` with, if it has them.
fn current_entry(esp: &Path, release: &str) -> Option<BootKernel> {
    let text = std::fs::read_to_string(esp.join(GRUB_CFG)).ok()?;
    oneimage_format::grubcfg::entries(GRUB_CFG, &text)
        .into_iter()
        .find_map(|e| {
            let kernel = e.kernel?;
            let initrd = e.initrd?;
            let name = kernel.rsplit('/').next()?;
            (BootKernel::version_of(name) == Some(release)
                && esp.join(kernel.trim_start_matches('/')).is_file()
                && esp.join(initrd.trim_start_matches('/')).is_file())
            .then(|| BootKernel {
                version: release.to_string(),
                kernel,
                initrd,
            })
        })
}

/// Rebuilds the boot of the running system; `event` is what a kernel hook reported.
///
/// Fails with a [`boot_disk::NotBootedFromDisk`] error when there is no disk boot to
/// update (a chroot, a live session, a disc).
pub fn update_boot(event: Option<&HookEvent>, say: &dyn Fn(&str)) -> Result<Updated> {
    let disk = boot_disk::find()?;
    let settings = read_settings()?;
    update_disk(&disk, &settings, event, say)
}

fn update_disk(
    disk: &BootDisk,
    settings: &MenuSettings,
    event: Option<&HookEvent>,
    say: &dyn Fn(&str),
) -> Result<Updated> {
    let removed = match event {
        Some(HookEvent::Removed(v)) => Some(v.as_str()),
        _ => None,
    };
    let running = running_release()?;
    let (chosen, keep_running) = choose(&installed_kernels(), removed, &running);
    if chosen.is_empty() && !keep_running {
        bail!("no kernel is installed (looked for /boot/vmlinuz-RELEASE and /usr/lib/modules/RELEASE/vmlinuz)");
    }
    // The running system's architecture is this (static) program's.
    let arch = Arch::host().context("this architecture has no oneimage images")?;
    let agent = initramfs::find_agent(arch)?;
    let esp = EspMount::mount(&disk.esp, disk.esp_devnum)?;
    let boot_dir = esp.dir.join(BOOT_DIR.trim_start_matches('/'));
    std::fs::create_dir_all(&boot_dir)?;
    let work = tempfile::Builder::new()
        .prefix("oneimage-update-boot-")
        .tempdir()
        .context("making a work directory")?;

    let policy = settings
        .encryption
        .parse::<oneimage_format::encryption::Policy>()
        .map_err(|e| anyhow::anyhow!("{MENU_SETTINGS_PATH}: encryption = {e}"))?;
    let extras = initramfs::Extras {
        epoch: settings.epoch,
        encryption: oneimage_format::encryption::Settings {
            policy,
            discards: settings.encryption_discards,
            build_key: None,
        },
    };
    let mut kernels = Vec::new();
    let mut written = Vec::new();
    for (release, image) in &chosen {
        say(&format!("kernel {release}: making its initramfs"));
        let initrd = work.path().join(format!("initrd-{release}"));
        let sum =
            initramfs::make_initramfs(&RunningSystem, arch, release, &agent, &extras, &initrd)
                .with_context(|| format!("making the initramfs of kernel {release}"))?;
        if !sum.missing.is_empty() {
            say(&format!(
                "kernel {release}: modules not in this kernel: {}",
                sum.missing.join(" ")
            ));
        }
        let kernel_bytes =
            std::fs::read(image).with_context(|| format!("reading {}", image.display()))?;
        let initrd_bytes = std::fs::read(&initrd)?;
        let entry = BootKernel::named(release, &kernel_bytes, &initrd_bytes);
        for (path, data) in [
            (&entry.kernel, &kernel_bytes),
            (&entry.initrd, &initrd_bytes),
        ] {
            let name = path.rsplit('/').next().expect("a file name");
            if put_file(&boot_dir, name, data)
                .with_context(|| format!("writing {path} to the ESP {}", disk.esp.display()))?
            {
                written.push(path.clone());
            }
        }
        kernels.push(entry);
    }
    if keep_running {
        match current_entry(&esp.dir, &running) {
            Some(entry) => {
                say(&format!(
                    "kernel {running}: its package is gone, but it is running: kept on the menu"
                ));
                kernels.push(entry);
            }
            None if kernels.is_empty() => bail!(
                "no kernel is installed, and the ESP has no files of the running kernel {running}: refusing to write a menu that boots nothing"
            ),
            None => {}
        }
    }
    esp.sync()?;

    // The switch.
    let cfg = grub_cfg(settings, &kernels);
    let cfg_path = esp.dir.join(GRUB_CFG);
    let menu_changed = std::fs::read_to_string(&cfg_path).ok().as_deref() != Some(cfg.as_str());
    if menu_changed {
        put_file(
            cfg_path.parent().expect("EFI/BOOT"),
            "grub.cfg",
            cfg.as_bytes(),
        )
        .with_context(|| format!("switching the boot menu on {}", disk.esp.display()))?;
        esp.sync()?;
    }

    // What the menu no longer names (and left-overs of runs cut short) goes.
    let named: Vec<&str> = kernels
        .iter()
        .flat_map(|k| [k.kernel.as_str(), k.initrd.as_str()])
        .filter_map(|p| p.rsplit('/').next())
        .collect();
    let mut removed_files = Vec::new();
    for e in std::fs::read_dir(&boot_dir)?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !named.contains(&name.as_str()) && e.path().is_file() {
            std::fs::remove_file(e.path())
                .with_context(|| format!("removing {BOOT_DIR}/{name} from the ESP"))?;
            removed_files.push(format!("{BOOT_DIR}/{name}"));
        }
    }
    let boot_efi = cfg_path.parent().expect("EFI/BOOT");
    for e in std::fs::read_dir(boot_efi)?.flatten() {
        if e.file_name().to_string_lossy().ends_with(PARTIAL) {
            std::fs::remove_file(e.path())?;
        }
    }
    esp.sync()?;
    Ok(Updated {
        esp: disk.esp.clone(),
        kernels,
        written,
        removed: removed_files,
        menu_changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(v: &str) -> (String, PathBuf) {
        (v.to_string(), PathBuf::from(format!("/boot/vmlinuz-{v}")))
    }

    fn names(c: &[(String, PathBuf)]) -> Vec<&str> {
        c.iter().map(|(v, _)| v.as_str()).collect()
    }

    #[test]
    fn the_newest_two_and_the_running_one() {
        let installed = [
            k("6.1.0-40-amd64"),
            k("6.1.0-50-amd64"),
            k("6.12.7+deb12-amd64"),
        ];
        let (c, esp) = choose(&installed, None, "6.1.0-50-amd64");
        assert_eq!(names(&c), ["6.12.7+deb12-amd64", "6.1.0-50-amd64"]);
        assert!(!esp);
        // Started from the oldest: it stays as a third entry.
        let (c, esp) = choose(&installed, None, "6.1.0-40-amd64");
        assert_eq!(
            names(&c),
            ["6.12.7+deb12-amd64", "6.1.0-50-amd64", "6.1.0-40-amd64"]
        );
        assert!(!esp);
    }

    #[test]
    fn a_removed_kernel_leaves_unless_it_runs() {
        let installed = [k("6.1.0-50-amd64"), k("6.12.7+deb12-amd64")];
        // The hook runs after the files are gone; the release it names is left out even
        // if they are not.
        let (c, esp) = choose(&installed, Some("6.1.0-50-amd64"), "6.12.7+deb12-amd64");
        assert_eq!(names(&c), ["6.12.7+deb12-amd64"]);
        assert!(!esp);
        let (c, esp) = choose(&installed[1..], Some("6.1.0-50-amd64"), "6.1.0-50-amd64");
        assert_eq!(names(&c), ["6.12.7+deb12-amd64"]);
        assert!(esp, "the running kernel is kept from the ESP");
    }
}
