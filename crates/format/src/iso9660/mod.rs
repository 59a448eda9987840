//! An ISO 9660 view of a disk image: volume descriptors at 32 KiB, directories whose
//! files are the partitions' own bytes (nothing stored twice) plus a few small files
//! stored in the view itself, and an El Torito boot catalog with a BIOS entry (GRUB's
//! no-emulation image, with a boot info table) and a UEFI entry (the ESP). The view
//! lives in sectors 16 to 31 (32 KiB to 64 KiB), which a GPT disk leaves unused.

mod eltorito;
mod read;
mod write;

pub use read::read_view;
pub use write::write_view;

use std::io;

/// ISO 9660 logical sector size.
pub const SECTOR: u64 = 2048;
const PVD: u64 = 16;
const BOOT_RECORD: u64 = 17;
const TERMINATOR: u64 = 18;
const PATH_L: u64 = 19;
const PATH_M: u64 = 20;
const CATALOG: u64 = 21;
/// The first directory sector; directories, then inline file data, follow.
const FIRST_DIR: u64 = 22;
/// First byte after the view; partitions must start at or after it.
pub const END: u64 = 32 * SECTOR;
/// Largest extent of one directory record (multi-extent files chain several).
const MAX_EXTENT: u64 = 0xFFFF_F800;

/// Where a file's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileData {
    /// A byte range of the image (a partition, a boot image): `offset` is a multiple of
    /// 2048.
    Extent {
        /// Byte offset in the image.
        offset: u64,
        /// Length in bytes.
        len: u64,
    },
    /// Small contents stored inside the view's own sectors.
    Inline(Vec<u8>),
}

/// A file of the view.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoFile {
    /// Path without version, `/`-separated d-characters; the file name has one `.`:
    /// `ESP.IMG`, `EFI/BOOT/GRUB.CFG`.
    pub path: String,
    /// Its bytes.
    pub data: FileData,
}

/// Everything the view holds.
#[derive(Debug, Clone)]
pub struct IsoView {
    /// Volume identifier (at most 32 of `A-Z0-9_`).
    pub volume_id: String,
    /// Timestamp for every date field, seconds since 1970.
    pub epoch: i64,
    /// Size of the whole image in bytes (the volume covers it).
    pub image_bytes: u64,
    /// Files, in any order (written sorted); directories are made for their paths.
    pub files: Vec<IsoFile>,
    /// A no-emulation BIOS boot image (GRUB's `i386-pc-eltorito`) as (offset, length) in
    /// bytes: the El Torito default entry. Its boot info table is filled in.
    pub bios_boot: Option<(u64, u64)>,
    /// The ESP as (offset, length) in bytes: the El Torito UEFI boot image.
    pub efi_boot: Option<(u64, u64)>,
}

/// A view that cannot be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IsoError {
    /// A name or identifier has characters ISO 9660 does not allow.
    #[error("{what} {value:?}: expected at most {max} of A-Z, 0-9, '_' (and '.' in file names)")]
    BadName {
        /// Which field.
        what: &'static str,
        /// The value given.
        value: String,
        /// Maximum length.
        max: usize,
    },
    /// A file or boot image is not sector-aligned or lies outside the image.
    #[error("{what} at byte {offset}, {len} bytes long: expected a multiple of 2048 from 64 KiB (after the view) to the image's end at {image_bytes}")]
    BadExtent {
        /// Which file or boot image.
        what: String,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u64,
        /// The image size.
        image_bytes: u64,
    },
    /// The same path was given twice.
    #[error("path {0} is given twice")]
    Duplicate(String),
    /// A directory does not fit its one sector.
    #[error("directory /{0} needs more than one sector")]
    TooManyFiles(String),
    /// Directories and inline files do not fit the view's free sectors.
    #[error("the view's directories and inline files need {needed} sectors; {free} are free")]
    ViewFull {
        /// Sectors needed.
        needed: u64,
        /// Sectors free for them.
        free: u64,
    },
    /// Writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A file of an ISO 9660 volume as read back: its extents as (byte offset, length).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IsoEntry {
    /// Path as stored, `/`-separated, without the `;1` version: `EFI/BOOT/GRUB.CFG`.
    pub path: String,
    /// Extents in order, as (byte offset, length).
    pub extents: Vec<(u64, u64)>,
}

/// An El Torito boot catalog entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BootCatalogEntry {
    /// Platform: `x86` (BIOS), `UEFI` or the number.
    pub platform: String,
    /// Marked bootable.
    pub bootable: bool,
    /// Byte offset of the boot image.
    pub offset: u64,
    /// Length in 512-byte sectors as recorded (0: to the end of the volume).
    pub sectors: u16,
}

/// What the ISO 9660 view of an image holds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IsoSummary {
    /// Volume identifier.
    pub volume_id: String,
    /// Volume size in bytes.
    pub volume_bytes: u64,
    /// Files of every directory, in directory order.
    pub files: Vec<IsoEntry>,
    /// El Torito entries, default entry first.
    pub boot_entries: Vec<BootCatalogEntry>,
}

/// A 32-bit number in both byte orders, as ISO 9660 stores most numbers.
fn both32(v: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..4].copy_from_slice(&v.to_le_bytes());
    b[4..].copy_from_slice(&v.to_be_bytes());
    b
}

fn both16(v: u16) -> [u8; 4] {
    let mut b = [0u8; 4];
    b[..2].copy_from_slice(&v.to_le_bytes());
    b[2..].copy_from_slice(&v.to_be_bytes());
    b
}

fn le32(b: &[u8], o: usize) -> u64 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes")) as u64
}

/// (year, month, day, hour, minute, second) in UTC for `epoch` (proleptic Gregorian).
fn civil(epoch: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = epoch.div_euclid(86400);
    let secs = epoch.rem_euclid(86400) as u32;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, secs / 3600, secs / 60 % 60, secs % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_known_answers() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(1_767_225_600), (2026, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400 + 3661), (2000, 2, 29, 1, 1, 1));
    }
}
