//! Making a Debian root filesystem tarball with mmdebstrap.

use crate::progress::Progress;
use crate::run::Cancel;
use crate::spec::MmdebstrapSpec;
use anyhow::{bail, Context, Result};
use oneimage_format::arch::Arch;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// One root filesystem to make with mmdebstrap: what the spec asks for, and for what.
#[derive(Debug, Clone, Copy)]
pub struct MmdebstrapRun<'a> {
    /// `[rootfs.mmdebstrap]` of the spec.
    pub spec: &'a MmdebstrapSpec,
    /// The image's architecture. A foreign one needs qemu-user-static with binfmt_misc
    /// on the build host (mmdebstrap runs the packages' scripts through it).
    pub arch: Arch,
    /// Let the distribution make its initramfs (only images booting with it need one).
    pub distro_initramfs: bool,
    /// Pins every timestamp (`SOURCE_DATE_EPOCH`).
    pub epoch: Option<i64>,
}

/// Runs mmdebstrap for `r`, writing a tarball to `out`.
pub fn run_mmdebstrap(
    r: &MmdebstrapRun,
    out: &Path,
    progress: Progress,
    cancel: Cancel,
) -> Result<()> {
    let m = r.spec;
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg(format!("--variant={}", m.variant))
        .arg("--format=tar")
        .arg(format!("--architectures={}", r.arch.debian()))
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
    if let Some(e) = r.epoch {
        cmd.env("SOURCE_DATE_EPOCH", e.to_string());
    }
    // Debian's kernel hook makes no initramfs when INITRD=No: an image booting with
    // oneimage's own would carry an unused one (tens of MiB), made at length (minutes
    // for a foreign architecture, whose tools run emulated).
    if !r.distro_initramfs {
        cmd.env("INITRD", "No");
    }
    cmd.arg(&m.suite).arg(out);
    if let Some(mirror) = &m.mirror {
        cmd.arg(mirror);
    }
    progress.step("rootfs", &format!("running {cmd:?}"));
    let status = crate::run::status(
        &mut cmd,
        "running mmdebstrap (is it installed? apt-get install mmdebstrap)",
        cancel,
    )?;
    if !status.success() {
        bail!("mmdebstrap for suite {} failed ({status})", m.suite);
    }
    Ok(())
}

/// Returns a tarball for `m` from `cache`, running mmdebstrap only when there is none yet.
///
/// The key covers every setting that changes what mmdebstrap makes, so a changed spec
/// never reuses a stale root filesystem; the archive moving on does not invalidate it
/// (delete the cache to pick up updates).
pub fn cached_mmdebstrap(
    r: &MmdebstrapRun,
    cache: &Path,
    progress: Progress,
    cancel: Cancel,
) -> Result<PathBuf> {
    let (m, arch, epoch) = (r.spec, r.arch, r.epoch);
    let mut h = Sha256::new();
    h.update(format!(
        "{:?}\0{:?}\0{:?}\0{:?}\0{:?}\0{:?}\0{:?}",
        m.suite, m.variant, m.packages, m.components, m.mirror, m.keyring, epoch
    ));
    h.update(arch.debian());
    if !r.distro_initramfs {
        h.update("\0no initramfs");
    }
    let key: String = h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let tar = cache.join(format!(
        "mmdebstrap-{}-{}-{key}.tar",
        m.suite,
        arch.debian()
    ));
    if tar.exists() {
        progress.step(
            "rootfs",
            &format!("using cached root filesystem {}", tar.display()),
        );
        return Ok(tar);
    }
    std::fs::create_dir_all(cache)
        .with_context(|| format!("creating cache directory {}", cache.display()))?;
    let partial = cache.join(format!(".partial-{key}-{}.tar", std::process::id()));
    let result = run_mmdebstrap(r, &partial, progress, cancel);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &tar).with_context(|| format!("storing {}", tar.display()))?;
    Ok(tar)
}
