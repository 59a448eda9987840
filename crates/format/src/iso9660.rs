//! An ISO 9660 view of a disk image: volume descriptors at 32 KiB, a root directory whose
//! files are the partitions' own bytes (nothing stored twice), and an El Torito boot
//! catalog whose UEFI entry points at the ESP. The view lives in sectors 16 to 22
//! (32 KiB to 46 KiB), which a GPT disk leaves unused before its first partition.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// ISO 9660 logical sector size.
pub const SECTOR: u64 = 2048;
const PVD: u64 = 16;
const BOOT_RECORD: u64 = 17;
const TERMINATOR: u64 = 18;
const PATH_L: u64 = 19;
const PATH_M: u64 = 20;
const ROOT_DIR: u64 = 21;
const CATALOG: u64 = 22;
/// First byte after the view; partitions must start at or after it.
pub const END: u64 = (CATALOG + 1) * SECTOR;
/// Largest extent of one directory record (multi-extent files chain several).
const MAX_EXTENT: u64 = 0xFFFF_F800;

/// A file of the view: a byte range of the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoFile {
    /// Name without version, d-characters: `ESP.IMG`.
    pub name: String,
    /// Byte offset in the image (a multiple of 2048).
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
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
    /// Files, in any order (written sorted).
    pub files: Vec<IsoFile>,
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
    /// A file is not sector-aligned or lies outside the image.
    #[error("file {0} is not 2048-byte aligned or lies outside the image")]
    BadExtent(String),
    /// The root directory does not fit its one sector.
    #[error("the root directory needs more than one sector")]
    TooManyFiles,
    /// Writing failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

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

fn dir_date(epoch: i64) -> [u8; 7] {
    let (y, mo, d, h, mi, s) = civil(epoch);
    [
        (y - 1900).clamp(0, 255) as u8,
        mo as u8,
        d as u8,
        h as u8,
        mi as u8,
        s as u8,
        0,
    ]
}

fn volume_date(epoch: i64) -> [u8; 17] {
    let (y, mo, d, h, mi, s) = civil(epoch);
    let text = format!("{:04}{mo:02}{d:02}{h:02}{mi:02}{s:02}00", y.clamp(0, 9999));
    let mut b = [0u8; 17];
    b[..16].copy_from_slice(text.as_bytes());
    b
}

fn check_name(what: &'static str, v: &str, max: usize, dot: bool) -> Result<(), IsoError> {
    let ok = !v.is_empty()
        && v.len() <= max
        && v.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || (dot && c == '.'));
    if ok {
        Ok(())
    } else {
        Err(IsoError::BadName {
            what,
            value: v.to_string(),
            max,
        })
    }
}

fn dir_record(out: &mut Vec<u8>, name: &[u8], lba: u64, len: u64, flags: u8, epoch: i64) {
    let n = name.len();
    let rec = 33 + n + (n + 1) % 2;
    let start = out.len();
    out.push(rec as u8);
    out.push(0);
    out.extend_from_slice(&both32(lba as u32));
    out.extend_from_slice(&both32(len as u32));
    out.extend_from_slice(&dir_date(epoch));
    out.push(flags);
    out.push(0);
    out.push(0);
    out.extend_from_slice(&both16(1));
    out.push(n as u8);
    out.extend_from_slice(name);
    out.resize(start + rec, 0);
}

fn padded(text: &str, len: usize) -> Vec<u8> {
    let mut b = text.as_bytes().to_vec();
    b.resize(len, b' ');
    b
}

