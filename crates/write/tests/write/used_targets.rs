//! Targets as users have them: sticks and files that held other data. An image with a
//! real FAT32 and ext4 (zero blocks inside both, holes between) is written over random
//! bytes; afterwards the image's whole extent equals the image and sgdisk, fsck.fat and
//! e2fsck find nothing wrong. Also: too small targets are refused before the first byte
//! for every format that records its size, and a source changed during the write is
//! never what is written.

use crate::harness::*;
use oneimage_format::gpt::{write_table, Partition, TYPE_LINUX_DATA};
use oneimage_format::Guid;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const FS_IMAGE: u64 = 96 << 20;
const ESP: (u64, u64) = (1 << 20, 41 << 20);
const ROOT: (u64, u64) = (41 << 20, 95 << 20);
const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";

/// A 96 MiB sparse image: GPT, a FAT32 ESP (mkfs.fat + mcopy) and an ext4 root
/// (mkfs.ext4 -d), made at offsets inside the image file as the builder does.
fn make_fs_image(dir: &Path) -> PathBuf {
    let img = dir.join("fs.img");
    File::create(&img).unwrap().set_len(FS_IMAGE).unwrap();
    let tree = dir.join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    let mut rng = Rng::new(77);
    for i in 0..40 {
        let mut b = vec![0u8; 1000 + (rng.next() % 200_000) as usize];
        rng.fill(&mut b);
        std::fs::write(tree.join(format!("etc/file{i}")), b).unwrap();
    }
    run(
        "mkfs.fat",
        &[
            "-F",
            "32",
            "-n",
            "ESP",
            "-i",
            "12345678",
            "--offset",
            &(ESP.0 / 512).to_string(),
            s(&img),
            &((ESP.1 - ESP.0) / 1024).to_string(),
        ],
    );
    run_in(
        "mcopy",
        &[
            "-i",
            &format!("{}@@{}", s(&img), ESP.0),
            s(&tree.join("etc/file1")),
            "::/KERNEL",
        ],
        Some(("MTOOLS_SKIP_CHECK", Path::new("1"))),
    );
    run(
        "mkfs.ext4",
        &[
            "-q",
            "-F",
            "-d",
            s(&tree),
            "-U",
            "11111111-2222-3333-4444-555555555555",
            "-E",
            &format!("offset={}", ROOT.0),
            s(&img),
            &format!("{}k", (ROOT.1 - ROOT.0) / 1024),
        ],
    );
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    let part = |n: u32, t: &str, (a, b): (u64, u64), name: &str| Partition {
        number: n,
        type_guid: t.parse().unwrap(),
        guid: Guid::derive("used-targets", name),
        name: name.into(),
        first_lba: a / 512,
        last_lba: b / 512 - 1,
        attributes: 0,
    };
    write_table(
        &mut f,
        512,
        Guid::derive("used-targets", "disk"),
        &[
            part(1, ESP_TYPE, ESP, "esp"),
            part(2, TYPE_LINUX_DATA, ROOT, "root"),
        ],
    )
    .unwrap();
    img
}

/// Fills `path` with `len` seeded random bytes: a stick that held something else.
fn used(path: &Path, len: u64, seed: u64) {
    let f = File::create(path).unwrap();
    let mut rng = Rng::new(seed);
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        for c in buf.chunks_mut(8) {
            c.copy_from_slice(&rng.next().to_ne_bytes());
        }
        let n = (len - off).min(buf.len() as u64) as usize;
        f.write_all_at(&buf[..n], off).unwrap();
        off += n as u64;
    }
}

/// Runs a checker (C locale) and asserts it found nothing wrong.
fn checker_accepts(prog: &str, args: &[&str], what: &str) {
    let out = std::process::Command::new(prog)
        .env("LC_ALL", "C")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {prog} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// sgdisk, fsck.fat and e2fsck on what `target` holds.
fn independent_checks(target: &Path, dir: &Path, what: &str) {
    let out = std::process::Command::new("sgdisk")
        .env("LC_ALL", "C")
        .args(["-v", s(target)])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("No problems found"),
        "{what}: sgdisk -v: {text}"
    );
    let part = |(a, b): (u64, u64), name: &str| {
        let p = dir.join(name);
        let mut buf = vec![0u8; (b - a) as usize];
        File::open(target)
            .unwrap()
            .read_exact_at(&mut buf, a)
            .unwrap();
        std::fs::write(&p, buf).unwrap();
        p
    };
    let esp = part(ESP, "esp.part");
    checker_accepts("fsck.fat", &["-n", s(&esp)], what);
    let root = part(ROOT, "root.part");
    checker_accepts("e2fsck", &["-fn", s(&root)], what);
    std::fs::remove_file(esp).unwrap();
    std::fs::remove_file(root).unwrap();
}

