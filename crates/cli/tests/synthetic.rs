//! Builds from small synthetic root filesystems: metadata survives an unprivileged
//! build, and bad input is refused clearly with nothing left behind.

mod common;

use common::*;
use std::path::Path;

/// A v2 file capability blob (cap_net_raw), as `setcap cap_net_raw+ep` writes it.
const CAP_NET_RAW: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00,
];

struct Item<'a> {
    path: &'a str,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    data: &'a [u8],
    link: Option<&'a str>,
    dev: (u32, u32),
}

fn item(path: &str, kind: tar::EntryType) -> Item<'_> {
    Item {
        path,
        kind,
        mode: 0o644,
        uid: 0,
        gid: 0,
        data: b"",
        link: None,
        dev: (0, 0),
    }
}

/// Writes a tarball with the given entries (and xattrs for `/usr/bin/ping`).
fn write_tarball(path: &Path, items: &[Item]) {
    let f = std::fs::File::create(path).unwrap();
    let mut b = tar::Builder::new(f);
    for it in items {
        if it.path == "./usr/bin/ping" {
            b.append_pax_extensions([
                ("SCHILY.xattr.security.capability", &CAP_NET_RAW[..]),
                ("SCHILY.xattr.user.oneimage", &b"kept"[..]),
            ])
            .unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(it.kind);
        h.set_mode(it.mode);
        h.set_uid(it.uid);
        h.set_gid(it.gid);
        h.set_mtime(1_600_000_000);
        h.set_size(it.data.len() as u64);
        if let Some(l) = it.link {
            h.set_link_name(l).unwrap();
        }
        if matches!(it.kind, tar::EntryType::Char | tar::EntryType::Block) {
            h.set_device_major(it.dev.0).unwrap();
            h.set_device_minor(it.dev.1).unwrap();
        }
        h.set_path(it.path).unwrap();
        h.set_cksum();
        b.append(&h, it.data).unwrap();
    }
    b.finish().unwrap();
}

/// The smallest root filesystem oneimage accepts: a kernel and an initramfs (their
/// content does not matter for building), plus whatever the test adds.
fn base_items() -> Vec<Item<'static>> {
    use tar::EntryType as T;
    vec![
        Item {
            mode: 0o755,
            ..item("./", T::Directory)
        },
        Item {
            mode: 0o755,
            ..item("./boot/", T::Directory)
        },
        Item {
            data: b"not really a kernel",
            ..item("./boot/vmlinuz-1.0", T::Regular)
        },
        Item {
            data: b"not really an initramfs",
            ..item("./boot/initrd.img-1.0", T::Regular)
        },
    ]
}

fn full_items() -> Vec<Item<'static>> {
    use tar::EntryType as T;
    let mut v = base_items();
    v.extend([
        Item {
            mode: 0o755,
            ..item("./etc/", T::Directory)
        },
        Item {
            mode: 0o640,
            gid: 42,
            data: b"root:*:19000:0:99999:7:::\n",
            ..item("./etc/shadow", T::Regular)
        },
        Item {
            mode: 0o600,
            uid: 1234,
            gid: 5678,
            data: b"secret",
            ..item("./etc/owned by user", T::Regular)
        },
        Item {
            mode: 0o755,
            ..item("./usr/", T::Directory)
        },
        Item {
            mode: 0o755,
            ..item("./usr/bin/", T::Directory)
        },
        Item {
            mode: 0o4755,
            data: b"#!/bin/sh\n",
            ..item("./usr/bin/passwd", T::Regular)
        },
        Item {
            mode: 0o755,
            data: b"ping",
            ..item("./usr/bin/ping", T::Regular)
        },
        Item {
            link: Some("./usr/bin/passwd"),
            mode: 0o4755,
            ..item("./usr/bin/passwd-hardlink", T::Link)
        },
        Item {
            mode: 0o777,
            link: Some("passwd"),
            ..item("./usr/bin/pw", T::Symlink)
        },
        Item {
            mode: 0o755,
            ..item("./dev/", T::Directory)
        },
        Item {
            mode: 0o666,
            dev: (1, 3),
            ..item("./dev/null", T::Char)
        },
        Item {
            mode: 0o660,
            gid: 6,
            dev: (8, 0),
            ..item("./dev/sda", T::Block)
        },
        Item {
            mode: 0o600,
            ..item("./dev/initctl", T::Fifo)
        },
        Item {
            mode: 0o1777,
            ..item("./tmp/", T::Directory)
        },
    ]);
    v
}

