//! GUIDs: parsing, GPT byte order and derivation from a seed.

use sha2::{Digest, Sha256};
use std::fmt;
use std::str::FromStr;

/// A GUID held in its textual (RFC 4122, big-endian) byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

/// A string that is not a GUID of the form `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{0}' is not a GUID (expected 8-4-4-4-12 hexadecimal digits)")]
pub struct GuidParseError(pub String);

impl Guid {
    /// Derives a version-4-shaped GUID from a seed and a purpose.
    ///
    /// The same seed and purpose always give the same GUID; different purposes give
    /// unrelated GUIDs, so one seed can fix every identifier of an image.
    pub fn derive(seed: &str, purpose: &str) -> Guid {
        let mut h = Sha256::new();
        h.update(b"oneimage-guid\0");
        h.update((seed.len() as u64).to_le_bytes());
        h.update(seed.as_bytes());
        h.update(purpose.as_bytes());
        let digest = h.finalize();
        let mut b = [0u8; 16];
        b.copy_from_slice(&digest[..16]);
        b[6] = (b[6] & 0x0f) | 0x40;
        b[8] = (b[8] & 0x3f) | 0x80;
        Guid(b)
    }

    /// The 16 bytes as GPT stores them: the first three fields little-endian.
    pub fn to_gpt_bytes(self) -> [u8; 16] {
        let mut b = self.0;
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        b
    }

    /// Reads a GUID from the byte order GPT stores.
    pub fn from_gpt_bytes(mut b: [u8; 16]) -> Guid {
        b[0..4].reverse();
        b[4..6].reverse();
        b[6..8].reverse();
        Guid(b)
    }

    /// True for the all-zero GUID, which GPT uses for "unused".
    pub fn is_nil(self) -> bool {
        self.0 == [0; 16]
    }
}

impl FromStr for Guid {
    type Err = GuidParseError;

    fn from_str(s: &str) -> Result<Guid, GuidParseError> {
        let err = || GuidParseError(s.to_string());
        let groups: Vec<&str> = s.split('-').collect();
        let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
        if lens != [8, 4, 4, 4, 12] {
            return Err(err());
        }
        let hex: String = groups.concat();
        let mut b = [0u8; 16];
        for (i, byte) in b.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(err)?, 16)
                .map_err(|_| err())?;
        }
        Ok(Guid(b))
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Guid({self})")
    }
}

impl serde::Serialize for Guid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn esp_type_in_gpt_order() {
        // The ESP type GUID as it appears on disk (known answer from the UEFI spec).
        let esp: Guid = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b".parse().unwrap();
        assert_eq!(
            esp.to_gpt_bytes(),
            [
                0x28, 0x73, 0x2a, 0xc1, 0x1f, 0xf8, 0xd2, 0x11, 0xba, 0x4b, 0x00, 0xa0, 0xc9, 0x3e,
                0xc9, 0x3b
            ]
        );
        assert_eq!(Guid::from_gpt_bytes(esp.to_gpt_bytes()), esp);
        assert_eq!(esp.to_string(), "c12a7328-f81f-11d2-ba4b-00a0c93ec93b");
    }

    #[test]
    fn derive_is_stable_and_v4() {
        let a = Guid::derive("seed", "disk");
        assert_eq!(a, Guid::derive("seed", "disk"));
        assert_ne!(a, Guid::derive("seed", "root"));
        assert_ne!(a, Guid::derive("seed2", "disk"));
        assert_eq!(a.0[6] >> 4, 4);
        assert_eq!(a.0[8] >> 6, 0b10);
    }

    #[test]
    fn rejects_malformed() {
        assert!("c12a7328f81f11d2ba4b00a0c93ec93b".parse::<Guid>().is_err());
        assert!("g12a7328-f81f-11d2-ba4b-00a0c93ec93b"
            .parse::<Guid>()
            .is_err());
    }
}
