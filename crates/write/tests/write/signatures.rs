//! Signatures: OpenPGP, minisign and signify, over the compressed file, the image or a
//! SHA256SUMS file. Good ones pass, bad ones stop everything before a byte is written,
//! missing ones fail only with --require-signature. Keys are made here, at run time.

use crate::harness::*;
use std::path::{Path, PathBuf};

struct Gpg {
    home: PathBuf,
    keyring: PathBuf,
}

fn gpg_key(dir: &Path) -> Gpg {
    let home = dir.join("gnupg");
    std::fs::create_dir(&home).unwrap();
    std::fs::set_permissions(&home, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let env = Some(("GNUPGHOME", home.as_path()));
    run_in(
        "gpg",
        &[
            "--batch",
            "--quiet",
            "--passphrase",
            "",
            "--quick-gen-key",
            "Test Signer <test@example.org>",
            "ed25519",
            "sign",
            "never",
        ],
        env,
    );
    let keyring = dir.join("signer.asc");
    run_in(
        "gpg",
        &[
            "--batch",
            "--armor",
            "--output",
            s(&keyring),
            "--export",
            "test@example.org",
        ],
        env,
    );
    Gpg { home, keyring }
}

impl Gpg {
    fn sign(&self, file: &Path, sig: &Path, armor: bool) {
        let mut args = vec![
            "--batch",
            "--yes",
            "--quiet",
            "--detach-sign",
            "--output",
            s(sig),
        ];
        if armor {
            args.push("--armor");
        }
        args.push(s(file));
        run_in("gpg", &args, Some(("GNUPGHOME", &self.home)));
    }
}

fn setup(seed: u64) -> (tempfile::TempDir, PathBuf, PathBuf) {
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("disk.img"), seed);
    run("xz", &["-T2", "-1", "-k", s(&img)]);
    let xz = t.path().join("disk.img.xz");
    (t, img, xz)
}

#[test]
fn openpgp_over_the_file_the_image_and_sha256sums() {
    let (t, img, xz) = setup(30);
    let g = gpg_key(t.path());
    let out = t.path().join("out");
    // 1. Over the compressed file.
    g.sign(&xz, &t.path().join("disk.img.xz.asc"), true);
    let mut o = opts(&xz, &out);
    o.keyrings = vec![g.keyring.clone()];
    o.require_signature = true;
    let r = oneimage_write::write::write(&o).unwrap();
    assert!(
        r.signatures.iter().any(|s| s.contains("disk.img.xz.asc")),
        "{:?}",
        r.signatures
    );
    assert_same(&img, &out, "signed xz");
    std::fs::remove_file(t.path().join("disk.img.xz.asc")).unwrap();
    // 2. Over the image inside (binary signature named after the image).
    let img_sig = t.path().join("disk.img.sig");
    g.sign(&img, &img_sig, false);
    let r = oneimage_write::write::write(&o).unwrap();
    assert!(
        r.signatures.iter().any(|s| s.contains("the image in")),
        "{:?}",
        r.signatures
    );
    std::fs::remove_file(&img_sig).unwrap();
    // 3. A signed SHA256SUMS listing the compressed file.
    let sums = t.path().join("SHA256SUMS");
    run(
        "sh",
        &[
            "-c",
            &format!("cd {} && sha256sum disk.img.xz > SHA256SUMS", s(t.path())),
        ],
    );
    g.sign(&sums, &t.path().join("SHA256SUMS.asc"), true);
    let r = oneimage_write::write::write(&o).unwrap();
    assert!(
        r.signatures.iter().any(|s| s.contains("SHA256SUMS")),
        "{:?}",
        r.signatures
    );
    // 4. The signed SHA256SUMS lists a different hash: refused.
    std::fs::remove_file(&out).unwrap();
    std::fs::write(&sums, format!("{}  disk.img.xz\n", "ab".repeat(32))).unwrap();
    g.sign(&sums, &t.path().join("SHA256SUMS.asc"), true);
    let e = write_err(&o);
    assert!(e.contains("CHECKSUM MISMATCH"), "{e}");
    assert_nothing_left(t.path(), "out");
}

#[test]
fn bad_and_missing_openpgp_signatures() {
    let (t, img, xz) = setup(31);
    let g = gpg_key(t.path());
    let out = t.path().join("out");
    // A signature of another file.
    g.sign(&img, &t.path().join("disk.img.xz.asc"), true);
    let mut o = opts(&xz, &out);
    o.keyrings = vec![g.keyring.clone()];
    let e = write_err(&o);
    assert!(
        e.contains("BAD SIGNATURE") && e.contains("disk.img.xz.asc"),
        "{e}"
    );
    assert_nothing_left(t.path(), "out");
    std::fs::remove_file(t.path().join("disk.img.xz.asc")).unwrap();
    // Missing: an error with --require-signature, a warning without.
    o.require_signature = true;
    let e = write_err(&o);
    assert!(
        e.contains("NO VERIFIED SIGNATURE") && e.contains("--require-signature"),
        "{e}"
    );
    assert_nothing_left(t.path(), "out");
    o.require_signature = false;
    let r = oneimage_write::write::write(&o).unwrap();
    assert!(r.signatures.is_empty());
    assert_same(&img, &out, "unsigned");
    // Signed, but by a key that was not given: not verified, so --require-signature fails.
    g.sign(&xz, &t.path().join("disk.img.xz.asc"), true);
    let mut o = opts(&xz, &t.path().join("out2"));
    o.require_signature = true;
    let e = write_err(&o);
    assert!(e.contains("NO VERIFIED SIGNATURE"), "{e}");
}

