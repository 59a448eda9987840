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
    /// The image has more sectors than ISO 9660's 32-bit sector numbers can name.
    #[error("the image is {0} bytes: an ISO 9660 view covers at most 2^32 sectors of 2048 bytes (8 TiB)")]
    TooLarge(u64),
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
    use crate::testing::{Fuzz, Rng};
    use std::collections::BTreeMap;
    use std::io::Cursor;

    #[test]
    fn civil_dates_known_answers() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(1_767_225_600), (2026, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400 + 3661), (2000, 2, 29, 1, 1, 1));
    }

    /// A d-character name of 1 to `max` characters.
    fn name(rng: &mut Rng, max: usize) -> String {
        const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_";
        (0..1 + rng.index(max))
            .map(|_| *rng.pick(CHARS) as char)
            .collect()
    }

    /// A random view the writer should take: nested directories, files anywhere in a
    /// volume of up to 32 TiB (beyond ISO 9660's 8 TiB of sectors now and then), files
    /// larger than one extent, inline files, and any mix of boot images. The BIOS
    /// image lies in the first 128 KiB, the part of the image the tests hold.
    fn random_view(rng: &mut Rng) -> IsoView {
        let image_bytes = match rng.below(3) {
            0 => 128 << 10,
            1 => (128 << 10) + rng.below(1 << 40),
            _ => (128 << 10) + rng.below(1 << 45),
        };
        let extent = |rng: &mut Rng| {
            let sectors = (image_bytes - END) / SECTOR;
            let offset = END + rng.below(sectors) * SECTOR;
            let len = match rng.below(3) {
                0 => rng.below(4096),
                1 => rng.below(image_bytes - offset + 1),
                _ => (image_bytes - offset).min(MAX_EXTENT + rng.below(1 << 33)),
            };
            (offset, len)
        };
        let dirs: Vec<String> = (0..rng.below(4)).map(|_| name(rng, 8)).collect();
        let files = (0..rng.below(10))
            .map(|_| {
                let mut path = String::new();
                for _ in 0..rng.below(3) {
                    if let Some(d) = dirs.get(rng.index(dirs.len().max(1))) {
                        path.push_str(d);
                        path.push('/');
                    }
                }
                path.push_str(&name(rng, 8));
                path.push('.');
                if rng.one_in(4) {
                    path.push_str(&name(rng, 3));
                }
                let data = if rng.one_in(4) {
                    let n = rng.index(3000);
                    FileData::Inline(rng.bytes(n))
                } else {
                    let (offset, len) = extent(rng);
                    FileData::Extent { offset, len }
                };
                IsoFile { path, data }
            })
            .collect();
        IsoView {
            volume_id: name(rng, 32),
            epoch: rng.below(1 << 33) as i64 - (1 << 31),
            image_bytes,
            files,
            bios_boot: rng.one_in(2).then(|| (64 << 10, 512 + rng.below(32 << 10))),
            efi_boot: rng.one_in(2).then(|| extent(rng)),
        }
    }

    /// Property: whatever view the writer takes reads back as written (files, their
    /// extents, inline bytes, volume size and boot entries); what it refuses, it refuses
    /// with an error, not a panic, and without writing.
    #[test]
    fn fuzz_iso_round_trip() {
        let mut written = 0u64;
        let blank = vec![0u8; 128 << 10];
        let report = Fuzz::new("fuzz_iso_round_trip").run(
            |m, _| {
                // The view is rebuilt from these bytes (the case's seed) in the check.
                m.rng.bytes(8)
            },
            |seed| {
                let mut rng = Rng::new(u64::from_le_bytes(seed.try_into().unwrap()));
                let v = random_view(&mut rng);
                let mut img = Cursor::new(blank.clone());
                if let Err(e) = write_view(&mut img, &v) {
                    assert!(!matches!(e, IsoError::Io(_)), "{e}");
                    assert!(*img.get_ref() == blank, "refused after writing");
                    return false;
                }
                written += 1;
                let s = read_view(&mut img).unwrap().expect("a view");
                assert_eq!(s.volume_id, v.volume_id);
                assert_eq!(s.volume_bytes, v.image_bytes.div_ceil(SECTOR) * SECTOR);
                let mut want = BTreeMap::new();
                for f in &v.files {
                    let ext = match &f.data {
                        FileData::Extent { offset, len } => {
                            let mut parts = vec![];
                            let (mut o, mut left) = (*offset, *len);
                            loop {
                                let part = left.min(MAX_EXTENT);
                                parts.push((o, part));
                                if part == left {
                                    break parts;
                                }
                                o += part;
                                left -= part;
                            }
                        }
                        FileData::Inline(b) => {
                            let got = s.files.iter().find(|g| g.path == f.path).unwrap();
                            let (o, l) = got.extents[0];
                            assert_eq!(&img.get_ref()[o as usize..][..l as usize], &b[..]);
                            vec![(o, b.len() as u64)]
                        }
                    };
                    want.insert(f.path.clone(), ext);
                }
                let got: BTreeMap<String, Vec<(u64, u64)>> = s
                    .files
                    .iter()
                    .map(|f| (f.path.clone(), f.extents.clone()))
                    .collect();
                assert_eq!(got, want);
                assert_eq!(got.len(), s.files.len(), "a file listed twice");
                let mut boot = vec![];
                if let Some((o, _)) = v.bios_boot {
                    boot.push(("x86", o, 4));
                }
                if let Some((o, l)) = v.efi_boot {
                    boot.push(("UEFI", o, u16::try_from(l / 512).unwrap_or(0)));
                }
                let got: Vec<(&str, u64, u16)> = s
                    .boot_entries
                    .iter()
                    .map(|e| (e.platform.as_str(), e.offset, e.sectors))
                    .collect();
                assert_eq!(got, boot);
                true
            },
        );
        assert!(written > 2000 && report.accepted == written, "{report:?}");
    }

    /// A view of every kind of entry, as the builder writes one, in a 128 KiB image.
    fn sample_image() -> Vec<u8> {
        let mut img = Cursor::new(vec![0u8; 128 << 10]);
        let v = IsoView {
            volume_id: "ONEIMAGE_DEMO".into(),
            epoch: 1_767_225_600,
            image_bytes: 128 << 10,
            files: vec![
                IsoFile {
                    path: "ESP.IMG".into(),
                    data: FileData::Extent {
                        offset: 96 << 10,
                        len: 32 << 10,
                    },
                },
                IsoFile {
                    path: "ROOT.IMG".into(),
                    data: FileData::Extent {
                        offset: 72 << 10,
                        len: 24 << 10,
                    },
                },
                IsoFile {
                    path: "EFI/BOOT/GRUB.CFG".into(),
                    data: FileData::Inline(b"search --set=root --file /ONEIMAGE\n".to_vec()),
                },
                IsoFile {
                    path: "EFI/BOOT/BOOTX64.EFI".into(),
                    data: FileData::Extent {
                        offset: 100 << 10,
                        len: 4 << 10,
                    },
                },
                IsoFile {
                    path: "BOOT/GRUB/I386_PC/CORE.IMG".into(),
                    data: FileData::Extent {
                        offset: 64 << 10,
                        len: 4 << 10,
                    },
                },
            ],
            bios_boot: Some((64 << 10, 4 << 10)),
            efi_boot: Some((96 << 10, 32 << 10)),
        };
        write_view(&mut img, &v).unwrap();
        img.into_inner()
    }

    /// Mutated views (descriptors, directory records, the boot record and catalog, the
    /// image cut short) read without a panic or a read outside the image, in bounded
    /// time and with a bounded result.
    #[test]
    fn fuzz_iso_read() {
        let base = sample_image();
        let sector = |n: u64| (n * SECTOR) as usize;
        let hot = [
            sector(PVD) + 80..sector(PVD) + 190,
            sector(BOOT_RECORD)..sector(BOOT_RECORD) + 0x50,
            sector(CATALOG)..sector(CATALOG) + 128,
            sector(FIRST_DIR)..sector(FIRST_DIR + 6),
        ];
        let report = Fuzz::new("fuzz_iso_read").run(
            |m, _| m.hot(&hot).mutate(&base),
            |input| {
                let s = read_view(&mut Cursor::new(input)).expect("reads stay inside the image");
                let Some(s) = s else { return false };
                assert!(s.files.len() <= 4096, "{} files", s.files.len());
                assert!(s.files.iter().all(|f| f.path.len() <= 8 * 256 * 3));
                assert!(s.boot_entries.len() <= 64);
                true
            },
        );
        assert!(
            report.accepted > 1000 && report.accepted < report.cases,
            "{report:?}"
        );
    }
}
