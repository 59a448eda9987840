//! Watching the serial console of a headless QEMU for an expected text.

use anyhow::Result;
use std::io::{Read, Write};
use std::process::Child;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What to wait for.
#[derive(Debug, Clone)]
pub struct Expect {
    /// Text that ends the run with success.
    pub text: Option<String>,
    /// Longest wait.
    pub timeout: Option<Duration>,
    /// Copy the console to our stdout.
    pub echo: bool,
    /// Also write everything the console printed to this file.
    pub log: Option<std::path::PathBuf>,
    /// Once the first text appears, type the bytes on the serial console (to pick a
    /// boot menu entry with no one at the keyboard).
    pub press: Option<(String, Vec<u8>)>,
    /// Prompts to answer, each answer used once: when a prompt's text appears on the
    /// console (after the last prompt answered), the first unused answer for it is
    /// typed there, then Enter (a line feed, which a terminal in line mode takes as the
    /// end of the line). Answers for prompts that never come stay unused, so a run may
    /// carry answers for each way a boot can go.
    pub answers: Vec<(String, String)>,
    /// When set, a found text is followed by a power-button press through this QMP
    /// socket and a wait for QEMU to exit.
    pub poweroff: Option<std::path::PathBuf>,
    /// When set, a found text is followed by this much more running time, then QEMU is
    /// killed: the power fails at a moment chosen by the caller.
    pub cut_after: Option<Duration>,
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The expected text appeared; QEMU was stopped (or powered off cleanly).
    Found,
    /// The expected text appeared, but the guest did not power off when asked.
    FoundNoPoweroff {
        /// Last console lines.
        tail: String,
    },
    /// QEMU exited by itself with this code; `tail` holds the last console lines.
    Exited(Option<i32>),
    /// QEMU exited before the expected text appeared.
    ExitedEarly {
        /// Exit code.
        code: Option<i32>,
        /// Last console lines.
        tail: String,
    },
    /// Time ran out; QEMU was stopped.
    TimedOut {
        /// Last console lines.
        tail: String,
    },
    /// The firmware found nothing it could boot (OVMF started its built-in shell) before
    /// the expected text appeared; QEMU was stopped.
    NothingToBoot {
        /// Last console lines.
        tail: String,
    },
}

/// The banner of OVMF's built-in shell, which it starts when every boot option failed;
/// waiting longer would only wait for the timeout.
const FIRMWARE_GAVE_UP: &str = "UEFI Interactive Shell";

const KEEP: usize = 64 * 1024;

/// The answer to type next, and where its prompt is in `text`: of the prompts with an
/// unused answer, the one that appears first (its first unused answer).
fn next_prompt(answers: &[(String, String)], used: &[bool], text: &[u8]) -> Option<(usize, usize)> {
    let mut best: Option<(usize, usize)> = None;
    for (i, (prompt, _)) in answers.iter().enumerate() {
        if used[i]
            || answers[..i]
                .iter()
                .zip(used)
                .any(|((p, _), u)| !u && p == prompt)
        {
            continue;
        }
        if let Some(at) = find(text, prompt.as_bytes()) {
            if best.is_none_or(|(_, b)| at < b) {
                best = Some((i, at));
            }
        }
    }
    best
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() {
        return Some(0);
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

fn last_lines(buf: &[u8], n: usize) -> String {
    let s = String::from_utf8_lossy(buf);
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Reads the child's stdout until the text appears, it exits, or time runs out.
pub fn watch(mut child: Child, e: &Expect) -> Result<Outcome> {
    let mut out = child.stdout.take().expect("stdout is piped");
    let mut keyboard = child.stdin.take();
    let mut pressed = false;
    // Which answers were typed, and where in `buf` to look for the next prompt.
    let mut used = vec![false; e.answers.len()];
    let mut answer_from = 0;
    let (tx, rx) = mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut b = [0u8; 4096];
        loop {
            match out.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send(b[..n].to_vec()).is_err() {
                        break;
                    }
                }
            }
        }
    });
    let start = Instant::now();
    let mut buf: Vec<u8> = Vec::new();
    let mut log = match &e.log {
        Some(p) => Some(
            std::fs::File::create(p)
                .map_err(|err| anyhow::anyhow!("creating console log {}: {err}", p.display()))?,
        ),
        None => None,
    };
    let stdout = std::io::stdout();
    loop {
        let wait = match e.timeout {
            Some(t) => match t.checked_sub(start.elapsed()) {
                Some(left) => left,
                None => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(Outcome::TimedOut {
                        tail: last_lines(&buf, 30),
                    });
                }
            },
            None => Duration::from_secs(3600),
        };
        match rx.recv_timeout(wait.min(Duration::from_millis(500))) {
            Ok(chunk) => {
                if let Some(f) = log.as_mut() {
                    f.write_all(&chunk)?;
                }
                if e.echo {
                    let mut l = stdout.lock();
                    let _ = l.write_all(&chunk);
                    let _ = l.flush();
                }
                let search_from = buf
                    .len()
                    .saturating_sub(e.text.as_ref().map_or(0, |t| t.len()));
                buf.extend_from_slice(&chunk);
                if let (Some((trigger, keys)), false) = (&e.press, pressed) {
                    if buf.windows(trigger.len()).any(|w| w == trigger.as_bytes()) {
                        if let Some(k) = keyboard.as_mut() {
                            k.write_all(keys)?;
                            k.flush()?;
                        }
                        pressed = true;
                    }
                }
                while let Some((i, at)) = next_prompt(&e.answers, &used, &buf[answer_from..]) {
                    let (prompt, reply) = &e.answers[i];
                    if let Some(k) = keyboard.as_mut() {
                        k.write_all(reply.as_bytes())?;
                        k.write_all(b"\n")?;
                        k.flush()?;
                    }
                    answer_from += at + prompt.len();
                    used[i] = true;
                }
                if let Some(t) = &e.text {
                    if buf[search_from..]
                        .windows(t.len())
                        .any(|w| w == t.as_bytes())
                    {
                        if let Some(sock) = &e.poweroff {
                            return power_off(child, sock, &rx, log.as_mut(), buf);
                        }
                        if let Some(after) = e.cut_after {
                            return cut_power(child, after, &rx, log.as_mut());
                        }
                        let _ = child.kill();
                        let _ = child.wait();
                        return Ok(Outcome::Found);
                    }
                }
                let gave_up = FIRMWARE_GAVE_UP.as_bytes();
                let from = search_from.saturating_sub(gave_up.len());
                if e.text.is_some() && buf[from..].windows(gave_up.len()).any(|w| w == gave_up) {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Ok(Outcome::NothingToBoot {
                        tail: last_lines(&buf, 30),
                    });
                }
                if buf.len() > 2 * KEEP {
                    let dropped = buf.len() - KEEP;
                    buf.drain(..dropped);
                    answer_from = answer_from.saturating_sub(dropped);
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait()?;
                let tail = last_lines(&buf, 30);
                return Ok(if e.text.is_some() {
                    Outcome::ExitedEarly {
                        code: status.code(),
                        tail,
                    }
                } else {
                    Outcome::Exited(status.code())
                });
            }
        }
    }
}

