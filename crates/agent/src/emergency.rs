//! Where the boot ends when it cannot continue: an error or a panic. PID 1 must never
//! exit, so nothing here returns. Every console is told why and offered a shell for a
//! while (`oneimage.emergency-timeout=SECONDS`, 10 minutes by default); with no answer,
//! or without a shell in the initramfs, the machine restarts. `reboot` and `poweroff` in
//! the shell are this program again (links to `/init`).

use crate::log::say;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::system::RebootCommand;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

/// The emergency shell, when the initramfs has one.
const SHELL: &str = "/bin/sh";

/// The panic hook: logs the message and where it happened, with the agent's prefix.
pub fn panic_hook(info: &std::panic::PanicHookInfo<'_>) {
    let at = info
        .location()
        .map(|l| format!("{}:{}:{}", l.file(), l.line(), l.column()))
        .unwrap_or_else(|| "an unknown place".into());
    let payload = info.payload();
    let msg = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    say(&format!("panic at {at}: {msg}"));
    // With panic = "abort" no unwinding brings the panic back to main: the hook is the
    // last code that runs, so it takes the emergency path itself.
    #[cfg(panic = "abort")]
    enter("the agent panicked (see the message above)");
}

/// The emergency path: says `reason` on every console, offers a shell, and restarts the
/// machine after the timeout without an answer. Never returns.
pub fn enter(reason: &str) -> ! {
    let timeout = crate::cmdline::emergency_timeout(
        &std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
    );
    loop {
        // A panic in here must not unwind out of PID 1 either.
        match std::panic::catch_unwind(|| offer_shell(reason, timeout)) {
            Ok(Answer::ShellEnded) => continue,
            Ok(Answer::None) => break,
            Err(_) => {
                say("the emergency path failed (see the message above)");
                break;
            }
        }
    }
    power(RebootCommand::Restart)
}

/// What came of an offer of a shell.
enum Answer {
    /// Someone took the shell and left it.
    ShellEnded,
    /// Nobody answered in time, or there is no shell to offer.
    None,
}

/// The terminals the kernel writes its console to (`console=` on the command line: the
/// screen and a serial port, say), opened for this program; `/dev/console` alone (the
/// last of them) would leave a keyboard at the screen without a shell.
fn consoles() -> Vec<(String, File)> {
    let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
    let mut names: Vec<&str> = active.split_whitespace().collect();
    if names.is_empty() {
        names.push("console");
    }
    names
        .into_iter()
        .filter_map(|name| {
            let path = format!("/dev/{name}");
            // NOCTTY: PID 1 must not get a controlling terminal (a hang-up on it would
            // signal the init).
            let flags =
                rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY | rustix::fs::OFlags::CLOEXEC;
            match rustix::fs::open(path.as_str(), flags, rustix::fs::Mode::empty()) {
                Ok(fd) => Some((path, File::from(fd))),
                Err(e) => {
                    say(&format!("opening {path}: {e}"));
                    None
                }
            }
        })
        .collect()
}

/// Writes one `oneimage-init:` line on every terminal (or on stderr when none is open).
fn tell(terminals: &mut [(String, File)], msg: &str) {
    if terminals.is_empty() {
        say(msg);
    }
    for (_, t) in terminals.iter_mut() {
        let _ = t.write_all(format!("oneimage-init: {msg}\n").as_bytes());
    }
}

/// Tells every console why the boot stopped and waits up to `timeout` (forever when
/// `None`) for Enter on any of them; starts the shell on the one that answered.
fn offer_shell(reason: &str, timeout: Option<Duration>) -> Answer {
    let mut terminals = consoles();
    let within = match timeout {
        Some(t) => format!(" within {} s", t.as_secs()),
        None => String::new(),
    };
    tell(
        &mut terminals,
        &format!("the boot cannot continue: {reason}"),
    );
    let has_shell = Path::new(SHELL).exists();
    let offer = match (has_shell, timeout) {
        (true, Some(_)) => format!(
            "press Enter{within} for an emergency shell ({SHELL}; `reboot` or `poweroff` leave it); otherwise the machine restarts"
        ),
        (true, None) => format!(
            "press Enter for an emergency shell ({SHELL}; `reboot` or `poweroff` leave it)"
        ),
        (false, Some(_)) => format!(
            "no emergency shell in the initramfs: the machine restarts when Enter is pressed or{within}"
        ),
        (false, None) => {
            "no emergency shell in the initramfs: press Enter to restart the machine".into()
        }
    };
    tell(&mut terminals, &offer);
    let Some(i) = wait_for_enter(&terminals, timeout) else {
        tell(&mut terminals, &format!("no answer{within}"));
        return Answer::None;
    };
    if !has_shell {
        return Answer::None;
    }
    let (name, term) = &terminals[i];
    say(&format!("starting an emergency shell ({SHELL}) on {name}"));
    let io = || term.try_clone().map(std::process::Stdio::from);
    let status = match (io(), io(), io()) {
        (Ok(i), Ok(o), Ok(e)) => std::process::Command::new(SHELL)
            .stdin(i)
            .stdout(o)
            .stderr(e)
            // The kernel starts init without PATH: one is set so that `reboot` and
            // e2fsck are found whatever the shell's default.
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .status()
            .map_err(|e| e.to_string()),
        _ => Err(format!("duplicating {name}")),
    };
    match status {
        Ok(s) => say(&format!("the emergency shell ended ({s})")),
        Err(e) => say(&format!("starting {SHELL} on {name}: {e}")),
    }
    reap_orphans();
    Answer::ShellEnded
}

