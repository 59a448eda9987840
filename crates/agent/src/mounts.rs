//! Kernel filesystems, checking and mounting the root, and handing over to its init.

use crate::log::say;
use rustix::mount::{mount, mount_move, MountFlags};
use std::os::unix::process::CommandExt;
use std::path::Path;

/// Where the root filesystem is mounted before the switch.
const NEW_ROOT: &str = "/sysroot";

fn mount_fs(source: &str, target: &str, fstype: &str, flags: MountFlags) {
    let _ = std::fs::create_dir_all(target);
    if let Err(e) = mount(source, target, fstype, flags, None::<&std::ffi::CStr>) {
        say(&format!("mounting {fstype} on {target}: {e}"));
    }
}

/// Mounts /proc, /sys, /dev and /run.
pub fn kernel_filesystems() {
    let nosuid = MountFlags::NOSUID | MountFlags::NOEXEC | MountFlags::NODEV;
    mount_fs("proc", "/proc", "proc", nosuid);
    mount_fs("sysfs", "/sys", "sysfs", nosuid);
    mount_fs("devtmpfs", "/dev", "devtmpfs", MountFlags::NOSUID);
    mount_fs(
        "tmpfs",
        "/run",
        "tmpfs",
        MountFlags::NOSUID | MountFlags::NODEV,
    );
}

/// What the check of the root says about using it read-write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Clean, repaired, or not checked (no e2fsck in the initramfs): mount it as asked.
    Usable,
    /// e2fsck left errors, failed or could not run: never mount it read-write or grow
    /// it. Says why.
    Damaged(String),
}

/// Runs `e2fsck -p` on the root when the initramfs has it, and logs the verdict.
pub fn check_root(dev: &Path) -> Check {
    let fsck = "/sbin/e2fsck";
    if !Path::new(fsck).exists() {
        say("no e2fsck in the initramfs; mounting without a check");
        return Check::Usable;
    }
    // e2fsck's messages are for the user; only its exit status is read.
    let status = crate::run::status(fsck, &["-p", &dev.display().to_string()]);
    let check = match status {
        Ok(s) => verdict(
            dev,
            s.code(),
            std::os::unix::process::ExitStatusExt::signal(&s),
        ),
        Err(e) => Check::Damaged(format!("{e} on {}", dev.display())),
    };
    check
}

/// Reads `e2fsck -p`'s exit status (see e2fsck(8)): 0 clean, 1 errors corrected, 2
/// corrected and the system should be rebooted (the root is not mounted yet, so there is
/// nothing to reboot), 4 and up errors left, an operational or usage error, cancelled, a
/// library error.
pub fn verdict(dev: &Path, code: Option<i32>, signal: Option<i32>) -> Check {
    let dev = dev.display();
    match code {
        Some(0) => {
            say(&format!("{dev} is clean"));
            Check::Usable
        }
        Some(c @ (1..=3)) => {
            say(&format!("e2fsck repaired {dev} (exit code {c})"));
            Check::Usable
        }
        Some(c) => {
            let meanings: Vec<&str> = [
                (4, "errors left uncorrected"),
                (8, "operational error"),
                (16, "usage or syntax error"),
                (32, "cancelled"),
                (128, "shared library error"),
            ]
            .iter()
            .filter(|(bit, _)| c & bit != 0)
            .map(|(_, m)| *m)
            .collect();
            let meaning = if meanings.is_empty() {
                "unknown failure".to_string()
            } else {
                meanings.join(", ")
            };
            Check::Damaged(format!("e2fsck exit code {c} for {dev} ({meaning})"))
        }
        None => Check::Damaged(format!(
            "e2fsck was killed by signal {} while checking {dev}",
            signal.unwrap_or(0)
        )),
    }
}

/// Mounts the root filesystem at /sysroot.
pub fn mount_root(dev: &Path, read_only: bool) -> Result<(), String> {
    std::fs::create_dir_all(NEW_ROOT).map_err(|e| format!("creating {NEW_ROOT}: {e}"))?;
    let flags = if read_only {
        MountFlags::RDONLY
    } else {
        MountFlags::empty()
    };
    mount(dev, NEW_ROOT, "ext4", flags, None::<&std::ffi::CStr>)
        .map_err(|e| format!("mounting {} (ext4) on {NEW_ROOT}: {e}", dev.display()))?;
    say(&format!(
        "mounted {} on {NEW_ROOT} {}",
        dev.display(),
        if read_only { "read-only" } else { "read-write" }
    ));
    Ok(())
}

