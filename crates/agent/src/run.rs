//! Running the few programs the initramfs carries (e2fsprogs), one way: in the C
//! locale, with nothing on stdin, their messages on the console for the user.

use std::process::{Command, ExitStatus, Stdio};

/// Runs `program` with `args` and returns its exit status, or why it could not run.
pub fn status(program: &str, args: &[&str]) -> Result<ExitStatus, String> {
    status_env(program, args, &[])
}

/// [`status`] with extra environment variables.
fn status_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<ExitStatus, String> {
    Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .status()
        .map_err(|e| format!("running {program}: {e}"))
}

/// Runs `program` with `args`; anything but success is an error that says which program
/// failed and how.
pub fn tool(program: &str, args: &[&str]) -> Result<(), String> {
    tool_env(program, args, &[])
}

/// [`tool`] with extra environment variables.
pub fn tool_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
    let s = status_env(program, args, env)?;
    if s.success() {
        return Ok(());
    }
    let how = match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "failed".to_string(),
    };
    Err(format!("{program} {} failed ({how})", args.join(" ")))
}
