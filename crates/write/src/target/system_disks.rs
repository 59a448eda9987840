//! The disks that hold the running system: every whole disk under `/`, `/usr`, `/boot`,
//! `/boot/efi`, `/efi`, `/var`, `/home` and active swap, found by following each
//! filesystem down its stack of block devices.
//!
//! The device number mountinfo gives is not enough on its own: btrfs and overlayfs show
//! an anonymous `0:NN` number that is no block device at all, and on LVM, dm-crypt or md
//! the number is a virtual device (`dm-0`, `md0`), not the disk that would be destroyed.

use super::mounts::{self, DevNum};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Mount points whose filesystems make up the running system.
pub const SYSTEM_MOUNT_POINTS: &[&str] =
    &["/", "/usr", "/boot", "/boot/efi", "/efi", "/var", "/home"];

/// For each device that holds the running system, why: one line per mount or swap that
/// leads to it, such as `/ on btrfs over /dev/sdb2`. Holds whole disks, and also the
/// stacked devices on the way down (`dm-0`, `md0`, `loop0`), since overwriting one of
/// those destroys the system just the same.
pub type SystemDisks = BTreeMap<DevNum, Vec<String>>;

/// What `stat` says about a path, as much as finding disks needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStat {
    /// The device of the filesystem that holds the path (`st_dev`).
    pub dev: DevNum,
    /// The device a block special file stands for (`st_rdev`); `None` for other files.
    pub rdev: Option<DevNum>,
}

/// Stats `path` on this machine, following symlinks.
pub fn stat_path(path: &Path) -> Option<PathStat> {
    let m = std::fs::metadata(path).ok()?;
    Some(PathStat {
        dev: mounts::split_dev(m.dev()),
        rdev: m
            .file_type()
            .is_block_device()
            .then(|| mounts::split_dev(m.rdev())),
    })
}

/// The devices holding the running system, from this machine's `/proc` and `/sys`.
pub fn system_disks() -> SystemDisks {
    let read = |p: &str| read_bounded(Path::new(p), PROC_LIMIT).unwrap_or_default();
    system_disks_in(
        &read("/proc/self/mountinfo"),
        &read("/proc/swaps"),
        Path::new("/sys"),
        &stat_path,
    )
}

/// The devices holding the running system, given the text of `/proc/self/mountinfo` and
/// `/proc/swaps`, the sysfs root to read (`/sys` on a real system) and the function that
/// stats paths (mount sources, overlay directories, loop backing files, swap files).
pub fn system_disks_in(
    proc_mountinfo: &str,
    proc_swaps: &str,
    sys: &Path,
    stat: &dyn Fn(&Path) -> Option<PathStat>,
) -> SystemDisks {
    let all = parse_mounts(proc_mountinfo);
    let mut r = Resolver {
        mounts: &all,
        sys,
        stat,
        out: SystemDisks::new(),
    };
    for m in all
        .iter()
        .filter(|m| SYSTEM_MOUNT_POINTS.contains(&m.point.as_str()))
    {
        // A fresh walk per starting point, so that `/` and `/boot` on the same disk both
        // show up as reasons.
        r.mount(
            m,
            &format!("{} on {}", m.point, m.fstype),
            &mut Walk::default(),
            0,
        );
    }
    for line in proc_swaps.lines().skip(1).take(MAX_LINES) {
        let Some(name) = line.split_whitespace().next() else {
            continue;
        };
        let name = mounts::unescape(name);
        let name = name.strip_suffix(" (deleted)").unwrap_or(&name);
        match stat(Path::new(name)) {
            Some(PathStat { rdev: Some(d), .. }) => r.block(d, "swap", &mut Walk::default(), 0),
            Some(st) => r.dev(
                st.dev,
                &format!("swap file {name}"),
                &mut Walk::default(),
                0,
            ),
            None => {}
        }
    }
    r.out
}

/// Cap on what is read from one `/proc` file: far beyond any real mount table, small
/// enough that a runaway file cannot exhaust memory.
const PROC_LIMIT: u64 = 16 << 20;
/// Cap on one sysfs attribute (a device number, a backing file path).
const ATTR_LIMIT: u64 = 8192;
/// Cap on lines taken from `/proc/swaps` and `/proc/self/mountinfo`.
const MAX_LINES: usize = 100_000;
/// Cap on the entries read from one sysfs directory.
const MAX_ENTRIES: usize = 4096;
/// Cap on how deep one chain of filesystems and devices may go; real stacks are a
/// handful deep and the seen-set already stops cycles, so this only bounds recursion on
/// absurd input.
const MAX_DEPTH: usize = 64;

