//! Stopping cleanly on SIGINT, SIGTERM and SIGHUP: the signal only sets a flag, which
//! the builder (and the writer) check between steps and while their tools run, so they
//! can stop those tools and remove what they made before exiting.

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::flag;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Exit status after an interruption that was cleaned up (128 + SIGINT, as shells report
/// a Ctrl-C).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Makes SIGINT, SIGTERM and SIGHUP set the returned flag instead of ending the process.
///
/// A second signal of the same kind while the flag is set ends the process at once
/// (status 128 + the signal), for when stopping cleanly takes too long; nothing is
/// cleaned up then. A signal that was ignored when we started (`nohup` ignores SIGHUP)
/// stays ignored.
pub fn install() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        if ignored(sig) {
            continue;
        }
        if let Err(e) = register(sig, &stop) {
            // Unheard of in practice; the command still works, it only cannot clean up.
            eprintln!("oneimage: warning: cannot handle signal {sig} ({e}); an interruption may leave files behind");
        }
    }
    stop
}

fn register(sig: i32, stop: &Arc<AtomicBool>) -> std::io::Result<()> {
    // One flag per kind of signal arms the immediate exit, so that a SIGHUP and a
    // SIGTERM arriving together (a terminal closing) still allow a clean stop. The
    // shutdown is registered first: on the first signal it finds its flag unset and
    // does nothing, and only then is the flag set.
    let seen = Arc::new(AtomicBool::new(false));
    flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&seen))?;
    flag::register(sig, seen)?;
    flag::register(sig, Arc::clone(stop))?;
    Ok(())
}

/// True when `sig` is ignored now (as set up by whoever started us).
fn ignored(sig: i32) -> bool {
    // SAFETY: an all-zero `sigaction` is a valid value of this plain C struct.
    let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
    // SAFETY: with a null new action, sigaction only reads the current one into `old`,
    // which is valid and writable; nothing is changed.
    let r = unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) };
    r == 0 && old.sa_sigaction == libc::SIG_IGN
}
