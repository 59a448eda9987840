//! The first boot of a copy: one ordered sequence of steps, each recorded on the disk
//! when done (`oneimage_format::firstboot`), so that a boot cut short at any point (power
//! loss) is followed by one that goes on where it stopped.
//!
//! The steps, in order: a new identity for this copy (disk and partition GUIDs, the root
//! filesystem's UUID, the ESP's volume id), then, for a compressed root, its expansion
//! into a read-write ext4 root (`crate::expand`), then, when the image asks for it, the
//! root's encryption in place (`crate::crypt`), then growth of the root partition to
//! the disk, then, once the root is mounted, growth of its filesystem. Every step sets values
//! decided before it starts (the identity is derived from a seed stored in the record),
//! so a step redone after a power cut writes the same bytes again. A step that fails
//! stops the sequence for this boot; the next boot tries again.

use crate::cmdline::Grow;
use crate::crypt::Passphrase;
use crate::disks::Found;
use crate::log::say;
use oneimage_format::encryption::{Outcome as Encrypted, Policy, Settings};
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

/// What the boot does after the steps that come before the root is mounted.
pub enum Outcome {
    /// Check and mount `root` read-write (the root found, or the root a compressed one
    /// was expanded into), then hand `pending` to [`after_mount`].
    Persistent {
        /// The partition to mount as `/` (to unlock first when it is LUKS2).
        root: Found,
        /// What is left of the sequence.
        pending: Option<Box<Pending>>,
        /// The passphrase this boot's encryption step was given, to unlock the root
        /// with.
        passphrase: Option<Passphrase>,
    },
    /// Boot live from the root found: a compressed root that could not (yet) be
    /// expanded. Why has been said.
    Live,
}

/// Runs the steps that come before the root is mounted (identity, expansion of a
/// compressed root, encryption, partition growth) on the writable disk holding `found`,
/// whose filesystem is the compressed `compressed` one or ext4 (`None`), for an image
/// whose encryption settings are `encryption`. A failed step is reported and leaves the
/// rest for the next boot.
pub fn before_mount(
    found: &Found,
    compressed: Option<&str>,
    grow: Grow,
    encryption: &Settings,
) -> Outcome {
    let fallback = || match compressed {
        Some(_) => Outcome::Live,
        None => Outcome::Persistent {
            root: found.clone(),
            pending: None,
            passphrase: None,
        },
    };
    match steps_before_mount(found, compressed, grow, encryption) {
        Ok(o) => o,
        Err(e) => {
            say(&format!("first boot: {e}"));
            if compressed.is_some() {
                say("first boot: the compressed root was not expanded; booting live, and the next boot tries again");
            }
            fallback()
        }
    }
}

