//! Where the boot ends when it cannot continue: an error or a panic. PID 1 must never
//! exit, so nothing here returns. Every console is told why and offered a shell for a
//! while (`oneimage.emergency-timeout=SECONDS`, 10 minutes by default); with no answer,
//! or without a shell in the initramfs, the machine restarts. `reboot` and `poweroff` in
//! the shell are this program again (links to `/init`).

use crate::console::{consoles, read_line, tell};
use crate::log::say;
use rustix::system::RebootCommand;
use std::path::Path;
use std::time::Duration;

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
    let Some((i, _)) = read_line(&terminals, timeout) else {
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
}
