//! The machine architectures images are built for, and what differs between them: names,
//! partition types, the removable-media EFI loader, GRUB's platform, the ELF machine.

use crate::gpt;

/// An image's architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    /// 64-bit PCs: UEFI and BIOS.
    X86_64,
    /// 64-bit Arm: UEFI only.
    Arm64,
}

impl Arch {
    /// Every architecture.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Arm64];

    /// The name in specs, Debian's for arm64 (`x86_64`, `arm64`).
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// Debian's architecture name (mmdebstrap's `--architectures`).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The name the kernel and Rust use (`uname -m`, target triples).
    pub fn machine(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "aarch64",
        }
    }

    /// Debian's multiarch library directory name.
    pub fn multiarch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-linux-gnu",
            Arch::Arm64 => "aarch64-linux-gnu",
        }
    }

    /// The Discoverable Partitions type of its root partition.
    pub fn root_type(self) -> &'static str {
        match self {
            Arch::X86_64 => gpt::TYPE_ROOT_X86_64,
            Arch::Arm64 => gpt::TYPE_ROOT_ARM64,
        }
    }

    /// The architecture suffix of EFI file names (`x64`, `aa64`): `shimx64.efi`,
    /// `grubaa64.efi`...
    pub fn efi_suffix(self) -> &'static str {
        match self {
            Arch::X86_64 => "x64",
            Arch::Arm64 => "aa64",
        }
    }

    /// The loader UEFI firmware starts from removable media, in `EFI/BOOT/`.
    pub fn efi_loader(self) -> &'static str {
        match self {
            Arch::X86_64 => "BOOTX64.EFI",
            Arch::Arm64 => "BOOTAA64.EFI",
        }
    }

    /// GRUB's UEFI platform (`/usr/lib/grub/PLATFORM`).
    pub fn grub_efi_platform(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64-efi",
            Arch::Arm64 => "arm64-efi",
        }
    }

    /// Debian's package of GRUB's UEFI modules.
    pub fn grub_efi_package(self) -> &'static str {
        match self {
            Arch::X86_64 => "grub-efi-amd64-bin",
            Arch::Arm64 => "grub-efi-arm64-bin",
        }
    }

    /// Whether PCs of this architecture may start without UEFI (GRUB for BIOS).
    pub fn has_bios(self) -> bool {
        self == Arch::X86_64
    }

    /// The ELF `e_machine` of its programs.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,
            Arch::Arm64 => 183,
        }
    }

    /// The architecture this program was built for, if images can be built for it.
    pub fn host() -> Option<Arch> {
        Arch::from_machine(std::env::consts::ARCH)
    }

    /// The architecture a `uname -m` / Rust name (`x86_64`, `aarch64`) stands for.
    pub fn from_machine(m: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.machine() == m)
    }

    /// The architecture whose root partition type is `t`.
    pub fn from_root_type(t: crate::guid::Guid) -> Option<Arch> {
        let s = t.to_string();
        Arch::ALL.into_iter().find(|a| a.root_type() == s)
    }
}

/// The architecture a Linux kernel image is for, from its first 4 KiB: the machine of its
/// PE header (the EFI stub every UEFI-bootable kernel has, compressed `zboot` images
/// included), else the boot protocol's magic (`HdrS` of an x86 bzImage, `ARM\x64` of an
/// arm64 Image). `None` when it tells neither (a gzip-compressed Image, say).
pub fn kernel_arch(head: &[u8]) -> Option<Arch> {
    let le16 = |o: usize| head.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    if head.starts_with(b"MZ") {
        let pe = head
            .get(0x3c..0x40)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
        if let Some(pe) = pe.filter(|&pe| head.get(pe..pe + 4) == Some(b"PE\0\0")) {
            match le16(pe + 4) {
                Some(0x8664) => return Some(Arch::X86_64),
                Some(0xaa64) => return Some(Arch::Arm64),
                _ => {}
            }
        }
    }
    if head.get(0x202..0x206) == Some(b"HdrS") {
        return Some(Arch::X86_64);
    }
    if head.get(0x38..0x3c) == Some(b"ARM\x64") {
        return Some(Arch::Arm64);
    }
    None
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Arch {
    type Err = String;
    /// Accepts the spec names and the other usual names (`amd64`, `aarch64`).
    fn from_str(s: &str) -> Result<Arch, String> {
        match s {
            "x86_64" | "amd64" | "x86-64" => Ok(Arch::X86_64),
            "arm64" | "aarch64" => Ok(Arch::Arm64),
            _ => Err(format!(
                "{s:?}: expected \"x86_64\" (or \"amd64\") or \"arm64\" (or \"aarch64\")"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_back_and_types_are_distinct() {
        for a in Arch::ALL {
            assert_eq!(a.name().parse::<Arch>().unwrap(), a);
            assert_eq!(a.debian().parse::<Arch>().unwrap(), a);
            assert_eq!(a.machine().parse::<Arch>().unwrap(), a);
            assert_eq!(
                Arch::from_root_type(a.root_type().parse().unwrap()),
                Some(a)
            );
        }
        assert!("riscv64".parse::<Arch>().unwrap_err().contains("expected"));
    }

    #[test]
    fn kernels_tell_their_architecture() {
        // PE header at 0x80 naming the machine, as the EFI stub has it.
        let pe = |machine: u16| {
            let mut k = vec![0u8; 4096];
            k[..2].copy_from_slice(b"MZ");
            k[0x3c..0x40].copy_from_slice(&0x80u32.to_le_bytes());
            k[0x80..0x84].copy_from_slice(b"PE\0\0");
            k[0x84..0x86].copy_from_slice(&machine.to_le_bytes());
            k
        };
        assert_eq!(kernel_arch(&pe(0x8664)), Some(Arch::X86_64));
        assert_eq!(kernel_arch(&pe(0xaa64)), Some(Arch::Arm64));
        let mut bz = vec![0u8; 4096];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        assert_eq!(kernel_arch(&bz), Some(Arch::X86_64));
        let mut image = vec![0u8; 4096];
        image[0x38..0x3c].copy_from_slice(b"ARM\x64");
        assert_eq!(kernel_arch(&image), Some(Arch::Arm64));
        assert_eq!(kernel_arch(b"\x1f\x8b\x08 gzip"), None);
        // A PE offset pointing outside the bytes is not followed.
        let mut bad = pe(0xaa64);
        bad[0x3c..0x40].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(kernel_arch(&bad), None);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(Arch::host(), Some(Arch::X86_64));
    }
}
