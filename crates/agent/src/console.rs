//! The terminals the kernel writes its console to (`console=`: the screen and a serial
//! port, say), for what the agent must ask: a line on any of them answers, and a
//! passphrase is read on all of them without echo.

use crate::log::say;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::termios::{LocalModes, OptionalActions, QueueSelector, Termios};
use std::fs::File;
use std::io::{Read, Write};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The terminals of the kernel's console, opened for this program; `/dev/console`
/// alone (the last of them) would leave a keyboard at the screen unheard.
pub fn consoles() -> Vec<(String, File)> {
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
pub fn tell(terminals: &mut [(String, File)], msg: &str) {
    if terminals.is_empty() {
        say(msg);
    }
    for (_, t) in terminals.iter_mut() {
        let _ = t.write_all(format!("oneimage-init: {msg}\n").as_bytes());
    }
}

/// Writes `oneimage-init: PROMPT` without a line end on every terminal.
fn prompt(terminals: &[(String, File)], prompt: &str) {
    if terminals.is_empty() {
        let mut err = std::io::stderr();
        let _ = err.write_all(format!("oneimage-init: {prompt}").as_bytes());
        let _ = err.flush();
    }
    for (_, mut t) in terminals.iter().map(|(n, t)| (n, t)) {
        let _ = t.write_all(format!("oneimage-init: {prompt}").as_bytes());
        let _ = t.flush();
    }
}

/// The longest line read; a longer one is cut there.
const MAX_LINE: usize = 1024;

/// Waits up to `timeout` (forever when `None`) for a line typed on one of `terminals`
/// (which are in line mode); returns which one, and the line without its end.
pub fn read_line(
    terminals: &[(String, File)],
    timeout: Option<Duration>,
) -> Option<(usize, Zeroizing<Vec<u8>>)> {
    let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
    // Terminals that hang up or fail are dropped from the wait, not taken for answers.
    let mut live: Vec<usize> = (0..terminals.len()).collect();
    // What each terminal sent of a line so far (a line may come in several reads).
    let mut partial: Vec<Zeroizing<Vec<u8>>> = terminals
        .iter()
        .map(|_| Zeroizing::new(Vec::new()))
        .collect();
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
                // An end of file or an error is a hang-up, not an answer.
                let mut chunk = Zeroizing::new([0u8; 256]);
                match (&terminals[i].1).read(&mut chunk[..]) {
                    Ok(n) if n > 0 => {
                        let got = &chunk[..n];
                        match got.iter().position(|&b| b == b'\n' || b == b'\r') {
                            Some(end) => {
                                partial[i].extend_from_slice(&got[..end]);
                                let mut line = std::mem::take(&mut partial[i]);
                                line.truncate(MAX_LINE);
                                return Some((i, line));
                            }
                            None => {
                                if partial[i].len() < MAX_LINE {
                                    partial[i].extend_from_slice(got);
                                }
                                still.push(i);
                            }
                        }
                    }
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

/// Echo switched off on some terminals, switched back on when dropped.
struct NoEcho<'a> {
    saved: Vec<(&'a File, Termios)>,
}

impl<'a> NoEcho<'a> {
    /// Switches echo off on every terminal that is one (keeping line mode, so the line
    /// can be corrected with Backspace, and the echo of Enter), and drops what was typed
    /// before the question.
    fn on(terminals: &'a [(String, File)]) -> NoEcho<'a> {
        let mut saved = Vec::new();
        for (_, t) in terminals {
            let Ok(old) = rustix::termios::tcgetattr(t) else {
                continue;
            };
            let mut quiet = old.clone();
            quiet.local_modes &= !(LocalModes::ECHO | LocalModes::ECHOE | LocalModes::ECHOK);
            quiet.local_modes |= LocalModes::ICANON | LocalModes::ECHONL;
            let _ = rustix::termios::tcflush(t, QueueSelector::IFlush);
            if rustix::termios::tcsetattr(t, OptionalActions::Now, &quiet).is_ok() {
                saved.push((t, old));
            }
        }
        NoEcho { saved }
    }
}

impl Drop for NoEcho<'_> {
    fn drop(&mut self) {
        for (t, old) in &self.saved {
            let _ = rustix::termios::tcsetattr(*t, OptionalActions::Now, old);
        }
    }
}

/// Asks `question` on every console and reads the answer without echo; `None` when no
/// terminal can answer.
pub fn ask_secret(question: &str) -> Option<Zeroizing<Vec<u8>>> {
    let terminals = consoles();
    let answer = {
        let _quiet = NoEcho::on(&terminals);
        prompt(&terminals, question);
        read_line(&terminals, None)
    };
    answer.map(|(_, line)| line)
}

/// Asks `question` on every console and reads a line (echoed), waiting up to `timeout`;
/// `None` without an answer.
pub fn ask_line(question: &str, timeout: Option<Duration>) -> Option<String> {
    let terminals = consoles();
    prompt(&terminals, question);
    read_line(&terminals, timeout).map(|(_, l)| String::from_utf8_lossy(&l).trim().to_string())
}

/// Says `msg` on every console.
pub fn tell_all(msg: &str) {
    tell(&mut consoles(), msg);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wait_ends_at_the_timeout_without_terminals() {
        let start = Instant::now();
        assert!(read_line(&[], Some(Duration::from_millis(200))).is_none());
        assert!(start.elapsed() >= Duration::from_millis(200));
    }

    fn pair() -> (Vec<(String, File)>, std::os::unix::net::UnixStream) {
        let (r, w) = std::os::unix::net::UnixStream::pair().unwrap();
        (
            vec![(
                "pair".to_string(),
                File::from(std::os::fd::OwnedFd::from(r)),
            )],
            w,
        )
    }

    #[test]
    fn a_line_typed_is_an_answer_and_silence_or_a_hang_up_is_not() {
        // A socket pair stands in for a terminal: nothing written, no answer; a line, an
        // answer; the other end gone (end of file), no answer but the full wait.
        let (term, mut w) = pair();
        assert!(read_line(&term, Some(Duration::from_millis(100))).is_none());
        w.write_all(b"\n").unwrap();
        let (i, line) = read_line(&term, Some(Duration::from_secs(5))).unwrap();
        assert_eq!((i, line.as_slice()), (0, &b""[..]));
        drop(w);
        let start = Instant::now();
        assert!(read_line(&term, Some(Duration::from_millis(300))).is_none());
        assert!(start.elapsed() >= Duration::from_millis(300));
    }

    #[test]
    fn a_line_is_read_whole_across_reads_and_without_its_end() {
        let (term, mut w) = pair();
        let writer = std::thread::spawn(move || {
            w.write_all(b"correct ").unwrap();
            std::thread::sleep(Duration::from_millis(100));
            w.write_all(b"horse\r\n").unwrap();
            w
        });
        let (_, line) = read_line(&term, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(line.as_slice(), b"correct horse");
        drop(writer.join().unwrap());
        // A line longer than the limit is cut, not grown without bound.
        let (term, mut w) = pair();
        let long = vec![b'x'; 3 * MAX_LINE];
        std::thread::spawn(move || {
            w.write_all(&long).unwrap();
            w.write_all(b"\n").unwrap();
            std::thread::sleep(Duration::from_millis(500));
        });
        let (_, line) = read_line(&term, Some(Duration::from_secs(5))).unwrap();
        assert_eq!(line.len(), MAX_LINE);
    }
}
