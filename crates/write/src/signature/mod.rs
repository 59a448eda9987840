//! Signature and checksum checks. A signature may cover the file as given
//! (`x.img.xz.asc`), the image inside it (`x.img.sig`), or a `SHA256SUMS` file next to it
//! (`SHA256SUMS.asc`) that lists either of them and the block map. OpenPGP, minisign and
//! signify are recognised by content.
//!
//! Everything small (signature files, `SHA256SUMS`, the block map) is read and checked
//! before the first byte is written. The checks over the image's bytes run while it is
//! written, on the very bytes that are written: [`Plan::start`] hangs them on the write's
//! taps, and [`Running::finish`] says whether they all passed. The writer erases the
//! target when they did not.

pub mod ed25519;
pub mod openpgp;

use crate::progress::Progress;
use crate::source::{self, Source};
use crate::tap::Tap;
use anyhow::{bail, Context, Result};
use oneimage_format::hash::{hex, sha256, unhex32};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

/// The result of checking one signature.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// Valid, made by the described key.
    Good(String),
    /// Cannot be checked: none of the given keys made it.
    NoKey(String),
    /// Invalid.
    Bad(String),
}

/// Public keys to check signatures with.
#[derive(Default)]
pub struct Keys {
    /// OpenPGP keys.
    pub openpgp: Vec<pgp::composed::SignedPublicKey>,
    /// minisign / signify keys.
    pub ed25519: Vec<ed25519::EdKey>,
}

impl Keys {
    /// Loads OpenPGP keyrings and minisign/signify public key files.
    pub fn load(keyrings: &[PathBuf], pubkeys: &[PathBuf]) -> Result<Keys> {
        let mut k = Keys::default();
        for p in keyrings {
            k.openpgp.extend(openpgp::load_keyring(p)?);
        }
        for p in pubkeys {
            k.ed25519.push(ed25519::load_key(p)?);
        }
        Ok(k)
    }
}

#[derive(Clone)]
enum Sig {
    OpenPgp(Vec<pgp::composed::DetachedSignature>),
    Ed(ed25519::EdSig),
}

/// Largest signature or key file read: real ones are a few KiB (a signify signature
/// with its message embedded, a keyring of many keys, a few hundred); a file found next
/// to a download can be anything.
pub const MAX_SIG_FILE: u64 = 1 << 20;
/// Largest `SHA256SUMS` read: a line per file, far beyond any release directory.
pub const MAX_SUMS_FILE: u64 = 16 << 20;

/// Reads a small file whole, refusing one larger than `limit` instead of filling memory.
pub fn read_small(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>> {
    let f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let mut bytes = Vec::new();
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", path.display()))?;
    if bytes.len() as u64 > limit {
        bail!(
            "{}: larger than {} KiB, too large for {what}",
            path.display(),
            limit >> 10
        );
    }
    Ok(bytes)
}

fn parse_sig(path: &Path) -> Result<Sig> {
    let bytes = read_small(path, MAX_SIG_FILE, "a signature")?;
    let r = if bytes.starts_with(b"untrusted comment:") {
        ed25519::parse(&bytes).map(Sig::Ed)
    } else {
        openpgp::parse(&bytes).map(Sig::OpenPgp)
    };
    r.with_context(|| {
        format!(
            "{}: not a readable OpenPGP, minisign or signify signature",
            path.display()
        )
    })
}

/// Whether one of `keys` made `sig` (known before reading the signed data).
fn has_key(sig: &Sig, keys: &Keys) -> bool {
    match sig {
        Sig::OpenPgp(s) => openpgp::has_key(s, &keys.openpgp),
        Sig::Ed(s) => ed25519::has_key(s, &keys.ed25519),
    }
}

fn verify(sig: &Sig, keys: &Keys, data: &mut dyn Read) -> Outcome {
    match sig {
        Sig::OpenPgp(s) => openpgp::verify(s, &keys.openpgp, data),
        Sig::Ed(s) => ed25519::verify(s, &keys.ed25519, data),
    }
}

/// What the checks found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    /// Valid signatures: "what, by whom".
    pub good: Vec<String>,
    /// Signatures that could not be checked for want of a key.
    pub unchecked: Vec<String>,
}

const SUFFIXES: [&str; 4] = ["asc", "sig", "gpg", "minisig"];

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

