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

/// Runs `e2fsck -p` on the root when the initramfs has it, and logs the verdict.
pub fn check_root(dev: &Path) {
    let fsck = "/sbin/e2fsck";
    if !Path::new(fsck).exists() {
        say("no e2fsck in the initramfs; mounting without a check");
        return;
    }
    match std::process::Command::new(fsck).arg("-p").arg(dev).status() {
        Ok(s) => match s.code() {
            Some(0) => say(&format!("{} is clean", dev.display())),
            Some(1) => say(&format!("e2fsck repaired {}", dev.display())),
            Some(c) => say(&format!(
                "e2fsck exit code {c} for {}: mounting anyway",
                dev.display()
            )),
            None => say("e2fsck was killed"),
        },
        Err(e) => say(&format!("running {fsck}: {e}")),
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

/// Moves the kernel filesystems into the new root, makes it `/` and executes `init`.
pub fn switch_root(init: &str) -> Result<(), String> {
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

/// Live mode: the root read-only (no journal replay) as the lower layer of an overlay
/// whose upper layer is RAM, mounted at /sysroot. Everything written is lost at power off.
pub fn mount_live(dev: &Path) -> Result<(), String> {
    let lower = "/run/oneimage/lower";
    let rw = "/run/oneimage/rw";
    for d in [lower, rw, NEW_ROOT] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {d}: {e}"))?;
    }
    let noload = std::ffi::CString::new("noload").expect("no NUL");
    mount(
        dev,
        lower,
        "ext4",
        MountFlags::RDONLY,
        Some(noload.as_c_str()),
    )
    .map_err(|e| {
        format!(
            "mounting {} (ext4) read-only on {lower}: {e}",
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
