//! The root's encryption: LUKS2 written in place by cryptsetup on the first boot, and
//! unlocked on every boot after. cryptsetup, its libraries and dm-crypt's modules are
//! in the initramfs only when the image asks for encryption.
//!
//! The in-place encryption is `cryptsetup reencrypt --encrypt --reduce-device-size`: the
//! builder left the room its header needs after the filesystem, so nothing is shrunk,
//! and only the image's partition is rewritten (before it grows). cryptsetup keeps its
//! progress in the LUKS2 header, so an encryption cut short (power loss) is finished by
//! the next boot, which asks for the passphrase again.

use crate::console;
use crate::disks::Found;
use crate::log::say;
use oneimage_format::encryption::{Policy, Settings, MAPPING, POLICY_PATH};
use oneimage_format::luks2;
use oneimage_format::Guid;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use zeroize::Zeroizing;

const CRYPTSETUP: &str = "/sbin/cryptsetup";

/// A passphrase, wiped from memory when dropped.
pub type Passphrase = Zeroizing<Vec<u8>>;

/// Wrong passphrases in a row before the boot says so and asks what to do.
const TRIES: u32 = 3;

/// The image's encryption settings, from the initramfs (none there: `off`).
pub fn settings() -> Settings {
    match std::fs::read_to_string(POLICY_PATH) {
        Ok(text) => Settings::parse(&text).unwrap_or_else(|e| {
            say(&format!(
                "{POLICY_PATH}: {e}; the root's encryption is left as it is"
            ));
            Settings::default()
        }),
        Err(_) => Settings::default(),
    }
}

/// The LUKS2 header at the start of `node`, if it holds one. A LUKS header this agent
/// cannot read (LUKS1, damaged) is an error: it is never taken for a plain filesystem.
pub fn header(node: &Path) -> Result<Option<luks2::Header>, String> {
    let mut f =
        std::fs::File::open(node).map_err(|e| format!("opening {}: {e}", node.display()))?;
    let mut start = vec![0u8; luks2::BINARY_LEN];
    f.read_exact(&mut start)
        .map_err(|e| format!("reading {}: {e}", node.display()))?;
    if !luks2::is_luks(&start) {
        return Ok(None);
    }
    let len = luks2::header_len(&start).ok_or_else(|| {
        format!(
            "{} holds a LUKS header that is not LUKS2, which oneimage does not open",
            node.display()
        )
    })?;
    let mut all = start;
    all.resize(len, 0);
    f.read_exact(&mut all[luks2::BINARY_LEN..])
        .map_err(|e| format!("reading {}: {e}", node.display()))?;
    luks2::read(&all)
        .map(Some)
        .map_err(|e| format!("the LUKS2 header of {}: {e}", node.display()))
}

/// Runs cryptsetup with `args`, the passphrase on its standard input (read whole, as
/// `--key-file -` says, so no line end is added), its messages on the console.
fn cryptsetup(args: &[&str], passphrase: &[u8]) -> Result<std::process::ExitStatus, String> {
    let mut child = Command::new(CRYPTSETUP)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {CRYPTSETUP}: {e}"))?;
    if let Some(mut input) = child.stdin.take() {
        // A cryptsetup that stopped early closes its end: its exit status says why.
        let _ = input.write_all(passphrase);
    }
    child
        .wait()
        .map_err(|e| format!("waiting for {CRYPTSETUP}: {e}"))
}

/// cryptsetup's exit status for "no key available with this passphrase".
const WRONG_PASSPHRASE: i32 = 2;

/// What a cryptsetup run that needs a passphrase came to.
enum Ran {
    Done,
    WrongPassphrase,
}

fn run(args: &[&str], passphrase: &[u8]) -> Result<Ran, String> {
    let s = cryptsetup(args, passphrase)?;
    match s.code() {
        Some(0) => Ok(Ran::Done),
        Some(WRONG_PASSPHRASE) => Ok(Ran::WrongPassphrase),
        Some(c) => Err(format!(
            "cryptsetup {} failed (exit code {c})",
            args.join(" ")
        )),
        None => Err(format!("cryptsetup {} was killed", args.join(" "))),
    }
}

/// What the user chose when asked to encrypt.
pub enum Choice {
    /// Encrypt with this passphrase.
    Encrypt(Passphrase),
    /// Leave the root plain (only where the policy allows it).
    Decline,
}