fn spec(dir: &Path, body: &str) -> std::path::PathBuf {
    let p = dir.join("spec.toml");
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn unprivileged_build_keeps_owners_modes_links_devices_and_xattrs() {
    let d = shared_tempdir();
    let tar = d.path().join("root.tar");
    write_tarball(&tar, &full_items());
    let s = spec(
        d.path(),
        "name = \"meta\"\nsource-date-epoch = 1767225600\n[rootfs]\ntarball = \"root.tar\"\n[root]\nsize = \"64M\"\n",
    );
    let out = d.path().join("out");
    ok(unprivileged_oneimage(d.path())
        .arg("build")
        .arg(&s)
        .arg("-o")
        .arg(&out));
    let image = out.join("meta.img");
    assert!(
        ok(std::process::Command::new("sgdisk").arg("-v").arg(&image))
            .contains("No problems found")
    );
    let root = extract_partition(&image, 2, d.path());
    e2fsck_clean(&root);

    let shadow = debugfs(&root, "stat /etc/shadow");
    assert!(shadow.contains("Mode:  0640"), "{shadow}");
    assert!(shadow.contains("User:     0   Group:    42"), "{shadow}");
    let owned = debugfs(&root, "stat \"/etc/owned by user\"");
    assert!(owned.contains("User:  1234   Group:  5678"), "{owned}");
    assert!(owned.contains("Mode:  0600"), "{owned}");
    let passwd = debugfs(&root, "stat /usr/bin/passwd");
    assert!(passwd.contains("Mode:  04755"), "{passwd}");
    assert!(passwd.contains("Links: 2"), "hardlink kept: {passwd}");
    let link = debugfs(&root, "stat /usr/bin/passwd-hardlink");
    let inode = |s: &str| s.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(inode(&passwd), inode(&link), "both names share one inode");
    let null = debugfs(&root, "stat /dev/null");
    assert!(null.contains("Type: character special"), "{null}");
    assert!(null.contains("Device major/minor number: 01:03"), "{null}");
    assert!(null.contains("Mode:  0666"), "{null}");
    let sda = debugfs(&root, "stat /dev/sda");
    assert!(
        sda.contains("Type: block special") && sda.contains("08:00"),
        "{sda}"
    );
    assert!(sda.contains("Group:     6"), "{sda}");
    assert!(debugfs(&root, "stat /dev/initctl").contains("Type: FIFO"));
    assert!(debugfs(&root, "stat /tmp").contains("Mode:  01777"));
    assert!(debugfs(&root, "stat /usr/bin/pw").contains("Fast link dest: \"passwd\""));
    let xattrs = debugfs(&root, "ea_list /usr/bin/ping");
    assert!(xattrs.contains("security.capability (20)"), "{xattrs}");
    assert!(xattrs.contains("user.oneimage (4) = \"kept\""), "{xattrs}");
    // Every timestamp comes from the inputs: mtimes from the tarball, the rest the epoch.
    let times = debugfs(&root, "stat /etc/shadow");
    assert!(times.contains("mtime: 0x5f5e1000"), "{times}");
    assert!(times.contains("ctime: 0x6955b900:00000000"), "{times}");
}

#[test]
fn same_inputs_same_bytes_with_different_seeds_differing() {
    let d = tempfile::tempdir().unwrap();
    let tar = d.path().join("root.tar");
    write_tarball(&tar, &full_items());
    let body = "name = \"r\"\nsource-date-epoch = 1700000000\n[rootfs]\ntarball = \"root.tar\"\n";
    let s = spec(d.path(), body);
    ok(oneimage()
        .arg("build")
        .arg(&s)
        .arg("-o")
        .arg(d.path().join("a")));
    ok(oneimage()
        .arg("build")
        .arg(&s)
        .arg("-o")
        .arg(d.path().join("b")));
    let (a, b) = (d.path().join("a/r.img"), d.path().join("b/r.img"));
    assert_eq!(sha256(&a), sha256(&b));
    std::fs::write(&s, format!("seed = \"other\"\n{body}")).unwrap();
    ok(oneimage()
        .arg("build")
        .arg(&s)
        .arg("-o")
        .arg(d.path().join("c")));
    let c = d.path().join("c/r.img");
    assert_ne!(sha256(&a), sha256(&c));
    let (ja, jc) = (inspect(&a), inspect(&c));
    assert_ne!(ja["disk_guid"], jc["disk_guid"]);
    assert_ne!(ja["partitions"][1]["guid"], jc["partitions"][1]["guid"]);
}

/// `[artifacts] vm-formats`: every format is made by the build, listed in SHA256SUMS,
/// accepted by `qemu-img check`, holds the image's bytes, and all but VHDX (random GUIDs
/// under checksums) are the same bytes when built again.
#[test]
fn vm_disks_are_build_artifacts_listed_in_sha256sums() {
    let d = tempfile::tempdir().unwrap();
    write_tarball(&d.path().join("root.tar"), &base_items());
    let s = spec(
        d.path(),
        "name = \"vm\"\nsource-date-epoch = 1700000000\n[rootfs]\ntarball = \"root.tar\"\n\
         [artifacts]\nvm-formats = [\"qcow2\", \"vmdk\", \"vhdx\", \"vdi\", \"ova\"]\n\
         qcow2-compress = true\n",
    );
    for out in ["a", "b"] {
        ok(oneimage()
            .arg("build")
            .arg(&s)
            .arg("-o")
            .arg(d.path().join(out)));
    }
    let a = d.path().join("a");
    let sums = std::fs::read_to_string(a.join("SHA256SUMS")).unwrap();
    let listed: Vec<&str> = sums
        .lines()
        .map(|l| l.split_once("  ").unwrap().1)
        .collect();
    assert_eq!(
        listed,
        [
            "vm.img",
            "vm.img.bmap",
            "vm.ova",
            "vm.qcow2",
            "vm.vdi",
            "vm.vhdx",
            "vm.vmdk"
        ]
    );
    let check = ok(std::process::Command::new("sha256sum")
        .env("LC_ALL", "C")
        .arg("-c")
        .arg("SHA256SUMS")
        .current_dir(&a));
    assert_eq!(check.matches(": OK").count(), 7, "{check}");
    let mut files = leftovers(&a);
    files.sort();
    // Nothing but what SHA256SUMS lists, and itself: no temporary files left over.
    assert_eq!(files.len(), 8, "{files:?}");
    assert!(files
        .iter()
        .all(|f| f == "SHA256SUMS" || listed.contains(&f.as_str())));
    for (file, format) in [
        ("vm.qcow2", "qcow2"),
        ("vm.vmdk", "vmdk"),
        ("vm.vhdx", "vhdx"),
        ("vm.vdi", "vdi"),
    ] {
        let disk = a.join(file);
        let info = ok(std::process::Command::new("qemu-img")
            .env("LC_ALL", "C")
            .args(["info", "--output=json"])
            .arg(&disk));
        let info: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(info["format"], format, "{file}: {info}");
        ok(std::process::Command::new("qemu-img")
            .env("LC_ALL", "C")
            .args(["check", "-f", format])
            .arg(&disk));
        let same = ok(std::process::Command::new("qemu-img")
            .env("LC_ALL", "C")
            .args(["compare", "-f", "raw", "-F", format])
            .arg(a.join("vm.img"))
            .arg(&disk));
        assert!(same.contains("Images are identical"), "{file}: {same}");
        let again = sha256(&d.path().join("b").join(file));
        if format == "vhdx" {
            assert_ne!(sha256(&disk), again, "VHDX was expected to differ");
        } else {
            assert_eq!(sha256(&disk), again, "{file} differs between builds");
        }
    }
    assert_eq!(
        sha256(&a.join("vm.ova")),
        sha256(&d.path().join("b/vm.ova"))
    );
    let qcow2: serde_json::Value =
        serde_json::from_str(&ok(std::process::Command::new("qemu-img")
            .args(["info", "--output=json"])
            .arg(a.join("vm.qcow2"))))
        .unwrap();
    // The compressed qcow2 is smaller than the bytes the image's data takes up.
    assert!(
        qcow2["actual-size"].as_u64().unwrap()
            < std::fs::metadata(a.join("vm.img")).unwrap().len() / 4,
        "{qcow2}"
    );
}

#[test]
fn vm_disk_options_without_their_format_are_refused() {
    let err = refused(
        "name = \"x\"\n[rootfs]\ntarball = \"root.tar\"\n[artifacts]\nvm-formats = [\"vdi\"]\n\
         vmdk-stream-optimized = true\n",
    );
    assert!(
        err.contains("vmdk-stream-optimized") && err.contains("spec.toml"),
        "{err}"
    );
    let err = refused(
        "name = \"x\"\n[rootfs]\ntarball = \"root.tar\"\n[artifacts]\nvm-formats = [\"vbox\"]\n",
    );
    assert!(err.contains("expected one of qcow2"), "{err}");
}

/// Runs a build that must fail; returns stderr after checking nothing was left behind.
fn failing_build(dir: &Path, body: &str) -> String {
    let s = spec(dir, body);
    let out = dir.join("out");
    let o = output(oneimage().arg("build").arg(&s).arg("-o").arg(&out));
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "build should fail:\n{err}");
    assert!(err.contains("error"), "{err}");
    assert_eq!(
        leftovers(&out),
        Vec::<String>::new(),
        "left behind after: {err}"
    );
    err
}

