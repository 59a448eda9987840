//! Filling the expanded root from an EROFS factory copy: `fsck.erofs --extract`, then
//! what it leaves out put back from the kernel's read-only mount of the same copy.
//!
//! erofs-utils 1.5 (Debian 12) extracts every file's data, owner, mode and time, and
//! device nodes, fast: it decompresses in userspace, where the kernel's EROFS reads the
//! same data at about half the speed under emulation (measured: reading every file
//! through the mount takes 11 s, extracting everything 13 s). But it writes each
//! hardlink as a file of its own, sets the owner after the mode (which clears set-user-ID
//! and set-group-ID bits), and writes no extended attributes (file capabilities, ACLs).
//! One walk of the mount puts those back.

use rustix::fs::{XattrFlags, CWD};
use std::collections::HashMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// fsck.erofs in the initramfs (from a root that has erofs-utils: the builder installs it
/// in an EROFS root).
pub const FSCK_EROFS: &str = "/sbin/fsck.erofs";

/// What the walk put back.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    /// Paths made hardlinks again.
    pub hardlinks: u64,
    /// Set-user-ID, set-group-ID or sticky bits set again.
    pub modes: u64,
    /// Extended attributes written.
    pub xattrs: u64,
}

/// Extracts the EROFS on `node` into `target` (the new root, mounted), as root.
pub fn extract(node: &Path, target: &Path) -> Result<(), String> {
    crate::run::tool(
        FSCK_EROFS,
        &[
            &format!("--extract={}", target.display()),
            "--overwrite",
            "--preserve",
            &node.display().to_string(),
        ],
    )
}

/// The largest list of attribute names, and the largest value, Linux allows (64 KiB).
const XATTR_MAX: usize = 64 << 10;

/// Walks `factory` (the EROFS mounted read-only) and makes `target` (what fsck.erofs
/// extracted from it) hold the same hardlinks, mode bits and extended attributes; the
/// times of directories whose entries changed are set back.
pub fn restore(factory: &Path, target: &Path) -> Result<Restored, String> {
    let mut w = Walk {
        first_path: HashMap::new(),
        names: vec![0u8; XATTR_MAX],
        value: vec![0u8; XATTR_MAX],
        done: Restored::default(),
    };
    let meta =
        std::fs::symlink_metadata(factory).map_err(|e| format!("{}: {e}", factory.display()))?;
    w.attributes(factory, &meta, target)?;
    w.dir(factory, target)?;
    Ok(w.done)
}

struct Walk {
    /// The target path of the first link met of each multiply linked inode.
    first_path: HashMap<u64, std::path::PathBuf>,
    names: Vec<u8>,
    value: Vec<u8>,
    done: Restored,
}

