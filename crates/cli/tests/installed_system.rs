//! The installed system's life, in QEMU: a kernel package installed inside the booted
//! demo reaches the boot menu, the previous kernel stays as the fallback, and removing a
//! kernel package takes its files off the ESP but never the running kernel's.
//!
//! The image is the demo with a test runner added (tests/data/test-runner): at the end
//! of each boot it runs `run.sh` from an attached disk labelled OI-TEST and reports
//! `oneimage-test: finished RC` on the console. The new kernel is a Debian package
//! fetched on the host (`apt-get download`) and given to the VM on that disk: the VM has
//! no network.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

fn tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// `ONEIMAGE_SECURE_BOOT=1` (scripts/kernel-updates.sh): the image boots through
/// Debian's signed shim and GRUB, under enforcing Secure Boot.
fn secure_boot() -> bool {
    std::env::var("ONEIMAGE_SECURE_BOOT").as_deref() == Ok("1")
}

/// The demo with the test runner, sharing the demo's cached root filesystem; built once.
fn test_image() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = tmp().join(if secure_boot() {
            "installed-system-secure"
        } else {
            "installed-system"
        });
        // The overlay lives beside the variant's directory, which the build empties.
        let overlay = dir.with_extension("overlay");
        let _ = std::fs::remove_dir_all(&overlay);
        std::fs::create_dir_all(&overlay).unwrap();
        for from in [
            repo().join("examples/debian-overlay"),
            repo().join("crates/cli/tests/data/test-runner"),
        ] {
            ok(Command::new("cp")
                .arg("-a")
                .arg(format!("{}/.", from.display()))
                .arg(&overlay));
        }
        build_demo_variant(&dir, &overlay, secure_boot(), &tmp().join("rootfs-cache"))
    })
}

/// A Debian 12 kernel package newer than the demo's 6.1: the newest
/// `linux-image-6.12.N+deb12-amd64` the host's package lists know, downloaded once.
fn newer_kernel_deb() -> &'static Path {
    static DEB: OnceLock<PathBuf> = OnceLock::new();
    DEB.get_or_init(|| {
        let dir = tmp().join("debs");
        std::fs::create_dir_all(&dir).unwrap();
        // The newest the package lists know; lists too old to know one (or to name a
        // package the mirror still has) are refreshed once.
        let newest = || -> Option<String> {
            let names = ok(Command::new("apt-cache")
                .env("LC_ALL", "C")
                .args(["pkgnames", "linux-image-6.12."]));
            let mut names: Vec<&str> = names
                .lines()
                .filter(|n| n.ends_with("+deb12-amd64") && !n.contains("-dbg"))
                .collect();
            names.sort_by_key(|n| {
                n.trim_start_matches("linux-image-6.12.")
                    .split('+')
                    .next()
                    .and_then(|p| p.parse::<u32>().ok())
                    .unwrap_or(0)
            });
            names.last().map(|n| n.to_string())
        };
        let download = |name: &str| {
            Command::new("apt-get")
                .env("LC_ALL", "C")
                .current_dir(&dir)
                .args(["download", name])
                .status()
                .is_ok_and(|s| s.success())
        };
        let mut name = newest();
        if !name.as_deref().is_some_and(download) {
            ok(Command::new("apt-get").env("LC_ALL", "C").args(["update", "-q"]));
            name = newest();
            let n = name.as_deref().expect("apt-cache knows no linux-image-6.12.N+deb12-amd64 (is bookworm-security in the apt sources?)");
            assert!(download(n), "apt-get download {n} failed");
        }
        let name = name.unwrap();
        let found = |dir: &Path| {
            std::fs::read_dir(dir).unwrap().flatten().find(|e| {
                let f = e.file_name().to_string_lossy().into_owned();
                f.starts_with(&format!("{name}_")) && f.ends_with(".deb")
            })
        };
        found(&dir).expect("apt-get download made no .deb").path()
    })
}

/// The kernel release a linux-image .deb holds (`linux-image-RELEASE_VERSION_amd64.deb`).
fn release_of(deb: &Path) -> String {
    let f = deb.file_name().unwrap().to_string_lossy().into_owned();
    f.trim_start_matches("linux-image-")
        .split('_')
        .next()
        .unwrap()
        .to_string()
}

/// A test disk (ext4 labelled OI-TEST) holding `script` as run.sh and `files`.
fn script_disk(dir: &Path, name: &str, script: &str, files: &[&Path]) -> PathBuf {
    let content = dir.join(format!("{name}.d"));
    std::fs::create_dir_all(&content).unwrap();
    std::fs::write(
        content.join("run.sh"),
        format!("set -eu\necho \"oneimage-test: kernel $(uname -r)\"\n{script}"),
    )
    .unwrap();
    let mut bytes = 64 << 20;
    for f in files {
        std::fs::copy(f, content.join(f.file_name().unwrap())).unwrap();
        bytes += std::fs::metadata(f).unwrap().len() * 11 / 10;
    }
    let disk = dir.join(format!("{name}.img"));
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(bytes)
        .unwrap();
    ok(Command::new("mke2fs")
        .env("LC_ALL", "C")
        .args(["-q", "-t", "ext4", "-L", "OI-TEST", "-d"])
        .arg(&content)
        .arg(&disk));
    std::fs::remove_dir_all(&content).unwrap();
    disk
}

