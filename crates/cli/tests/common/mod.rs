//! Shared helpers for the integration tests: running the real `oneimage` binary and the
//! independent tools that judge its output.
#![allow(dead_code)]

use sha2::{Digest, Sha256};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The marker the demo image prints when its boot is complete.
pub const MARKER: &str = "oneimage-demo: booted";

/// A command for the `oneimage` binary under test.
pub fn oneimage() -> Command {
    Command::new(env!("CARGO_BIN_EXE_oneimage"))
}

/// Runs `cmd` in the C locale (tests read the output of the tools they run) and returns
/// its output, panicking if it could not start.
pub fn output(cmd: &mut Command) -> Output {
    cmd.env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

/// Runs `cmd`, panics with its output unless it exits 0, and returns stdout as text.
pub fn ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The repository's top directory.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// SHA-256 of a file, as hex.
pub fn sha256(path: &Path) -> String {
    let mut f = std::fs::File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// The first `n` bytes of `path`.
pub fn head(path: &Path, n: usize) -> Vec<u8> {
    use std::io::Read;
    let mut b = vec![0u8; n];
    std::fs::File::open(path)
        .unwrap()
        .read_exact(&mut b)
        .unwrap();
    b
}

/// xorriso's report of the El Torito boot catalog of `image`.
pub fn el_torito_report(image: &Path) -> String {
    ok(Command::new("xorriso")
        .arg("-indev")
        .arg(image)
        .args(["-report_el_torito", "plain"]))
}

/// The lines of an El Torito report that describe boot images, in catalog order.
pub fn boot_image_lines(report: &str) -> Vec<&str> {
    report
        .lines()
        .filter(|l| l.starts_with("El Torito boot img"))
        .collect()
}

/// Extracts the file `iso_path` of `image`'s ISO 9660 view to `out` with xorriso.
pub fn xorriso_extract(image: &Path, iso_path: &str, out: &Path) {
    ok(Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(image)
        .args(["-extract", iso_path])
        .arg(out));
}

/// The partitions of `image` as `oneimage inspect --json` reports them.
pub fn inspect(image: &Path) -> serde_json::Value {
    let text = ok(oneimage().arg("inspect").arg("--json").arg(image));
    serde_json::from_str(&text).expect("inspect --json prints JSON")
}

/// Copies bytes `[offset, offset+len)` of `image` into a new file `out`.
pub fn extract(image: &Path, offset: u64, len: u64, out: &Path) {
    let mut src = std::fs::File::open(image).unwrap();
    src.seek(SeekFrom::Start(offset)).unwrap();
    let mut dst = std::fs::File::create(out).unwrap();
    std::io::copy(&mut src.take(len), &mut dst).unwrap();
    dst.flush().unwrap();
}

/// First and last 512-byte sector of partition `n` (1-based) of `image`, as sgdisk reads
/// the GPT.
pub fn partition_sectors(image: &Path, n: u32) -> (u64, u64) {
    let info = ok(Command::new("sgdisk").arg(format!("--info={n}")).arg(image));
    let field = |name: &str| -> u64 {
        let line = info
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {info}"));
        line.split(':')
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    (field("First sector"), field("Last sector"))
}

/// Extracts partition `n` (1-based) of `image` into `dir`, using the GPT sgdisk reads.
pub fn extract_partition(image: &Path, n: u32, dir: &Path) -> PathBuf {
    let (first, last) = partition_sectors(image, n);
    let out = dir.join(format!("p{n}.img"));
    extract(image, first * 512, (last + 1 - first) * 512, &out);
    out
}

/// Runs a debugfs request against an ext4 image and returns what it printed.
pub fn debugfs(fs: &Path, request: &str) -> String {
    ok(Command::new("debugfs").arg("-R").arg(request).arg(fs))
}

/// True when running as root (then tests switch to an ordinary user where needed).
pub fn is_root() -> bool {
    rustix_uid() == 0
}

fn rustix_uid() -> u32 {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// A command that runs the `oneimage` binary as an unprivileged user: `nobody` via
/// setpriv when we are root, or as ourselves when we already are an ordinary user.
///
/// The binary is first copied into `shared` (see [`shared_tempdir`]), since `nobody`
/// may not be able to reach the build tree (a checkout under /root, say).
pub fn unprivileged_oneimage(shared: &Path) -> Command {
    let program = shared.join("oneimage");
    if !program.exists() {
        // The statically linked oneimage (which images carry) and the static boot agent
        // next to it, where `oneimage build` looks first.
        let agents = Path::new(env!("CARGO_BIN_EXE_oneimage")).with_file_name("../agent");
        for name in ["oneimage", "oneimage-init"] {
            let from = agents.join(name);
            std::fs::copy(&from, shared.join(name))
                .unwrap_or_else(|e| panic!("{}: {e} (run scripts/build-agent.sh)", from.display()));
        }
    }
    if is_root() {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg("env")
            .arg("HOME=/nonexistent")
            .arg(&program);
        c
    } else {
        Command::new(&program)
    }
}

/// Copies a file or directory tree into `shared`, readable by everyone; returns the copy.
pub fn share(src: &Path, shared: &Path) -> PathBuf {
    let dst = shared.join(src.file_name().unwrap());
    ok(Command::new("cp")
        .args(["-r", "--no-preserve=ownership"])
        .arg(src)
        .arg(&dst));
    ok(Command::new("chmod").args(["-R", "a+rX"]).arg(&dst));
    dst
}

/// A temporary directory anyone can write to (for unprivileged builds).
pub fn shared_tempdir() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let d = tempfile::Builder::new()
        .prefix("oneimage-test-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(d.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    d
}

/// Lists what is left in `dir`: after a failed build there must be no image and no
/// work directory.
pub fn leftovers(dir: &Path) -> Vec<String> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Runs `e2fsck -fn` on an ext4 image and fails on any problem, including the ones
/// e2fsck declines to fix under -n yet still exits 0 for.
pub fn e2fsck_clean(fs: &Path) {
    let out = ok(Command::new("e2fsck").arg("-fn").arg(fs));
    assert!(
        !out.contains("? no"),
        "e2fsck found problems in {}:\n{out}",
        fs.display()
    );
}

/// A small seeded generator (splitmix64), so that a campaign's cut points can be
/// replayed from its seed.
pub struct Seeded(pub u64);

impl Seeded {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A number from the environment variable `name`, or `default`.
pub fn env_number(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        Err(_) => default,
    }
}

/// Boots `image` headless with `args` until `expect` appears on the serial console, for
/// at most `timeout` seconds; returns the console.
pub fn boot_console(image: &Path, expect: &str, timeout: u64, args: &[&str]) -> String {
    let d = tempfile::tempdir().unwrap();
    let log = d.path().join("console.log");
    ok(oneimage()
        .arg("qemu")
        .arg(image)
        .args(["--headless", "--quiet", "--expect", expect])
        .args(["--timeout", &timeout.to_string(), "--console-log"])
        .arg(&log)
        .args(args));
    String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned()
}

/// Cuts the power of `image`'s VM `ms` milliseconds after `trigger` appears; returns
/// the console up to the cut.
pub fn cut_power(image: &Path, trigger: &str, ms: u64, extra: &[&str]) -> String {
    let ms = ms.to_string();
    let args: Vec<&str> = ["--power-cut-after", ms.as_str()]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
    boot_console(image, trigger, 900, &args)
}

/// Fails unless every one of `steps` is on `console`, naming the missing one and `what`
/// was booted.
pub fn assert_steps(console: &str, what: &str, steps: &[&str]) {
    for step in steps {
        assert!(
            console.contains(step),
            "{what}: {step:?} missing from the console:\n{console}"
        );
    }
}

/// Builds a variant of the demo (examples/debian.toml) in `dir` (emptied first): its
/// root filesystem from `rootfs_cache`, the overlay `overlay`, and with `secure_boot`
/// through Debian's signed shim and GRUB. Returns the image.
pub fn build_demo_variant(
    dir: &Path,
    overlay: &Path,
    secure_boot: bool,
    rootfs_cache: &Path,
) -> PathBuf {
    build_example_variant("debian", dir, overlay, secure_boot, rootfs_cache)
}

/// [`build_demo_variant`] of another example, `examples/EXAMPLE.toml`.
pub fn build_example_variant(
    example: &str,
    dir: &Path,
    overlay: &Path,
    secure_boot: bool,
    rootfs_cache: &Path,
) -> PathBuf {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let source = repo().join(format!("examples/{example}.toml"));
    let name = std::fs::read_to_string(&source)
        .unwrap()
        .lines()
        .find_map(|l| {
            l.strip_prefix("name = \"")?
                .strip_suffix('"')
                .map(str::to_string)
        })
        .expect("the example has a name");
    let mut text = std::fs::read_to_string(&source).unwrap().replace(
        "overlay = \"debian-overlay\"",
        &format!("overlay = \"{}\"", overlay.display()),
    );
    if secure_boot {
        text = text.replace("[boot]\n", "[boot]\nsecure-boot = true\n");
    }
    let spec = dir.join("variant.toml");
    std::fs::write(&spec, text).unwrap();
    let out = dir.join("out");
    ok(oneimage()
        .arg("build")
        .arg(&spec)
        .arg("-o")
        .arg(&out)
        .arg("--rootfs-cache")
        .arg(rootfs_cache));
    out.join(format!("{name}.img"))
}

/// The partition `root` (from `inspect --json`) reaches the end of `image` (but for the
/// backup GPT), and its filesystem fills it.
pub fn assert_fills_disk(image: &Path, root: &serde_json::Value) {
    let disk = std::fs::metadata(image).unwrap().len();
    let end = root["offset"].as_u64().unwrap() + root["size"].as_u64().unwrap();
    assert!(disk - end < 2 << 20, "root ends at {end} of {disk}");
    let fs_total = root["filesystem"]["total_bytes"].as_u64().unwrap();
    assert!(
        root["size"].as_u64().unwrap() - fs_total < 1 << 20,
        "{root}"
    );
}

/// A used disk (a stick, an internal disk): `len` bytes, the first 200 MiB and the last
/// 8 MiB seeded random (old partitions, an old backup GPT), the rest sparse.
pub fn used_disk(path: &Path, len: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::create(path).unwrap();
    f.set_len(len).unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 1 << 20];
    for at in (0..200u64).chain((len >> 20) - 8..len >> 20) {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c.copy_from_slice(&x.to_le_bytes());
        }
        f.write_all_at(&buf, at << 20).unwrap();
    }
}

/// Everything in `image` from byte `len` on is zeros: nothing was written past the
/// original image on the disk `--disk-size` made larger.
pub fn assert_zeros_after(image: &Path, len: u64) {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(image).unwrap();
    f.seek(SeekFrom::Start(len)).unwrap();
    let mut tail = Vec::new();
    f.read_to_end(&mut tail).unwrap();
    assert!(!tail.is_empty(), "{} did not grow", image.display());
    assert!(
        tail.iter().all(|&b| b == 0),
        "the boot wrote past the image"
    );
}

/// After a boot on `image` enlarged (by `--disk-size`) from `len` bytes: what was added
/// is still all zeros, and cut back to `len` the image's SHA-256 is still `before`.
/// Nothing was written to the disk.
pub fn assert_disk_unchanged(image: &Path, len: u64, before: &str) {
    assert_zeros_after(image, len);
    std::fs::OpenOptions::new()
        .write(true)
        .open(image)
        .unwrap()
        .set_len(len)
        .unwrap();
    assert_eq!(sha256(image), before, "a live boot changed the disk image");
}

/// A sparse copy of `image` in `dir`, named `name`.
pub fn sparse_copy(image: &Path, dir: &Path, name: &str) -> PathBuf {
    let to = dir.join(name);
    ok(Command::new("cp")
        .arg("--sparse=always")
        .arg(image)
        .arg(&to));
    to
}

/// Runs cryptsetup on the host (C locale) with `stdin`; returns its exit code and output.
pub fn cryptsetup(args: &[&str], stdin: &[u8]) -> (Option<i32>, String) {
    let mut child = Command::new("cryptsetup")
        .args(args)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cryptsetup runs (apt-get install cryptsetup-bin)");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let o = child.wait_with_output().unwrap();
    (
        o.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
    )
}

/// The value after `key:` on the first line of `dump` that has it.
pub fn field<'a>(dump: &'a str, key: &str) -> &'a str {
    dump.lines()
        .find_map(|l| l.trim().strip_prefix(key))
        .map(|v| v.trim_start_matches(':').trim())
        .unwrap_or_else(|| panic!("{key} in {dump}"))
}

