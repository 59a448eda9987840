//! Finding UEFI firmware (Debian's `ovmf` package) and keeping a variable store.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// OVMF code and the pristine variable store it pairs with.
#[derive(Debug, Clone)]
pub struct Firmware {
    /// Read-only firmware code.
    pub code: PathBuf,
    /// Empty variable store to copy from.
    pub vars_template: PathBuf,
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

impl Firmware {
    /// Finds OVMF for x86_64.
    pub fn find() -> Result<Firmware> {
        for (code, vars) in PAIRS {
            if Path::new(code).exists() && Path::new(vars).exists() {
                return Ok(Firmware {
                    code: code.into(),
                    vars_template: vars.into(),
                });
            }
        }
        bail!(
            "UEFI firmware not found (looked for {}; apt-get install ovmf)",
            PAIRS[0].0
        )
    }

    /// The variable store that belongs to `image` (`IMAGE.efivars.fd`), made on first use,
    /// so boot entries the firmware records survive like on a real machine.
    pub fn persistent_vars(&self, image: &Path) -> Result<PathBuf> {
        let mut name = image.as_os_str().to_owned();
        name.push(".efivars.fd");
        let vars = PathBuf::from(name);
        if !vars.exists() {
            std::fs::copy(&self.vars_template, &vars)
                .with_context(|| format!("creating firmware variable store {}", vars.display()))?;
        }
        Ok(vars)
    }
}