#[test]
fn the_image_over_random_bytes_is_exact_and_clean() {
    let t = tempfile::tempdir().unwrap();
    let img = make_fs_image(t.path());
    // The image itself passes the checks (so a failure below is the writer's).
    independent_checks(&img, t.path(), "the image");
    let ours = t.path().join("ours.bmap");
    std::fs::write(
        &ours,
        oneimage_artifacts::bmap::create(&img).unwrap().to_xml(),
    )
    .unwrap();
    let theirs = t.path().join("theirs.bmap");
    run("bmaptool", &["create", "-o", s(&theirs), s(&img)]);
    let our_map = oneimage_write::bmap::load(&ours).unwrap();
    let their_map = oneimage_write::bmap::load(&theirs).unwrap();
    // Every block bmaptool maps, we map too.
    for r in &their_map.ranges {
        for b in [r.first, r.last] {
            assert!(
                our_map.ranges.iter().any(|o| o.first <= b && b <= o.last),
                "bmaptool maps block {b}, we do not"
            );
        }
    }
    run(
        "sh",
        &["-c", &format!("zstd -q -3 -c {0} > {0}.zst", s(&img))],
    );
    run(
        "sh",
        &["-c", &format!("xz -T2 -1 -c {0} > {0}.xz", s(&img))],
    );
    let zst = PathBuf::from(format!("{}.zst", s(&img)));
    let xz = PathBuf::from(format!("{}.xz", s(&img)));
    let cases: [(&str, &Path, Option<&Path>); 4] = [
        ("raw with our bmap", &img, Some(&ours)),
        ("raw with bmaptool's bmap", &img, Some(&theirs)),
        (".zst without a bmap", &zst, None),
        (".xz without a bmap", &xz, None),
    ];
    for (i, (label, src, map)) in cases.iter().enumerate() {
        // A loop device of the image's size, and a file, both full of old bytes.
        let back = t.path().join("disk");
        used(&back, FS_IMAGE, 1000 + i as u64);
        let lo = Loop::attach(&back, false);
        let out = t.path().join("out.img");
        used(&out, FS_IMAGE + (3 << 20), 2000 + i as u64);
        for target in [lo.dev.clone(), out.clone()] {
            let mut o = opts(src, &target);
            o.checks.force = true;
            o.bmap = map.map(Path::to_path_buf);
            o.no_bmap = map.is_none();
            let r = oneimage_write::write::write(&o)
                .unwrap_or_else(|e| panic!("{label} to {}: {e:#}", target.display()));
            assert_eq!(r.verified, FS_IMAGE, "{label}: whole extent read back");
            assert_same(&img, &target, label);
            independent_checks(&target, t.path(), label);
        }
        if i == 0 {
            assert_eq!(
                std::fs::metadata(&out).unwrap().len(),
                FS_IMAGE,
                "a file target is the image, not the old file's length"
            );
        }
        drop(lo);
        std::fs::remove_file(&back).unwrap();
    }
    // A larger used stick: the backup GPT moves to its end and everything checks out.
    let back = t.path().join("big");
    used(&back, FS_IMAGE + (64 << 20), 3000);
    let lo = Loop::attach(&back, false);
    let mut o = opts(&xz, &lo.dev);
    o.checks.force = true;
    o.no_bmap = true;
    let r = oneimage_write::write::write(&o).unwrap();
    assert!(r.gpt_moved);
    independent_checks(&lo.dev, t.path(), "larger stick");
    let a = std::fs::read(&img).unwrap();
    let b = read_prefix(&lo.dev, FS_IMAGE);
    // All but the MBR's size field, the primary GPT header and the old backup GPT.
    assert_eq!(
        a[1024..FS_IMAGE as usize - 33 * 512],
        b[1024..FS_IMAGE as usize - 33 * 512]
    );
}