fn signatures_of(p: &Path) -> Vec<PathBuf> {
    SUFFIXES
        .iter()
        .map(|s| with_suffix(p, s))
        .filter(|p| p.is_file())
        .collect()
}

/// Which bytes a streamed check reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Over {
    /// The source file as downloaded.
    File,
    /// The image inside it.
    Image,
}

enum Kind {
    Signature { sig: Sig, file: PathBuf },
    Sum { want: [u8; 32], sums: PathBuf },
}

struct Check {
    over: Over,
    what: String,
    kind: Kind,
}

/// The checks decided before writing: some already done, the rest to run on the stream.
pub struct Plan {
    checks: Vec<Check>,
    keys: std::sync::Arc<Keys>,
    /// Results known already (signature files without a given key, a signed
    /// `SHA256SUMS` that does not list the source).
    pub report: Report,
    /// How many of the streamed checks prove origin (a signature with a given key, or a
    /// checksum from a signed `SHA256SUMS`); zero means the write proves nothing.
    pub provable: usize,
    /// The block map was checked against a signature or a signed `SHA256SUMS`.
    pub bmap_verified: Option<String>,
}

/// Decides every check that applies to `src` and runs the ones over small files now:
/// signature files are parsed, `SHA256SUMS` and its signatures checked, and the block
/// map's bytes (`bmap`, as read once by the caller) checked against its signature or the
/// signed sums. `explicit` are signature files given for the source file.
pub fn plan(
    src: &Source,
    keys: Keys,
    explicit: &[PathBuf],
    bmap: Option<(&Path, &[u8])>,
    progress: &mut Progress,
) -> Result<Plan> {
    let mut p = Plan {
        checks: Vec::new(),
        keys: std::sync::Arc::new(keys),
        report: Report::default(),
        provable: 0,
        bmap_verified: None,
    };
    let src_name = src.path.display().to_string();
    for sp in explicit.iter().cloned().chain(signatures_of(&src.path)) {
        p.add_signature(&sp, Over::File, &src_name)?;
    }
    let image_name = src
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(source::strip_compression_suffix)
        .filter(|_| src.format != source::Format::Raw);
    let inner = format!("the image in {src_name}");
    if let Some(name) = image_name {
        for sp in signatures_of(&src.path.with_file_name(name)) {
            p.add_signature(&sp, Over::Image, &inner)?;
        }
    }
    let sums = src.path.with_file_name("SHA256SUMS");
    let sums_text = if sums.is_file() {
        Some(read_small(&sums, MAX_SUMS_FILE, "a checksum list")?)
    } else {
        None
    };
    let mut sums_by: Vec<String> = Vec::new();
    if let Some(text) = &sums_text {
        for sp in signatures_of(&sums) {
            let sig = parse_sig(&sp)?;
            match verify(&sig, &p.keys, &mut &text[..]) {
                Outcome::Good(who) => {
                    sums_by.push(format!("{} (signature {})", sums.display(), who))
                }
                Outcome::NoKey(why) => p.report.unchecked.push(format!("{}: {why}", sp.display())),
                Outcome::Bad(why) => bail!(
                    "BAD SIGNATURE: {} over {} {why}; nothing was written",
                    sp.display(),
                    sums.display()
                ),
            }
        }
    }
    let signed = !sums_by.is_empty();
    let lookup = |name: &str| -> Option<[u8; 32]> {
        let text = String::from_utf8_lossy(sums_text.as_deref()?).into_owned();
        text.lines().find_map(|l| {
            let (h, n) = l.split_once(char::is_whitespace)?;
            let n = n.trim_start().trim_start_matches('*');
            (n == name).then(|| unhex32(h)).flatten()
        })
    };
    let file_name = src
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    if sums_text.is_some() {
        let found = match lookup(&file_name) {
            Some(w) => Some((w, Over::File, src_name.clone())),
            None => image_name
                .and_then(&lookup)
                .map(|w| (w, Over::Image, inner.clone())),
        };
        match found {
            Some((want, over, what)) => {
                if signed {
                    p.provable += 1;
                }
                progress.message(
                    "info",
                    &format!(
                        "{what} will be checked against {} as it is written",
                        sums.display()
                    ),
                );
                p.checks.push(Check {
                    over,
                    what: if signed {
                        format!("{what} matches {}", sums_by.join("; "))
                    } else {
                        what
                    },
                    kind: Kind::Sum {
                        want,
                        sums: sums.clone(),
                    },
                });
            }
            None if signed => p
                .report
                .unchecked
                .push(format!("{} does not list {file_name}", sums.display())),
            None => {}
        }
    }
    if let Some((bpath, bytes)) = bmap {
        let bname = bpath
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let listed = if bpath.parent() == sums.parent() {
            lookup(bname)
        } else {
            None
        };
        if let Some(want) = listed {
            let got = sha256(bytes)?;
            if got != want {
                bail!(
                    "CHECKSUM MISMATCH: {} lists SHA-256 {} for the block map {}, but it is {}; the bmap is damaged or was altered; nothing was written",
                    sums.display(),
                    hex(&want),
                    bpath.display(),
                    hex(&got)
                );
            }
            if signed {
                p.bmap_verified = Some(format!(
                    "{} matches {}",
                    bpath.display(),
                    sums_by.join("; ")
                ));
            }
        }
        for sp in signatures_of(bpath) {
            let sig = parse_sig(&sp)?;
            match verify(&sig, &p.keys, &mut &bytes[..]) {
                Outcome::Good(who) => {
                    p.bmap_verified = Some(format!(
                        "{} (signature {}) by {who}",
                        bpath.display(),
                        sp.display()
                    ))
                }
                Outcome::NoKey(why) => p.report.unchecked.push(format!("{}: {why}", sp.display())),
                Outcome::Bad(why) => bail!(
                    "BAD SIGNATURE: {} over the block map {} {why}; nothing was written",
                    sp.display(),
                    bpath.display()
                ),
            }
        }
    }
    Ok(p)
}

