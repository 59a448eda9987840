//! `oneimage-init`: the `/init` of oneimage's initramfs.
//!
//! It mounts the kernel filesystems, loads the modules the builder listed, waits for the
//! disk holding the root partition named on the kernel command line, checks and mounts
//! it, and hands over to the real init. Every decision is logged to the console with a
//! `oneimage-init:` prefix. As PID 1 it must never exit (the kernel would panic without
//! a word): an error or a panic ends on the emergency path, which offers a shell and
//! restarts the machine when nobody takes it.
//!
//! The same program is the initramfs's `reboot` and `poweroff` (links to `/init`), for
//! the emergency shell.

mod bootmark;
mod cmdline;
mod disks;
mod emergency;
mod firstboot;
mod grow;
mod log;
mod modules;
mod mounts;
mod run;

use std::convert::Infallible;
use std::time::Duration;

fn main() {
    if let Some(action) = emergency::power_action_from_argv0() {
        emergency::power_command(action);
    }
    std::panic::set_hook(Box::new(emergency::panic_hook));
    // The agent's profile unwinds (panic = "unwind", the default): a panic anywhere below
    // comes back here, after the hook has logged it. Under panic = "abort" the hook
    // itself takes the emergency path.
    let reason = match std::panic::catch_unwind(|| {
        mounts::kernel_filesystems();
        log::say("starting");
        run()
    }) {
        Ok(Ok(never)) => match never {},
        Ok(Err(e)) => {
            log::say(&format!("error: {e}"));
            e
        }
        Err(_) => "the agent panicked (see the message above)".to_string(),
    };
    emergency::enter(&reason)
}

/// Finds, checks and mounts the root, then becomes its init; returns only on failure.
fn run() -> Result<Infallible, String> {
    let cmd = cmdline::read()?;
    log::say(&format!(
        "command line: root={} esp={} mode={}",
        cmd.root_partuuid,
        cmd.esp_partuuid.as_deref().unwrap_or("(not given)"),
        cmd.mode_name()
    ));
    if cmd.test_panic {
        // A test hook (see cmdline::Cmdline::test_panic): harmless in production, since
        // a panic only leads to the emergency path.
        panic!("oneimage.test-panic=1 is on the kernel command line: panicking on purpose");
    }
    modules::load_listed();
    let choice = disks::wait_for_root(
        &cmd.root_partuuid,
        cmd.esp_partuuid.as_deref(),
        Duration::from_secs(cmd.root_wait_secs),
    )?;
    let (found, ambiguous) = match choice {
        disks::Choice::One(found) => (found, false),
        disks::Choice::Ambiguous(mut all) => {
            let names: Vec<String> = all.iter().map(|f| f.node.display().to_string()).collect();
            log::say(&format!(
                "{} partitions claim the root {} ({}): copies of one image that never booted, or clones",
                all.len(),
                cmd.root_partuuid,
                names.join(", ")
            ));
            // Live and disc boots write nothing, not even to clear a mark.
            let marked = if cmd.live || all.iter().any(|f| f.optical) {
                None
            } else {
                bootmark::pick(&all)
            };
            match marked {
                Some(i) => (all.swap_remove(i), false),
                None => {
                    log::say("not guessing which of them to write");
                    (all.into_iter().next().expect("two or more"), true)
                }
            }
        }
    };
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
    } else if ambiguous {
        log::say(&format!(
            "booting live from {}: nothing is written to any of them (boot with only one attached, or from the one whose first boot gave it its own identity)",
            root.display()
        ));
        mounts::mount_live(&root)?;
    } else if cmd.live {
        // Live: nothing may be written, not even by a filesystem check or journal replay.
        mounts::mount_live(&root)?;
    } else {
        // The check comes first: a filesystem e2fsck could not repair is never mounted
        // read-write, and no first-boot step runs on its disk (they write the table and
        // the filesystem's superblock).
        match mounts::check_root(&root) {
            mounts::Check::Usable => {
                // A failed first-boot step is reported but does not stop the boot: the
                // system still works, and the next boot tries again.
                let pending = firstboot::before_mount(&found, cmd.grow).unwrap_or_else(|e| {
                    log::say(&format!("first boot: {e}"));
                    None
                });
                mounts::mount_root(&root, cmd.read_only)?;
                if let Some(p) = pending {
                    if cmd.read_only {
                        log::say("first boot: the root is mounted read-only; its filesystem grows on a read-write boot");
                    } else if let Err(e) = firstboot::after_mount(p, &found, "/sysroot") {
                        log::say(&format!("first boot: {e}"));
                    }
                }
            }
            mounts::Check::Damaged(why) => {
                log::say(&format!(
                    "{why}; booting live instead: {} read-only under a RAM overlay, nothing written or grown (repair it with e2fsck -f from another system)",
                    root.display()
                ));
                mounts::mount_live(&root)?;
            }
        }
    }
    mounts::switch_root(&cmd.init)
}
