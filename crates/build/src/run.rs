//! Running the standard tools (mkfs.ext4, debugfs, mtools, ...) with useful errors.

use anyhow::{bail, Context, Result};
use std::process::{Command, Output};

/// Runs `cmd`, capturing its output; fails with the tool's stderr when it exits non-zero.
pub fn run(cmd: &mut Command, what: &str) -> Result<Output> {
    let prog = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().with_context(|| {
        format!("{what}: could not run {prog} (is it installed? see README.md for the packages)")
    })?;
    if !out.status.success() {
        bail!(
            "{what}: {prog} failed ({}):\n{}{}",
            out.status,
            tail(&out.stderr),
            tail(&out.stdout)
        );
    }
    Ok(out)
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