fn sha(p: &Path) -> [u8; 32] {
    oneimage_format::hash::sha256(File::open(p).unwrap()).unwrap()
}

#[test]
fn too_small_targets_are_refused_before_the_first_byte() {
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("img"), 60);
    let formats = crate::roundtrip::all_formats(t.path(), &img);
    let back = t.path().join("small");
    used(&back, IMAGE_SIZE - (1 << 20), 61);
    let before = sha(&back);
    let lo = Loop::attach(&back, false);
    for (label, src) in &formats {
        let recorded = oneimage_write::source::Source::open(src)
            .unwrap()
            .image_size
            .is_some();
        let mut o = opts(src, &lo.dev);
        o.checks.force = true;
        o.no_bmap = true;
        let e = write_err(&o);
        if recorded {
            assert!(e.contains("too small"), "{label}: {e}");
        } else {
            // gzip, bzip2: the size is unknown, so it is refused as such.
            assert!(e.contains("--allow-unknown-size"), "{label}: {e}");
        }
        assert!(!e.contains("FAILED"), "{label}: refused, not failed: {e}");
    }
    drop(lo);
    assert_eq!(sha(&back), before, "the target's bytes are unchanged");
    // Allowed to write a gzip of unknown size: it fails at the end of the device and
    // leaves no partition table.
    let lo = Loop::attach(&back, false);
    let gz = formats
        .iter()
        .find(|(l, _)| *l == "gzip")
        .unwrap()
        .1
        .clone();
    let mut o = opts(&gz, &lo.dev);
    o.checks.force = true;
    o.no_bmap = true;
    o.checks.allow_unknown_size = true;
    let e = write_err(&o);
    assert!(
        e.contains("does not fit") && e.contains("INCOMPLETE"),
        "{e}"
    );
    let mut dev = File::open(&lo.dev).unwrap();
    assert!(oneimage_format::gpt::read_table(&mut dev).is_err());
}

#[test]
fn a_source_changed_during_the_write_is_not_what_is_written() {
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("disk.img"), 62);
    let sum = oneimage_format::hash::hex(&sha(&img));
    std::fs::write(t.path().join("SHA256SUMS"), format!("{sum}  disk.img\n")).unwrap();
    let back = t.path().join("stick");
    used(&back, IMAGE_SIZE, 63);
    let lo = Loop::attach(&back, false);
    // 1. Changed in place behind the reader: the checksum, computed over the very
    //    bytes written, no longer matches, and the target is erased.
    let mut o = opts(&img, &lo.dev);
    o.checks.force = true;
    o.no_bmap = true;
    let victim = img.clone();
    o.during_copy = Some(Box::new(move |done| {
        if done == 1 << 20 {
            let f = OpenOptions::new().write(true).open(&victim).unwrap();
            f.write_all_at(b"EVIL", 40 << 20).unwrap();
        }
    }));
    let e = write_err(&o);
    assert!(
        e.contains("CHECKSUM MISMATCH") && e.contains("INCOMPLETE"),
        "{e}"
    );
    let mut dev = File::open(&lo.dev).unwrap();
    assert!(
        oneimage_format::gpt::read_table(&mut dev).is_err(),
        "no partition table is left on the target"
    );
    // 2. Replaced by another file under the same name: the open file is written, and
    //    it is the one checked.
    make_image(&img, 62);
    let evil = t.path().join("evil.img");
    make_image(&evil, 64);
    let mut o = opts(&img, &lo.dev);
    o.checks.force = true;
    o.no_bmap = true;
    let (from, to) = (evil.clone(), img.clone());
    o.during_copy = Some(Box::new(move |done| {
        if done == 1 << 20 {
            std::fs::rename(&from, &to).unwrap();
        }
    }));
    oneimage_write::write::write(&o).unwrap();
    make_image(&t.path().join("orig.img"), 62);
    assert_same(
        &t.path().join("orig.img"),
        &lo.dev,
        "the file that was opened",
    );
}
