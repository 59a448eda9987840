//! Progress reports: a redrawn line with rate and time left on a terminal, plain lines
//! otherwise, or JSON lines (one object per event) for other programs.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A line on stderr redrawn in place.
    Terminal,
    /// A line on stderr every few seconds.
    Plain,
    /// JSON objects, one per line, on stdout.
    Json,
    /// Nothing.
    Quiet,
}

impl Mode {
    /// `Json` if asked for, else `Terminal` when stderr is a terminal, else `Plain`.
    pub fn detect(json: bool) -> Mode {
        if json {
            Mode::Json
        } else if std::io::stderr().is_terminal() {
            Mode::Terminal
        } else {
            Mode::Plain
        }
    }
}

/// Reports one phase (hashing, writing, verifying) at a time.
pub struct Progress {
    mode: Mode,
    phase: &'static str,
    total: u64,
    done: u64,
    start: Instant,
    last: Instant,
}

impl Progress {
    /// A reporter in `mode`.
    pub fn new(mode: Mode) -> Progress {
        let now = Instant::now();
        Progress {
            mode,
            phase: "",
            total: 0,
            done: 0,
            start: now,
            last: now,
        }
    }

    /// Prints a message (a JSON `message` event in JSON mode).
    pub fn message(&mut self, level: &str, text: &str) {
        match self.mode {
            Mode::Json => println!(
                "{}",
                serde_json::json!({"event": "message", "level": level, "text": text})
            ),
            Mode::Quiet => {}
            _ => eprintln!(
                "oneimage: {}{text}",
                if level == "info" {
                    String::new()
                } else {
                    format!("{level}: ")
                }
            ),
        }
    }

    /// Starts a phase of `total` bytes.
    pub fn begin(&mut self, phase: &'static str, total: u64) {
        self.phase = phase;
        self.total = total;
        self.done = 0;
        self.start = Instant::now();
        self.last = self.start;
        self.emit(true);
    }

    /// Adds `n` bytes done.
    pub fn add(&mut self, n: u64) {
        self.done += n;
        let every = match self.mode {
            Mode::Terminal => Duration::from_millis(200),
            _ => Duration::from_secs(5),
        };
        if self.last.elapsed() >= every {
            self.last = Instant::now();
            self.emit(false);
        }
    }

    /// Ends the phase.
    pub fn end(&mut self) {
        self.emit(true);
        if self.mode == Mode::Terminal {
            eprintln!();
        }
    }

    fn emit(&mut self, force: bool) {
        let secs = self.start.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        };
        let left = if rate > 0.0 && self.total > self.done {
            Some((self.total - self.done) as f64 / rate)
        } else {
            None
        };
        let pct = if self.total > 0 {
            self.done as f64 * 100.0 / self.total as f64
        } else {
            100.0
        };
        let mib = |b: f64| b / 1048576.0;
        match self.mode {
            Mode::Quiet => {}
            Mode::Json => println!(
                "{}",
                serde_json::json!({
                    "event": "progress", "phase": self.phase, "done": self.done,
                    "total": self.total, "bytes_per_second": rate as u64,
                    "seconds_left": left.map(|s| s.round() as u64),
                })
            ),
            Mode::Terminal if self.total == 0 => {
                eprint!(
                    "\r\x1b[2K{}: {:.0} MiB  {:.1} MiB/s",
                    self.phase,
                    mib(self.done as f64),
                    mib(rate)
                );
                let _ = std::io::stderr().flush();
            }
            Mode::Plain if self.total == 0 => {
                eprintln!(
                    "oneimage: {} {} bytes ({:.1} MiB/s)",
                    self.phase,
                    self.done,
                    mib(rate)
                );
            }
            Mode::Terminal => {
                let left = left
                    .map(|s| format!(", {:.0} s left", s))
                    .unwrap_or_default();
                eprint!(
                    "\r\x1b[2K{}: {:5.1}%  {:.0}/{:.0} MiB  {:.1} MiB/s{left}",
                    self.phase,
                    pct,
                    mib(self.done as f64),
                    mib(self.total as f64),
                    mib(rate)
                );
                let _ = std::io::stderr().flush();
            }
            Mode::Plain => {
                if force || self.done > 0 {
                    eprintln!(
                        "oneimage: {} {:.1}% ({} of {} bytes, {:.1} MiB/s)",
                        self.phase,
                        pct,
                        self.done,
                        self.total,
                        mib(rate)
                    );
                }
            }
        }
    }
}
