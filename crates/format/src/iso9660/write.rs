//! Writing the view: volume descriptors, path tables, directories, inline files and the
//! boot catalog, all inside sectors 16 to 31, plus the boot info table inside the BIOS
//! boot image.

use super::eltorito::{boot_info_table, catalog};
use super::{
    both16, both32, civil, FileData, IsoError, IsoView, BOOT_RECORD, CATALOG, END, FIRST_DIR,
    MAX_EXTENT, PATH_L, PATH_M, PVD, SECTOR, TERMINATOR,
};
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::io::{Read, Seek, SeekFrom, Write};

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

/// Checks a d-character identifier; a file name (`dot`) has exactly one `.` between its
/// name and extension (ECMA-119 7.5.1).
fn check_name(what: &'static str, v: &str, max: usize, dot: bool) -> Result<(), IsoError> {
    let dots = v.chars().filter(|&c| c == '.').count();
    let ok = !v.is_empty()
        && v.len() <= max
        && dots == usize::from(dot)
        && v.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_' || c == '.');
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

/// Compares two identifiers as if the shorter were padded with spaces (ECMA-119 9.3).
fn padded_cmp(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    (0..a.len().max(b.len()))
        .map(|i| {
            (
                a.get(i).copied().unwrap_or(b' '),
                b.get(i).copied().unwrap_or(b' '),
            )
        })
        .find(|(x, y)| x != y)
        .map_or(Ordering::Equal, |(x, y)| x.cmp(&y))
}

/// Directory record order (ECMA-119 9.3): by name, then by extension, each padded.
fn record_order(a: &str, b: &str) -> Ordering {
    let split = |n: &str| -> (String, String) {
        match n.split_once('.') {
            Some((name, ext)) => (name.to_string(), ext.to_string()),
            None => (n.to_string(), String::new()),
        }
    };
    let ((an, ae), (bn, be)) = (split(a), split(b));
    padded_cmp(&an, &bn).then_with(|| padded_cmp(&ae, &be))
}

fn parent_of(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(p, _)| p)
}

fn base_name(path: &str) -> &str {
    path.rsplit_once('/').map_or(path, |(_, n)| n)
}

/// A directory of the view: `path` is "" for the root.
struct Dir {
    path: String,
    parent: usize,
    lba: u64,
}

/// A directory's entry besides `.` and `..`: a subdirectory or a file, by index.
enum Entry {
    Dir(usize),
    File(usize),
}

/// Directories in path-table order: by level, then by parent, then by name.
fn directories(v: &IsoView) -> Vec<Dir> {
    let mut all = BTreeSet::new();
    for f in &v.files {
        let mut p = parent_of(&f.path);
        while !p.is_empty() {
            all.insert(p.to_string());
            p = parent_of(p);
        }
    }
    let mut dirs = vec![Dir {
        path: String::new(),
        parent: 0,
        lba: FIRST_DIR,
    }];
    let mut i = 0;
    while i < dirs.len() {
        let here = dirs[i].path.clone();
        for d in all.iter().filter(|d| parent_of(d) == here) {
            dirs.push(Dir {
                path: d.clone(),
                parent: i,
                lba: FIRST_DIR + dirs.len() as u64,
            });
        }
        i += 1;
    }
    dirs
}

fn path_table(dirs: &[Dir], big: bool) -> Vec<u8> {
    let mut p = Vec::new();
    for d in dirs {
        let name = if d.path.is_empty() {
            vec![0]
        } else {
            base_name(&d.path).as_bytes().to_vec()
        };
        let (lba, parent) = (d.lba as u32, d.parent as u16 + 1);
        p.push(name.len() as u8);
        p.push(0);
        p.extend_from_slice(&if big {
            lba.to_be_bytes()
        } else {
            lba.to_le_bytes()
        });
        p.extend_from_slice(&if big {
            parent.to_be_bytes()
        } else {
            parent.to_le_bytes()
        });
        p.extend_from_slice(&name);
        if name.len() % 2 == 1 {
            p.push(0);
        }
    }
    p
}

fn check_extent(what: &str, offset: u64, len: u64, image_bytes: u64) -> Result<(), IsoError> {
    let fits = offset
        .checked_add(len)
        .is_some_and(|end| end <= image_bytes);
    if !offset.is_multiple_of(SECTOR) || offset < END || !fits {
        return Err(IsoError::BadExtent {
            what: what.to_string(),
            offset,
            len,
            image_bytes,
        });
    }
    Ok(())
}

