//! Interrupting `oneimage build` with SIGTERM, SIGINT or SIGHUP: it stops its tools,
//! removes everything it made and exits with "interrupted", wherever the signal lands.

mod common;

use common::*;
use rustix::process::{kill_process, Pid, Signal};
use std::io::BufRead;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// What the image and its artifacts are called.
const NAME: &str = "big";

/// A root filesystem directory with a kernel, an initramfs and `mib` MiB of data that
/// does not compress, so mkfs has real copying to do; returns the spec. With `zstd`, the
/// build also compresses the image at zstd's slowest level, which keeps a build going
/// for several seconds even when built with optimisations.
fn setup(base: &Path, mib: usize, zstd: bool) -> PathBuf {
    let tree = base.join("tree");
    std::fs::create_dir_all(tree.join("boot")).unwrap();
    std::fs::create_dir_all(tree.join("data")).unwrap();
    std::fs::write(tree.join("boot/vmlinuz-1.0"), b"not really a kernel").unwrap();
    std::fs::write(tree.join("boot/initrd.img-1.0"), b"not really an initramfs").unwrap();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut buf = vec![0u8; 1 << 20];
    for i in 0..mib {
        for chunk in buf.chunks_mut(8) {
            // xorshift64: cheap bytes no compressor can shrink.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes());
        }
        std::fs::write(tree.join(format!("data/f{i}")), &buf).unwrap();
    }
    let spec = base.join("spec.toml");
    let mut text = format!(
        "name = \"{NAME}\"\nsource-date-epoch = 1700000000\n[rootfs]\ndirectory = \"tree\"\n"
    );
    if zstd {
        text.push_str("[artifacts]\nzstd = true\nzstd-level = 19\n");
    }
    std::fs::write(&spec, text).unwrap();
    spec
}

/// A build under way, its stderr read as it comes.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

/// How a build ended.
struct Ended {
    status: ExitStatus,
    stderr: String,
}