/// A build of spec `body` over the base tree (as `root.tar`) that must fail; returns stderr.
fn refused(body: &str) -> String {
    let d = tempfile::tempdir().unwrap();
    write_tarball(&d.path().join("root.tar"), &base_items());
    failing_build(d.path(), body)
}

#[test]
fn unknown_key_is_refused_by_name() {
    let err = refused("name = \"x\"\n[rootfs]\ntarball = \"root.tar\"\n[root]\nsise = \"1G\"\n");
    assert!(err.contains("sise") && err.contains("spec.toml"), "{err}");
}

#[test]
fn wrong_type_is_refused_by_name() {
    let err =
        refused("name = \"x\"\n[rootfs]\ntarball = \"root.tar\"\n[boot]\ntimeout = \"soon\"\n");
    assert!(err.contains("timeout"), "{err}");
}

#[test]
fn missing_root_filesystem_is_refused_by_key_and_path() {
    let d = tempfile::tempdir().unwrap();
    let err = failing_build(
        d.path(),
        "name = \"x\"\n[rootfs]\ntarball = \"nowhere.tar\"\n",
    );
    assert!(
        err.contains("rootfs.tarball") && err.contains("nowhere.tar"),
        "{err}"
    );
}

#[test]
fn size_too_small_for_content_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let big = vec![0x5au8; 40 << 20];
    let mut items = base_items();
    items.push(Item {
        data: &big,
        ..item("./big", tar::EntryType::Regular)
    });
    write_tarball(&d.path().join("root.tar"), &items);
    let err = failing_build(
        d.path(),
        "name = \"x\"\n[rootfs]\ntarball = \"root.tar\"\n[root]\nsize = \"20M\"\n",
    );
    assert!(
        err.contains("root.size") && err.contains("too small"),
        "{err}"
    );
}

