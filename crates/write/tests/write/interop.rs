//! bmaptool and we read each other's block maps.

use crate::harness::*;

#[test]
fn bmaptool_accepts_our_bmap_and_seekable_zstd() {
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("img"), 40);
    let ours = oneimage_artifacts::bmap::create(&img).unwrap();
    // Only the data ranges are mapped (holes and zero blocks are not).
    assert!(ours.mapped_bytes() < 8 << 20, "{}", ours.mapped_bytes());
    let bmap = t.path().join("img.bmap");
    std::fs::write(&bmap, ours.to_xml()).unwrap();
    let out = t.path().join("out");
    run("bmaptool", &["copy", "--bmap", s(&bmap), s(&img), s(&out)]);
    assert_same(&img, &out, "bmaptool copy with our bmap");
    // Our seekable .zst through bmaptool (which runs `zstd -d`).
    let zst = t.path().join("img.zst");
    oneimage_artifacts::zstd::compress_seekable(
        std::fs::File::open(&img).unwrap(),
        std::fs::File::create(&zst).unwrap(),
        3,
        1 << 20,
        2,
    )
    .unwrap();
    let out2 = t.path().join("out2");
    run("bmaptool", &["copy", "--bmap", s(&bmap), s(&zst), s(&out2)]);
    assert_same(&img, &out2, "bmaptool copy of our seekable zstd");
}

#[test]
fn we_accept_bmaptools_bmap() {
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("img"), 41);
    let bmap = t.path().join("theirs.bmap");
    run("bmaptool", &["create", "-o", s(&bmap), s(&img)]);
    let theirs = oneimage_write::bmap::load(&bmap).unwrap();
    assert_eq!(theirs.image_size, IMAGE_SIZE);
    assert!(theirs.ranges.iter().all(|r| r.sha256.is_some()));
    let out = t.path().join("out");
    let mut o = opts(&img, &out);
    o.bmap = Some(bmap);
    let r = oneimage_write::write::write(&o).unwrap();
    // Their map covers our data; zero blocks in it are zeroed rather than written.
    assert!(r.written <= theirs.mapped_bytes());
    assert_eq!(r.written + r.zeroed, IMAGE_SIZE);
    assert_same(&img, &out, "our write with bmaptool's bmap");
}
