//! Making a Debian root filesystem tarball with mmdebstrap.

use crate::spec::MmdebstrapSpec;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::process::Command;

/// Runs mmdebstrap for `m`, writing a tarball to `out`; `epoch` pins its timestamps.
pub fn run_mmdebstrap(m: &MmdebstrapSpec, epoch: Option<i64>, out: &Path) -> Result<()> {
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg(format!("--variant={}", m.variant))
        .arg("--format=tar")
        .arg("--quiet");
    if !m.packages.is_empty() {
        cmd.arg(format!("--include={}", m.packages.join(",")));
    }
    if !m.components.is_empty() {
        cmd.arg(format!("--components={}", m.components.join(",")));
    }
    if let Some(k) = &m.keyring {
        cmd.arg(format!("--keyring={}", k.display()));
    }
    if let Some(e) = epoch {
        cmd.env("SOURCE_DATE_EPOCH", e.to_string());
    }
    cmd.arg(&m.suite).arg(out);
    if let Some(mirror) = &m.mirror {
        cmd.arg(mirror);
    }
    eprintln!("oneimage: running {cmd:?}");
    let status = cmd
        .status()
        .context("running mmdebstrap (is it installed? apt-get install mmdebstrap)")?;
    if !status.success() {
        bail!("mmdebstrap for suite {} failed ({status})", m.suite);
    }
    Ok(())
}
