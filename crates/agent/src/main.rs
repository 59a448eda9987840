//! `oneimage-init`: the `/init` of oneimage's initramfs.
//!
//! It mounts the kernel filesystems, loads the modules the builder listed, waits for the
//! disk holding the root partition named on the kernel command line, checks and mounts
//! it, and hands over to the real init. Every decision is logged to the console with a
//! `oneimage-init:` prefix; on failure it says why and starts an emergency shell if the
//! initramfs has one, instead of letting the kernel panic without a word.

mod cmdline;
mod disks;
mod grow;
mod log;
mod modules;
mod mounts;

use std::time::Duration;

fn main() {
    mounts::kernel_filesystems();
    log::say("starting");
    if let Err(e) = run() {
        log::say(&format!("error: {e}"));
        emergency();
    }
}

fn run() -> Result<(), String> {
    let cmd = cmdline::read()?;
    log::say(&format!(
        "command line: root={} mode={}",
        cmd.root_partuuid,
        cmd.mode_name()
    ));
    modules::load_listed();
    let found =
        disks::wait_for_partition(&cmd.root_partuuid, Duration::from_secs(cmd.root_wait_secs))?;
    let root = found.node.clone();
    log::say(&format!(
        "root partition {} is {}",
        cmd.root_partuuid,
        root.display()
    ));
    if found.optical {
        // A disc is never written: the root is read-only under a RAM overlay, as live.
        log::say("booted from a disc: live mode, nothing is written or grown");
        mounts::mount_live(&root)?;
    } else if cmd.live {
        // Live: nothing may be written, not even by a filesystem check or journal replay.
        mounts::mount_live(&root)?;
    } else {
        // A failed growth is reported but does not stop the boot: the system still works.
        if let Err(e) = grow::grow_partition(&found, cmd.grow) {
            log::say(&format!("could not grow the root partition: {e}"));
        }
        mounts::check_root(&root);
        mounts::mount_root(&root, cmd.read_only)?;
        if !cmd.read_only {
            if let Err(e) = grow::grow_filesystem(&found, "/sysroot") {
                log::say(&format!("could not grow the root filesystem: {e}"));
            }
        }
    }
    mounts::switch_root(&cmd.init)
}

/// Starts `/bin/sh` if the initramfs has one; otherwise waits forever (PID 1 must not exit).
fn emergency() -> ! {
    if std::path::Path::new("/bin/sh").exists() {
        log::say("starting an emergency shell (/bin/sh); the boot cannot continue");
        let _ = std::process::Command::new("/bin/sh").status();
    } else {
        log::say("no emergency shell in the initramfs; the boot cannot continue");
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