/// Lets the guest run `after` more (logging its console), then kills QEMU at once: no
/// shutdown, nothing the guest had not written reaches the disk.
fn cut_power(
    mut child: Child,
    after: Duration,
    rx: &mpsc::Receiver<Vec<u8>>,
    mut log: Option<&mut std::fs::File>,
) -> Result<Outcome> {
    let start = Instant::now();
    while let Some(left) = after.checked_sub(start.elapsed()) {
        match rx.recv_timeout(left) {
            Ok(chunk) => {
                if let Some(f) = log.as_mut() {
                    f.write_all(&chunk)?;
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            // The guest stopped by itself before the cut.
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    if let Some(f) = log.as_mut() {
        writeln!(
            f,
            "\n[oneimage qemu: power cut {} ms after the text]",
            after.as_millis()
        )?;
    }
    Ok(Outcome::Found)
}

/// How long a guest gets to shut down after the power button.
const POWEROFF_WAIT: Duration = Duration::from_secs(180);

/// Presses the power button and waits for QEMU to exit, logging the console meanwhile.
/// How long to wait after a power button press before pressing it again.
const PRESS_AGAIN: Duration = Duration::from_secs(20);

fn power_off(
    mut child: Child,
    sock: &std::path::Path,
    rx: &mpsc::Receiver<Vec<u8>>,
    mut log: Option<&mut std::fs::File>,
    mut buf: Vec<u8>,
) -> Result<Outcome> {
    crate::qmp::press_power_button(sock)?;
    let start = Instant::now();
    let mut pressed = start;
    while start.elapsed() < POWEROFF_WAIT {
        // A press that comes before the guest listens to the button (udev still
        // setting up devices after the marker) is lost: press again, as a person would.
        if pressed.elapsed() >= PRESS_AGAIN {
            // The guest may be gone already: then the socket is too.
            let _ = crate::qmp::press_power_button(sock);
            pressed = Instant::now();
        }
        match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(chunk) => {
                if let Some(f) = log.as_mut() {
                    f.write_all(&chunk)?;
                }
                buf.extend_from_slice(&chunk);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                child.wait()?;
                return Ok(Outcome::Found);
            }
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    Ok(Outcome::FoundNoPoweroff {
        tail: last_lines(&buf, 30),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn shell(script: &str) -> Child {
        Command::new("sh")
            .args(["-c", script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn expect(text: &str, answers: &[(&str, &str)]) -> Expect {
        Expect {
            text: Some(text.into()),
            timeout: Some(Duration::from_secs(20)),
            echo: false,
            log: None,
            press: None,
            answers: answers
                .iter()
                .map(|(p, r)| (p.to_string(), r.to_string()))
                .collect(),
            poweroff: None,
            cut_after: None,
        }
    }

    #[test]
    fn prompts_are_answered_in_order_each_once() {
        // The same prompt twice takes two answers; a reply is typed only after its
        // prompt, so the second "Passphrase:" gets the second reply.
        let child = shell(
            "printf 'Passphrase: '; read a; echo \"got $a\"; printf 'Passphrase: '; read b; echo \"got $b\"; printf 'Again: '; read c; echo \"done $a/$b/$c\"",
        );
        let e = expect(
            "done wrong/right/right",
            &[
                ("Passphrase:", "wrong"),
                ("Passphrase:", "right"),
                ("Again:", "right"),
            ],
        );
        assert_eq!(watch(child, &e).unwrap(), Outcome::Found);
    }

    #[test]
    fn answers_for_prompts_that_never_come_stay_unused() {
        // A boot may ask one thing or another: answers for both are given.
        let child = shell("printf 'Resume: '; read a; echo \"done $a\"");
        let e = expect(
            "done resumed",
            &[
                ("Choose:", "new"),
                ("Again:", "new"),
                ("Resume:", "resumed"),
            ],
        );
        assert_eq!(watch(child, &e).unwrap(), Outcome::Found);
    }

    #[test]
    fn a_prompt_that_never_comes_leaves_the_run_to_its_timeout() {
        let child = shell("printf 'Something else: '; read a; echo \"got $a\"; sleep 30");
        let mut e = expect("got", &[("Passphrase:", "x")]);
        e.timeout = Some(Duration::from_secs(2));
        assert!(matches!(
            watch(child, &e).unwrap(),
            Outcome::TimedOut { .. }
        ));
    }
}
