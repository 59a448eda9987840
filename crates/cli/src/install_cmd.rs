//! `oneimage install`: the arguments, handed to `oneimage_system::install`.

use anyhow::Result;
use oneimage_format::size::format_size;
use oneimage_system::install::{self, EncryptChoice, InstallOptions};
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
    /// Encrypt the copy's root (LUKS2, aes-xts-plain64, argon2id) while it is written,
    /// with a new passphrase: the disk never holds its plaintext. This is the default
    /// for an image that requires encryption or a medium whose root is encrypted; an
    /// image that offers encryption asks.
    #[arg(long, conflicts_with = "no_encrypt")]
    pub encrypt: bool,
    /// Do not encrypt the copy's root (refused where the image requires encryption).
    #[arg(long)]
    pub no_encrypt: bool,
    /// Read the new passphrase from the first line of FILE instead of asking.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
}

/// Asks `prompt` on the terminal with echo off; `None` when there is no terminal.
fn ask_secret(prompt: &str) -> Result<Option<String>> {
    use rustix::termios::{self, LocalModes, OptionalActions};
    use std::io::{BufRead, Write};
    let Ok(tty) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
    else {
        return Ok(None);
    };
    let Ok(old) = termios::tcgetattr(&tty) else {
        return Ok(None);
    };
    let mut quiet = old.clone();
    quiet.local_modes &= !(LocalModes::ECHO | LocalModes::ECHOE | LocalModes::ECHOK);
    quiet.local_modes |= LocalModes::ICANON | LocalModes::ECHONL;
    termios::tcsetattr(&tty, OptionalActions::Now, &quiet)?;
    let mut line = String::new();
    let read = (|| -> std::io::Result<()> {
        (&tty).write_all(prompt.as_bytes())?;
        std::io::BufReader::new(&tty).read_line(&mut line)?;
        Ok(())
    })();
    // Echo back on, whatever happened.
    termios::tcsetattr(&tty, OptionalActions::Now, &old)?;
    read?;
    Ok(Some(line.trim_end_matches(['\n', '\r']).to_string()))
}

/// Runs `oneimage install`; `cancel` is set when the user interrupts it.
pub fn run(a: InstallArgs, cancel: Option<Arc<AtomicBool>>) -> Result<()> {
    let say = |m: &str| eprintln!("oneimage: install: {m}");
    let Some(target) = a.target else {
        let medium = install::find_medium()?;
        let view = install::plan(&medium, None, &say)?;
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
            encrypt: match (a.encrypt, a.no_encrypt) {
                (true, _) => EncryptChoice::Encrypt,
                (_, true) => EncryptChoice::Plain,
                _ => EncryptChoice::AsTheImageSays,
            },
            passphrase_file: a.passphrase_file,
        },
        &ask_secret,
        &say,
    )?;
    say(&format!(
        "{} holds the system now ({} written, all of it read back, under its own identity). Restart from it: its first boot grows it to fill the disk",
        target.display(),
        format_size(r.written + r.zeroed)
    ));
    Ok(())
}
