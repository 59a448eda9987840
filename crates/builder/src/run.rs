//! Running the standard tools (mkfs.ext4, debugfs, mtools, ...) with useful errors, and
//! stopping them when the build is interrupted.
//!
//! Every tool runs in a process group of its own, so whatever helpers it starts can be
//! stopped together with it. That also means a Ctrl-C at the terminal no longer reaches
//! the tools directly: the signal only sets the build's [`Cancel`] flag, and the waits
//! here notice it and stop the group.

use anyhow::{bail, Context, Result};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The error of a build (or step) that stopped because it was asked to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// A request to stop, set from outside (a signal handler); no flag means "never".
#[derive(Debug, Clone, Copy, Default)]
pub struct Cancel<'a>(Option<&'a AtomicBool>);

impl<'a> Cancel<'a> {
    /// Watches `flag`, or nothing.
    pub fn new(flag: Option<&'a AtomicBool>) -> Cancel<'a> {
        Cancel(flag)
    }

    /// The flag watched, if any (to hand on to code outside this crate).
    pub fn flag(self) -> Option<&'a AtomicBool> {
        self.0
    }

    /// True once a stop was asked for.
    pub fn requested(self) -> bool {
        self.0.is_some_and(|f| f.load(Ordering::SeqCst))
    }

    /// Fails with [`Interrupted`] once a stop was asked for.
    pub fn check(self) -> Result<()> {
        if self.requested() {
            return Err(Interrupted.into());
        }
        Ok(())
    }
}

/// How often a running tool is checked on: short enough that a Ctrl-C feels immediate.
const POLL: Duration = Duration::from_millis(50);

/// How long a tool gets to exit after SIGTERM before SIGKILL; mmdebstrap removes its
/// temporary chroot on SIGTERM, which is worth waiting a little for.
const GRACE: Duration = Duration::from_secs(5);

/// Own process group (see the module comment), no terminal input (a tool outside the
/// terminal's foreground group that read it would be stopped by SIGTTIN), and the C
/// locale: what a tool prints is read (e2fsck's verdict) or quoted in errors, and must
/// not depend on the build host's language.
fn prepare(cmd: &mut Command) {
    cmd.process_group(0).stdin(Stdio::null()).env("LC_ALL", "C");
}

fn spawn_error(cmd: &Command, what: &str) -> String {
    let prog = cmd.get_program().to_string_lossy();
    format!("{what}: could not run {prog} (is it installed? see README.md for the packages)")
}

/// Runs `cmd`, capturing its output; fails with the tool's stderr when it exits non-zero,
/// and with [`Interrupted`] (the tool stopped) when `cancel` is set meanwhile.
pub fn run(cmd: &mut Command, what: &str, cancel: Cancel) -> Result<Output> {
    let out = output(cmd, what, cancel)?;
    if !out.status.success() {
        bail!(
            "{what}: {} failed ({}):\n{}{}",
            cmd.get_program().to_string_lossy(),
            out.status,
            tail(&out.stderr),
            tail(&out.stdout)
        );
    }
    Ok(out)
}

/// Like [`run`], but returns the output whatever the exit status.
pub fn output(cmd: &mut Command, what: &str, cancel: Cancel) -> Result<Output> {
    prepare(cmd);
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| spawn_error(cmd, what))?;
    // Both pipes are drained while the tool runs, or a chatty tool would fill one and
    // block forever.
    let stdout = child.stdout.take().map(drain);
    let stderr = child.stderr.take().map(drain);
    // On an interruption the readers are left to finish by themselves: the whole group
    // is gone, so their pipes are closed.
    let status = wait(&mut child, cancel)?;
    let collect = |h: Option<JoinHandle<Vec<u8>>>| {
        h.map(|h| h.join().unwrap_or_default()).unwrap_or_default()
    };
    Ok(Output {
        status,
        stdout: collect(stdout),
        stderr: collect(stderr),
    })
}

/// Runs `cmd` with its output going where ours goes (for tools whose progress the user
/// wants to see, like mmdebstrap); returns its exit status. `what` explains a failure
/// to start it.
pub fn status(cmd: &mut Command, what: &str, cancel: Cancel) -> Result<ExitStatus> {
    prepare(cmd);
    let mut child = cmd.spawn().with_context(|| what.to_string())?;
    wait(&mut child, cancel)
}

fn drain(mut pipe: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        // A read error only shortens the text shown in an error message.
        let _ = pipe.read_to_end(&mut buf);
        buf
    })
}

/// Waits for `child`, which must lead a process group of its own (spawned with
/// `process_group(0)`). When `cancel` is set meanwhile, the group gets SIGTERM, then
/// SIGKILL if the child has not exited within a grace period, and the result is
/// [`Interrupted`].
pub fn wait(child: &mut Child, cancel: Cancel) -> Result<ExitStatus> {
    loop {
        if let Some(status) = child.try_wait().context("waiting for a tool")? {
            return Ok(status);
        }
        if cancel.requested() {
            stop(child);
            return Err(Interrupted.into());
        }
        std::thread::sleep(POLL);
    }
}

