//! Finding the kernel and initramfs inside a root filesystem.

use crate::rootfs::{Kind, Tree};
use anyhow::{bail, Context, Result};
use oneimage_format::arch::Arch;
use std::cmp::Ordering;
use std::io::Read;
use std::path::PathBuf;

/// A kernel image and its initramfs, as staged files.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// Kernel release, e.g. `6.1.0-56-amd64`.
    pub version: String,
    /// Kernel image in the staging directory.
    pub image: PathBuf,
    /// The initramfs to boot with: the root filesystem's own (staged), if it has one,
    /// until the builder makes its own.
    pub initrd: Option<PathBuf>,
}

impl Kernel {
    /// Refuses a kernel built for another architecture than the image's `arch`.
    pub fn check_arch(&self, arch: Arch) -> Result<()> {
        let mut head = Vec::with_capacity(4096);
        std::fs::File::open(&self.image)
            .and_then(|f| f.take(4096).read_to_end(&mut head))
            .with_context(|| format!("reading kernel {}", self.image.display()))?;
        match oneimage_format::arch::kernel_arch(&head) {
            Some(k) if k != arch => bail!(
                "kernel {} is for {k}, but the image is for {arch} (set architecture = \"{k}\", or install the {arch} kernel)",
                self.version
            ),
            _ => Ok(()),
        }
    }
}

/// Compares kernel releases numerically where they are numbers (`6.10` > `6.9`).
pub fn version_cmp(a: &str, b: &str) -> Ordering {
    let split = |s: &str| -> Vec<(u64, String)> {
        s.split(|c: char| !c.is_ascii_alphanumeric())
            .map(|p| (p.parse::<u64>().unwrap_or(0), p.to_string()))
            .collect()
    };
    split(a).cmp(&split(b))
}

/// Finds the newest kernel and its initramfs, if any: Debian's `/boot/vmlinuz-V` +
/// `/boot/initrd.img-V`, or `/usr/lib/modules/V/vmlinuz` + `initrd`.
pub fn find_kernel(tree: &Tree) -> Result<Kernel> {
    let mut found: Vec<(String, String, Option<String>)> = Vec::new();
    // Only a regular file is copied: a device node of a borrowed directory, say, would
    // copy host data into the image.
    let file = |p: &str| {
        tree.resolve(p)
            .filter(|(_, e)| matches!(e.kind, Kind::File(_) | Kind::Hardlink(_)))
    };
    for (path, e) in &tree.entries {
        if !matches!(e.kind, Kind::File(_) | Kind::Hardlink(_)) {
            continue;
        }
        if let Some(v) = path.strip_prefix("/boot/vmlinuz-") {
            let initrd = [
                format!("/boot/initrd.img-{v}"),
                format!("/boot/initramfs-{v}.img"),
            ]
            .into_iter()
            .find(|p| file(p).is_some());
            found.push((v.to_string(), path.clone(), initrd));
        } else if let Some(rest) = path.strip_prefix("/usr/lib/modules/") {
            if let Some(v) = rest.strip_suffix("/vmlinuz") {
                let initrd =
                    Some(format!("/usr/lib/modules/{v}/initrd")).filter(|p| file(p).is_some());
                found.push((v.to_string(), path.clone(), initrd));
            }
        }
    }
    found.sort_by(|a, b| version_cmp(&a.0, &b.0));
    let Some((version, image, initrd)) = found.pop() else {
        bail!("the root filesystem has no kernel: looked for /boot/vmlinuz-VERSION and /usr/lib/modules/VERSION/vmlinuz (install a kernel package, e.g. linux-image-amd64)");
    };
    let (image, _) = tree.resolve(&image).expect("listed above");
    let initrd = initrd.and_then(|i| file(&i)).map(|(p, _)| tree.staged(&p));
    Ok(Kernel {
        version,
        image: tree.staged(&image),
        initrd,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_version_wins() {
        assert_eq!(
            version_cmp("6.10.0-1-amd64", "6.9.0-3-amd64"),
            Ordering::Greater
        );
        assert_eq!(
            version_cmp("6.1.0-56-amd64", "6.1.0-9-amd64"),
            Ordering::Greater
        );
    }
}
