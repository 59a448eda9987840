//! The first-boot state record: which steps of a copy's first boot are done, kept on the
//! disk itself so that a boot cut short by a power loss resumes where it stopped.
//!
//! The record lives outside every partition, in the gap between the primary GPT and the
//! ISO 9660 volume descriptors (byte 32 KiB), in two 4 KiB slots at 24 KiB and 28 KiB
//! (after the primary table for 512- and 4096-byte sectors alike). Record number `seq`
//! goes to slot `seq % 2`, so writing the next one never touches the current one: a
//! write cut short leaves a slot whose checksum fails, and the other slot still holds
//! the last complete state. An image as built has zeros there: no record, a fresh copy.
//!
//! A record belongs to the copy only while the disk matches it (see [`State::applies`]):
//! an image written again over a used stick by a tool that skips zero blocks (bmaptool)
//! leaves the old record behind, but also the image's original disk GUID, which the old
//! record's finished identity step no longer allows.

use crate::encryption::{Outcome, Policy};
use crate::guid::Guid;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// Byte offsets of the two slots on the disk.
pub const SLOT_OFFSETS: [u64; 2] = [24 << 10, 28 << 10];
/// Bytes of a record (one 512-byte sector: a write of it is atomic on every disk).
pub const RECORD_LEN: usize = 512;
const MAGIC: &[u8; 8] = b"ONEIFBST";
/// The record layout this code writes; it also reads layouts 1 (before expansion) and 2
/// (before encryption), whose unused bytes read as "no expansion", "no encryption".
pub const VERSION: u32 = 3;

/// One step of the first boot, in the order the agent runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// New disk GUID, partition GUIDs, filesystem UUID and ESP volume id for this copy.
    Identity,
    /// A compressed root (SquashFS, EROFS) copied into a new read-write ext4 root in a
    /// new partition after it; the compressed one stays, for the live entry.
    Expand,
    /// The root encrypted in place as LUKS2 (or the user's no to it, where the image
    /// allows one), before it is mounted read-write and before it grows.
    Encrypt,
    /// The root partition (and the backup GPT) moved to the end of the disk.
    GrowPartition,
    /// The root filesystem grown to fill its partition.
    GrowFilesystem,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 5] = [
        Step::Identity,
        Step::Expand,
        Step::Encrypt,
        Step::GrowPartition,
        Step::GrowFilesystem,
    ];

    fn bit(self) -> u64 {
        match self {
            Step::Identity => 1,
            Step::GrowPartition => 1 << 1,
            Step::GrowFilesystem => 1 << 2,
            Step::Expand => 1 << 3,
            Step::Encrypt => 1 << 4,
        }
    }

    /// The step's name in logs and `inspect`.
    pub fn name(self) -> &'static str {
        match self {
            Step::Identity => "identity",
            Step::Expand => "expand",
            Step::Encrypt => "encrypt",
            Step::GrowPartition => "grow-partition",
            Step::GrowFilesystem => "grow-filesystem",
        }
    }
}

const KNOWN_BITS: u64 = 0b1_1111;

/// The first-boot state of one copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// Record number; the valid record with the highest number is the current one.
    pub seq: u64,
    /// The disk GUID the image was built with (before the identity step).
    pub original_disk: Guid,
    /// The root partition's GUID as built.
    pub original_root: Guid,
    /// The root partition's number in the table.
    pub root_number: u32,
    /// Random bytes chosen once for this copy; every new identifier is derived from them,
    /// so an identity step redone after a power cut sets the same values again.
    pub seed: [u8; 32],
    /// The number of the partition a compressed root expands into, or 0 for a root
    /// that is not expanded (ext4).
    pub expand_into: u32,
    /// What the image asked of the root's encryption when this copy's first boot began.
    pub encryption: Policy,
    /// How the encryption step ended.
    pub encrypted: Outcome,
    done: u64,
}

/// New identifiers for one copy, all derived from its seed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The disk GUID.
    pub disk: Guid,
    /// The root filesystem's UUID.
    pub root_fs_uuid: Guid,
    /// The ESP's FAT volume id.
    pub esp_volume_id: u32,
    /// The UUID of the root's LUKS2 header, when the first boot encrypts it.
    pub luks_uuid: Guid,
    seed: [u8; 32],
}

