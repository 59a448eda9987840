//! Making a Debian root filesystem tarball with mmdebstrap.

use crate::progress::Progress;
use crate::run::Cancel;
use crate::spec::MmdebstrapSpec;
use anyhow::{bail, Context, Result};
use oneimage_format::arch::Arch;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs mmdebstrap for `m` and `arch`, writing a tarball to `out`; `epoch` pins its
/// timestamps; the distribution's initramfs is made only when `distro_initramfs`. A foreign architecture needs qemu-user-static with binfmt_misc on the
/// build host (mmdebstrap runs the packages' scripts through it).
pub fn run_mmdebstrap(
    m: &MmdebstrapSpec,
    arch: Arch,
    distro_initramfs: bool,
    epoch: Option<i64>,
    out: &Path,
    progress: Progress,
    cancel: Cancel,
) -> Result<()> {
    let mut cmd = Command::new("mmdebstrap");
    cmd.arg(format!("--variant={}", m.variant))
        .arg("--format=tar")
        .arg(format!("--architectures={}", arch.debian()))
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
    // Debian's kernel hook makes no initramfs when INITRD=No: an image booting with
    // oneimage's own would carry an unused one (tens of MiB), made at length (minutes
    // for a foreign architecture, whose tools run emulated).
    if !distro_initramfs {
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
    m: &MmdebstrapSpec,
    arch: Arch,
    distro_initramfs: bool,
    epoch: Option<i64>,
    cache: &Path,
    progress: Progress,
    cancel: Cancel,
) -> Result<PathBuf> {
    let mut h = Sha256::new();
    h.update(format!(
        "{:?}\0{:?}\0{:?}\0{:?}\0{:?}\0{:?}\0{:?}",
        m.suite, m.variant, m.packages, m.components, m.mirror, m.keyring, epoch
    ));
    h.update(arch.debian());
    if !distro_initramfs {
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
    let result = run_mmdebstrap(m, arch, distro_initramfs, epoch, &partial, progress, cancel);
    if let Err(e) = result {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &tar).with_context(|| format!("storing {}", tar.display()))?;
    Ok(tar)
}
