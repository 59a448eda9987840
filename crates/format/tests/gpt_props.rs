//! Property test of `gpt::read_table` over generated and mutated disks: valid tables made
//! by `write_table`, then header fields, entries and bytes changed, with the checksums
//! recomputed half of the time so that the changes reach the field checks. Whatever the
//! disk holds, reading it must not panic, must stay within bounded reads, memory and time,
//! and a table it accepts must be one the boot agent can do arithmetic on safely.
//!
//! Seeded and reproducible: `ONEIMAGE_PROP_SEED` and `ONEIMAGE_PROP_CASES` change the
//! seed and the number of cases (10,000 by default). This file holds one test only: it
//! caps the address space of the whole process.

use oneimage_format::gpt::{read_table, write_table, Partition, MAX_ENTRY_ARRAY_BYTES};
use oneimage_format::Guid;
use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

/// splitmix64: small, seeded, and the same everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }
    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.below(from.len() as u64) as usize]
    }
}

const BLOCK: u64 = 4096;

/// How many valid disks the cases start from.
const BASES: u64 = 300;

/// A sparse disk of any length: blocks never written read as zeros, so a disk can claim
/// terabytes while holding only its tables. It counts what is read from it.
#[derive(Clone)]
struct Disk {
    len: u64,
    blocks: BTreeMap<u64, Vec<u8>>,
    pos: u64,
    reads: u64,
    bytes_read: u64,
    largest_read: u64,
}

impl Disk {
    fn new(len: u64) -> Disk {
        Disk {
            len,
            blocks: BTreeMap::new(),
            pos: 0,
            reads: 0,
            bytes_read: 0,
            largest_read: 0,
        }
    }
    fn read_at(&self, at: u64, buf: &mut [u8]) {
        let mut done = 0;
        while done < buf.len() {
            let p = at.saturating_add(done as u64);
            let off = (p % BLOCK) as usize;
            let n = (BLOCK as usize - off).min(buf.len() - done);
            match self.blocks.get(&(p / BLOCK)) {
                Some(blk) => buf[done..done + n].copy_from_slice(&blk[off..off + n]),
                None => buf[done..done + n].fill(0),
            }
            done += n;
        }
    }
    fn write_at(&mut self, at: u64, data: &[u8]) {
        let data = &data[..(self.len.saturating_sub(at).min(data.len() as u64)) as usize];
        let mut done = 0;
        while done < data.len() {
            let p = at + done as u64;
            let off = (p % BLOCK) as usize;
            let n = (BLOCK as usize - off).min(data.len() - done);
            self.blocks
                .entry(p / BLOCK)
                .or_insert_with(|| vec![0; BLOCK as usize])[off..off + n]
                .copy_from_slice(&data[done..done + n]);
            done += n;
        }
    }
    fn get(&self, at: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        self.read_at(at, &mut v);
        v
    }
}

impl Read for Disk {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = (buf.len() as u64).min(self.len.saturating_sub(self.pos)) as usize;
        self.read_at(self.pos, &mut buf[..n]);
        self.pos += n as u64;
        self.reads += 1;
        self.bytes_read += n as u64;
        self.largest_read = self.largest_read.max(buf.len() as u64);
        Ok(n)
    }
}

impl Write for Disk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_at(self.pos, buf);
        self.pos += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Seek for Disk {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let p = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = p.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad seek"))?;
        Ok(self.pos)
    }
}

/// Header field offsets and widths (bytes).
const U32_FIELDS: &[usize] = &[8, 12, 16, 80, 84, 88];
const U64_FIELDS: &[usize] = &[24, 32, 40, 48, 72];

/// Values that sit on or next to a boundary the reader checks.
fn interesting_u32(r: &mut Rng, ss: u64) -> u32 {
    let (ss, random) = (ss as u32, r.next() as u32);
    r.pick(&[
        0,
        1,
        91,
        92,
        93,
        127,
        128,
        129,
        256,
        384,
        ss - 1,
        ss,
        ss + 1,
        4096,
        8192,
        32768,
        32769,
        0x0001_0000,
        0x8000_0000,
        u32::MAX,
        random,
    ])
}

fn interesting_u64(r: &mut Rng, lbas: u64) -> u64 {
    let (random, on_disk) = (r.next(), r.below(lbas + 100));
    r.pick(&[
        0,
        1,
        2,
        33,
        34,
        lbas.wrapping_sub(34),
        lbas.wrapping_sub(33),
        lbas.wrapping_sub(2),
        lbas - 1,
        lbas,
        lbas + 1,
        u64::MAX,
        u64::MAX / 512,
        u64::MAX / 4096 + 1,
        1 << 55,
        random,
        on_disk,
    ])
}

