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

/// A sparse copy of the demo image in `dir`, for a test that boots it in place.
fn demo_copy(dir: &Path, name: &str) -> PathBuf {
    let image = dir.join(name);
    ok(Command::new("cp")
        .arg("--sparse=always")
        .arg(demo())
        .arg(&image));
    image
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
    assert_eq!(parts.len(), 3);
    assert_eq!(parts[0]["type_name"], "esp");
    assert_eq!(parts[2]["type_name"], "bios-boot");
    assert_eq!(parts[0]["filesystem"]["kind"], "vfat");
    assert_eq!(parts[1]["type_name"], "root-x86-64");
    assert_eq!(parts[1]["filesystem"]["kind"], "ext4");
    let files: Vec<&str> = parts[0]["boot_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    for want in ["/EFI/BOOT/BOOTX64.EFI", "/EFI/BOOT/grub.cfg"] {
        assert!(files.contains(&want), "{want} missing from {files:?}");
    }
    // The kernel and initramfs carry their release and a digest of their content, so
    // that a kernel update writes new files under new names.
    let named = |prefix: &str| -> String {
        let found: Vec<&&str> = files.iter().filter(|f| f.starts_with(prefix)).collect();
        assert_eq!(found.len(), 1, "{prefix}: {files:?}");
        found[0].to_string()
    };
    let kernel_path = named("/oneimage/vmlinuz-");
    let initrd_path = named("/oneimage/initrd-");
    let release = kernel_path
        .trim_start_matches("/oneimage/vmlinuz-")
        .rsplit_once('-')
        .map(|(r, digest)| {
            assert_eq!(digest.len(), 12, "{kernel_path}");
            r.to_string()
        })
        .unwrap();
    assert!(release.ends_with("-amd64"), "{kernel_path}");
    assert!(
        initrd_path.starts_with(&format!("/oneimage/initrd-{release}-")),
        "{initrd_path}"
    );
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
    // GRUB reads the root and the ESP from the disk it started on (a copy's GUIDs change
    // on its first boot); the GUID as built is the fallback.
    assert!(
        cfg.contains(&format!("set oneimage_root={root_guid}")),
        "{cfg}"
    );
    assert!(
        cfg.contains("probe --set=oneimage_esp --part-uuid $root"),
        "{cfg}"
    );
    // inspect reads the same boot menu: persistent first (the default), then live.
    let entries = parts[0]["boot_entries"].as_array().unwrap();
    let ids: Vec<&str> = entries.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["persistent", "live"]);
    for e in entries {
        let cmdline = e["cmdline"].as_str().unwrap();
        assert!(cfg.contains(cmdline), "{cmdline} not in {cfg}");
        assert!(
            cmdline.contains("root=PARTUUID=${oneimage_root} oneimage.esp=${oneimage_esp}"),
            "{cmdline}"
        );
    }
    // oneimage's initramfs, not Debian's (about 35 MiB with initramfs-tools).
    let initrd = parts[0]["boot_files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["path"] == initrd_path.as_str())
        .unwrap()["size"]
        .as_u64()
        .unwrap();
    assert!(initrd < 10 << 20, "initramfs is {initrd} bytes");
    // It has a keyboard for the emergency shell (USB HID and its host controllers; the
    // PS/2 keyboard is built into Debian's kernel) and a way out of it.
    let cpio = d.path().join("initrd.img");
    ok(Command::new("mcopy")
        .env("MTOOLS_SKIP_CHECK", "1")
        .arg("-i")
        .arg(&esp)
        .arg(format!("::{initrd_path}"))
        .arg(&cpio));
    let unpacked = output(Command::new("zstd").arg("-dc").arg(&cpio));
    assert!(unpacked.status.success(), "zstd -dc {}", cpio.display());
    let entries = cpio_entries(&unpacked.stdout);
    for module in [
        "/hid.ko",
        "/usbhid.ko",
        "/hid-generic.ko",
        "/xhci-pci.ko",
        "/ehci-pci.ko",
    ] {
        assert!(
            entries.iter().any(|(name, _, _)| name.ends_with(module)),
            "{module} not in the initramfs"
        );
    }
    for link in ["bin/reboot", "bin/poweroff"] {
        assert!(
            entries.iter().any(|(name, mode, data)| name == link
                && mode & 0o170000 == 0o120000
                && data == b"/init"),
            "{link} is not a link to /init"
        );
    }
    let used = parts[1]["filesystem"]["used_bytes"].as_u64().unwrap();
    let total = parts[1]["filesystem"]["total_bytes"].as_u64().unwrap();
    assert!(used > 300 << 20 && used < total, "used {used} of {total}");
}

/// The entries of a newc cpio archive: name, mode and data.
fn cpio_entries(mut b: &[u8]) -> Vec<(String, u32, Vec<u8>)> {
    let hex = |f: &[u8]| u32::from_str_radix(std::str::from_utf8(f).unwrap(), 16).unwrap() as usize;
    let pad = |n: usize| n.div_ceil(4) * 4;
    let mut out = Vec::new();
    while b.len() >= 110 {
        assert_eq!(&b[..6], b"070701", "not a newc cpio header");
        let (mode, size, namesize) = (hex(&b[14..22]), hex(&b[54..62]), hex(&b[94..102]));
        let name = String::from_utf8_lossy(&b[110..110 + namesize - 1]).into_owned();
        let data_at = pad(110 + namesize);
        if name == "TRAILER!!!" {
            break;
        }
        out.push((name, mode as u32, b[data_at..data_at + size].to_vec()));
        b = &b[pad(data_at + size)..];
    }
    out
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
    // The boot goes through oneimage's own initramfs and its agent.
    let console = boot_unchanged(demo(), &["--snapshot"]);
    assert_steps(
        &console,
        "UEFI disk",
        &[
            "oneimage-init: loaded ",
            "oneimage-init: /dev/vda2 is clean",
            "oneimage-init: mounted /dev/vda2 on /sysroot read-write",
            "oneimage-init: switching to /sbin/init",
            "oneimage-demo: firmware uefi",
            "oneimage-demo: secure boot 0",
        ],
    );
}