/// One line of mountinfo, with what resolving it needs.
#[derive(Debug, Clone)]
struct Mount {
    dev: DevNum,
    point: String,
    fstype: String,
    source: String,
    /// Super-block options, still escaped as mountinfo shows them.
    options: String,
}

fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .take(MAX_LINES)
        .filter_map(parse_mount)
        .collect()
}

/// `ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTIONS`
fn parse_mount(line: &str) -> Option<Mount> {
    let f: Vec<&str> = line.split(' ').collect();
    // The optional fields vary in number; the lone "-" ends them.
    let sep = 6 + f.get(6..)?.iter().position(|x| *x == "-")?;
    Some(Mount {
        dev: mounts::parse_devnum(f.get(2)?)?,
        point: mounts::unescape(f.get(4)?),
        fstype: mounts::unescape(f.get(sep + 1)?),
        source: mounts::unescape(f.get(sep + 2)?),
        options: f.get(sep + 3).unwrap_or(&"").to_string(),
    })
}

/// The directories an overlay is made of, from its super-block options: (option, path).
/// `workdir` is left out: the kernel requires it on the filesystem of `upperdir`.
fn overlay_dirs(options: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    // Commas inside values are escaped (`\054`), so splitting on ',' is safe.
    for opt in options.split(',') {
        let Some((key, value)) = opt.split_once('=') else {
            continue;
        };
        let value = mounts::unescape(value);
        match key {
            // The list as the user gave it: ':' separates layers ("::" before data-only
            // layers), a backslash makes the next character literal.
            "lowerdir" => out.extend(split_layers(&value).into_iter().map(|d| ("lowerdir", d))),
            "upperdir" => out.push(("upperdir", unbackslash(&value))),
            // Newer kernels show layers added one at a time verbatim, without escapes.
            "lowerdir+" => out.push(("lowerdir", value)),
            "datadir+" => out.push(("datadir", value)),
            _ => {}
        }
    }
    out
}

