//! Writing a LUKS2 header in userspace, without root or device-mapper, reproducibly:
//! every value cryptsetup would draw at random (the volume key, salts, the
//! anti-forensic stripes) is derived from a seed instead. For images encrypted at build
//! time with a documented, public passphrase: anyone with the image can derive the same
//! volume key, which is why such a copy's first persistent boot re-encrypts it to a new
//! one.
//!
//! Layout written (what `cryptsetup luksFormat --type luks2` writes by default): two
//! 16 KiB headers (binary header and JSON area), the keyslots area up to 16 MiB, then
//! the data segment, encrypted with aes-xts-plain64 in 512-byte sectors. One keyslot
//! (argon2id), its key material split over 4000 anti-forensic stripes (LUKS AF with
//! SHA-256) and encrypted with aes-xts-plain64; one PBKDF2-SHA256 digest of the volume
//! key.

use aes::cipher::KeyInit;
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// Bytes of each of the two headers (binary header and JSON area).
const HDR_SIZE: usize = 16 << 10;
/// Where the data segment starts: cryptsetup's default for LUKS2.
pub const DATA_OFFSET: u64 = 16 << 20;
/// Bytes of the volume key (aes-xts with two 256-bit keys).
const KEY_LEN: usize = 64;
/// Anti-forensic stripes, as cryptsetup writes.
const STRIPES: usize = 4000;
/// Where the keyslot's material starts (after both headers).
const KEYSLOT_OFFSET: u64 = 2 * HDR_SIZE as u64;
/// PBKDF2 iterations of the volume key's digest: cryptsetup's minimum (the key is public
/// anyway; the digest only tells a right key from a wrong one).
const DIGEST_ITERATIONS: u32 = 1000;
const SECTOR: usize = 512;

/// What a header is made from.
pub struct BuildKey<'a> {
    /// The passphrase (for a build-time header, the public one).
    pub passphrase: &'a [u8],
    /// For [`make_header`], every value is derived from it (the image's seed and what
    /// the key is for).
    pub seed: &'a str,
    /// The header's UUID.
    pub uuid: crate::Guid,
    /// The header's label.
    pub label: &'a str,
    /// Argon2id's memory cost in KiB.
    pub kdf_memory_kib: u32,
    /// Argon2id's time cost.
    pub kdf_time: u32,
}

/// A header made.
pub struct Made {
    /// The bytes from the partition's start to [`DATA_OFFSET`]: both headers and the
    /// keyslots area.
    pub header: Vec<u8>,
    /// The volume key, to encrypt the data with ([`encrypt_sectors`]).
    pub volume_key: [u8; KEY_LEN],
}