/// Boots `image` headless with `args` until `expect` appears on the serial console;
/// returns the console.
fn boot_until(image: &Path, expect: &str, args: &[&str]) -> String {
    boot_console(image, expect, 900, args)
}

/// Boots `image` in place until the marker, then powers it off cleanly; returns the console.
fn boot_in_place(image: &Path, extra: &[&str]) -> String {
    let args: Vec<&str> = ["--poweroff"]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    boot_until(image, MARKER, &args)
}

/// The root filesystem size the booted demo reported on its console.
fn reported_root_size(console: &str) -> u64 {
    let line = console
        .lines()
        .find_map(|l| l.split("oneimage-demo: root filesystem ").nth(1))
        .unwrap_or_else(|| panic!("no size report in:\n{console}"));
    line.split_whitespace().next().unwrap().parse().unwrap()
}

/// After a clean shutdown: the table is valid with its backup at the end, the root
/// partition reaches the end of the disk and its filesystem fills it and is clean.
fn assert_grown(image: &Path, dir: &Path) {
    let verify = ok(Command::new("sgdisk").arg("-v").arg(image));
    assert!(verify.contains("No problems found"), "{verify}");
    let j = inspect(image);
    assert_eq!(j["backup_at_end"], true);
    let root = &j["partitions"][1];
    assert_fills_disk(image, root);
    let part = extract_partition(image, 2, dir);
    e2fsck_clean(&part);
    std::fs::remove_file(part).unwrap();
    assert_disc_route_intact(image, dir);
}

/// What booting from a disc needs survived a persistent boot: the ISO 9660 view reads
/// (isoinfo, xorriso), both El Torito entries are there, and the ESP read through the
/// view is the ESP partition's bytes.
fn assert_disc_route_intact(image: &Path, dir: &Path) {
    let info = ok(Command::new("isoinfo").arg("-d").arg("-i").arg(image));
    assert!(info.contains("Volume id: DEBIAN_DEMO"), "{info}");
    let report = el_torito_report(image);
    for want in [
        "El Torito img path :   1  /BOOT/BIOS.IMG",
        "El Torito img opts :   1  boot-info-table",
        "El Torito img path :   2  /ESP.IMG",
    ] {
        assert!(report.contains(want), "{want:?} missing:\n{report}");
    }
    let via_iso = dir.join("esp-via-iso.img");
    xorriso_extract(image, "/ESP.IMG", &via_iso);
    let esp = extract_partition(image, 1, dir);
    assert_eq!(sha256(&via_iso), sha256(&esp));
    std::fs::remove_file(via_iso).unwrap();
    std::fs::remove_file(esp).unwrap();
}

#[test]
fn first_boot_grows_the_root_once_and_keeps_what_it_wrote() {
    let d = tempfile::tempdir().unwrap();
    let image = demo_copy(d.path(), "stick.img");
    let original = inspect(&image)["partitions"][1]["size"].as_u64().unwrap();
    let size = std::fs::metadata(&image).unwrap().len() * 3;
    let console = boot_in_place(&image, &["--disk-size", &size.to_string()]);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), size);
    assert!(d.path().join("stick.img.efivars.fd").exists());
    assert!(
        console.contains("oneimage-init: growing: /dev/vda"),
        "{console}"
    );
    assert!(
        console.contains("oneimage-init: root filesystem grown to"),
        "{console}"
    );
    // Seen from inside the booted system.
    let inside = reported_root_size(&console);
    assert!(
        inside > 2 * original,
        "root is {inside} bytes inside, was {original}"
    );
    assert_grown(&image, d.path());

    // The second boot, this time through the BIOS (GRUB's boot code in the MBR survived
    // the partition table rewrite), finds nothing to do, and the first boot's write is
    // still there.
    let console = boot_in_place(&image, &["--firmware", "bios"]);
    assert!(
        console.contains("oneimage-demo: firmware bios"),
        "{console}"
    );
    assert!(
        console.contains("oneimage-init: first boot: done on an earlier boot"),
        "{console}"
    );
    assert!(!console.contains("oneimage-init: growing"), "{console}");
    assert_eq!(reported_root_size(&console), inside);
    let root = extract_partition(&image, 2, d.path());
    assert_eq!(
        debugfs(&root, "cat /var/lib/oneimage-demo/boots"),
        "boot\nboot\n"
    );
}

/// Lines of the first boot's work that a power cut is timed from: the cut falls up to
/// `CUT_SPREAD_MS` after one of them, so the cuts spread over every step.
/// The first (the one point the suite runs) is the filesystem's growth, the longest
/// write; the campaign goes on with the start of the work and then the rest.
const CUT_TRIGGERS: [&str; 5] = [
    "oneimage-init: growing the root filesystem",
    "oneimage-init: first boot: a new copy",
    "oneimage-init: first boot: step identity done",
    "oneimage-init: the kernel re-read the partition table",
    "oneimage-init: partition table written",
];
const CUT_SPREAD_MS: u64 = 700;