/// Boots `image` in place with `disk` attached until the runner finished, then powers
/// it off cleanly; the run must have succeeded. Returns the console.
fn run_script(image: &Path, disk: &Path, extra: &[&str]) -> String {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("console.log");
    ok(oneimage()
        .arg("qemu")
        .arg(image)
        .args(firmware())
        .args(["--headless", "--quiet", "--poweroff"])
        .args(["--expect", "oneimage-test: finished", "--timeout"])
        // initramfs-tools' own hook takes many minutes under emulation; otherwise a
        // boot that hangs should fail soon.
        .arg(
            if std::env::var("ONEIMAGE_WITH_INITRAMFS_TOOLS").as_deref() == Ok("1") {
                "3000"
            } else {
                "900"
            },
        )
        .arg("--extra-disk")
        .arg(disk)
        .arg("--console-log")
        .arg(&log)
        .args(extra));
    let console = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    let tail: Vec<&str> = console.lines().rev().take(60).collect();
    let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
    assert!(console.contains(MARKER), "no demo marker:\n{tail}");
    if secure_boot() {
        assert!(
            console.contains("oneimage-demo: secure boot 1"),
            "Secure Boot is not enforcing:\n{tail}"
        );
    }
    assert!(
        console.contains("oneimage-test: finished 0"),
        "the script failed:\n{tail}"
    );
    console
}

/// The firmware every boot uses.
fn firmware() -> [&'static str; 2] {
    [
        "--firmware",
        if secure_boot() {
            "uefi-secure-boot"
        } else {
            "uefi"
        },
    ]
}

/// The kernel release the script saw running.
fn running_kernel(console: &str) -> String {
    console
        .lines()
        .find_map(|l| l.split("oneimage-test: kernel ").nth(1))
        .unwrap_or_else(|| panic!("no kernel reported:\n{console}"))
        .trim()
        .to_string()
}

/// The files under /oneimage on the image's ESP, and its grub.cfg; the ESP must pass
/// fsck.fat. After a power cut (`cut`), Linux keeps the FAT's dirty flag (set while
/// mounted) until fsck.fat clears it, which the image does not carry; it is cleared in
/// the extracted copy, and everything else must be clean.
fn esp_state(image: &Path, dir: &Path, cut: bool) -> (Vec<String>, String) {
    let esp = extract_partition(image, 1, dir);
    if cut {
        let mut bytes = std::fs::read(&esp).unwrap();
        // BS_Reserved1 of the FAT32 boot sector: bit 0 is Linux's "not unmounted".
        bytes[0x41] &= !1;
        std::fs::write(&esp, bytes).unwrap();
    }
    ok(Command::new("fsck.fat").arg("-n").arg(&esp));
    let mtools = |args: &[&str]| {
        ok(Command::new(args[0])
            .env("MTOOLS_SKIP_CHECK", "1")
            .env("LC_ALL", "C")
            .arg("-i")
            .arg(&esp)
            .args(&args[1..]))
    };
    let files = mtools(&["mdir", "-b", "::/oneimage"])
        .lines()
        .map(|l| l.trim().trim_start_matches("::/oneimage/").to_string())
        .filter(|l| !l.is_empty())
        .collect();
    let cfg = mtools(&["mtype", "::/EFI/BOOT/grub.cfg"]);
    std::fs::remove_file(esp).unwrap();
    (files, cfg)
}

