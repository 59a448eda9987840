//! Finding the partition with a given GUID by reading the partition tables of the disks
//! the kernel has found, waiting for slow ones (USB) up to a deadline.

use crate::log::say;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A whole disk and the partitions its table lists: (number, GUID).
struct Seen {
    disk: String,
    partitions: Vec<(u32, String)>,
}

fn whole_disks() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/block")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| {
                    !std::path::Path::new(&format!("/sys/class/block/{n}/partition")).exists()
                })
                // Empty devices (unused loop and RAM disks) cannot hold the root.
                .filter(|n| {
                    std::fs::read_to_string(format!("/sys/class/block/{n}/size"))
                        .is_ok_and(|s| s.trim() != "0")
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Reads the partition table of `disk`. A disk plugged in at boot may carry anything:
/// read_table checks every field, and a table it refuses is a reason, not a panic.
fn read_disk(disk: &str) -> Result<Seen, String> {
    let dev = format!("/dev/{disk}");
    let mut f = std::fs::File::open(&dev).map_err(|e| format!("opening it: {e}"))?;
    let table = oneimage_format::gpt::read_table(&mut f).map_err(|e| e.to_string())?;
    Ok(Seen {
        disk: disk.to_string(),
        partitions: table
            .partitions
            .iter()
            .map(|p| (p.number, p.guid.to_string()))
            .collect(),
    })
}

/// The name the kernel gives partition `number` of `disk` (`vda3`, `nvme0n1p3`), for
/// waiting on it before sysfs shows it.
pub fn guess_node(disk: &str, number: u32) -> PathBuf {
    let sep = if disk.ends_with(|c: char| c.is_ascii_digit()) {
        "p"
    } else {
        ""
    };
    PathBuf::from(format!("/dev/{disk}{sep}{number}"))
}

/// The device node of partition `number` of `disk`, once the kernel has made it.
pub fn partition_node(disk: &str, number: u32) -> Option<PathBuf> {
    let rd = std::fs::read_dir(format!("/sys/class/block/{disk}")).ok()?;
    for e in rd.filter_map(|e| e.ok()) {
        let name = e.file_name().to_string_lossy().into_owned();
        let n = std::fs::read_to_string(e.path().join("partition")).ok();
        if n.map(|s| s.trim().parse::<u32>().ok()) == Some(Some(number)) {
            let node = PathBuf::from(format!("/dev/{name}"));
            if node.exists() {
                return Some(node);
            }
        }
    }
    None
}

/// The partition found: its disk, number and device node.
#[derive(Debug, Clone)]
pub struct Found {
    /// Whole-disk name, e.g. `vda`.
    pub disk: String,
    /// Partition number in the table.
    pub number: u32,
    /// Device node, e.g. `/dev/vda2`.
    pub node: PathBuf,
    /// Found through a loop device over an optical disc (read-only medium).
    pub optical: bool,
}

/// Attaches a read-only loop device with 512-byte sectors and partition scanning over
/// the disc `disk` (2048-byte sectors hide the image's GPT from the kernel); returns the
/// loop device's name, or nothing for an empty drive.
fn attach_disc(disk: &str) -> Result<Option<String>, String> {
    let dev = format!("/dev/{disk}");
    let no_medium = rustix::io::Errno::NOMEDIUM.raw_os_error();
    let backing = match std::fs::File::open(&dev) {
        Ok(f) => f,
        // A drive without a disc.
        Err(e) if e.raw_os_error() == Some(no_medium) => return Ok(None),
        Err(e) => return Err(format!("opening {dev}: {e}")),
    };
    // struct loop_config: fd, block_size, loop_info64 (lo_flags at byte 52), reserved.
    let mut config = [0u8; 304];
    config[0..4].copy_from_slice(&(std::os::fd::AsRawFd::as_raw_fd(&backing) as u32).to_le_bytes());
    config[4..8].copy_from_slice(&512u32.to_le_bytes());
    const LO_FLAGS_READ_ONLY: u32 = 1;
    const LO_FLAGS_PARTSCAN: u32 = 8;
    config[60..64].copy_from_slice(&(LO_FLAGS_READ_ONLY | LO_FLAGS_PARTSCAN).to_le_bytes());
    for n in 0..8 {
        let loop_dev = format!("/dev/loop{n}");
        let Ok(l) = std::fs::OpenOptions::new().read(true).open(&loop_dev) else {
            continue;
        };
        // LOOP_CONFIGURE (0x4C0A) reads one struct loop_config.
        // SAFETY: the kernel reads 304 bytes from the pointer Setter passes, which is the
        // size of struct loop_config; both fds are open.
        let r = unsafe {
            rustix::ioctl::ioctl(&l, rustix::ioctl::Setter::<0x4C0A, [u8; 304]>::new(config))
        };
        if r.is_ok() {
            // The loop device keeps its own reference to the disc.
            return Ok(Some(format!("loop{n}")));
        }
    }
    Err(format!("no free loop device for {dev}"))
}

fn is_disc(disk: &str) -> bool {
    disk.starts_with("sr")
}

/// Which disk holds the root.
#[derive(Debug)]
pub enum Choice {
    /// One disk: the root is there.
    One(Found),
    /// Several disks claim the root (copies of one image that never had their first
    /// boot, or clones): the agent must not guess which to write.
    Ambiguous(Vec<Found>),
}

/// Picks the root among the disks seen: those with partition `guid`, narrowed to the
/// disk that also holds the ESP GRUB started from (`esp`) when GRUB said which.
/// `None` means "not yet"; `last_chance` accepts a root whose disk lacks that ESP.
fn choose(
    seen: &[Seen],
    guid: &str,
    esp: Option<&str>,
    optical: &dyn Fn(&str) -> bool,
    last_chance: bool,
) -> Option<Choice> {
    let mut with_root: Vec<(Found, bool)> = Vec::new();
    for s in seen {
        let Some((n, _)) = s.partitions.iter().find(|(_, g)| g == guid) else {
            continue;
        };
        let Some(node) = partition_node(&s.disk, *n) else {
            continue;
        };
        let has_esp = esp.is_some_and(|e| s.partitions.iter().any(|(_, g)| g == e));
        let found = Found {
            disk: s.disk.clone(),
            number: *n,
            node,
            optical: optical(&s.disk),
        };
        with_root.push((found, has_esp));
    }
    let tied: Vec<Found> = with_root
        .iter()
        .filter(|(_, has_esp)| *has_esp)
        .map(|(f, _)| f.clone())
        .collect();
    let pool = if esp.is_none() || (tied.is_empty() && last_chance) {
        if let (Some(e), false) = (esp, with_root.is_empty()) {
            say(&format!(
                "no disk with partition {guid} also holds the ESP {e} GRUB started from; considering every disk with {guid}"
            ));
        }
        with_root.into_iter().map(|(f, _)| f).collect()
    } else {
        tied
    };
    match pool.len() {
        0 => None,
        1 => pool.into_iter().next().map(Choice::One),
        _ => Some(Choice::Ambiguous(pool)),
    }
}

/// Waits until a disk shows partition `guid` (on the disk of ESP `esp`, when given);
/// returns where it is, or every disk that claims it.
pub fn wait_for_root(guid: &str, esp: Option<&str>, timeout: Duration) -> Result<Choice, String> {
    let start = Instant::now();
    let mut announced = false;
    let mut discs: Vec<(String, String)> = Vec::new(); // (disc, loop device over it)
    let mut skipped: std::collections::BTreeMap<String, String> = Default::default();
    loop {
        for d in whole_disks().iter().filter(|d| is_disc(d)) {
            if !discs.iter().any(|(disc, _)| disc == d) {
                match attach_disc(d) {
                    Ok(None) => {}
                    Ok(Some(l)) => {
                        say(&format!("{d} is an optical disc; reading it through /dev/{l} with 512-byte sectors"));
                        discs.push((d.clone(), l));
                    }
                    Err(e) => say(&e),
                }
            }
        }
        let mut seen: Vec<Seen> = Vec::new();
        for d in whole_disks() {
            match read_disk(&d) {
                Ok(s) => seen.push(s),
                Err(why) => {
                    // Said once per disk, although the wait reads every disk again.
                    if !skipped.contains_key(&d) {
                        say(&format!("skipping /dev/{d}: {why}"));
                    }
                    skipped.insert(d, why);
                }
            }
        }
        let optical = |disk: &str| discs.iter().any(|(_, l)| l == disk);
        let last_chance = start.elapsed() >= timeout;
        if let Some(choice) = choose(&seen, guid, esp, &optical, last_chance) {
            return Ok(choice);
        }
        if start.elapsed() >= timeout {
            let mut msg = format!(
                "no partition {guid} appeared within {} s; disks seen:",
                timeout.as_secs()
            );
            let disks = whole_disks();
            if disks.is_empty() {
                msg.push_str(" none");
            }
            for d in disks {
                match seen.iter().find(|s| s.disk == d) {
                    Some(s) => {
                        let parts: Vec<String> = s
                            .partitions
                            .iter()
                            .map(|(n, g)| format!("{n}={g}"))
                            .collect();
                        msg.push_str(&format!(" {d} (GPT: {})", parts.join(", ")));
                    }
                    None => match skipped.get(&d) {
                        Some(why) => msg.push_str(&format!(" {d} ({why})")),
                        None => msg.push_str(&format!(" {d} (no GPT)")),
                    },
                }
            }
            return Err(msg);
        }
        if !announced {
            say(&format!(
                "waiting up to {} s for partition {guid}",
                timeout.as_secs()
            ));
            announced = true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Asks the kernel to read the partition table of `dev` again (BLKRRPART) after it was
/// rewritten, then waits a little for `node` (a partition on it) to be back: devtmpfs
/// removes and re-creates the nodes.
pub fn reread_partitions(disk: &std::fs::File, dev: &str, node: &std::path::Path) {
    // SAFETY: BLKRRPART takes no argument; the fd is an open block device.
    let reread = unsafe { rustix::ioctl::ioctl(disk, rustix::ioctl::NoArg::<0x125f>::new()) };
    match reread {
        Ok(()) => say(&format!("the kernel re-read the partition table of {dev}")),
        Err(e) => say(&format!(
            "the kernel could not re-read the partition table of {dev}: {e}"
        )),
    }
    let start = Instant::now();
    while !node.exists() && start.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Opens the whole disk `dev` (`/dev/vda`) for reading and writing, for the first-boot
/// steps, the growth and the boot mark.
pub fn open_rw(dev: &str) -> Result<std::fs::File, String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("opening {dev}: {e}"))
}