/// The last line the agent printed before the power was cut, to show where it fell.
fn last_agent_line(console: &str) -> &str {
    console
        .lines()
        .rfind(|l| l.starts_with("oneimage-init:"))
        .unwrap_or("(no agent line: the cut came before the agent spoke)")
}

/// After the first boot's work: the copy has identifiers of its own everywhere (disk,
/// partitions, root filesystem, ESP), and the ESP's two boot sectors agree.
fn assert_own_identity(image: &Path, dir: &Path) {
    let now = inspect(image);
    let built = inspect(demo());
    assert_eq!(
        built["first_boot"]["state"], "not-started",
        "{}",
        built["first_boot"]
    );
    assert_eq!(
        now["first_boot"]["state"], "started",
        "{}",
        now["first_boot"]
    );
    assert_eq!(now["first_boot"]["complete"], true, "{}", now["first_boot"]);
    assert_eq!(now["first_boot"]["original_disk_guid"], built["disk_guid"]);
    assert_ne!(now["disk_guid"], built["disk_guid"], "disk GUID");
    for i in 0..2 {
        let (a, b) = (&now["partitions"][i], &built["partitions"][i]);
        assert_ne!(a["guid"], b["guid"], "partition {i} GUID");
        assert_ne!(
            a["filesystem"]["uuid"], b["filesystem"]["uuid"],
            "partition {i} filesystem"
        );
    }
    let esp = extract_partition(image, 1, dir);
    ok(Command::new("fsck.fat").arg("-n").arg(&esp));
    std::fs::remove_file(esp).unwrap();
}