/// Whether `text` occurs anywhere in the file `path` (GNU grep, reading it as bytes).
pub fn file_contains(path: &Path, text: &str) -> bool {
    let o = output(
        Command::new("grep")
            .args(["-q", "-a", "-F", "--", text])
            .arg(path)
            .env("LC_ALL", "C"),
    );
    match o.status.code() {
        Some(0) => true,
        Some(1) => false,
        other => panic!("grep {}: {other:?}", path.display()),
    }
}

/// Decrypts `len` bytes that lie `from` bytes into the LUKS2 data segment at `offset` of
/// `part`, with the volume key `key` (aes-xts-plain64: the tweak is the 512-byte sector
/// number from the segment's start, whatever the encryption sector size).
pub fn decrypt_at(
    part: &Path,
    key: &[u8],
    offset: u64,
    from: u64,
    sector: u64,
    len: u64,
) -> Vec<u8> {
    use aes::cipher::KeyInit;
    let (k1, k2) = key.split_at(key.len() / 2);
    let xts = xts_mode::Xts128::new(
        aes::Aes256::new_from_slice(k1).unwrap(),
        aes::Aes256::new_from_slice(k2).unwrap(),
    );
    let mut f = std::fs::File::open(part).unwrap();
    f.seek(SeekFrom::Start(offset + from)).unwrap();
    let mut data = vec![0u8; len as usize];
    f.read_exact(&mut data).unwrap();
    for (i, unit) in data.chunks_mut(sector as usize).enumerate() {
        let n = (from + i as u64 * sector) / 512;
        xts.decrypt_sector(unit, xts_mode::get_tweak_default(n as u128));
    }
    data
}