/// Writes the view into `img` (the image file), touching only sectors 16 to 22.
pub fn write_view<W: Write + Seek>(img: &mut W, v: &IsoView) -> Result<(), IsoError> {
    check_name("volume id", &v.volume_id, 32, false)?;
    let mut files = v.files.clone();
    files.sort_by(|a, b| a.name.cmp(&b.name));
    for f in &files {
        check_name("file name", &f.name, 30, true)?;
        if f.offset % SECTOR != 0 || f.offset < END || f.offset + f.len > v.image_bytes {
            return Err(IsoError::BadExtent(f.name.clone()));
        }
    }
    let volume_sectors = v.image_bytes.div_ceil(SECTOR) as u32;

    let mut root = Vec::new();
    dir_record(&mut root, &[0], ROOT_DIR, SECTOR, 2, v.epoch);
    dir_record(&mut root, &[1], ROOT_DIR, SECTOR, 2, v.epoch);
    for f in &files {
        let name = format!("{};1", f.name);
        let mut off = f.offset;
        let mut left = f.len;
        loop {
            let part = left.min(MAX_EXTENT);
            let last = part == left;
            dir_record(
                &mut root,
                name.as_bytes(),
                off / SECTOR,
                part,
                if last { 0 } else { 0x80 },
                v.epoch,
            );
            if last {
                break;
            }
            off += part;
            left -= part;
        }
    }
    if root.len() > SECTOR as usize {
        return Err(IsoError::TooManyFiles);
    }
    root.resize(SECTOR as usize, 0);

    let mut pvd = vec![0u8; SECTOR as usize];
    pvd[0] = 1;
    pvd[1..6].copy_from_slice(b"CD001");
    pvd[6] = 1;
    pvd[8..40].copy_from_slice(&padded("", 32));
    pvd[40..72].copy_from_slice(&padded(&v.volume_id, 32));
    pvd[80..88].copy_from_slice(&both32(volume_sectors));
    pvd[120..124].copy_from_slice(&both16(1));
    pvd[124..128].copy_from_slice(&both16(1));
    pvd[128..132].copy_from_slice(&both16(SECTOR as u16));
    pvd[132..140].copy_from_slice(&both32(10));
    pvd[140..144].copy_from_slice(&(PATH_L as u32).to_le_bytes());
    pvd[148..152].copy_from_slice(&(PATH_M as u32).to_be_bytes());
    let mut root_rec = Vec::new();
    dir_record(&mut root_rec, &[0], ROOT_DIR, SECTOR, 2, v.epoch);
    pvd[156..190].copy_from_slice(&root_rec);
    pvd[190..318].copy_from_slice(&padded("", 128));
    pvd[318..446].copy_from_slice(&padded("", 128));
    pvd[446..574].copy_from_slice(&padded("", 128));
    pvd[574..702].copy_from_slice(&padded("ONEIMAGE", 128));
    pvd[702..813].copy_from_slice(&padded("", 111));
    let date = volume_date(v.epoch);
    pvd[813..830].copy_from_slice(&date);
    pvd[830..847].copy_from_slice(&date);
    let mut never = [b'0'; 17];
    never[16] = 0;
    pvd[847..864].copy_from_slice(&never);
    pvd[864..881].copy_from_slice(&never);
    pvd[881] = 1;

    let mut br = vec![0u8; SECTOR as usize];
    br[0] = 0;
    br[1..6].copy_from_slice(b"CD001");
    br[6] = 1;
    br[7..30].copy_from_slice(b"EL TORITO SPECIFICATION");
    br[0x47..0x4B].copy_from_slice(&(CATALOG as u32).to_le_bytes());

    let mut term = vec![0u8; SECTOR as usize];
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;

    let path = |big: bool| {
        let mut p = vec![0u8; SECTOR as usize];
        p[0] = 1;
        let lba = ROOT_DIR as u32;
        p[2..6].copy_from_slice(&if big {
            lba.to_be_bytes()
        } else {
            lba.to_le_bytes()
        });
        p[6..8].copy_from_slice(&if big {
            1u16.to_be_bytes()
        } else {
            1u16.to_le_bytes()
        });
        p
    };

    let mut cat = vec![0u8; SECTOR as usize];
    if let Some((off, len)) = v.efi_boot {
        if off % SECTOR != 0 || off + len > v.image_bytes {
            return Err(IsoError::BadExtent("EFI boot image".into()));
        }
        cat[0] = 1;
        cat[1] = 0xEF;
        cat[4..12].copy_from_slice(b"ONEIMAGE");
        cat[30] = 0x55;
        cat[31] = 0xAA;
        let sum = cat[..32].chunks(2).fold(0u16, |s, w| {
            s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
        });
        cat[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
        let e = &mut cat[32..64];
        e[0] = 0x88;
        // Sector count in 512-byte units; 0 when it does not fit 16 bits, which UEFI
        // firmware reads as "up to the end of the volume" (the FAT inside knows its size).
        let count = u16::try_from(len / 512).unwrap_or(0);
        e[6..8].copy_from_slice(&count.to_le_bytes());
        e[8..12].copy_from_slice(&((off / SECTOR) as u32).to_le_bytes());
    }

    for (lba, data) in [
        (PVD, &pvd),
        (BOOT_RECORD, &br),
        (TERMINATOR, &term),
        (PATH_L, &path(false)),
        (PATH_M, &path(true)),
        (ROOT_DIR, &root),
        (CATALOG, &cat),
    ] {
        img.seek(SeekFrom::Start(lba * SECTOR))?;
        img.write_all(data)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn civil_dates_known_answers() {
        assert_eq!(civil(0), (1970, 1, 1, 0, 0, 0));
        assert_eq!(civil(1_767_225_600), (2026, 1, 1, 0, 0, 0));
        assert_eq!(civil(951_782_400 + 3661), (2000, 2, 29, 1, 1, 1));
    }

    #[test]
    fn descriptors_and_catalog_checksum() {
        let mut img = Cursor::new(vec![0u8; 8 << 20]);
        let v = IsoView {
            volume_id: "DEMO".into(),
            epoch: 0,
            image_bytes: 8 << 20,
            files: vec![IsoFile {
                name: "ESP.IMG".into(),
                offset: 1 << 20,
                len: 1 << 20,
            }],
            efi_boot: Some((1 << 20, 1 << 20)),
        };
        write_view(&mut img, &v).unwrap();
        let b = img.into_inner();
        assert_eq!(&b[32769..32774], b"CD001");
        assert_eq!(&b[32768 + 40..32768 + 44], b"DEMO");
        let cat = &b[(CATALOG * SECTOR) as usize..][..32];
        let sum = cat.chunks(2).fold(0u16, |s, w| {
            s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
        });
        assert_eq!(sum, 0);
        // Nothing outside sectors 16..=22 was touched.
        assert!(b[..32768].iter().all(|&x| x == 0));
        assert!(b[END as usize..].iter().all(|&x| x == 0));
    }

    #[test]
    fn refuses_bad_names() {
        let mut img = Cursor::new(vec![0u8; 8 << 20]);
        let v = IsoView {
            volume_id: "lower".into(),
            epoch: 0,
            image_bytes: 8 << 20,
            files: vec![],
            efi_boot: None,
        };
        assert!(write_view(&mut img, &v).is_err());
    }
}

/// A file of an ISO 9660 volume as read back: its extents as (byte offset, length).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct IsoEntry {
    /// Name as stored, without the `;1` version.
    pub name: String,
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
    /// Files of the root directory.
    pub files: Vec<IsoEntry>,
    /// El Torito entries, default entry first.
    pub boot_entries: Vec<BootCatalogEntry>,
}

fn le32(b: &[u8], o: usize) -> u64 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes")) as u64
}