#[test]
fn impossible_size_value_is_refused() {
    let err = refused("name = \"x\"\n[rootfs]\ntarball = \"root.tar\"\n[root]\nsize = \"lots\"\n");
    assert!(err.contains("root.size") && err.contains("lots"), "{err}");
}

#[test]
fn root_filesystem_without_kernel_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let items: Vec<Item> = base_items()
        .into_iter()
        .filter(|i| !i.path.contains("vmlinuz"))
        .collect();
    write_tarball(&d.path().join("root.tar"), &items);
    let err = failing_build(d.path(), "name = \"x\"\n[rootfs]\ntarball = \"root.tar\"\n");
    assert!(
        err.contains("no kernel") && err.contains("vmlinuz"),
        "{err}"
    );
}

#[test]
fn directory_source_and_overlay_give_root_owned_files() {
    let d = tempfile::tempdir().unwrap();
    let tree = d.path().join("tree");
    std::fs::create_dir_all(tree.join("boot")).unwrap();
    std::fs::write(tree.join("boot/vmlinuz-2.0"), b"k").unwrap();
    std::fs::write(tree.join("boot/initrd.img-2.0"), b"i").unwrap();
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/hostname"), b"base\n").unwrap();
    let overlay = d.path().join("overlay");
    std::fs::create_dir_all(overlay.join("etc")).unwrap();
    std::fs::write(overlay.join("etc/hostname"), b"overlaid\n").unwrap();
    let s = spec(
        d.path(),
        "name = \"dir\"\n[rootfs]\ndirectory = \"tree\"\noverlay = \"overlay\"\n",
    );
    ok(oneimage()
        .arg("build")
        .arg(&s)
        .arg("-o")
        .arg(d.path().join("out")));
    let root = extract_partition(&d.path().join("out/dir.img"), 2, d.path());
    e2fsck_clean(&root);
    assert_eq!(debugfs(&root, "cat /etc/hostname"), "overlaid\n");
    assert!(debugfs(&root, "stat /boot/vmlinuz-2.0").contains("Size: 1"));
}

#[test]
fn growth_limit_reaches_the_kernel_command_line() {
    let d = tempfile::tempdir().unwrap();
    write_tarball(&d.path().join("root.tar"), &base_items());
    for (value, expect) in [
        ("\"2G\"", "oneimage.grow=2147483648"),
        ("\"off\"", "oneimage.grow=off"),
    ] {
        let s = spec(
            d.path(),
            &format!("name = \"g\"\n[rootfs]\ntarball = \"root.tar\"\n[root]\ngrow = {value}\n"),
        );
        let out = d.path().join("out");
        ok(oneimage().arg("build").arg(&s).arg("-o").arg(&out));
        let esp = extract_partition(&out.join("g.img"), 1, d.path());
        let cfg = ok(std::process::Command::new("mtype")
            .env("MTOOLS_SKIP_CHECK", "1")
            .arg("-i")
            .arg(&esp)
            .arg("::/EFI/BOOT/grub.cfg"));
        assert!(cfg.contains(expect), "{cfg}");
    }
    let err = refused("name = \"g\"\n[rootfs]\ntarball = \"root.tar\"\n[root]\ngrow = \"much\"\n");
    assert!(err.contains("root.grow"), "{err}");
}