/// Waits up to `timeout` (forever when `None`) for a line typed on one of `terminals`;
/// returns which one.
fn wait_for_enter(terminals: &[(String, File)], timeout: Option<Duration>) -> Option<usize> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    // Terminals that hang up or fail are dropped from the wait, not taken for answers.
    let mut live: Vec<usize> = (0..terminals.len()).collect();
    loop {
        let left = match deadline {
            Some(d) => Some(
                d.checked_duration_since(Instant::now())
                    .filter(|l| !l.is_zero())?,
            ),
            None => None,
        };
        if live.is_empty() {
            match left {
                Some(l) => std::thread::sleep(l),
                None => loop {
                    std::thread::sleep(Duration::from_secs(3600));
                },
            }
            return None;
        }
        let mut fds: Vec<PollFd<'_>> = live
            .iter()
            .map(|&i| PollFd::new(&terminals[i].1, PollFlags::IN))
            .collect();
        let wait = left.map(|l| Timespec {
            tv_sec: i64::try_from(l.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(l.subsec_nanos()),
        });
        match rustix::event::poll(&mut fds, wait.as_ref()) {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(e) => {
                // Without a working poll, only the timeout is left.
                say(&format!("waiting for the keyboard: {e}"));
                live.clear();
                continue;
            }
        }
        let events: Vec<PollFlags> = fds.iter().map(|f| f.revents()).collect();
        drop(fds);
        let mut still = Vec::new();
        for (&i, ev) in live.iter().zip(events) {
            if ev.contains(PollFlags::IN) {
                // The line typed (terminals are in line mode) is read and dropped; an end
                // of file or an error is a hang-up, not an answer.
                let mut line = [0u8; 256];
                match (&terminals[i].1).read(&mut line) {
                    Ok(n) if n > 0 => return Some(i),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => still.push(i),
                    _ => {}
                }
            } else if !ev.intersects(PollFlags::HUP | PollFlags::ERR | PollFlags::NVAL) {
                still.push(i);
            }
        }
        live = still;
    }
}

/// Collects the exit status of orphans the shell left to PID 1, so none stays a zombie.
fn reap_orphans() {
    while let Ok(Some(_)) = rustix::process::wait(rustix::process::WaitOptions::NOHANG) {}
}

/// Flushes the filesystems and restarts or powers off the machine. If the kernel
/// refuses, says so and waits forever: PID 1 must not exit.
pub fn power(action: RebootCommand) -> ! {
    let what = if action == RebootCommand::PowerOff {
        "powering off"
    } else {
        "restarting the machine"
    };
    say(what);
    rustix::fs::sync();
    let err = rustix::system::reboot(action).err();
    say(&format!(
        "{what} failed: {}; waiting forever",
        err.map_or_else(|| "no error".to_string(), |e| e.to_string())
    ));
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// `reboot` or `poweroff`, when this program was started under one of these names.
pub fn power_action_from_argv0() -> Option<RebootCommand> {
    let argv0 = std::env::args_os().next()?;
    let name = Path::new(&argv0).file_name()?.to_str()?;
    action_for(name)
}

/// The action a program name asks for.
fn action_for(name: &str) -> Option<RebootCommand> {
    match name {
        "reboot" => Some(RebootCommand::Restart),
        "poweroff" => Some(RebootCommand::PowerOff),
        _ => None,
    }
}

/// `reboot` or `poweroff` typed in the emergency shell: flushes and acts; when not
/// PID 1, a refusal is reported and the program exits with status 1.
pub fn power_command(action: RebootCommand) -> ! {
    if rustix::process::getpid().is_init() {
        power(action)
    }
    rustix::fs::sync();
    let e = rustix::system::reboot(action).err();
    eprintln!(
        "oneimage-init: {}",
        e.map_or_else(|| "no error".to_string(), |e| e.to_string())
    );
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_names_pick_the_action() {
        assert_eq!(action_for("reboot"), Some(RebootCommand::Restart));
        assert_eq!(action_for("poweroff"), Some(RebootCommand::PowerOff));
        assert_eq!(action_for("init"), None);
        assert_eq!(action_for("oneimage-init"), None);
    }

    #[test]
    fn the_wait_ends_at_the_timeout_without_terminals() {
        let start = Instant::now();
        assert_eq!(wait_for_enter(&[], Some(Duration::from_millis(200))), None);
        assert!(start.elapsed() >= Duration::from_millis(200));
    }

    #[test]
    fn a_line_typed_is_an_answer_and_silence_or_a_hang_up_is_not() {
        // A socket pair stands in for a terminal: nothing written, no answer; a line, an
        // answer; the other end gone (end of file), no answer but the full wait.
        let (r, mut w) = std::os::unix::net::UnixStream::pair().unwrap();
        let term = vec![(
            "pair".to_string(),
            File::from(std::os::fd::OwnedFd::from(r)),
        )];
        assert_eq!(
            wait_for_enter(&term, Some(Duration::from_millis(100))),
            None
        );
        w.write_all(b"\n").unwrap();
        assert_eq!(wait_for_enter(&term, Some(Duration::from_secs(5))), Some(0));
        drop(w);
        let start = Instant::now();
        assert_eq!(
            wait_for_enter(&term, Some(Duration::from_millis(300))),
            None
        );
        assert!(start.elapsed() >= Duration::from_millis(300));
    }
}