fn steps_before_mount(
    found: &Found,
    compressed: Option<&str>,
    grow: Grow,
    encryption: &Settings,
) -> Result<Outcome, String> {
    let started = Instant::now();
    let dev = format!("/dev/{}", found.disk);
    let mut disk = crate::disks::open_rw(&dev)?;
    let table =
        read_table(&mut disk).map_err(|e| format!("reading the partition table of {dev}: {e}"))?;
    let found_record = record::read(&mut disk)
        .map_err(|e| format!("reading the first-boot record on {dev}: {e}"))?;
    let persistent = |root: &Found, pending: Option<Pending>, passphrase| Outcome::Persistent {
        root: root.clone(),
        pending: pending.map(Box::new),
        passphrase,
    };
    let state = match found_record {
        record::Found::Unusable(why) => {
            return Err(format!(
                "the record on {dev} cannot be used ({why}); no first-boot step is run"
            ));
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
    let resumed = state.as_ref().is_some_and(|s| !s.all_done());
    // What the expanded root needs, once the room for it has been checked in this boot.
    let mut needed: Option<u64> = None;
    let mut state = match state {
        Some(s) if s.all_done() => {
            if s.expand_into == 0 {
                say(&format!(
                    "first boot: done on an earlier boot ({})",
                    done_list(&s)
                ));
                return Ok(persistent(found, None, None));
            }
            say(&format!(
                "first boot: done on an earlier boot; the root is the expanded partition {}",
                s.expand_into
            ));
            return Ok(persistent(&expanded(found, s.expand_into)?, None, None));
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
            let mut s = State::new(table.disk_guid, root.guid, found.number, new_seed()?)
                .encrypting(encryption.policy);
            if let Some(kind) = compressed {
                // Before anything is written: a disk too small keeps the image as it is.
                let number = crate::expand::new_number(&table);
                match room_to_expand(found, &table, kind, number, grow, encryption.policy)? {
                    Some(n) => needed = Some(n),
                    None => return Ok(Outcome::Live),
                }
                s = s.expanding_into(number);
            }
            record_step(&mut disk, &dev, &s)?;
            let steps: Vec<&str> = Step::ALL
                .iter()
                .filter(|st| s.applies_step(**st))
                .map(|st| st.name())
                .collect();
            say(&format!(
                "first boot: a new copy on {dev}; steps: {}",
                steps.join(", ")
            ));
            s
        }
    };
    if let Some(kind) = compressed {
        if resumed && !state.is_done(Step::Expand) {
            // A copy `install` wrote (identity done), or a boot cut short: the room is
            // checked again before the expansion writes anything.
            let number = match state.expand_into {
                0 => crate::expand::new_number(&table),
                n => n,
            };
            match room_to_expand(found, &table, kind, number, grow, encryption.policy)? {
                Some(n) => needed = Some(n),
                None => return Ok(Outcome::Live),
            }
            if state.expand_into == 0 {
                state = state.expanding_into(number);
                record_step(&mut disk, &dev, &state)?;
            }
        }
    }
    let mut pending = Pending {
        dev: dev.clone(),
        state: state.clone(),
        started,
        worked: true,
    };

    if !state.is_done(Step::Identity) {
        let id = state.identity();
        // A root that is LUKS2 already (a copy cut short after its encryption began)
        // keeps its filesystem's UUID: it cannot be reached before the unlock.
        let plain_ext4 = compressed.is_none() && crate::crypt::header(&found.node)?.is_none();
        give_identity(&mut disk, &dev, &table, found, &id, plain_ext4).map_err(|e| {
            format!("the new identity failed: {e}; the remaining steps wait for the next boot")
        })?;
        state = state.with_done(Step::Identity);
        record_step(&mut disk, &dev, &state)?;
        say(&format!(
            "first boot: step identity done: disk {}, root filesystem {}, ESP volume id {}",
            id.disk,
            id.root_fs_uuid,
            oneimage_format::fat::volume_id_text(id.esp_volume_id)
        ));
    }

    let mut root = found.clone();
    let mut passphrase = None;
    if state.applies_step(Step::Expand) {
        let number = state.expand_into;
        if state.is_done(Step::Expand) {
            root = expanded(found, number)?;
        } else {
            let kind = compressed.ok_or_else(|| {
                format!("the record says the root expands into partition {number}, but the root found is not compressed")
            })?;
            drop(disk);
            let id = state.identity();
            let needed = match needed {
                Some(n) => n,
                None => crate::expand::needed_bytes(&found.node, kind)?,
            };
            // With encryption asked for, the expansion goes straight into a new LUKS2
            // volume: no plaintext is written, nothing is encrypted in place. The
            // passphrase is asked first (again after a cut: the expansion is redone).
            let choice = if state.applies_step(Step::Encrypt) && !state.is_done(Step::Encrypt) {
                match state.encryption {
                    Policy::Offer | Policy::Require => {
                        Some(crate::crypt::ask_new(state.encryption, &found.node)?)
                    }
                    Policy::Off | Policy::BuildKey => None,
                }
            } else {
                None
            };
            let into_luks = match &choice {
                Some(crate::crypt::Choice::Encrypt(p)) => Some(crate::expand::IntoLuks {
                    passphrase: p,
                    uuid: id.luks_uuid,
                }),
                _ => None,
            };
            root = crate::expand::expand(
                found,
                kind,
                needed,
                number,
                id.partition(number),
                id.root_fs_uuid,
                grow,
                into_luks,
            )
            .map_err(|e| format!("expanding the {kind} root: {e}"))?;
            disk = crate::disks::open_rw(&dev)?;
            state = state.with_done(Step::Expand);
            let encrypted = match choice {
                Some(crate::crypt::Choice::Encrypt(p)) => {
                    state = state.with_encryption_done(Encrypted::Encrypted);
                    passphrase = Some(p);
                    " inside LUKS2 (the encrypt step with it)"
                }
                Some(crate::crypt::Choice::Decline) => {
                    state = state.with_encryption_done(Encrypted::Declined);
                    " (encryption declined)"
                }
                None => "",
            };
            record_step(&mut disk, &dev, &state)?;
            say(&format!(
                "first boot: step expand done: the root is now {} (ext4, read-write){encrypted}; the {kind} root stays as the factory copy for the live entry",
                root.node.display()
            ));
        }
    }

    if state.applies_step(Step::Encrypt) && !state.is_done(Step::Encrypt) {
        drop(disk);
        let (outcome, given) = encrypt_step(
            &root,
            state.encryption,
            encryption,
            state.identity().luks_uuid,
        )
        .map_err(|e| format!("encrypting the root: {e}"))?;
        passphrase = given;
        disk = crate::disks::open_rw(&dev)?;
        state = state.with_encryption_done(outcome);
        record_step(&mut disk, &dev, &state)?;
        say(&format!(
            "first boot: step encrypt done: {}",
            match outcome {
                Encrypted::Declined =>
                    "declined; the root stays unencrypted and this copy is not asked again",
                _ => "the root is LUKS2",
            }
        ));
    }

    if !state.is_done(Step::GrowPartition) {
        if grow == Grow::Off {
            say("first boot: growth is off for this boot (oneimage.grow=off)");
            pending.state = state;
            return Ok(persistent(&root, Some(pending), passphrase));
        }
        drop(disk);
        if let Err(e) = crate::grow::grow_partition(&root, grow) {
            say(&format!(
                "first boot: could not grow the root partition: {e}; the remaining steps wait for the next boot"
            ));
            pending.state = state;
            pending.worked = false;
            return Ok(persistent(&root, Some(pending), passphrase));
        }
        let mut disk = crate::disks::open_rw(&dev)?;
        state = state.with_done(Step::GrowPartition);
        record_step(&mut disk, &dev, &state)?;
        say("first boot: step grow-partition done");
    }
    pending.state = state;
    Ok(persistent(&root, Some(pending), passphrase))
}

/// The encryption step on `root` under `policy`: asks, then encrypts; or goes on with
/// an encryption a power cut interrupted; or finds it finished (the cut came after
/// cryptsetup, before the record). Returns how it ended, and the passphrase when this
/// boot was given it.
fn encrypt_step(
    root: &Found,
    policy: Policy,
    settings: &Settings,
    luks_uuid: Guid,
) -> Result<(Encrypted, Option<Passphrase>), String> {
    if policy == Policy::BuildKey {
        let facts = settings.build_key.as_ref().ok_or(
            "the image was encrypted when it was built, but its initramfs does not say with what (its build-passphrase and build-digest)",
        )?;
        let started = Instant::now();
        let p = crate::crypt::rekey(&root.node, facts, luks_uuid)?;
        say(&format!(
            "first boot: {} has its own passphrase and volume key ({:.1} s)",
            root.node.display(),
            started.elapsed().as_secs_f64()
        ));
        return Ok((Encrypted::Encrypted, p));
    }
    match crate::crypt::header(&root.node)? {
        None => match crate::crypt::ask_new(policy, &root.node)? {
            crate::crypt::Choice::Decline => Ok((Encrypted::Declined, None)),
            crate::crypt::Choice::Encrypt(p) => {
                let started = Instant::now();
                crate::crypt::encrypt(&root.node, &p, luks_uuid)?;
                say(&format!(
                    "first boot: {} encrypted in {:.1} s",
                    root.node.display(),
                    started.elapsed().as_secs_f64()
                ));
                Ok((Encrypted::Encrypted, Some(p)))
            }
        },
        Some(h) if h.reencrypt_in_progress() => {
            let started = Instant::now();
            let p = crate::crypt::resume(&root.node)?;
            say(&format!(
                "first boot: the encryption of {} finished in {:.1} s",
                root.node.display(),
                started.elapsed().as_secs_f64()
            ));
            Ok((Encrypted::Encrypted, Some(p)))
        }
        Some(_) => Ok((Encrypted::Encrypted, None)),
    }
}

/// The bytes the `kind` root's expansion into partition `number` needs, when the disk
/// of `found` has room for it; `None`, said on the console, when it has not.
fn room_to_expand(
    found: &Found,
    table: &Table,
    kind: &str,
    number: u32,
    grow: Grow,
    policy: Policy,
) -> Result<Option<u64>, String> {
    let dev = format!("/dev/{}", found.disk);
    // An expansion into LUKS2 puts its header in front of the filesystem.
    let header = match policy {
        Policy::Offer | Policy::Require => oneimage_format::luks2::DATA_OFFSET,
        Policy::Off | Policy::BuildKey => 0,
    };
    let needed = crate::expand::needed_bytes(&found.node, kind)? + header;
    let ss = table.sector_size;
    let disk_last = (crate::grow::sysfs_bytes(&found.disk)? / ss).saturating_sub(1);
    let any = Guid([0; 16]);
    match crate::expand::layout(table, disk_last, number, any, any, needed, grow) {
        Ok(_) => Ok(Some(needed)),
        Err(why) => {
            say(&format!(
                "first boot: the {kind} root cannot become a read-write root here: {why}. Booting live: nothing is written to {dev}. Write the image to a larger disk for a persistent system."
            ));
            // GRUB's persistent entry marked the ESP; the disk goes back to what it was.
            crate::bootmark::undo(found);
            Ok(None)
        }
    }
}

/// The expanded root, partition `number` of `found`'s disk.
fn expanded(found: &Found, number: u32) -> Result<Found, String> {
    let node = crate::disks::partition_node(&found.disk, number).ok_or_else(|| {
        format!(
            "the record says the root was expanded into partition {number} of /dev/{}, which the kernel does not show",
            found.disk
        )
    })?;
    Ok(Found {
        disk: found.disk.clone(),
        number,
        node,
        optical: false,
    })
}

/// Gives the filesystem inside an unlocked root (`root`, the open mapping) the copy's
/// own UUID, when its first boot is under way and the identity step could not reach it
/// (a root encrypted when the image was built is LUKS2 before its first boot). Nothing
/// to do when it has it already; redone harmlessly after a power cut.
pub fn settle_unlocked_uuid(p: &Pending, root: &Found) -> Result<(), String> {
    if !p.state.is_done(Step::Identity) {
        return Ok(());
    }
    let uuid = p.state.identity().root_fs_uuid;
    if set_ext4_uuid(&root.node, uuid)? {
        say(&format!(
            "first boot: the filesystem in {} has this copy's UUID {uuid}",
            root.node.display()
        ));
    }
    Ok(())
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
    root_is_ext4: bool,
) -> Result<(), String> {
    // A compressed root has no UUID to change: its expansion gets the new one.
    oneimage_format::identity::apply(disk, table, id, &mut |uuid| {
        if root_is_ext4 {
            set_ext4_uuid(&found.node, uuid).map(|_| ())
        } else {
            Ok(())
        }
    })
    .map_err(|e| format!("{dev}: {e}"))?;
    disk.sync_all().map_err(|e| format!("syncing {dev}: {e}"))?;
    crate::disks::reread_partitions(disk, dev, &found.node);
    Ok(())
}

/// Sets the UUID of the ext4 filesystem on `node` with tune2fs, unless that would
/// rewrite every checksum (see `oneimage_format::identity::UuidChange`); says whether
/// it was changed.
fn set_ext4_uuid(node: &Path, uuid: Guid) -> Result<bool, String> {
    let change = File::open(node)
        .map_err(|e| e.to_string())
        .and_then(|mut f| uuid_change_of(&mut f, uuid))
        .map_err(|e| format!("{}: {e}", node.display()))?;
    match change {
        UuidChange::Done => Ok(false),
        UuidChange::Keep => {
            say(&format!(
                "first boot: the root filesystem on {} keeps its UUID: it lacks metadata_csum_seed, and changing it would rewrite every checksum",
                node.display()
            ));
            Ok(false)
        }
        UuidChange::Tune2fs => crate::run::tool(
            "/sbin/tune2fs",
            &["-U", &uuid.to_string(), &node.display().to_string()],
        )
        .map(|()| true),
    }
}