#[test]
fn iso_view_is_read_by_xorriso_and_isoinfo_and_is_the_partitions_bytes() {
    let d = tempfile::tempdir().unwrap();
    write_tarball(&d.path().join("root.tar"), &full_items());
    // 5 GiB of root (sparse, quick to build) needs a multi-extent ISO file.
    let s = spec(
        d.path(),
        "name = \"iso-demo\"\nvolume-label = \"ONEIMAGE_TEST\"\n[rootfs]\ntarball = \"root.tar\"\n[root]\nsize = \"5G\"\n",
    );
    let out = d.path().join("out");
    ok(oneimage().arg("build").arg(&s).arg("-o").arg(&out));
    let image = out.join("iso-demo.img");
    assert!(
        ok(std::process::Command::new("sgdisk").arg("-v").arg(&image))
            .contains("No problems found")
    );

    let info = ok(std::process::Command::new("isoinfo")
        .arg("-d")
        .arg("-i")
        .arg(&image));
    assert!(info.contains("Volume id: ONEIMAGE_TEST"), "{info}");
    let size = std::fs::metadata(&image).unwrap().len();
    assert!(
        info.contains(&format!("Volume size is: {}", size / 2048)),
        "{info}"
    );

    // xorriso sees both El Torito entries: GRUB's BIOS image (with a boot info table it
    // checks) and the ESP for UEFI.
    let report = el_torito_report(&image);
    let boots = boot_image_lines(&report);
    assert_eq!(boots.len(), 2, "{report}");
    assert!(
        boots[0].contains("BIOS") && boots[0].contains(" y "),
        "{report}"
    );
    assert!(
        boots[1].contains("UEFI") && boots[1].contains(" y "),
        "{report}"
    );
    for want in [
        "El Torito img path :   1  /BOOT/BIOS.IMG",
        "El Torito img opts :   1  boot-info-table",
        "El Torito img path :   2  /ESP.IMG",
    ] {
        assert!(report.contains(want), "{want:?} missing:\n{report}");
    }
    // inspect reads the same view: the UEFI entry is the ESP partition, the BIOS entry
    // lies in the BIOS boot partition.
    let j = inspect(&image);
    let parts = j["partitions"].as_array().unwrap();
    let esp_off = parts[0]["offset"].as_u64().unwrap();
    let bios = parts
        .iter()
        .find(|p| p["type_name"] == "bios-boot")
        .unwrap_or_else(|| panic!("no BIOS boot partition: {j}"));
    let (bios_off, bios_len) = (
        bios["offset"].as_u64().unwrap(),
        bios["size"].as_u64().unwrap(),
    );
    assert_eq!(j["iso"]["volume_id"], "ONEIMAGE_TEST");
    let entries = j["iso"]["boot_entries"].as_array().unwrap();
    assert_eq!(entries[0]["platform"], "x86");
    let eltorito = entries[0]["offset"].as_u64().unwrap();
    assert!(eltorito > bios_off && eltorito < bios_off + bios_len, "{j}");
    assert_eq!(entries[1]["platform"], "UEFI");
    assert_eq!(entries[1]["offset"].as_u64().unwrap(), esp_off);
    let lba: u64 = boots[1].split_whitespace().last().unwrap().parse().unwrap();
    assert_eq!(lba * 2048, esp_off, "{report}");

    // The MBR holds GRUB's boot code, pointing at the BIOS boot partition, and still
    // the protective partition table sgdisk accepted above.
    let mbr = head(&image, 512);
    assert_eq!(
        u64::from_le_bytes(mbr[0x5c..0x64].try_into().unwrap()),
        bios_off / 512
    );
    assert_eq!(mbr[0x1c2], 0xEE, "protective MBR partition type");
    assert_eq!(&mbr[510..], &[0x55, 0xAA]);
    // inspect reads the same, and core.img's blocklist continues right after its first
    // sector, inside the partition.
    assert_eq!(
        j["bios_boot"]["core_sector"].as_u64().unwrap(),
        bios_off / 512
    );
    let core_sectors = j["bios_boot"]["core_sectors"].as_u64().unwrap();
    assert!(
        core_sectors > 1 && bios_off + core_sectors * 512 <= eltorito,
        "{j}"
    );

    // Debian's signed GRUB reads grub.cfg next to itself on a disc: the view holds one
    // that finds the ESP by its volume id and goes on with the ESP's menu.
    let cfg = d.path().join("grub.cfg");
    xorriso_extract(&image, "/EFI/BOOT/GRUB.CFG", &cfg);
    let cfg = std::fs::read_to_string(&cfg).unwrap();
    let esp_uuid = parts[0]["filesystem"]["uuid"].as_str().unwrap();
    assert!(
        cfg.contains(&format!("--fs-uuid --set=root {esp_uuid}"))
            && cfg.contains("source ($root)/EFI/BOOT/grub.cfg"),
        "{cfg}"
    );

    // The ESP, read through the ISO view by xorriso, is the ESP partition's bytes.
    let via_iso = d.path().join("esp-via-iso.img");
    xorriso_extract(&image, "/ESP.IMG", &via_iso);
    let esp = extract_partition(&image, 1, d.path());
    assert_eq!(sha256(&via_iso), sha256(&esp));
    // The root (over 4 GiB, so in several extents) has the partition's exact size and
    // starts at its first byte.
    let lsl = ok(std::process::Command::new("xorriso")
        .arg("-indev")
        .arg(&image)
        .args(["-find", "/ROOT.IMG", "-exec", "report_lba"]));
    let j = inspect(&image);
    let root_off = j["partitions"][1]["offset"].as_u64().unwrap();
    let root_len = j["partitions"][1]["size"].as_u64().unwrap();
    let extents: Vec<(u64, u64)> = lsl
        .lines()
        .filter(|l| l.starts_with("File data lba:"))
        .map(|l| {
            let f: Vec<&str> = l.split(',').map(str::trim).collect();
            let blocks: u64 = f[2].parse().unwrap();
            (f[1].parse().unwrap(), blocks * 2048)
        })
        .collect();
    assert!(extents.len() >= 2, "{lsl}");
    assert_eq!(extents[0].0 * 2048, root_off, "{lsl}");
    assert_eq!(extents.iter().map(|e| e.1).sum::<u64>(), root_len, "{lsl}");
}

