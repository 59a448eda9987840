//! Installing GRUB for BIOS (i386-pc) on a GPT disk, the part `grub-bios-setup` does
//! (and refuses to do on a disk that is also an ISO 9660 volume): the 440 bytes of boot
//! code in the MBR learn where core.img starts, and core.img's first sector learns where
//! the rest of it is. The partition table in the MBR is kept as it is.

/// Where boot.img keeps the 64-bit sector of core.img's first sector.
const KERNEL_SECTOR: usize = 0x5c;
/// Where boot.img keeps the BIOS drive to read from (0xff: the one the BIOS booted).
const BOOT_DRIVE: usize = 0x64;
/// A 2-byte jump over the code that forces the drive number to 0x80 when the BIOS passed
/// one without the hard-disk bit; hard-disk installs replace it with two NOPs, so a BIOS
/// that passes a wrong number still reads the disk it booted.
const DRIVE_CHECK: usize = 0x66;
/// Boot code ends here; the disk signature and partition table follow.
const CODE_END: usize = 0x1b8;
/// The boot signature.
const SIGNATURE: usize = 0x1fe;
/// core.img's first sector ends with its blocklist: start sector (u64), sector count
/// (u16), load segment (u16).
const BLOCKLIST: usize = 512 - 12;

/// A GRUB image that does not look as expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GrubPcError {
    /// boot.img is not a 512-byte sector ending in 55 AA.
    #[error(
        "boot.img is {0} bytes: expected GRUB's i386-pc boot sector, 512 bytes ending in 55 AA"
    )]
    BadBootImage(usize),
    /// core.img is too small or too large, or its first sector has no blocklist.
    #[error("core.img is {bytes} bytes with load segment {segment:#x}: expected 2 to 65536 sectors with a blocklist loading at segment 0x820 in the first")]
    BadCoreImage {
        /// Its size.
        bytes: usize,
        /// The load segment found in the blocklist (0 when too short to have one).
        segment: u16,
    },
}

/// The MBR to write: `boot_img`'s code pointing at `core_lba`, with the disk signature,
/// partition table and boot signature of `mbr` (the protective MBR already on the disk).
pub fn boot_sector(
    boot_img: &[u8],
    mbr: &[u8; 512],
    core_lba: u64,
) -> Result<[u8; 512], GrubPcError> {
    if boot_img.len() != 512 || boot_img[SIGNATURE..] != [0x55, 0xAA] {
        return Err(GrubPcError::BadBootImage(boot_img.len()));
    }
    let mut out = *mbr;
    out[..CODE_END].copy_from_slice(&boot_img[..CODE_END]);
    out[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&core_lba.to_le_bytes());
    out[BOOT_DRIVE] = 0xff;
    out[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    out[SIGNATURE..].copy_from_slice(&[0x55, 0xAA]);
    Ok(out)
}

/// Pads `core` (made by `grub-mkimage -O i386-pc`) to whole sectors and points its
/// blocklist at the sectors after `core_lba`, where it will be written.
pub fn place_core(core: &mut Vec<u8>, core_lba: u64) -> Result<(), GrubPcError> {
    let sectors = core.len().div_ceil(512);
    let segment = core
        .get(BLOCKLIST + 10..BLOCKLIST + 12)
        .map_or(0, |b| u16::from_le_bytes([b[0], b[1]]));
    let bad = GrubPcError::BadCoreImage {
        bytes: core.len(),
        segment,
    };
    if sectors < 2 || segment != 0x820 {
        return Err(bad);
    }
    let rest = u16::try_from(sectors - 1).map_err(|_| bad)?;
    core.resize(sectors * 512, 0);
    core[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&(core_lba + 1).to_le_bytes());
    core[BLOCKLIST + 8..BLOCKLIST + 10].copy_from_slice(&rest.to_le_bytes());
    Ok(())
}

/// GRUB's BIOS boot code as found on a disk: where it loads core.img from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InstalledGrub {
    /// Sector of core.img's first sector, from the MBR.
    pub core_sector: u64,
    /// Sectors core.img spans, from its blocklist; 0 unless the blocklist continues right
    /// after the first sector (as oneimage and grub-bios-setup write it).
    pub core_sectors: u64,
}

/// The sector GRUB's i386-pc boot code in `mbr` loads core.img from; `None` when the MBR
/// holds no GRUB boot code.
pub fn core_sector(mbr: &[u8; 512]) -> Option<u64> {
    let code = &mbr[..CODE_END];
    let grub = code.windows(5).any(|w| w == b"GRUB ");
    grub.then(|| {
        u64::from_le_bytes(
            mbr[KERNEL_SECTOR..KERNEL_SECTOR + 8]
                .try_into()
                .expect("8 bytes"),
        )
    })
}

