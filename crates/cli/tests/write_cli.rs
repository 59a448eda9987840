//! `oneimage write` and `oneimage bmap` as a user runs them: exit codes and messages.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn oneimage(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_oneimage"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn image(dir: &Path) -> PathBuf {
    let p = dir.join("img");
    let f = std::fs::File::create(&p).unwrap();
    f.set_len(16 << 20).unwrap();
    f.write_all_at(&[0x5a; 300_000], 1 << 20).unwrap();
    f.write_all_at(&[0xa5; 5000], 9 << 20).unwrap();
    p
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

struct Loop(String);

impl Loop {
    /// Attaches `file`; a machine without loop devices fails the test.
    fn attach(file: &Path) -> Loop {
        assert!(
            Path::new("/dev/loop-control").exists(),
            "/dev/loop-control is absent: this test cannot run here"
        );
        let out = Command::new("losetup")
            .args(["-f", "--show", file.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "losetup: {}", text(&out));
        Loop(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn without_yes_and_without_a_terminal_it_refuses() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path());
    let back = t.path().join("disk");
    std::fs::File::create(&back)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let lo = Loop::attach(&back);
    let o = oneimage(&["write", "--force", img.to_str().unwrap(), &lo.0]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("not a terminal") && text(&o).contains("--yes"),
        "{}",
        text(&o)
    );
    let mut head = vec![0u8; 2 << 20];
    std::fs::File::open(&lo.0)
        .unwrap()
        .read_exact_at(&mut head, 0)
        .unwrap();
    assert!(head.iter().all(|&b| b == 0), "the device was not touched");
}

#[test]
fn bmap_command_and_json_progress() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path());
    let o = oneimage(&["bmap", img.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let bmap = t.path().join("img.bmap");
    let xml = std::fs::read_to_string(&bmap).unwrap();
    assert!(
        xml.contains("<bmap version=\"2.0\">")
            && xml.contains("<MappedBlocksCount> 76 </MappedBlocksCount>"),
        "{xml}"
    );
    let out = t.path().join("out.img");
    let o = oneimage(&[
        "write",
        "--json",
        img.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert!(lines
        .iter()
        .any(|v| v["event"] == "progress" && v["phase"] == "verifying"));
    let done = lines.last().unwrap();
    assert_eq!(done["event"], "done");
    assert_eq!(done["ok"], true);
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
}

#[test]
fn failures_exit_non_zero_with_a_clear_message() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path());
    // A missing device.
    let o = oneimage(&[
        "write",
        "--yes",
        img.to_str().unwrap(),
        "/dev/oneimage-cli-no-such-disk",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("does not exist"), "{}", text(&o));
    // A truncated source, with --json: the last line says ok: false.
    let gz = t.path().join("img.gz");
    let st = Command::new("sh")
        .args([
            "-c",
            &format!(
                "gzip -c {} | head -c 8000 > {}",
                img.display(),
                gz.display()
            ),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let out = t.path().join("out.img");
    let o = oneimage(&[
        "write",
        "--json",
        gz.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let last: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(last["ok"], false);
    assert!(last["error"].as_str().unwrap().contains("FAILED"), "{last}");
    assert!(!out.exists());
    // --require-signature with no signature.
    let o = oneimage(&[
        "write",
        "--require-signature",
        img.to_str().unwrap(),
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("NO VERIFIED SIGNATURE"), "{}", text(&o));
    assert!(!out.exists());
}

#[test]
fn the_writer_never_opens_a_socket() {
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path());
    let st = Command::new("xz")
        .args(["-T2", "-1", "-k", img.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let trace = t.path().join("trace");
    let out = t.path().join("out.img");
    let xz = t.path().join("img.xz");
    // Every socket-related system call of the process and its threads is logged.
    let o = Command::new("strace")
        .args(["-f", "-e", "trace=%network", "-o", trace.to_str().unwrap()])
        .arg(env!("CARGO_BIN_EXE_oneimage"))
        .args(["write", xz.to_str().unwrap(), out.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .expect("running strace (install it with scripts/setup.sh)");
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&img).unwrap());
    let log = std::fs::read_to_string(&trace).unwrap();
    let calls: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains("+++") && !l.contains("---"))
        .collect();
    assert!(calls.is_empty(), "network system calls: {calls:?}");
    assert!(log.contains("exited with 0"), "strace saw the run: {log}");
}

/// A 384 MiB image with data in every block (so the write takes a while), as .zst.
fn big_zst(dir: &Path) -> (PathBuf, PathBuf) {
    let p = dir.join("big.img");
    let f = std::fs::File::create(&p).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut buf = vec![0u8; 1 << 20];
    for mib in 0..384u64 {
        for c in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Half the bits random: compressible, but never a zero block.
            c.copy_from_slice(&((x & 0x0f0f_0f0f_0f0f_0f0f) | 0x4040_4040_4040_4040).to_le_bytes());
        }
        f.write_all_at(&buf, mib << 20).unwrap();
    }
    let st = Command::new("zstd")
        .args(["-q", "-1", "-T2", "-k", p.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let zst = dir.join("big.img.zst");
    (p, zst)
}

/// Starts `oneimage write --json SRC TARGET`, sends `sig` once `phase` began (and
/// `delay` passed); returns (exit code, all output, whether the signal was sent).
fn interrupt_write(
    src: &Path,
    target: &str,
    phase: &str,
    delay_ms: u64,
    sig: i32,
) -> (Option<i32>, String, bool) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_oneimage"))
        .args(["write", "--json", "--yes", "--force", "--no-bmap"])
        .arg(src)
        .arg(target)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut seen = String::new();
    let mut sent = false;
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        seen.push_str(&line);
        seen.push('\n');
        if !sent
            && line.contains("\"event\":\"progress\"")
            && line.contains(&format!("\"phase\":\"{phase}\""))
        {
            std::thread::sleep(std::time::Duration::from_millis(delay_ms));
            let st = Command::new("kill")
                .args([&format!("-{sig}"), &child.id().to_string()])
                .status()
                .unwrap();
            assert!(st.success());
            sent = true;
        }
    }
    let out = child.wait_with_output().unwrap();
    seen.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.code(), seen, sent)
}

#[test]
fn an_interrupted_write_says_incomplete_and_leaves_no_disk() {
    let t = tempfile::tempdir().unwrap();
    let (img, zst) = big_zst(t.path());
    let size = std::fs::metadata(&img).unwrap().len();
    // SIGINT (Ctrl-C) and SIGTERM, at the start of the copy, in its middle and during the
    // readback; to a loop device that held an older copy of the image, and to a file.
    let points = [
        ("writing", 0, 2),
        ("writing", 300, 15),
        ("verifying", 0, 2),
        ("verifying", 200, 15),
    ];
    let back = t.path().join("stick");
    std::fs::copy(&img, &back).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&back)
        .unwrap()
        .set_len(size + (32 << 20))
        .unwrap();
    let lo = Loop::attach(&back);
    let mut interrupted = 0;
    for (phase, delay, sig) in points {
        let (code, log, sent) = interrupt_write(&zst, &lo.0, phase, delay, sig);
        assert!(sent, "{phase}+{delay}ms: the phase never began: {log}");
        if code == Some(0) {
            // The write finished before the signal arrived: then it must be whole.
            assert!(log.contains("\"ok\":true"), "{log}");
            continue;
        }
        interrupted += 1;
        assert_eq!(code, Some(130), "{phase}+{delay}ms: {log}");
        assert!(
            log.contains("INCOMPLETE") && log.contains("interrupted"),
            "{phase}+{delay}ms: {log}"
        );
        // No partition table anywhere a tool would look: the first MiB, the image's
        // last MiB and the device's last MiB are zero.
        let dev = std::fs::File::open(&lo.0).unwrap();
        for at in [0, size - (1 << 20), size + (31 << 20)] {
            let mut b = vec![0u8; 1 << 20];
            dev.read_exact_at(&mut b, at).unwrap();
            assert!(
                b.iter().all(|&x| x == 0),
                "{phase}+{delay}ms: bytes at {at} are not erased"
            );
        }
    }
    assert!(
        interrupted >= 3,
        "only {interrupted} of 4 signals landed during the write"
    );
    // A file target: nothing is left behind.
    let out = t.path().join("out").join("copy.img");
    std::fs::create_dir(out.parent().unwrap()).unwrap();
    let (code, log, _) = interrupt_write(&zst, out.to_str().unwrap(), "writing", 100, 2);
    assert_eq!(code, Some(130), "{log}");
    assert!(
        log.contains("INCOMPLETE") && log.contains("interrupted"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_dir(out.parent().unwrap()).unwrap().count(),
        0,
        "files left behind"
    );
}