/// Power cuts at seeded moments all through the first boot's work (identity, table
/// writes, filesystem growth), on a disk with no host-side write-back (QEMU's
/// cache=directsync): the next boot finishes the work, the marker appears, and the disk
/// is clean for sgdisk, e2fsck and fsck.fat. One point in three also cuts the resumed
/// boot. `ONEIMAGE_POWER_CUTS` (1 here, 24 in scripts/power-loss.sh) and
/// `ONEIMAGE_POWER_CUT_SEED` choose the campaign.
#[test]
fn first_boot_survives_power_cuts_at_seeded_moments() {
    let points = env_number("ONEIMAGE_POWER_CUTS", 1);
    let seed = env_number("ONEIMAGE_POWER_CUT_SEED", 1);
    let mut rng = Seeded(seed);
    for point in 0..points {
        let d = tempfile::tempdir().unwrap();
        let image = demo_copy(d.path(), "stick.img");
        let size = std::fs::metadata(&image).unwrap().len() * 3;
        // The first points time the cut from each step in turn; later ones at random.
        let trigger = match point {
            p if p < CUT_TRIGGERS.len() as u64 => CUT_TRIGGERS[p as usize],
            _ => CUT_TRIGGERS[rng.below(CUT_TRIGGERS.len() as u64) as usize],
        };
        let ms = rng.below(CUT_SPREAD_MS);
        let cut = cut_power(&image, trigger, ms, &["--disk-size", &size.to_string()]);
        let mut story = format!(
            "point {point} (seed {seed}): cut {ms} ms after {trigger:?}; last agent line: {:?}",
            last_agent_line(&cut)
        );
        if rng.below(3) == 0 {
            let ms2 = rng.below(CUT_SPREAD_MS);
            let again = cut_power(&image, "oneimage-init: first boot:", ms2, &[]);
            story += &format!(
                "; then cut the next boot {ms2} ms into its first-boot work; last agent line: {:?}",
                last_agent_line(&again)
            );
        }
        eprintln!("{story}");
        let console = boot_in_place(&image, &[]);
        assert!(console.contains(MARKER), "{story}:\n{console}");
        assert!(!console.contains("Kernel panic"), "{story}:\n{console}");
        assert!(
            reported_root_size(&console) > 2 << 30,
            "{story}: not grown:\n{console}"
        );
        assert_grown(&image, d.path());
        assert_own_identity(&image, d.path());
    }
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
    // An image with no bootable system. UEFI: OVMF falls back to its built-in shell,
    // which ends the run at once, long before the timeout.
    let d = tempfile::tempdir().unwrap();
    let image = d.path().join("blank.img");
    std::fs::write(&image, vec![0u8; 4 << 20]).unwrap();
    let run = |firmware: &str, timeout: &str| {
        let o = output(oneimage().arg("qemu").arg(&image).args([
            "--snapshot",
            "--headless",
            "--quiet",
            "--firmware",
            firmware,
            "--expect",
            "never printed",
            "--timeout",
            timeout,
        ]));
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let err = run("uefi", "600");
    assert!(
        err.contains("found nothing it could boot")
            && err.contains("never printed")
            && err.contains("last console lines")
            && err.contains("UEFI Interactive Shell"),
        "{err}"
    );
    // SeaBIOS says nothing on the serial console: the timeout ends the run.
    let err = run("bios", "15");
    assert!(
        err.contains("timed out after 15 s waiting for \"never printed\""),
        "{err}"
    );
}

/// What the agent says on every console when the boot cannot continue.
const EMERGENCY: &str = "oneimage-init: the boot cannot continue: ";

/// Boots a copy of the demo changed by `damage`, until the agent reports an error; returns
/// the console.
fn boot_broken(damage: impl FnOnce(&Path), expect: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    let image = demo_copy(d.path(), "broken.img");
    damage(&image);
    let console = boot_until(&image, expect, &["--snapshot"]);
    assert!(!console.contains("Kernel panic"), "{console}");
    console
}

/// Adds `args` to every kernel command line in the boot menu of `image` (its ESP's
/// grub.cfg), as someone would in GRUB's editor.
fn append_kernel_args(image: &Path, args: &str) {
    let (first, _) = partition_sectors(image, 1);
    let esp = format!("{}@@{}", image.display(), first * 512);
    let mtools = |cmd: &str| {
        let mut c = Command::new(cmd);
        c.env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(&esp);
        c
    };
    let cfg = ok(mtools("mtype").arg("::/EFI/BOOT/grub.cfg"));
    let patched: String = cfg
        .lines()
        .map(|l| match l.trim_start().starts_with("linux ") {
            true => format!("{l} {args}\n"),
            false => format!("{l}\n"),
        })
        .collect();
    assert_eq!(patched.matches(args).count(), 2, "{patched}");
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("grub.cfg");
    std::fs::write(&file, patched).unwrap();
    ok(mtools("mcopy")
        .arg("-o")
        .arg(&file)
        .arg("::/EFI/BOOT/grub.cfg"));
}

/// Recomputes the entry array checksum (when the array is small enough to lie on the
/// disk) and the header checksum of the GPT header in sector `lba` of `disk`, so that
/// only its fields are wrong.
fn reseal_gpt_header(disk: &mut [u8], lba: usize) {
    let h = lba * 512;
    let field = |d: &[u8], at: usize, n: usize| {
        d[h + at..h + at + n]
            .iter()
            .rev()
            .fold(0u64, |v, &b| v << 8 | u64::from(b))
    };
    let entries = field(disk, 72, 8) as usize;
    let bytes = field(disk, 80, 4) * field(disk, 84, 4);
    if bytes <= 1 << 20 {
        let crc = crc32fast::hash(&disk[entries * 512..entries * 512 + bytes as usize]);
        disk[h + 88..h + 92].copy_from_slice(&crc.to_le_bytes());
    }
    disk[h + 16..h + 20].fill(0);
    let crc = crc32fast::hash(&disk[h..h + 92]);
    disk[h + 16..h + 20].copy_from_slice(&crc.to_le_bytes());
}

/// Three 4 MiB disks with the GPTs of a crafted stick, checksums right so that only
/// their fields are wrong: an entry count of 0xFFFFFFFF, a partition that runs past the
/// end of the disk, and two overlapping partitions; both copies of each table alike. The
/// kernel refuses the first, drops the second's partition and makes both of the third's;
/// the agent must skip all three and say why.
fn crafted_disks(dir: &Path) -> Vec<(PathBuf, &'static str)> {
    use oneimage_format::gpt::{write_table, Partition, TYPE_ROOT_X86_64};
    use oneimage_format::Guid;
    const LBAS: u64 = 8192;
    let part = |n: u32, first: u64, last: u64| Partition {
        number: n,
        type_guid: TYPE_ROOT_X86_64.parse().unwrap(),
        guid: Guid::derive("crafted", &format!("{first}")),
        name: format!("crafted{n}"),
        first_lba: first,
        last_lba: last,
        attributes: 0,
    };
    // Sets the first and last LBA of entry `n` in both entry arrays.
    let set_entry = |disk: &mut [u8], n: usize, first: u64, last: u64| {
        for array_lba in [2, LBAS as usize - 33] {
            let e = array_lba * 512 + (n - 1) * 128;
            disk[e + 32..e + 40].copy_from_slice(&first.to_le_bytes());
            disk[e + 40..e + 48].copy_from_slice(&last.to_le_bytes());
        }
    };
    type Edit = Box<dyn Fn(&mut [u8])>;
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "huge-count.img",
            Box::new(|d: &mut [u8]| {
                for h in [512, (LBAS as usize - 1) * 512] {
                    d[h + 80..h + 84].copy_from_slice(&u32::MAX.to_le_bytes());
                }
            }),
            "4294967295 partition entries of 128 bytes",
        ),
        (
            "past-the-end.img",
            Box::new(move |d: &mut [u8]| set_entry(d, 2, 4096, 1 << 40)),
            "partition 2 spans LBA 4096..=1099511627776, reversed or outside the usable LBAs",
        ),
        (
            "overlapping.img",
            Box::new(move |d: &mut [u8]| set_entry(d, 2, 3000, 5000)),
            "partitions 1 (LBA 2048..=4095) and 2 (LBA 3000..=5000) overlap",
        ),
    ];
    cases
        .into_iter()
        .map(|(name, edit, why)| {
            let mut disk = std::io::Cursor::new(vec![0u8; (LBAS * 512) as usize]);
            write_table(
                &mut disk,
                512,
                Guid::derive("crafted", name),
                &[part(1, 2048, 4095), part(2, 4096, 6143)],
            )
            .unwrap();
            let mut disk = disk.into_inner();
            edit(&mut disk);
            reseal_gpt_header(&mut disk, 1);
            reseal_gpt_header(&mut disk, LBAS as usize - 1);
            let path = dir.join(name);
            std::fs::write(&path, disk).unwrap();
            (path, why)
        })
        .collect()
}