/// `n` bytes derived from `seed` for `what`: SHA-256 in counter mode.
fn derived(seed: &str, what: &str, n: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(n + 32);
    let mut counter = 0u64;
    while out.len() < n {
        let mut h = Sha256::new();
        h.update(b"oneimage luks2 ");
        h.update(seed.as_bytes());
        h.update([0]);
        h.update(what.as_bytes());
        h.update(counter.to_be_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(n);
    out
}

/// LUKS's diffusion of `block` with SHA-256: each 32-byte piece (the last one shorter)
/// replaced by the hash of its big-endian index and itself, cut to its length.
fn diffuse(block: &mut [u8]) {
    for (i, piece) in block.chunks_mut(32).enumerate() {
        let mut h = Sha256::new();
        h.update((i as u32).to_be_bytes());
        h.update(&*piece);
        let d = h.finalize();
        let n = piece.len();
        piece.copy_from_slice(&d[..n]);
    }
}

/// LUKS's anti-forensic split of `key` over `stripes` stripes, the first `stripes - 1`
/// taken from `random`.
fn af_split(key: &[u8], stripes: usize, random: &[u8]) -> Vec<u8> {
    let n = key.len();
    let mut out = Vec::with_capacity(n * stripes);
    let mut acc = vec![0u8; n];
    for stripe in random.chunks(n).take(stripes - 1) {
        out.extend_from_slice(stripe);
        for (a, s) in acc.iter_mut().zip(stripe) {
            *a ^= s;
        }
        diffuse(&mut acc);
    }
    out.extend(acc.iter().zip(key).map(|(a, k)| a ^ k));
    out
}

/// aes-xts under `key` (64 bytes: two AES-256 keys).
fn xts(key: &[u8]) -> xts_mode::Xts128<aes::Aes256> {
    let (k1, k2) = key.split_at(key.len() / 2);
    xts_mode::Xts128::new(
        aes::Aes256::new_from_slice(k1).expect("32-byte key"),
        aes::Aes256::new_from_slice(k2).expect("32-byte key"),
    )
}

/// Encrypts `data` in place with aes-xts-plain64 under `key` (64 bytes), in 512-byte
/// sectors numbered from `first_sector` (the tweak). `data` is whole sectors.
pub fn encrypt_sectors(key: &[u8], first_sector: u64, data: &mut [u8]) {
    xts(key).encrypt_area(
        data,
        SECTOR,
        first_sector.into(),
        xts_mode::get_tweak_default,
    );
}

/// Decrypts `data` in place: the inverse of [`encrypt_sectors`].
pub fn decrypt_sectors(key: &[u8], first_sector: u64, data: &mut [u8]) {
    xts(key).decrypt_area(
        data,
        SECTOR,
        first_sector.into(),
        xts_mode::get_tweak_default,
    );
}

fn b64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                s.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// One binary header (`secondary`: the copy at [`HDR_SIZE`]) around `json`.
fn binary_header(
    json: &str,
    seqid: u64,
    label: &str,
    salt: &[u8],
    uuid: &str,
    secondary: bool,
) -> Vec<u8> {
    let mut h = vec![0u8; HDR_SIZE];
    h[..6].copy_from_slice(if secondary {
        b"SKUL\xba\xbe"
    } else {
        b"LUKS\xba\xbe"
    });
    h[6..8].copy_from_slice(&2u16.to_be_bytes());
    h[8..16].copy_from_slice(&(HDR_SIZE as u64).to_be_bytes());
    h[16..24].copy_from_slice(&seqid.to_be_bytes());
    h[24..24 + label.len().min(47)].copy_from_slice(&label.as_bytes()[..label.len().min(47)]);
    h[72..78].copy_from_slice(b"sha256");
    h[104..168].copy_from_slice(salt);
    h[168..168 + uuid.len()].copy_from_slice(uuid.as_bytes());
    let offset = if secondary { HDR_SIZE as u64 } else { 0 };
    h[256..264].copy_from_slice(&offset.to_be_bytes());
    h[super::BINARY_LEN..super::BINARY_LEN + json.len()].copy_from_slice(json.as_bytes());
    let sum = Sha256::digest(&h);
    h[448..480].copy_from_slice(&sum);
    h
}

/// The values cryptsetup draws at random for a new header.
pub struct Secrets {
    /// The volume key.
    pub volume_key: [u8; KEY_LEN],
    kdf_salt: [u8; 32],
    digest_salt: [u8; 32],
    stripes: Vec<u8>,
    header_salts: [[u8; 64]; 2],
}

impl Secrets {
    /// Every value taken from `fill`, e.g. a reader of `/dev/urandom` (a header whose
    /// volume key nobody else knows).
    pub fn from_source(fill: &mut dyn FnMut(&mut [u8])) -> Secrets {
        let mut s = Secrets {
            volume_key: [0; KEY_LEN],
            kdf_salt: [0; 32],
            digest_salt: [0; 32],
            stripes: vec![0; KEY_LEN * (STRIPES - 1)],
            header_salts: [[0; 64]; 2],
        };
        fill(&mut s.volume_key);
        fill(&mut s.kdf_salt);
        fill(&mut s.digest_salt);
        fill(&mut s.stripes);
        for salt in &mut s.header_salts {
            fill(salt);
        }
        s
    }

    /// Every value derived from `seed` (a build-time header: reproducible, and known to
    /// anyone who has the image).
    pub fn derived_from(seed: &str) -> Secrets {
        let take =
            |what: &str, out: &mut [u8]| out.copy_from_slice(&derived(seed, what, out.len()));
        let mut s = Secrets {
            volume_key: [0; KEY_LEN],
            kdf_salt: [0; 32],
            digest_salt: [0; 32],
            stripes: derived(seed, "anti-forensic stripes", KEY_LEN * (STRIPES - 1)),
            header_salts: [[0; 64]; 2],
        };
        take("volume key", &mut s.volume_key);
        take("keyslot 0 salt", &mut s.kdf_salt);
        take("digest salt", &mut s.digest_salt);
        for (i, salt) in s.header_salts.iter_mut().enumerate() {
            take(&format!("header {i} salt"), salt);
        }
        s
    }
}

/// Makes a LUKS2 header for `k`, every value derived from its seed: both headers and
/// the keyslots area, and the volume key.
pub fn make_header(k: &BuildKey<'_>) -> Result<Made, String> {
    make_header_with(k, &Secrets::derived_from(k.seed))
}

/// Makes a LUKS2 header for `k` (whose seed is not used) from `secrets`.
pub fn make_header_with(k: &BuildKey<'_>, secrets: &Secrets) -> Result<Made, String> {
    let volume_key = secrets.volume_key;
    let kdf_salt = &secrets.kdf_salt;
    let digest_salt = &secrets.digest_salt;

    // The keyslot: argon2id of the passphrase is the key of its material.
    let params = argon2::Params::new(k.kdf_memory_kib, k.kdf_time, 1, Some(KEY_LEN))
        .map_err(|e| format!("argon2id parameters: {e}"))?;
    let argon = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let mut slot_key = [0u8; KEY_LEN];
    argon
        .hash_password_into(k.passphrase, kdf_salt, &mut slot_key)
        .map_err(|e| format!("argon2id: {e}"))?;
    let mut material = af_split(&volume_key, STRIPES, &secrets.stripes);
    let area_len = material.len().div_ceil(4096) * 4096;
    material.resize(area_len, 0);
    encrypt_sectors(&slot_key, 0, &mut material);

    let mut digest = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(&volume_key, digest_salt, DIGEST_ITERATIONS, &mut digest);

    let keyslots_size = DATA_OFFSET - KEYSLOT_OFFSET;
    let json_size = HDR_SIZE - super::BINARY_LEN;
    let mut json = String::new();
    write!(
        json,
        concat!(
            r#"{{"keyslots":{{"0":{{"type":"luks2","key_size":{key},"af":{{"type":"luks1","stripes":{stripes},"hash":"sha256"}},"#,
            r#""area":{{"type":"raw","offset":"{area_off}","size":"{area_len}","encryption":"aes-xts-plain64","key_size":{key}}},"#,
            r#""kdf":{{"type":"argon2id","time":{time},"memory":{mem},"cpus":1,"salt":"{kdf_salt}"}}}}}},"#,
            r#""tokens":{{}},"#,
            r#""segments":{{"0":{{"type":"crypt","offset":"{data}","size":"dynamic","iv_tweak":"0","encryption":"aes-xts-plain64","sector_size":512}}}},"#,
            r#""digests":{{"0":{{"type":"pbkdf2","keyslots":["0"],"segments":["0"],"hash":"sha256","iterations":{iter},"salt":"{dsalt}","digest":"{digest}"}}}},"#,
            r#""config":{{"json_size":"{json_size}","keyslots_size":"{ks_size}"}}}}"#
        ),
        key = KEY_LEN,
        stripes = STRIPES,
        area_off = KEYSLOT_OFFSET,
        area_len = area_len,
        time = k.kdf_time,
        mem = k.kdf_memory_kib,
        kdf_salt = b64(kdf_salt),
        data = DATA_OFFSET,
        iter = DIGEST_ITERATIONS,
        dsalt = b64(digest_salt),
        digest = b64(&digest),
        json_size = json_size,
        ks_size = keyslots_size,
    )
    .expect("writing to a String");
    if json.len() >= json_size {
        return Err(format!(
            "the LUKS2 metadata takes {} bytes, more than its {json_size}-byte area",
            json.len()
        ));
    }
    let uuid = k.uuid.to_string();
    let mut header = vec![0u8; DATA_OFFSET as usize];
    for (i, secondary) in [false, true].into_iter().enumerate() {
        let h = binary_header(
            &json,
            1,
            k.label,
            &secrets.header_salts[i],
            &uuid,
            secondary,
        );
        header[i * HDR_SIZE..(i + 1) * HDR_SIZE].copy_from_slice(&h);
    }
    let at = KEYSLOT_OFFSET as usize;
    header[at..at + material.len()].copy_from_slice(&material);
    Ok(Made { header, volume_key })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> BuildKey<'static> {
        BuildKey {
            passphrase: b"oneimage",
            seed: "test",
            uuid: crate::Guid([7; 16]),
            label: "oneimage-root",
            kdf_memory_kib: 1024,
            kdf_time: 1,
        }
    }

    #[test]
    fn a_made_header_reads_back_and_is_reproducible() {
        let a = make_header(&key()).unwrap();
        let b = make_header(&key()).unwrap();
        assert!(a.header == b.header && a.volume_key == b.volume_key);
        let h = super::super::read(&a.header).unwrap();
        assert!(h.checksum_ok);
        assert_eq!(h.keyslots[0].kdf.as_deref(), Some("argon2id"));
        assert_eq!(h.segments[0].offset, DATA_OFFSET);
        assert_eq!(h.label, "oneimage-root");
        // The secondary header is there too, with its own magic.
        assert!(super::super::is_secondary(&a.header[HDR_SIZE..]));
        let other = make_header(&BuildKey {
            seed: "other",
            ..key()
        })
        .unwrap();
        assert_ne!(other.volume_key, a.volume_key);
    }

    #[test]
    fn af_split_joins_back_to_the_key() {
        // Merging (what cryptsetup does on unlock): diffuse the XOR of all stripes but
        // the last, then XOR with the last.
        let key: Vec<u8> = (0..64u8).collect();
        let random = derived("x", "y", 64 * 3);
        let split = af_split(&key, 4, &random);
        let mut acc = vec![0u8; 64];
        for s in split.chunks(64).take(3) {
            for (a, b) in acc.iter_mut().zip(s) {
                *a ^= b;
            }
            diffuse(&mut acc);
        }
        let joined: Vec<u8> = acc.iter().zip(&split[192..]).map(|(a, b)| a ^ b).collect();
        assert_eq!(joined, key);
    }

    #[test]
    fn base64_is_standard() {
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"f"), "Zg==");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"foobar"), "Zm9vYmFy");
    }
}
