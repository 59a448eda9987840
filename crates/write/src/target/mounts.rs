//! What the running system uses: mounted devices (`/proc/self/mountinfo`) and swap
//! (`/proc/swaps`), as device numbers.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

/// A device number as `major:minor`.
pub type DevNum = (u32, u32);

/// Mount points per device number, from `/proc/self/mountinfo`.
pub fn mounted() -> BTreeMap<DevNum, Vec<String>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    parse_mountinfo(&text)
}

/// Parses mountinfo text: field 3 is `major:minor`, field 5 the mount point.
pub fn parse_mountinfo(text: &str) -> BTreeMap<DevNum, Vec<String>> {
    let mut out: BTreeMap<DevNum, Vec<String>> = BTreeMap::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        if f.len() < 5 {
            continue;
        }
        if let Some(d) = parse_devnum(f[2]) {
            out.entry(d).or_default().push(unescape(f[4]));
        }
    }
    out
}

/// Device numbers of active swap devices.
pub fn swap_devices() -> Vec<DevNum> {
    let text = std::fs::read_to_string("/proc/swaps").unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|p| std::fs::metadata(unescape(p)).ok())
        .filter(|m| m.rdev() != 0)
        .map(|m| split_dev(m.rdev()))
        .collect()
}

/// Splits a `dev_t` into major and minor.
pub fn split_dev(d: u64) -> DevNum {
    (rustix::fs::major(d), rustix::fs::minor(d))
}

/// Parses `major:minor`.
pub fn parse_devnum(s: &str) -> Option<DevNum> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Undoes the octal escapes (`\040` for a space) of `/proc/self/mountinfo` and `/proc/swaps`.
pub fn unescape(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        // Three octal digits make one byte, so only \000 to \377: "\777" is not an
        // escape (and would not fit a byte), its characters stay as they are.
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)))
            .map(|d| d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0')))
            .and_then(|v| u8::try_from(v).ok());
        if let (b'\\', Some(v)) = (b[i], octal) {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oneimage_format::testing::Fuzz;

    #[test]
    fn mountinfo() {
        let t = "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw\n\
                 30 22 7:3 / /mnt/a\\040b rw - ext4 /dev/loop3 rw\n";
        let m = parse_mountinfo(t);
        assert_eq!(m[&(8, 2)], vec!["/".to_string()]);
        assert_eq!(m[&(7, 3)], vec!["/mnt/a b".to_string()]);
    }

    /// Found by `fuzz_mount_tables`: an escape of 0o400 or more overflowed the byte it
    /// was computed in.
    #[test]
    fn escapes_beyond_a_byte_stay_text() {
        assert_eq!(unescape("a\\777b"), "a\\777b");
        assert_eq!(unescape("\\377"), "\u{FFFD}");
        assert_eq!(unescape("x\\134\\040y"), "x\\ y");
        assert_eq!(unescape("end\\04"), "end\\04");
    }

    /// Generated and mutated mountinfo and /proc/swaps text (odd escapes, huge device
    /// numbers, missing and extra fields, long lines): parsing never panics, never takes
    /// more lines than there are, and unescaping never lengthens a field.
    #[test]
    fn fuzz_mount_tables() {
        let base = "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw\n\
                    30 22 7:3 / /mnt/a\\040b rw - ext4 /dev/loop3 rw\n\
                    41 22 0:40 / /media/x\\134y\\011z rw master:3 - overlay overlay rw,lowerdir=/a\\072b,upperdir=/u\n\
                    Filename Type Size Used Priority\n\
                    /dev/dm-1\\040x partition 8388604 0 -2\n";
        let tokens: &[&str] = &[
            " ",
            "\\",
            "\\040",
            "\\777",
            "\\0",
            "\\134",
            ":",
            "-",
            " - ",
            "\n",
            "4294967295:4294967295",
            "4294967296:1",
            "18446744073709551616",
            "8:",
            ":8",
            "\u{0}",
            "é",
            "\\\\",
        ];
        let report = Fuzz::new("fuzz_mount_tables").run(
            |m, case| {
                m.tokens(tokens);
                if case % 4 == 0 {
                    m.generate(400)
                } else {
                    m.mutate(base.as_bytes())
                }
            },
            |input| {
                let text = String::from_utf8_lossy(input);
                let m = parse_mountinfo(&text);
                let points: usize = m.values().map(Vec::len).sum();
                assert!(points <= text.lines().count());
                for field in text.split([' ', '\n']) {
                    assert!(unescape(field).len() <= field.len() * 3);
                    let _ = parse_devnum(field);
                }
                !m.is_empty()
            },
        );
        assert!(
            report.accepted > 1000 && report.accepted < report.cases,
            "{report:?}"
        );
    }
}
