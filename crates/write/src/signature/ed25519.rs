//! minisign and signify signatures. Both use the same public key layout: a comment line,
//! then base64 of `Ed`, an 8-byte key number and the 32-byte Ed25519 key.

use super::Outcome;
use anyhow::{bail, Context, Result};
use base64::Engine as _;
use std::io::Read;
use std::path::Path;

/// Most data a legacy (not prehashed) minisign signature is checked over: it is read
/// into memory whole. Checksum lists and block maps are far smaller.
pub const LEGACY_MAX: u64 = 64 << 20;

/// An Ed25519 public key from a minisign or signify key file.
#[derive(Debug, Clone)]
pub struct EdKey {
    /// The key file, for messages.
    pub file: String,
    /// The 8-byte key number.
    pub keynum: [u8; 8],
    /// The key.
    pub key: [u8; 32],
    /// The base64 line, as minisign-verify wants it.
    pub b64: String,
}

fn b64(s: &str) -> Result<Vec<u8>> {
    Ok(base64::engine::general_purpose::STANDARD.decode(s.trim())?)
}

/// Reads a minisign or signify public key file.
pub fn load_key(path: &Path) -> Result<EdKey> {
    let bytes = super::read_small(path, super::MAX_SIG_FILE, "a public key")?;
    parse_key(&bytes, &path.display().to_string())
}

/// Parses the bytes of a minisign or signify public key file named `file`.
pub fn parse_key(bytes: &[u8], file: &str) -> Result<EdKey> {
    let text = std::str::from_utf8(bytes).with_context(|| format!("{file}: not a text file"))?;
    let line = text
        .lines()
        .find(|l| !l.starts_with("untrusted comment:") && !l.trim().is_empty())
        .with_context(|| format!("{file}: no key line"))?;
    let raw = b64(line).with_context(|| format!("{file}: the key line is not base64"))?;
    let Some((keynum, key)) = ed_fields::<32>(&raw) else {
        bail!("{file}: expected a minisign or signify Ed25519 public key (42 bytes starting with \"Ed\"), found {} bytes", raw.len());
    };
    Ok(EdKey {
        file: file.to_string(),
        keynum,
        key,
        b64: line.trim().to_string(),
    })
}

/// `Ed`, an 8-byte key number and `N` more bytes (a key or a signature), exactly: the
/// layout of signify and minisign keys and signatures. `None` for anything else.
fn ed_fields<const N: usize>(raw: &[u8]) -> Option<([u8; 8], [u8; N])> {
    let (magic, rest) = raw.split_first_chunk::<2>()?;
    let (keynum, value) = rest.split_first_chunk::<8>()?;
    (magic == b"Ed").then_some((*keynum, <[u8; N]>::try_from(value).ok()?))
}

/// A parsed minisign or signify signature.
#[derive(Debug, Clone)]
pub enum EdSig {
    /// minisign: the whole file text.
    Minisign(String),
    /// signify: key number, signature, and an embedded message (`signify -e`).
    Signify {
        /// Key number.
        keynum: [u8; 8],
        /// Ed25519 signature.
        sig: [u8; 64],
        /// Message following the signature lines, if any.
        embedded: Option<Vec<u8>>,
    },
}

/// Parses a file that starts with `untrusted comment:`.
pub fn parse(bytes: &[u8]) -> Result<EdSig> {
    let text = std::str::from_utf8(bytes).context("not text")?;
    let mut lines = text.splitn(3, '\n');
    let _comment = lines.next();
    let sigline = lines.next().context("no signature line")?;
    let rest = lines.next().unwrap_or("");
    if rest.starts_with("trusted comment:") {
        return Ok(EdSig::Minisign(text.to_string()));
    }
    let raw = b64(sigline).context("the signature line is not base64")?;
    let Some((keynum, sig)) = ed_fields::<64>(&raw) else {
        bail!("not a signify signature (expected 74 bytes starting with \"Ed\")");
    };
    Ok(EdSig::Signify {
        keynum,
        sig,
        embedded: (!rest.is_empty()).then(|| rest.as_bytes().to_vec()),
    })
}

