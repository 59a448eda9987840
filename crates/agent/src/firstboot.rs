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
use oneimage_format::gpt::{read_table, Table};
use oneimage_format::identity::{uuid_change_of, UuidChange};
use oneimage_format::Guid;
use std::fs::File;
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

/// Gives this copy its own identifiers (see `oneimage_format::identity`), then has the
/// kernel read the new table.
fn give_identity(
    disk: &mut File,
    dev: &str,
    table: &Table,
    found: &Found,
    id: &Identity,
) -> Result<(), String> {
    oneimage_format::identity::apply(disk, table, id, &mut |uuid| {
        set_ext4_uuid(&found.node, uuid)
    })
    .map_err(|e| format!("{dev}: {e}"))?;
    disk.sync_all().map_err(|e| format!("syncing {dev}: {e}"))?;
    crate::disks::reread_partitions(disk, dev, &found.node);
    Ok(())
}

/// Sets the UUID of the ext4 filesystem on `node` with tune2fs, unless that would
/// rewrite every checksum (see `oneimage_format::identity::UuidChange`).
fn set_ext4_uuid(node: &Path, uuid: Guid) -> Result<(), String> {
    let change = File::open(node)
        .map_err(|e| e.to_string())
        .and_then(|mut f| uuid_change_of(&mut f, uuid))
        .map_err(|e| format!("{}: {e}", node.display()))?;
    match change {
        UuidChange::Done => Ok(()),
        UuidChange::Keep => {
            say(&format!(
                "first boot: the root filesystem on {} keeps its UUID: it lacks metadata_csum_seed, and changing it would rewrite every checksum",
                node.display()
            ));
            Ok(())
        }
        UuidChange::Tune2fs => crate::run::tool(
            "/sbin/tune2fs",
            &["-U", &uuid.to_string(), &node.display().to_string()],
        ),
    }
}