impl Plan {
    fn add_signature(&mut self, sp: &Path, over: Over, what: &str) -> Result<()> {
        let sig = parse_sig(sp)?;
        if has_key(&sig, &self.keys) {
            self.provable += 1;
            self.checks.push(Check {
                over,
                what: what.to_string(),
                kind: Kind::Signature {
                    sig,
                    file: sp.to_path_buf(),
                },
            });
        } else if let Outcome::NoKey(why) = verify(&sig, &self.keys, &mut std::io::empty()) {
            self.report
                .unchecked
                .push(format!("{}: {why}", sp.display()));
        } else {
            self.report.unchecked.push(format!(
                "{}: made by a key that was not given",
                sp.display()
            ));
        }
        Ok(())
    }

    /// Whether any check reads the source file's own bytes.
    pub fn needs_file_bytes(&self) -> bool {
        self.checks.iter().any(|c| c.over == Over::File)
    }

    /// Starts the streamed checks: those over the source file listen on `file`, those
    /// over the image on `image`.
    pub fn start(self, file: &mut Tap, image: &mut Tap) -> Running {
        let mut running = Vec::new();
        for c in self.checks {
            let tap = match c.over {
                Over::File => &mut *file,
                Over::Image => &mut *image,
            };
            let keys = self.keys.clone();
            let handle = match &c.kind {
                Kind::Signature { sig, .. } => {
                    let sig = sig.clone();
                    tap.spawn(move |r| verify(&sig, &keys, r))
                }
                Kind::Sum { want, .. } => {
                    let want = *want;
                    tap.spawn(move |r| match sha256(r) {
                        Ok(got) if got == want => Outcome::Good(String::new()),
                        Ok(got) => Outcome::Bad(format!(
                            "lists SHA-256 {} but the bytes written hash to {}",
                            hex(&want),
                            hex(&got)
                        )),
                        Err(e) => Outcome::Bad(format!("reading: {e}")),
                    })
                }
            };
            running.push((c, handle));
        }
        Running {
            running,
            report: self.report,
        }
    }
}

/// Checks running on the write's streams.
pub struct Running {
    running: Vec<(Check, JoinHandle<Outcome>)>,
    report: Report,
}