/// Where each header of `disk` is, by the sector size it was written with.
fn header_lbas(disk: &Disk, ss: u64) -> [u64; 2] {
    [1, disk.len / ss - 1]
}

/// Recomputes the entry array checksum (when the array lies on the disk and is not
/// huge) and then the header checksum of the header in `lba`.
fn reseal(disk: &mut Disk, ss: u64, lba: u64) {
    let h = lba * ss;
    let head = disk.get(h, ss as usize);
    let u32_at = |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().unwrap());
    let entries = u64::from_le_bytes(head[72..80].try_into().unwrap());
    let bytes = u64::from(u32_at(80)) * u64::from(u32_at(84));
    let mut head = head.clone();
    if let Some(at) = entries.checked_mul(ss) {
        if bytes <= 2 * MAX_ENTRY_ARRAY_BYTES && at.saturating_add(bytes) <= disk.len {
            let crc = crc32fast::hash(&disk.get(at, bytes as usize));
            head[88..92].copy_from_slice(&crc.to_le_bytes());
        }
    }
    let size = (u32_at(12) as usize).clamp(92, ss as usize);
    head[16..20].fill(0);
    let crc = crc32fast::hash(&head[..size]);
    head[16..20].copy_from_slice(&crc.to_le_bytes());
    disk.write_at(h, &head);
}

/// A valid disk: a table of up to 6 partitions made by write_table, on a disk of 70
/// sectors to 2 TiB.
fn generate(r: &mut Rng) -> (Disk, u64) {
    let ss = if r.chance(4) { 4096 } else { 512 };
    let lbas = match r.below(4) {
        0 => 70 + r.below(200),
        1 => 2048 + r.below(1 << 16),
        2 => 1 << (20 + r.below(12)),
        _ => (1u64 << 41) / ss - r.below(1000),
    };
    let mut disk = Disk::new(lbas * ss);
    let array = 16384 / ss;
    let (first, last) = (2 + array, lbas - 2 - array);
    let mut parts = Vec::new();
    let mut at = first;
    for n in 1..=r.below(7) as u32 {
        if at > last {
            break;
        }
        let start = at + r.below(((last - at) / 4).max(1));
        let end = (start + r.below(((last - start) / 2).max(1))).min(last);
        parts.push(Partition {
            number: n * (1 + r.below(3) as u32),
            type_guid: Guid::derive("prop", &format!("type{}", r.below(3))),
            guid: Guid::derive("prop", &format!("{}", r.next())),
            name: format!("p{n}"),
            first_lba: start,
            last_lba: end,
            attributes: r.next(),
        });
        at = end + 1;
    }
    parts.sort_by_key(|p| p.number);
    parts.dedup_by_key(|p| p.number);
    parts.retain(|p| p.number <= 128);
    write_table(&mut disk, ss, Guid::derive("prop", "disk"), &parts).expect("valid table");
    (disk, ss)
}