/// Starts one build of `spec` into `run/out`, with TMPDIR `run/tmp`, and `path_first` (a
/// directory of stand-in tools) first in PATH when given. SIGINT, SIGTERM and SIGHUP
/// start at their defaults, except the ones in `ignore`, which start ignored.
fn start(spec: &Path, run: &Path, path_first: Option<&Path>, ignore: &[i32]) -> Running {
    let tmp = run.join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let mut cmd = oneimage();
    cmd.arg("build")
        .arg(spec)
        .arg("-o")
        .arg(run.join("out"))
        .env("TMPDIR", &tmp)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(dir) = path_first {
        let path = std::env::var("PATH").unwrap_or_default();
        cmd.env("PATH", format!("{}:{path}", dir.display()));
    }
    // The test runner itself may have been started with some of these ignored (by nohup,
    // or as a background job), which the build would rightly honour.
    let ignore = ignore.to_vec();
    // SAFETY: between fork and exec, only signal(2), which is async-signal-safe, and no
    // allocation (the list was copied before).
    unsafe {
        cmd.pre_exec(move || {
            for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
                let action = if ignore.contains(&sig) {
                    libc::SIG_IGN
                } else {
                    libc::SIG_DFL
                };
                libc::signal(sig, action);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Running {
        child,
        lines,
        seen: Vec::new(),
    }
}

impl Running {
    /// Waits for the first progress line: by then the build handles signals (a signal
    /// sent earlier, while a loaded machine is still starting the program, would end it
    /// the default way).
    fn wait_started(&mut self) {
        let line = self
            .lines
            .recv_timeout(Duration::from_secs(60))
            .expect("the build printed nothing within 60 s");
        self.seen.push(line);
    }

    /// Waits for a progress line containing `needle`.
    fn wait_for_line(&mut self, needle: &str) {
        while !self.seen.last().is_some_and(|l| l.contains(needle)) {
            let line = self
                .lines
                .recv_timeout(Duration::from_secs(120))
                .unwrap_or_else(|_| panic!("no {needle:?} in:\n{}", self.seen.join("\n")));
            self.seen.push(line);
        }
    }

    /// Sends `sig` to the build (only to it, as `kill PID` does).
    fn signal(&self, sig: Signal) {
        kill_process(Pid::from_child(&self.child), sig).unwrap();
    }

    /// Waits for the build to end.
    fn end(mut self) -> Ended {
        let status = self.child.wait().unwrap();
        self.seen.extend(self.lines.iter());
        Ended {
            status,
            stderr: self.seen.join("\n"),
        }
    }
}

/// Live processes whose command line mentions `marker` (zombies have none, and run
/// nothing).
fn processes_mentioning(marker: &str) -> Vec<(i32, String)> {
    let mut found = Vec::new();
    let me = std::process::id() as i32;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(raw) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if pid != me && cmdline.contains(marker) {
            found.push((pid, cmdline));
        }
    }
    found
}

/// Asserts that no process mentioning `marker` is left, allowing a moment for processes
/// killed with SIGKILL to be torn down.
fn assert_no_survivors(marker: &str) {
    let t = Instant::now();
    loop {
        let left = processes_mentioning(marker);
        if left.is_empty() {
            return;
        }
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "processes left running: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Asserts that an interrupted build said so, exited with 130 and left nothing behind:
/// no image, artifact, partial file or work directory in the output directory, nothing
/// in TMPDIR, and none of its tools running.
fn assert_clean_interruption(o: &Ended, run: &Path, marker: &str) {
    let err = &o.stderr;
    assert_eq!(o.status.code(), Some(130), "{}:\n{err}", o.status);
    assert!(err.contains("oneimage: interrupted"), "{err}");
    assert!(!err.contains("error"), "{err}");
    assert_eq!(leftovers(&run.join("out")), Vec::<String>::new(), "{err}");
    assert_eq!(leftovers(&run.join("tmp")), Vec::<String>::new(), "{err}");
    assert_no_survivors(marker);
}

/// Asserts that a build that finished before the signal left complete outputs only
/// (`zstd` as given to [`setup`]).
fn assert_complete(o: &Ended, run: &Path, zstd: bool) {
    let err = &o.stderr;
    assert!(o.status.success(), "{}:\n{err}", o.status);
    let out = run.join("out");
    let mut files = leftovers(&out);
    files.sort();
    let mut want = vec!["SHA256SUMS", "big.img", "big.img.bmap"];
    if zstd {
        want.push("big.img.zst");
    }
    assert_eq!(files, want, "only the finished outputs: {err}");
    ok(Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&out));
    assert_eq!(leftovers(&run.join("tmp")), Vec::<String>::new());
}

/// The last progress line before the interruption, to show where it landed.
fn last_step(o: &Ended) -> String {
    o.stderr
        .lines()
        .rfind(|l| l.starts_with("oneimage: ") && !l.contains("interrupted"))
        .unwrap_or("(before any step)")
        .to_string()
}

/// Builds once per delay, sending `sig` that long after the first progress line; at
/// least three in four must have been interrupted (cleanly), and any that finished
/// first must be complete.
fn interrupt_after_delays(sig: Signal, delays_ms: &[u64]) {
    let d = tempfile::tempdir().unwrap();
    let spec = setup(d.path(), 48, true);
    let marker = d.path().to_str().unwrap();
    let mut interrupted = 0;
    for (i, &ms) in delays_ms.iter().enumerate() {
        let run = d.path().join(format!("run{i}"));
        let mut build = start(&spec, &run, None, &[]);
        build.wait_started();
        std::thread::sleep(Duration::from_millis(ms));
        build.signal(sig);
        let o = build.end();
        if o.status.success() {
            eprintln!("after {ms} ms: the build had finished");
            assert_complete(&o, &run, true);
        } else {
            eprintln!("after {ms} ms: interrupted after {:?}", last_step(&o));
            assert_clean_interruption(&o, &run, marker);
            interrupted += 1;
        }
    }
    assert!(
        interrupted * 4 >= delays_ms.len() * 3,
        "only {interrupted} of {} builds were interrupted: make the root bigger",
        delays_ms.len()
    );
}

#[test]
fn sigterm_at_several_moments_leaves_nothing_behind() {
    interrupt_after_delays(Signal::TERM, &[200, 500, 1000, 2000]);
}

#[test]
fn sigint_at_several_moments_leaves_nothing_behind() {
    interrupt_after_delays(Signal::INT, &[300, 800, 1500, 3000]);
}

#[test]
fn sighup_at_several_moments_leaves_nothing_behind() {
    interrupt_after_delays(Signal::HUP, &[400, 1200]);
}

#[test]
fn an_ignored_sighup_stays_ignored() {
    // As under nohup: the build goes on to the end.
    let d = tempfile::tempdir().unwrap();
    let spec = setup(d.path(), 1, false);
    let run = d.path().join("run");
    let mut build = start(&spec, &run, None, &[libc::SIGHUP]);
    build.wait_started();
    build.signal(Signal::HUP);
    let o = build.end();
    assert_complete(&o, &run, false);
}

#[test]
fn sigterm_while_mkfs_runs_stops_it() {
    let d = tempfile::tempdir().unwrap();
    let spec = setup(d.path(), 96, false);
    let marker = d.path().to_str().unwrap();
    let run = d.path().join("run");
    let build = start(&spec, &run, None, &[]);
    // mkfs.ext4 names the image in the output directory on its command line.
    let mkfs = |p: &(i32, String)| p.1.contains("mkfs.ext4");
    let t = Instant::now();
    while !processes_mentioning(marker).iter().any(mkfs) {
        assert!(t.elapsed() < Duration::from_secs(60), "mkfs.ext4 never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    build.signal(Signal::TERM);
    let o = build.end();
    assert!(
        last_step(&o).contains("ESP"),
        "interrupted in the root filesystem step: {}",
        o.stderr
    );
    assert_clean_interruption(&o, &run, marker);
}

#[test]
fn sigterm_while_the_artifacts_are_made_removes_them_and_the_image() {
    let d = tempfile::tempdir().unwrap();
    let spec = setup(d.path(), 48, true);
    let marker = d.path().to_str().unwrap();
    let run = d.path().join("run");
    let mut build = start(&spec, &run, None, &[]);
    // The image is complete by then, but not yet in the output directory.
    build.wait_for_line("compressing");
    std::thread::sleep(Duration::from_millis(300));
    build.signal(Signal::TERM);
    let o = build.end();
    assert!(last_step(&o).contains("compressing"), "{}", o.stderr);
    assert_clean_interruption(&o, &run, marker);
}

/// A directory with a stand-in `mkfs.ext4` that ignores SIGTERM, as does the helper it
/// starts (an ignored signal stays ignored in children). Both have the script's path on
/// their command line; the script creates `mkfs.ext4.ready` next to itself once both
/// ignore SIGTERM.
fn stubborn_mkfs(base: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = base.join("stubborn-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let tool = dir.join("mkfs.ext4");
    std::fs::write(
        &tool,
        "#!/bin/sh\ntrap '' TERM\nif [ \"$1\" = helper ]; then\n  while :; do sleep 1; done\nfi\n\"$0\" helper &\ntouch \"$0.ready\"\nwait\n",
    )
    .unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Waits until the stand-in in `bin` is running and ignores SIGTERM.
fn wait_until_ready(bin: &Path) {
    let t = Instant::now();
    while !bin.join("mkfs.ext4.ready").exists() {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the stand-in mkfs.ext4 never ran"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_tool_ignoring_sigterm_is_killed_after_a_grace_period() {
    let d = tempfile::tempdir().unwrap();
    let spec = setup(d.path(), 1, false);
    let marker = d.path().to_str().unwrap();
    let run = d.path().join("run");
    let bin = stubborn_mkfs(d.path());
    let build = start(&spec, &run, Some(&bin), &[]);
    wait_until_ready(&bin);
    let t = Instant::now();
    build.signal(Signal::TERM);
    let o = build.end();
    let took = t.elapsed();
    // SIGTERM first, SIGKILL only after the grace period (5 s).
    assert!(
        took >= Duration::from_secs(4) && took < Duration::from_secs(15),
        "stopped after {took:?}"
    );
    assert_clean_interruption(&o, &run, marker);
}

#[test]
fn a_second_signal_ends_the_build_at_once() {
    let d = tempfile::tempdir().unwrap();
    let spec = setup(d.path(), 1, false);
    let run = d.path().join("run");
    let bin = stubborn_mkfs(d.path());
    let build = start(&spec, &run, Some(&bin), &[]);
    wait_until_ready(&bin);
    let t = Instant::now();
    build.signal(Signal::TERM);
    // The first one is being handled (the stand-in ignores SIGTERM for 5 s) when the
    // second comes.
    std::thread::sleep(Duration::from_millis(500));
    build.signal(Signal::TERM);
    let o = build.end();
    let took = t.elapsed();
    // Tidy up what an immediate exit leaves by design: the stand-in and its helper,
    // still running (their `sleep 1` ends by itself). Only this test's: the path holds
    // its temporary directory.
    let stand_in = bin.join("mkfs.ext4");
    let stand_in = stand_in.to_str().unwrap();
    for (pid, _) in processes_mentioning(stand_in) {
        let _ = kill_process(Pid::from_raw(pid).unwrap(), Signal::KILL);
    }
    assert_no_survivors(stand_in);
    let err = &o.stderr;
    assert_eq!(o.status.code(), Some(128 + 15), "{}:\n{err}", o.status);
    assert!(!err.contains("interrupted"), "{err}");
    assert!(took < Duration::from_secs(3), "ended after {took:?}");
}