impl Identity {
    /// The new unique GUID of partition `number`.
    pub fn partition(&self, number: u32) -> Guid {
        Guid::derive(
            &crate::hash::hex(&self.seed),
            &format!("partition {number}"),
        )
    }
}

impl State {
    /// The state of a copy whose first boot starts now.
    pub fn new(
        original_disk: Guid,
        original_root: Guid,
        root_number: u32,
        seed: [u8; 32],
    ) -> State {
        State {
            seq: 1,
            original_disk,
            original_root,
            root_number,
            seed,
            expand_into: 0,
            encryption: Policy::Off,
            encrypted: Outcome::Pending,
            done: 0,
        }
    }

    /// This state, for an image whose root's encryption follows `policy`.
    pub fn encrypting(self, policy: Policy) -> State {
        State {
            encryption: policy,
            ..self
        }
    }

    /// The next record: the encryption step done, ended as `outcome`.
    pub fn with_encryption_done(&self, outcome: Outcome) -> State {
        State {
            encrypted: outcome,
            ..self.with_done(Step::Encrypt)
        }
    }

    /// This state, for a compressed root that expands into partition `number`.
    pub fn expanding_into(self, number: u32) -> State {
        State {
            expand_into: number,
            ..self
        }
    }

    /// Whether `step` is part of this copy's first boot (expansion only for a
    /// compressed root, encryption only when the image asks for it).
    pub fn applies_step(&self, step: Step) -> bool {
        match step {
            Step::Expand => self.expand_into != 0,
            Step::Encrypt => self.encryption != Policy::Off,
            _ => true,
        }
    }

    /// Whether `step` is done.
    pub fn is_done(&self, step: Step) -> bool {
        self.done & step.bit() != 0
    }

    /// The next record: this one with `step` done.
    pub fn with_done(&self, step: Step) -> State {
        State {
            seq: self.seq.wrapping_add(1),
            done: self.done | step.bit(),
            ..self.clone()
        }
    }

    /// Whether every step that applies is done.
    pub fn all_done(&self) -> bool {
        Step::ALL
            .iter()
            .all(|s| self.is_done(*s) || !self.applies_step(*s))
    }

    /// The identifiers this copy gets.
    pub fn identity(&self) -> Identity {
        let seed = crate::hash::hex(&self.seed);
        let fs = Guid::derive(&seed, "root filesystem");
        let vol = Guid::derive(&seed, "esp volume id").0;
        Identity {
            disk: Guid::derive(&seed, "disk"),
            root_fs_uuid: fs,
            esp_volume_id: u32::from_be_bytes([vol[0], vol[1], vol[2], vol[3]]),
            luks_uuid: Guid::derive(&seed, "luks2 header"),
            seed: self.seed,
        }
    }

    /// Whether this record describes the disk whose GUID is `disk_guid`: before the
    /// identity step the disk still has its original GUID (or, cut short, already the
    /// new one); after it, only the new one.
    pub fn applies(&self, disk_guid: Guid) -> bool {
        let new = self.identity().disk;
        if self.is_done(Step::Identity) {
            disk_guid == new
        } else {
            disk_guid == self.original_disk || disk_guid == new
        }
    }

    /// The record's bytes.
    pub fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0..8].copy_from_slice(MAGIC);
        b[8..12].copy_from_slice(&VERSION.to_le_bytes());
        b[12..20].copy_from_slice(&self.seq.to_le_bytes());
        b[20..36].copy_from_slice(&self.original_disk.0);
        b[36..52].copy_from_slice(&self.original_root.0);
        b[52..56].copy_from_slice(&self.root_number.to_le_bytes());
        b[56..88].copy_from_slice(&self.seed);
        b[88..96].copy_from_slice(&self.done.to_le_bytes());
        b[96..100].copy_from_slice(&self.expand_into.to_le_bytes());
        b[100..104].copy_from_slice(&self.encryption.code().to_le_bytes());
        b[104..108].copy_from_slice(&self.encrypted.code().to_le_bytes());
        let crc = crc32fast::hash(&b[..RECORD_LEN - 4]);
        b[RECORD_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// What a slot holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Slot {
    /// Nothing was ever written there (all zeros).
    Empty,
    /// A record whose checksum holds.
    Valid(State),
    /// Something else: a write cut short, or bytes another tool left.
    Damaged(String),
    /// A valid record of a layout newer than this code knows.
    Newer(u32),
}

