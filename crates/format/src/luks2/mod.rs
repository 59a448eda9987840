//! Reading a LUKS2 header (the on-disk format cryptsetup writes): the binary header's
//! fields, its checksum, and the JSON metadata's keyslots, segments and requirements.
//! What `inspect` shows and how the boot agent tells a finished encryption from one cut
//! short.
//!
//! Layout (LUKS2 on-disk format, version 1.1): a 4096-byte binary header, then the JSON
//! area, together `hdr_size` bytes; a second copy follows at `hdr_size`. The checksum
//! (SHA-256 here, as cryptsetup writes by default) covers those `hdr_size` bytes with the
//! checksum field zeroed.

mod finish;
mod make;

pub use finish::{finish_rekey, FinishedRekey};
pub use make::{
    decrypt_sectors, encrypt_sectors, make_header, make_header_with, BuildKey, Made, Secrets,
    DATA_OFFSET,
};

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Bytes of the binary part of the header.
pub const BINARY_LEN: usize = 4096;
/// The largest header cryptsetup writes (4 MiB of JSON area and binary header).
pub const MAX_HEADER: usize = 4 << 20;
const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
const MAGIC_SECONDARY: &[u8; 6] = b"SKUL\xba\xbe";

/// Whether `bytes` (the start of a device) begin with a LUKS header of any version.
pub fn is_luks(bytes: &[u8]) -> bool {
    bytes.len() >= 6 && &bytes[..6] == MAGIC
}

/// The header size the binary header at the start of `bytes` claims, so that a reader
/// knows how much to read; `None` when it is not a LUKS2 header or claims a size no
/// cryptsetup writes.
pub fn header_len(bytes: &[u8]) -> Option<usize> {
    if !is_luks(bytes) || bytes.len() < 16 || be16(bytes, 6) != 2 {
        return None;
    }
    let n = be64(bytes, 8);
    // 16 KiB to 4 MiB, a power of two (LUKS2 spec, "hdr_size").
    ((16 << 10..=MAX_HEADER as u64).contains(&n) && n.is_power_of_two()).then_some(n as usize)
}

fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}

fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&x| x == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// One keyslot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Keyslot {
    /// Its number.
    pub id: u32,
    /// `luks2`, or `reencrypt` for the slot of a re-encryption in progress.
    pub kind: String,
    /// The key-derivation function (`argon2id`, `argon2i`, `pbkdf2`), if any.
    pub kdf: Option<String>,
    /// Argon2's memory cost in KiB.
    pub kdf_memory_kib: Option<u64>,
    /// Argon2's time cost, or PBKDF2's iterations.
    pub kdf_time: Option<u64>,
}

/// One data segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Segment {
    /// Its number.
    pub id: u32,
    /// `crypt`, or `linear` for data not encrypted (yet).
    pub kind: String,
    /// Byte offset of its data on the device.
    pub offset: u64,
    /// Its length in bytes; `None` for `dynamic` (to the end of the device).
    pub size: Option<u64>,
    /// The cipher (`aes-xts-plain64`), for `crypt`.
    pub cipher: Option<String>,
    /// The encryption sector size, for `crypt`.
    pub sector_size: Option<u64>,
}

/// What a LUKS2 header says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Header {
    /// The format version (2).
    pub version: u16,
    /// The header's UUID.
    pub uuid: String,
    /// Its label (may be empty).
    pub label: String,
    /// Bytes of the binary header and JSON area.
    pub header_size: u64,
    /// The header's sequence number (each update increments it).
    pub seqid: u64,
    /// Whether the checksum holds.
    pub checksum_ok: bool,
    /// Keyslots, by number.
    pub keyslots: Vec<Keyslot>,
    /// Segments, by number.
    pub segments: Vec<Segment>,
    /// Mandatory requirements (`online-reencrypt-v2` while a re-encryption runs).
    pub requirements: Vec<String>,
    /// The digests of the volume keys (base64, as in the JSON): they change when the
    /// volume key does.
    pub digests: Vec<String>,
}

impl Header {
    /// Whether a re-encryption (or an encryption in place) is in progress: cryptsetup
    /// opens the device only to go on with it.
    pub fn reencrypt_in_progress(&self) -> bool {
        self.requirements
            .iter()
            .any(|r| r.starts_with("online-reencrypt"))
    }

