//! Recognising a virtual machine disk file by its first bytes, so `oneimage qemu` can
//! tell QEMU the format instead of letting it guess (QEMU refuses to guess raw for
//! writes, and a guess from content is unsafe for a raw image that happens to start like
//! another format).

/// A disk file format QEMU reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    /// Plain bytes (oneimage's images).
    Raw,
    /// qcow2 (`QFI\xfb`).
    Qcow2,
    /// VMDK: a sparse extent (`KDMV`) or a text descriptor.
    Vmdk,
    /// VHDX (`vhdxfile`).
    Vhdx,
    /// VirtualBox VDI (signature 0xbeda107f at byte 64).
    Vdi,
}

impl DiskFormat {
    /// QEMU's name for the format (`-drive format=`).
    pub fn qemu_name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
            DiskFormat::Vmdk => "vmdk",
            DiskFormat::Vhdx => "vhdx",
            DiskFormat::Vdi => "vdi",
        }
    }
}

/// The format of a file starting with `head` (its first 512 bytes or more). A raw disk
/// image starts with an MBR or zeros, never with one of these signatures.
pub fn sniff(head: &[u8]) -> DiskFormat {
    if head.starts_with(b"QFI\xfb") {
        DiskFormat::Qcow2
    } else if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        DiskFormat::Vmdk
    } else if head.starts_with(b"vhdxfile") {
        DiskFormat::Vhdx
    } else if head.len() >= 68 && head[64..68] == 0xbeda_107fu32.to_le_bytes() {
        DiskFormat::Vdi
    } else {
        DiskFormat::Raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_and_raw() {
        assert_eq!(sniff(b"QFI\xfb\0\0\0\x03"), DiskFormat::Qcow2);
        assert_eq!(sniff(b"KDMV\x01\0\0\0"), DiskFormat::Vmdk);
        assert_eq!(sniff(b"vhdxfile\0\0"), DiskFormat::Vhdx);
        let mut vdi = vec![0u8; 512];
        vdi[64..68].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
        assert_eq!(sniff(&vdi), DiskFormat::Vdi);
        let mut mbr = vec![0u8; 512];
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        assert_eq!(sniff(&mbr), DiskFormat::Raw);
        assert_eq!(sniff(b""), DiskFormat::Raw);
    }
}
