//! The first boot of a copy: one ordered sequence of steps, each recorded on the disk
//! when done (`oneimage_format::firstboot`), so that a boot cut short at any point (power
//! loss) is followed by one that goes on where it stopped.
//!
//! The steps, in order: a new identity for this copy (disk and partition GUIDs, the root
//! filesystem's UUID, the ESP's volume id), then growth of the root partition to the
//! disk, then, once the root is mounted, growth of its filesystem. Every step sets values
//! decided before it starts (the identity is derived from a seed stored in the record),
//! so a step redone after a power cut writes the same bytes again. A step that fails
//! stops the sequence for this boot; the next boot tries again.

use crate::cmdline::Grow;
use crate::disks::Found;
use crate::log::say;
use oneimage_format::firstboot::{self as record, Identity, State, Step};
use oneimage_format::gpt::{read_table, write_table, Partition, Table};
use oneimage_format::Guid;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Instant;

/// What is left of the sequence once the root is mounted.
pub struct Pending {
    dev: String,
    state: State,
    started: Instant,
    /// Whether any step ran in this boot (the total time is reported then).
    worked: bool,
}

/// Writes the next record and makes sure it is on the disk before anything else happens.
fn record_step(disk: &mut File, dev: &str, state: &State) -> Result<(), String> {
    record::write(disk, state)
        .and_then(|_| disk.sync_all())
        .map_err(|e| format!("writing the first-boot record on {dev}: {e}"))
}

fn done_list(state: &State) -> String {
    let done: Vec<&str> = Step::ALL
        .iter()
        .filter(|s| state.is_done(**s))
        .map(|s| s.name())
        .collect();
    if done.is_empty() {
        "none".into()
    } else {
        done.join(", ")
    }
}

fn new_seed() -> Result<[u8; 32], String> {
    let mut seed = [0u8; 32];
    let mut filled = 0;
    while filled < seed.len() {
        let n = rustix::rand::getrandom(&mut seed[filled..], rustix::rand::GetRandomFlags::empty())
            .map_err(|e| format!("getrandom: {e}"))?;
        filled += n;
    }
    Ok(seed)
}

/// Runs the steps that come before the root is mounted (identity, partition growth) on
/// the writable disk holding `found`. Returns what is left for [`after_mount`], or
/// nothing when there is no first-boot work (done earlier, or a record this agent must
/// not touch).
pub fn before_mount(found: &Found, grow: Grow) -> Result<Option<Pending>, String> {
    let started = Instant::now();
    let dev = format!("/dev/{}", found.disk);
    let mut disk = crate::disks::open_rw(&dev)?;
    let table =
        read_table(&mut disk).map_err(|e| format!("reading the partition table of {dev}: {e}"))?;
    let found_record = record::read(&mut disk)
        .map_err(|e| format!("reading the first-boot record on {dev}: {e}"))?;
    let state = match found_record {
        record::Found::Unusable(why) => {
            say(&format!(
                "first boot: the record on {dev} cannot be used ({why}); no first-boot step is run"
            ));
            return Ok(None);
        }
        record::Found::State(s) if !s.applies(table.disk_guid) => {
            say(&format!(
                "first boot: {dev} holds the record of an earlier copy (its disk GUID is not this disk's); starting afresh"
            ));
            None
        }
        record::Found::State(s) => Some(s),
        record::Found::Fresh => None,
    };
    let mut state = match state {
        Some(s) if s.all_done() => {
            say("first boot: done on an earlier boot (identity, growth)");
            return Ok(None);
        }
        Some(s) => {
            say(&format!(
                "first boot: resuming on {dev}; done so far: {}",
                done_list(&s)
            ));
            s
        }
        None => {
            let root = table
                .partitions
                .iter()
                .find(|p| p.number == found.number)
                .ok_or_else(|| format!("partition {} vanished from {dev}", found.number))?;
            let s = State::new(table.disk_guid, root.guid, found.number, new_seed()?);
            record_step(&mut disk, &dev, &s)?;
            say(&format!(
                "first boot: a new copy on {dev}; steps: {}",
                Step::ALL.map(Step::name).join(", ")
            ));
            s
        }
    };
    let mut pending = Pending {
        dev: dev.clone(),
        state: state.clone(),
        started,
        worked: true,
    };

    if !state.is_done(Step::Identity) {
        let id = state.identity();
        if let Err(e) = give_identity(&mut disk, &dev, &table, found, &id) {
            say(&format!(
                "first boot: the new identity failed: {e}; the remaining steps wait for the next boot"
            ));
            return Ok(None);
        }
        state = state.with_done(Step::Identity);
        record_step(&mut disk, &dev, &state)?;
        say(&format!(
            "first boot: step identity done: disk {}, root filesystem {}, ESP volume id {}",
            id.disk,
            id.root_fs_uuid,
            oneimage_format::fat::volume_id_text(id.esp_volume_id)
        ));
    }

    if !state.is_done(Step::GrowPartition) {
        if grow == Grow::Off {
            say("first boot: growth is off for this boot (oneimage.grow=off)");
            pending.state = state;
            return Ok(Some(pending));
        }
        drop(disk);
        if let Err(e) = crate::grow::grow_partition(found, grow) {
            say(&format!(
                "first boot: could not grow the root partition: {e}; the remaining steps wait for the next boot"
            ));
            pending.state = state;
            pending.worked = false;
            return Ok(Some(pending));
        }
        let mut disk = crate::disks::open_rw(&dev)?;
        state = state.with_done(Step::GrowPartition);
        record_step(&mut disk, &dev, &state)?;
        say("first boot: step grow-partition done");
    }
    pending.state = state;
    Ok(Some(pending))
}