/// Stops the process group `child` leads and reaps `child`.
fn stop(child: &mut Child) {
    use rustix::process::{kill_process_group, Pid, Signal};
    let group = Pid::from_child(child);
    // Errors are ignored throughout: the group may already be gone, and there is
    // nothing better to do than go on to SIGKILL.
    let _ = kill_process_group(group, Signal::TERM);
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        std::thread::sleep(POLL);
    }
    // Helpers the tool started may outlive it (or ignore SIGTERM): none is left running.
    let _ = kill_process_group(group, Signal::KILL);
    let _ = child.kill();
    let _ = child.wait();
}

/// The last 20 lines of a tool's output, for error messages.
pub fn tail(bytes: &[u8]) -> String {
    let s = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = s.lines().collect();
    let start = lines.len().saturating_sub(20);
    let mut t = lines[start..].join("\n");
    if !t.is_empty() {
        t.push('\n');
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Processes of process group `group` that are still alive (zombies do not count:
    /// they run nothing, and an orphan's zombie waits for whoever adopts it).
    fn live_members(group: i32) -> Vec<i32> {
        let mut live = Vec::new();
        for e in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
                continue;
            };
            // After "pid (comm) ": state, ppid, pgrp; comm may hold spaces and parens.
            let rest = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            if f[2].parse::<i32>().unwrap() == group && f[0] != "Z" {
                live.push(pid);
            }
        }
        live
    }

    /// The members of `group` still alive a moment after it was killed: SIGKILL is
    /// delivered at once, but a loaded machine may take a while to run the dying.
    fn survivors(group: i32) -> Vec<i32> {
        let t = Instant::now();
        loop {
            let live = live_members(group);
            if live.is_empty() || t.elapsed() > Duration::from_secs(5) {
                return live;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Spawns `sh -c script` leading its own group; returns it and the group id.
    fn spawn_group(script: &str) -> (Child, i32) {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script);
        prepare(&mut cmd);
        let child = cmd.spawn().unwrap();
        let group = child.id() as i32;
        // Wait until the background sleep exists too, so the test is about stopping it.
        let t = Instant::now();
        while live_members(group).len() < 2 {
            assert!(
                t.elapsed() < Duration::from_secs(5),
                "the script did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        (child, group)
    }

    #[test]
    fn a_set_flag_stops_the_whole_group_quickly() {
        // The shell waits on a sleep in the background: both are in the group.
        let (mut child, group) = spawn_group("sleep 30 & sleep 30; wait");
        let flag = AtomicBool::new(false);
        let t = Instant::now();
        std::thread::scope(|s| {
            s.spawn(|| {
                std::thread::sleep(Duration::from_millis(200));
                flag.store(true, Ordering::SeqCst);
            });
            let err = wait(&mut child, Cancel::new(Some(&flag))).unwrap_err();
            assert!(err.is::<Interrupted>(), "{err:#}");
            assert_eq!(err.to_string(), "interrupted");
        });
        assert!(
            t.elapsed() < Duration::from_secs(3),
            "took {:?}",
            t.elapsed()
        );
        assert_eq!(survivors(group), Vec::<i32>::new());
    }

    #[test]
    fn a_group_that_ignores_sigterm_is_killed_after_the_grace_period() {
        // SIGTERM stays ignored across exec, so neither the shell nor its sleeps stop.
        // The stop is asked for only once the trap is in place (the shell says so), or
        // a loaded machine could deliver SIGTERM before the shell ignores it.
        let d = tempfile::tempdir().unwrap();
        let ready = d.path().join("ready");
        let (mut child, group) = spawn_group(&format!(
            "trap '' TERM; : > {}; sleep 30 & sleep 30; wait",
            ready.display()
        ));
        let flag = AtomicBool::new(false);
        let asked = std::sync::Mutex::new(None);
        let err = std::thread::scope(|s| {
            s.spawn(|| {
                while !ready.exists() {
                    std::thread::sleep(Duration::from_millis(10));
                }
                *asked.lock().unwrap() = Some(Instant::now());
                flag.store(true, Ordering::SeqCst);
            });
            wait(&mut child, Cancel::new(Some(&flag))).unwrap_err()
        });
        assert!(err.is::<Interrupted>(), "{err:#}");
        let took = asked
            .lock()
            .unwrap()
            .expect("the stop was asked for")
            .elapsed();
        assert!(
            took >= GRACE && took < GRACE + Duration::from_secs(3),
            "took {took:?}"
        );
        assert_eq!(survivors(group), Vec::<i32>::new());
    }

    #[test]
    fn without_a_request_the_tool_runs_to_the_end() {
        let flag = AtomicBool::new(false);
        let out = run(
            Command::new("sh").args(["-c", "sleep 0.2; echo out; echo err >&2"]),
            "testing",
            Cancel::new(Some(&flag)),
        )
        .unwrap();
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
        let e = run(
            Command::new("sh").args(["-c", "echo bad >&2; exit 3"]),
            "testing",
            Cancel::default(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("testing: sh failed") && format!("{e}").contains("bad"));
        let e = run(
            &mut Command::new("/nonexistent/tool"),
            "testing",
            Cancel::default(),
        )
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("could not run /nonexistent/tool"),
            "{e:#}"
        );
    }

    #[test]
    fn a_flag_set_before_the_start_stops_at_once() {
        let flag = AtomicBool::new(true);
        let t = Instant::now();
        let e = run(
            Command::new("sleep").arg("30"),
            "testing",
            Cancel::new(Some(&flag)),
        )
        .unwrap_err();
        assert!(e.is::<Interrupted>());
        assert!(t.elapsed() < Duration::from_secs(3));
    }
}
