//! Every source format, with and without a bmap, to a file and to a loop device: the
//! result's bytes equal the image's.

use crate::harness::*;
use std::path::{Path, PathBuf};

/// The image in every source format the writer reads, made by the standard tools
/// (and by us for seekable zstd). Returns (label, path).
pub fn all_formats(dir: &Path, img: &Path) -> Vec<(&'static str, PathBuf)> {
    let p = |n: &str| dir.join(n);
    run(
        "sh",
        &[
            "-c",
            &format!("xz -T2 --block-size=4MiB -1 -c {0} > {0}.xz", s(img)),
        ],
    );
    run(
        "sh",
        &[
            "-c",
            &format!("xz -T1 -1 -c {0} > {1}", s(img), s(&p("img-single.xz"))),
        ],
    );
    run("sh", &["-c", &format!("gzip -1 -c {0} > {0}.gz", s(img))]);
    run("sh", &["-c", &format!("bzip2 -1 -c {0} > {0}.bz2", s(img))]);
    run(
        "sh",
        &["-c", &format!("zstd -q -3 -c {0} > {0}.zst", s(img))],
    );
    run("zip", &["-q", "-j", "-1", s(&p("img.zip")), s(img)]);
    let f = std::fs::File::create(p("img-seekable.zst")).unwrap();
    oneimage_artifacts::zstd::compress_seekable(
        std::fs::File::open(img).unwrap(),
        f,
        3,
        1 << 20,
        2,
    )
    .unwrap();
    vec![
        ("raw", img.to_path_buf()),
        ("gzip", p("img.gz")),
        ("bzip2", p("img.bz2")),
        ("xz multi-block", p("img.xz")),
        ("xz single-block", p("img-single.xz")),
        ("zstd", p("img.zst")),
        ("zstd seekable", p("img-seekable.zst")),
        ("zip", p("img.zip")),
    ]
}

#[test]
fn every_format_to_a_file_with_and_without_bmap() {
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("img"), 1);
    run(
        "bmaptool",
        &["create", "-o", s(&t.path().join("img.bmap")), s(&img)],
    );
    let formats = all_formats(t.path(), &img);
    for (label, src) in &formats {
        let fmt = oneimage_write::source::Source::open(src).unwrap().format;
        for with_bmap in [true, false] {
            let out = t.path().join("out");
            let mut o = opts(src, &out);
            // img.xz finds img.bmap by itself; the others are given it.
            if with_bmap && !src.ends_with("img.xz") {
                o.bmap = Some(t.path().join("img.bmap"));
            }
            o.no_bmap = !with_bmap;
            let r = oneimage_write::write::write(&o).unwrap_or_else(|e| panic!("{label}: {e:#}"));
            assert_eq!(r.bmap.is_some(), with_bmap, "{label}");
            assert_eq!(r.image_size, IMAGE_SIZE, "{label}");
            assert!(
                r.written < IMAGE_SIZE / 4,
                "{label}: only mapped data is written"
            );
            assert_eq!(
                r.verified, IMAGE_SIZE,
                "{label}: the image's whole extent is read back"
            );
            assert_eq!(r.written + r.zeroed, IMAGE_SIZE, "{label}");
            assert_same(&img, &out, &format!("{label} ({fmt}), bmap {with_bmap}"));
            std::fs::remove_file(&out).unwrap();
        }
    }
}

#[test]
fn every_format_to_a_loop_device() {
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("img"), 2);
    std::fs::write(
        t.path().join("img.bmap"),
        oneimage_artifacts::bmap::create(&img).unwrap().to_xml(),
    )
    .unwrap();
    let formats = all_formats(t.path(), &img);
    for (i, (label, src)) in formats.iter().enumerate() {
        // Same size as the image, so nothing but the image is on it; half the runs
        // without the bmap.
        let back = t.path().join("disk");
        let f = std::fs::File::create(&back).unwrap();
        f.set_len(IMAGE_SIZE).unwrap();
        let lo = Loop::attach(&back, false);
        let mut o = opts(src, &lo.dev);
        o.checks.force = true; // loop devices are not removable
        o.no_bmap = i % 2 == 1;
        let recorded = oneimage_write::source::Source::open(src)
            .unwrap()
            .image_size
            .is_some();
        if o.no_bmap && !recorded {
            // gzip and bzip2 do not record the size: refused unless allowed.
            let e = write_err(&o);
            assert!(e.contains("--allow-unknown-size"), "{label}: {e}");
            o.checks.allow_unknown_size = true;
        }
        let r = oneimage_write::write::write(&o).unwrap_or_else(|e| panic!("{label}: {e:#}"));
        assert!(!r.gpt_moved);
        assert_same(&img, &lo.dev, label);
        drop(lo);
        std::fs::remove_file(&back).unwrap();
    }
}

#[test]
fn larger_dirty_device_gets_zeros_and_a_moved_backup_gpt() {
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("img"), 3);
    let back = t.path().join("disk");
    // 96 MiB of 0xff: a used stick.
    std::fs::write(&back, vec![0xffu8; 96 << 20]).unwrap();
    let lo = Loop::attach(&back, false);
    let mut o = opts(&img, &lo.dev);
    o.checks.force = true;
    let r = oneimage_write::write::write(&o).unwrap();
    assert!(
        r.gpt_moved,
        "the backup GPT is moved to the end of the larger disk"
    );
    assert_eq!(
        r.written + r.zeroed,
        IMAGE_SIZE,
        "every byte of the image's extent is written or zeroed"
    );
    assert!(r.written < IMAGE_SIZE / 4, "zeros are zeroed, not written");
    let mut dev = std::fs::File::open(&lo.dev).unwrap();
    let table = oneimage_format::gpt::read_table(&mut dev).unwrap();
    assert_eq!(table.backup_lba, (96 << 20) / 512 - 1);
    assert_eq!(table.partitions.len(), 1);
    let out = run("sgdisk", &["-v", s(&lo.dev)]);
    assert!(out.contains("No problems found"), "sgdisk -v: {out}");
    // Everything but the two GPT headers and the MBR's size field equals the image.
    let a = std::fs::read(&img).unwrap();
    let b = read_prefix(&lo.dev, IMAGE_SIZE);
    assert_eq!(
        a[1024..IMAGE_SIZE as usize - 33 * 512],
        b[1024..IMAGE_SIZE as usize - 33 * 512]
    );
    assert_eq!(a[..446], b[..446]);
}