impl Running {
    /// Waits for every check (the taps must have been dropped) and returns the report,
    /// or the first failure.
    pub fn finish(self) -> Result<Report> {
        let mut report = self.report;
        for (c, h) in self.running {
            let o = h
                .join()
                .unwrap_or_else(|_| Outcome::Bad("the checking thread panicked".into()));
            match (&c.kind, o) {
                (Kind::Signature { file, .. }, Outcome::Good(who)) => report.good.push(format!(
                    "{} (signature {}) by {who}",
                    c.what,
                    file.display()
                )),
                (Kind::Signature { file, .. }, Outcome::NoKey(why)) => {
                    report.unchecked.push(format!("{}: {why}", file.display()))
                }
                (Kind::Signature { file, .. }, Outcome::Bad(why)) => {
                    bail!("BAD SIGNATURE: {} over {} {why}", file.display(), c.what)
                }
                (Kind::Sum { sums, .. }, Outcome::Good(_)) => {
                    if c.what.contains(" matches ") {
                        report.good.push(c.what.clone());
                    } else {
                        report.unchecked.push(format!(
                            "{} matches {}, but that file is not signed by a given key",
                            c.what,
                            sums.display()
                        ));
                    }
                }
                (Kind::Sum { sums, .. }, Outcome::Bad(why) | Outcome::NoKey(why)) => bail!(
                    "CHECKSUM MISMATCH: {} {why} for {}; the download is damaged or was altered",
                    sums.display(),
                    c.what
                ),
            }
        }
        Ok(report)
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;
    use base64::Engine as _;
    use oneimage_format::testing::{Fuzz, Mutator};

    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    /// Signatures and keys made by gpg, minisign and signify over `DATA`.
    const DATA: &[u8] = include_bytes!("testdata/data");
    const SIGNATURES: [&[u8]; 6] = [
        include_bytes!("testdata/data.ed.asc"),
        include_bytes!("testdata/data.rsa.sig"),
        include_bytes!("testdata/data.minisig"),
        include_bytes!("testdata/data.legacy.minisig"),
        include_bytes!("testdata/data.signify.sig"),
        include_bytes!("testdata/data.signify-e.sig"),
    ];
    const KEYRINGS: [&[u8]; 2] = [
        include_bytes!("testdata/keyring.asc"),
        include_bytes!("testdata/keyring.gpg"),
    ];
    const ED_KEYS: [&[u8]; 2] = [
        include_bytes!("testdata/mini.pub"),
        include_bytes!("testdata/signify.pub"),
    ];

    fn keys() -> Keys {
        Keys {
            openpgp: KEYRINGS
                .iter()
                .flat_map(|k| openpgp::parse_keyring(k).unwrap())
                .collect(),
            ed25519: ED_KEYS
                .iter()
                .map(|k| ed25519::parse_key(k, "key").unwrap())
                .collect(),
        }
    }

    /// As `parse_sig` tells the kinds apart.
    fn parse(bytes: &[u8]) -> Result<Sig> {
        if bytes.starts_with(b"untrusted comment:") {
            ed25519::parse(bytes).map(Sig::Ed)
        } else {
            openpgp::parse(bytes).map(Sig::OpenPgp)
        }
    }

    /// `text` with the payload of its base64 (its armor body, or one of its base64
    /// lines) mutated and encoded again, so mutations reach the packets and fields
    /// behind the encoding, not only the encoding. Binary input is mutated as it is.
    fn mutate_inside(m: &mut Mutator, input: &[u8]) -> Vec<u8> {
        let Ok(text) = std::str::from_utf8(input) else {
            return m.mutate(input);
        };
        if let Some(body) = text.split_once("\n\n").map(|(_, b)| b) {
            // ASCII armor: the body up to the checksum or END line.
            let b64: String = body
                .lines()
                .take_while(|l| !l.starts_with('=') && !l.starts_with("-----"))
                .collect();
            let Ok(raw) = B64.decode(&b64) else {
                return m.mutate(input);
            };
            let enc = B64.encode(m.mutate(&raw));
            let lines: Vec<&str> = enc
                .as_bytes()
                .chunks(64)
                .map(|c| std::str::from_utf8(c).unwrap())
                .collect();
            let (head, _) = text.split_once("\n\n").unwrap();
            let kind = head.trim_start_matches("-----BEGIN ");
            return format!("{head}\n\n{}\n-----END {kind}\n", lines.join("\n")).into_bytes();
        }
        let mut lines: Vec<String> = text.lines().map(String::from).collect();
        let b64_lines: Vec<usize> = (0..lines.len())
            .filter(|&i| !lines[i].contains(' ') && B64.decode(&lines[i]).is_ok())
            .collect();
        if b64_lines.is_empty() {
            return m.mutate(input);
        }
        let i = *m.rng.pick(&b64_lines);
        let raw = B64.decode(&lines[i]).unwrap();
        lines[i] = B64.encode(m.mutate(&raw));
        (lines.join("\n") + "\n").into_bytes()
    }

    #[test]
    fn the_fixtures_verify() {
        let keys = keys();
        for s in SIGNATURES {
            let sig = parse(s).unwrap();
            assert!(has_key(&sig, &keys));
            assert!(matches!(
                verify(&sig, &keys, &mut &DATA[..]),
                Outcome::Good(_)
            ));
        }
    }

    /// Mutated OpenPGP (armored and binary), minisign and signify signatures, inside
    /// their encoding and out: parsing, finding the key and verifying over the signed
    /// data never panic. Whatever still verifies as good was only changed where the
    /// signature does not look (an armor header, a comment, unhashed subpackets).
    #[test]
    fn fuzz_signature_files() {
        let keys = keys();
        let report = Fuzz::new("fuzz_signature_files").run(
            |m, case| {
                let base = SIGNATURES[case as usize % SIGNATURES.len()];
                if m.rng.one_in(2) {
                    mutate_inside(m, base)
                } else {
                    m.mutate(base)
                }
            },
            |input| {
                let Ok(sig) = parse(input) else { return false };
                let _ = has_key(&sig, &keys);
                let _ = verify(&sig, &keys, &mut &DATA[..]);
                let _ = verify(&sig, &keys, &mut &b"other data"[..]);
                let _ = verify(&sig, &Keys::default(), &mut &DATA[..]);
                true
            },
        );
        assert!(
            report.accepted > 500 && report.accepted < report.cases,
            "{report:?}"
        );
    }

    /// Mutated keyrings (armored and binary) and minisign and signify public keys:
    /// loading never panics, and a key that loads checks the real signatures without
    /// panicking either.
    #[test]
    fn fuzz_key_files() {
        let report = Fuzz::new("fuzz_key_files").run(
            |m, case| {
                let all: Vec<&[u8]> = KEYRINGS.iter().chain(&ED_KEYS).copied().collect();
                let base = all[case as usize % all.len()];
                if m.rng.one_in(2) {
                    mutate_inside(m, base)
                } else {
                    m.mutate(base)
                }
            },
            |input| {
                let keys = Keys {
                    openpgp: openpgp::parse_keyring(input).unwrap_or_default(),
                    ed25519: ed25519::parse_key(input, "fuzz").into_iter().collect(),
                };
                if keys.openpgp.is_empty() && keys.ed25519.is_empty() {
                    return false;
                }
                for s in SIGNATURES {
                    let sig = parse(s).unwrap();
                    let _ = has_key(&sig, &keys);
                    let _ = verify(&sig, &keys, &mut &DATA[..]);
                }
                true
            },
        );
        assert!(
            report.accepted > 500 && report.accepted < report.cases,
            "{report:?}"
        );
    }

    /// A legacy minisign signature is checked over data held in memory whole: over
    /// more than LEGACY_MAX it is refused with the reason, after reading no more than
    /// that. It used to read the whole image into memory.
    #[test]
    fn legacy_minisign_over_an_image_is_refused() {
        let keys = keys();
        let sig = parse(SIGNATURES[3]).unwrap();
        let mut big = std::io::repeat(0).take(ed25519::LEGACY_MAX + 4096);
        match verify(&sig, &keys, &mut big) {
            Outcome::Bad(why) => assert!(why.contains("legacy minisign"), "{why}"),
            _ => panic!("accepted"),
        }
        assert_eq!(big.limit(), 4095, "read one byte past the limit, no more");
    }

    /// Signature and key files found next to a download can be any size: a large one is
    /// refused by its size, not read whole.
    #[test]
    fn large_signature_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.img.asc");
        let f = std::fs::File::create(&p).unwrap();
        f.set_len(MAX_SIG_FILE + 1).unwrap();
        let Err(e) = parse_sig(&p) else {
            panic!("read")
        };
        let e = format!("{e:#}");
        assert!(e.contains("too large for a signature"), "{e}");
        let e = format!("{:#}", ed25519::load_key(&p).unwrap_err());
        assert!(e.contains("too large for a public key"), "{e}");
    }
}