/// Asks for a new passphrase, twice, on every console; an empty one declines where
/// `policy` allows it.
pub fn ask_new(policy: Policy, dev: &Path) -> Result<Choice, String> {
    let dev = dev.display();
    console::tell_all(&format!(
        "this copy's root, {dev}, is encrypted on its first boot (LUKS2, aes-xts-plain64, argon2id); the passphrase is asked on every boot after"
    ));
    loop {
        let question = if policy.may_decline() {
            "Choose a passphrase to encrypt the disk (Enter alone: no encryption): "
        } else {
            "Choose a passphrase to encrypt the disk: "
        };
        let first = console::ask_secret(question).ok_or("no console to ask for a passphrase on")?;
        if first.is_empty() {
            if policy.may_decline() {
                return Ok(Choice::Decline);
            }
            console::tell_all("this image requires encryption: the passphrase cannot be empty");
            continue;
        }
        let again = console::ask_secret("Repeat the passphrase: ")
            .ok_or("no console to ask for a passphrase on")?;
        if first != again {
            console::tell_all("the two passphrases differ; once more");
            continue;
        }
        return Ok(Choice::Encrypt(first));
    }
}

/// Encrypts the plain filesystem on `node` in place as LUKS2 with `passphrase`; the
/// header gets `uuid` (derived from the copy's seed, so a redone step writes the same).
pub fn encrypt(node: &Path, passphrase: &[u8], uuid: Guid) -> Result<(), String> {
    let dev = node.display().to_string();
    let uuid = uuid.to_string();
    let reduce = format!("{}M", oneimage_format::encryption::HEADER_ROOM >> 20);
    say(&format!(
        "encrypting {dev} in place (its data is read, encrypted and written back; a power cut is resumed by the next boot)"
    ));
    let args = [
        "reencrypt",
        "--encrypt",
        "--type",
        "luks2",
        "--cipher",
        "aes-xts-plain64",
        "--key-size",
        "512",
        "--pbkdf",
        "argon2id",
        "--reduce-device-size",
        &reduce,
        "--uuid",
        &uuid,
        "--label",
        MAPPING,
        "--key-file",
        "-",
        "--batch-mode",
        "--progress-frequency",
        "5",
        &dev,
    ];
    match run(&args, passphrase)? {
        Ran::Done => Ok(()),
        Ran::WrongPassphrase => Err(format!("cryptsetup refused the new passphrase for {dev}")),
    }
}

/// Finishes an encryption of `node` that a power cut interrupted, asking for its
/// passphrase (cryptsetup recovers what the cut left first).
pub fn resume(node: &Path) -> Result<Passphrase, String> {
    let dev = node.display().to_string();
    say(&format!(
        "the encryption of {dev} was cut short; it goes on once its passphrase is given"
    ));
    loop {
        let pass = console::ask_secret("Passphrase to finish encrypting the disk: ")
            .ok_or("no console to ask for a passphrase on")?;
        let args = [
            "reencrypt",
            "--resume-only",
            "--key-file",
            "-",
            "--batch-mode",
            "--progress-frequency",
            "5",
            &dev,
        ];
        match run(&args, &pass)? {
            Ran::Done => return Ok(pass),
            Ran::WrongPassphrase => console::tell_all("wrong passphrase"),
        }
    }
}

/// The unlocked root: `node` opened as `/dev/mapper/oneimage-root`, with `passphrase`
/// when this boot already has it, else asked on the consoles. After a few wrong ones
/// the user chooses to try again or power off; nothing here panics or gives up.
pub fn unlock(
    found: &Found,
    read_only: bool,
    discards: bool,
    passphrase: Option<Passphrase>,
) -> Result<Found, String> {
    let dev = found.node.display().to_string();
    let mut args = vec!["open", "--type", "luks2", "--key-file", "-"];
    if read_only {
        args.push("--readonly");
    } else if discards {
        args.push("--allow-discards");
    }
    args.extend([dev.as_str(), MAPPING]);
    let mapped = || Found {
        node: PathBuf::from(format!("/dev/mapper/{MAPPING}")),
        ..found.clone()
    };
    if let Some(p) = passphrase {
        if let Ran::Done = run(&args, &p)? {
            say(&format!("{dev} unlocked as /dev/mapper/{MAPPING}"));
            return Ok(mapped());
        }
    }
    loop {
        for attempt in 1..=TRIES {
            let pass = console::ask_secret(&format!("Passphrase to unlock {dev}: "))
                .ok_or("no console to ask for the passphrase on")?;
            match run(&args, &pass)? {
                Ran::Done => {
                    say(&format!(
                        "{dev} unlocked as /dev/mapper/{MAPPING}{}",
                        if read_only { " (read-only)" } else { "" }
                    ));
                    return Ok(mapped());
                }
                Ran::WrongPassphrase => {
                    console::tell_all(&format!("wrong passphrase ({attempt} of {TRIES})"))
                }
            }
        }
        console::tell_all(&format!(
            "{TRIES} wrong passphrases for {dev}: nothing was written to the disk"
        ));
        let answer = console::ask_line("Press Enter to try again, or type poweroff: ", None);
        if answer.as_deref() == Some("poweroff") {
            crate::emergency::power(rustix::system::RebootCommand::PowerOff);
        }
    }
}
