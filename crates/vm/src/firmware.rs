//! Finding UEFI firmware (Debian's `ovmf` package for x86_64, `qemu-efi-aarch64`'s AAVMF
//! for arm64) and keeping a variable store.

use anyhow::{bail, Context, Result};
use oneimage_format::arch::Arch;
use std::path::{Path, PathBuf};

/// OVMF code and the pristine variable store it pairs with.
#[derive(Debug, Clone)]
pub struct Firmware {
    /// Read-only firmware code.
    pub code: PathBuf,
    /// Empty variable store to copy from.
    pub vars_template: PathBuf,
    /// Secure Boot firmware (needs SMM and a secure flash).
    pub secure_boot: bool,
}

const PAIRS: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
];

/// Secure Boot builds of OVMF (they need SMM) with Microsoft's keys enrolled and Secure
/// Boot enforcing, as on a PC from a shop.
const SECURE_PAIRS: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.ms.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.ms.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.ms.fd",
        "/usr/share/OVMF/OVMF_VARS.ms.fd",
    ),
];

/// AAVMF, the arm64 build of the same firmware (padded to the virt machine's 64 MiB
/// flash).
const AARCH64_PAIRS: &[(&str, &str)] = &[(
    "/usr/share/AAVMF/AAVMF_CODE.fd",
    "/usr/share/AAVMF/AAVMF_VARS.fd",
)];

/// AAVMF with Microsoft's keys enrolled and Secure Boot enforcing.
const AARCH64_SECURE_PAIRS: &[(&str, &str)] = &[(
    "/usr/share/AAVMF/AAVMF_CODE.ms.fd",
    "/usr/share/AAVMF/AAVMF_VARS.ms.fd",
)];

impl Firmware {
    /// Finds UEFI firmware for `arch`, with Secure Boot enforcing or without.
    pub fn find(arch: Arch, secure_boot: bool) -> Result<Firmware> {
        let (pairs, package) = match (arch, secure_boot) {
            (Arch::X86_64, false) => (PAIRS, "ovmf"),
            (Arch::X86_64, true) => (SECURE_PAIRS, "ovmf"),
            (Arch::Arm64, false) => (AARCH64_PAIRS, "qemu-efi-aarch64"),
            (Arch::Arm64, true) => (AARCH64_SECURE_PAIRS, "qemu-efi-aarch64"),
        };
        for (code, vars) in pairs {
            if Path::new(code).exists() && Path::new(vars).exists() {
                return Ok(Firmware {
                    code: code.into(),
                    vars_template: vars.into(),
                    secure_boot,
                });
            }
        }
        bail!(
            "UEFI firmware for {arch} not found (looked for {}; apt-get install {package})",
            pairs[0].0
        )
    }

    /// The variable store that belongs to `image` (`IMAGE.efivars.fd`, or
    /// `IMAGE.efivars-secure-boot.fd`), made on first use,
    /// so boot entries the firmware records survive like on a real machine.
    pub fn persistent_vars(&self, image: &Path) -> Result<PathBuf> {
        let mut name = image.as_os_str().to_owned();
        // Each firmware keeps its own store: their key databases differ.
        name.push(if self.secure_boot {
            ".efivars-secure-boot.fd"
        } else {
            ".efivars.fd"
        });
        let vars = PathBuf::from(name);
        if !vars.exists() {
            std::fs::copy(&self.vars_template, &vars)
                .with_context(|| format!("creating firmware variable store {}", vars.display()))?;
        }
        Ok(vars)
    }
}
