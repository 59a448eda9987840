//! GRUB's environment block (`grub-editenv`'s format): a 1024-byte file that starts with
//! `# GRUB Environment Block`, holds `name=value` lines and is padded with `#`. GRUB's
//! `save_env` rewrites it in place, without changing its size or where it lies.

/// The size GRUB insists on.
pub const SIZE: usize = 1024;
const HEADER: &str = "# GRUB Environment Block\n";

/// An environment block holding `vars`; `None` when they do not fit in [`SIZE`] bytes or
/// a name or value would break the format (`=` in a name, a newline anywhere).
pub fn block(vars: &[(&str, &str)]) -> Option<Vec<u8>> {
    let mut text = String::from(HEADER);
    for (k, v) in vars {
        if k.is_empty() || k.contains(['=', '\n']) || v.contains('\n') {
            return None;
        }
        text += &format!("{k}={v}\n");
    }
    let mut b = text.into_bytes();
    if b.len() > SIZE {
        return None;
    }
    b.resize(SIZE, b'#');
    Some(b)
}

/// The variables of an environment block, in order; `None` for anything that is not one.
/// GRUB escapes `\` and newlines in values with a backslash; such values are returned as
/// stored.
pub fn parse(b: &[u8]) -> Option<Vec<(String, String)>> {
    if b.len() != SIZE || !b.starts_with(HEADER.as_bytes()) {
        return None;
    }
    let text = std::str::from_utf8(b).ok()?;
    Some(
        text[HEADER.len()..]
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip_and_are_padded() {
        let b = block(&[("oneimage_booted", "0"), ("x", "a b")]).unwrap();
        assert_eq!(b.len(), SIZE);
        assert!(b.starts_with(b"# GRUB Environment Block\noneimage_booted=0\nx=a b\n#"));
        assert_eq!(
            parse(&b).unwrap(),
            [
                ("oneimage_booted".into(), "0".into()),
                ("x".into(), "a b".into())
            ]
        );
        assert!(block(&[("a=b", "1")]).is_none());
        assert!(block(&[("a", "1\n")]).is_none());
        assert!(block(&[("a", &"x".repeat(1000))]).is_none());
        assert!(parse(&b[..1000]).is_none());
        assert!(parse(&[b'#'; SIZE]).is_none());
    }

    /// What grub-editenv writes is what we read, and what we write it reads.
    #[test]
    fn grub_editenv_agrees() {
        use std::process::Command;
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("env");
        let run = |args: &[&str]| {
            let o = Command::new("grub-editenv")
                .env("LC_ALL", "C")
                .arg(&f)
                .args(args)
                .output()
                .expect("grub-editenv (package grub-common)");
            assert!(o.status.success(), "{o:?}");
            String::from_utf8(o.stdout).unwrap()
        };
        run(&["create"]);
        run(&["set", "oneimage_booted=1", "other=x"]);
        let got = parse(&std::fs::read(&f).unwrap()).unwrap();
        assert_eq!(
            got,
            [
                ("oneimage_booted".into(), "1".into()),
                ("other".into(), "x".into())
            ]
        );
        std::fs::write(&f, block(&[("oneimage_booted", "0")]).unwrap()).unwrap();
        assert_eq!(run(&["list"]), "oneimage_booted=0\n");
    }
}