/// The bytes of `image` that hold its partition tables: the MBR and primary GPT, and the
/// backup GPT that ends at byte `end`.
fn table_bytes(image: &Path, end: u64) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(image).unwrap();
    let mut b = vec![0u8; 2 * 34 * 512];
    f.read_exact_at(&mut b[..34 * 512], 0).unwrap();
    f.read_exact_at(&mut b[34 * 512..], end - 34 * 512).unwrap();
    b
}

#[test]
fn crafted_disks_are_skipped_and_a_root_e2fsck_cannot_repair_boots_live_ungrown() {
    let d = tempfile::tempdir().unwrap();
    let image = demo_copy(d.path(), "stick.img");
    let len = std::fs::metadata(&image).unwrap().len();
    let root_guid = inspect(&image)["partitions"][1]["guid"]
        .as_str()
        .unwrap()
        .to_string();
    // Two files claiming one block, in a filesystem marked not cleanly unmounted:
    // `e2fsck -p` stops with "UNEXPECTED INCONSISTENCY" (exit code 4), while the kernel
    // still mounts it read-only.
    let (first, _) = partition_sectors(&image, 2);
    let fs = format!("{}?offset={}", image.display(), first * 512);
    for request in ["copy_inode /etc/issue /etc/motd", "ssv state 0"] {
        ok(Command::new("debugfs").args(["-w", "-R", request]).arg(&fs));
    }
    let check = output(
        Command::new("e2fsck")
            .env("LC_ALL", "C")
            .arg("-fn")
            .arg(&fs),
    );
    assert_eq!(
        check.status.code(),
        Some(4),
        "the damage is not what e2fsck -p cannot repair:\n{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let tables = table_bytes(&image, len);
    let extras = crafted_disks(d.path());
    let size = (2 * len).to_string();
    let mut args = vec!["--disk-size", size.as_str()];
    for (path, _) in &extras {
        args.extend(["--extra-disk", path.to_str().unwrap()]);
    }
    let console = boot_until(&image, MARKER, &args);
    for (_, why) in &extras {
        assert!(
            console
                .lines()
                .any(|l| l.contains("oneimage-init: skipping /dev/vd") && l.contains(why)),
            "no skipping line with {why:?}:\n{console}"
        );
    }
    assert_steps(
        &console,
        "crafted disks and a damaged root",
        &[
            &format!("oneimage-init: root partition {root_guid} is /dev/vda2"),
            "oneimage-init: e2fsck exit code 4 for /dev/vda2 (errors left uncorrected); booting live instead",
            "oneimage-init: live: /dev/vda2 read-only under a RAM overlay",
        ],
    );
    for never in [
        "oneimage-init: growing",
        "on /sysroot read-write",
        "Kernel panic",
    ] {
        assert!(!console.contains(never), "{never:?} in:\n{console}");
    }
    // Nothing was grown: the tables are as they were and what --disk-size added is zeros.
    assert!(
        table_bytes(&image, len) == tables,
        "the partition tables changed"
    );
    assert_zeros_after(&image, len);
}

#[test]
fn a_panic_in_the_agent_ends_on_the_emergency_path_which_restarts_the_machine() {
    let d = tempfile::tempdir().unwrap();
    let image = demo_copy(d.path(), "panic.img");
    append_kernel_args(&image, "oneimage.test-panic=1 oneimage.emergency-timeout=5");
    // The kernel says this when the agent restarts the machine (QEMU then exits).
    let console = boot_until(&image, "reboot: Restarting system", &["--snapshot"]);
    assert_steps(
        &console,
        "test panic",
        &[
            "oneimage-init: panic at crates/agent/src/main.rs:",
            "oneimage.test-panic=1 is on the kernel command line: panicking on purpose",
            "oneimage-init: the boot cannot continue: the agent panicked",
            "oneimage-init: press Enter within 5 s for an emergency shell",
            "oneimage-init: no answer within 5 s",
            "oneimage-init: restarting the machine",
        ],
    );
    for never in [
        "Kernel panic",
        "Attempted to kill init",
        "oneimage-init: loaded ",
    ] {
        assert!(!console.contains(never), "{never:?} in:\n{console}");
    }
}

#[test]
fn missing_root_partition_is_reported_by_the_agent() {
    // Remove the root partition from the table: GRUB finds no partition 2 to name, and
    // the GUID it falls back to (the image's) is on no disk.
    let console = boot_broken(
        |img| {
            ok(Command::new("sgdisk").arg("--delete=2").arg(img));
        },
        EMERGENCY,
    );
    assert!(
        console.contains("oneimage-init: error: no partition"),
        "{console}"
    );
    // It says what it did see, so a user can tell a missing disk from a wrong one.
    assert!(console.contains("vda (GPT: 1="), "{console}");
}

#[test]
fn damaged_root_filesystem_is_reported_by_the_agent() {
    // Zero the primary ext4 superblock of the root partition.
    let console = boot_broken(
        |img| {
            let (first, _) = partition_sectors(img, 2);
            use std::io::{Seek, SeekFrom, Write};
            let mut f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
            f.seek(SeekFrom::Start(first * 512)).unwrap();
            f.write_all(&[0u8; 4096]).unwrap();
        },
        EMERGENCY,
    );
    assert!(
        console.contains("oneimage-init: error: mounting /dev/vda2"),
        "{console}"
    );
    assert!(
        console.contains("oneimage-init: e2fsck exit code"),
        "{console}"
    );
}

#[test]
fn live_boot_writes_nothing_to_the_disk() {
    let d = tempfile::tempdir().unwrap();
    let image = demo_copy(d.path(), "stick.img");
    let before = sha256(&image);
    let len = std::fs::metadata(&image).unwrap().len();
    // In place (no --snapshot), on a disk twice the image: only the live mode stands
    // between the guest and the file, and live must not grow anything either. The demo
    // prints its marker only after it has appended to a file and synced, so the booted
    // system did write.
    let console = boot_until(
        &image,
        MARKER,
        &["--entry", "live", "--disk-size", &(2 * len).to_string()],
    );
    assert!(
        console.contains("oneimage-init: live: /dev/vda2 read-only under a RAM overlay"),
        "{console}"
    );
    assert!(!console.contains("oneimage-init: growing"), "{console}");
    assert_disk_unchanged(&image, len, &before);
}

/// The demo spec with secure-boot = true, sharing the cached root filesystem; built once.
fn secure_demo() -> &'static Path {
    static IMAGE: OnceLock<PathBuf> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let image = build_demo_variant(
            &tmp().join("secure-demo"),
            &repo().join("examples/debian-overlay"),
            true,
            &cache(),
        );
        let files = inspect(&image)["partitions"][0]["boot_files"].to_string();
        assert!(
            files.contains("/EFI/BOOT/grubx64.efi") && files.contains("/EFI/BOOT/mmx64.efi"),
            "{files}"
        );
        image
    })
}

