//! The demo image (examples/debian.toml: Debian 12, systemd, the Debian kernel), built
//! for real once per test run and judged by independent tools and by booting it.
//!
//! The Debian root filesystem is made by mmdebstrap on the first run and cached in the
//! target directory (`--rootfs-cache`), as a distribution's CI would do.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

fn cache() -> PathBuf {
    tmp().join("rootfs-cache")
}

/// The demo image, built once; tests must not modify it (boot copies or `--snapshot`).
fn demo() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let out = tmp().join("debian-demo");
        let _ = std::fs::remove_dir_all(&out);
        ok(oneimage()
            .arg("build")
            .arg(repo().join("examples/debian.toml"))
            .arg("-o")
            .arg(&out)
            .arg("--rootfs-cache")
            .arg(cache()));
        out.join("debian-demo.img")
    })
}

#[test]
fn demo_image_passes_independent_checks() {
    let image = demo();
    let d = tempfile::tempdir().unwrap();
    let verify = ok(Command::new("sgdisk").arg("-v").arg(image));
    assert!(verify.contains("No problems found"), "{verify}");

    let esp = extract_partition(image, 1, d.path());
    ok(Command::new("fsck.fat").arg("-n").arg(&esp));
    let root = extract_partition(image, 2, d.path());
    e2fsck_clean(&root);

    // Ownership, modes and device nodes of the Debian tree survived.
    let shadow = debugfs(&root, "stat /etc/shadow");
    assert!(
        shadow.contains("Mode:  0640") && shadow.contains("Group:    42"),
        "{shadow}"
    );
    assert!(debugfs(&root, "stat /usr/bin/passwd").contains("Mode:  04755"));
    let null = debugfs(&root, "stat /dev/null");
    assert!(
        null.contains("character special") && null.contains("01:03"),
        "{null}"
    );
    // Times: modification times clamped to the spec's epoch (2026-01-01), the rest set to it.
    let passwd = debugfs(&root, "stat /etc/passwd");
    assert!(passwd.contains("ctime: 0x6955b900:00000000"), "{passwd}");
    assert!(passwd.contains("crtime: 0x6955b900:00000000"), "{passwd}");
    let unit = debugfs(&root, "stat /etc/systemd/system/oneimage-demo.service");
    assert!(
        unit.contains("User:     0   Group:     0"),
        "overlay is root-owned: {unit}"
    );

    // inspect agrees with sgdisk, dumpe2fs and the GRUB configuration mtools reads.
    let j = inspect(image);
    let parts = j["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2);
    assert_eq!(parts[0]["type_name"], "esp");
    assert_eq!(parts[0]["filesystem"]["kind"], "vfat");
    assert_eq!(parts[1]["type_name"], "root-x86-64");
    assert_eq!(parts[1]["filesystem"]["kind"], "ext4");
    let files: Vec<&str> = parts[0]["boot_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for want in [
        "/EFI/BOOT/BOOTX64.EFI",
        "/EFI/BOOT/grub.cfg",
        "/oneimage/vmlinuz",
        "/oneimage/initrd.img",
    ] {
        assert!(files.contains(&want), "{want} missing from {files:?}");
    }
    let root_guid = parts[1]["guid"].as_str().unwrap();
    let sg = ok(Command::new("sgdisk").arg("--info=2").arg(image)).to_lowercase();
    assert!(sg.contains(root_guid), "{sg}");
    let dump = ok(Command::new("dumpe2fs").arg("-h").arg(&root));
    let fs_uuid = parts[1]["filesystem"]["uuid"].as_str().unwrap();
    assert!(dump.contains(fs_uuid), "{dump}");
    let cfg = ok(Command::new("mtype")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(&esp)
        .arg("::/EFI/BOOT/grub.cfg"));
    assert!(cfg.contains(&format!("root=PARTUUID={root_guid}")), "{cfg}");
    // oneimage's initramfs, not Debian's (about 35 MiB with initramfs-tools).
    let initrd = parts[0]["boot_files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == "/oneimage/initrd.img")
        .unwrap()["size"]
        .as_u64()
        .unwrap();
    assert!(initrd < 10 << 20, "initramfs is {initrd} bytes");
    let used = parts[1]["filesystem"]["used_bytes"].as_u64().unwrap();
    let total = parts[1]["filesystem"]["total_bytes"].as_u64().unwrap();
    assert!(used > 300 << 20 && used < total, "used {used} of {total}");
}

#[test]
fn demo_build_is_reproducible_and_needs_no_root() {
    let first = sha256(demo());
    // Everything the ordinary user reads is copied where it can read it.
    let d = shared_tempdir();
    let examples = share(&repo().join("examples"), d.path());
    let cache = share(&cache(), d.path());
    let out = d.path().join("out");
    ok(unprivileged_oneimage(d.path())
        .arg("build")
        .arg(examples.join("debian.toml"))
        .arg("-o")
        .arg(&out)
        .arg("--rootfs-cache")
        .arg(&cache));
    assert_eq!(sha256(&out.join("debian-demo.img")), first);
}

#[test]
fn demo_boots_with_snapshot_and_leaves_the_file_untouched() {
    let image = demo();
    let before = sha256(image);
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("console.log");
    ok(oneimage()
        .arg("qemu")
        .arg(image)
        .args(["--snapshot", "--headless", "--quiet", "--expect", MARKER])
        .args(["--timeout", "900", "--console-log"])
        .arg(&log));
    assert_eq!(sha256(image), before);
    // The boot went through oneimage's own initramfs and its agent.
    let console = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    for step in [
        "oneimage-init: loaded ",
        "oneimage-init: /dev/vda2 is clean",
        "oneimage-init: mounted /dev/vda2 on /sysroot read-write",
        "oneimage-init: switching to /sbin/init",
    ] {
        assert!(
            console.contains(step),
            "{step:?} missing from the console:\n{console}"
        );
    }
}

#[test]
fn demo_boots_in_place_on_a_bigger_disk_and_keeps_what_it_wrote() {
    let d = tempfile::tempdir().unwrap();
    let image = d.path().join("stick.img");
    ok(Command::new("cp")
        .arg("--sparse=always")
        .arg(demo())
        .arg(&image));
    let size = std::fs::metadata(&image).unwrap().len() + (512 << 20);
    ok(oneimage()
        .arg("qemu")
        .arg(&image)
        .args([
            "--headless",
            "--quiet",
            "--expect",
            MARKER,
            "--timeout",
            "900",
        ])
        .arg("--disk-size")
        .arg(size.to_string()));
    assert_eq!(std::fs::metadata(&image).unwrap().len(), size);
    assert!(d.path().join("stick.img.efivars.fd").exists());
    // The booted system's write reached the image file, as it would a USB stick.
    let root = extract_partition(&image, 2, d.path());
    let boots = debugfs(&root, "cat /var/lib/oneimage-demo/boots");
    assert_eq!(boots, "boot\n");
    // The disk grew under the table: inspect says so, and the table still reads.
    let j = inspect(&image);
    assert_eq!(j["backup_at_end"], false);
    assert_eq!(j["partitions"].as_array().unwrap().len(), 2);
}

#[test]
fn qemu_refuses_to_shrink_an_image() {
    let d = tempfile::tempdir().unwrap();
    let image = d.path().join("small.img");
    std::fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    let o = output(
        oneimage()
            .arg("qemu")
            .arg(&image)
            .args(["--headless", "--disk-size", "4K"]),
    );
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("refusing to shrink"));
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 1 << 20);
}

