//! Images encrypted at build time (`[encryption] mode = "build-key"`): the root
//! partition is a LUKS2 header made in userspace from the image's seed
//! (`oneimage_format::luks2::make_header`), then the ext4 filesystem encrypted with its
//! volume key. No root, no device-mapper, and the same bytes from the same inputs. The
//! passphrase is public, and so is the volume key to anyone who rebuilds the image: a
//! copy's first persistent boot re-encrypts it to a key of its own.

use anyhow::{Context, Result};
use oneimage_format::encryption::{BuildKeyFacts, Settings};
use oneimage_format::luks2::{self, Made};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

/// Argon2id's cost for the public passphrase's keyslot: enough memory to be a real
/// argon2id, small enough to unlock in seconds on a small machine or an emulated one
/// (the passphrase is public: the cost protects nothing).
const KDF_MEMORY_KIB: u32 = 64 << 10;
const KDF_TIME: u32 = 4;

/// The bytes before the filesystem in the root partition: the LUKS2 headers and
/// keyslots area.
pub const DATA_OFFSET: u64 = luks2::DATA_OFFSET;

/// The header for an image of `seed` with `passphrase`, and what the initramfs is told.
pub fn header(seed: &str, passphrase: &str, discards: bool) -> Result<(Made, Settings)> {
    let made = luks2::make_header(&luks2::BuildKey {
        passphrase: passphrase.as_bytes(),
        seed,
        uuid: oneimage_format::Guid::derive(seed, "luks2 header"),
        label: oneimage_format::encryption::MAPPING,
        kdf_memory_kib: KDF_MEMORY_KIB,
        kdf_time: KDF_TIME,
    })
    .map_err(|e| anyhow::anyhow!("making the LUKS2 header: {e}"))?;
    let h = luks2::read(&made.header).map_err(|e| anyhow::anyhow!("the LUKS2 header made: {e}"))?;
    let digest = h
        .digests
        .first()
        .cloned()
        .context("the LUKS2 header made has no digest")?;
    let settings = Settings {
        policy: oneimage_format::encryption::Policy::BuildKey,
        discards,
        build_key: Some(BuildKeyFacts {
            passphrase: passphrase.to_string(),
            digest,
        }),
    };
    Ok((made, settings))
}

/// Encrypts the `fs_bytes` of filesystem that start [`DATA_OFFSET`] into the partition
/// at `part_offset` of `image`, in place, and writes the header in front of it.
pub fn encrypt_in_place(image: &Path, part_offset: u64, fs_bytes: u64, made: &Made) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    let chunk = 8 << 20;
    let mut buf = vec![0u8; chunk];
    let mut done = 0u64;
    while done < fs_bytes {
        let n = (fs_bytes - done).min(chunk as u64) as usize;
        let at = part_offset + DATA_OFFSET + done;
        f.seek(SeekFrom::Start(at))?;
        f.read_exact(&mut buf[..n])
            .with_context(|| format!("reading the root filesystem in {}", image.display()))?;
        luks2::encrypt_sectors(&made.volume_key, done / 512, &mut buf[..n]);
        f.seek(SeekFrom::Start(at))?;
        f.write_all(&buf[..n])?;
        done += n as u64;
    }
    f.seek(SeekFrom::Start(part_offset))?;
    f.write_all(&made.header)?;
    f.sync_all()?;
    Ok(())
}