/// The volume key of the LUKS2 header in `part`, as `cryptsetup luksDump
/// --dump-volume-key` gives it for `passphrase` (through the file `key_file`).
pub fn dump_volume_key(part: &Path, passphrase: &str, key_file: &Path) -> Vec<u8> {
    let _ = std::fs::remove_file(key_file);
    let (code, out) = cryptsetup(
        &[
            "luksDump",
            "--dump-volume-key",
            "--volume-key-file",
            key_file.to_str().unwrap(),
            "--batch-mode",
            "--key-file",
            "-",
            part.to_str().unwrap(),
        ],
        passphrase.as_bytes(),
    );
    assert_eq!(code, Some(0), "{out}");
    std::fs::read(key_file).unwrap()
}

/// The data segment's byte offset in the output of `cryptsetup luksDump`.
pub fn luks_data_offset(dump: &str) -> u64 {
    field(dump, "offset")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// `cryptsetup luksDump` of `part`, which must be LUKS2 in aes-xts-plain64 with an
/// argon2id keyslot and a data segment over the whole device.
pub fn luks2_dump(part: &Path) -> String {
    let (code, dump) = cryptsetup(&["luksDump", part.to_str().unwrap()], b"");
    assert_eq!(code, Some(0), "{dump}");
    assert_eq!(field(&dump, "Version"), "2", "{dump}");
    assert_eq!(field(&dump, "cipher"), "aes-xts-plain64", "{dump}");
    assert_eq!(field(&dump, "PBKDF"), "argon2id", "{dump}");
    assert_eq!(field(&dump, "length"), "(whole device)", "{dump}");
    dump
}

/// `passphrase` opens the LUKS2 header in `part` (`cryptsetup open --test-passphrase`)
/// and `other` does not.
pub fn assert_opens_only_with(part: &Path, passphrase: &str, other: &str) {
    let test = [
        "open",
        "--test-passphrase",
        "--key-file",
        "-",
        part.to_str().unwrap(),
    ];
    let (code, out) = cryptsetup(&test, passphrase.as_bytes());
    assert_eq!(code, Some(0), "the passphrase opens it: {out}");
    let (code, out) = cryptsetup(&test, other.as_bytes());
    assert_eq!(code, Some(2), "{other:?} does not: {out}");
}
