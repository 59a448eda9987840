//! How a build tells what it is doing: the one place the builder reports progress.
//!
//! People get `oneimage: MESSAGE` lines on stderr; `--quiet` keeps only warnings (and
//! errors, which the CLI prints); `--json` prints one JSON object per line on stdout
//! (`{"event":"step","step":"rootfs","message":"..."}`, warnings as `"event":"warning"`),
//! for CI logs and tools, and the CLI ends it with a `"done"` object.

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Progress {
    /// `oneimage: ...` lines on stderr.
    #[default]
    Text,
    /// Warnings only.
    Quiet,
    /// JSON lines on stdout.
    Json,
}

impl Progress {
    /// Reports a step of the build: `step` names it for machines (`rootfs`, `kernel`,
    /// `initramfs`, `esp`, `root`, `layout`, `artifact`, `image`), `message` for people.
    pub fn step(self, step: &str, message: &str) {
        match self {
            Progress::Text => eprintln!("oneimage: {message}"),
            Progress::Quiet => {}
            Progress::Json => println!(
                "{}",
                serde_json::json!({"event": "step", "step": step, "message": message})
            ),
        }
    }

    /// Reports something the user should know even when quiet.
    pub fn warn(self, message: &str) {
        match self {
            Progress::Text | Progress::Quiet => eprintln!("oneimage: warning: {message}"),
            Progress::Json => println!(
                "{}",
                serde_json::json!({"event": "warning", "message": message})
            ),
        }
    }
}
