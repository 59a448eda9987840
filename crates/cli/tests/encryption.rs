//! The demo encrypted on its first persistent boot (examples/debian-encrypt-first-boot.toml):
//! the passphrase typed on the serial console, the root encrypted in place as LUKS2 and
//! grown, every later boot unlocking it. What the host's cryptsetup and e2fsprogs see
//! afterwards is the proof.
//!
//! The suite runs the first boot and the one after; the rest (wrong passphrases, a
//! declined offer, the live entry, power cuts) are campaign tests
//! (`scripts/encryption.sh`).

mod common;

use common::*;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const MARKER: &str = "oneimage-demo: booted";
const PASSPHRASE: &str = "correct horse battery staple";
/// Text of a file of the image's root (the demo's unit), to look for in the raw disk.
const ROOT_TEXT: &str = "Announce that the oneimage demo booted";

fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// The example built once per test binary; tests boot copies.
fn encrypted_demo() -> PathBuf {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let out = tmp().join("debian-encrypt-first-boot");
            let _ = std::fs::remove_dir_all(&out);
            let o = output(
                oneimage()
                    .arg("build")
                    .arg(repo().join("examples/debian-encrypt-first-boot.toml"))
                    .arg("-o")
                    .arg(&out)
                    .arg("--rootfs-cache")
                    .arg(tmp().join("rootfs-cache")),
            );
            let log = String::from_utf8_lossy(&o.stderr);
            assert!(o.status.success(), "{log}");
            assert!(
                log.contains(
                    "the root partition keeps 32.0 MiB after the filesystem for the LUKS2 header"
                ),
                "{log}"
            );
            out.join("debian-encrypt-first-boot.img")
        })
        .clone()
}

/// A sparse copy of `image` in `dir`.
fn copy(image: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    ok(Command::new("cp")
        .arg("--sparse=always")
        .arg(image)
        .arg(&to));
    to
}

/// `--answer` arguments for the first boot's two questions.
fn new_passphrase_answers(p: &str) -> Vec<String> {
    vec![
        "--answer".into(),
        format!("Choose a passphrase to encrypt the disk={p}"),
        "--answer".into(),
        format!("Repeat the passphrase={p}"),
    ]
}

/// Boots `image` in place with `args` to the marker, then shuts it down cleanly.
fn boot(image: &Path, args: &[String]) -> String {
    let args: Vec<&str> = ["--poweroff"]
        .into_iter()
        .chain(args.iter().map(String::as_str))
        .collect();
    boot_console(image, MARKER, 1800, &args)
}

/// Runs cryptsetup on the host (C locale) with `stdin`; returns its exit code and output.
fn cryptsetup(args: &[&str], stdin: &[u8]) -> (Option<i32>, String) {
    let mut child = Command::new("cryptsetup")
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cryptsetup runs (apt-get install cryptsetup-bin)");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let o = child.wait_with_output().unwrap();
    (
        o.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// The value after `key:` on the first line of `dump` that has it.
fn field<'a>(dump: &'a str, key: &str) -> &'a str {
    dump.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(|v| v.trim_start_matches(':').trim())
        .unwrap_or_else(|| panic!("{key} in {dump}"))
}

/// Whether `needle` occurs anywhere in the file `path`, read in 64 MiB pieces.
fn file_contains(path: &Path, needle: &[u8]) -> bool {
    let mut f = std::fs::File::open(path).unwrap();
    let mut buf = vec![0u8; 64 << 20];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            return false;
        }
        carry.extend_from_slice(&buf[..n]);
        if carry.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        let keep = carry.len().saturating_sub(needle.len());
        carry.drain(..keep);
    }
}

/// Decrypts the first `len` bytes of the LUKS2 data segment at `offset` of `part` with
/// the volume key `key` (aes-xts-plain64: the tweak is the segment's 512-byte sector
/// number, whatever the encryption sector size).
fn decrypt_start(part: &Path, key: &[u8], offset: u64, sector: u64, len: u64) -> Vec<u8> {
    use aes::cipher::KeyInit;
    let (k1, k2) = key.split_at(key.len() / 2);
    let xts = xts_mode::Xts128::new(
        aes::Aes256::new_from_slice(k1).unwrap(),
        aes::Aes256::new_from_slice(k2).unwrap(),
    );
    let mut f = std::fs::File::open(part).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    let mut data = vec![0u8; len as usize];
    f.read_exact(&mut data).unwrap();
    for (i, unit) in data.chunks_mut(sector as usize).enumerate() {
        let tweak = xts_mode::get_tweak_default((i as u64 * sector / 512) as u128);
        xts.decrypt_sector(unit, tweak);
    }
    data
}