#[test]
fn uefi_only_image_has_no_bios_boot_code() {
    let d = tempfile::tempdir().unwrap();
    write_tarball(&d.path().join("root.tar"), &full_items());
    let s = spec(
        d.path(),
        "name = \"uefi-only\"\n[rootfs]\ntarball = \"root.tar\"\n[boot]\nbios = false\n",
    );
    let out = d.path().join("out");
    ok(oneimage().arg("build").arg(&s).arg("-o").arg(&out));
    let image = out.join("uefi-only.img");
    let verify = ok(std::process::Command::new("sgdisk").arg("-v").arg(&image));
    assert!(verify.contains("No problems found"), "{verify}");
    let j = inspect(&image);
    let types: Vec<&str> = j["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["type_name"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["esp", "root-x86-64"]);
    assert!(j["bios_boot"].is_null(), "{j}");
    // The MBR is a bare protective MBR: no boot code at all.
    let mbr = head(&image, 440);
    assert!(mbr.iter().all(|&b| b == 0));
    let report = el_torito_report(&image);
    let boots = boot_image_lines(&report);
    assert_eq!(boots.len(), 1, "{report}");
    assert!(boots[0].contains("UEFI"), "{report}");
}

/// Names that only look dangerous (quotes, `!`, `-`, debugfs's `<N>` inode syntax) are
/// built as they are by an ordinary user, and a symlink to a host directory stays a
/// symlink: nothing outside the output is touched.
#[test]
fn hostile_but_valid_names_are_built_as_they_are() {
    use tar::EntryType as T;
    let d = shared_tempdir();
    let host = tempfile::tempdir().unwrap();
    let target = host.path().to_str().unwrap().to_string();
    let mut items = base_items();
    items.extend([
        Item {
            mode: 0o755,
            ..item("./etc/", T::Directory)
        },
        Item {
            mode: 0o600,
            uid: 1234,
            gid: 5678,
            data: b"q",
            ..item("./etc/q\"uote !touch PWNED", T::Regular)
        },
        Item {
            uid: 12,
            ..item("./etc/<12>", T::Regular)
        },
        Item {
            uid: 13,
            ..item("./etc/-r", T::Regular)
        },
        Item {
            mode: 0o620,
            gid: 5,
            dev: (1, 3),
            ..item("./etc/n\"ode", T::Char)
        },
        Item {
            link: Some(&target),
            ..item("./etc/out", T::Symlink)
        },
    ]);
    write_tarball(&d.path().join("root.tar"), &items);
    let s = spec(
        d.path(),
        "name = \"h\"\nsource-date-epoch = 1767225600\n[rootfs]\ntarball = \"root.tar\"\n",
    );
    let out = d.path().join("out");
    ok(unprivileged_oneimage(d.path())
        .current_dir(d.path())
        .arg("build")
        .arg(&s)
        .arg("-o")
        .arg(&out));
    let root = extract_partition(&out.join("h.img"), 2, d.path());
    e2fsck_clean(&root);
    let q = debugfs(&root, "stat \"/etc/q\"\"uote !touch PWNED\"");
    assert!(
        q.contains("User:  1234   Group:  5678") && q.contains("Mode:  0600"),
        "{q}"
    );
    assert!(debugfs(&root, "stat /etc/./<12>").contains("User:    12"));
    assert!(debugfs(&root, "stat /etc/-r").contains("User:    13"));
    let n = debugfs(&root, "stat \"/etc/n\"\"ode\"");
    assert!(
        n.contains("character special") && n.contains("01:03") && n.contains("Mode:  0620"),
        "{n}"
    );
    assert!(debugfs(&root, "stat /etc/out").contains(&format!("Fast link dest: \"{target}\"")));
    assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 0);
    assert!(!d.path().join("PWNED").exists());
}

/// A tarball that writes through a symlink to a host directory, or whose names hold a
/// line break followed by a shell command, is refused by entry; nothing runs and
/// nothing outside the output is written.
#[test]
fn hostile_tarballs_are_refused_by_entry_and_touch_nothing() {
    use tar::EntryType as T;
    let host = tempfile::tempdir().unwrap();
    let target = host.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let marker = host.path().join("PWNED");
    let target_s = target.to_str().unwrap().to_string();
    let newline = format!("./etc/x\n!touch {}", marker.display());
    let cases: [(Vec<Item>, &str); 2] = [
        (
            vec![
                Item {
                    link: Some(&target_s),
                    ..item("./a", T::Symlink)
                },
                Item {
                    data: b"pwned",
                    ..item("./a/x", T::Regular)
                },
            ],
            "\"/a/x\": its parent \"/a\" is a symlink in the root filesystem, not a directory",
        ),
        (
            vec![Item {
                data: b"x",
                ..item(&newline, T::Regular)
            }],
            "the name \"x\\n!touch",
        ),
    ];
    for (extra, want) in cases {
        let d = tempfile::tempdir().unwrap();
        let mut items = base_items();
        items.extend(extra);
        write_tarball(&d.path().join("root.tar"), &items);
        let err = failing_build(d.path(), "name = \"x\"\n[rootfs]\ntarball = \"root.tar\"\n");
        assert!(err.contains(want) && err.contains("root.tar"), "{err}");
        assert_eq!(std::fs::read_dir(&target).unwrap().count(), 0);
        assert!(!marker.exists());
    }
}