    /// The data cipher, when every `crypt` segment has the same one.
    pub fn cipher(&self) -> Option<&str> {
        let mut ciphers = self.segments.iter().filter_map(|s| s.cipher.as_deref());
        let first = ciphers.next()?;
        ciphers.all(|c| c == first).then_some(first)
    }
}

/// Why a header could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Luks2Error {
    /// No LUKS2 magic and version.
    #[error("not a LUKS2 header")]
    NotLuks2,
    /// Fewer bytes than the header claims.
    #[error("the header claims {claimed} bytes, only {got} were given")]
    Short {
        /// Bytes claimed.
        claimed: usize,
        /// Bytes given.
        got: usize,
    },
    /// The JSON area is not the metadata LUKS2 describes.
    #[error("the JSON metadata: {0}")]
    Json(String),
}

/// Whether the checksum of `hdr` (one copy, `hdr_size` bytes) holds: SHA-256, the only
/// algorithm cryptsetup writes, over the copy with the checksum field zeroed.
fn checksum_ok(hdr: &[u8]) -> bool {
    c_string(&hdr[72..104]) == "sha256" && {
        let mut h = Sha256::new();
        h.update(&hdr[..448]);
        h.update([0u8; 64]);
        h.update(&hdr[512..]);
        h.finalize()[..] == hdr[448..480]
    }
}

