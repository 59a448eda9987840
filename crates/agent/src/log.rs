//! Logging to the console, where a user or a test watching the serial port sees it.

use std::io::Write;

/// Writes `oneimage-init: MSG` to the console (stderr is the console for PID 1).
pub fn say(msg: &str) {
    let line = format!("oneimage-init: {msg}\n");
    let mut err = std::io::stderr();
    let _ = err.write_all(line.as_bytes());
    let _ = err.flush();
}
