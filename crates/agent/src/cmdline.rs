//! The kernel command line, as far as the agent is concerned.

/// What the agent takes from `/proc/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// `root=PARTUUID=...`, lower-case.
    pub root_partuuid: String,
    /// `ro` given (default read-write).
    pub read_only: bool,
    /// `init=` or `/sbin/init`.
    pub init: String,
    /// `oneimage.wait=SECONDS`, default 30.
    pub root_wait_secs: u64,
    /// `oneimage.mode=live`: the root read-only under a RAM overlay, nothing written.
    pub live: bool,
    /// `oneimage.grow=fill|off|BYTES`: how far first-boot growth may take the root.
    pub grow: Grow,
    /// `oneimage.test-panic=1`: a test hook that makes the agent panic on purpose right
    /// after reading the command line, to show that a panic ends on the emergency path
    /// (a message, a shell offered, a restart), never in a kernel panic. Harmless in
    /// production: it only leads where any failure leads.
    pub test_panic: bool,
}

/// How long the emergency path waits for someone to take the shell before it restarts
/// the machine, unless `oneimage.emergency-timeout=SECONDS` says otherwise.
pub const EMERGENCY_TIMEOUT_SECS: u64 = 600;

/// The emergency path's wait from `oneimage.emergency-timeout=SECONDS` in `text` (0: no
/// limit, `None`); 10 minutes when absent or not a number. Apart from [`parse`], which
/// may be what failed.
pub fn emergency_timeout(text: &str) -> Option<std::time::Duration> {
    let secs = text
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("oneimage.emergency-timeout="))
        .filter_map(|v| v.parse::<u64>().ok())
        .next_back()
        .unwrap_or(EMERGENCY_TIMEOUT_SECS);
    (secs > 0).then(|| std::time::Duration::from_secs(secs))
}

/// How far the root partition may grow on a larger disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grow {
    /// To the end of the disk (the default).
    Fill,
    /// Not at all.
    Off,
    /// Up to this many bytes.
    UpTo(u64),
}

impl Cmdline {
    /// How the root is to be mounted, for the log.
    pub fn mode_name(&self) -> &'static str {
        if self.live {
            "live"
        } else if self.read_only {
            "read-only"
        } else {
            "read-write"
        }
    }
}

/// Reads and parses `/proc/cmdline`.
pub fn read() -> Result<Cmdline, String> {
    let text = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| format!("reading /proc/cmdline: {e}"))?;
    parse(&text)
}

/// Parses a kernel command line.
pub fn parse(text: &str) -> Result<Cmdline, String> {
    let mut c = Cmdline {
        root_partuuid: String::new(),
        read_only: false,
        init: "/sbin/init".into(),
        root_wait_secs: 30,
        live: false,
        grow: Grow::Fill,
        test_panic: false,
    };
    for word in text.split_whitespace() {
        let (k, v) = word.split_once('=').unwrap_or((word, ""));
        match k {
            "root" => match v.strip_prefix("PARTUUID=") {
                Some(u) => c.root_partuuid = u.to_ascii_lowercase(),
                None => return Err(format!("root={v}: only root=PARTUUID=... is supported")),
            },
            "ro" => c.read_only = true,
            "rw" => c.read_only = false,
            "init" => c.init = v.to_string(),
            "oneimage.mode" => match v {
                "live" => c.live = true,
                "persistent" => c.live = false,
                _ => return Err(format!("oneimage.mode={v}: expected live or persistent")),
            },
            "oneimage.grow" => {
                c.grow = match v {
                    "fill" => Grow::Fill,
                    "off" => Grow::Off,
                    n => Grow::UpTo(n.parse().map_err(|_| {
                        format!("oneimage.grow={v}: expected fill, off or a size in bytes")
                    })?),
                }
            }
            "oneimage.test-panic" => c.test_panic = v == "1",
            "oneimage.wait" => {
                c.root_wait_secs = v
                    .parse()
                    .map_err(|_| format!("oneimage.wait={v}: expected seconds"))?
            }
            _ => {}
        }
    }
    if c.root_partuuid.is_empty() {
        return Err("the kernel command line has no root=PARTUUID=...".into());
    }
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_root_and_flags() {
        let c =
            parse("BOOT_IMAGE=/x root=PARTUUID=AB-CD rw console=ttyS0 oneimage.wait=5\n").unwrap();
        assert_eq!(c.root_partuuid, "ab-cd");
        assert!(!c.read_only);
        assert_eq!(c.root_wait_secs, 5);
        assert_eq!(c.init, "/sbin/init");
        assert!(parse("ro quiet").is_err());
        assert!(parse("root=PARTUUID=x oneimage.mode=live").unwrap().live);
        assert!(parse("root=PARTUUID=x oneimage.mode=bogus").is_err());
        assert_eq!(parse("root=PARTUUID=x").unwrap().grow, Grow::Fill);
        assert_eq!(
            parse("root=PARTUUID=x oneimage.grow=off").unwrap().grow,
            Grow::Off
        );
        assert_eq!(
            parse("root=PARTUUID=x oneimage.grow=4096").unwrap().grow,
            Grow::UpTo(4096)
        );
        assert!(parse("root=PARTUUID=x oneimage.grow=lots").is_err());
        assert!(parse("root=/dev/sda1").is_err());
        assert!(!parse("root=PARTUUID=x").unwrap().test_panic);
        assert!(
            parse("root=PARTUUID=x oneimage.test-panic=1")
                .unwrap()
                .test_panic
        );
        assert!(
            !parse("root=PARTUUID=x oneimage.test-panic=0")
                .unwrap()
                .test_panic
        );
    }

    #[test]
    fn emergency_timeout_is_read_even_from_a_bad_line() {
        use std::time::Duration;
        assert_eq!(emergency_timeout(""), Some(Duration::from_secs(600)));
        assert_eq!(
            emergency_timeout("ro oneimage.emergency-timeout=5 root=/dev/bogus"),
            Some(Duration::from_secs(5))
        );
        assert_eq!(emergency_timeout("oneimage.emergency-timeout=0"), None);
        assert_eq!(
            emergency_timeout("oneimage.emergency-timeout=soon"),
            Some(Duration::from_secs(600))
        );
        // Huge values are kept; the wait copes with them.
        assert_eq!(
            emergency_timeout("oneimage.emergency-timeout=18446744073709551615"),
            Some(Duration::from_secs(u64::MAX))
        );
    }
}