#[test]
fn kernel_updates_reach_the_boot_and_removal_keeps_the_running_kernel() {
    let d = tempfile::tempdir().unwrap();
    let image = d.path().join("disk.img");
    ok(Command::new("cp")
        .arg("--sparse=always")
        .arg(test_image())
        .arg(&image));
    let deb = newer_kernel_deb();
    let new = release_of(deb);
    let size = (std::fs::metadata(&image).unwrap().len() * 3).to_string();

    // First boot: install the newer kernel. initramfs-tools (which Debian's kernel
    // packages depend on) makes an initramfs oneimage does not boot; its hook takes over
    // ten minutes under emulation, so it is switched off here unless
    // ONEIMAGE_WITH_INITRAMFS_TOOLS=1 (scripts/kernel-updates.sh runs both ways).
    let with_initramfs_tools = std::env::var("ONEIMAGE_WITH_INITRAMFS_TOOLS").as_deref() == Ok("1");
    let install = format!(
        "{}dpkg -i ./linux-image-*.deb\n",
        if with_initramfs_tools {
            ""
        } else {
            "chmod -x /etc/kernel/postinst.d/initramfs-tools\n"
        }
    );
    let disk = script_disk(d.path(), "install", &install, &[deb]);
    let console = run_script(&image, &disk, &["--disk-size", &size]);
    let old = running_kernel(&console);
    assert_ne!(old, new);
    assert!(
        console.contains(&format!("oneimage: update-boot: default: kernel {new}")),
        "{console}"
    );
    let (files, cfg) = esp_state(&image, d.path(), false);
    for v in [&old, &new] {
        assert!(
            files
                .iter()
                .any(|f| f.starts_with(&format!("vmlinuz-{v}-"))),
            "{v}: {files:?}"
        );
        assert!(
            files.iter().any(|f| f.starts_with(&format!("initrd-{v}-"))),
            "{v}: {files:?}"
        );
    }
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(cfg.contains(&format!("previous kernel {old}")), "{cfg}");

    // The default entry boots the new kernel.
    let show = script_disk(d.path(), "show", "", &[]);
    let console = run_script(&image, &show, &[]);
    assert_eq!(running_kernel(&console), new);

    // Power cuts in the middle of an ESP update: a changed timestamp in the menu
    // settings changes both initramfs images, so update-boot writes two new files,
    // switches the menu and removes the old ones, as on an update of the agent. The
    // cut falls up to ONEIMAGE_KERNEL_CUT_WINDOW_MS (default 6000) after update-boot
    // started; the next boot must reach the marker with one of the two kernels. The
    // suite cuts once; scripts/kernel-updates.sh runs ONEIMAGE_KERNEL_POWER_CUTS points
    // of seed ONEIMAGE_POWER_CUT_SEED.
    let points = env_number("ONEIMAGE_KERNEL_POWER_CUTS", 1);
    let seed = env_number("ONEIMAGE_POWER_CUT_SEED", 1);
    let window = env_number("ONEIMAGE_KERNEL_CUT_WINDOW_MS", 6000);
    let mut rng = Seeded(seed);
    for point in 0..points {
        let ms = rng.below(window);
        let script = format!(
            "sed -i 's/^epoch = .*/epoch = {}/' /etc/oneimage/boot.toml\noneimage update-boot\n",
            1_700_000_000 + point
        );
        let disk = script_disk(d.path(), &format!("cut{point}"), &script, &[]);
        let cut = cut_power(
            &image,
            "oneimage: update-boot: kernel",
            ms,
            &[
                "--extra-disk",
                disk.to_str().unwrap(),
                firmware()[0],
                firmware()[1],
            ],
        );
        let fell = cut
            .lines()
            .rfind(|l| l.starts_with("oneimage: update-boot:"))
            .unwrap_or("?");
        let console = run_script(&image, &show, &[]);
        let k = running_kernel(&console);
        eprintln!("power cut {point} of seed {seed}: {ms} ms after update-boot started, after {fell:?}; the next boot ran {k}");
        assert!(k == new || k == old, "{k}");
    }
    // The next update finishes the work.
    let finish = script_disk(d.path(), "finish", "oneimage update-boot\n", &[]);
    run_script(&image, &finish, &[]);
    let (files, cfg) = esp_state(&image, d.path(), points > 0);
    assert_eq!(files.len(), 4, "{files:?}");
    assert!(cfg.contains(&format!("previous kernel {old}")), "{cfg}");

    // The fallback entry boots the old one; its package is removed while it runs.
    let remove = script_disk(
        d.path(),
        "remove",
        // Debian asks before removing the running kernel, unless noninteractive.
        "DEBIAN_FRONTEND=noninteractive dpkg --purge linux-image-amd64 \"linux-image-$(uname -r)\"\n",
        &[],
    );
    let console = run_script(&image, &remove, &["--entry", "previous"]);
    assert_eq!(running_kernel(&console), old);
    assert!(
        console.contains("its package is gone, but it is running: kept on the menu"),
        "{console}"
    );
    let (files, _) = esp_state(&image, d.path(), points > 0);
    assert!(
        files
            .iter()
            .any(|f| f.starts_with(&format!("vmlinuz-{old}-"))),
        "the running kernel left the ESP: {files:?}"
    );

    // Back on the new kernel, the old one is no longer running: the next update takes
    // it off the ESP and the menu.
    let update = script_disk(d.path(), "update", "oneimage update-boot\n", &[]);
    let console = run_script(&image, &update, &[]);
    assert_eq!(running_kernel(&console), new);
    let (files, cfg) = esp_state(&image, d.path(), points > 0);
    assert_eq!(files.len(), 2, "{files:?}");
    assert!(files.iter().all(|f| f.contains(&new)), "{files:?}");
    assert!(!cfg.contains("previous kernel"), "{cfg}");
    assert!(!cfg.contains(&old), "{cfg}");
}
