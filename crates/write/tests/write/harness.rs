//! Test harness: synthetic images, external tools, loop devices and mounts with guards.

use oneimage_format::gpt::{write_table, Partition, TYPE_LINUX_DATA};
use oneimage_format::Guid;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Size of the synthetic images: 64 MiB plus three sectors, so the end is not 4K-aligned.
pub const IMAGE_SIZE: u64 = (64 << 20) + 1536;

/// A small, fast, seeded generator (xorshift64*).
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Compressible bytes (16 symbols), so the compressors run fast.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for c in buf.chunks_mut(8) {
            let v = self.next();
            for (i, b) in c.iter_mut().enumerate() {
                *b = b'A' + ((v >> (i * 4)) & 0x0f) as u8;
            }
        }
    }
}

/// Writes a sparse image with a GPT and seeded data ranges (one ends unaligned, one
/// sits in the last, partial 4K block).
pub fn make_image(path: &Path, seed: u64) -> PathBuf {
    let f = File::create(path).unwrap();
    f.set_len(IMAGE_SIZE).unwrap();
    let mut rng = Rng::new(seed);
    let ranges: [(u64, usize); 5] = [
        (1 << 20, 1 << 20),
        (3 << 20, (2 << 20) + 700),
        (20 << 20, 512 << 10),
        (40 << 20, 1 << 20),
        ((63 << 20) + 4096, 8192),
    ];
    for (off, len) in ranges {
        let mut buf = vec![0u8; len];
        rng.fill(&mut buf);
        f.write_all_at(&buf, off).unwrap();
    }
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let parts = vec![Partition {
        number: 1,
        type_guid: TYPE_LINUX_DATA.parse().unwrap(),
        guid: Guid::derive("test", &seed.to_string()),
        name: "data".into(),
        first_lba: 2048,
        last_lba: (IMAGE_SIZE / 512) - 34 - 1,
        attributes: 0,
    }];
    write_table(
        &mut f,
        512,
        Guid::derive("test-disk", &seed.to_string()),
        &parts,
    )
    .unwrap();
    path.to_path_buf()
}

/// Runs a program and asserts it succeeded; returns stdout.
pub fn run(prog: &str, args: &[&str]) -> String {
    run_in(prog, args, None)
}

/// Runs a program with an environment variable set; asserts success.
pub fn run_in(prog: &str, args: &[&str], env: Option<(&str, &Path)>) -> String {
    let mut c = Command::new(prog);
    // The tests read what the tools print: the C locale's words.
    c.args(args).env("LC_ALL", "C");
    if let Some((k, v)) = env {
        c.env(k, v);
    }
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e} (install it with scripts/setup.sh)"));
    assert!(
        out.status.success(),
        "{prog} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Path as &str.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Bytes of a file or device, up to `len`.
pub fn read_prefix(p: &Path, len: u64) -> Vec<u8> {
    let f = File::open(p).unwrap();
    let mut buf = vec![0u8; len as usize];
    f.read_exact_at(&mut buf, 0).unwrap();
    buf
}

/// Asserts that `target` starts with exactly the bytes of `image`.
pub fn assert_same(image: &Path, target: &Path, what: &str) {
    let a = std::fs::read(image).unwrap();
    let b = read_prefix(target, a.len() as u64);
    if a != b {
        let first = a.iter().zip(&b).position(|(x, y)| x != y).unwrap();
        panic!(
            "{what}: {} differs from {} at byte {first}",
            target.display(),
            image.display()
        );
    }
}

/// A loop device, detached on drop.
pub struct Loop {
    pub dev: PathBuf,
}

impl Loop {
    /// Attaches `file` (read-only with `ro`). A machine without loop devices fails the
    /// test: it cannot run there.
    pub fn attach(file: &Path, ro: bool) -> Loop {
        assert!(
            Path::new("/dev/loop-control").exists(),
            "/dev/loop-control is absent: loop-device tests cannot run here (run them as root on a machine with the loop module)"
        );
        let mut args = vec!["-f", "--show"];
        if ro {
            args.push("-r");
        }
        args.push(s(file));
        let dev = run("losetup", &args).trim().to_string();
        Loop {
            dev: PathBuf::from(dev),
        }
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        for _ in 0..5 {
            let ok = Command::new("losetup")
                .arg("-d")
                .arg(&self.dev)
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        eprintln!("warning: could not detach {}", self.dev.display());
    }
}

/// A mount, unmounted on drop.
pub struct Mount {
    pub dir: PathBuf,
}

impl Mount {
    pub fn new(dev: &Path, dir: &Path) -> Mount {
        run("mount", &[s(dev), s(dir)]);
        Mount {
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        for _ in 0..5 {
            if Command::new("umount")
                .arg(&self.dir)
                .status()
                .map(|s| s.success())
                .unwrap_or(false)
            {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        eprintln!("warning: could not unmount {}", self.dir.display());
    }
}

/// Options for writing to a test target without prompts.
pub fn opts(src: &Path, target: &Path) -> oneimage_write::write::WriteOptions {
    let mut o = oneimage_write::write::WriteOptions::new(src, target);
    o.checks.yes = true;
    o.threads = 2;
    o
}

/// The error text of a failed write (panics if it succeeded).
pub fn write_err(o: &oneimage_write::write::WriteOptions) -> String {
    match oneimage_write::write::write(o) {
        Ok(r) => panic!(
            "writing {} to {} should have failed: {r:?}",
            o.source.display(),
            o.target.display()
        ),
        Err(e) => format!("{e:#}"),
    }
}

/// No file named `name` or `.name.partial-*` is left in `dir`.
pub fn assert_nothing_left(dir: &Path, name: &str) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(
            n != name && !n.starts_with(&format!(".{name}.partial")),
            "{n} was left behind in {}",
            dir.display()
        );
    }
}