/// Runs the steps that need the root mounted at `mountpoint` (filesystem growth).
pub fn after_mount(p: Pending, found: &Found, mountpoint: &str) -> Result<(), String> {
    let mut state = p.state;
    if state.is_done(Step::GrowPartition) && !state.is_done(Step::GrowFilesystem) {
        crate::grow::grow_filesystem(found, mountpoint)
            .map_err(|e| format!("could not grow the root filesystem: {e}"))?;
        let mut disk = crate::disks::open_rw(&p.dev)?;
        state = state.with_done(Step::GrowFilesystem);
        record_step(&mut disk, &p.dev, &state)?;
        say("first boot: step grow-filesystem done");
    }
    if state.all_done() && p.worked {
        say(&format!(
            "first boot: every step done; first-boot work took {:.2} s",
            p.started.elapsed().as_secs_f64()
        ));
    }
    Ok(())
}

/// Gives this copy its own identifiers: the root filesystem's UUID, the ESP's volume id,
/// then the disk and partition GUIDs (one table write, backup first). Each write sets
/// a value derived from the seed, so doing it again after a power cut is harmless.
fn give_identity(
    disk: &mut File,
    dev: &str,
    table: &Table,
    found: &Found,
    id: &Identity,
) -> Result<(), String> {
    set_ext4_uuid(&found.node, id.root_fs_uuid)?;
    let ss = table.sector_size;
    for esp in table.partitions.iter().filter(|p| crate::disks::is_esp(p)) {
        set_fat_volume_id(disk, dev, esp, ss, id.esp_volume_id)?;
    }
    let parts: Vec<Partition> = table
        .partitions
        .iter()
        .map(|p| Partition {
            guid: id.partition(p.number),
            ..p.clone()
        })
        .collect();
    write_table(disk, ss, id.disk, &parts)
        .map_err(|e| format!("writing the partition table of {dev}: {e}"))?;
    disk.sync_all().map_err(|e| format!("syncing {dev}: {e}"))?;
    crate::disks::reread_partitions(disk, dev, &found.node);
    Ok(())
}

/// ext4 superblock fields (see the kernel's ext4.h).
const INCOMPAT_CSUM_SEED: u32 = 0x2000;
const RO_COMPAT_METADATA_CSUM: u32 = 0x400;

/// Sets the UUID of the ext4 filesystem on `node` with tune2fs. With metadata
/// checksums, only a filesystem whose checksums do not depend on the UUID
/// (metadata_csum_seed, which oneimage's images have) is changed: otherwise tune2fs
/// would rewrite every checksum, which a power cut could leave half done.
fn set_ext4_uuid(node: &Path, uuid: Guid) -> Result<(), String> {
    let mut sb = [0u8; 1024];
    File::open(node)
        .and_then(|mut f| {
            f.seek(SeekFrom::Start(1024))?;
            f.read_exact(&mut sb)
        })
        .map_err(|e| format!("reading the superblock of {}: {e}", node.display()))?;
    if u16::from_le_bytes([sb[56], sb[57]]) != 0xEF53 {
        return Err(format!("{} holds no ext4 filesystem", node.display()));
    }
    if sb[104..120] == uuid.0 {
        return Ok(());
    }
    let le32 = |o: usize| u32::from_le_bytes([sb[o], sb[o + 1], sb[o + 2], sb[o + 3]]);
    if le32(100) & RO_COMPAT_METADATA_CSUM != 0 && le32(96) & INCOMPAT_CSUM_SEED == 0 {
        say(&format!(
            "first boot: the root filesystem on {} keeps its UUID: it lacks metadata_csum_seed, and changing it would rewrite every checksum",
            node.display()
        ));
        return Ok(());
    }
    crate::run::tool(
        "/sbin/tune2fs",
        &["-U", &uuid.to_string(), &node.display().to_string()],
    )
}

/// Sets the volume id of the FAT filesystem in partition `esp` (boot sector and its
/// FAT32 backup).
fn set_fat_volume_id(
    disk: &mut File,
    dev: &str,
    esp: &Partition,
    ss: u64,
    id: u32,
) -> Result<(), String> {
    let (at, len) = (esp.offset(ss), esp.len(ss));
    let mut boot = [0u8; 512];
    disk.seek(SeekFrom::Start(at))
        .and_then(|_| disk.read_exact(&mut boot))
        .map_err(|e| format!("reading the ESP's boot sector on {dev}: {e}"))?;
    let offsets = oneimage_format::fat::volume_id_offsets(&boot, len)
        .map_err(|e| format!("the ESP (partition {}) on {dev}: {e}", esp.number))?;
    for o in offsets {
        disk.seek(SeekFrom::Start(at + o))
            .and_then(|_| disk.write_all(&id.to_le_bytes()))
            .map_err(|e| format!("writing the ESP's volume id on {dev}: {e}"))?;
    }
    disk.sync_all().map_err(|e| format!("syncing {dev}: {e}"))
}
