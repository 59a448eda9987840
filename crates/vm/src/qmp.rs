//! Pressing the virtual power button through QEMU's machine protocol (QMP), so the guest
//! shuts down cleanly and its filesystems are consistent afterwards.

use anyhow::{bail, Context, Result};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Connects to the QMP socket at `path` and sends `system_powerdown`.
///
/// This is the only socket oneimage opens, and it is a local one to our own QEMU.
pub fn press_power_button(path: &Path) -> Result<()> {
    let stream = UnixStream::connect(path)
        .with_context(|| format!("connecting to QEMU at {}", path.display()))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let mut line = String::new();
    reader
        .read_line(&mut line)
        .context("reading QEMU's greeting")?;
    for cmd in ["qmp_capabilities", "system_powerdown"] {
        writeln!(writer, "{{\"execute\":\"{cmd}\"}}")?;
        writer.flush()?;
        // Skip asynchronous events until the reply to our command.
        loop {
            line.clear();
            if reader.read_line(&mut line)? == 0 {
                bail!("QEMU closed the control connection during {cmd}");
            }
            if line.contains("\"return\"") {
                break;
            }
            if line.contains("\"error\"") {
                bail!("QEMU refused {cmd}: {}", line.trim());
            }
        }
    }
    Ok(())
}