/// `build --json` reports each step as a JSON line and ends with a "done" object whose
/// image, artifacts and partitions are what was written; `--quiet` prints the image's
/// path and nothing but warnings.
#[test]
fn build_reports_progress_as_json_lines_or_quietly() {
    let d = tempfile::tempdir().unwrap();
    write_tarball(&d.path().join("root.tar"), &base_items());
    let s = spec(d.path(), "name = \"p\"\n[rootfs]\ntarball = \"root.tar\"\n");
    let out = d.path().join("json");
    let o = output(
        oneimage()
            .arg("build")
            .arg(&s)
            .arg("-o")
            .arg(&out)
            .arg("--json"),
    );
    assert!(o.status.success(), "{o:?}");
    let stdout = String::from_utf8(o.stdout.clone()).unwrap();
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let steps: Vec<&str> = lines
        .iter()
        .filter(|l| l["event"] == "step")
        .map(|l| l["step"].as_str().unwrap())
        .collect();
    for want in [
        "rootfs", "kernel", "esp", "root", "layout", "artifact", "image",
    ] {
        assert!(steps.contains(&want), "{want} missing from {steps:?}");
    }
    let done = lines.last().unwrap();
    assert_eq!(done["event"], "done", "{stdout}");
    let image = std::path::PathBuf::from(done["image"].as_str().unwrap());
    assert_eq!(image, out.join("p.img"));
    assert_eq!(
        done["size"].as_u64().unwrap(),
        std::fs::metadata(&image).unwrap().len()
    );
    let artifacts: Vec<&str> = done["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(!artifacts.is_empty());
    for a in &artifacts {
        assert!(std::path::Path::new(a).exists(), "{a}");
    }
    assert!(
        artifacts.iter().any(|a| a.ends_with("SHA256SUMS")),
        "{artifacts:?}"
    );
    let j = inspect(&image);
    assert_eq!(done["disk_guid"], j["disk_guid"]);
    assert_eq!(done["partitions"][1]["guid"], j["partitions"][1]["guid"]);
    // Nothing for people on stderr when the output is for machines.
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!stderr.contains("oneimage: "), "{stderr}");

    let out = d.path().join("quiet");
    let o = output(
        oneimage()
            .arg("build")
            .arg(&s)
            .arg("-o")
            .arg(&out)
            .arg("--quiet"),
    );
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        String::from_utf8(o.stdout).unwrap().trim(),
        out.join("p.img").display().to_string()
    );
    // Only warnings (this synthetic kernel has none of the modules the initramfs wants).
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("oneimage: warning: modules not in this kernel"),
        "{stderr}"
    );
    assert!(
        stderr.lines().all(|l| l.starts_with("oneimage: warning: ")),
        "--quiet said more than warnings:\n{stderr}"
    );
}

/// What one entry of a root filesystem is, as compared between builds: (type, mode,
/// uid, gid, link target or content digest, extended attributes).
type Listed = (String, u32, u64, u64, String, Vec<(String, Vec<u8>)>);

/// Reads a tar stream (from the source tarball, or `sqfs2tar` of a SquashFS root) into
/// a listing by path, hardlinks resolved to their target's listing.
fn tar_listing(bytes: &[u8]) -> std::collections::BTreeMap<String, Listed> {
    let mut out = std::collections::BTreeMap::new();
    let mut a = tar::Archive::new(bytes);
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let path = format!(
            "/{}",
            e.path()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("./")
                .trim_end_matches('/')
        );
        let h = e.header().clone();
        let mut xattrs: Vec<(String, Vec<u8>)> = e
            .pax_extensions()
            .unwrap()
            .into_iter()
            .flatten()
            .map(|x| x.unwrap())
            .filter_map(|x| {
                let k = x.key().unwrap().strip_prefix("SCHILY.xattr.")?.to_string();
                Some((k, x.value_bytes().to_vec()))
            })
            .collect();
        xattrs.sort();
        let kind = format!("{:?}", h.entry_type());
        let what = match h.entry_type() {
            tar::EntryType::Link => {
                let target = format!(
                    "/{}",
                    h.link_name()
                        .unwrap()
                        .unwrap()
                        .to_string_lossy()
                        .trim_start_matches("./")
                );
                let l: Listed = out.get(&target).cloned().expect("hardlink target first");
                out.insert(path, l);
                continue;
            }
            tar::EntryType::Symlink => h.link_name().unwrap().unwrap().display().to_string(),
            tar::EntryType::Char | tar::EntryType::Block => format!(
                "{}:{}",
                h.device_major().unwrap().unwrap(),
                h.device_minor().unwrap().unwrap()
            ),
            _ => {
                let mut data = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut data).unwrap();
                format!(
                    "{:?}",
                    sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&data))
                        .as_slice()
                )
            }
        };
        out.insert(
            path,
            (
                kind,
                h.mode().unwrap() & 0o7777,
                h.uid().unwrap(),
                h.gid().unwrap(),
                what,
                xattrs,
            ),
        );
    }
    out
}