/// Writes the view into `img` (the image file), touching only sectors 16 to 31 and the
/// boot info table of the BIOS boot image.
pub fn write_view<D: Read + Write + Seek>(img: &mut D, v: &IsoView) -> Result<(), IsoError> {
    check_name("volume id", &v.volume_id, 32, false)?;
    // Sector numbers are 32 bits; every extent is checked to lie inside the volume, so
    // this one check keeps all of them from being cut short.
    if v.image_bytes.div_ceil(SECTOR) > u64::from(u32::MAX) {
        return Err(IsoError::TooLarge(v.image_bytes));
    }
    let mut files = v.files.clone();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    for f in &files {
        let mut parts: Vec<&str> = f.path.split('/').collect();
        let file_name = parts.pop().unwrap_or_default();
        for d in parts {
            check_name("directory name", d, 31, false)?;
        }
        check_name("file name", file_name, 30, true)?;
        if let FileData::Extent { offset, len } = f.data {
            check_extent(&format!("file {}", f.path), offset, len, v.image_bytes)?;
        }
    }
    if let Some((off, len)) = v.bios_boot {
        check_extent("the BIOS boot image", off, len, v.image_bytes)?;
    }
    if let Some((off, len)) = v.efi_boot {
        check_extent("the EFI boot image", off, len, v.image_bytes)?;
    }
    let dirs = directories(v);
    for w in files.windows(2) {
        if w[0].path == w[1].path {
            return Err(IsoError::Duplicate(w[0].path.clone()));
        }
    }

    // Each file's bytes as (offset, length); inline data follows the directories.
    let mut next = FIRST_DIR + dirs.len() as u64;
    let mut inline_at = Vec::new();
    let mut placed = Vec::new();
    for f in &files {
        placed.push(match &f.data {
            FileData::Extent { offset, len } => (*offset, *len),
            FileData::Inline(bytes) => {
                inline_at.push((next, bytes.as_slice()));
                let at = next * SECTOR;
                next += (bytes.len() as u64).div_ceil(SECTOR);
                (at, bytes.len() as u64)
            }
        });
    }
    if next > END / SECTOR {
        return Err(IsoError::ViewFull {
            needed: next - FIRST_DIR,
            free: END / SECTOR - FIRST_DIR,
        });
    }
    let volume_sectors = v.image_bytes.div_ceil(SECTOR) as u32;

    let mut dir_sectors = Vec::new();
    for (k, d) in dirs.iter().enumerate() {
        let mut out = Vec::new();
        dir_record(&mut out, &[0], d.lba, SECTOR, 2, v.epoch);
        dir_record(&mut out, &[1], dirs[d.parent].lba, SECTOR, 2, v.epoch);
        // Subdirectories and files together, sorted by name.
        let mut entries: Vec<(&str, Entry)> = Vec::new();
        for (j, sub) in dirs.iter().enumerate().skip(1) {
            if sub.parent == k {
                entries.push((base_name(&sub.path), Entry::Dir(j)));
            }
        }
        for (j, f) in files.iter().enumerate() {
            if parent_of(&f.path) == d.path {
                entries.push((base_name(&f.path), Entry::File(j)));
            }
        }
        entries.sort_by(|a, b| record_order(a.0, b.0));
        for (name, entry) in entries {
            let j = match entry {
                Entry::File(j) => j,
                Entry::Dir(j) => {
                    dir_record(&mut out, name.as_bytes(), dirs[j].lba, SECTOR, 2, v.epoch);
                    continue;
                }
            };
            let name = format!("{name};1");
            let (mut off, mut left) = placed[j];
            loop {
                let part = left.min(MAX_EXTENT);
                let last = part == left;
                let flags = if last { 0 } else { 0x80 };
                dir_record(
                    &mut out,
                    name.as_bytes(),
                    off / SECTOR,
                    part,
                    flags,
                    v.epoch,
                );
                if last {
                    break;
                }
                off += part;
                left -= part;
            }
        }
        if out.len() > SECTOR as usize {
            return Err(IsoError::TooManyFiles(d.path.clone()));
        }
        out.resize(SECTOR as usize, 0);
        dir_sectors.push((d.lba, out));
    }

    let path_l = path_table(&dirs, false);
    let path_m = path_table(&dirs, true);
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
    pvd[132..140].copy_from_slice(&both32(path_l.len() as u32));
    pvd[140..144].copy_from_slice(&(PATH_L as u32).to_le_bytes());
    pvd[148..152].copy_from_slice(&(PATH_M as u32).to_be_bytes());
    let mut root_rec = Vec::new();
    dir_record(&mut root_rec, &[0], FIRST_DIR, SECTOR, 2, v.epoch);
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
    br[1..6].copy_from_slice(b"CD001");
    br[6] = 1;
    br[7..30].copy_from_slice(b"EL TORITO SPECIFICATION");
    br[0x47..0x4B].copy_from_slice(&(CATALOG as u32).to_le_bytes());

    let mut term = vec![0u8; SECTOR as usize];
    term[0] = 255;
    term[1..6].copy_from_slice(b"CD001");
    term[6] = 1;

    let sector = |mut b: Vec<u8>| {
        b.resize(SECTOR as usize, 0);
        b
    };
    // Without boot images there is no El Torito boot record: the set ends right away.
    let booting = v.bios_boot.is_some() || v.efi_boot.is_some();
    let (br, term) = if booting {
        (br, term)
    } else {
        (term, vec![0u8; SECTOR as usize])
    };
    let mut sectors = vec![
        (PVD, pvd),
        (BOOT_RECORD, br),
        (TERMINATOR, term),
        (PATH_L, sector(path_l)),
        (PATH_M, sector(path_m)),
        (CATALOG, catalog(v.bios_boot, v.efi_boot)),
    ];
    sectors.extend(dir_sectors);
    for (lba, bytes) in &inline_at {
        let mut b = bytes.to_vec();
        b.resize(
            (b.len() as u64).div_ceil(SECTOR) as usize * SECTOR as usize,
            0,
        );
        sectors.push((*lba, b));
    }
    for (lba, data) in &sectors {
        img.seek(SeekFrom::Start(lba * SECTOR))?;
        img.write_all(data)?;
    }
    if let Some((off, len)) = v.bios_boot {
        let mut image = vec![0u8; len as usize];
        img.seek(SeekFrom::Start(off))?;
        img.read_exact(&mut image)?;
        let table = boot_info_table(&image, PVD as u32, (off / SECTOR) as u32);
        img.seek(SeekFrom::Start(off + 8))?;
        img.write_all(&table)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{read_view, IsoFile};
    use super::*;
    use std::io::Cursor;

    fn extent(path: &str, offset: u64, len: u64) -> IsoFile {
        IsoFile {
            path: path.into(),
            data: FileData::Extent { offset, len },
        }
    }

    /// The error writing `v` into a blank 8 MiB image gives.
    fn refusal(v: &IsoView) -> IsoError {
        write_view(&mut Cursor::new(vec![0u8; 8 << 20]), v).unwrap_err()
    }

    fn view(files: Vec<IsoFile>) -> IsoView {
        IsoView {
            volume_id: "DEMO".into(),
            epoch: 0,
            image_bytes: 8 << 20,
            files,
            bios_boot: Some((64 << 10, 4096)),
            efi_boot: Some((1 << 20, 1 << 20)),
        }
    }

    #[test]
    fn touches_only_the_view_and_the_boot_info_table() {
        let mut img = Cursor::new(vec![0u8; 8 << 20]);
        let v = view(vec![
            extent("ESP.IMG", 1 << 20, 1 << 20),
            IsoFile {
                path: "EFI/BOOT/GRUB.CFG".into(),
                data: FileData::Inline(b"source x\n".to_vec()),
            },
        ]);
        write_view(&mut img, &v).unwrap();
        let b = img.into_inner();
        assert_eq!(&b[32769..32774], b"CD001");
        assert_eq!(&b[32768 + 40..32768 + 44], b"DEMO");
        assert!(b[..32768].iter().all(|&x| x == 0));
        let boot = (64 << 10) as usize;
        assert!(b[END as usize..boot + 8].iter().all(|&x| x == 0));
        assert_eq!(&b[boot + 8..boot + 12], &16u32.to_le_bytes());
        assert_eq!(&b[boot + 12..boot + 16], &32u32.to_le_bytes());
        assert!(b[boot + 24..].iter().all(|&x| x == 0));
    }

    #[test]
    fn nested_directories_read_back() {
        let mut img = Cursor::new(vec![0u8; 8 << 20]);
        let v = view(vec![
            extent("ROOT.IMG", 2 << 20, 6 << 20),
            extent("ESP.IMG", 1 << 20, 1 << 20),
            IsoFile {
                path: "EFI/BOOT/GRUB.CFG".into(),
                data: FileData::Inline(b"source x\n".to_vec()),
            },
        ]);
        write_view(&mut img, &v).unwrap();
        let s = read_view(&mut img).unwrap().unwrap();
        assert_eq!(s.volume_id, "DEMO");
        assert_eq!(s.volume_bytes, 8 << 20);
        let paths: Vec<&str> = s.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["ESP.IMG", "ROOT.IMG", "EFI/BOOT/GRUB.CFG"]);
        assert_eq!(s.files[0].extents, vec![(1 << 20, 1 << 20)]);
        let (off, len) = s.files[2].extents[0];
        assert_eq!(len, 9);
        assert_eq!(&img.get_ref()[off as usize..][..9], b"source x\n");
        let platforms: Vec<&str> = s.boot_entries.iter().map(|e| e.platform.as_str()).collect();
        assert_eq!(platforms, ["x86", "UEFI"]);
        assert_eq!(
            read_view(&mut Cursor::new(vec![0u8; 1 << 20])).unwrap(),
            None
        );
    }

    #[test]
    fn refuses_bad_names_duplicates_and_misplaced_extents() {
        let mut v = view(vec![]);
        v.volume_id = "lower".into();
        assert!(matches!(refusal(&v), IsoError::BadName { .. }));
        let v = view(vec![
            extent("A.IMG", 1 << 20, 1),
            extent("A.IMG", 2 << 20, 1),
        ]);
        assert!(matches!(refusal(&v), IsoError::Duplicate(_)));
        let v = view(vec![extent("A.IMG", 4096, 1)]);
        assert!(matches!(refusal(&v), IsoError::BadExtent { .. }));
        // Found by `fuzz_iso_round_trip`: beyond 2^32 sectors the volume size and the
        // extents were cut to 32 bits and read back wrong.
        let mut v = view(vec![extent("A.IMG", 1 << 44, 1)]);
        v.image_bytes = 1 << 45;
        assert!(matches!(refusal(&v), IsoError::TooLarge(_)));
        v.image_bytes = u64::from(u32::MAX) * SECTOR;
        v.files[0] = extent("A.IMG", v.image_bytes - SECTOR, SECTOR);
        write_view(&mut Cursor::new(vec![0u8; 8 << 20]), &v).unwrap();
        let v = view(vec![IsoFile {
            path: "BIG.CFG".into(),
            data: FileData::Inline(vec![1; 20 * 2048]),
        }]);
        assert!(matches!(refusal(&v), IsoError::ViewFull { .. }));
    }

    #[test]
    fn refuses_full_directories_and_names_without_one_dot() {
        let many = (0..80)
            .map(|i| extent(&format!("FILE{i:04}.IMG"), 1 << 20, 1))
            .collect();
        assert!(matches!(refusal(&view(many)), IsoError::TooManyFiles(_)));
        // File names have one dot, directory names none: they cannot collide.
        let v = view(vec![
            extent("EFI", 1 << 20, 1),
            extent("EFI/A.B", 1 << 20, 1),
        ]);
        assert!(matches!(refusal(&v), IsoError::BadName { .. }));
        let v = view(vec![extent("A.B/C.D", 1 << 20, 1)]);
        assert!(matches!(refusal(&v), IsoError::BadName { .. }));
        let v = view(vec![extent("A.B.C", 1 << 20, 1)]);
        assert!(matches!(refusal(&v), IsoError::BadName { .. }));
    }

    #[test]
    fn records_sorted_by_name_then_extension() {
        let mut img = Cursor::new(vec![0u8; 8 << 20]);
        let names = ["AB.C", "A.B0", "AB.", "A.B", "B", "A_"];
        let files = names
            .iter()
            .filter(|n| n.contains('.'))
            .map(|n| extent(n, 1 << 20, 1))
            .chain([extent("B/X.Y", 1 << 20, 1), extent("A_/X.Y", 1 << 20, 1)])
            .collect();
        write_view(&mut img, &view(files)).unwrap();
        let root = &img.get_ref()[(FIRST_DIR * SECTOR) as usize..][..SECTOR as usize];
        let mut seen = Vec::new();
        let mut o = 0;
        while root[o] != 0 {
            let n = root[o + 32] as usize;
            seen.push(String::from_utf8_lossy(&root[o + 33..o + 33 + n]).into_owned());
            o += root[o] as usize;
        }
        assert_eq!(
            seen[2..],
            ["A.B;1", "A.B0;1", "AB.;1", "AB.C;1", "A_", "B"].map(String::from)
        );
    }

    #[test]
    fn no_boot_images_no_boot_record() {
        let mut img = Cursor::new(vec![0u8; 8 << 20]);
        let mut v = view(vec![extent("ESP.IMG", 1 << 20, 1)]);
        v.bios_boot = None;
        v.efi_boot = None;
        write_view(&mut img, &v).unwrap();
        let b = img.get_ref();
        assert_eq!(b[(BOOT_RECORD * SECTOR) as usize], 255, "terminator at 17");
        assert_eq!(read_view(&mut img).unwrap().unwrap().boot_entries, vec![]);
    }
}
