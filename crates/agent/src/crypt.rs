//! The root's encryption: LUKS2 written in place by cryptsetup on the first boot, and
//! unlocked on every boot after. cryptsetup, its libraries and dm-crypt's modules are
//! in the initramfs only when the image asks for encryption.
//!
//! The in-place encryption is `cryptsetup reencrypt --encrypt --reduce-device-size`: the
//! builder left the room its header needs after the filesystem, so nothing is shrunk,
//! and only the image's partition is rewritten (before it grows). cryptsetup keeps its
//! progress in the LUKS2 header, so an encryption cut short (power loss) is finished by
//! the next boot, which asks for the passphrase again.
//!
//! An image encrypted when it was built (`build-key`) is re-keyed instead ([`rekey`]):
//! its public passphrase replaced by the user's, then its data re-encrypted to a new
//! volume key, each part told from the header, so that a cut anywhere is finished too;
//! a cut in cryptsetup's own last clean-up, which it cannot resume, is finished here
//! ([`finish_cut_rekey`]).

use crate::console;
use crate::disks::Found;
use crate::log::say;
use oneimage_format::encryption::{BuildKeyFacts, Policy, Settings, MAPPING, POLICY_PATH};
use oneimage_format::luks2;
use oneimage_format::Guid;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use zeroize::Zeroizing;

const CRYPTSETUP: &str = "/sbin/cryptsetup";

/// The LUKS2 volumes oneimage makes, in place or new: aes-xts-plain64 with a 512-bit
/// key, argon2id.
const LUKS2_FORMAT: [&str; 8] = [
    "--type",
    "luks2",
    "--cipher",
    "aes-xts-plain64",
    "--key-size",
    "512",
    "--pbkdf",
    "argon2id",
];

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
/// `--key-file -` says, so no line end is added), its messages on the console. The
/// progress it reports (`--progress-json`, one JSON object a line on its standard
/// output) is said on the console every 10% or so.
fn cryptsetup(args: &[&str], passphrase: &[u8]) -> Result<std::process::ExitStatus, String> {
    let mut child = Command::new(CRYPTSETUP)
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("running {CRYPTSETUP}: {e}"))?;
    if let Some(mut input) = child.stdin.take() {
        // A cryptsetup that stopped early closes its end: its exit status says why.
        let _ = input.write_all(passphrase);
    }
    if let Some(out) = child.stdout.take() {
        let mut said = None;
        for line in std::io::BufRead::lines(std::io::BufReader::new(out)).map_while(Result::ok) {
            match Progress::parse(&line) {
                Some(p) => {
                    let tenth = p.done * 10 / p.total.max(1);
                    if said != Some(tenth) || p.done == p.total {
                        say(&p.describe(args.first().copied().unwrap_or("cryptsetup")));
                        said = Some(tenth);
                    }
                }
                None => say(&format!("cryptsetup: {line}")),
            }
        }
    }
    child
        .wait()
        .map_err(|e| format!("waiting for {CRYPTSETUP}: {e}"))
}

/// One line of cryptsetup's `--progress-json`.
#[derive(Debug, PartialEq)]
struct Progress {
    done: u64,
    total: u64,
    /// Bytes a second, as cryptsetup measures them.
    speed: u64,
}

impl Progress {
    fn parse(line: &str) -> Option<Progress> {
        let v: serde_json::Value = serde_json::from_str(line).ok()?;
        let n = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_u64().or_else(|| x.as_str()?.parse().ok()))
        };
        Some(Progress {
            done: n("device_bytes")?,
            total: n("device_size")?,
            speed: n("speed").unwrap_or(0),
        })
    }

    fn describe(&self, action: &str) -> String {
        format!(
            "{action}: {}% ({} of {} MiB, {:.1} MiB/s)",
            self.done * 100 / self.total.max(1),
            self.done >> 20,
            self.total >> 20,
            self.speed as f64 / f64::from(1 << 20)
        )
    }
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
    if policy != Policy::BuildKey && !dev.as_os_str().is_empty() {
        console::tell_all(&format!(
            "this copy's root, {}, is encrypted on its first boot (LUKS2, aes-xts-plain64, argon2id); the passphrase is asked on every boot after",
            dev.display()
        ));
    }
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
    let mut args = vec!["reencrypt", "--encrypt"];
    args.extend(LUKS2_FORMAT);
    args.extend([
        "--reduce-device-size",
        &reduce,
        "--uuid",
        &uuid,
        "--label",
        MAPPING,
        "--key-file",
        "-",
        "--batch-mode",
        "--progress-json",
        &dev,
    ]);
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
        // A cut in the middle of a write leaves the segment being written to recover
        // (from the checksums or the moved data cryptsetup kept) before it goes on:
        // `reencrypt --resume-only` refuses until `repair` has done that.
        match run(&["repair", "--batch-mode", "--key-file", "-", &dev], &pass)? {
            Ran::Done => {}
            Ran::WrongPassphrase => {
                console::tell_all("wrong passphrase");
                continue;
            }
        }
        let args = [
            "reencrypt",
            "--resume-only",
            "--key-file",
            "-",
            "--batch-mode",
            "--progress-json",
            &dev,
        ];
        match run(&args, &pass)? {
            Ran::Done => return Ok(pass),
            Ran::WrongPassphrase => console::tell_all("wrong passphrase"),
        }
    }
}

