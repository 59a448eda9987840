//! Signature checks, all done before the first byte is written. A signature may cover
//! the file as given (`x.img.xz.asc`), the image inside it (`x.img.sig`), or a
//! `SHA256SUMS` file next to it (`SHA256SUMS.asc`) that lists either of them.
//! OpenPGP, minisign and signify are recognised by content.

pub mod ed25519;
pub mod openpgp;

use crate::progress::Progress;
use crate::source::{self, Source};
use anyhow::{bail, Context, Result};
use oneimage_format::hash::hex;
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

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

enum Sig {
    OpenPgp(Vec<pgp::composed::DetachedSignature>),
    Ed(ed25519::EdSig),
}

fn parse_sig(path: &Path) -> Result<Sig> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
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

/// Finds and checks every signature that applies to `src`; `explicit` are signature
/// files given by the user for the source file. A bad signature is an error.
pub fn check(
    src: &Source,
    keys: &Keys,
    explicit: &[PathBuf],
    threads: usize,
    progress: &mut Progress,
) -> Result<Report> {
    let mut report = Report::default();
    let file_sigs: Vec<PathBuf> = explicit
        .iter()
        .cloned()
        .chain(
            SUFFIXES
                .iter()
                .map(|s| with_suffix(&src.path, s))
                .filter(|p| p.is_file()),
        )
        .collect();
    for sp in &file_sigs {
        let sig = parse_sig(sp)?;
        let mut f = open_hashing(&src.path)?;
        progress.message(
            "info",
            &format!(
                "checking signature {} over {}",
                sp.display(),
                src.path.display()
            ),
        );
        record(
            &mut report,
            sp,
            &src.path.display().to_string(),
            verify(&sig, keys, &mut f),
        )?;
    }
    let image_name = src
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(source::strip_compression_suffix)
        .filter(|_| src.format != source::Format::Raw);
    if let Some(name) = image_name {
        let img = src.path.with_file_name(name);
        for sp in SUFFIXES
            .iter()
            .map(|s| with_suffix(&img, s))
            .filter(|p| p.is_file())
        {
            let sig = parse_sig(&sp)?;
            progress.message(
                "info",
                &format!(
                    "checking signature {} over the image inside {} (decompressing once first)",
                    sp.display(),
                    src.path.display()
                ),
            );
            let mut r = src.reader(threads)?;
            record(
                &mut report,
                &sp,
                &format!("the image in {}", src.path.display()),
                verify(&sig, keys, &mut r),
            )?;
        }
    }
    let sums = src.path.with_file_name("SHA256SUMS");
    if sums.is_file() {
        check_sums(src, &sums, image_name, keys, threads, progress, &mut report)?;
    }
    Ok(report)
}

fn record(report: &mut Report, sig: &Path, what: &str, o: Outcome) -> Result<()> {
    match o {
        Outcome::Good(who) => {
            report
                .good
                .push(format!("{} (signature {}) by {who}", what, sig.display()));
            Ok(())
        }
        Outcome::NoKey(why) => {
            report.unchecked.push(format!("{}: {why}", sig.display()));
            Ok(())
        }
        Outcome::Bad(why) => bail!(
            "BAD SIGNATURE: {} over {what} {why}; nothing was written",
            sig.display()
        ),
    }
}

fn open_hashing(p: &Path) -> Result<BufReader<File>> {
    Ok(BufReader::with_capacity(
        1 << 20,
        File::open(p).with_context(|| format!("opening {}", p.display()))?,
    ))
}

fn check_sums(
    src: &Source,
    sums: &Path,
    image_name: Option<&str>,
    keys: &Keys,
    threads: usize,
    progress: &mut Progress,
    report: &mut Report,
) -> Result<()> {
    let text = std::fs::read(sums).with_context(|| format!("reading {}", sums.display()))?;
    let sigs: Vec<PathBuf> = SUFFIXES
        .iter()
        .map(|s| with_suffix(sums, s))
        .filter(|p| p.is_file())
        .collect();
    let mut sums_report = Report::default();
    for sp in &sigs {
        let sig = parse_sig(sp)?;
        record(
            &mut sums_report,
            sp,
            &sums.display().to_string(),
            verify(&sig, keys, &mut &text[..]),
        )?;
    }
    report.unchecked.extend(sums_report.unchecked);
    let signed = !sums_report.good.is_empty();
    let text = String::from_utf8_lossy(&text);
    let lookup = |name: &str| -> Option<[u8; 32]> {
        text.lines().find_map(|l| {
            let (h, n) = l.split_once(char::is_whitespace)?;
            let n = n.trim_start().trim_start_matches('*');
            (n == name)
                .then(|| oneimage_format::hash::unhex32(h))
                .flatten()
        })
    };
    let file_name = src
        .path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let (want, what, actual) = if let Some(w) = lookup(file_name) {
        progress.message(
            "info",
            &format!("checking {} against {}", src.path.display(), sums.display()),
        );
        (
            w,
            src.path.display().to_string(),
            oneimage_format::hash::sha256(open_hashing(&src.path)?)?,
        )
    } else if let Some(w) = image_name.and_then(lookup) {
        progress.message(
            "info",
            &format!(
                "checking the image in {} against {} (decompressing once first)",
                src.path.display(),
                sums.display()
            ),
        );
        (
            w,
            format!("the image in {}", src.path.display()),
            oneimage_format::hash::sha256(src.reader(threads)?)?,
        )
    } else {
        if signed {
            report
                .unchecked
                .push(format!("{} does not list {file_name}", sums.display()));
        }
        return Ok(());
    };
    if want != actual {
        bail!(
            "CHECKSUM MISMATCH: {} lists SHA-256 {} for {what}, but it is {}; the download is damaged or was altered; nothing was written",
            sums.display(),
            hex(&want),
            hex(&actual)
        );
    }
    if signed {
        report
            .good
            .push(format!("{what} matches {}", sums_report.good.join("; ")));
    } else {
        report.unchecked.push(format!(
            "{what} matches {}, but that file is not signed by a given key",
            sums.display()
        ));
    }
    Ok(())
}