/// Splits an overlay `lowerdir` list at unescaped colons, dropping empty pieces.
fn split_layers(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => cur.extend(chars.next()),
            ':' => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Drops the backslash of each `\x`, as overlayfs does for a single directory.
fn unbackslash(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

/// Reads at most `limit` bytes of a file as text; `None` when it cannot be read.
fn read_bounded(path: &Path, limit: u64) -> Option<String> {
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(limit)
        .read_to_end(&mut buf)
        .ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// The `dev` attribute (`major:minor`) of a sysfs device directory.
fn read_dev(dir: &Path) -> Option<DevNum> {
    mounts::parse_devnum(&read_bounded(&dir.join("dev"), ATTR_LIMIT)?)
}

/// The entries of a sysfs directory, sorted so that results do not depend on the order
/// the kernel lists them in.
fn entries(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut v: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .take(MAX_ENTRIES)
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// What one walk from a mount or swap has visited already.
#[derive(Default)]
struct Walk {
    seen: BTreeSet<Seen>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Seen {
    Block(DevNum),
    /// An anonymous (major 0) filesystem.
    Anon(DevNum),
}

struct Resolver<'a> {
    mounts: &'a [Mount],
    sys: &'a Path,
    stat: &'a dyn Fn(&Path) -> Option<PathStat>,
    out: SystemDisks,
}

impl Resolver<'_> {
    fn add(&mut self, d: DevNum, why: &str) {
        let v = self.out.entry(d).or_default();
        if !v.iter().any(|w| w == why) {
            v.push(why.to_string());
        }
    }

    /// A mounted filesystem: its block device, or for btrfs and overlayfs (anonymous
    /// numbers) the devices and directories they are built from. Other anonymous
    /// filesystems (tmpfs, proc, NFS, ...) stand on no local disk.
    fn mount(&mut self, m: &Mount, why: &str, walk: &mut Walk, depth: usize) {
        if m.dev.0 != 0 {
            return self.block(m.dev, why, walk, depth);
        }
        if depth > MAX_DEPTH || !walk.seen.insert(Seen::Anon(m.dev)) {
            return;
        }
        match m.fstype.as_str() {
            "btrfs" => {
                for d in self.btrfs_devices(m) {
                    self.block(d, why, walk, depth + 1);
                }
            }
            "overlay" => {
                for (what, dir) in overlay_dirs(&m.options) {
                    // A relative path was relative to the working directory of whoever
                    // mounted it, which is not known here.
                    if !dir.starts_with('/') {
                        continue;
                    }
                    let why = format!("{why}, {what} {dir}");
                    self.path(Path::new(&dir), &why, walk, depth + 1);
                }
            }
            _ => {}
        }
    }

    /// A directory: the filesystem it is on, by stat, or else by the longest mount point
    /// that contains it (when the path cannot be looked up from here).
    fn path(&mut self, p: &Path, why: &str, walk: &mut Walk, depth: usize) {
        if let Some(st) = (self.stat)(p) {
            return self.dev(st.dev, why, walk, depth);
        }
        let mounts = self.mounts;
        let holder = mounts
            .iter()
            .filter(|m| p.starts_with(&m.point))
            // Among equal mount points the last one is on top.
            .max_by_key(|m| Path::new(&m.point).components().count());
        if let Some(m) = holder {
            self.mount(m, &format!("{why} on {}", m.fstype), walk, depth);
        }
    }

    /// A filesystem known by its device number (`st_dev` of a file on it).
    fn dev(&mut self, d: DevNum, why: &str, walk: &mut Walk, depth: usize) {
        let mounts = self.mounts;
        match mounts.iter().find(|m| m.dev == d) {
            Some(m) => self.mount(m, &format!("{why} on {}", m.fstype), walk, depth),
            None if d.0 != 0 => self.block(d, why, walk, depth),
            None => {}
        }
    }

    /// A block device: its whole disk, then down through `slaves/` (device-mapper, md)
    /// and a loop device's backing file.
    fn block(&mut self, d: DevNum, why: &str, walk: &mut Walk, depth: usize) {
        if depth > MAX_DEPTH || !walk.seen.insert(Seen::Block(d)) {
            return;
        }
        let dir = match self
            .sys
            .join(format!("dev/block/{}:{}", d.0, d.1))
            .canonicalize()
        {
            Ok(dir) => dir,
            Err(_) => {
                // sysfs does not know it; the number itself is all there is to refuse.
                return self.add(d, &format!("{why} over device {}:{}", d.0, d.1));
            }
        };
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let why = format!("{why} over /dev/{name}");
        // A partition's directory lives inside its disk's.
        let disk_dir = if dir.join("partition").exists() {
            match dir.parent() {
                Some(p) => p.to_path_buf(),
                None => return self.add(d, &why),
            }
        } else {
            dir
        };
        let disk = read_dev(&disk_dir).unwrap_or(d);
        self.add(disk, &why);
        if disk != d && !walk.seen.insert(Seen::Block(disk)) {
            return;
        }
        for (_, slave) in entries(&disk_dir.join("slaves")) {
            if let Some(s) = read_dev(&slave) {
                self.block(s, &why, walk, depth + 1);
            }
        }
        let backing =
            read_bounded(&disk_dir.join("loop/backing_file"), ATTR_LIMIT).unwrap_or_default();
        let backing = backing.trim_end_matches('\n');
        // The kernel marks a backing file that was unlinked; stat the name it had.
        let backing = backing.strip_suffix(" (deleted)").unwrap_or(backing);
        if !backing.is_empty() {
            let why = format!("{why}, backing file {backing}");
            match (self.stat)(Path::new(backing)) {
                Some(PathStat { rdev: Some(b), .. }) => self.block(b, &why, walk, depth + 1),
                Some(st) => self.dev(st.dev, &why, walk, depth + 1),
                None => {}
            }
        }
    }

    /// The devices of a mounted btrfs, from `/sys/fs/btrfs/<fsid>/devices/`: the
    /// filesystem whose devices include the mount's source (by device number, else by
    /// name), or the only btrfs mounted when the source cannot be matched.
    fn btrfs_devices(&self, m: &Mount) -> Vec<DevNum> {
        let src_dev = (self.stat)(Path::new(&m.source)).and_then(|s| s.rdev);
        let src_name = Path::new(&m.source)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        let mut filesystems = Vec::new();
        for (_, fs) in entries(&self.sys.join("fs/btrfs")) {
            let devices: Vec<(String, Option<DevNum>)> = entries(&fs.join("devices"))
                .into_iter()
                .map(|(n, p)| (n, read_dev(&p)))
                .collect();
            if devices.is_empty() {
                // `features` and the like, not a filesystem.
                continue;
            }
            if devices
                .iter()
                .any(|(n, d)| (src_dev.is_some() && *d == src_dev) || Some(n) == src_name.as_ref())
            {
                return devices.into_iter().filter_map(|(_, d)| d).collect();
            }
            filesystems.push(devices);
        }
        // sysfs lists only mounted btrfs filesystems, so a lone one must be this mount's.
        if filesystems.len() == 1 {
            return filesystems
                .remove(0)
                .into_iter()
                .filter_map(|(_, d)| d)
                .collect();
        }
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A fake sysfs in a temporary directory, laid out like the real one: device
    /// directories under `devices/`, partitions inside their disk's directory, and
    /// relative symlinks from `dev/block/M:m`, `slaves/` and `fs/btrfs/*/devices/`.
    struct FakeSys {
        tmp: tempfile::TempDir,
    }

    impl FakeSys {
        fn new() -> FakeSys {
            FakeSys {
                tmp: tempfile::tempdir().unwrap(),
            }
        }

        fn sys(&self) -> PathBuf {
            self.tmp.path().join("sys")
        }

        /// A block device at `devices/<rel>` with number `dev`; a partition when
        /// `partition`. Returns its directory.
        fn block(&self, rel: &str, dev: &str, partition: bool) -> PathBuf {
            let dir = self.sys().join("devices").join(rel);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("dev"), format!("{dev}\n")).unwrap();
            if partition {
                std::fs::write(dir.join("partition"), "1\n").unwrap();
            }
            self.link(&self.sys().join("dev/block").join(dev), &dir);
            dir
        }

        /// Marks `slave` as a device under `holder`.
        fn slave(&self, holder: &Path, slave: &Path) {
            let name = slave.file_name().unwrap();
            self.link(&holder.join("slaves").join(name), slave);
        }

        /// A relative symlink at `link` pointing to `target`, as sysfs makes them.
        fn link(&self, link: &Path, target: &Path) {
            let from = link.parent().unwrap();
            std::fs::create_dir_all(from).unwrap();
            let f: Vec<_> = from.components().collect();
            let t: Vec<_> = target.components().collect();
            let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
            let mut rel = PathBuf::new();
            for _ in common..f.len() {
                rel.push("..");
            }
            for c in &t[common..] {
                rel.push(c);
            }
            std::os::unix::fs::symlink(rel, link).unwrap();
        }

        fn run(&self, mountinfo: &str, swaps: &str, stats: &[(&str, PathStat)]) -> SystemDisks {
            let table: HashMap<String, PathStat> =
                stats.iter().map(|(p, s)| (p.to_string(), *s)).collect();
            let stat = |p: &Path| table.get(p.to_str()?).copied();
            system_disks_in(mountinfo, swaps, &self.sys(), &stat)
        }
    }

    const PCI: &str = "pci0000:00/0000:00:17.0/ata1/host0/target0:0:0/0:0:0:0/block";
    const SWAPS_NONE: &str = "Filename\tType\tSize\tUsed\tPriority\n";

    fn file_on(dev: DevNum) -> PathStat {
        PathStat { dev, rdev: None }
    }

    fn node(rdev: DevNum) -> PathStat {
        PathStat {
            dev: (0, 6),
            rdev: Some(rdev),
        }
    }

    fn keys(s: &SystemDisks) -> Vec<DevNum> {
        s.keys().copied().collect()
    }

    #[test]
    fn ext4_root_on_a_partition() {
        let f = FakeSys::new();
        f.block(&format!("{PCI}/sda"), "8:0", false);
        for (n, d) in [("sda1", "8:1"), ("sda2", "8:2"), ("sda3", "8:3")] {
            f.block(&format!("{PCI}/sda/{n}"), d, true);
        }
        f.block("usb1/1-1/host6/block/sdc", "8:32", false);
        f.block("usb1/1-1/host6/block/sdc/sdc1", "8:33", true);
        let mi = "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw\n\
                  23 22 0:21 / /proc rw - proc proc rw\n\
                  24 22 0:25 / /dev/shm rw - tmpfs tmpfs rw\n\
                  25 22 8:1 / /boot/efi rw shared:5 master:1 - vfat /dev/sda1 rw\n\
                  26 22 8:33 / /media/stick rw - vfat /dev/sdc1 rw\n";
        let swaps = "Filename\tType\tSize\tUsed\tPriority\n\
                     /dev/sda3                               partition\t1000\t0\t-2\n\
                     /swap\\040file                           file\t1000\t0\t-3\n";
        let got = f.run(
            mi,
            swaps,
            &[("/dev/sda3", node((8, 3))), ("/swap file", file_on((8, 2)))],
        );
        assert_eq!(keys(&got), vec![(8, 0)], "the USB stick is not the system");
        assert_eq!(
            got[&(8, 0)],
            vec![
                "/ on ext4 over /dev/sda2",
                "/boot/efi on vfat over /dev/sda1",
                "swap over /dev/sda3",
                "swap file /swap file on ext4 over /dev/sda2",
            ]
        );
    }

    #[test]
    fn lvm_root() {
        let f = FakeSys::new();
        f.block(&format!("{PCI}/sda"), "8:0", false);
        let sda3 = f.block(&format!("{PCI}/sda/sda3"), "8:3", true);
        let dm0 = f.block("virtual/block/dm-0", "254:0", false);
        f.slave(&dm0, &sda3);
        let mi = "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/mapper/vg-root rw\n";
        let got = f.run(mi, SWAPS_NONE, &[]);
        assert_eq!(keys(&got), vec![(8, 0), (254, 0)]);
        assert_eq!(got[&(254, 0)], vec!["/ on ext4 over /dev/dm-0"]);
        assert_eq!(
            got[&(8, 0)],
            vec!["/ on ext4 over /dev/dm-0 over /dev/sda3"]
        );
    }

    #[test]
    fn dm_crypt_on_lvm_on_partitioned_md_raid1_over_two_disks() {
        let f = FakeSys::new();
        f.block(&format!("{PCI}/sda"), "8:0", false);
        let sda1 = f.block(&format!("{PCI}/sda/sda1"), "8:1", true);
        f.block(
            "pci0000:00/0000:00:17.0/ata2/host1/block/sdb",
            "8:16",
            false,
        );
        let sdb1 = f.block(
            "pci0000:00/0000:00:17.0/ata2/host1/block/sdb/sdb1",
            "8:17",
            true,
        );
        let md0 = f.block("virtual/block/md0", "9:0", false);
        f.slave(&md0, &sda1);
        f.slave(&md0, &sdb1);
        let md0p1 = f.block("virtual/block/md0/md0p1", "259:0", true);
        let lvm = f.block("virtual/block/dm-0", "254:0", false);
        f.slave(&lvm, &md0p1);
        let crypt = f.block("virtual/block/dm-1", "254:1", false);
        f.slave(&crypt, &lvm);
        let mi = "30 1 254:1 / / rw - ext4 /dev/mapper/root rw\n";
        let got = f.run(mi, SWAPS_NONE, &[]);
        assert_eq!(
            keys(&got),
            vec![(8, 0), (8, 16), (9, 0), (254, 0), (254, 1)]
        );
        assert_eq!(
            got[&(8, 16)],
            vec!["/ on ext4 over /dev/dm-1 over /dev/dm-0 over /dev/md0p1 over /dev/sdb1"]
        );
    }

    #[test]
    fn btrfs_root_on_two_devices() {
        let f = FakeSys::new();
        f.block(&format!("{PCI}/sdb"), "8:16", false);
        let sdb2 = f.block(&format!("{PCI}/sdb/sdb2"), "8:18", true);
        let sdc = f.block(
            "pci0000:00/0000:00:1f.2/ata3/host2/block/sdc",
            "8:32",
            false,
        );
        f.block("usb1/1-2/host7/block/sdd", "8:48", false);
        let sdd1 = f.block("usb1/1-2/host7/block/sdd/sdd1", "8:49", true);
        let root_fs = f
            .sys()
            .join("fs/btrfs/1b2c3d4e-0000-4000-8000-000000000001");
        f.link(&root_fs.join("devices/sdb2"), &sdb2);
        f.link(&root_fs.join("devices/sdc"), &sdc);
        let stick_fs = f
            .sys()
            .join("fs/btrfs/9f8e7d6c-0000-4000-8000-000000000002");
        f.link(&stick_fs.join("devices/sdd1"), &sdd1);
        std::fs::create_dir_all(f.sys().join("fs/btrfs/features")).unwrap();
        let mi = "40 1 0:30 /@ / rw,relatime shared:1 - btrfs /dev/sdb2 rw,ssd,subvolid=256,subvol=/@\n\
                  41 40 0:30 /@home /home rw,relatime shared:2 - btrfs /dev/sdb2 rw,subvolid=257,subvol=/@home\n\
                  42 40 0:31 / /media/stick rw - btrfs /dev/sdd1 rw\n";
        let got = f.run(mi, SWAPS_NONE, &[]);
        assert_eq!(
            keys(&got),
            vec![(8, 16), (8, 32)],
            "both devices, not the stick"
        );
        assert_eq!(
            got[&(8, 16)],
            vec!["/ on btrfs over /dev/sdb2", "/home on btrfs over /dev/sdb2"]
        );
        assert_eq!(got[&(8, 32)][0], "/ on btrfs over /dev/sdc");

        // A source whose name sysfs does not use (a /dev/mapper link) is matched by the
        // device number it stands for.
        let mi = "40 1 0:30 / / rw - btrfs /dev/mapper/root rw\n\
                  42 40 0:31 / /media/stick rw - btrfs /dev/sdd1 rw\n";
        let got = f.run(mi, SWAPS_NONE, &[("/dev/mapper/root", node((8, 32)))]);
        assert_eq!(keys(&got), vec![(8, 16), (8, 32)]);
    }

    #[test]
    fn overlay_root_over_an_ext4_partition() {
        let f = FakeSys::new();
        f.block(&format!("{PCI}/sda"), "8:0", false);
        f.block(&format!("{PCI}/sda/sda1"), "8:1", true);
        f.block("usb1/1-1/host6/block/sdc", "8:32", false);
        f.block("usb1/1-1/host6/block/sdc/sdc1", "8:33", true);
        f.block("usb1/1-3/host8/block/sde", "8:64", false);
        f.block("usb1/1-3/host8/block/sde/sde1", "8:65", true);
        // A lower layer with an escaped colon in its name, a relative one (ignored), a
        // data-only layer after "::", and the upper directory on a mounted ext4
        // partition; "/data" is found by stat, the others by their mount points.
        let mi = "50 1 0:40 / / rw - overlay overlay rw,lowerdir=/lower/a\\134:b:rel/x::/data,upperdir=/mnt/up,workdir=/mnt/work\n\
                  51 50 8:1 / /lower rw - ext4 /dev/sda1 rw\n\
                  52 50 8:33 / /mnt rw - ext4 /dev/sdc1 rw\n\
                  53 50 0:41 / /mnt/other rw - tmpfs tmpfs rw\n\
                  54 50 8:65 / /srv/data rw - ext4 /dev/sde1 rw\n";
        let got = f.run(
            mi,
            SWAPS_NONE,
            &[("/data", file_on((8, 65))), ("rel/x", file_on((8, 96)))],
        );
        assert_eq!(keys(&got), vec![(8, 0), (8, 32), (8, 64)]);
        assert_eq!(
            got[&(8, 32)],
            vec!["/ on overlay, upperdir /mnt/up on ext4 over /dev/sdc1"]
        );
        assert_eq!(
            got[&(8, 0)],
            vec!["/ on overlay, lowerdir /lower/a:b on ext4 over /dev/sda1"]
        );
        assert_eq!(
            got[&(8, 64)],
            vec!["/ on overlay, lowerdir /data on ext4 over /dev/sde1"]
        );
    }

    #[test]
    fn overlay_over_itself_ends() {
        let f = FakeSys::new();
        let mi = "50 1 0:40 / / rw - overlay overlay rw,lowerdir=/a:/b,upperdir=/c,workdir=/d\n\
                  51 50 0:41 / /a rw - overlay overlay rw,lowerdir=/,upperdir=/a/x,workdir=/a/y\n";
        assert!(f.run(mi, SWAPS_NONE, &[]).is_empty());
    }

    #[test]
    fn loop_root_backed_by_a_file_on_nvme() {
        let f = FakeSys::new();
        let nvme = "pci0000:00/0000:00:1d.0/0000:3d:00.0/nvme/nvme0/nvme0n1";
        f.block(nvme, "259:0", false);
        f.block(&format!("{nvme}/nvme0n1p2"), "259:2", true);
        let loop0 = f.block("virtual/block/loop0", "7:0", false);
        std::fs::create_dir_all(loop0.join("loop")).unwrap();
        std::fs::write(loop0.join("loop/backing_file"), "/host/images/root.img\n").unwrap();
        let mi = "60 1 7:0 / / rw - ext4 /dev/loop0 rw\n\
                  61 60 259:2 / /host rw - ext4 /dev/nvme0n1p2 rw\n";
        let got = f.run(
            mi,
            SWAPS_NONE,
            &[("/host/images/root.img", file_on((259, 2)))],
        );
        assert_eq!(keys(&got), vec![(7, 0), (259, 0)]);
        assert_eq!(
            got[&(259, 0)],
            vec!["/ on ext4 over /dev/loop0, backing file /host/images/root.img on ext4 over /dev/nvme0n1p2"]
        );
    }

    #[test]
    fn tmpfs_root_has_no_disk() {
        let f = FakeSys::new();
        f.block(&format!("{PCI}/sda"), "8:0", false);
        let mi = "70 1 0:25 / / rw - tmpfs rootfs rw,size=1000k\n\
                  71 70 0:26 / /home rw - nfs4 server:/home rw,vers=4.2\n";
        assert!(f.run(mi, SWAPS_NONE, &[]).is_empty());
    }

    #[test]
    fn odd_input_does_not_panic() {
        let f = FakeSys::new();
        let sda = f.block(&format!("{PCI}/sda"), "8:0", false);
        std::fs::write(sda.join("dev"), "garbage\n").unwrap();
        // Two device-mapper devices stacked on each other: a cycle only a corrupt
        // tree could have.
        let a = f.block("virtual/block/dm-0", "254:0", false);
        let b = f.block("virtual/block/dm-1", "254:1", false);
        f.slave(&a, &b);
        f.slave(&b, &a);
        // A partition whose disk has no `dev`.
        let odd = f.sys().join("devices/virtual/block/odd");
        std::fs::create_dir_all(&odd).unwrap();
        let p = f.block("virtual/block/odd/odd1", "200:1", true);
        std::fs::write(p.join("partition"), "x").unwrap();
        std::fs::create_dir_all(f.sys().join("fs/btrfs/x/devices/nothing")).unwrap();
        let mi = "\n- - -\n1 2 3\n22 1 8:0 / / rw - ext4\n\
                  23 1 8:0 / /usr rw shared:1 -\n\
                  24 1 254:0 / /var rw - ext4 /dev/dm-0 rw\n\
                  25 1 200:1 / /home rw - ext4 /dev/odd1 rw\n\
                  26 1 0:30 / /boot rw - btrfs /dev/none rw\n\
                  27 1 0:31 / /efi rw - overlay o lowerdir=\\,upperdir=\\\\\\\n\
                  28 1 99999999999:1 / / rw - ext4 /dev/x rw\n\
                  29 1 8:0 / /boot/efi rw - vfat /dev/sda rw\n\
                  \u{fffd}\u{0} \t\n";
        let swaps = "header\n/dev/nothing partition 1 0 -1\n\n   \n";
        let got = f.run(mi, swaps, &[]);
        assert_eq!(keys(&got), vec![(8, 0), (200, 1), (254, 0), (254, 1)]);
    }

    #[test]
    fn an_absurdly_deep_stack_is_cut_short() {
        let f = FakeSys::new();
        f.block(&format!("{PCI}/sda"), "8:0", false);
        let mut mi =
            String::from("1 0 0:100 / / rw - overlay overlay rw,lowerdir=/o0/x,upperdir=/u\n");
        for i in 0..5000 {
            mi.push_str(&format!(
                "{} 1 0:{} / /o{i} rw - overlay overlay rw,lowerdir=/o{}/x\n",
                i + 2,
                i + 101,
                i + 1
            ));
        }
        mi.push_str("9999 1 8:0 / /o5000 rw - ext4 /dev/sda rw\n");
        assert!(f.run(&mi, SWAPS_NONE, &[]).is_empty());
    }

    #[test]
    fn overlay_option_parsing() {
        assert_eq!(
            overlay_dirs("rw,lowerdir=/a\\134:b:/c\\054d::/e,upperdir=/u\\134\\054p,workdir=/w,lowerdir+=/f\\134g,datadir+=/h"),
            vec![
                ("lowerdir", "/a:b".to_string()),
                ("lowerdir", "/c,d".to_string()),
                ("lowerdir", "/e".to_string()),
                ("upperdir", "/u,p".to_string()),
                ("lowerdir", "/f\\g".to_string()),
                ("datadir", "/h".to_string()),
            ]
        );
        assert!(overlay_dirs("").is_empty());
        assert_eq!(split_layers("::a\\"), vec!["a"]);
    }

    /// The disks under `/` on this machine as util-linux sees them: the device `findmnt`
    /// reports and every disk `lsblk` lists beneath it.
    fn root_disks_by_util_linux() -> Option<Vec<DevNum>> {
        let run = |args: &[&str]| {
            let out = std::process::Command::new(args[0])
                .args(&args[1..])
                .env("LC_ALL", "C")
                .output()
                .unwrap_or_else(|e| panic!("running {}: {e}", args[0]));
            assert!(out.status.success(), "{args:?} failed");
            String::from_utf8(out.stdout).unwrap()
        };
        let source = run(&["findmnt", "-no", "SOURCE", "/"]);
        // btrfs subvolumes show as /dev/sdb2[/@].
        let source = source
            .trim()
            .split('[')
            .next()
            .unwrap_or_default()
            .to_string();
        if !source.starts_with("/dev/") {
            return None;
        }
        let tree = run(&["lsblk", "-snro", "MAJ:MIN,TYPE", &source]);
        let rows: Vec<(DevNum, String)> = tree
            .lines()
            .filter_map(|l| {
                let (d, t) = l.split_once(' ')?;
                Some((mounts::parse_devnum(d)?, t.to_string()))
            })
            .collect();
        let disks: Vec<DevNum> = rows
            .iter()
            .filter(|(_, t)| t == "disk")
            .map(|(d, _)| *d)
            .collect();
        // Without a "disk" row (a loop device, say) the bottom of the tree is the disk.
        Some(if disks.is_empty() {
            rows.last().map(|(d, _)| vec![*d]).unwrap_or_default()
        } else {
            disks
        })
    }

    #[test]
    fn this_machine() {
        let got = system_disks();
        // A test that cannot run fails: this machine (and CI) has / on a block device.
        let expected =
            root_disks_by_util_linux().expect("/ is not on a block device here: cannot test");
        assert!(!got.is_empty());
        assert!(!expected.is_empty(), "lsblk listed no disk under /");
        for d in expected {
            let why = got
                .get(&d)
                .unwrap_or_else(|| panic!("disk {}:{} of / missing from {got:?}", d.0, d.1));
            assert!(why.iter().any(|w| w.starts_with("/ on ")), "{why:?}");
        }
    }

    #[test]
    fn device_check_refuses_the_disk_of_root() {
        let disks =
            root_disks_by_util_linux().expect("/ is not on a block device here: cannot test");
        for (major, minor) in disks {
            let dir = Path::new(&format!("/sys/dev/block/{major}:{minor}"))
                .canonicalize()
                .unwrap();
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            let path = PathBuf::from(format!("/dev/{name}"));
            let dev =
                super::super::device::Device::inspect(&path, rustix::fs::makedev(major, minor))
                    .unwrap();
            // The refusal comes before the source is looked at, so none is needed.
            let err = dev
                .check(1, Path::new("/nonexistent"), true)
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("/dev/{name} holds the running system (/ on ")),
                "{err}"
            );
            assert!(err.ends_with("; refusing to overwrite it"), "{err}");
        }
    }

    /// Generated and mutated mountinfo lines as the resolver reads them (optional
    /// fields, the "-" separator missing or doubled, overlay options with escaped
    /// colons and commas, huge device numbers): parsing and splitting overlay layers
    /// never panic, and the layers found fit in the options they came from.
    #[test]
    fn fuzz_mountinfo_lines() {
        let base = "22 1 8:2 / / rw,relatime shared:1 - ext4 /dev/sda2 rw\n\
                    41 22 0:40 / /m rw master:3 shared:9 - overlay overlay rw,lowerdir=/a\\134:b:/c\\054d::/e,upperdir=/u\\134\\054p,workdir=/w,lowerdir+=/f,datadir+=/h\n\
                    50 22 0:41 / /b rw - btrfs /dev/mapper/x\\040y rw,subvol=/@\n";
        let tokens: &[&str] = &[
            " ",
            " - ",
            "-",
            "\\",
            "\\134",
            "\\054",
            "\\777",
            ":",
            "::",
            ",",
            "=",
            "lowerdir=",
            "upperdir=",
            "lowerdir+=",
            "4294967295:0",
            "99999999999:1",
            "\n",
        ];
        let report = oneimage_format::testing::Fuzz::new("fuzz_mountinfo_lines").run(
            |m, case| {
                m.tokens(tokens);
                if case % 4 == 0 {
                    m.generate(300)
                } else {
                    m.mutate(base.as_bytes())
                }
            },
            |input| {
                let text = String::from_utf8_lossy(input);
                let mounts = parse_mounts(&text);
                assert!(mounts.len() <= text.lines().count());
                for m in &mounts {
                    // Unescaping only shortens: the layers fit in the options they came from.
                    let dirs = overlay_dirs(&m.options);
                    let total: usize = dirs.iter().map(|(_, d)| d.len()).sum();
                    assert!(total <= m.options.len(), "{m:?} {dirs:?}");
                }
                !mounts.is_empty()
            },
        );
        assert!(
            report.accepted > 1000 && report.accepted < report.cases,
            "{report:?}"
        );
    }
}
