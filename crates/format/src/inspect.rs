//! What is inside a disk image, read without mounting: the partition table, each
//! partition's filesystem, and the boot files on the ESP.

use crate::fat::{read_contents, FatFile};
use crate::gpt::{read_table, type_name, GptError, Partition};
use crate::probe::{probe, FsInfo};
use crate::slice::Slice;
use std::io::{self, Read, Seek, SeekFrom};

/// One partition and what it holds.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PartitionReport {
    /// Table entry.
    #[serde(flatten)]
    pub entry: Partition,
    /// Short type name, when the type is known.
    pub type_name: Option<&'static str>,
    /// Byte offset on the disk.
    pub offset: u64,
    /// Size in bytes.
    pub size: u64,
    /// Filesystem, if one was recognised.
    pub filesystem: Option<FsInfo>,
    /// The LUKS2 header, for an encrypted partition.
    pub luks2: Option<crate::luks2::Header>,
    /// Files that boot the system, for an ESP (every file on it).
    pub boot_files: Vec<FatFile>,
    /// Boot menu entries of the GRUB configuration on an ESP.
    pub boot_entries: Vec<crate::grubcfg::BootEntry>,
    /// A problem met while reading this partition.
    pub error: Option<String>,
}

/// The whole image.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Image size in bytes.
    pub size: u64,
    /// Bytes per sector of the partition table.
    pub sector_size: u64,
    /// Disk GUID.
    pub disk_guid: crate::Guid,
    /// Whether the backup header sits in the last sector, as it should.
    pub backup_at_end: bool,
    /// Partitions in table order.
    pub partitions: Vec<PartitionReport>,
    /// GRUB's BIOS boot code in the MBR, if there is some.
    pub bios_boot: Option<crate::grub_pc::InstalledGrub>,
    /// The image's ISO 9660 view and El Torito entries, if it has them.
    pub iso: Option<crate::iso9660::IsoSummary>,
    /// What the first-boot record says (see [`crate::firstboot`]).
    pub first_boot: FirstBootReport,
}

/// The first-boot state of a copy, as its record says.
#[derive(Debug, Clone, serde::Serialize, PartialEq, Eq)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum FirstBootReport {
    /// No record: an image as built, or a copy that never booted persistent.
    NotStarted,
    /// The steps done so far, in order, and the GUIDs the copy was built with.
    Started {
        /// Names of the steps done.
        done: Vec<&'static str>,
        /// Every step done.
        complete: bool,
        /// The disk GUID as built.
        original_disk_guid: crate::Guid,
        /// The root partition's GUID as built.
        original_root_guid: crate::Guid,
        /// The partition a compressed root expands into (`None` for an ext4 root).
        expand_into: Option<u32>,
        /// What the image asked of the root's encryption (`off`, `offer`, `require`,
        /// `build-key`), and how this copy's encryption step ended (`pending`,
        /// `encrypted`, `declined`).
        encryption: EncryptionReport,
    },
    /// A record that belongs to another copy written here before (its disk GUID does
    /// not match), which the agent ignores.
    Stale,
    /// A record the agent cannot use.
    Unusable {
        /// Why.
        reason: String,
    },
}

/// The encryption part of a first-boot record.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct EncryptionReport {
    /// The image's policy when the copy's first boot began.
    pub policy: &'static str,
    /// How the encryption step ended.
    pub outcome: &'static str,
}

fn first_boot(found: crate::firstboot::Found, disk_guid: crate::Guid) -> FirstBootReport {
    use crate::firstboot::{Found, Step};
    match found {
        Found::Fresh => FirstBootReport::NotStarted,
        Found::Unusable(reason) => FirstBootReport::Unusable { reason },
        Found::State(s) if !s.applies(disk_guid) => FirstBootReport::Stale,
        Found::State(s) => FirstBootReport::Started {
            done: Step::ALL
                .into_iter()
                .filter(|st| s.is_done(*st))
                .map(Step::name)
                .collect(),
            complete: s.all_done(),
            original_disk_guid: s.original_disk,
            original_root_guid: s.original_root,
            expand_into: (s.expand_into != 0).then_some(s.expand_into),
            encryption: EncryptionReport {
                policy: s.encryption.name(),
                outcome: s.encrypted.name(),
            },
        },
    }
}