fn read_sector<R: Read + Seek>(r: &mut R, lba: u64) -> io::Result<Vec<u8>> {
    let mut b = vec![0u8; SECTOR as usize];
    r.seek(SeekFrom::Start(lba * SECTOR))?;
    r.read_exact(&mut b)?;
    Ok(b)
}

/// Reads the ISO 9660 view of `r`, if it has one (any ISO 9660 volume, not only ours).
pub fn read_view<R: Read + Seek>(r: &mut R) -> io::Result<Option<IsoSummary>> {
    let len = r.seek(SeekFrom::End(0))?;
    if len < END {
        return Ok(None);
    }
    let pvd = read_sector(r, PVD)?;
    if pvd[0] != 1 || &pvd[1..6] != b"CD001" {
        return Ok(None);
    }
    let volume_id = String::from_utf8_lossy(&pvd[40..72]).trim_end().to_string();
    let volume_bytes = le32(&pvd, 80) * u64::from(u16::from_le_bytes([pvd[128], pvd[129]]));
    let (root_lba, root_len) = (le32(&pvd, 156 + 2), le32(&pvd, 156 + 10));
    let mut files: Vec<IsoEntry> = Vec::new();
    let mut continuing = false;
    for s in 0..root_len.div_ceil(SECTOR).min(64) {
        let sec = read_sector(r, root_lba + s)?;
        let mut o = 0usize;
        while o < sec.len() && sec[o] != 0 {
            let rec = sec[o] as usize;
            if o + rec > sec.len() || rec < 34 {
                break;
            }
            let (lba, size, flags, nlen) = (
                le32(&sec, o + 2),
                le32(&sec, o + 10),
                sec[o + 25],
                sec[o + 32] as usize,
            );
            let name = &sec[o + 33..(o + 33 + nlen).min(o + rec)];
            if !(nlen == 1 && name[0] <= 1) && flags & 2 == 0 {
                let name = String::from_utf8_lossy(name);
                let name = name.split(';').next().unwrap_or_default().to_string();
                match files.last_mut() {
                    Some(f) if continuing && f.name == name => f.extents.push((lba * SECTOR, size)),
                    _ => files.push(IsoEntry {
                        name,
                        extents: vec![(lba * SECTOR, size)],
                    }),
                }
                continuing = flags & 0x80 != 0;
            }
            o += rec;
        }
    }
    let mut boot_entries = Vec::new();
    let br = read_sector(r, BOOT_RECORD)?;
    if br[0] == 0 && &br[1..6] == b"CD001" && br[7..30] == *b"EL TORITO SPECIFICATION" {
        let cat = read_sector(r, le32(&br, 0x47))?;
        if cat[0] == 1 && cat[30] == 0x55 && cat[31] == 0xAA {
            let name = |p: u8| match p {
                0 => "x86".to_string(),
                0xEF => "UEFI".to_string(),
                n => format!("{n:#04x}"),
            };
            let entry = |e: &[u8], platform: u8| BootCatalogEntry {
                platform: name(platform),
                bootable: e[0] == 0x88,
                offset: le32(e, 8) * SECTOR,
                sectors: u16::from_le_bytes([e[6], e[7]]),
            };
            boot_entries.push(entry(&cat[32..64], cat[1]));
            let mut o = 64;
            while o + 32 <= cat.len() && matches!(cat[o], 0x90 | 0x91) {
                let (platform, count, last) = (
                    cat[o + 1],
                    u16::from_le_bytes([cat[o + 2], cat[o + 3]]),
                    cat[o] == 0x91,
                );
                o += 32;
                for _ in 0..count {
                    if o + 32 > cat.len() {
                        break;
                    }
                    boot_entries.push(entry(&cat[o..o + 32], platform));
                    o += 32;
                }
                if last {
                    break;
                }
            }
        }
    }
    Ok(Some(IsoSummary {
        volume_id,
        volume_bytes,
        files,
        boot_entries,
    }))
}