/// Moves the kernel filesystems into the new root, makes it `/` and executes `init`;
/// returns only on failure.
pub fn switch_root(init: &str) -> Result<std::convert::Infallible, String> {
    let target = format!("{NEW_ROOT}{init}");
    if std::fs::symlink_metadata(&target).is_err() {
        return Err(format!("the root filesystem has no {init}"));
    }
    for m in ["/proc", "/sys", "/dev", "/run"] {
        let dest = format!("{NEW_ROOT}{m}");
        let _ = std::fs::create_dir_all(&dest);
        if let Err(e) = mount_move(m, dest.as_str()) {
            say(&format!("moving {m}: {e}"));
        }
    }
    rustix::process::chdir(NEW_ROOT).map_err(|e| format!("chdir {NEW_ROOT}: {e}"))?;
    mount_move(".", "/").map_err(|e| format!("moving {NEW_ROOT} to /: {e}"))?;
    rustix::process::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    rustix::process::chdir("/").map_err(|e| format!("chdir /: {e}"))?;
    say(&format!("switching to {init}"));
    let err = std::process::Command::new(init).exec();
    Err(format!("executing {init}: {err}"))
}

/// Live mode: the root read-only (ext4 without journal replay, or the `compressed`
/// filesystem) as the lower layer of an overlay whose upper layer is RAM, mounted at
/// /sysroot. Everything written is lost at power off.
pub fn mount_live(dev: &Path, compressed: Option<&str>) -> Result<(), String> {
    let lower = "/run/oneimage/lower";
    let rw = "/run/oneimage/rw";
    for d in [lower, rw, NEW_ROOT] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {d}: {e}"))?;
    }
    let (fstype, options) = match compressed {
        Some(kind) => (kind, ""),
        None => ("ext4", "noload"),
    };
    let options = std::ffi::CString::new(options).expect("no NUL");
    mount(
        dev,
        lower,
        fstype,
        MountFlags::RDONLY,
        Some(options.as_c_str()),
    )
    .map_err(|e| {
        format!(
            "mounting {} ({fstype}) read-only on {lower}: {e}",
            dev.display()
        )
    })?;
    mount(
        "tmpfs",
        rw,
        "tmpfs",
        MountFlags::empty(),
        None::<&std::ffi::CStr>,
    )
    .map_err(|e| format!("mounting tmpfs on {rw}: {e}"))?;
    for d in ["upper", "work"] {
        std::fs::create_dir_all(format!("{rw}/{d}"))
            .map_err(|e| format!("creating {rw}/{d}: {e}"))?;
    }
    let opts = std::ffi::CString::new(format!(
        "lowerdir={lower},upperdir={rw}/upper,workdir={rw}/work"
    ))
    .expect("no NUL");
    mount(
        "overlay",
        NEW_ROOT,
        "overlay",
        MountFlags::empty(),
        Some(opts.as_c_str()),
    )
    .map_err(|e| format!("mounting the live overlay on {NEW_ROOT}: {e}"))?;
    say(&format!(
        "live: {} read-only under a RAM overlay on {NEW_ROOT}; nothing will be written to the disk",
        dev.display()
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_clean_or_repaired_root_is_usable() {
        let dev = Path::new("/dev/vda2");
        for code in [0, 1, 2, 3] {
            assert_eq!(verdict(dev, Some(code), None), Check::Usable, "{code}");
        }
        for code in [4, 5, 8, 12, 16, 32, 128, 255] {
            assert!(
                matches!(verdict(dev, Some(code), None), Check::Damaged(_)),
                "{code}"
            );
        }
        let Check::Damaged(why) = verdict(dev, Some(12), None) else {
            panic!("12 is a failure")
        };
        assert_eq!(
            why,
            "e2fsck exit code 12 for /dev/vda2 (errors left uncorrected, operational error)"
        );
        assert!(matches!(verdict(dev, None, Some(9)), Check::Damaged(w) if w.contains("signal 9")));
    }
}
