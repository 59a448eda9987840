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
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

const MARKER: &str = "oneimage-demo: booted";
const PASSPHRASE: &str = "correct horse battery staple";
/// Text of a file of the image's root (the demo's unit), to look for in the raw disk.
const ROOT_TEXT: &str = "Announce that the oneimage demo booted";

fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// `examples/EXAMPLE.toml` built once per test binary (tests boot copies), and the
/// build's log.
fn example(name: &str) -> (PathBuf, String) {
    static BUILT: Mutex<BTreeMap<String, (PathBuf, String)>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(b) = built.get(name) {
        return b.clone();
    }
    let out = tmp().join(name);
    let _ = std::fs::remove_dir_all(&out);
    let o = output(
        oneimage()
            .arg("build")
            .arg(repo().join(format!("examples/{name}.toml")))
            .arg("-o")
            .arg(&out)
            .arg("--rootfs-cache")
            .arg(tmp().join("rootfs-cache")),
    );
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{log}");
    let b = (out.join(format!("{name}.img")), log);
    built.insert(name.to_string(), b.clone());
    b
}

/// The image encrypted on its first boot.
fn encrypted_demo() -> PathBuf {
    let (image, log) = example("debian-encrypt-first-boot");
    assert!(
        log.contains("the root partition keeps 32.0 MiB after the filesystem for the LUKS2 header"),
        "{log}"
    );
    image
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

/// Decrypts the first `len` bytes of the LUKS2 data segment at `offset` of `part` with
/// the volume key `key` (see [`decrypt_at`]).
fn decrypt_start(part: &Path, key: &[u8], offset: u64, sector: u64, len: u64) -> Vec<u8> {
    decrypt_at(part, key, offset, 0, sector, len)
}

/// After the first boot: partition 2 of `image` is LUKS2 (aes-xts-plain64, argon2id),
/// opens with `passphrase` and no other, fills the disk, and the ext4 inside, decrypted
/// here with the volume key cryptsetup gives, fills the LUKS2 device. Nothing of the
/// root's plaintext is left on the disk.
fn assert_encrypted(image: &Path, passphrase: &str, dir: &Path) {
    let part = extract_partition(image, 2, dir);
    let p = part.to_str().unwrap();
    let dump = luks2_dump(&part);
    assert_eq!(field(&dump, "Label"), "oneimage-root", "{dump}");
    assert!(!dump.contains("online-reencrypt"), "finished: {dump}");
    assert_opens_only_with(&part, passphrase, "not the passphrase");
    assert!(
        !file_contains(image, ROOT_TEXT),
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
    // inspect reads the header as cryptsetup does.
    let h = &root["luks2"];
    assert_eq!(h["uuid"], field(&dump, "UUID"), "{h}");
    assert_eq!(h["checksum_ok"], true, "{h}");
    assert_eq!(h["keyslots"][0]["kdf"], "argon2id", "{h}");
    assert_eq!(h["segments"][0]["cipher"], "aes-xts-plain64", "{h}");
    assert_eq!(h["requirements"], serde_json::json!([]), "{h}");
    let disk = std::fs::metadata(image).unwrap().len();
    let end = root["offset"].as_u64().unwrap() + root["size"].as_u64().unwrap();
    assert!(disk - end < 2 << 20, "root ends at {end} of {disk}");
    let key_file = dir.join("volume-key");
    let key = dump_volume_key(Path::new(p), passphrase, &key_file);
    assert_eq!(key.len(), 64, "a 512-bit aes-xts key");
    let offset = luks_data_offset(&dump);
    let sector: u64 = field(&dump, "sector")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let start = dir.join("decrypted-start.img");
    std::fs::write(&start, decrypt_start(&part, &key, offset, sector, 1 << 20)).unwrap();
    // Only the superblock is there: dumpe2fs prints it, then fails to read the journal
    // further on, which is not part of what was decrypted.
    let o = output(
        Command::new("dumpe2fs")
            .arg("-h")
            .arg(&start)
            .env("LC_ALL", "C"),
    );
    let sb = String::from_utf8_lossy(&o.stdout).into_owned();
    assert_eq!(field(&sb, "Filesystem magic number"), "0xEF53", "{sb}");
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
    let image = sparse_copy(&encrypted_demo(), d.path(), "disk.img");
    let len = std::fs::metadata(&image).unwrap().len();
    assert!(
        file_contains(&image, ROOT_TEXT),
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

/// The image that offers encryption.
fn offer_demo() -> PathBuf {
    example("debian-encrypt-offer").0
}

/// A copy of the encrypted demo in `dir` after its first boot, on a disk three times
/// the image.
fn encrypted_copy(dir: &Path) -> PathBuf {
    let image = sparse_copy(&encrypted_demo(), dir, "disk.img");
    let len = std::fs::metadata(&image).unwrap().len();
    let mut args = vec!["--disk-size".to_string(), (3 * len).to_string()];
    args.extend(new_passphrase_answers(PASSPHRASE));
    let console = boot(&image, &args);
    assert_steps(
        &console,
        "first boot",
        &["oneimage-init: first boot: every step done"],
    );
    image
}

fn unlock_answer(p: &str) -> [String; 2] {
    [
        "--answer".into(),
        format!("Passphrase to unlock /dev/vda2={p}"),
    ]
}

#[test]
#[ignore = "campaign (scripts/encryption.sh)"]
fn wrong_passphrases_are_refused_without_a_write_and_the_right_one_boots() {
    let d = tempfile::tempdir().unwrap();
    let image = encrypted_copy(d.path());
    let before = sha256(&image);
    // Three wrong ones: said so, and the choice to try again or power off, which is
    // taken; nothing is written.
    let mut args: Vec<String> = ["one", "two", "three"]
        .iter()
        .flat_map(|w| unlock_answer(&format!("wrong {w}")))
        .collect();
    args.extend(["--answer".into(), "type poweroff=poweroff".into()]);
    let console = boot_console(
        &image,
        "oneimage-init: powering off",
        1200,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_steps(
        &console,
        "three wrong passphrases",
        &[
            "oneimage-init: wrong passphrase (1 of 3)",
            "oneimage-init: wrong passphrase (3 of 3)",
            "oneimage-init: 3 wrong passphrases for /dev/vda2: nothing was written to the disk",
            "Press Enter to try again, or type poweroff: ",
        ],
    );
    assert!(!console.contains("panic"), "{console}");
    assert_eq!(
        sha256(&image),
        before,
        "a wrong passphrase changed the disk"
    );
    // Three wrong, Enter to try again, then the right one.
    let mut args: Vec<String> = ["a", "b", "c"]
        .iter()
        .flat_map(|w| unlock_answer(&format!("wrong {w}")))
        .collect();
    args.extend(["--answer".into(), "type poweroff=".into()]);
    args.extend(unlock_answer(PASSPHRASE));
    let console = boot(&image, &args);
    assert_steps(
        &console,
        "wrong, wrong, wrong, again, right",
        &[
            "oneimage-init: 3 wrong passphrases for /dev/vda2",
            "oneimage-init: /dev/vda2 unlocked as /dev/mapper/oneimage-root",
            MARKER,
        ],
    );
}

#[test]
#[ignore = "campaign (scripts/encryption.sh)"]
fn a_declined_offer_boots_unencrypted_and_is_not_asked_again() {
    let d = tempfile::tempdir().unwrap();
    let image = sparse_copy(&offer_demo(), d.path(), "disk.img");
    let len = std::fs::metadata(&image).unwrap().len();
    let console = boot(
        &image,
        &[
            "--disk-size".into(),
            (3 * len).to_string(),
            "--answer".into(),
            "(Enter alone: no encryption): =".into(),
        ],
    );
    assert_steps(
        &console,
        "declined",
        &[
            "first boot: a new copy on /dev/vda; steps: identity, encrypt, grow-partition, grow-filesystem",
            "oneimage-init: first boot: step encrypt done: declined; the root stays unencrypted and this copy is not asked again",
            "oneimage-init: mounted /dev/vda2 on /sysroot read-write",
            "oneimage-init: first boot: every step done",
        ],
    );
    let j = inspect(&image);
    assert_eq!(j["first_boot"]["encryption"]["policy"], "offer", "{j}");
    assert_eq!(j["first_boot"]["encryption"]["outcome"], "declined", "{j}");
    let root = j["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["number"] == 2)
        .unwrap()
        .clone();
    assert_eq!(root["filesystem"]["kind"], "ext4", "{root}");
    assert!(root["luks2"].is_null(), "{root}");
    assert_fills_disk(&image, &root);
    let again = boot(&image, &[]);
    assert_steps(
        &again,
        "second boot",
        &["first boot: done on an earlier boot", MARKER],
    );
    assert!(
        !again.contains("Choose a passphrase"),
        "asked again:\n{again}"
    );
}

#[test]
#[ignore = "campaign (scripts/encryption.sh)"]
fn the_live_entry_unlocks_read_only_and_writes_nothing() {
    let d = tempfile::tempdir().unwrap();
    let image = encrypted_copy(d.path());
    let before = sha256(&image);
    let mut args = vec!["--entry".to_string(), "live".into()];
    args.extend(unlock_answer(PASSPHRASE));
    let console = boot_console(
        &image,
        MARKER,
        1200,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_steps(
        &console,
        "live",
        &[
            "oneimage-init: /dev/vda2 unlocked as /dev/mapper/oneimage-root (read-only)",
            "oneimage-init: live: /dev/mapper/oneimage-root read-only under a RAM overlay",
            MARKER,
        ],
    );
    assert_eq!(sha256(&image), before, "the live entry changed the disk");
}

/// Decrypts the whole data segment of partition 2 of `image` into `out` with the volume
/// key the passphrase gives: the plain filesystem, for e2fsprogs to read.
fn decrypt_root(image: &Path, passphrase: &str, dir: &Path, out: &Path) {
    let part = extract_partition(image, 2, dir);
    let p = part.to_str().unwrap();
    let (_, dump) = cryptsetup(&["luksDump", p], b"");
    let number = |key: &str| -> u64 {
        field(&dump, key)
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (offset, sector) = (number("offset"), number("sector"));
    let key_file = dir.join("volume-key");
    let key = dump_volume_key(Path::new(p), passphrase, &key_file);
    let len = std::fs::metadata(&part).unwrap().len() - offset;
    let mut w = std::fs::File::create(out).unwrap();
    let chunk = 64 << 20;
    let mut done = 0;
    while done < len {
        let n = chunk.min(len - done);
        w.write_all(&decrypt_at(&part, &key, offset, done, sector, n))
            .unwrap();
        done += n;
    }
    std::fs::remove_file(part).unwrap();
    std::fs::remove_file(key_file).unwrap();
}

/// Seconds the step `what` took on `console`, from its line `... {what} ... (N s)` or
/// `... {what} N s`.
fn seconds(console: &str, what: &str) -> f64 {
    let line = console
        .lines()
        .find(|l| l.contains(what))
        .unwrap_or_else(|| panic!("{what:?} missing from the console:\n{console}"));
    let at = line.find(what).unwrap() + what.len();
    line[at..]
        .trim_start_matches([' ', '('])
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no seconds after {what:?} in {line:?}"))
}

/// How long, in ms, the first boot's `what` (a step whose time the console reports
/// after `what`) takes on this machine now: measured on a copy of `image` booted
/// through, unless `env` gives it. Cut points are spread over that span.
fn measured_span(image: &Path, env: &str, what: &str, answers: &[String]) -> u64 {
    if std::env::var(env).is_ok() {
        return env_number(env, 0);
    }
    let d = tempfile::tempdir_in(tmp()).unwrap();
    let copy = sparse_copy(image, d.path(), "measure.img");
    let len = std::fs::metadata(&copy).unwrap().len();
    let mut args = vec!["--disk-size".to_string(), (3 * len).to_string()];
    args.extend(answers.iter().cloned());
    let console = boot(&copy, &args);
    let ms = (seconds(&console, what) * 1000.0) as u64;
    eprintln!("{what}: {ms} ms on this machine now; the cuts are spread over it");
    ms.max(1)
}

#[test]
#[ignore = "campaign (scripts/encryption.sh)"]
fn power_cuts_all_through_the_encryption_are_resumed() {
    // Seeded points spread over the whole encryption (argon2's benchmark included), as
    // long as it takes on this machine now; each cut copy is booted again, answered
    // either way (a cut before cryptsetup wrote its header asks for a new passphrase).
    let cuts = env_number("ONEIMAGE_POWER_CUTS", 4);
    let mut rng = Seeded(env_number("ONEIMAGE_POWER_CUT_SEED", 1));
    let span = measured_span(
        &encrypted_demo(),
        "ONEIMAGE_ENCRYPT_CUT_SPAN_MS",
        "encrypted in",
        &new_passphrase_answers(PASSPHRASE),
    );
    let want = {
        let f = repo().join("examples/debian-overlay/etc/systemd/system/oneimage-demo.service");
        sha256(&f)
    };
    for i in 0..cuts {
        let ms = rng.below(span);
        let d = tempfile::tempdir_in(tmp()).unwrap();
        let image = sparse_copy(&encrypted_demo(), d.path(), "disk.img");
        let len = std::fs::metadata(&image).unwrap().len();
        let mut args = vec!["--disk-size".to_string(), (3 * len).to_string()];
        args.extend(new_passphrase_answers(PASSPHRASE));
        let cut = cut_power(
            &image,
            "oneimage-init: encrypting /dev/vda2 in place",
            ms,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        let encrypted_before_cut = cut.contains("step encrypt done");
        let mut args = new_passphrase_answers(PASSPHRASE);
        args.extend([
            "--answer".into(),
            format!("Passphrase to finish encrypting the disk={PASSPHRASE}"),
        ]);
        args.extend(unlock_answer(PASSPHRASE));
        let console = boot(&image, &args);
        eprintln!(
            "power cut {i}: {ms} ms into the encryption{}; resumed: {}",
            if encrypted_before_cut {
                " (after it finished)"
            } else {
                ""
            },
            console
                .lines()
                .filter(|l| l.contains("first boot:") || l.contains("finish"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        assert_steps(
            &console,
            &format!("the boot after a cut {ms} ms into the encryption"),
            &[
                "oneimage-init: /dev/mapper/oneimage-root is clean",
                "oneimage-init: first boot: every step done",
                MARKER,
            ],
        );
        assert_encrypted(&image, PASSPHRASE, d.path());
        // The host's e2fsck on the decrypted root, and a file of the image unchanged.
        let plain = d.path().join("root-plain.img");
        decrypt_root(&image, PASSPHRASE, d.path(), &plain);
        e2fsck_clean(&plain);
        let unit = debugfs(&plain, "cat /etc/systemd/system/oneimage-demo.service");
        let got = {
            use sha2::Digest;
            sha2::Sha256::digest(unit.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        assert_eq!(got, want, "the demo's unit changed after a cut at {ms} ms");
    }
}

/// The image encrypted when built.
fn build_key_demo() -> PathBuf {
    let (image, log) = example("debian-encrypt-build-key");
    assert!(
        log.contains("the root is LUKS2 (aes-xts-plain64, argon2id) under the public passphrase \"oneimage\""),
        "{log}"
    );
    image
}

/// The image's documented passphrase (examples/debian-encrypt-build-key.toml).
const PUBLIC: &str = "oneimage";

/// The volume key of partition 2 of `image`, as cryptsetup gives it for `passphrase`.
fn volume_key(image: &Path, passphrase: &str, dir: &Path) -> Vec<u8> {
    let part = extract_partition(image, 2, dir);
    let key_file = dir.join("volume-key");
    let key = dump_volume_key(&part, passphrase, &key_file);
    std::fs::remove_file(key_file).unwrap();
    std::fs::remove_file(part).unwrap();
    key
}

#[test]
fn a_build_key_image_opens_with_its_public_passphrase_until_its_first_boot_rekeys_it() {
    let d = tempfile::tempdir().unwrap();
    let built = build_key_demo();
    // As built: LUKS2 that the host's cryptsetup reads and opens with the public
    // passphrase; the root's plaintext is nowhere in the image.
    let part = extract_partition(&built, 2, d.path());
    let p = part.to_str().unwrap();
    let (code, dump) = cryptsetup(&["luksDump", p], b"");
    assert_eq!(code, Some(0), "{dump}");
    assert_eq!(field(&dump, "cipher"), "aes-xts-plain64", "{dump}");
    assert_eq!(field(&dump, "PBKDF"), "argon2id", "{dump}");
    let test = ["open", "--test-passphrase", "--key-file", "-", p];
    assert_eq!(cryptsetup(&test, PUBLIC.as_bytes()).0, Some(0));
    assert_eq!(cryptsetup(&test, b"not it").0, Some(2));
    std::fs::remove_file(&part).unwrap();
    assert!(
        !file_contains(&built, ROOT_TEXT),
        "plaintext in the built image"
    );
    let build_key = volume_key(&built, PUBLIC, d.path());

    let image = sparse_copy(&built, d.path(), "disk.img");
    let len = std::fs::metadata(&image).unwrap().len();
    let mut args = vec!["--disk-size".to_string(), (3 * len).to_string()];
    args.extend(new_passphrase_answers(PASSPHRASE));
    let console = boot(&image, &args);
    assert_steps(
        &console,
        "first boot",
        &[
            "was encrypted when the image was built, with a passphrase anyone can read: choose your own",
            "oneimage-init: /dev/vda2: the public passphrase no longer opens it",
            "oneimage-init: re-encrypting /dev/vda2 with a new volume key",
            "oneimage-init: first boot: step encrypt done: the root is LUKS2",
            "oneimage-init: mounted /dev/mapper/oneimage-root on /sysroot read-write",
            "oneimage-init: first boot: every step done",
        ],
    );
    let part = extract_partition(&image, 2, d.path());
    let p = part.to_str().unwrap();
    let test = ["open", "--test-passphrase", "--key-file", "-", p];
    assert_eq!(
        cryptsetup(&test, PUBLIC.as_bytes()).0,
        Some(2),
        "the public passphrase still opens the copy"
    );
    assert_eq!(cryptsetup(&test, PASSPHRASE.as_bytes()).0, Some(0));
    let (_, after) = cryptsetup(&["luksDump", p], b"");
    assert_ne!(
        field(&after, "UUID"),
        field(&dump, "UUID"),
        "the copy keeps the image's LUKS2 UUID"
    );
    std::fs::remove_file(&part).unwrap();
    let own_key = volume_key(&image, PASSPHRASE, d.path());
    assert_eq!(own_key.len(), build_key.len());
    assert_ne!(own_key, build_key, "the volume key is still the build's");
    // The filesystem inside has the copy's own UUID, the one its identity step chose.
    let chosen = console
        .lines()
        .find_map(|l| l.split("step identity done: ").nth(1))
        .and_then(|l| l.split("root filesystem ").nth(1))
        .and_then(|l| l.split(',').next())
        .unwrap_or_else(|| panic!("no identity line:\n{console}"))
        .to_string();
    assert_eq!(fs_uuid_inside(&image, PASSPHRASE, d.path()), chosen);
    assert_ne!(fs_uuid_inside(&built, PUBLIC, d.path()), chosen);
    // Later boots unlock as any encrypted copy's do (the first-boot encryption's test).
}

/// The UUID of the ext4 filesystem inside the LUKS2 root of `image`, read with
/// `passphrase` (its superblock decrypted here with the volume key cryptsetup gives).
fn fs_uuid_inside(image: &Path, passphrase: &str, dir: &Path) -> String {
    let part = extract_partition(image, 2, dir);
    let (code, dump) = cryptsetup(&["luksDump", part.to_str().unwrap()], b"");
    assert_eq!(code, Some(0), "{dump}");
    let offset = luks_data_offset(&dump);
    let key_file = dir.join("volume-key");
    let key = dump_volume_key(&part, passphrase, &key_file);
    let start = dir.join("decrypted-start.img");
    std::fs::write(&start, decrypt_at(&part, &key, offset, 0, 512, 1 << 20)).unwrap();
    let o = output(
        Command::new("dumpe2fs")
            .arg("-h")
            .arg(&start)
            .env("LC_ALL", "C"),
    );
    let sb = String::from_utf8_lossy(&o.stdout).into_owned();
    let uuid = field(&sb, "Filesystem UUID").to_string();
    for f in [part, key_file, start] {
        std::fs::remove_file(f).unwrap();
    }
    uuid
}

#[test]
#[ignore = "campaign (scripts/encryption.sh)"]
fn a_build_key_image_boots_live_from_a_dvd_with_its_public_passphrase() {
    let console = boot_console(
        &build_key_demo(),
        MARKER,
        1200,
        &["--snapshot", "--media", "cdrom"],
    );
    assert_steps(
        &console,
        "DVD",
        &[
            "oneimage-init: /dev/loop0p2 unlocked as /dev/mapper/oneimage-root (read-only)",
            "oneimage-init: booted from a disc: live mode",
            MARKER,
        ],
    );
    assert!(
        !console.contains("Passphrase to unlock"),
        "asked for the public passphrase:\n{console}"
    );
}

#[test]
#[ignore = "campaign (scripts/encryption.sh)"]
fn power_cuts_all_through_the_rekey_are_resumed() {
    // The rekey (about 2.5 min under TCG): the passphrase change, then cryptsetup's
    // re-encryption. Cuts land anywhere in it; the next boot is answered every way.
    let cuts = env_number("ONEIMAGE_POWER_CUTS", 3);
    let mut rng = Seeded(env_number("ONEIMAGE_POWER_CUT_SEED", 1));
    let span = measured_span(
        &build_key_demo(),
        "ONEIMAGE_REKEY_CUT_SPAN_MS",
        "has its own passphrase and volume key",
        &new_passphrase_answers(PASSPHRASE),
    );
    // Seeded cuts anywhere, then two in cryptsetup's finish, where it wipes the old
    // key's keyslot and its own (40 passes each on a disk that says it is rotational):
    // a cut there leaves a header cryptsetup cannot resume from.
    let mut points: Vec<(&str, u64)> = (0..cuts)
        .map(|_| ("oneimage-init: Repeat the passphrase", rng.below(span)))
        .collect();
    points.extend([
        ("oneimage-init: reencrypt: 100%", 0),
        ("oneimage-init: reencrypt: 100%", 1500),
    ]);
    for (i, (trigger, ms)) in points.into_iter().enumerate() {
        let d = tempfile::tempdir_in(tmp()).unwrap();
        let image = sparse_copy(&build_key_demo(), d.path(), "disk.img");
        let len = std::fs::metadata(&image).unwrap().len();
        let mut args = vec!["--disk-size".to_string(), (3 * len).to_string()];
        args.extend(new_passphrase_answers(PASSPHRASE));
        let cut = cut_power(
            &image,
            trigger,
            ms,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        );
        // Said before the next boot is judged, so that a failing point can be found again.
        eprintln!(
            "rekey power cut {i}: {ms} ms after {trigger:?}; the agent's last lines before it: {}",
            cut.lines()
                .filter(|l| l.starts_with("oneimage-init:"))
                .rev()
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let mut args = new_passphrase_answers(PASSPHRASE);
        for prompt in [
            "Passphrase to finish encrypting the disk",
            "Passphrase chosen for the disk",
            "Passphrase to unlock /dev/vda2",
        ] {
            args.extend(["--answer".into(), format!("{prompt}={PASSPHRASE}")]);
        }
        let console = boot(&image, &args);
        eprintln!(
            "rekey power cut {i}: {ms} ms after {trigger:?}; then: {}",
            console
                .lines()
                .filter(|l| l.contains("first boot:") || l.contains("/dev/vda2:"))
                .collect::<Vec<_>>()
                .join(" | ")
        );
        let what = format!("the boot after a cut {ms} ms after {trigger:?} in the rekey");
        assert_steps(
            &console,
            &what,
            &["oneimage-init: /dev/mapper/oneimage-root is clean", MARKER],
        );
        // A cut after the first boot's end (the span is measured on a machine whose load
        // changes) leaves nothing to finish.
        assert!(
            console.contains("oneimage-init: first boot: every step done")
                || console.contains("oneimage-init: first boot: done on an earlier boot"),
            "{what}: the first boot's steps were not finished:\n{console}"
        );
        let part = extract_partition(&image, 2, d.path());
        let p = part.to_str().unwrap();
        let test = ["open", "--test-passphrase", "--key-file", "-", p];
        assert_eq!(cryptsetup(&test, PUBLIC.as_bytes()).0, Some(2));
        assert_eq!(cryptsetup(&test, PASSPHRASE.as_bytes()).0, Some(0));
        std::fs::remove_file(&part).unwrap();
        let plain = d.path().join("root-plain.img");
        decrypt_root(&image, PASSPHRASE, d.path(), &plain);
        e2fsck_clean(&plain);
    }
}

#[test]
#[ignore = "campaign (scripts/encryption.sh)"]
fn a_compressed_root_expands_straight_into_luks2() {
    // examples/debian-squashfs-encrypted.toml: the expansion's new partition is made a
    // LUKS2 volume first and the ext4 root made inside it.
    let d = tempfile::tempdir_in(tmp()).unwrap();
    let image = sparse_copy(
        &example("debian-squashfs-encrypted").0,
        d.path(),
        "disk.img",
    );
    let mut args = vec!["--disk-size".to_string(), (3u64 << 30).to_string()];
    args.extend(new_passphrase_answers(PASSPHRASE));
    let console = boot(&image, &args);
    assert_steps(
        &console,
        "first boot",
        &[
            "oneimage-init: expanding: /dev/vda4 becomes a LUKS2 volume (aes-xts-plain64, argon2id)",
            "oneimage-init: first boot: step expand done: the root is now /dev/vda4 (ext4, read-write) inside LUKS2",
            "oneimage-init: /dev/vda4 unlocked as /dev/mapper/oneimage-root",
            "oneimage-init: first boot: every step done",
        ],
    );
    let j = inspect(&image);
    assert_eq!(j["first_boot"]["encryption"]["outcome"], "encrypted", "{j}");
    let part = extract_partition(&image, 4, d.path());
    let p = part.to_str().unwrap();
    let (code, dump) = cryptsetup(&["luksDump", p], b"");
    assert_eq!(code, Some(0), "{dump}");
    assert_eq!(field(&dump, "cipher"), "aes-xts-plain64", "{dump}");
    assert_eq!(field(&dump, "PBKDF"), "argon2id", "{dump}");
    let test = ["open", "--test-passphrase", "--key-file", "-", p];
    assert_eq!(cryptsetup(&test, PASSPHRASE.as_bytes()).0, Some(0));
    assert!(
        !file_contains(&part, ROOT_TEXT),
        "the expanded root holds plaintext"
    );
    std::fs::remove_file(&part).unwrap();
    let again = boot(
        &image,
        &[
            "--answer".into(),
            format!("Passphrase to unlock /dev/vda4={PASSPHRASE}"),
        ],
    );
    assert_steps(
        &again,
        "second boot",
        &[
            "the root is the expanded partition 4",
            "oneimage-init: /dev/vda4 unlocked as /dev/mapper/oneimage-root",
            MARKER,
        ],
    );
}