/// The kernel and, from inside the booted system, the SecureBoot variable agree.
const SECURE_BOOT_STEPS: &[&str] = &[
    "secureboot: Secure boot enabled",
    "oneimage-demo: secure boot 1",
];

#[test]
fn secure_boot_image_boots_from_disk_with_secure_boot_enforcing() {
    let console = boot_unchanged(
        secure_demo(),
        &["--snapshot", "--firmware", "uefi-secure-boot"],
    );
    assert_steps(&console, "Secure Boot disk", SECURE_BOOT_STEPS);
}

#[test]
#[ignore = "campaign: scripts/long-tests.sh (the suite keeps one test per route)"]
fn secure_boot_image_boots_from_a_dvd_with_secure_boot_enforcing() {
    // Debian's signed GRUB, started from the disc, reads EFI/BOOT/grub.cfg of the ISO
    // view, which leads it to the ESP's menu.
    let console = boot_unchanged(
        secure_demo(),
        &["--media", "cdrom", "--firmware", "uefi-secure-boot"],
    );
    assert_steps(&console, "Secure Boot DVD", SECURE_BOOT_STEPS);
    assert_steps(&console, "Secure Boot DVD", DISC_STEPS);
}

#[test]
fn secure_boot_firmware_refuses_the_unsigned_image() {
    // The default demo boots our own, unsigned GRUB: enforcing firmware must refuse it,
    // which is what makes the positive test above mean something.
    let console = boot_until(
        demo(),
        "Access Denied",
        &["--snapshot", "--firmware", "uefi-secure-boot"],
    );
    assert!(!console.contains("oneimage-init"), "{console}");
}

/// Boots the demo (or `image`) without changing it, with `args` (`--snapshot` or a DVD),
/// until the marker; returns the console.
fn boot_unchanged(image: &Path, args: &[&str]) -> String {
    let before = sha256(image);
    let console = boot_until(image, MARKER, args);
    assert_eq!(
        sha256(image),
        before,
        "booting with {args:?} changed the image"
    );
    console
}

/// What the agent says when it boots from a disc.
const DISC_STEPS: &[&str] = &[
    "is an optical disc; reading it through /dev/loop",
    "oneimage-init: booted from a disc: live mode",
];

/// El Torito's UEFI entry starts GRUB from the ESP; the agent reads the disc through a
/// 512-byte-sector loop device and never writes to it.
fn boots_under_uefi_from_a_dvd(media: &str) {
    let console = boot_unchanged(demo(), &["--media", media]);
    assert_steps(&console, media, DISC_STEPS);
    assert_steps(&console, media, &["oneimage-demo: firmware uefi"]);
}

#[test]
fn demo_boots_under_uefi_from_a_dvd_in_a_sata_drive() {
    boots_under_uefi_from_a_dvd("cdrom");
}

#[test]
#[ignore = "campaign: scripts/long-tests.sh (the suite keeps one test per route)"]
fn demo_boots_under_uefi_from_a_dvd_in_a_scsi_drive() {
    boots_under_uefi_from_a_dvd("scsi-cdrom");
}

#[test]
#[ignore = "campaign: scripts/long-tests.sh (the suite keeps one test per route)"]
fn demo_boots_under_bios_from_a_dvd() {
    // El Torito's BIOS entry: GRUB's CD image, loaded through its boot info table.
    let console = boot_unchanged(demo(), &["--media", "cdrom", "--firmware", "bios"]);
    assert_steps(&console, "BIOS DVD", DISC_STEPS);
    assert_steps(&console, "BIOS DVD", &["oneimage-demo: firmware bios"]);
}

/// The suite boots a disk under BIOS in `first_boot_grows_the_root_once_and_keeps_what_it_wrote`
/// (its second boot, on the grown disk).
#[test]
#[ignore = "campaign: scripts/long-tests.sh (the suite boots a BIOS disk in the growth test)"]
fn demo_boots_under_bios_from_a_disk() {
    // GRUB's boot.img in the MBR loads core.img from the BIOS boot partition.
    let console = boot_unchanged(demo(), &["--snapshot", "--firmware", "bios"]);
    assert_steps(
        &console,
        "BIOS disk",
        &[
            "oneimage-init: mounted /dev/vda2 on /sysroot read-write",
            "oneimage-demo: firmware bios",
        ],
    );
}