#[test]
fn qemu_reports_a_missing_marker_with_the_console_tail() {
    // An image with no bootable system: the firmware gives up and the timeout fires.
    let d = tempfile::tempdir().unwrap();
    let image = d.path().join("blank.img");
    std::fs::write(&image, vec![0u8; 4 << 20]).unwrap();
    let o = output(oneimage().arg("qemu").arg(&image).args([
        "--snapshot",
        "--headless",
        "--quiet",
        "--expect",
        "never printed",
        "--timeout",
        "20",
    ]));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("never printed") && err.contains("last console lines"),
        "{err}"
    );
}

/// Boots a copy of the demo changed by `damage`, until the agent reports an error; returns
/// the console.
fn boot_broken(damage: impl FnOnce(&Path), expect: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    let image = d.path().join("broken.img");
    ok(Command::new("cp")
        .arg("--sparse=always")
        .arg(demo())
        .arg(&image));
    damage(&image);
    let log = d.path().join("console.log");
    ok(oneimage()
        .arg("qemu")
        .arg(&image)
        .args(["--snapshot", "--headless", "--quiet", "--expect", expect])
        .args(["--timeout", "900", "--console-log"])
        .arg(&log));
    let console = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    assert!(!console.contains("Kernel panic"), "{console}");
    console
}

#[test]
fn missing_root_partition_is_reported_by_the_agent() {
    // Give the root partition another GUID: root=PARTUUID= now names nothing.
    let console = boot_broken(
        |img| {
            ok(Command::new("sgdisk")
                .arg("--partition-guid=2:0fc63daf-8483-4772-8e79-3d69d8477de4")
                .arg(img));
        },
        "oneimage-init: error: no partition",
    );
    // It says what it did see, so a user can tell a missing disk from a wrong one.
    assert!(console.contains("vda (GPT: 1="), "{console}");
}

#[test]
fn damaged_root_filesystem_is_reported_by_the_agent() {
    // Zero the primary ext4 superblock of the root partition.
    let console = boot_broken(
        |img| {
            let info = ok(Command::new("sgdisk").arg("--info=2").arg(img));
            let first: u64 = info
                .lines()
                .find(|l| l.starts_with("First sector"))
                .and_then(|l| l.split(':').nth(1))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap();
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
            f.seek(SeekFrom::Start(first * 512)).unwrap();
            f.write_all(&[0u8; 4096]).unwrap();
        },
        "oneimage-init: error: mounting /dev/vda2",
    );
    assert!(
        console.contains("oneimage-init: e2fsck exit code"),
        "{console}"
    );
}

#[test]
fn live_boot_writes_nothing_to_the_disk() {
    let d = tempfile::tempdir().unwrap();
    let image = d.path().join("stick.img");
    ok(Command::new("cp")
        .arg("--sparse=always")
        .arg(demo())
        .arg(&image));
    let before = sha256(&image);
    let log = d.path().join("console.log");
    // In place (no --snapshot): only the live mode stands between the guest and the file.
    // The demo prints its marker only after it has appended to a file and synced, so the
    // booted system did write.
    ok(oneimage()
        .arg("qemu")
        .arg(&image)
        .args([
            "--headless",
            "--quiet",
            "--entry",
            "live",
            "--expect",
            MARKER,
        ])
        .args(["--timeout", "900", "--console-log"])
        .arg(&log));
    let console = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    assert!(
        console.contains("oneimage-init: live: /dev/vda2 read-only under a RAM overlay"),
        "{console}"
    );
    assert_eq!(sha256(&image), before, "a live boot changed the disk image");
}
