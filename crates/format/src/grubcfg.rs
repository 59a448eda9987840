//! The boot menu entries of a GRUB configuration, as far as a simple reading shows them.

/// One `menuentry` of a grub.cfg.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootEntry {
    /// The file it was read from.
    pub config: String,
    /// Title shown in the menu.
    pub title: String,
    /// `--id`, if given.
    pub id: Option<String>,
    /// Kernel path (`linux` command).
    pub kernel: Option<String>,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// Initramfs path (`initrd` command).
    pub initrd: Option<String>,
}

fn unquote(s: &str) -> String {
    s.trim().trim_matches(|c| c == '\'' || c == '"').to_string()
}

/// Reads the `menuentry` blocks of `text` (nested submenus are read as flat entries).
pub fn entries(config: &str, text: &str) -> Vec<BootEntry> {
    let mut out: Vec<BootEntry> = Vec::new();
    let mut current: Option<BootEntry> = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("menuentry ") {
            let (title, opts) = match rest.chars().next() {
                Some(q @ ('\'' | '"')) => {
                    let end = rest[1..].find(q).map_or(rest.len(), |i| i + 1);
                    (rest[1..end].to_string(), rest.get(end + 1..).unwrap_or(""))
                }
                _ => {
                    let (t, o) = rest.split_once(' ').unwrap_or((rest, ""));
                    (t.to_string(), o)
                }
            };
            let mut words = opts.split_whitespace();
            let mut id = None;
            while let Some(w) = words.next() {
                if w == "--id" {
                    id = words.next().map(unquote);
                } else if let Some(v) = w.strip_prefix("--id=") {
                    id = Some(unquote(v));
                }
            }
            if let Some(done) = current.take() {
                out.push(done);
            }
            current = Some(BootEntry {
                config: config.to_string(),
                title,
                id,
                kernel: None,
                cmdline: None,
                initrd: None,
            });
        } else if let Some(e) = current.as_mut() {
            let mut words = line.splitn(2, char::is_whitespace);
            match (words.next(), words.next()) {
                (Some("linux" | "linuxefi"), Some(rest)) => {
                    let rest = rest.trim();
                    let (k, c) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
                    e.kernel = Some(k.to_string());
                    e.cmdline = Some(c.trim().to_string());
                }
                (Some("initrd" | "initrdefi"), Some(rest)) => {
                    e.initrd = Some(rest.trim().to_string())
                }
                (Some("}"), _) => out.push(current.take().expect("checked")),
                _ => {}
            }
        }
    }
    out.extend(current);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_entries() {
        let cfg = "set timeout=1\nmenuentry 'Demo (live)' --id live --hotkey=l {\n\tlinux /k root=PARTUUID=x rw oneimage.mode=live\n\tinitrd /i\n}\nmenuentry \"Other\" {\n}\n";
        let e = entries("/EFI/BOOT/grub.cfg", cfg);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].title, "Demo (live)");
        assert_eq!(e[0].id.as_deref(), Some("live"));
        assert_eq!(e[0].kernel.as_deref(), Some("/k"));
        assert_eq!(
            e[0].cmdline.as_deref(),
            Some("root=PARTUUID=x rw oneimage.mode=live")
        );
        assert_eq!(e[0].initrd.as_deref(), Some("/i"));
        assert_eq!(e[1].title, "Other");
        assert_eq!(e[1].kernel, None);
    }
}
