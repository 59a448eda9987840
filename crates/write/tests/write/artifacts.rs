//! Build artifacts: deterministic, readable by the standard tools and by our writer.

use crate::harness::*;
use oneimage_artifacts::{emit, ArtifactsSpec};

#[test]
fn artifacts_are_deterministic_and_standard() {
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("demo.img"), 50);
    let spec = ArtifactsSpec {
        zstd: true,
        zstd_level: 3,
        xz: true,
        xz_level: 1,
        xz_block_size: "8M".into(),
        ..Default::default()
    };
    let made = emit(&img, &spec).unwrap();
    let names: Vec<String> = made
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        ["demo.img.zst", "demo.img.xz", "demo.img.bmap", "SHA256SUMS"]
    );
    let first: Vec<Vec<u8>> = made.iter().map(|p| std::fs::read(p).unwrap()).collect();
    emit(&img, &spec).unwrap();
    for (p, a) in made.iter().zip(&first) {
        assert_eq!(
            &std::fs::read(p).unwrap(),
            a,
            "{} is not reproducible",
            p.display()
        );
    }
    for e in std::fs::read_dir(t.path()).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(!n.contains(".partial"), "temporary file {n} left behind");
    }
    // Standard tools read them.
    run(
        "sh",
        &[
            "-c",
            &format!("cd {} && sha256sum -c --quiet SHA256SUMS", s(t.path())),
        ],
    );
    run(
        "sh",
        &["-c", &format!("zstd -q -d -c {0}.zst | cmp - {0}", s(&img))],
    );
    run(
        "sh",
        &["-c", &format!("xz -d -c {0}.xz | cmp - {0}", s(&img))],
    );
    let list = run(
        "xz",
        &["--robot", "--list", s(&t.path().join("demo.img.xz"))],
    );
    let blocks: u64 = list
        .lines()
        .find(|l| l.starts_with("file"))
        .unwrap()
        .split('\t')
        .nth(2)
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        blocks >= 8,
        "xz has {blocks} blocks, so xz -T0 decodes it in parallel"
    );
    let src = oneimage_write::source::Source::open(&t.path().join("demo.img.zst")).unwrap();
    assert_eq!(src.format, oneimage_write::source::Format::ZstdSeekable);
    assert_eq!(src.image_size, Some(IMAGE_SIZE));
    let out = t.path().join("copy");
    run(
        "bmaptool",
        &["copy", s(&t.path().join("demo.img.xz")), s(&out)],
    );
    assert_same(&img, &out, "bmaptool copy of our .xz with our .bmap");
    for ext in ["zst", "xz"] {
        let out = t.path().join(format!("out-{ext}"));
        let r =
            oneimage_write::write::write(&opts(&t.path().join(format!("demo.img.{ext}")), &out))
                .unwrap();
        assert!(r.bmap.is_some(), "the .bmap next to it is found");
        assert_same(&img, &out, ext);
    }
}
