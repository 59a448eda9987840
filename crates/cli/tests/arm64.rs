//! The arm64 demo (examples/debian-arm64.toml), built on this host with an arm64 root
//! filesystem (mmdebstrap through qemu-user-static) and the agent cross-compiled for
//! aarch64 (scripts/build-agent-aarch64.sh), judged by independent tools and booted in
//! qemu-system-aarch64 under AAVMF. Everything here is slow on an x86_64 host (the agent
//! cross-compiled, the root filesystem's package scripts and every boot emulated), so
//! these are campaign tests that `scripts/arm64.sh` runs, outside the suite's time.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// Builds the arm64 demo into `out` with the shared root filesystem cache.
fn build_arm64_demo(out: &Path) -> PathBuf {
    let _ = std::fs::remove_dir_all(out);
    ok(oneimage()
        .arg("build")
        .arg(repo().join("examples/debian-arm64.toml"))
        .arg("-o")
        .arg(out)
        .arg("--rootfs-cache")
        .arg(tmp().join("rootfs-cache")));
    out.join("debian-demo-arm64.img")
}

/// The arm64 demo, built once; tests must not modify it.
fn demo() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| build_arm64_demo(&tmp().join("debian-demo-arm64")))
}

fn copy_of_demo(dir: &Path) -> PathBuf {
    let image = dir.join("arm64.img");
    ok(Command::new("cp")
        .arg("--sparse=always")
        .arg(demo())
        .arg(&image));
    image
}

/// Boots `image` with `args` until the marker; returns the console.
fn boot(image: &Path, args: &[&str]) -> String {
    boot_console(image, MARKER, 1800, args)
}

