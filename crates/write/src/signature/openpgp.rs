//! OpenPGP detached signatures (armored `.asc` or binary `.sig`/`.gpg`), verified with
//! rPGP against the keys of a keyring file (armored or binary, e.g. `gpg --export`).

use super::Outcome;
use anyhow::{Context, Result};
use pgp::composed::{Deserializable, DetachedSignature, SignedPublicKey};
use pgp::types::KeyDetails;
use std::io::Read;
use std::path::Path;

/// Largest keyring read (the whole Debian developers' keyring is well below it).
pub const MAX_KEYRING: u64 = 64 << 20;

/// Reads every public key in a keyring file.
pub fn load_keyring(path: &Path) -> Result<Vec<SignedPublicKey>> {
    let bytes = super::read_small(path, MAX_KEYRING, "a keyring")?;
    parse_keyring(&bytes).with_context(|| format!("keyring {}", path.display()))
}

/// Every public key of a keyring's bytes (armored or binary), their self-signatures
/// checked.
pub fn parse_keyring(bytes: &[u8]) -> Result<Vec<SignedPublicKey>> {
    let (keys, _) = SignedPublicKey::from_reader_many(bytes).context("not an OpenPGP keyring")?;
    let keys: Vec<SignedPublicKey> = keys
        .collect::<Result<_, _>>()
        .context("reading OpenPGP keys")?;
    if keys.is_empty() {
        anyhow::bail!("no OpenPGP public key in it");
    }
    for k in &keys {
        k.verify_bindings()
            .with_context(|| format!("key {} has invalid self-signatures", k.fingerprint()))?;
    }
    Ok(keys)
}

/// Parses a detached signature file.
pub fn parse(bytes: &[u8]) -> Result<Vec<DetachedSignature>> {
    let (sigs, _) = DetachedSignature::from_reader_many(bytes)?;
    let sigs: Vec<DetachedSignature> = sigs.collect::<Result<_, _>>()?;
    if sigs.is_empty() {
        anyhow::bail!("no signature packet");
    }
    Ok(sigs)
}

/// Whether a key in `keys` (or one of its subkeys) issued one of `sigs`.
pub fn has_key(sigs: &[DetachedSignature], keys: &[SignedPublicKey]) -> bool {
    sigs.iter().any(|s| {
        let sig = &s.signature;
        keys.iter().any(|k| {
            std::iter::once((k.primary_key.fingerprint(), k.primary_key.legacy_key_id()))
                .chain(
                    k.public_subkeys
                        .iter()
                        .map(|sk| (sk.key.fingerprint(), sk.key.legacy_key_id())),
                )
                .any(|(fp, id)| {
                    sig.issuer_fingerprint().iter().any(|f| **f == fp)
                        || sig.issuer_key_id().iter().any(|i| **i == id)
                })
        })
    })
}

/// Verifies the first signature of `sigs` whose issuer is in `keys` over `data`.
pub fn verify(
    sigs: &[DetachedSignature],
    keys: &[SignedPublicKey],
    data: &mut dyn Read,
) -> Outcome {
    for s in sigs {
        let sig = &s.signature;
        for k in keys {
            let primary = &k.primary_key;
            let candidates =
                std::iter::once((primary.fingerprint(), primary.legacy_key_id(), None)).chain(
                    k.public_subkeys
                        .iter()
                        .enumerate()
                        .map(|(i, sk)| (sk.key.fingerprint(), sk.key.legacy_key_id(), Some(i))),
                );
            for (fp, id, sub) in candidates {
                let issued = sig.issuer_fingerprint().iter().any(|f| **f == fp)
                    || sig.issuer_key_id().iter().any(|i| **i == id);
                if !issued {
                    continue;
                }
                let who = format!("OpenPGP key {}", k.primary_key.fingerprint());
                let r = match sub {
                    None => sig.verify(primary, &mut *data),
                    Some(i) => sig.verify(&k.public_subkeys[i].key, &mut *data),
                };
                return match r {
                    Ok(()) => Outcome::Good(who),
                    Err(e) => Outcome::Bad(format!("does not verify with {who}: {e}")),
                };
            }
        }
    }
    let issuers: Vec<String> = sigs
        .iter()
        .flat_map(|s| {
            s.signature
                .issuer_fingerprint()
                .iter()
                .map(|f| f.to_string())
                .chain(s.signature.issuer_key_id().iter().map(|i| i.to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    Outcome::NoKey(format!(
        "made by OpenPGP key {}, which is not in the given keyrings",
        issuers.join(" / ")
    ))
}
