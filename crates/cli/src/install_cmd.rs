//! `oneimage install`: the arguments, handed to `oneimage_system::install`.

use anyhow::Result;
use oneimage_format::size::format_size;
use oneimage_system::install::{self, InstallOptions};
use oneimage_write::progress::Mode;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Arguments of `oneimage install`.
#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    /// The whole disk to install onto, e.g. /dev/nvme0n1 or /dev/sda. Without it, the
    /// disks of this machine are listed, with why any of them would be refused.
    pub target: Option<PathBuf>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// Runs `oneimage install`; `cancel` is set when the user interrupts it.
pub fn run(a: InstallArgs, cancel: Option<Arc<AtomicBool>>) -> Result<()> {
    let say = |m: &str| eprintln!("oneimage: install: {m}");
    let Some(target) = a.target else {
        let medium = install::find_medium()?;
        let view = install::plan(&medium, &say)?;
        println!(
            "started from {}: a {} image",
            medium.describe(),
            format_size(view.extent)
        );
        let all = install::candidates(&medium, view.extent);
        if all.is_empty() {
            println!("no other disk is attached");
        }
        for c in &all {
            println!("{} (via {})", c.description, c.transport);
            match &c.refused {
                Some(why) => println!("  cannot be used: {why}"),
                None => println!(
                    "  can be used: oneimage install {}",
                    c.device.path.display()
                ),
            }
        }
        return Ok(());
    };
    let r = install::install(
        InstallOptions {
            target: target.clone(),
            yes: a.yes,
            progress: Mode::detect(false),
            cancel,
        },
        &say,
    )?;
    say(&format!(
        "{} holds the system now ({} written, all of it read back, under its own identity). Restart from it: its first boot grows it to fill the disk",
        target.display(),
        format_size(r.written + r.zeroed)
    ));
    Ok(())
}