/// After the first boot: partition 2 of `image` is LUKS2 (aes-xts-plain64, argon2id),
/// opens with `passphrase` and no other, fills the disk, and the ext4 inside, decrypted
/// here with the volume key cryptsetup gives, fills the LUKS2 device. Nothing of the
/// root's plaintext is left on the disk.
fn assert_encrypted(image: &Path, passphrase: &str, dir: &Path) {
    let part = extract_partition(image, 2, dir);
    let p = part.to_str().unwrap();
    let (code, dump) = cryptsetup(&["luksDump", p], b"");
    assert_eq!(code, Some(0), "{dump}");
    assert_eq!(field(&dump, "Version"), "2", "{dump}");
    assert_eq!(field(&dump, "cipher"), "aes-xts-plain64", "{dump}");
    assert_eq!(field(&dump, "PBKDF"), "argon2id", "{dump}");
    assert_eq!(field(&dump, "Label"), "oneimage-root", "{dump}");
    assert_eq!(field(&dump, "length"), "(whole device)", "{dump}");
    assert!(!dump.contains("online-reencrypt"), "finished: {dump}");
    let test = ["open", "--test-passphrase", "--key-file", "-", p];
    let (code, out) = cryptsetup(&test, passphrase.as_bytes());
    assert_eq!(code, Some(0), "the passphrase opens it: {out}");
    let (code, out) = cryptsetup(&test, b"not the passphrase");
    assert_eq!(code, Some(2), "another does not: {out}");
    assert!(
        !file_contains(image, ROOT_TEXT.as_bytes()),
        "plaintext left on the disk"
    );

    // The partition reaches the end of the disk; the filesystem fills the LUKS2 device.
    let j = inspect(image);
    let root = j["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["number"] == 2)
        .unwrap()
        .clone();
    let disk = std::fs::metadata(image).unwrap().len();
    let end = root["offset"].as_u64().unwrap() + root["size"].as_u64().unwrap();
    assert!(disk - end < 2 << 20, "root ends at {end} of {disk}");
    let key_file = dir.join("volume-key");
    let (code, out) = cryptsetup(
        &[
            "luksDump",
            "--dump-volume-key",
            "--volume-key-file",
            key_file.to_str().unwrap(),
            "--batch-mode",
            "--key-file",
            "-",
            p,
        ],
        passphrase.as_bytes(),
    );
    assert_eq!(code, Some(0), "{out}");
    let key = std::fs::read(&key_file).unwrap();
    assert_eq!(key.len(), 64, "a 512-bit aes-xts key");
    let offset: u64 = field(&dump, "offset")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let sector: u64 = field(&dump, "sector")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let start = dir.join("decrypted-start.img");
    std::fs::write(&start, decrypt_start(&part, &key, offset, sector, 1 << 20)).unwrap();
    let sb = ok(Command::new("dumpe2fs")
        .arg("-h")
        .arg(&start)
        .env("LC_ALL", "C"));
    let blocks: u64 = field(&sb, "Block count").parse().unwrap();
    let block: u64 = field(&sb, "Block size").parse().unwrap();
    let device = std::fs::metadata(&part).unwrap().len() - offset;
    assert!(
        device - blocks * block < block,
        "the filesystem ({blocks} blocks of {block}) fills the LUKS2 device ({device} bytes)"
    );
    for f in [part, key_file, start] {
        std::fs::remove_file(f).unwrap();
    }
}

#[test]
fn first_boot_encrypts_in_place_and_every_boot_after_unlocks() {
    let d = tempfile::tempdir().unwrap();
    let image = copy(&encrypted_demo(), d.path(), "disk.img");
    let len = std::fs::metadata(&image).unwrap().len();
    assert!(
        file_contains(&image, ROOT_TEXT.as_bytes()),
        "the image as built holds the root's text in the clear (else the check below proves nothing)"
    );
    let mut args = vec!["--disk-size".to_string(), (3 * len).to_string()];
    args.extend(new_passphrase_answers(PASSPHRASE));
    let console = boot(&image, &args);
    assert_steps(
        &console,
        "first boot",
        &[
            "first boot: a new copy on /dev/vda; steps: identity, encrypt, grow-partition, grow-filesystem",
            "oneimage-init: encrypting /dev/vda2 in place",
            "oneimage-init: first boot: step encrypt done: the root is LUKS2",
            "oneimage-init: /dev/vda2 unlocked as /dev/mapper/oneimage-root",
            "oneimage-init: mounted /dev/mapper/oneimage-root on /sysroot read-write",
            "oneimage-init: first boot: every step done",
        ],
    );
    assert!(
        !console.contains(PASSPHRASE),
        "the passphrase was echoed:\n{console}"
    );
    assert_encrypted(&image, PASSPHRASE, d.path());
    let j = inspect(&image);
    assert_eq!(j["first_boot"]["encryption"]["outcome"], "encrypted", "{j}");

    let again = boot(
        &image,
        &[
            "--answer".into(),
            format!("Passphrase to unlock /dev/vda2={PASSPHRASE}"),
        ],
    );
    assert_steps(
        &again,
        "second boot",
        &[
            "first boot: done on an earlier boot",
            "oneimage-init: /dev/vda2 unlocked as /dev/mapper/oneimage-root",
            "oneimage-init: /dev/mapper/oneimage-root is clean",
            MARKER,
        ],
    );
}
