//! Telling compressed data from its first bytes: the one sniffer the writer (images), the
//! builder's tarball reader and its initramfs maker (kernel modules) share.

/// What the first bytes of some data say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// None of the below: taken as uncompressed.
    None,
    /// gzip (one or more members).
    Gzip,
    /// bzip2 (`BZh` and a block size digit).
    Bzip2,
    /// xz.
    Xz,
    /// zstd: a frame, or a skippable frame first (only zstd files start like that).
    Zstd,
    /// A zip archive (local file header first).
    Zip,
}

impl Compression {
    /// The name users know it by.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Bzip2 => "bzip2",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
            Compression::Zip => "zip",
        }
    }
}

/// Bytes [`sniff`] needs to decide.
pub const SNIFF_LEN: usize = 6;

/// Recognises the compression of data starting with `head`.
pub fn sniff(head: &[u8]) -> Compression {
    let skippable_zstd = head.len() >= 4
        && u32::from_le_bytes([head[0], head[1], head[2], head[3]]) & 0xffff_fff0 == 0x184d_2a50;
    if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(b"BZh") && head.get(3).is_some_and(|d| (b'1'..=b'9').contains(d)) {
        Compression::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Xz
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) || skippable_zstd {
        Compression::Zstd
    } else if head.starts_with(b"PK\x03\x04") {
        Compression::Zip
    } else {
        Compression::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_numbers() {
        assert_eq!(sniff(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(sniff(b"BZh91AY&SY"), Compression::Bzip2);
        assert_eq!(sniff(b"BZhx"), Compression::None);
        assert_eq!(sniff(b"BZh"), Compression::None);
        assert_eq!(
            sniff(&[0xfd, b'7', b'z', b'X', b'Z', 0, 0, 4]),
            Compression::Xz
        );
        assert_eq!(sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0x24]), Compression::Zstd);
        assert_eq!(
            sniff(&[0x5e, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]),
            Compression::Zstd
        );
        assert_eq!(sniff(b"PK\x03\x04\x14\x00"), Compression::Zip);
        assert_eq!(sniff(&[0u8; 512]), Compression::None);
        assert_eq!(sniff(b""), Compression::None);
        assert_eq!(sniff(b"\x7fELF"), Compression::None);
    }
}