/// Changes the disk in one to three ways; returns what was done, for a failure message.
fn mutate(r: &mut Rng, disk: &mut Disk, ss: u64) -> String {
    let lbas = disk.len / ss;
    let mut done = Vec::new();
    // Half of the time both copies get the same change: otherwise the reader just falls
    // back to the untouched one.
    let both = r.chance(2);
    for _ in 0..1 + r.below(3) {
        let lbas_now = header_lbas(disk, ss);
        let lba = r.pick(&lbas_now);
        let mut change = r.below(8);
        // Rare: reading and checksumming 4 MiB arrays is most of the test's time.
        if r.chance(40) {
            // A larger entry array, with the usable area moved after it (primary) or
            // before it (backup), near or past the size the reader accepts.
            let count = r.pick(&[256u32, 1024, 8192, 32768, 32769, 65536]);
            let array_lbas = (u64::from(count) * 128).div_ceil(ss);
            for lba in lbas_now {
                let h = lba * ss;
                disk.write_at(h + 80, &count.to_le_bytes());
                disk.write_at(h + 84, &128u32.to_le_bytes());
                if lba == 1 {
                    disk.write_at(h + 40, &(2 + array_lbas).to_le_bytes());
                } else {
                    let entries = lba.saturating_sub(array_lbas);
                    disk.write_at(h + 72, &entries.to_le_bytes());
                    disk.write_at(h + 48, &entries.saturating_sub(1).to_le_bytes());
                }
            }
            done.push(format!("array of {count}"));
            change = 8;
        }
        let copies: Vec<u64> = if both { lbas_now.to_vec() } else { vec![lba] };
        let seed = r.next();
        for lba in copies {
            // The same random choices for each copy.
            let mut r = Rng(seed);
            let r = &mut r;
            let h = lba * ss;
            match change {
                0 | 1 => {
                    let at = r.pick(U32_FIELDS);
                    let v = interesting_u32(r, ss);
                    disk.write_at(h + at as u64, &v.to_le_bytes());
                    done.push(format!("header@{lba}+{at}={v:#x}"));
                }
                2 | 3 => {
                    let at = r.pick(U64_FIELDS);
                    let v = interesting_u64(r, lbas);
                    disk.write_at(h + at as u64, &v.to_le_bytes());
                    done.push(format!("header@{lba}+{at}={v:#x}"));
                }
                4 => {
                    // First and last usable LBA swapped.
                    let (f, l) = (disk.get(h + 40, 8), disk.get(h + 48, 8));
                    disk.write_at(h + 40, &l);
                    disk.write_at(h + 48, &f);
                    done.push(format!("header@{lba} usable swapped"));
                }
                5 | 6 => {
                    // An entry of the array this header names (if it is on the disk).
                    let head = disk.get(h, 92);
                    let entries = u64::from_le_bytes(head[72..80].try_into().unwrap());
                    let size = u32::from_le_bytes(head[84..88].try_into().unwrap()) as u64;
                    let e = entries
                        .saturating_mul(ss)
                        .saturating_add(r.below(8) * size.max(128));
                    let what = r.below(4);
                    match what {
                        0 => disk.write_at(
                            e.saturating_add(32),
                            &interesting_u64(r, lbas).to_le_bytes(),
                        ),
                        1 => disk.write_at(
                            e.saturating_add(40),
                            &interesting_u64(r, lbas).to_le_bytes(),
                        ),
                        2 => {
                            // A copy of the first entry: same range, same GUID.
                            let first = disk.get(entries.saturating_mul(ss), 128);
                            disk.write_at(e, &first);
                        }
                        _ => disk.write_at(e, &r.next().to_le_bytes()),
                    }
                    done.push(format!("entry@{e} kind {what}"));
                }
                7 => {
                    // Random bytes in a header sector or just after it.
                    for _ in 0..1 + r.below(8) {
                        let at = h + r.below(ss * 3);
                        disk.write_at(at, &[r.next() as u8]);
                    }
                    done.push(format!("bytes near {lba}"));
                }
                _ => {}
            }
        }
    }
    if r.chance(10) {
        // The disk seen shorter or longer than the table says (a truncated or grown copy).
        let new = match r.below(3) {
            0 => disk.len / 2,
            1 => disk.len + ss * r.below(100),
            _ => ss * r.below(70),
        };
        disk.len = new;
        done.push(format!("length {new}"));
    }
    if r.chance(2) && disk.len / ss >= 2 {
        for lba in header_lbas(disk, ss) {
            reseal(disk, ss, lba);
        }
        done.push("resealed".into());
    }
    done.join(", ")
}

/// Reads the virtual size of this process, in bytes.
fn address_space() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("reading /proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmSize:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmSize in /proc/self/status");
    kib * 1024
}

/// How much more address space the reads may take than before the first case: room for
/// several entry arrays of the largest size accepted, far below the gigabytes an
/// unchecked entry count would ask for.
const HEADROOM: u64 = 256 << 20;

#[derive(Default, Debug)]
struct Stats {
    accepted: u64,
    refused: u64,
    refused_after_checksums: u64,
    slowest: Duration,
    most_reads: u64,
    largest_read: u64,
}

