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
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
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

    #[test]
    fn mountinfo() {
        let t = "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw\n\
                 30 22 7:3 / /mnt/a\\040b rw - ext4 /dev/loop3 rw\n";
        let m = parse_mountinfo(t);
        assert_eq!(m[&(8, 2)], vec!["/".to_string()]);
        assert_eq!(m[&(7, 3)], vec!["/mnt/a b".to_string()]);
    }
}