#[test]
#[ignore = "campaign: scripts/long-tests.sh (the suite keeps one test per route)"]
fn demo_boots_from_a_usb_stick_under_uefi() {
    let console = boot_unchanged(demo(), &["--snapshot", "--media", "usb"]);
    assert_steps(
        &console,
        "USB stick",
        &[
            "oneimage-init: mounted /dev/sda2 on /sysroot read-write",
            "oneimage-demo: firmware uefi",
        ],
    );
}

#[test]
fn demo_written_over_a_used_stick_is_exact_and_boots() {
    let d = tempfile::tempdir().unwrap();
    let image = demo();
    let size = std::fs::metadata(image).unwrap().len();
    let stick = d.path().join("stick");
    used_disk(&stick, size + (256 << 20));
    let dev = ok(Command::new("losetup").args(["-f", "--show"]).arg(&stick))
        .trim()
        .to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let lo = Detach(dev);
    // As the issue's user did: the image with the bmap `build` wrote next to it.
    let out = ok(oneimage()
        .args(["write", "--yes", "--force"])
        .arg(image)
        .arg(&lo.0));
    drop(lo);
    assert!(!out.contains("INCOMPLETE"), "{out}");
    // Exact: everything but the MBR's size field and the two GPT headers and tables it
    // moved to the end of the bigger stick.
    let a = std::fs::read(image).unwrap();
    let b = head(&stick, size as usize);
    let tail = size as usize - 33 * 512;
    if let Some(i) = (1024..tail).find(|&i| a[i] != b[i]) {
        panic!("the stick differs from the image at byte {i}");
    }
    let v = ok(Command::new("sgdisk")
        .env("LC_ALL", "C")
        .arg("-v")
        .arg(&stick));
    assert!(v.contains("No problems found"), "sgdisk -v: {v}");
    let esp = extract_partition(&stick, 1, d.path());
    ok(Command::new("fsck.fat").arg("-n").arg(&esp));
    let root = extract_partition(&stick, 2, d.path());
    e2fsck_clean(&root);
    let console = boot_until(&stick, MARKER, &["--snapshot", "--media", "usb"]);
    assert_steps(
        &console,
        "used stick",
        &["oneimage-init: mounted /dev/sda2 on /sysroot read-write"],
    );
}

/// Two sticks written from the same image carry the same GUIDs until their first boot;
/// with both attached, the one the firmware booted is the one used (GRUB marks the ESP
/// it started from), and the other is left byte for byte as written. Booted in turn,
/// each gets identifiers of its own.
#[test]
fn of_two_fresh_copies_attached_the_one_booted_is_the_one_used() {
    let d = tempfile::tempdir().unwrap();
    let a = demo_copy(d.path(), "a.img");
    let b = demo_copy(d.path(), "b.img");
    let image_sum = sha256(demo());
    let extra = |p: &Path| vec!["--extra-disk".to_string(), p.display().to_string()];
    let args = extra(&b);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let console = boot_in_place(&a, &args);
    assert!(
        console.contains("boot mark: GRUB started from /dev/vda, the only disk it marked"),
        "{console}"
    );
    assert!(
        console.contains("oneimage-init: first boot: a new copy on /dev/vda"),
        "{console}"
    );
    assert_eq!(sha256(&b), image_sum, "the stick not booted was written to");
    assert_own_identity(&a, d.path());

    // Now the other one, with the first attached: no doubt any more (the first has its
    // own GUIDs), and the first is not touched.
    let a_sum = sha256(&a);
    let args = extra(&a);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let console = boot_in_place(&b, &args);
    assert!(!console.contains("claim the root"), "{console}");
    assert!(
        console.contains("oneimage-init: first boot: a new copy on /dev/vda"),
        "{console}"
    );
    assert_eq!(sha256(&a), a_sum, "the first copy changed");
    assert_own_identity(&b, d.path());
    let (ja, jb) = (inspect(&a), inspect(&b));
    assert_ne!(ja["disk_guid"], jb["disk_guid"]);
    for i in 0..2 {
        assert_ne!(ja["partitions"][i]["guid"], jb["partitions"][i]["guid"]);
        assert_ne!(
            ja["partitions"][i]["filesystem"]["uuid"],
            jb["partitions"][i]["filesystem"]["uuid"]
        );
    }
}

/// `qemu-img info --output=json` of `disk`.
fn qemu_img_info(disk: &Path) -> serde_json::Value {
    let text = ok(Command::new("qemu-img")
        .env("LC_ALL", "C")
        .args(["info", "--output=json"])
        .arg(disk));
    serde_json::from_str(&text).unwrap()
}