/// Whether `sig` names one of `keys`.
pub fn has_key(sig: &EdSig, keys: &[EdKey]) -> bool {
    match sig {
        EdSig::Minisign(text) => {
            let Ok(s) = minisign_verify::Signature::decode(text) else {
                // Unreadable: let `verify` say so.
                return true;
            };
            keys.iter().any(|k| {
                minisign_verify::PublicKey::from_base64(&k.b64)
                    .map(|pk| {
                        !matches!(
                            pk.verify_stream(&s),
                            Err(minisign_verify::Error::UnexpectedKeyId)
                        )
                    })
                    .unwrap_or(false)
            })
        }
        EdSig::Signify { keynum, .. } => keys.iter().any(|k| &k.keynum == keynum),
    }
}

/// Verifies `sig` over `data` with whichever of `keys` it names.
pub fn verify(sig: &EdSig, keys: &[EdKey], data: &mut dyn Read) -> Outcome {
    match sig {
        EdSig::Minisign(text) => {
            let s = match minisign_verify::Signature::decode(text) {
                Ok(s) => s,
                Err(e) => return Outcome::Bad(format!("unreadable minisign signature: {e}")),
            };
            for k in keys {
                let Ok(pk) = minisign_verify::PublicKey::from_base64(&k.b64) else {
                    continue;
                };
                let mut v = match pk.verify_stream(&s) {
                    Ok(v) => v,
                    Err(minisign_verify::Error::UnexpectedKeyId) => continue,
                    Err(minisign_verify::Error::UnsupportedLegacyMode) => {
                        // Legacy signatures hash nothing first: the whole message is
                        // verified at once, so it must fit in memory. An image does not.
                        let mut all = Vec::new();
                        if let Err(e) = (&mut *data).take(LEGACY_MAX + 1).read_to_end(&mut all) {
                            return Outcome::Bad(format!("reading the signed data: {e}"));
                        }
                        if all.len() as u64 > LEGACY_MAX {
                            return Outcome::Bad(format!(
                                "is a legacy minisign signature (minisign -l, not prehashed) over more than {} MiB, which would have to be held in memory whole: sign with minisign's default (prehashed) signatures, or sign SHA256SUMS",
                                LEGACY_MAX >> 20
                            ));
                        }
                        return match pk.verify(&all, &s, true) {
                            Ok(()) => Outcome::Good(format!("minisign key {}", k.file)),
                            Err(e) => Outcome::Bad(format!(
                                "does not verify with minisign key {}: {e}",
                                k.file
                            )),
                        };
                    }
                    Err(e) => return Outcome::Bad(format!("minisign: {e}")),
                };
                if let Err(e) = feed(data, |b| v.update(b)) {
                    return Outcome::Bad(format!("reading the signed data: {e}"));
                }
                return match v.finalize() {
                    Ok(()) => Outcome::Good(format!("minisign key {}", k.file)),
                    Err(e) => {
                        Outcome::Bad(format!("does not verify with minisign key {}: {e}", k.file))
                    }
                };
            }
            Outcome::NoKey("minisign signature by a key that was not given (--pubkey)".into())
        }
        EdSig::Signify { keynum, sig, .. } => {
            let Some(k) = keys.iter().find(|k| &k.keynum == keynum) else {
                return Outcome::NoKey(
                    "signify signature by a key that was not given (--pubkey)".into(),
                );
            };
            let vk = match ed25519_dalek::VerifyingKey::from_bytes(&k.key) {
                Ok(vk) => vk,
                Err(e) => return Outcome::Bad(format!("signify key {} is invalid: {e}", k.file)),
            };
            let s = ed25519_dalek::Signature::from_bytes(sig);
            let mut v = match vk.verify_stream(&s) {
                Ok(v) => v,
                Err(e) => return Outcome::Bad(format!("signify: {e}")),
            };
            if let Err(e) = feed(data, |b| v.update(b)) {
                return Outcome::Bad(format!("reading the signed data: {e}"));
            }
            match v.finalize_and_verify() {
                Ok(()) => Outcome::Good(format!("signify key {}", k.file)),
                Err(e) => Outcome::Bad(format!("does not verify with signify key {}: {e}", k.file)),
            }
        }
    }
}

fn feed(r: &mut dyn Read, mut f: impl FnMut(&[u8])) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        f(&buf[..n]);
    }
}
