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
impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn without_yes_and_without_a_terminal_it_refuses() {
    assert!(
        Path::new("/dev/loop-control").exists(),
        "/dev/loop-control is absent: this test cannot run here"
    );
    let t = tempfile::tempdir().unwrap();
    let img = image(t.path());
    let back = t.path().join("disk");
    std::fs::File::create(&back)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let out = Command::new("losetup")
        .args(["-f", "--show", back.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    let lo = Loop(String::from_utf8_lossy(&out.stdout).trim().to_string());
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