/// Whether `passphrase` opens a keyslot of `node` (`cryptsetup open --test-passphrase`).
/// "No usable keyslot" (exit code 1, as after a passphrase change cut short) is a no,
/// as a wrong passphrase (2) is; anything else is an error.
fn opens(node: &Path, passphrase: &[u8]) -> Result<bool, String> {
    let dev = node.display().to_string();
    let args = ["open", "--test-passphrase", "--key-file", "-", dev.as_str()];
    let s = cryptsetup(&args, passphrase)?;
    match s.code() {
        Some(0) => Ok(true),
        Some(1 | WRONG_PASSPHRASE) => Ok(false),
        Some(c) => Err(format!(
            "cryptsetup {} failed (exit code {c})",
            args.join(" ")
        )),
        None => Err(format!("cryptsetup {} was killed", args.join(" "))),
    }
}

/// A passphrase in a file only this program can read, on the initramfs's RAM
/// filesystem, for the cryptsetup commands that take two; removed when dropped.
struct KeyFile(PathBuf);

impl KeyFile {
    fn new(name: &str, bytes: &[u8]) -> Result<KeyFile, String> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = Path::new("/run/oneimage/keys");
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        let path = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        f.write_all(bytes)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(KeyFile(path))
    }
    fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for KeyFile {
    fn drop(&mut self) {
        if let Ok(len) = std::fs::metadata(&self.0).map(|m| m.len()) {
            let _ = std::fs::write(&self.0, vec![0u8; len as usize]);
        }
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Finishes, from the header alone, a re-key of `node` whose data had all moved to the
/// new volume key when a cut fell in cryptsetup's last clean-up (the wipe of the old
/// key's keyslot or of the re-encryption's own): cryptsetup cannot resume from there,
/// the old key being gone ([`luks2::finish_rekey`]). Says whether it did.
pub fn finish_cut_rekey(node: &Path) -> Result<bool, String> {
    use std::os::unix::fs::FileExt;
    let dev = node.display().to_string();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(node)
        .map_err(|e| format!("opening {dev}: {e}"))?;
    let mut start = vec![0u8; luks2::BINARY_LEN];
    f.read_exact_at(&mut start, 0)
        .map_err(|e| format!("reading {dev}: {e}"))?;
    let Some(len) = luks2::header_len(&start) else {
        return Ok(false);
    };
    let mut both = vec![0u8; 2 * len];
    f.read_exact_at(&mut both, 0)
        .map_err(|e| format!("reading {dev}: {e}"))?;
    let Some(done) =
        luks2::finish_rekey(&both).map_err(|e| format!("the LUKS2 header of {dev}: {e}"))?
    else {
        return Ok(false);
    };
    say(&format!(
        "{dev}: the re-encryption had moved all the data to the new volume key when the power was cut in cryptsetup's clean-up, which cannot be resumed; finishing the header (keyslots {:?} removed, the re-encryption requirement dropped)",
        done.removed_keyslots
    ));
    // The primary copy first, each made durable before the next: a cut between them
    // leaves one sound copy with the higher sequence number, which cryptsetup takes.
    for (i, copy) in done.headers.chunks(len).enumerate() {
        f.write_all_at(copy, (i * len) as u64)
            .and_then(|()| f.sync_all())
            .map_err(|e| format!("writing the LUKS2 header of {dev}: {e}"))?;
    }
    let zeros = vec![0u8; 1 << 20];
    for &(at, n) in &done.unused_areas {
        let mut off = 0;
        while off < n {
            let k = (n - off).min(zeros.len() as u64) as usize;
            f.write_all_at(&zeros[..k], at + off)
                .map_err(|e| format!("wiping an unused keyslot area of {dev}: {e}"))?;
            off += k as u64;
        }
    }
    f.sync_all().map_err(|e| format!("writing {dev}: {e}"))?;
    Ok(true)
}

/// The first persistent boot of an image encrypted at build time: the public
/// passphrase replaced by one the user chooses, then the root re-encrypted to a new
/// volume key (the build's is public), then the header given this copy's `uuid`. Each
/// part is told from the header itself, so a boot cut short anywhere is finished by the
/// next: an interrupted re-encryption resumes; a root whose passphrase was changed
/// but whose volume key is still the build's (its digest is `facts.digest`) is
/// re-encrypted with the passphrase chosen before. Returns the passphrase when this
/// boot was given it.
pub fn rekey(node: &Path, facts: &BuildKeyFacts, uuid: Guid) -> Result<Option<Passphrase>, String> {
    let dev = node.display().to_string();
    let no_header =
        || format!("{dev} holds no LUKS2 header, but this image was encrypted when it was built");
    let mut h = header(node)?.ok_or_else(no_header)?;
    if h.reencrypt_in_progress() && finish_cut_rekey(node)? {
        h = header(node)?.ok_or_else(no_header)?;
    }
    let pass = if h.reencrypt_in_progress() {
        Some(resume(node)?)
    } else if h.digests.iter().any(|d| d == &facts.digest) {
        let new = if opens(node, facts.passphrase.as_bytes())? {
            console::tell_all(&format!(
                "this copy's root, {dev}, was encrypted when the image was built, with a passphrase anyone can read: choose your own; the root is then re-encrypted with a new key"
            ));
            let new = ask_new_required()?;
            let old = KeyFile::new("old", facts.passphrase.as_bytes())?;
            let newf = KeyFile::new("new", &new)?;
            let args = [
                "luksChangeKey",
                "--batch-mode",
                "--pbkdf",
                "argon2id",
                "--key-file",
                &old.arg(),
                &dev,
                &newf.arg(),
            ];
            if let Ran::WrongPassphrase = run(&args, b"")? {
                return Err(format!(
                    "cryptsetup refused the image's public passphrase for {dev}"
                ));
            }
            say(&format!("{dev}: the public passphrase no longer opens it"));
            new
        } else {
            say(&format!(
                "{dev}: its passphrase was changed on an earlier boot, which was cut short before the new key"
            ));
            loop {
                let p = console::ask_secret("Passphrase chosen for the disk: ")
                    .ok_or("no console to ask for a passphrase on")?;
                if opens(node, &p)? {
                    break p;
                }
                console::tell_all("wrong passphrase");
            }
        };
        say(&format!(
            "re-encrypting {dev} with a new volume key (its data is read, re-encrypted and written back; a power cut is resumed by the next boot)"
        ));
        let args = [
            "reencrypt",
            "--key-file",
            "-",
            "--batch-mode",
            "--progress-json",
            &dev,
        ];
        if let Ran::WrongPassphrase = run(&args, &new)? {
            return Err(format!("cryptsetup refused the new passphrase for {dev}"));
        }
        Some(new)
    } else {
        None
    };
    // The header's UUID was the image's, the same in every copy.
    let uuid = uuid.to_string();
    crate::run::tool(
        CRYPTSETUP,
        &["luksUUID", "--batch-mode", "--uuid", &uuid, &dev],
    )?;
    Ok(pass)
}

/// Asks for a new passphrase twice until the two agree and it is not empty.
fn ask_new_required() -> Result<Passphrase, String> {
    match ask_new(Policy::Require, Path::new(""))? {
        Choice::Encrypt(p) => Ok(p),
        Choice::Decline => Err("a passphrase is required".into()),
    }
}

/// A new LUKS2 volume, open while the expansion fills it.
pub struct Volume {
    name: &'static str,
}

/// The mapping's name while the expansion fills it.
const EXPANDING: &str = "oneimage-expanding";

impl Volume {
    /// Makes `node` a new, empty LUKS2 volume (aes-xts-plain64, argon2id, header `uuid`)
    /// with `passphrase`, and opens it.
    pub fn format_and_open(node: &Path, passphrase: &[u8], uuid: Guid) -> Result<Volume, String> {
        let dev = node.display().to_string();
        let uuid = uuid.to_string();
        say(&format!(
            "expanding: {dev} becomes a LUKS2 volume (aes-xts-plain64, argon2id)"
        ));
        let mut args = vec!["luksFormat"];
        args.extend(LUKS2_FORMAT);
        args.extend([
            "--uuid",
            &uuid,
            "--label",
            MAPPING,
            "--key-file",
            "-",
            "--batch-mode",
            &dev,
        ]);
        if let Ran::WrongPassphrase = run(&args, passphrase)? {
            return Err(format!("cryptsetup refused the new passphrase for {dev}"));
        }
        let args = [
            "open",
            "--type",
            "luks2",
            "--key-file",
            "-",
            &dev,
            EXPANDING,
        ];
        if let Ran::WrongPassphrase = run(&args, passphrase)? {
            return Err(format!("{dev}: its new passphrase does not open it"));
        }
        Ok(Volume { name: EXPANDING })
    }

    /// The open volume's device.
    pub fn node(&self) -> PathBuf {
        PathBuf::from(format!("/dev/mapper/{}", self.name))
    }

    /// Closes the volume.
    pub fn close(self) -> Result<(), String> {
        crate::run::tool(CRYPTSETUP, &["close", self.name])
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
    let unlocked = || {
        say(&format!(
            "{dev} unlocked as /dev/mapper/{MAPPING}{}",
            if read_only { " (read-only)" } else { "" }
        ))
    };
    if let Some(p) = passphrase {
        if let Ran::Done = run(&args, &p)? {
            unlocked();
            return Ok(mapped());
        }
    }
    loop {
        for attempt in 1..=TRIES {
            let pass = console::ask_secret(&format!("Passphrase to unlock {dev}: "))
                .ok_or("no console to ask for the passphrase on")?;
            match run(&args, &pass)? {
                Ran::Done => {
                    unlocked();
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Output;

    fn run_host(cmd: &mut Command) -> Output {
        let o = cmd
            .env("LC_ALL", "C")
            .output()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e} (cryptsetup and strace are needed)"));
        o
    }

    /// A LUKS2 file as a build-key image's root partition is: the header made by oneimage
    /// under `pass`, then `plain` encrypted with its volume key. Returns the volume key.
    /// `seed` gives it its UUID: cryptsetup locks a re-encryption by it, so tests that run
    /// at once need their own.
    fn build_key_volume(path: &Path, seed: &str, pass: &str, plain: &[u8]) -> Vec<u8> {
        let made = luks2::make_header(&luks2::BuildKey {
            passphrase: pass.as_bytes(),
            seed,
            uuid: Guid::derive(seed, "luks2"),
            label: MAPPING,
            kdf_memory_kib: 8 << 10,
            kdf_time: 1,
        })
        .unwrap();
        let mut data = plain.to_vec();
        luks2::encrypt_sectors(&made.volume_key, 0, &mut data);
        let mut bytes = made.header.clone();
        bytes.extend(data);
        std::fs::write(path, bytes).unwrap();
        made.volume_key.to_vec()
    }

    fn reencrypt(path: &Path, key_file: &Path) -> Vec<String> {
        [
            "reencrypt",
            "--force-offline-reencrypt",
            "--batch-mode",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--key-file",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([key_file.display().to_string(), path.display().to_string()])
        .collect()
    }

    /// cryptsetup's re-key of a build-key volume, killed at the end of one of its last
    /// wipes (found by tracing a whole run first): the write that wipes the old key's
    /// keyslot (`wipe` = its area's length) or the re-encryption keyslot's (`wipe` =
    /// `None`: the last write of more than 1 MiB made durable with fsync).
    fn rekey_killed_in_the_finish(wipe: Option<usize>) {
        let d = tempfile::tempdir().unwrap();
        let plain: Vec<u8> = (0..4u32 << 20).map(|i| (i * 7 + i / 4096) as u8).collect();
        let pass = d.path().join("pass");
        std::fs::write(&pass, "correct horse").unwrap();
        let traced = d.path().join("traced.luks");
        let old_key = build_key_volume(&traced, &format!("{wipe:?}"), "correct horse", &plain);
        let vol = d.path().join("cut.luks");
        std::fs::copy(&traced, &vol).unwrap();

        // Which fsync follows the wipe: syscalls in order, each write's length.
        let trace = d.path().join("trace");
        let o = run_host(
            Command::new("strace")
                .args(["-s", "0", "-e", "trace=write,fsync", "-o"])
                .arg(&trace)
                .arg("cryptsetup")
                .args(reencrypt(&traced, &pass)),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = std::fs::read_to_string(&trace).unwrap();
        let (mut fsyncs, mut last_write, mut at) = (0, 0usize, None);
        for line in text.lines() {
            if line.starts_with("write(") {
                last_write = line
                    .rsplit("= ")
                    .next()
                    .unwrap()
                    .trim()
                    .parse()
                    .unwrap_or(0);
            } else if line.starts_with("fsync(") {
                fsyncs += 1;
                let hit = match wipe {
                    Some(n) => last_write == n,
                    None => last_write > 1 << 20,
                };
                if hit {
                    at = Some(fsyncs);
                }
            }
        }
        let at = at.unwrap_or_else(|| panic!("no wipe of {wipe:?} bytes in the trace:\n{text}"));

        let o = run_host(
            Command::new("strace")
                .args(["-o", "/dev/null", "-e", "trace=fsync", "-e"])
                .arg(format!("inject=fsync:signal=SIGKILL:when={at}"))
                .arg("cryptsetup")
                .args(reencrypt(&vol, &pass)),
        );
        assert!(!o.status.success(), "cryptsetup was not killed");
        let test = |path: &Path| {
            run_host(
                Command::new("cryptsetup")
                    .args(["open", "--test-passphrase", "--key-file"])
                    .arg(&pass)
                    .arg(path),
            )
            .status
            .code()
        };
        // The state cryptsetup cannot leave: its own resume and open both fail.
        let dump = run_host(Command::new("cryptsetup").arg("luksDump").arg(&vol));
        let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
        assert!(dump.contains("online-reencrypt"), "{dump}");
        assert_ne!(
            test(&vol),
            Some(0),
            "cryptsetup opens the cut volume:\n{dump}"
        );
        let repair = run_host(
            Command::new("cryptsetup")
                .args(["repair", "--batch-mode", "--key-file"])
                .arg(&pass)
                .arg(&vol),
        );
        assert!(!repair.status.success(), "cryptsetup repaired it:\n{dump}");

        assert_eq!(finish_cut_rekey(&vol), Ok(true));
        assert_eq!(
            finish_cut_rekey(&vol),
            Ok(false),
            "finished once is finished"
        );
        assert_eq!(test(&vol), Some(0));
        let dump = run_host(Command::new("cryptsetup").arg("luksDump").arg(&vol));
        let dump = String::from_utf8_lossy(&dump.stdout).into_owned();
        assert!(!dump.contains("Requirements"), "{dump}");
        assert!(!dump.contains("reencrypt"), "{dump}");
        let repair = run_host(
            Command::new("cryptsetup")
                .args(["repair", "--batch-mode"])
                .arg(&vol),
        );
        assert!(
            repair.status.success(),
            "{}",
            String::from_utf8_lossy(&repair.stderr)
        );
        // The data is whole under a new key.
        let key_file = d.path().join("volume-key");
        let o = run_host(
            Command::new("cryptsetup")
                .args([
                    "luksDump",
                    "--dump-volume-key",
                    "--batch-mode",
                    "--volume-key-file",
                ])
                .arg(&key_file)
                .arg("--key-file")
                .arg(&pass)
                .arg(&vol),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let new_key = std::fs::read(&key_file).unwrap();
        assert_ne!(new_key, old_key);
        let mut data = std::fs::read(&vol).unwrap()[luks2::DATA_OFFSET as usize..].to_vec();
        luks2::decrypt_sectors(&new_key, 0, &mut data);
        assert!(
            data == plain,
            "the data decrypted with the new key is not what was written"
        );
    }

    #[test]
    fn a_rekey_cut_while_its_old_keyslot_is_wiped_is_finished() {
        // The area of the keyslot oneimage's build-key header has: 4000 stripes of 64
        // bytes, in whole 4 KiB blocks.
        rekey_killed_in_the_finish(Some(258048));
    }

    #[test]
    fn a_rekey_cut_while_its_reencryption_keyslot_is_wiped_is_finished() {
        rekey_killed_in_the_finish(None);
    }

    #[test]
    fn progress_lines_are_read_and_anything_else_is_not() {
        // As cryptsetup 2.6.1 prints them (numbers as strings): bytes done, of the size.
        let p = Progress::parse(
            r#"{"device":"/dev/vda2","device_bytes":"519045120","device_size":"1038090240","speed":"26214400","eta_ms":"3000","time_ms":"1000"}"#,
        )
        .unwrap();
        assert_eq!(
            p,
            Progress {
                done: 519045120,
                total: 1038090240,
                speed: 26214400
            }
        );
        assert_eq!(
            p.describe("reencrypt"),
            "reencrypt: 50% (495 of 990 MiB, 25.0 MiB/s)"
        );
        assert_eq!(Progress::parse("Finished, time 00m40s"), None);
        assert_eq!(Progress::parse(r#"{"device_bytes":"1"}"#), None);
    }
}
