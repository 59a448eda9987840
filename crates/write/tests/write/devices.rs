//! Target safety checks on real (loop) block devices.

use crate::harness::*;

fn sized(path: &std::path::Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

#[test]
fn refuses_a_device_that_is_too_small() {
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("img"), 20);
    let back = t.path().join("disk");
    sized(&back, 32 << 20);
    let lo = Loop::attach(&back, false);
    let mut o = opts(&img, &lo.dev);
    o.checks.force = true;
    let e = write_err(&o);
    assert!(e.contains("too small"), "{e}");
    // Nothing was written.
    assert!(read_prefix(&lo.dev, 1 << 20).iter().all(|&b| b == 0));
}

#[test]
fn refuses_a_mounted_device() {
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("img"), 21);
    let back = t.path().join("disk");
    sized(&back, 80 << 20);
    run("mkfs.ext4", &["-q", "-F", s(&back)]);
    let lo = Loop::attach(&back, false);
    let mnt = t.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = Mount::new(&lo.dev, &mnt);
    let mut o = opts(&img, &lo.dev);
    o.checks.force = true;
    let e = write_err(&o);
    assert!(e.contains("is mounted on") && e.contains(s(&mnt)), "{e}");
    drop(m);
    // The filesystem is intact.
    run("e2fsck", &["-fn", s(&lo.dev)]);
}

#[test]
fn refuses_a_missing_device_without_creating_a_file() {
    let missing = std::path::Path::new("/dev/oneimage-test-no-such-device");
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("img"), 22);
    let e = write_err(&opts(&img, missing));
    assert!(
        e.contains("does not exist") && e.contains("no file was created"),
        "{e}"
    );
    assert!(!missing.exists());
}

#[test]
fn refuses_the_disk_holding_the_source() {
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("img"), 23);
    // A loop device over the source file: writing to it would destroy the source.
    let lo = Loop::attach(&img, false);
    let mut o = opts(&img, &lo.dev);
    o.checks.force = true;
    let e = write_err(&o);
    assert!(e.contains("over the source file"), "{e}");
    // And a file target that is the source itself.
    let e = write_err(&opts(&img, &img));
    assert!(e.contains("the source file itself"), "{e}");
}

#[test]
fn refuses_read_only_and_non_removable_devices() {
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("img"), 24);
    let back = t.path().join("disk");
    sized(&back, 80 << 20);
    {
        let lo = Loop::attach(&back, true);
        let mut o = opts(&img, &lo.dev);
        o.checks.force = true;
        let e = write_err(&o);
        assert!(e.contains("read-only"), "{e}");
    }
    let lo = Loop::attach(&back, false);
    let e = write_err(&opts(&img, &lo.dev));
    assert!(
        e.contains("not a removable disk") && e.contains("--force"),
        "{e}"
    );
    assert!(read_prefix(&lo.dev, 1 << 20).iter().all(|&b| b == 0));
}

#[test]
fn refuses_a_device_held_open_exclusively() {
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("img"), 25);
    let back = t.path().join("disk");
    sized(&back, 80 << 20);
    let lo = Loop::attach(&back, false);
    use std::os::unix::fs::OpenOptionsExt;
    let _holder = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::EXCL.bits() as i32)
        .open(&lo.dev)
        .unwrap();
    let mut o = opts(&img, &lo.dev);
    o.checks.force = true;
    let e = write_err(&o);
    assert!(e.contains("in use"), "{e}");
}

#[test]
fn a_failed_write_to_a_device_says_incomplete_and_erases_the_tables() {
    let t = tempfile::tempdir().unwrap();
    let img = make_image(&t.path().join("img"), 26);
    let back = t.path().join("disk");
    sized(&back, 80 << 20);
    let lo = Loop::attach(&back, false);
    // 1. A faulty device: data changes under the loop device between write and readback.
    let mut o = opts(&img, &lo.dev);
    o.checks.force = true;
    let backing = back.clone();
    o.before_verify = Some(Box::new(move |_dev: &std::path::Path| {
        let f = std::fs::OpenOptions::new().write(true).open(&backing)?;
        std::os::unix::fs::FileExt::write_all_at(&f, b"X", (3 << 20) + 5)?;
        f.sync_all()?;
        Ok(())
    }));
    let e = write_err(&o);
    assert!(
        e.contains("readback failed") && e.contains("INCOMPLETE"),
        "{e}"
    );
    let head = read_prefix(&lo.dev, 1 << 20);
    assert!(
        head.iter().all(|&b| b == 0),
        "the partition tables were erased"
    );
    assert!(oneimage_format::gpt::read_table(&mut std::fs::File::open(&lo.dev).unwrap()).is_err());
    // 2. A bmap for another image: the mismatch is found mid-write.
    let other = make_image(&t.path().join("other"), 27);
    std::fs::write(
        t.path().join("other.bmap"),
        oneimage_artifacts::bmap::create(&other).unwrap().to_xml(),
    )
    .unwrap();
    let mut o = opts(&img, &lo.dev);
    o.checks.force = true;
    o.bmap = Some(t.path().join("other.bmap"));
    let e = write_err(&o);
    assert!(
        e.contains("does not match its bmap") && e.contains("INCOMPLETE"),
        "{e}"
    );
    assert!(read_prefix(&lo.dev, 1 << 20).iter().all(|&b| b == 0));
}