fn run(seed: u64, cases: u64) -> Stats {
    let mut stats = Stats::default();
    let mut r = Rng(seed);
    // Valid disks made by write_table, which each case copies and changes (writing a
    // table for every case would cost most of the test's time).
    let bases: Vec<(Disk, u64)> = (0..BASES).map(|_| generate(&mut r)).collect();
    for case in 0..cases {
        let case_seed = r.next();
        let mut cr = Rng(case_seed);
        let (base, ss) = &bases[cr.below(BASES) as usize];
        let (mut disk, ss) = (base.clone(), *ss);
        let what = if case % 10 == 0 {
            // One in ten is left valid: it must read back.
            "unchanged".to_string()
        } else {
            mutate(&mut cr, &mut disk, ss)
        };
        if case == 0 {
            // Caps the address space once the allocator has its arenas: an allocation of
            // gigabytes then fails and ends the test, which is the bug being looked for.
            let cap = address_space() + HEADROOM;
            rustix::process::setrlimit(
                rustix::process::Resource::As,
                rustix::process::Rlimit {
                    current: Some(cap),
                    maximum: None,
                },
            )
            .expect("setrlimit RLIMIT_AS");
        }
        let len = disk.len;
        disk.reads = 0;
        let start = Instant::now();
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read_table(&mut disk)))
                .unwrap_or_else(|_| {
                    panic!("read_table panicked on case {case} (seed {case_seed:#x}): {what}")
                });
        let took = start.elapsed();
        stats.slowest = stats.slowest.max(took);
        stats.most_reads = stats.most_reads.max(disk.reads);
        stats.largest_read = stats.largest_read.max(disk.largest_read);
        // Two sector sizes, two copies each: a sector and one entry array per copy.
        assert!(
            disk.reads <= 64 && disk.bytes_read <= 4 * (4096 + MAX_ENTRY_ARRAY_BYTES),
            "case {case} (seed {case_seed:#x}, {what}): {} reads, {} bytes",
            disk.reads,
            disk.bytes_read
        );
        assert!(
            disk.largest_read <= MAX_ENTRY_ARRAY_BYTES,
            "case {case} (seed {case_seed:#x}, {what}): a read of {} bytes",
            disk.largest_read
        );
        match result {
            Ok(t) => {
                stats.accepted += 1;
                let ss = t.sector_size;
                let lbas = len / ss;
                assert!(matches!(ss, 512 | 4096), "case {case}: {ss}");
                assert!(
                    t.first_usable_lba <= t.last_usable_lba && t.last_usable_lba < lbas,
                    "case {case} (seed {case_seed:#x}, {what}): {t:?}"
                );
                assert!(t.backup_lba < lbas, "case {case}: {t:?}");
                let mut prev_end = None;
                let mut sorted = t.partitions.clone();
                sorted.sort_by_key(|p| p.first_lba);
                for p in &sorted {
                    assert!(
                        t.first_usable_lba <= p.first_lba
                            && p.first_lba <= p.last_lba
                            && p.last_lba <= t.last_usable_lba
                            && prev_end.is_none_or(|e| e < p.first_lba),
                        "case {case} (seed {case_seed:#x}, {what}): {p:?} in {t:?}"
                    );
                    // The arithmetic the agent does on a partition cannot overflow.
                    assert!(p
                        .offset(ss)
                        .checked_add(p.len(ss))
                        .is_some_and(|e| e <= len));
                    prev_end = Some(p.last_lba);
                }
            }
            Err(e) => {
                assert!(
                    what != "unchanged",
                    "case {case} (seed {case_seed:#x}): a valid table was refused: {e}"
                );
                stats.refused += 1;
                let msg = e.to_string();
                if !msg.contains("checksum") && !msg.contains("no signature") {
                    stats.refused_after_checksums += 1;
                }
            }
        }
    }
    rustix::process::setrlimit(
        rustix::process::Resource::As,
        rustix::process::Rlimit {
            current: None,
            maximum: None,
        },
    )
    .expect("lifting RLIMIT_AS");
    stats
}

#[test]
fn read_table_survives_generated_and_mutated_disks() {
    let env = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .map(|v| v.parse::<u64>().unwrap_or_else(|_| panic!("{name}={v}")))
            .unwrap_or(default)
    };
    let seed = env("ONEIMAGE_PROP_SEED", 0x6f6e_6569_6d61_6765);
    let cases = env("ONEIMAGE_PROP_CASES", 10_000);
    // In its own thread, so that a read that never ends fails the test by time instead
    // of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(|| run(seed, cases)));
    });
    let limit = Duration::from_secs(60 + cases / 20);
    let stats = match rx.recv_timeout(limit) {
        Ok(Ok(s)) => s,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{cases} cases (seed {seed:#x}) took longer than {limit:?}"),
    };
    eprintln!("seed {seed:#x}, {cases} cases: {stats:?}");
    assert_eq!(stats.accepted + stats.refused, cases);
    // The mutations must reach the field checks, not just break checksums, and valid
    // tables must be among the cases.
    assert!(stats.accepted >= cases / 10, "{stats:?}");
    assert!(stats.refused_after_checksums >= cases / 5, "{stats:?}");
    assert!(stats.slowest < Duration::from_secs(5), "{stats:?}");
}