impl Walk {
    fn dir(&mut self, src: &Path, dst: &Path) -> Result<(), String> {
        let mut entries: Vec<_> = std::fs::read_dir(src)
            .map_err(|e| format!("reading {}: {e}", src.display()))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("reading {}: {e}", src.display()))?;
        entries.sort();
        let mut relinked = false;
        for name in entries {
            let (s, d) = (src.join(&name), dst.join(&name));
            let meta =
                std::fs::symlink_metadata(&s).map_err(|e| format!("{}: {e}", s.display()))?;
            if meta.is_file() && meta.nlink() > 1 {
                if let Some(first) = self.first_path.get(&meta.ino()) {
                    std::fs::remove_file(&d)
                        .and_then(|()| std::fs::hard_link(first, &d))
                        .map_err(|e| {
                            format!("linking {} to {}: {e}", d.display(), first.display())
                        })?;
                    self.done.hardlinks += 1;
                    relinked = true;
                    continue;
                }
                self.first_path.insert(meta.ino(), d.clone());
            }
            self.attributes(&s, &meta, &d)?;
            if meta.is_dir() {
                self.dir(&s, &d)?;
            }
        }
        if relinked {
            // Linking changed the directory's times; fsck.erofs had set them as the
            // factory copy has them (both to the modification time).
            let meta = std::fs::metadata(src).map_err(|e| format!("{}: {e}", src.display()))?;
            let t = rustix::fs::Timespec {
                tv_sec: meta.mtime(),
                tv_nsec: meta.mtime_nsec() as _,
            };
            let times = rustix::fs::Timestamps {
                last_access: t,
                last_modification: t,
            };
            rustix::fs::utimensat(CWD, dst, &times, rustix::fs::AtFlags::empty())
                .map_err(|e| format!("setting the times of {}: {e}", dst.display()))?;
        }
        Ok(())
    }

    /// The mode bits and extended attributes of `src` (whose metadata is `meta`) given
    /// to `dst`.
    fn attributes(
        &mut self,
        src: &Path,
        meta: &std::fs::Metadata,
        dst: &Path,
    ) -> Result<(), String> {
        let mode = meta.mode() & 0o7777;
        if !meta.file_type().is_symlink() && mode & 0o7000 != 0 {
            std::fs::set_permissions(dst, std::fs::Permissions::from_mode(mode))
                .map_err(|e| format!("setting the mode of {}: {e}", dst.display()))?;
            self.done.modes += 1;
        }
        let n = match rustix::fs::llistxattr(src, &mut self.names[..]) {
            Ok(n) => n,
            Err(rustix::io::Errno::NOTSUP) => 0,
            Err(e) => return Err(format!("listing the attributes of {}: {e}", src.display())),
        };
        let names = self.names[..n].to_vec();
        for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
            let name = std::ffi::CString::new(name).expect("split at NULs");
            let len = rustix::fs::lgetxattr(src, name.as_c_str(), &mut self.value[..])
                .map_err(|e| format!("reading {name:?} of {}: {e}", src.display()))?;
            rustix::fs::lsetxattr(
                dst,
                name.as_c_str(),
                &self.value[..len],
                XattrFlags::empty(),
            )
            .map_err(|e| format!("writing {name:?} on {}: {e}", dst.display()))?;
            self.done.xattrs += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hardlinks_modes_and_attributes_are_put_back() {
        // The host's filesystems stand in for the EROFS mount and the extracted copy.
        let d = tempfile::tempdir().unwrap();
        let (src, dst) = (d.path().join("src"), d.path().join("dst"));
        for root in [&src, &dst] {
            std::fs::create_dir_all(root.join("bin")).unwrap();
            std::fs::create_dir_all(root.join("sbin")).unwrap();
            std::fs::write(root.join("bin/tool"), "x").unwrap();
            std::fs::write(root.join("sbin/tool"), "x").unwrap();
            std::fs::write(root.join("bin/su"), "su").unwrap();
        }
        std::fs::remove_file(src.join("sbin/tool")).unwrap();
        std::fs::hard_link(src.join("bin/tool"), src.join("sbin/tool")).unwrap();
        std::fs::set_permissions(src.join("bin/su"), std::fs::Permissions::from_mode(0o4755))
            .unwrap();
        rustix::fs::lsetxattr(
            src.join("bin/tool"),
            "user.oneimage",
            b"kept",
            XattrFlags::empty(),
        )
        .expect("the test's directory takes user extended attributes");
        let r = restore(&src, &dst).unwrap();
        assert_eq!(r.hardlinks, 1);
        assert_eq!(r.modes, 1);
        let (a, b) = (
            std::fs::metadata(dst.join("bin/tool")).unwrap(),
            std::fs::metadata(dst.join("sbin/tool")).unwrap(),
        );
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
        let su = std::fs::metadata(dst.join("bin/su")).unwrap();
        assert_eq!(su.mode() & 0o7777, 0o4755);
        assert_eq!(
            std::fs::metadata(dst.join("sbin")).unwrap().mtime(),
            std::fs::metadata(src.join("sbin")).unwrap().mtime()
        );
        assert_eq!(r.xattrs, 1);
        let mut v = [0u8; 16];
        let n = rustix::fs::lgetxattr(dst.join("bin/tool"), "user.oneimage", &mut v[..]).unwrap();
        assert_eq!(&v[..n], b"kept");
    }
}