/// `dump.erofs --path` of one entry: (type, mode, uid, gid, links, xattr bytes).
fn erofs_stat(img: &Path, path: &str) -> (String, u32, u64, u64, u64, u64) {
    let o = ok(std::process::Command::new("dump.erofs")
        .arg(format!("--path={path}"))
        .arg(img));
    let num = |key: &str| -> u64 {
        let at = o.find(key).unwrap_or_else(|| panic!("{key} in {o}")) + key.len();
        o[at..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let kind = [
        "regular file",
        "directory",
        "symlink",
        "char dev",
        "block dev",
        "FIFO file",
    ]
    .into_iter()
    .find(|k| o.contains(k))
    .unwrap_or("unknown")
    .to_string();
    let access = o.split("Access: ").nth(1).unwrap();
    let mode = u32::from_str_radix(&access[..4], 8).unwrap();
    (
        kind,
        mode,
        num("Uid:"),
        num("Gid:"),
        num("Links:"),
        num("Xattr size:"),
    )
}

#[test]
fn compressed_roots_keep_the_tree_and_build_the_same_bytes_without_root() {
    let d = shared_tempdir();
    let tar = d.path().join("root.tar");
    let mut items = full_items();
    items.push(Item {
        mode: 0o000,
        data: b"nobody reads this",
        ..item("./etc/locked", tar::EntryType::Regular)
    });
    write_tarball(&tar, &items);
    let source = tar_listing(&std::fs::read(&tar).unwrap());
    for (fs, file) in [("squashfs", "r-squashfs.img"), ("erofs", "r-erofs.img")] {
        let s = spec(
            d.path(),
            &format!("name = \"r-{fs}\"\nsource-date-epoch = 1767225600\n[rootfs]\ntarball = \"root.tar\"\n[root]\nfilesystem = \"{fs}\"\n"),
        );
        // Once as nobody, once as whoever runs the tests: the same bytes.
        let (a, b) = (
            d.path().join(format!("{fs}-a")),
            d.path().join(format!("{fs}-b")),
        );
        let o = output(
            unprivileged_oneimage(d.path())
                .arg("build")
                .arg(&s)
                .arg("-o")
                .arg(&a),
        );
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{log}");
        assert!(log.contains(&format!("root filesystem ({fs}")), "{log}");
        ok(oneimage().arg("build").arg(&s).arg("-o").arg(&b));
        let (ia, ib) = (a.join(file), b.join(file));
        assert_eq!(sha256(&ia), sha256(&ib), "{fs}: two builds");
        assert!(ok(std::process::Command::new("sgdisk").arg("-v").arg(&ia))
            .contains("No problems found"));
        let j = inspect(&ia);
        assert_eq!(j["partitions"][1]["filesystem"]["kind"], fs, "{j}");
        let root = extract_partition(&ia, 2, d.path());
        match fs {
            "squashfs" => {
                ok(std::process::Command::new("unsquashfs")
                    .arg("-stat")
                    .arg(&root));
                let o = std::process::Command::new("sqfs2tar")
                    .arg(&root)
                    .output()
                    .unwrap();
                assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
                let got = tar_listing(&o.stdout);
                // The image also holds what the builder adds for kernel updates.
                assert!(got.contains_key("/etc/oneimage/boot.toml"));
                for (path, want) in source.iter().filter(|(p, _)| *p != "/") {
                    let have = got
                        .get(path)
                        .unwrap_or_else(|| panic!("squashfs lacks {path}"));
                    // sqfs2tar writes hardlinks as links; the listing resolves both sides.
                    assert_eq!(have, want, "squashfs {path}");
                }
            }
            _ => {
                ok(std::process::Command::new("fsck.erofs").arg(&root));
                for (path, want) in &source {
                    let (kind, mode, uid, gid, links, xattr) = erofs_stat(&root, path);
                    let want_kind = match want.0.as_str() {
                        "Regular" | "Link" => "regular file",
                        "Directory" => "directory",
                        "Symlink" => "symlink",
                        "Char" => "char dev",
                        "Block" => "block dev",
                        "Fifo" => "FIFO file",
                        k => panic!("{k}"),
                    };
                    // dump.erofs 1.5 prints only the permission bits (the kernel
                    // reads setuid, setgid and sticky from the same field).
                    assert_eq!(
                        (kind.as_str(), mode, uid, gid),
                        (want_kind, want.1 & 0o777, want.2, want.3),
                        "erofs {path}"
                    );
                    assert_eq!(xattr > 0, !want.5.is_empty(), "erofs {path}: xattrs");
                    if path.starts_with("/usr/bin/passwd") {
                        assert_eq!(links, 2, "erofs {path}: one inode, two names");
                    }
                }
            }
        }
        std::fs::remove_file(root).unwrap();
    }
}