/// Errors from inspecting an image.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InspectError {
    /// No readable GPT.
    #[error("no GUID partition table found: {0}")]
    NoTable(#[from] GptError),
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// Reads the image in `disk`.
pub fn inspect<R: Read + Seek>(disk: &mut R) -> Result<Report, InspectError> {
    let size = disk.seek(SeekFrom::End(0))?;
    let table = read_table(disk)?;
    let ss = table.sector_size;
    let mut partitions = Vec::new();
    for p in &table.partitions {
        let (offset, len) = (p.offset(ss), p.len(ss));
        let mut rep = PartitionReport {
            entry: p.clone(),
            type_name: type_name(p.type_guid),
            offset,
            size: len,
            filesystem: None,
            luks2: None,
            boot_files: Vec::new(),
            boot_entries: Vec::new(),
            error: None,
        };
        // The table comes from the image: its end may lie beyond the image or 2^64.
        let end = offset.checked_add(len);
        if end.is_none_or(|end| end > size) {
            rep.error = Some(match end {
                Some(end) => {
                    format!("partition ends at byte {end}, beyond the image ({size} bytes)")
                }
                None => format!("partition at byte {offset}, {len} bytes long, ends beyond 2^64"),
            });
            partitions.push(rep);
            continue;
        }
        let mut part = Slice::new(&mut *disk, offset, len);
        rep.filesystem = probe(&mut part)?;
        match read_luks2(&mut part, len) {
            Ok(h) => rep.luks2 = h,
            Err(e) => rep.error = Some(e),
        }
        if rep.filesystem.as_ref().is_some_and(|f| f.kind == "vfat") {
            match read_contents(Slice::new(&mut *disk, offset, len), 0, len) {
                Ok(c) => {
                    if let Some(fs) = rep.filesystem.as_mut() {
                        fs.used_bytes = Some(c.used_bytes);
                    }
                    if rep.type_name == Some("esp") {
                        rep.boot_files = c.files;
                        for (path, text) in &c.grub_cfgs {
                            rep.boot_entries.extend(crate::grubcfg::entries(path, text));
                        }
                    }
                }
                Err(e) => rep.error = Some(format!("reading FAT filesystem: {e}")),
            }
        }
        partitions.push(rep);
    }
    Ok(Report {
        size,
        sector_size: ss,
        disk_guid: table.disk_guid,
        backup_at_end: table.backup_lba == size / ss - 1,
        partitions,
        bios_boot: read_bios_boot(disk, size)?,
        iso: crate::iso9660::read_view(disk)?,
        first_boot: first_boot(crate::firstboot::read(disk)?, table.disk_guid),
    })
}

/// The LUKS2 header at the start of `part` (`len` bytes), if it has one.
fn read_luks2<R: Read + Seek>(
    part: &mut R,
    len: u64,
) -> Result<Option<crate::luks2::Header>, String> {
    use crate::luks2;
    let mut head = vec![0u8; luks2::BINARY_LEN];
    if len < head.len() as u64 {
        return Ok(None);
    }
    let io = |e: io::Error| format!("reading the LUKS header: {e}");
    part.seek(SeekFrom::Start(0)).map_err(io)?;
    part.read_exact(&mut head).map_err(io)?;
    if !luks2::is_luks(&head) {
        return Ok(None);
    }
    let n = luks2::header_len(&head)
        .filter(|n| *n as u64 <= len)
        .ok_or("a LUKS header that is not LUKS2, or whose size does not fit the partition")?;
    head.resize(n, 0);
    part.read_exact(&mut head[luks2::BINARY_LEN..])
        .map_err(io)?;
    luks2::read(&head)
        .map(Some)
        .map_err(|e| format!("the LUKS2 header: {e}"))
}

fn read_bios_boot<R: Read + Seek>(
    disk: &mut R,
    size: u64,
) -> io::Result<Option<crate::grub_pc::InstalledGrub>> {
    let mut mbr = [0u8; 512];
    disk.seek(SeekFrom::Start(0))?;
    disk.read_exact(&mut mbr)?;
    let Some(at) = crate::grub_pc::core_sector(&mbr) else {
        return Ok(None);
    };
    let mut first = [0u8; 512];
    // The sector number comes from the disk: anything past its end reads as "not found".
    let start = at
        .checked_mul(512)
        .filter(|s| s.checked_add(512).is_some_and(|e| e <= size));
    let Some(start) = start else {
        return Ok(Some(crate::grub_pc::InstalledGrub {
            core_sector: at,
            core_sectors: 0,
        }));
    };
    disk.seek(SeekFrom::Start(start))?;
    disk.read_exact(&mut first)?;
    Ok(Some(crate::grub_pc::installed(at, &first)))
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::gpt::{write_table, Partition, TYPE_BIOS_BOOT, TYPE_ESP, TYPE_ROOT_X86_64};
    use crate::iso9660::{write_view, FileData, IsoFile, IsoView};
    use crate::testing::Fuzz;
    use crate::Guid;
    use std::io::Cursor;

    const SECTORS: u64 = 1024; // a 512 KiB image

    /// A whole small image as the builder lays one out: GRUB's boot code in the MBR and
    /// its core image in a BIOS boot partition, a FAT ESP with a grub.cfg, an ext4
    /// superblock for the root, and the ISO 9660 view with its El Torito catalog.
    fn image() -> Vec<u8> {
        let mut img = Cursor::new(vec![0u8; (SECTORS * 512) as usize]);
        let part = |n: u32, ty: &str, first: u64, last: u64| Partition {
            number: n,
            type_guid: ty.parse().unwrap(),
            guid: Guid::derive("fuzz", &n.to_string()),
            name: format!("p{n}"),
            first_lba: first,
            last_lba: last,
            attributes: 0,
        };
        let parts = [
            part(1, TYPE_BIOS_BOOT, 128, 191),
            part(2, TYPE_ESP, 256, 767),
            part(3, TYPE_ROOT_X86_64, 768, 959),
        ];
        write_table(&mut img, 512, Guid::derive("fuzz", "disk"), &parts).unwrap();
        let mut img = img.into_inner();
        let mut boot = vec![0xCCu8; 512];
        boot[0x180..0x185].copy_from_slice(b"GRUB ");
        boot[510..].copy_from_slice(&[0x55, 0xAA]);
        let mbr: [u8; 512] = img[..512].try_into().unwrap();
        img[..512].copy_from_slice(&crate::grub_pc::boot_sector(&boot, &mbr, 128).unwrap());
        let mut core = vec![0u8; 8 * 512];
        core[510..512].copy_from_slice(&0x820u16.to_le_bytes());
        crate::grub_pc::place_core(&mut core, 128).unwrap();
        img[128 * 512..136 * 512].copy_from_slice(&core);
        let esp = &mut img[256 * 512..768 * 512];
        fatfs::format_volume(Cursor::new(&mut *esp), fatfs::FormatVolumeOptions::new()).unwrap();
        {
            let fs =
                fatfs::FileSystem::new(Cursor::new(&mut *esp), fatfs::FsOptions::new()).unwrap();
            fs.root_dir().create_dir("EFI").unwrap();
            fs.root_dir().create_dir("EFI/BOOT").unwrap();
            let mut f = fs.root_dir().create_file("EFI/BOOT/grub.cfg").unwrap();
            std::io::Write::write_all(&mut f, b"menuentry 'Demo' {\n linux /vmlinuz\n}\n").unwrap();
        }
        let sb = &mut img[768 * 512 + 1024..768 * 512 + 2048];
        sb[4..8].copy_from_slice(&96u32.to_le_bytes());
        sb[24..28].copy_from_slice(&0u32.to_le_bytes());
        sb[56..58].copy_from_slice(&0xEF53u16.to_le_bytes());
        sb[96..100].copy_from_slice(&0x2c0u32.to_le_bytes());
        let v = IsoView {
            volume_id: "DEMO".into(),
            epoch: 0,
            image_bytes: SECTORS * 512,
            files: vec![IsoFile {
                path: "ESP.IMG".into(),
                data: FileData::Extent {
                    offset: 256 * 512,
                    len: 512 * 512,
                },
            }],
            bios_boot: Some((128 * 512, 4096)),
            efi_boot: Some((256 * 512, 512 * 512)),
        };
        let mut c = Cursor::new(img);
        write_view(&mut c, &v).unwrap();
        c.into_inner()
    }

    /// Everything `inspect` reads besides the partition table (the MBR's boot code,
    /// core.img's blocklist, the ESP's FAT, the root's superblock, the ISO view) mutated
    /// together: it never panics or fails on the in-memory image, and the table it
    /// reports is the one written (the GPT has its own tests, in `gpt`).
    #[test]
    fn fuzz_inspect() {
        let base = image();
        let clean = inspect(&mut Cursor::new(&base)).unwrap();
        assert_eq!(clean.partitions[1].boot_entries.len(), 1);
        assert!(clean.bios_boot.is_some() && clean.iso.is_some());
        let table = |r: &Report| {
            r.partitions
                .iter()
                .map(|p| p.entry.clone())
                .collect::<Vec<_>>()
        };
        let s = |n: usize| n * 512;
        let hot = [
            0..446,
            s(128)..s(129),
            s(256)..s(262),
            s(300)..s(310),
            s(768) + 1024..s(768) + 1200,
            s(64)..s(96),
        ];
        // Each case reads a whole image through every reader: a quarter of the count.
        let report = Fuzz::new("fuzz_inspect").cost(4).run(
            |m, _| {
                let mut img = m.hot(&hot).mutate(&base);
                // Keep the partition table (the MBR's entries, both GPTs) and the size.
                img.resize(base.len(), 0);
                img[446..s(34)].copy_from_slice(&base[446..s(34)]);
                let end = base.len() - s(33);
                img[end..].copy_from_slice(&base[end..]);
                img
            },
            |input| {
                let r = inspect(&mut Cursor::new(input)).expect("an in-memory image");
                assert_eq!(table(&r), table(&clean));
                r.partitions.iter().all(|p| p.error.is_none())
            },
        );
        assert!(
            report.accepted > 1000 && report.accepted < report.cases,
            "{report:?}"
        );
    }
}