/// What the independent tools say of an arm64 image: a valid GPT with the arm64 root
/// type, no BIOS boot partition; a clean ESP holding `EFI/BOOT/BOOTAA64.EFI` (and no
/// x86 loader); a clean root; an ISO view whose only El Torito entry is UEFI's.
fn assert_arm64_image(image: &Path, dir: &Path) {
    let verify = ok(Command::new("sgdisk")
        .env("LC_ALL", "C")
        .arg("-v")
        .arg(image));
    assert!(verify.contains("No problems found"), "{verify}");
    let j = inspect(image);
    let parts = j["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 2, "{j}");
    assert_eq!(parts[1]["type_name"], "root-arm64", "{j}");
    let esp = extract_partition(image, 1, dir);
    ok(Command::new("fsck.fat").arg("-n").arg(&esp));
    let listing = ok(Command::new("mdir")
        .env("LC_ALL", "C")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i"])
        .arg(&esp)
        .arg("::/EFI/BOOT"));
    assert!(listing.contains("BOOTAA64.EFI"), "{listing}");
    assert!(!listing.contains("BOOTX64.EFI"), "{listing}");
    // The loader is an arm64 PE program (machine 0xaa64).
    let loader = dir.join("BOOTAA64.EFI");
    ok(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(&esp)
        .arg("::/EFI/BOOT/BOOTAA64.EFI")
        .arg(&loader));
    let pe = std::fs::read(&loader).unwrap();
    let at = u32::from_le_bytes(pe[0x3c..0x40].try_into().unwrap()) as usize;
    assert_eq!(&pe[at..at + 4], b"PE\0\0");
    assert_eq!(u16::from_le_bytes([pe[at + 4], pe[at + 5]]), 0xaa64);
    let root = extract_partition(image, 2, dir);
    e2fsck_clean(&root);
    for f in [esp, root, loader] {
        std::fs::remove_file(f).unwrap();
    }
    let report = el_torito_report(image);
    let boots = boot_image_lines(&report);
    assert_eq!(boots.len(), 1, "{report}");
    assert!(
        boots[0].contains("UEFI") && boots[0].contains(" y "),
        "{report}"
    );
    assert!(
        report.contains("El Torito img path :   1  /ESP.IMG"),
        "{report}"
    );
}

#[test]
#[ignore = "campaign: scripts/arm64.sh (cross-compiling the agent and an emulated mmdebstrap add about 15 minutes)"]
fn arm64_demo_passes_independent_checks_and_grows_on_its_first_boot() {
    let d = tempfile::tempdir().unwrap();
    assert_arm64_image(demo(), d.path());
    let image = copy_of_demo(d.path());
    let len = std::fs::metadata(&image).unwrap().len();
    let console = boot(
        &image,
        &["--poweroff", "--disk-size", &(3 * len).to_string()],
    );
    assert_steps(
        &console,
        "arm64 first boot",
        &[
            "oneimage-init: growing",
            "oneimage-init: mounted /dev/vda2 on /sysroot read-write",
            "oneimage-demo: firmware uefi",
        ],
    );
    // Afterwards: the table valid with its backup at the end, the root partition and its
    // filesystem filling the disk, and still clean.
    let verify = ok(Command::new("sgdisk")
        .env("LC_ALL", "C")
        .arg("-v")
        .arg(&image));
    assert!(verify.contains("No problems found"), "{verify}");
    let j = inspect(&image);
    let root = &j["partitions"][1];
    let end = root["offset"].as_u64().unwrap() + root["size"].as_u64().unwrap();
    assert!(3 * len - end < 2 << 20, "root ends at {end} of {}", 3 * len);
    let fs_total = root["filesystem"]["total_bytes"].as_u64().unwrap();
    assert!(
        root["size"].as_u64().unwrap() - fs_total < 1 << 20,
        "{root}"
    );
    e2fsck_clean(&extract_partition(&image, 2, d.path()));
}

#[test]
#[ignore = "campaign: scripts/arm64.sh (arm64 under TCG is slow)"]
fn arm64_demo_build_is_reproducible_and_needs_no_root() {
    let first = sha256(demo());
    // The ordinary user gets copies of what it reads: the examples, the arm64 root
    // filesystems of the cache, and the aarch64 agent and static tool.
    let d = shared_tempdir();
    let examples = share(&repo().join("examples"), d.path());
    let cache = d.path().join("rootfs-cache");
    std::fs::create_dir(&cache).unwrap();
    for e in std::fs::read_dir(tmp().join("rootfs-cache")).unwrap() {
        let e = e.unwrap();
        if e.file_name().to_string_lossy().contains("-arm64-") {
            share(&e.path(), &cache);
        }
    }
    ok(Command::new("chmod").args(["a+rwx"]).arg(&cache));
    let agents = Path::new(env!("CARGO_BIN_EXE_oneimage")).with_file_name("../agent/aarch64");
    let mut cmd = unprivileged_oneimage(d.path());
    for (name, var) in [
        ("oneimage-init", "ONEIMAGE_INIT_ARM64"),
        ("oneimage", "ONEIMAGE_STATIC_ARM64"),
    ] {
        let copy = d.path().join(format!("{name}-aarch64"));
        std::fs::copy(agents.join(name), &copy).unwrap();
        cmd.env(var, &copy);
    }
    let out = d.path().join("out");
    ok(cmd
        .arg("build")
        .arg(examples.join("debian-arm64.toml"))
        .arg("-o")
        .arg(&out)
        .arg("--rootfs-cache")
        .arg(&cache));
    assert_eq!(sha256(&out.join("debian-demo-arm64.img")), first);
}

#[test]
#[ignore = "campaign: scripts/arm64.sh (arm64 under TCG is slow)"]
fn arm64_demo_boots_from_a_usb_stick() {
    let console = boot(demo(), &["--snapshot", "--media", "usb"]);
    assert_steps(
        &console,
        "arm64 USB stick",
        &["oneimage-init: mounted /dev/sda2 on /sysroot read-write"],
    );
}

#[test]
#[ignore = "campaign: scripts/arm64.sh (arm64 under TCG is slow)"]
fn arm64_demo_boots_from_a_cdrom_and_live_writes_nothing() {
    let before = sha256(demo());
    let console = boot(demo(), &["--media", "cdrom"]);
    assert_steps(
        &console,
        "arm64 DVD",
        &["oneimage-init: booted from a disc: live mode"],
    );
    let d = tempfile::tempdir().unwrap();
    let image = copy_of_demo(d.path());
    let len = std::fs::metadata(&image).unwrap().len();
    let console = boot(
        &image,
        &["--entry", "live", "--disk-size", &(2 * len).to_string()],
    );
    assert_steps(
        &console,
        "arm64 live entry",
        &["oneimage-init: live: /dev/vda2 read-only under a RAM overlay"],
    );
    assert_disk_unchanged(&image, len, &before);
    assert_eq!(sha256(demo()), before, "booting the DVD changed the image");
}

/// The arm64 demo with `secure-boot = true` and Debian's signed shim and GRUB for arm64
/// in its root filesystem.
fn secure_demo() -> PathBuf {
    let dir = tmp().join("debian-demo-arm64-secure");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let spec = std::fs::read_to_string(repo().join("examples/debian-arm64.toml"))
        .unwrap()
        .replace(
            "overlay = \"debian-overlay\"",
            &format!(
                "overlay = \"{}\"",
                repo().join("examples/debian-overlay").display()
            ),
        )
        .replace(
            "\"grub-efi-arm64-bin\"]",
            "\"grub-efi-arm64-bin\", \"shim-signed\", \"grub-efi-arm64-signed\"]",
        )
        .replace("[boot]\n", "[boot]\nsecure-boot = true\n");
    assert!(spec.contains("secure-boot = true") && spec.contains("shim-signed"));
    std::fs::write(dir.join("spec.toml"), spec).unwrap();
    ok(oneimage()
        .arg("build")
        .arg(dir.join("spec.toml"))
        .arg("-o")
        .arg(dir.join("out"))
        .arg("--rootfs-cache")
        .arg(tmp().join("rootfs-cache")));
    dir.join("out/debian-demo-arm64.img")
}

#[test]
#[ignore = "campaign: scripts/arm64.sh (arm64 under TCG is slow)"]
fn arm64_secure_boot_image_boots_with_secure_boot_enforcing_and_the_plain_one_is_refused() {
    let image = secure_demo();
    let d = tempfile::tempdir().unwrap();
    let listing = ok(Command::new("mdir")
        .env("LC_ALL", "C")
        .env("MTOOLS_SKIP_CHECK", "1")
        .args(["-b", "-i"])
        .arg(extract_partition(&image, 1, d.path()))
        .arg("::/EFI/BOOT"));
    for f in ["BOOTAA64.EFI", "grubaa64.efi", "mmaa64.efi"] {
        assert!(listing.contains(f), "{f} missing: {listing}");
    }
    let console = boot(&image, &["--snapshot", "--firmware", "uefi-secure-boot"]);
    assert_steps(
        &console,
        "arm64 Secure Boot",
        &[
            "secureboot: Secure boot enabled",
            "oneimage-demo: secure boot 1",
        ],
    );
    // The plain demo boots our own, unsigned GRUB: enforcing firmware refuses it.
    let refused = boot_console(
        demo(),
        "Access Denied",
        600,
        &["--snapshot", "--firmware", "uefi-secure-boot"],
    );
    assert!(!refused.contains("oneimage-init"), "{refused}");
}
