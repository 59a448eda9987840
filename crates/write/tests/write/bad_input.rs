//! Bad input is a clear error, and the target is never left looking complete.

use crate::harness::*;
use std::path::Path;

fn compress(img: &Path, cmd: &str, out: &Path) {
    run("sh", &["-c", &format!("{cmd} -c {} > {}", s(img), s(out))]);
}

fn flip(p: &Path, at_fraction: f64) {
    let mut b = std::fs::read(p).unwrap();
    let i = (b.len() as f64 * at_fraction) as usize;
    b[i] ^= 0x10;
    std::fs::write(p, b).unwrap();
}

fn truncate(p: &Path) {
    let b = std::fs::read(p).unwrap();
    std::fs::write(p, &b[..b.len() * 2 / 3]).unwrap();
}

#[test]
fn truncated_and_bit_flipped_streams() {
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("img"), 10);
    let cases: [(&str, &str); 4] = [
        ("gz", "gzip -1"),
        ("xz", "xz -T2 --block-size=1MiB -1"),
        ("zst", "zstd -q -3"),
        ("bz2", "bzip2 -1"),
    ];
    for (ext, cmd) in cases {
        for (what, damage) in [
            ("truncated", truncate as fn(&Path)),
            ("bit-flipped", |p: &Path| flip(p, 0.5)),
        ] {
            let src = t.path().join(format!("bad.{ext}"));
            compress(&img, cmd, &src);
            damage(&src);
            // A target file that already exists must survive a failed write untouched.
            let out = t.path().join("out");
            std::fs::write(&out, b"previous content").unwrap();
            let e = write_err(&opts(&src, &out));
            // Refused before writing (a truncated .xz has no index at its end) or failed
            // while decompressing; either way the file is named.
            assert!(e.contains("bad."), "{what} {ext}: {e}");
            assert_eq!(
                std::fs::read(&out).unwrap(),
                b"previous content",
                "{what} {ext}"
            );
            std::fs::remove_file(&out).unwrap();
            assert_nothing_left(t.path(), "out");
        }
    }
    // Seekable zstd: a flipped byte inside a frame fails that frame's checksum.
    let src = t.path().join("bad-seekable.zst");
    oneimage_artifacts::zstd::compress_seekable(
        std::fs::File::open(&img).unwrap(),
        std::fs::File::create(&src).unwrap(),
        3,
        1 << 20,
        2,
    )
    .unwrap();
    // Flip a byte in the first frame (which holds the partition table and data).
    let mut b = std::fs::read(&src).unwrap();
    b[200] ^= 0x01;
    std::fs::write(&src, b).unwrap();
    let out = t.path().join("out");
    let e = write_err(&opts(&src, &out));
    assert!(e.contains("zstd frame 0"), "{e}");
    assert_nothing_left(t.path(), "out");
}

#[test]
fn bmap_for_another_image_or_with_a_bad_checksum() {
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("img"), 11);
    let other = make_image(&t.path().join("other"), 12);
    let other_map = oneimage_artifacts::bmap::create(&other).unwrap().to_xml();
    std::fs::write(t.path().join("other.bmap"), &other_map).unwrap();
    let out = t.path().join("out");
    // Same size, different content: the range checksums catch it.
    let mut o = opts(&img, &out);
    o.bmap = Some(t.path().join("other.bmap"));
    let e = write_err(&o);
    assert!(e.contains("does not match its bmap"), "{e}");
    assert_nothing_left(t.path(), "out");
    // Different size: refused before writing.
    let small = t.path().join("small");
    std::fs::write(&small, vec![1u8; 1 << 20]).unwrap();
    let mut o = opts(&small, &out);
    o.bmap = Some(t.path().join("other.bmap"));
    let e = write_err(&o);
    assert!(e.contains("belongs to another image"), "{e}");
    // The bmap's own checksum does not match (a range was edited).
    let edited = other_map.replacen("<Range chksum", "<Range  chksum", 1);
    std::fs::write(t.path().join("edited.bmap"), edited).unwrap();
    let mut o = opts(&other, &out);
    o.bmap = Some(t.path().join("edited.bmap"));
    let e = write_err(&o);
    assert!(
        e.contains("edited.bmap") && e.contains("BmapFileChecksum"),
        "{e}"
    );
    // A bmap whose range checksum is wrong (file checksum recomputed to match).
    let mut m = oneimage_format::bmap::Bmap::parse(&other_map, "x").unwrap();
    m.ranges[1].sha256 = Some([0u8; 32]);
    std::fs::write(t.path().join("wrong.bmap"), m.to_xml()).unwrap();
    let mut o = opts(&other, &out);
    o.bmap = Some(t.path().join("wrong.bmap"));
    let e = write_err(&o);
    assert!(
        e.contains("does not match its bmap") && e.contains("0000000000"),
        "{e}"
    );
    assert_nothing_left(t.path(), "out");
}

#[test]
fn readback_catches_a_target_changed_after_the_write() {
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("img"), 13);
    let out = t.path().join("out");
    // Without a bmap (zero blocks skipped), then with one (ranges checked while writing).
    for with_bmap in [false, true] {
        if with_bmap {
            let m = oneimage_artifacts::bmap::create(&img).unwrap();
            std::fs::write(t.path().join("img.bmap"), m.to_xml()).unwrap();
        }
        let mut o = opts(&img, &out);
        o.before_verify = Some(Box::new(|p: &Path| {
            // A faulty medium: one byte of the written data changes.
            let f = std::fs::OpenOptions::new().write(true).open(p)?;
            std::os::unix::fs::FileExt::write_all_at(&f, b"X", (20 << 20) + 100)?;
            Ok(())
        }));
        let e = write_err(&o);
        assert!(
            e.contains("readback failed") && e.contains("FAILED"),
            "bmap {with_bmap}: {e}"
        );
        assert_nothing_left(t.path(), "out");
    }
}

#[test]
fn zip_with_two_members_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a.img");
    let b = t.path().join("b.img");
    std::fs::write(&a, b"a").unwrap();
    std::fs::write(&b, b"b").unwrap();
    let z = t.path().join("two.zip");
    run("zip", &["-q", "-j", s(&z), s(&a), s(&b)]);
    let e = write_err(&opts(&z, &t.path().join("out")));
    assert!(e.contains("holds 2 files"), "{e}");
}
