//! The kernel command line, as far as the agent is concerned.

/// What the agent takes from `/proc/cmdline`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// `root=PARTUUID=...`, lower-case.
    pub root_partuuid: String,
    /// `oneimage.esp=GUID`, lower-case: the ESP GRUB started from, which ties the root to
    /// that disk. Empty or absent when GRUB could not tell.
    pub esp_partuuid: Option<String>,
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
        esp_partuuid: None,
        read_only: false,
        init: "/sbin/init".into(),
        root_wait_secs: 30,
        live: false,
        grow: Grow::Fill,
        test_panic: false,
    };
    // As for the kernel, the last root= counts: one given earlier (a distribution's
    // default before ours) is not an error.
    let mut root = None;
    for word in text.split_whitespace() {
        let (k, v) = word.split_once('=').unwrap_or((word, ""));
        match k {
            "root" => root = Some(v),
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
            "oneimage.esp" => {
                c.esp_partuuid = (!v.is_empty()).then(|| v.to_ascii_lowercase());
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
    match root.map(|v| (v, v.strip_prefix("PARTUUID="))) {
        Some((_, Some(u))) if !u.is_empty() => c.root_partuuid = u.to_ascii_lowercase(),
        Some((v, None)) => return Err(format!("root={v}: only root=PARTUUID=... is supported")),
        _ => return Err("the kernel command line has no root=PARTUUID=...".into()),
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
        assert_eq!(parse("root=PARTUUID=x").unwrap().esp_partuuid, None);
        assert_eq!(
            parse("root=PARTUUID=x oneimage.esp=").unwrap().esp_partuuid,
            None
        );
        assert_eq!(
            parse("root=PARTUUID=x oneimage.esp=AB-c")
                .unwrap()
                .esp_partuuid,
            Some("ab-c".into())
        );
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

    #[test]
    fn the_last_root_counts() {
        // Found by `fuzz_cmdline`: an earlier root= (which the kernel ignores) made the
        // whole line an error.
        assert_eq!(
            parse("root=/dev/sda1 root=PARTUUID=Ab")
                .unwrap()
                .root_partuuid,
            "ab"
        );
        assert!(parse("root=PARTUUID=ab root=/dev/sda1").is_err());
        assert!(parse("root=PARTUUID=").is_err());
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use oneimage_format::testing::Fuzz;

    /// Marks the inputs rendered from settings (mutations do not make it by chance).
    const RENDERED: &str = "\u{1}rendered\u{2}";

    /// Property: a command line rendered from any settings, among other parameters
    /// (the kernel's, GRUB's, repeated ones before ours), parses back to those settings;
    /// generated and mutated lines (odd characters, huge numbers, missing values) parse
    /// or fail without a panic.
    #[test]
    fn fuzz_cmdline() {
        let tokens: &[&str] = &[
            " ",
            "=",
            "root=",
            "PARTUUID=",
            "ro",
            "rw",
            "init=",
            "oneimage.mode=",
            "oneimage.grow=",
            "oneimage.wait=",
            "live",
            "persistent",
            "fill",
            "off",
            "18446744073709551615",
            "18446744073709551616",
            "-1",
            "\"",
            "\t",
            "\n",
            "\0",
            "é",
            "==",
        ];
        let report = Fuzz::new("fuzz_cmdline").run(
            |m, case| {
                m.tokens(tokens);
                if case % 3 != 0 {
                    let base = "BOOT_IMAGE=/vmlinuz root=PARTUUID=0A-b1 ro quiet oneimage.mode=live oneimage.grow=4096 oneimage.wait=7 init=/bin/sh";
                    return m.mutate(base.as_bytes());
                }
                // A rendering of random settings, checked in full below.
                let mut line = String::from(RENDERED);
                let noise = ["quiet", "console=ttyS0,115200", "root=/dev/sda1", "splash", "rw", "ro", "x=y=z"];
                for _ in 0..m.rng.below(4) {
                    line += &format!(" {}", m.rng.pick(&noise));
                }
                let uuid: String = (0..1 + m.rng.index(36)).map(|_| *m.rng.pick(&['a', 'B', '0', '9', '-'])).collect();
                line += &format!(" root=PARTUUID={uuid}");
                line += if m.rng.one_in(2) { " ro" } else { " rw" };
                if m.rng.one_in(2) {
                    line += &format!(" init=/sbin/x{}", m.rng.below(100));
                }
                line += match m.rng.below(3) {
                    0 => " oneimage.mode=live",
                    1 => " oneimage.mode=persistent",
                    _ => "",
                };
                match m.rng.below(4) {
                    0 => line += " oneimage.grow=fill",
                    1 => line += " oneimage.grow=off",
                    2 => line += &format!(" oneimage.grow={}", m.rng.extreme(8)),
                    _ => {}
                }
                if m.rng.one_in(2) {
                    line += &format!(" oneimage.wait={}", m.rng.extreme(8));
                }
                line.into_bytes()
            },
            |input| {
                let text = String::from_utf8_lossy(input);
                let parsed = parse(&text);
                if let Some(line) = text.strip_prefix(RENDERED) {
                    let c = parsed.expect("a rendered line parses");
                    let last = |key: &str| {
                        line.split(' ')
                            .filter_map(|w| w.strip_prefix(key))
                            .next_back()
                            .map(str::to_string)
                    };
                    assert_eq!(Some(c.root_partuuid.clone()), last("root=PARTUUID=").map(|u| u.to_ascii_lowercase()));
                    let ro = line.split(' ').rfind(|w| *w == "ro" || *w == "rw");
                    assert_eq!(c.read_only, ro == Some("ro"));
                    assert_eq!(c.init, last("init=").unwrap_or("/sbin/init".into()));
                    assert_eq!(c.live, last("oneimage.mode=").as_deref() == Some("live"));
                    let grow = match last("oneimage.grow=").as_deref() {
                        None | Some("fill") => Grow::Fill,
                        Some("off") => Grow::Off,
                        Some(n) => Grow::UpTo(n.parse().unwrap()),
                    };
                    assert_eq!(c.grow, grow);
                    let wait = last("oneimage.wait=").map_or(30, |n| n.parse().unwrap());
                    assert_eq!(c.root_wait_secs, wait);
                    return true;
                }
                if let Ok(c) = &parsed {
                    assert!(!c.root_partuuid.is_empty());
                    assert!(c.root_partuuid.len() < text.len());
                }
                parsed.is_ok()
            },
        );
        assert!(
            report.accepted > 3333 && report.accepted < report.cases,
            "{report:?}"
        );
    }
}