#[test]
fn minisign_good_and_bad() {
    let (t, img, xz) = setup(32);
    let (pk, sk) = (t.path().join("mini.pub"), t.path().join("mini.key"));
    run("minisign", &["-G", "-W", "-p", s(&pk), "-s", s(&sk)]);
    run(
        "minisign",
        &[
            "-S",
            "-s",
            s(&sk),
            "-m",
            s(&xz),
            "-x",
            s(&t.path().join("disk.img.xz.minisig")),
        ],
    );
    let out = t.path().join("out");
    let mut o = opts(&xz, &out);
    o.pubkeys = vec![pk.clone()];
    o.require_signature = true;
    let r = oneimage_write::write::write(&o).unwrap();
    assert!(
        r.signatures.iter().any(|s| s.contains("minisign")),
        "{:?}",
        r.signatures
    );
    assert_same(&img, &out, "minisign");
    std::fs::remove_file(&out).unwrap();
    // Signature of the image put next to the compressed file: bad.
    run(
        "minisign",
        &[
            "-S",
            "-s",
            s(&sk),
            "-m",
            s(&img),
            "-x",
            s(&t.path().join("disk.img.xz.minisig")),
        ],
    );
    let e = write_err(&o);
    assert!(e.contains("BAD SIGNATURE") && e.contains("minisig"), "{e}");
    assert_nothing_left(t.path(), "out");
}

#[test]
fn signify_good_and_bad() {
    let (t, img, xz) = setup(33);
    let (pk, sk) = (t.path().join("sy.pub"), t.path().join("sy.sec"));
    run("signify-openbsd", &["-G", "-n", "-p", s(&pk), "-s", s(&sk)]);
    // signify's usual way: sign a SHA256 list.
    run(
        "sh",
        &[
            "-c",
            &format!("cd {} && sha256sum disk.img.xz > SHA256SUMS", s(t.path())),
        ],
    );
    let sums = t.path().join("SHA256SUMS");
    run(
        "signify-openbsd",
        &[
            "-S",
            "-s",
            s(&sk),
            "-m",
            s(&sums),
            "-x",
            s(&t.path().join("SHA256SUMS.sig")),
        ],
    );
    let out = t.path().join("out");
    let mut o = opts(&xz, &out);
    o.pubkeys = vec![pk.clone()];
    o.require_signature = true;
    let r = oneimage_write::write::write(&o).unwrap();
    assert!(
        r.signatures.iter().any(|s| s.contains("signify")),
        "{:?}",
        r.signatures
    );
    assert_same(&img, &out, "signify");
    std::fs::remove_file(&out).unwrap();
    // Directly over the file, then the file changes: bad.
    std::fs::remove_file(&sums).unwrap();
    std::fs::remove_file(t.path().join("SHA256SUMS.sig")).unwrap();
    run(
        "signify-openbsd",
        &[
            "-S",
            "-s",
            s(&sk),
            "-m",
            s(&img),
            "-x",
            s(&t.path().join("disk.img.xz.sig")),
        ],
    );
    let e = write_err(&o);
    assert!(e.contains("BAD SIGNATURE") && e.contains("signify"), "{e}");
    assert_nothing_left(t.path(), "out");
}

#[test]
fn the_bmap_is_covered_by_the_signed_sha256sums() {
    let (t, img, xz) = setup(33);
    let g = gpg_key(t.path());
    let bmap = t.path().join("disk.img.bmap");
    std::fs::write(
        &bmap,
        oneimage_artifacts::bmap::create(&img).unwrap().to_xml(),
    )
    .unwrap();
    let sums = t.path().join("SHA256SUMS");
    let list = |files: &str| {
        run(
            "sh",
            &[
                "-c",
                &format!("cd {} && sha256sum {files} > SHA256SUMS", s(t.path())),
            ],
        );
        g.sign(&sums, &t.path().join("SHA256SUMS.asc"), true);
    };
    let out = t.path().join("out");
    let mut o = opts(&xz, &out);
    o.keyrings = vec![g.keyring.clone()];
    o.require_signature = true;
    // 1. Listed: the bmap is used and reported as verified.
    list("disk.img.xz disk.img.bmap");
    let r = oneimage_write::write::write(&o).unwrap();
    assert_eq!(r.bmap.as_deref(), Some(bmap.as_path()));
    assert!(
        r.bmap_verified
            .as_deref()
            .is_some_and(|v| v.contains("SHA256SUMS")),
        "{:?}",
        r.bmap_verified
    );
    assert_same(&img, &out, "signed xz and bmap");
    std::fs::remove_file(&out).unwrap();
    // 2. The bmap changed after signing (one range's checksum and the file checksum
    //    redone, as an attacker would): refused before anything is written.
    let text = std::fs::read_to_string(&bmap).unwrap();
    std::fs::write(&bmap, text.replacen("<BlockMap>", "<BlockMap> ", 1)).unwrap();
    let e = write_err(&o);
    assert!(
        e.contains("CHECKSUM MISMATCH") && e.contains("block map"),
        "{e}"
    );
    assert!(!out.exists());
    std::fs::write(&bmap, text).unwrap();
    // 3. Not listed, signatures required: the bmap is ignored, the write still exact.
    list("disk.img.xz");
    let r = oneimage_write::write::write(&o).unwrap();
    assert_eq!(r.bmap, None, "an unsigned bmap is not used");
    assert_same(&img, &out, "signed xz, unsigned bmap ignored");
}
