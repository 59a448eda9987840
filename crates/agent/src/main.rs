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
mod console;
mod crypt;
mod disks;
mod emergency;
mod erofs_extract;
mod expand;
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

/// A boot from a writable disk: the first-boot steps, then the root unlocked when it
/// is encrypted, checked and mounted read-write (or live, when it cannot be: a damaged
/// filesystem, a compressed root that could not be expanded).
fn persistent(
    cmd: &cmdline::Cmdline,
    found: &disks::Found,
    compressed: Option<&str>,
    encryption: oneimage_format::encryption::Settings,
) -> Result<(), String> {
    let live = |node: &std::path::Path, why: String| {
        log::say(&format!(
            "{why}; booting live instead: {} read-only under a RAM overlay, nothing written or grown (repair it with e2fsck -f from another system)",
            node.display()
        ));
        mounts::mount_live(node, compressed)
    };
    let encrypted = crypt::header(&found.node)?.is_some();
    // An ext4 root is checked first: a filesystem e2fsck could not repair is never
    // mounted read-write, and no first-boot step runs on its disk (they write the table
    // and the filesystem's superblock). An expanded or encrypted root is checked once
    // it is found, or unlocked.
    if compressed.is_none() && !encrypted {
        if let mounts::Check::Damaged(why) = mounts::check_root(&found.node) {
            return live(&found.node, why);
        }
    }
    // A failed first-boot step is reported but does not stop the boot: the system
    // still works, and the next boot tries again.
    let outcome = firstboot::before_mount(found, compressed, cmd.grow, &encryption);
    let (mut root, pending, passphrase) = match outcome {
        firstboot::Outcome::Live => return mounts::mount_live(&found.node, compressed),
        firstboot::Outcome::Persistent {
            root,
            pending,
            passphrase,
        } => (root, pending, passphrase),
    };
    let unlock = crypt::header(&root.node)?.is_some();
    if unlock {
        root = crypt::unlock(&root, cmd.read_only, encryption.discards, passphrase)?;
    }
    if root.number != found.number || unlock {
        if let mounts::Check::Damaged(why) = mounts::check_root(&root.node) {
            return live(&root.node, format!("the root: {why}"));
        }
    }
    if let (Some(p), true, false) = (&pending, unlock, cmd.read_only) {
        if let Err(e) = firstboot::settle_unlocked_uuid(p, &root) {
            log::say(&format!("first boot: {e}"));
        }
    }
    mounts::mount_root(&root.node, cmd.read_only)?;
    if let Some(p) = pending {
        if cmd.read_only {
            log::say("first boot: the root is mounted read-only; its filesystem grows on a read-write boot");
        } else if let Err(e) = firstboot::after_mount(*p, &root, "/sysroot") {
            log::say(&format!("first boot: {e}"));
        }
    }
    Ok(())
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
    let mut root = found.node.clone();
    log::say(&format!(
        "root partition {} is {}",
        cmd.root_partuuid,
        root.display()
    ));
    let encryption = crypt::settings();
    let persistent_boot = !(found.optical || ambiguous || cmd.live);
    if !persistent_boot {
        if let Some(h) = crypt::header(&root)? {
            // Live: unlocked read-only; nothing is written, not even a recovery.
            if h.reencrypt_in_progress() {
                return Err(format!(
                    "the encryption of {} was cut short: boot it persistent (not live, not from a disc) to finish it",
                    root.display()
                ));
            }
            // A root still under the image's public key opens with the public
            // passphrase, unasked.
            let public = encryption
                .build_key
                .as_ref()
                .filter(|f| h.digests.contains(&f.digest))
                .map(|f| zeroize::Zeroizing::new(f.passphrase.as_bytes().to_vec()));
            root = crypt::unlock(&found, true, false, public)?.node;
        }
    }
    // A SquashFS or EROFS root is read-only: booted live, or expanded into ext4 first.
    let compressed = expand::compressed_kind(&root);
    if let Some(kind) = compressed {
        log::say(&format!(
            "the root filesystem is {kind} (compressed, read-only)"
        ));
    }
    if found.optical {
        // A disc is never written: the root is read-only under a RAM overlay, as live.
        log::say("booted from a disc: live mode, nothing is written or grown");
        mounts::mount_live(&root, compressed)?;
    } else if ambiguous {
        log::say(&format!(
            "booting live from {}: nothing is written to any of them (boot with only one attached, or from the one whose first boot gave it its own identity)",
            root.display()
        ));
        mounts::mount_live(&root, compressed)?;
    } else if cmd.live {
        // Live: nothing may be written, not even by a filesystem check or journal replay.
        mounts::mount_live(&root, compressed)?;
    } else {
        persistent(&cmd, &found, compressed, encryption)?;
    }
    mounts::switch_root(&cmd.init)
}