/// Reads one slot's bytes.
pub fn decode(b: &[u8]) -> Slot {
    if b.len() < RECORD_LEN {
        return Slot::Damaged(format!("{} bytes, expected {RECORD_LEN}", b.len()));
    }
    let b = &b[..RECORD_LEN];
    if b.iter().all(|&x| x == 0) {
        return Slot::Empty;
    }
    if &b[0..8] != MAGIC {
        return Slot::Damaged("no first-boot record signature".into());
    }
    let stored = u32::from_le_bytes(b[RECORD_LEN - 4..].try_into().expect("4 bytes"));
    if crc32fast::hash(&b[..RECORD_LEN - 4]) != stored {
        return Slot::Damaged("checksum mismatch (a write cut short)".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    let guid_at = |o: usize| Guid(b[o..o + 16].try_into().expect("16 bytes"));
    let version = u32_at(8);
    let done = u64_at(88);
    if !(1..=VERSION).contains(&version) || done & !KNOWN_BITS != 0 {
        return Slot::Newer(version);
    }
    if b[108..RECORD_LEN - 4].iter().any(|&x| x != 0) {
        // Unused bytes are written as zeros; anything else is not a record of ours.
        return Slot::Damaged("bytes after the record's fields are not zero".into());
    }
    let (Some(encryption), Some(encrypted)) = (
        Policy::from_code(u32_at(100)),
        Outcome::from_code(u32_at(104)),
    ) else {
        return Slot::Damaged(format!(
            "encryption fields {} and {} are not ones this agent knows",
            u32_at(100),
            u32_at(104)
        ));
    };
    Slot::Valid(State {
        seq: u64_at(12),
        original_disk: guid_at(20),
        original_root: guid_at(36),
        root_number: u32_at(52),
        seed: b[56..88].try_into().expect("32 bytes"),
        expand_into: u32_at(96),
        encryption,
        encrypted,
        done,
    })
}

/// What the two slots of a disk say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No record: a fresh copy (or one whose record is gone).
    Fresh,
    /// The current state.
    State(State),
    /// A record this code cannot read safely (newer layout, or both slots damaged).
    Unusable(String),
}

/// Picks the current state from the two slots' contents.
pub fn current(slots: [Slot; 2]) -> Found {
    let mut best: Option<State> = None;
    let mut problems = Vec::new();
    for (i, s) in slots.into_iter().enumerate() {
        match s {
            Slot::Empty => {}
            Slot::Valid(st) => {
                if best.as_ref().is_none_or(|b| st.seq > b.seq) {
                    best = Some(st);
                }
            }
            Slot::Damaged(why) => problems.push(format!("slot {i}: {why}")),
            Slot::Newer(v) => {
                return Found::Unusable(format!(
                    "slot {i} holds a first-boot record of layout {v}, newer than this agent's {VERSION}"
                ))
            }
        }
    }
    match best {
        Some(st) => Found::State(st),
        // One damaged slot and one empty: the very first record was cut short.
        None if problems.len() < 2 => Found::Fresh,
        None => Found::Unusable(problems.join("; ")),
    }
}

/// Reads both slots of `disk`.
pub fn read<D: Read + Seek>(disk: &mut D) -> io::Result<Found> {
    let len = disk.seek(SeekFrom::End(0))?;
    let mut slots = [Slot::Empty, Slot::Empty];
    for (slot, off) in slots.iter_mut().zip(SLOT_OFFSETS) {
        if len < off + RECORD_LEN as u64 {
            // A disk too small for the slot has no record in it.
            continue;
        }
        let mut b = [0u8; RECORD_LEN];
        disk.seek(SeekFrom::Start(off))?;
        disk.read_exact(&mut b)?;
        *slot = decode(&b);
    }
    Ok(current(slots))
}

/// Writes `state` into its slot (`seq % 2`), leaving the other slot alone. The caller
/// syncs the disk before relying on it.
pub fn write<D: Write + Seek>(disk: &mut D, state: &State) -> io::Result<()> {
    disk.seek(SeekFrom::Start(SLOT_OFFSETS[(state.seq % 2) as usize]))?;
    disk.write_all(&state.encode())?;
    disk.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn guid(n: u8) -> Guid {
        Guid([n; 16])
    }

    #[test]
    fn a_fresh_disk_has_no_record() {
        let mut disk = Cursor::new(vec![0u8; 64 << 10]);
        assert_eq!(read(&mut disk).unwrap(), Found::Fresh);
        let mut tiny = Cursor::new(vec![0u8; 20 << 10]);
        assert_eq!(read(&mut tiny).unwrap(), Found::Fresh);
    }

    #[test]
    fn records_alternate_slots_and_the_newest_wins() {
        let mut disk = Cursor::new(vec![0u8; 64 << 10]);
        let s1 = State::new(guid(1), guid(2), 2, [7; 32]);
        write(&mut disk, &s1).unwrap();
        assert_eq!(read(&mut disk).unwrap(), Found::State(s1.clone()));
        let s2 = s1.with_done(Step::Identity);
        write(&mut disk, &s2).unwrap();
        assert_eq!(read(&mut disk).unwrap(), Found::State(s2.clone()));
        assert!(s2.is_done(Step::Identity) && !s2.is_done(Step::GrowPartition));
        // The previous record is still whole in the other slot.
        let other = &disk.get_ref()[SLOT_OFFSETS[1] as usize..][..RECORD_LEN];
        assert_eq!(decode(other), Slot::Valid(s1));
        let s4 = s2
            .with_done(Step::GrowPartition)
            .with_done(Step::GrowFilesystem);
        assert!(s4.all_done());
        assert_eq!(s4.seq, 4);
    }

    #[test]
    fn a_write_cut_short_leaves_the_previous_state() {
        let mut disk = Cursor::new(vec![0u8; 64 << 10]);
        let s1 = State::new(guid(1), guid(2), 2, [7; 32]);
        write(&mut disk, &s1).unwrap();
        let s2 = s1.with_done(Step::Identity);
        // Half of record 2 reached the disk.
        let bytes = s2.encode();
        let off = SLOT_OFFSETS[0] as usize;
        disk.get_mut()[off..off + 200].copy_from_slice(&bytes[..200]);
        assert_eq!(read(&mut disk).unwrap(), Found::State(s1));
        // The very first record cut short: still a fresh copy.
        let mut disk = Cursor::new(vec![0u8; 64 << 10]);
        let off = SLOT_OFFSETS[1] as usize;
        disk.get_mut()[off..off + 100]
            .copy_from_slice(&State::new(guid(1), guid(2), 2, [7; 32]).encode()[..100]);
        assert_eq!(read(&mut disk).unwrap(), Found::Fresh);
    }

    #[test]
    fn a_layout_1_record_reads_as_one_without_expansion() {
        let s = State::new(guid(1), guid(2), 2, [7; 32]).with_done(Step::Identity);
        let mut b = s.encode();
        b[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32fast::hash(&b[..RECORD_LEN - 4]);
        b[RECORD_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        let Slot::Valid(old) = decode(&b) else {
            panic!("layout 1 is read")
        };
        assert_eq!(old.expand_into, 0);
        assert!(!old.applies_step(Step::Expand));
        let all = Step::ALL
            .iter()
            .filter(|st| **st != Step::Expand)
            .fold(old.clone(), |st, step| st.with_done(*step));
        assert!(all.all_done(), "expansion is not owed by an ext4 root");
        let expanding = s.expanding_into(4);
        assert!(expanding.applies_step(Step::Expand));
        let grown = [Step::GrowPartition, Step::GrowFilesystem]
            .iter()
            .fold(expanding.clone(), |st, step| st.with_done(*step));
        assert!(!grown.all_done(), "a compressed root owes its expansion");
        assert!(grown.with_done(Step::Expand).all_done());
        let Slot::Valid(back) = decode(&grown.encode()) else {
            panic!("round trip")
        };
        assert_eq!(back.expand_into, 4);
    }

    #[test]
    fn encryption_is_owed_only_when_asked_and_its_outcome_is_kept() {
        let plain = State::new(guid(1), guid(2), 2, [7; 32]);
        assert!(!plain.applies_step(Step::Encrypt));
        let asked = plain.clone().encrypting(Policy::Offer);
        assert!(asked.applies_step(Step::Encrypt));
        let grown = [Step::Identity, Step::GrowPartition, Step::GrowFilesystem]
            .iter()
            .fold(asked, |st, step| st.with_done(*step));
        assert!(!grown.all_done(), "the encryption step is owed");
        let declined = grown.with_encryption_done(Outcome::Declined);
        assert!(declined.all_done() && declined.is_done(Step::Encrypt));
        let Slot::Valid(back) = decode(&declined.encode()) else {
            panic!("round trip")
        };
        assert_eq!(
            (back.encryption, back.encrypted),
            (Policy::Offer, Outcome::Declined)
        );
        // A layout-2 record (zeros there) owes no encryption.
        let mut b = plain.with_done(Step::Identity).encode();
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&b[..RECORD_LEN - 4]);
        b[RECORD_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        let Slot::Valid(old) = decode(&b) else {
            panic!("layout 2 is read")
        };
        assert_eq!(old.encryption, Policy::Off);
        // Codes this agent does not know are not a record it may act on.
        let mut b = State::new(guid(1), guid(2), 2, [7; 32]).encode();
        b[100] = 9;
        let crc = crc32fast::hash(&b[..RECORD_LEN - 4]);
        b[RECORD_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        assert!(matches!(decode(&b), Slot::Damaged(w) if w.contains("encryption fields 9")));
    }

    #[test]
    fn newer_or_doubly_damaged_records_are_unusable() {
        let s = State::new(guid(1), guid(2), 2, [7; 32]);
        let mut b = s.encode();
        b[8] = 4;
        let crc = crc32fast::hash(&b[..RECORD_LEN - 4]);
        b[RECORD_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(decode(&b), Slot::Newer(4));
        assert!(matches!(
            current([Slot::Newer(4), Slot::Valid(s)]),
            Found::Unusable(_)
        ));
        let d = || Slot::Damaged("x".into());
        assert!(matches!(current([d(), d()]), Found::Unusable(_)));
    }

    #[test]
    fn identity_is_derived_from_the_seed_only() {
        let a = State::new(guid(1), guid(2), 2, [7; 32]);
        let b = State::new(guid(3), guid(4), 5, [7; 32]);
        assert_eq!(a.identity(), b.identity());
        let c = State::new(guid(1), guid(2), 2, [8; 32]);
        let (ia, ic) = (a.identity(), c.identity());
        assert_ne!(ia.disk, ic.disk);
        assert_ne!(ia.esp_volume_id, ic.esp_volume_id);
        assert_ne!(ia.partition(1), ia.partition(2));
        assert_ne!(ia.partition(2), ia.root_fs_uuid);
    }

    #[test]
    fn a_record_applies_only_to_its_disk() {
        let s = State::new(guid(1), guid(2), 2, [7; 32]);
        let new = s.identity().disk;
        assert!(s.applies(guid(1)) && s.applies(new) && !s.applies(guid(9)));
        // Identity done: the original GUID means the image was written again.
        let d = s.with_done(Step::Identity);
        assert!(d.applies(new) && !d.applies(guid(1)));
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::testing::Fuzz;

    /// Property: any 512 bytes decode without a panic; a record that decodes encodes back
    /// to the same bytes; mutated records never decode as valid with other contents
    /// unless their checksum was made right.
    #[test]
    fn fuzz_firstboot_record() {
        let base = State::new(Guid([1; 16]), Guid([2; 16]), 2, [9; 32])
            .with_done(Step::Identity)
            .encode();
        let report = Fuzz::new("fuzz_firstboot_record").run(
            |m, case| {
                let mut b = m.mutate(&base);
                b.resize(RECORD_LEN, 0);
                if case % 2 == 0 {
                    let crc = crc32fast::hash(&b[..RECORD_LEN - 4]);
                    b[RECORD_LEN - 4..].copy_from_slice(&crc.to_le_bytes());
                }
                b
            },
            |b| match decode(b) {
                Slot::Valid(s) => {
                    // A layout-1 record is written back as the current layout: only
                    // the version and the checksum may differ.
                    let again = s.encode();
                    assert_eq!(&again[..8], &b[..8]);
                    assert_eq!(&again[12..RECORD_LEN - 4], &b[12..RECORD_LEN - 4]);
                    assert_eq!(decode(&again), Slot::Valid(s));
                    true
                }
                _ => false,
            },
        );
        assert!(
            report.accepted > 0 && report.accepted < report.cases,
            "{report:?}"
        );
    }
}