/// The demo as qcow2, VMDK (sparse and streamOptimized), VHDX, VDI and OVA: qemu-img
/// checks each and reports its format and the image's size, every one but VHDX comes out
/// byte-identical twice, the OVA holds the OVF first, a manifest whose sums match, an
/// OVF that is well-formed XML naming the disk's capacity and UEFI, and a VMDK qemu-img
/// accepts. The formats in `ONEIMAGE_VM_FORMAT_BOOTS` (default qcow2;
/// scripts/vm-formats.sh: all) boot to the marker.
#[test]
fn vm_formats_are_checked_by_qemu_img_and_boot() {
    let d = tempfile::tempdir().unwrap();
    let image = d.path().join("demo.img");
    ok(Command::new("cp")
        .arg("--sparse=always")
        .arg(demo())
        .arg(&image));
    let size = std::fs::metadata(&image).unwrap().len();
    let boots = std::env::var("ONEIMAGE_VM_FORMAT_BOOTS").unwrap_or_else(|_| "qcow2".into());
    let convert = |to: &str, extra: &[&str], out: &Path| {
        ok(oneimage()
            .args(["convert", "--to", to])
            .args(extra)
            .arg(&image)
            .arg("-o")
            .arg(out));
    };
    let mut to_boot: Vec<(String, PathBuf)> = Vec::new();
    for (to, extra, qemu_format, reproducible) in [
        ("qcow2", &[][..], "qcow2", true),
        ("qcow2", &["--compress"][..], "qcow2", true),
        ("vmdk", &[][..], "vmdk", true),
        ("vmdk", &["--stream-optimized"][..], "vmdk", true),
        ("vhdx", &[][..], "vhdx", false),
        ("vdi", &[][..], "vdi", true),
    ] {
        let what = format!("{to} {extra:?}");
        let dir = d.path().join(format!("{to}{}", extra.len()));
        std::fs::create_dir_all(dir.join("again")).unwrap();
        let out = dir.join(format!("demo.{to}"));
        convert(to, extra, &out);
        ok(Command::new("qemu-img")
            .env("LC_ALL", "C")
            .arg("check")
            .arg(&out));
        let info = qemu_img_info(&out);
        assert_eq!(info["format"], qemu_format, "{what}: {info}");
        assert_eq!(info["virtual-size"], size, "{what}: {info}");
        let again = dir.join("again").join(format!("demo.{to}"));
        convert(to, extra, &again);
        assert_eq!(
            sha256(&out) == sha256(&again),
            reproducible,
            "{what}: two conversions are{} identical",
            if reproducible { " not" } else { "" }
        );
        std::fs::remove_file(&again).unwrap();
        eprintln!("{what}: {} bytes", std::fs::metadata(&out).unwrap().len());
        if extra.is_empty() && boots.split(',').any(|b| b == to) {
            to_boot.push((what, out));
        }
    }

    // Only a raw image is converted; options say which format they belong to.
    let qcow2 = d.path().join("qcow20").join("demo.qcow2");
    for (args, says) in [
        (
            vec!["convert", "--to", "vdi", qcow2.to_str().unwrap()],
            "is a qcow2 file; expected a raw image",
        ),
        (
            vec![
                "convert",
                "--to",
                "vdi",
                "--compress",
                image.to_str().unwrap(),
            ],
            "--compress applies to qcow2 only",
        ),
    ] {
        let out = output(oneimage().args(&args));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
    }
    assert!(!d.path().join("qcow20").join("demo.vdi").exists());

    // The OVA.
    let ova = d.path().join("demo.ova");
    convert("ova", &[], &ova);
    // The OVA names its members after its own file name: the same name, elsewhere.
    std::fs::create_dir_all(d.path().join("again")).unwrap();
    let again = d.path().join("again").join("demo.ova");
    convert("ova", &[], &again);
    assert_eq!(sha256(&ova), sha256(&again), "two OVAs differ");
    std::fs::remove_file(&again).unwrap();
    let list = ok(Command::new("tar").env("LC_ALL", "C").arg("-tf").arg(&ova));
    let names: Vec<&str> = list.lines().collect();
    assert_eq!(names, ["demo.ovf", "demo.mf", "demo-disk1.vmdk"], "{list}");
    let x = d.path().join("ova");
    std::fs::create_dir_all(&x).unwrap();
    ok(Command::new("tar").arg("-xf").arg(&ova).arg("-C").arg(&x));
    let manifest = std::fs::read_to_string(x.join("demo.mf")).unwrap();
    for name in ["demo.ovf", "demo-disk1.vmdk"] {
        let line = format!("SHA256({name})= {}", sha256(&x.join(name)));
        assert!(manifest.lines().any(|l| l == line), "{line}\n{manifest}");
    }
    let ovf = x.join("demo.ovf");
    ok(Command::new("xmllint").arg("--noout").arg(&ovf));
    let text = std::fs::read_to_string(&ovf).unwrap();
    let disk = x.join("demo-disk1.vmdk");
    for want in [
        format!(r#"ovf:capacity="{size}""#),
        format!(
            r#"ovf:href="demo-disk1.vmdk" ovf:size="{}""#,
            std::fs::metadata(&disk).unwrap().len()
        ),
        r#"vmw:key="firmware" vmw:value="efi""#.to_string(),
        "<rasd:ResourceSubType>AHCI</rasd:ResourceSubType>".to_string(),
    ] {
        assert!(text.contains(&want), "{want}:\n{text}");
    }
    ok(Command::new("qemu-img")
        .env("LC_ALL", "C")
        .arg("check")
        .arg(&disk));
    assert_eq!(qemu_img_info(&disk)["virtual-size"], size);
    if boots.split(',').any(|b| b == "ova") {
        to_boot.push(("the OVA's VMDK".into(), disk));
    }

    assert!(
        !to_boot.is_empty(),
        "ONEIMAGE_VM_FORMAT_BOOTS={boots} names no format"
    );
    for (what, disk) in to_boot {
        let console = boot_until(&disk, MARKER, &["--snapshot"]);
        assert!(console.contains(MARKER), "{what}");
        eprintln!("{what}: booted to the marker");
    }
}