/// What the MBR and core.img's first sector (`core_first`) say about the installation.
pub fn installed(core_sector: u64, core_first: &[u8; 512]) -> InstalledGrub {
    let start = u64::from_le_bytes(
        core_first[BLOCKLIST..BLOCKLIST + 8]
            .try_into()
            .expect("8 bytes"),
    );
    let len = u16::from_le_bytes([core_first[BLOCKLIST + 8], core_first[BLOCKLIST + 9]]);
    InstalledGrub {
        core_sector,
        // Both numbers come from the disk: the last sector has no sector after it.
        core_sectors: if core_sector.checked_add(1) == Some(start) {
            1 + u64::from(len)
        } else {
            0
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_sector_keeps_the_partition_table() {
        let mut boot = vec![0xCCu8; 512];
        boot[510] = 0x55;
        boot[511] = 0xAA;
        let mut mbr = [0u8; 512];
        mbr[0x1be..0x1ce].copy_from_slice(&[7; 16]);
        mbr[0x1b8..0x1bc].copy_from_slice(&[1, 2, 3, 4]);
        let out = boot_sector(&boot, &mbr, 128).unwrap();
        assert_eq!(&out[0x1b8..0x1fe], &mbr[0x1b8..0x1fe]);
        assert_eq!(&out[0x5c..0x64], &128u64.to_le_bytes());
        assert_eq!(out[0x64], 0xff);
        assert_eq!(&out[0x66..0x68], &[0x90, 0x90]);
        assert_eq!(&out[..2], &[0xCC, 0xCC]);
        assert!(boot_sector(&boot[..511], &mbr, 1).is_err());
        assert_eq!(core_sector(&out), None, "no GRUB string in this fake");
        let mut grub = boot.clone();
        grub[0x180..0x185].copy_from_slice(b"GRUB ");
        let out = boot_sector(&grub, &mbr, 128).unwrap();
        assert_eq!(core_sector(&out), Some(128));
    }

    #[test]
    fn core_blocklist_points_after_its_first_sector() {
        let mut core = vec![0u8; 1000];
        core[510..512].copy_from_slice(&0x820u16.to_le_bytes());
        place_core(&mut core, 128).unwrap();
        assert_eq!(core.len(), 1024);
        assert_eq!(&core[500..508], &129u64.to_le_bytes());
        assert_eq!(&core[508..510], &1u16.to_le_bytes());
        assert!(place_core(&mut vec![0u8; 1000], 128).is_err());
        let first: [u8; 512] = core[..512].try_into().unwrap();
        assert_eq!(installed(128, &first).core_sectors, 2);
        assert_eq!(installed(64, &first).core_sectors, 0);
        // Found by `fuzz_grub_pc_reading`: the MBR's sector number plus one overflowed.
        assert_eq!(installed(u64::MAX, &first).core_sectors, 0);
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use crate::testing::Fuzz;

    /// Any MBR and any first sector of core.img, with any sector number: the GRUB
    /// reader never panics, and a blocklist it accepts spans 1 to 65536 sectors.
    #[test]
    fn fuzz_grub_pc_reading() {
        let mut boot = vec![0xCCu8; 512];
        boot[0x180..0x185].copy_from_slice(b"GRUB ");
        boot[510..512].copy_from_slice(&[0x55, 0xAA]);
        let mbr = boot_sector(&boot, &[0u8; 512], 2048).unwrap();
        let mut core = vec![0u8; 40 * 512];
        core[510..512].copy_from_slice(&0x820u16.to_le_bytes());
        place_core(&mut core, 2048).unwrap();
        let base = [mbr.to_vec(), core[..512].to_vec()].concat();
        let report = Fuzz::new("fuzz_grub_pc_reading").run(
            |m, _| {
                let mut input = m.hot(&[0x5c..0x64, 1012..1024, 0x180..0x185]).mutate(&base);
                input.resize(1024, 0);
                input
            },
            |input| {
                let mbr: [u8; 512] = input[..512].try_into().unwrap();
                let first: [u8; 512] = input[512..].try_into().unwrap();
                let Some(at) = core_sector(&mbr) else {
                    return false;
                };
                // The sector number is whatever the disk says; the blocklist must be read
                // against it without overflowing, including at the extremes.
                for at in [at, u64::MAX, u64::MAX - 1, 0] {
                    let g = installed(at, &first);
                    assert!(g.core_sectors <= 1 << 16, "{g:?}");
                }
                true
            },
        );
        assert!(report.accepted > 1000, "{report:?}");
    }
}
