//! El Torito: the boot catalog (a BIOS default entry and a UEFI section) and the boot
//! info table GRUB's CD boot sector reads to load the rest of its image.

use super::{le32, BootCatalogEntry, SECTOR};

const PLATFORM_X86: u8 = 0;
const PLATFORM_EFI: u8 = 0xEF;
const BOOTABLE: u8 = 0x88;
const LAST_SECTION: u8 = 0x91;
/// 512-byte sectors the BIOS loads of a no-emulation image: GRUB's 2048-byte CD boot
/// sector, which loads the rest itself.
const BIOS_LOAD_SECTORS: u16 = 4;

fn entry(e: &mut [u8], offset: u64, sectors: u16) {
    e[0] = BOOTABLE;
    e[6..8].copy_from_slice(&sectors.to_le_bytes());
    e[8..12].copy_from_slice(&((offset / SECTOR) as u32).to_le_bytes());
}

/// The catalog sector: BIOS image as the default entry when there is one, the ESP as a
/// UEFI section (or as the default entry of a UEFI-only catalog).
pub(super) fn catalog(bios: Option<(u64, u64)>, efi: Option<(u64, u64)>) -> Vec<u8> {
    let mut cat = vec![0u8; SECTOR as usize];
    if bios.is_none() && efi.is_none() {
        return cat;
    }
    cat[0] = 1;
    cat[1] = if bios.is_some() {
        PLATFORM_X86
    } else {
        PLATFORM_EFI
    };
    cat[4..12].copy_from_slice(b"ONEIMAGE");
    cat[30] = 0x55;
    cat[31] = 0xAA;
    let sum = cat[..32].chunks(2).fold(0u16, |s, w| {
        s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    cat[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
    // Sector count of the ESP in 512-byte units; 0 when it does not fit 16 bits, which
    // UEFI firmware reads as "up to the end of the volume" (the FAT inside knows its size).
    let efi_count = |len: u64| u16::try_from(len / 512).unwrap_or(0);
    match (bios, efi) {
        (Some((off, _)), None) => entry(&mut cat[32..64], off, BIOS_LOAD_SECTORS),
        (None, Some((off, len))) => entry(&mut cat[32..64], off, efi_count(len)),
        (Some((boff, _)), Some((eoff, elen))) => {
            entry(&mut cat[32..64], boff, BIOS_LOAD_SECTORS);
            let h = &mut cat[64..96];
            h[0] = LAST_SECTION;
            h[1] = PLATFORM_EFI;
            h[2..4].copy_from_slice(&1u16.to_le_bytes());
            h[4..12].copy_from_slice(b"UEFI    ");
            entry(&mut cat[96..128], eoff, efi_count(elen));
        }
        (None, None) => unreachable!("handled above"),
    }
    cat
}

/// The 16-byte boot info table for a boot image at 2048-byte sector `image_lba` whose
/// bytes are `image`, on a volume whose primary descriptor is at sector `pvd_lba`:
/// both locations, the image length and the sum of its 32-bit words from byte 64 on.
/// It goes at byte 8 of the image.
pub(super) fn boot_info_table(image: &[u8], pvd_lba: u32, image_lba: u32) -> [u8; 16] {
    let mut sum = 0u32;
    for w in image.get(64..).unwrap_or_default().chunks(4) {
        let mut b = [0u8; 4];
        b[..w.len()].copy_from_slice(w);
        sum = sum.wrapping_add(u32::from_le_bytes(b));
    }
    let mut t = [0u8; 16];
    t[0..4].copy_from_slice(&pvd_lba.to_le_bytes());
    t[4..8].copy_from_slice(&image_lba.to_le_bytes());
    t[8..12].copy_from_slice(&(image.len() as u32).to_le_bytes());
    t[12..16].copy_from_slice(&sum.to_le_bytes());
    t
}

/// Reads the entries of a catalog sector, default entry first.
pub(super) fn parse_catalog(cat: &[u8]) -> Vec<BootCatalogEntry> {
    let mut out = Vec::new();
    if cat.len() < 64 || cat[0] != 1 || cat[30] != 0x55 || cat[31] != 0xAA {
        return out;
    }
    let sum = cat[..32].chunks(2).fold(0u16, |s, w| {
        s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
    });
    if sum != 0 {
        return out;
    }
    let name = |p: u8| match p {
        PLATFORM_X86 => "x86".to_string(),
        PLATFORM_EFI => "UEFI".to_string(),
        n => format!("{n:#04x}"),
    };
    let read = |e: &[u8], platform: u8| BootCatalogEntry {
        platform: name(platform),
        bootable: e[0] == BOOTABLE,
        offset: le32(e, 8) * SECTOR,
        sectors: u16::from_le_bytes([e[6], e[7]]),
    };
    out.push(read(&cat[32..64], cat[1]));
    let mut o = 64;
    while o + 32 <= cat.len() && matches!(cat[o], 0x90 | LAST_SECTION) {
        let (platform, count, last) = (
            cat[o + 1],
            u16::from_le_bytes([cat[o + 2], cat[o + 3]]),
            cat[o] == LAST_SECTION,
        );
        o += 32;
        for _ in 0..count {
            if o + 32 > cat.len() {
                break;
            }
            out.push(read(&cat[o..o + 32], platform));
            o += 32;
        }
        if last {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_entries_and_a_valid_checksum() {
        let cat = catalog(Some((64 << 10, 200 << 10)), Some((1 << 20, 64 << 20)));
        let sum = cat[..32].chunks(2).fold(0u16, |s, w| {
            s.wrapping_add(u16::from_le_bytes([w[0], w[1]]))
        });
        assert_eq!(sum, 0);
        let e = parse_catalog(&cat);
        assert_eq!(e.len(), 2);
        assert_eq!(
            (e[0].platform.as_str(), e[0].offset, e[0].sectors),
            ("x86", 64 << 10, 4)
        );
        assert_eq!(
            (e[1].platform.as_str(), e[1].offset, e[1].sectors),
            ("UEFI", 1 << 20, 0)
        );
    }

    #[test]
    fn boot_info_table_sums_words_after_byte_64() {
        let mut img = vec![0u8; 72];
        img[64] = 1;
        img[68..72].copy_from_slice(&0xFFFF_FFFFu32.to_le_bytes());
        let t = boot_info_table(&img, 16, 33);
        assert_eq!(&t[0..4], &16u32.to_le_bytes());
        assert_eq!(&t[4..8], &33u32.to_le_bytes());
        assert_eq!(&t[8..12], &72u32.to_le_bytes());
        assert_eq!(&t[12..16], &0u32.to_le_bytes());
    }
}