#[cfg(test)]
mod read_tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn reads_back_what_was_written() {
        let mut img = Cursor::new(vec![0u8; 8 << 20]);
        let v = IsoView {
            volume_id: "DEMO".into(),
            epoch: 0,
            image_bytes: 8 << 20,
            files: vec![
                IsoFile {
                    name: "ROOT.IMG".into(),
                    offset: 2 << 20,
                    len: 6 << 20,
                },
                IsoFile {
                    name: "ESP.IMG".into(),
                    offset: 1 << 20,
                    len: 1 << 20,
                },
            ],
            efi_boot: Some((1 << 20, 1 << 20)),
        };
        write_view(&mut img, &v).unwrap();
        let s = read_view(&mut img).unwrap().unwrap();
        assert_eq!(s.volume_id, "DEMO");
        assert_eq!(s.volume_bytes, 8 << 20);
        assert_eq!(s.files.len(), 2);
        assert_eq!(s.files[0].name, "ESP.IMG");
        assert_eq!(s.files[0].extents, vec![(1 << 20, 1 << 20)]);
        assert_eq!(s.boot_entries.len(), 1);
        assert_eq!(s.boot_entries[0].platform, "UEFI");
        assert_eq!(s.boot_entries[0].offset, 1 << 20);
        assert_eq!(s.boot_entries[0].sectors, 2048);
        assert_eq!(
            read_view(&mut Cursor::new(vec![0u8; 1 << 20])).unwrap(),
            None
        );
    }
}