/// Reads the primary header from `bytes`, the start of the device (at least
/// [`header_len`] bytes).
pub fn read(bytes: &[u8]) -> Result<Header, Luks2Error> {
    let len = header_len(bytes).ok_or(Luks2Error::NotLuks2)?;
    if bytes.len() < len {
        return Err(Luks2Error::Short {
            claimed: len,
            got: bytes.len(),
        });
    }
    let hdr = &bytes[..len];
    let checksum_ok = checksum_ok(hdr);
    let json_area = &hdr[BINARY_LEN..];
    let end = json_area
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(json_area.len());
    let meta: serde_json::Value =
        serde_json::from_slice(&json_area[..end]).map_err(|e| Luks2Error::Json(e.to_string()))?;
    let obj = |key: &str| -> Result<Vec<(u32, &serde_json::Value)>, Luks2Error> {
        let m = meta
            .get(key)
            .and_then(|v| v.as_object())
            .ok_or_else(|| Luks2Error::Json(format!("no {key:?} object")))?;
        let mut v = m
            .iter()
            .map(|(k, v)| {
                k.parse::<u32>()
                    .map(|n| (n, v))
                    .map_err(|_| Luks2Error::Json(format!("{key} has a non-numeric id {k:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        v.sort_by_key(|(n, _)| *n);
        Ok(v)
    };
    let text = |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
    // LUKS2 writes 64-bit numbers as decimal strings, small ones as JSON numbers.
    let number = |v: &serde_json::Value, k: &str| {
        v.get(k).and_then(|x| {
            x.as_u64()
                .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
        })
    };
    let keyslots = obj("keyslots")?
        .into_iter()
        .map(|(id, v)| {
            let kdf = v.get("kdf");
            Keyslot {
                id,
                kind: text(v, "type").unwrap_or_default(),
                kdf: kdf.and_then(|k| text(k, "type")),
                kdf_memory_kib: kdf.and_then(|k| number(k, "memory")),
                kdf_time: kdf.and_then(|k| number(k, "time").or_else(|| number(k, "iterations"))),
            }
        })
        .collect();
    let segments = obj("segments")?
        .into_iter()
        .map(|(id, v)| {
            Ok(Segment {
                id,
                kind: text(v, "type").unwrap_or_default(),
                offset: number(v, "offset")
                    .ok_or_else(|| Luks2Error::Json(format!("segment {id} has no offset")))?,
                size: number(v, "size"),
                cipher: text(v, "encryption"),
                sector_size: number(v, "sector_size"),
            })
        })
        .collect::<Result<Vec<_>, Luks2Error>>()?;
    let requirements = meta
        .pointer("/config/requirements/mandatory")
        .and_then(|m| m.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|r| r.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    let digests = obj("digests")?
        .into_iter()
        .filter_map(|(_, v)| text(v, "digest"))
        .collect();
    Ok(Header {
        digests,
        version: be16(hdr, 6),
        uuid: c_string(&hdr[168..208]),
        label: c_string(&hdr[24..72]),
        header_size: len as u64,
        seqid: be64(hdr, 16),
        checksum_ok,
        keyslots,
        segments,
        requirements,
    })
}

/// Whether `bytes` hold the secondary header's magic (a device whose primary header was
/// overwritten still has it at `hdr_size`).
pub fn is_secondary(bytes: &[u8]) -> bool {
    bytes.len() >= 6 && &bytes[..6] == MAGIC_SECONDARY
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header as cryptsetup 2.6 writes one during `reencrypt --encrypt`, made by hand.
    pub(super) fn header(json: &str, fix_checksum: bool) -> Vec<u8> {
        let len = 16 << 10;
        let mut b = vec![0u8; len];
        b[..6].copy_from_slice(MAGIC);
        b[6..8].copy_from_slice(&2u16.to_be_bytes());
        b[8..16].copy_from_slice(&(len as u64).to_be_bytes());
        b[16..24].copy_from_slice(&7u64.to_be_bytes());
        b[24..29].copy_from_slice(b"label");
        b[72..78].copy_from_slice(b"sha256");
        let uuid = b"0f4c3a5e-1111-4222-8333-944455556666";
        b[168..168 + uuid.len()].copy_from_slice(uuid);
        b[BINARY_LEN..BINARY_LEN + json.len()].copy_from_slice(json.as_bytes());
        if fix_checksum {
            let mut h = Sha256::new();
            h.update(&b[..]);
            let sum = h.finalize();
            b[448..480].copy_from_slice(&sum);
        }
        b
    }

    const JSON: &str = r#"{"keyslots":{"1":{"type":"reencrypt","mode":"encrypt"},"0":{"type":"luks2","key_size":64,"kdf":{"type":"argon2id","time":4,"memory":1048576,"cpus":2}}},"segments":{"0":{"type":"crypt","offset":"33554432","size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":512}},"digests":{},"config":{"json_size":"12288","keyslots_size":"16744448","requirements":{"mandatory":["online-reencrypt-v2"]}}}"#;

    #[test]
    fn a_header_is_read_with_its_slots_segments_and_requirements() {
        let b = header(JSON, true);
        assert_eq!(header_len(&b), Some(16 << 10));
        let h = read(&b).unwrap();
        assert!(h.checksum_ok);
        assert_eq!(h.uuid, "0f4c3a5e-1111-4222-8333-944455556666");
        assert_eq!(h.label, "label");
        assert_eq!(h.seqid, 7);
        assert_eq!(h.keyslots.len(), 2);
        assert_eq!(h.keyslots[0].kdf.as_deref(), Some("argon2id"));
        assert_eq!(h.keyslots[0].kdf_memory_kib, Some(1 << 20));
        assert_eq!(h.keyslots[1].kind, "reencrypt");
        assert_eq!(h.segments[0].offset, 32 << 20);
        assert_eq!(h.segments[0].size, None);
        assert_eq!(h.cipher(), Some("aes-xts-plain64"));
        assert!(h.reencrypt_in_progress());
        let done = JSON.replace(
            r#""requirements":{"mandatory":["online-reencrypt-v2"]}"#,
            r#""x":1"#,
        );
        assert!(!read(&header(&done, true)).unwrap().reencrypt_in_progress());
    }

    #[test]
    fn damage_is_told_apart_from_a_header() {
        let b = header(JSON, false);
        assert!(
            !read(&b).unwrap().checksum_ok,
            "a wrong checksum is reported"
        );
        assert_eq!(
            read(&b[..8 << 10]).unwrap_err(),
            Luks2Error::Short {
                claimed: 16 << 10,
                got: 8 << 10
            }
        );
        assert_eq!(read(&[0u8; 4096]).unwrap_err(), Luks2Error::NotLuks2);
        let mut v1 = b.clone();
        v1[7] = 1;
        assert_eq!(header_len(&v1), None);
        assert!(is_luks(&v1), "LUKS1 is still LUKS");
        let mut odd = b.clone();
        odd[8..16].copy_from_slice(&(12345u64).to_be_bytes());
        assert_eq!(header_len(&odd), None);
        assert!(matches!(
            read(&header("{not json", true)),
            Err(Luks2Error::Json(_))
        ));
        assert!(
            matches!(read(&header(r#"{"keyslots":{"a":{}},"segments":{}}"#, true)), Err(Luks2Error::Json(w)) if w.contains("non-numeric"))
        );
        assert!(is_secondary(b"SKUL\xba\xbe"));
    }
}
