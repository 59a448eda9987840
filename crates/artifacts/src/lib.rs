//! Download artifacts next to a built image: `NAME.img.zst` (zstd seekable format),
//! `NAME.img.xz` (multi-block, decodable in parallel by xz 5.4+), `NAME.img.bmap`
//! (bmap 2.0), virtual machine disks (`NAME.qcow2`, `.vmdk`, `.vhdx`, `.vdi`, `.ova`,
//! which the builder makes with qemu-img) and `SHA256SUMS`. All are written under temporary names and renamed
//! together at the end, and each depends only on the image and the settings, never on
//! time or thread count. The builder makes them after an image; `oneimage bmap` makes a
//! block map of any image.

#![warn(missing_docs)]

pub mod bmap;
pub mod vm;
pub mod zstd;

use oneimage_format::hash::{hex, sha256};

use anyhow::{bail, Context, Result};
use oneimage_format::size::parse_size;
use serde::Deserialize;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use tempfile::TempPath;

/// `[artifacts]` in the image spec (documented in `docs/spec-artifacts.md`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ArtifactsSpec {
    /// Write `NAME.img.zst` in the zstd seekable format (off by default: it is slow).
    #[serde(default)]
    pub zstd: bool,
    /// zstd level, 1 to 19.
    #[serde(default = "zstd_level")]
    pub zstd_level: i32,
    /// Uncompressed bytes per zstd frame, e.g. `4M`.
    #[serde(default = "zstd_frame_size")]
    pub zstd_frame_size: String,
    /// Write `NAME.img.xz` with independent blocks (off by default: it is slow).
    #[serde(default)]
    pub xz: bool,
    /// xz preset, 0 to 9.
    #[serde(default = "xz_level")]
    pub xz_level: u32,
    /// Uncompressed bytes per xz block, e.g. `16M`.
    #[serde(default = "xz_block_size")]
    pub xz_block_size: String,
    /// Write `NAME.img.bmap`.
    #[serde(default = "yes")]
    pub bmap: bool,
    /// Write `SHA256SUMS` covering the image and the other artifacts.
    #[serde(default = "yes")]
    pub sha256sums: bool,
    /// Virtual machine disks to make from the image, each `NAME.FORMAT` (the image's
    /// name without `.img`).
    #[serde(default)]
    pub vm_formats: Vec<vm::VmFormat>,
    /// Compress the qcow2's clusters.
    #[serde(default)]
    pub qcow2_compress: bool,
    /// Make the VMDK streamOptimized (compressed, what uploads and OVAs take).
    #[serde(default)]
    pub vmdk_stream_optimized: bool,
}

fn yes() -> bool {
    true
}
fn zstd_level() -> i32 {
    19
}
fn zstd_frame_size() -> String {
    "4M".into()
}
fn xz_level() -> u32 {
    6
}
fn xz_block_size() -> String {
    "16M".into()
}

impl Default for ArtifactsSpec {
    fn default() -> Self {
        ArtifactsSpec {
            zstd: false,
            zstd_level: zstd_level(),
            zstd_frame_size: zstd_frame_size(),
            xz: false,
            xz_level: xz_level(),
            xz_block_size: xz_block_size(),
            bmap: true,
            sha256sums: true,
            vm_formats: Vec::new(),
            qcow2_compress: false,
            vmdk_stream_optimized: false,
        }
    }
}

impl ArtifactsSpec {
    fn check(&self) -> Result<(usize, u64)> {
        if !(1..=19).contains(&self.zstd_level) {
            bail!(
                "[artifacts] zstd-level = {}: expected 1 to 19",
                self.zstd_level
            );
        }
        for (i, f) in self.vm_formats.iter().enumerate() {
            if self.vm_formats[..i].contains(f) {
                bail!("[artifacts] vm-formats: {:?} is listed twice", f.name());
            }
        }
        if self.qcow2_compress && !self.vm_formats.contains(&vm::VmFormat::Qcow2) {
            bail!("[artifacts] qcow2-compress = true: vm-formats has no \"qcow2\"");
        }
        if self.vmdk_stream_optimized && !self.vm_formats.contains(&vm::VmFormat::Vmdk) {
            bail!("[artifacts] vmdk-stream-optimized = true: vm-formats has no \"vmdk\"");
        }
        if self.xz_level > 9 {
            bail!("[artifacts] xz-level = {}: expected 0 to 9", self.xz_level);
        }
        let frame = parse_size(&self.zstd_frame_size)
            .with_context(|| format!("[artifacts] zstd-frame-size = {:?}", self.zstd_frame_size))?;
        // The writer refuses frames over 64 MiB (each decoder thread holds a few), so
        // no larger ones are made.
        let max = u64::from(oneimage_format::zstd_seekable::MAX_FRAME);
        if !(64 << 10..=max).contains(&frame) {
            bail!(
                "[artifacts] zstd-frame-size = {:?}: expected 64K to 64M",
                self.zstd_frame_size
            );
        }
        let block = parse_size(&self.xz_block_size)
            .with_context(|| format!("[artifacts] xz-block-size = {:?}", self.xz_block_size))?;
        if !(1 << 20..=1 << 30).contains(&block) {
            bail!(
                "[artifacts] xz-block-size = {:?}: expected 1M to 1G",
                self.xz_block_size
            );
        }
        Ok((frame as usize, block))
    }
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Writes what `f` produces to a temporary file in `dir`, synced; the caller names it.
fn staged_file(
    dir: &Path,
    out: &Path,
    f: impl FnOnce(&mut BufWriter<&File>) -> Result<()>,
) -> Result<(TempPath, PathBuf)> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.partial-"))
        .tempfile_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    {
        let mut w = BufWriter::with_capacity(1 << 20, tmp.as_file());
        f(&mut w).with_context(|| format!("writing {}", out.display()))?;
        w.flush()?;
    }
    tmp.as_file().sync_all()?;
    Ok((tmp.into_temp_path(), out.to_path_buf()))
}

/// A reader that fails once `cancel` is set, so a long compression or checksum stops
/// within one buffer of an interruption.
struct Watched<'a, R> {
    inner: R,
    cancel: Option<&'a AtomicBool>,
}

impl<R: Read> Read for Watched<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if is_set(self.cancel) {
            return Err(std::io::Error::other("interrupted"));
        }
        self.inner.read(buf)
    }
}

fn is_set(cancel: Option<&AtomicBool>) -> bool {
    cancel.is_some_and(|c| c.load(Ordering::SeqCst))
}

fn check(cancel: Option<&AtomicBool>) -> Result<()> {
    if is_set(cancel) {
        bail!("interrupted");
    }
    Ok(())
}

/// Artifacts made for an image, each under a temporary name: dropped, they are deleted;
/// [`Staged::commit`] gives them their final names.
#[derive(Debug)]
pub struct Staged {
    /// (temporary file, final path), `SHA256SUMS` last.
    files: Vec<(TempPath, PathBuf)>,
}

impl Staged {
    /// Renames every artifact to its final name, `SHA256SUMS` last (so it never lists a
    /// file that is not there yet); returns the final paths.
    pub fn commit(self) -> Result<Vec<PathBuf>> {
        let mut done = Vec::new();
        for (tmp, out) in self.files {
            tmp.persist(&out)
                .map_err(|e| e.error)
                .with_context(|| format!("renaming to {}", out.display()))?;
            done.push(out);
        }
        Ok(done)
    }
}

/// Checks the settings of `spec` that a spec file's parser cannot (ranges, sizes, options
/// of formats not asked for).
pub fn check_spec(spec: &ArtifactsSpec) -> Result<()> {
    spec.check().map(|_| ())
}

/// An artifact the caller made itself (the builder's virtual machine disks): a finished
/// file under a temporary name in the scratch directory, and its final path.
pub type StagedFile = (TempPath, PathBuf);

/// Makes the artifacts `spec` asks for from `image`, for an image that will be at
/// `dest`: they are named after `dest` (and `SHA256SUMS` merged with the one next to
/// `dest`), but written under temporary names in `scratch`, which must be on the same
/// filesystem as `dest`; each one started is told to `say`. `made` are artifacts the
/// caller already staged: they are committed with the others and listed in
/// `SHA256SUMS`. Fails with "interrupted" soon after `cancel` is set.
pub fn stage(
    image: &Path,
    dest: &Path,
    spec: &ArtifactsSpec,
    scratch: &Path,
    made: Vec<StagedFile>,
    say: &dyn Fn(&str),
    cancel: Option<&AtomicBool>,
) -> Result<Staged> {
    let (frame, block) = spec.check()?;
    let name = dest
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{}: not a file name", dest.display()))?
        .to_string();
    let open = || -> Result<Watched<BufReader<File>>> {
        Ok(Watched {
            inner: BufReader::with_capacity(
                1 << 20,
                File::open(image).with_context(|| format!("opening {}", image.display()))?,
            ),
            cancel,
        })
    };
    let mut files = made;
    if spec.zstd {
        check(cancel)?;
        let out = dest.with_file_name(format!("{name}.zst"));
        say(&format!(
            "compressing {} (zstd -{} seekable)",
            out.display(),
            spec.zstd_level
        ));
        files.push(staged_file(scratch, &out, |w| {
            crate::zstd::compress_seekable(open()?, w, spec.zstd_level, frame, threads())?;
            Ok(())
        })?);
    }
    if spec.xz {
        check(cancel)?;
        let out = dest.with_file_name(format!("{name}.xz"));
        say(&format!(
            "compressing {} (xz -{} multi-block)",
            out.display(),
            spec.xz_level
        ));
        files.push(staged_file(scratch, &out, |w| {
            let stream = liblzma::stream::MtStreamBuilder::new()
                .preset(spec.xz_level)
                .check(liblzma::stream::Check::Crc64)
                .block_size(block)
                .threads(threads() as u32)
                .encoder()
                .context("starting the xz encoder")?;
            let mut enc = liblzma::read::XzEncoder::new_stream(open()?, stream);
            std::io::copy(&mut enc, w)?;
            Ok(())
        })?);
    }
    if spec.bmap {
        check(cancel)?;
        let out = dest.with_file_name(format!("{name}.bmap"));
        say(&format!("writing {}", out.display()));
        let map = crate::bmap::create(image)?;
        check(cancel)?;
        files.push(staged_file(scratch, &out, |w| {
            Ok(w.write_all(map.to_xml().as_bytes())?)
        })?);
    }
    if spec.sha256sums {
        let out = dest.with_file_name("SHA256SUMS");
        let mut ours = vec![(name.clone(), hex(&sha256(open()?)?))];
        for (tmp, made) in &files {
            let h = sha256(Watched {
                inner: BufReader::with_capacity(1 << 20, File::open(tmp)?),
                cancel,
            })?;
            let n = made
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            ours.push((n, hex(&h)));
        }
        let text = merged_sums(&out, &name, ours)?;
        files.push(staged_file(scratch, &out, |w| {
            Ok(w.write_all(text.as_bytes())?)
        })?);
    }
    check(cancel)?;
    Ok(Staged { files })
}

/// Writes the artifacts `spec` asks for next to `image`; returns their paths.
pub fn emit(image: &Path, spec: &ArtifactsSpec) -> Result<Vec<PathBuf>> {
    let dir = image
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    stage(image, image, spec, dir, Vec::new(), &|_| {}, None)?.commit()
}

/// Whether `name` is `image` or one of its artifacts: `IMAGE.*`, or a virtual machine
/// disk named after the image without its extension (`NAME.qcow2` for `NAME.img`).
fn made_for(name: &str, image: &str) -> bool {
    let stem = Path::new(image)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or(image);
    name == image
        || name.starts_with(&format!("{image}."))
        || vm::VmFormat::ALL
            .iter()
            .any(|f| name == format!("{stem}.{}", f.name()))
}

/// The text of `SHA256SUMS` at `path` with `ours` (file name, hex digest) in it: lines of
/// other images built into the same directory stay while their files exist, so several
/// images can share one output directory; old lines of `image` and its artifacts
/// (`IMAGE.*`, `NAME.qcow2`...) go. Lines are sorted by file name.
fn merged_sums(path: &Path, image: &str, ours: Vec<(String, String)>) -> Result<String> {
    let mut lines: std::collections::BTreeMap<String, String> = ours.into_iter().collect();
    let dir = path.parent().unwrap_or(Path::new("."));
    if let Ok(old) = std::fs::read_to_string(path) {
        for line in old.lines() {
            let Some((digest, name)) = line.split_once("  ") else {
                continue;
            };
            let name = name.trim_start_matches('*');
            let plain = !name.contains('/') && !name.is_empty();
            if plain && !made_for(name, image) && dir.join(name).is_file() {
                lines.insert(name.to_string(), digest.to_string());
            }
        }
    }
    Ok(lines
        .iter()
        .map(|(name, digest)| format!("{digest}  {name}\n"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_of_other_images_in_the_directory_are_kept() {
        let d = tempfile::tempdir().unwrap();
        let sums = d.path().join("SHA256SUMS");
        for f in ["a.img", "a.qcow2", "b.img.xz", "b.vdi", "b.qcow2"] {
            std::fs::write(d.path().join(f), b"x").unwrap();
        }
        std::fs::write(
            &sums,
            "11  a.img\n12  a.qcow2\n22  gone.img\n33  b.img\n55  b.img.xz\n66  b.vdi\n\
             77  b.qcow2\nnot a sum line\n",
        )
        .unwrap();
        let ours = vec![
            ("b.img".into(), "44".into()),
            ("b.qcow2".into(), "88".into()),
        ];
        let text = merged_sums(&sums, "b.img", ours).unwrap();
        // a.img and its qcow2 kept (they exist), gone.img dropped, b.img and b.qcow2
        // replaced by the new digests, and b.img.xz and b.vdi, left over from an earlier
        // build of b.img, no longer listed.
        assert_eq!(text, "11  a.img\n12  a.qcow2\n44  b.img\n88  b.qcow2\n");
    }

    #[test]
    fn staged_artifacts_appear_only_on_commit_and_vanish_when_dropped() {
        let d = tempfile::tempdir().unwrap();
        let (scratch, out) = (d.path().join("work"), d.path().join("out"));
        std::fs::create_dir_all(&scratch).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        let image = scratch.join("x.img");
        std::fs::write(&image, vec![7u8; 3 << 20]).unwrap();
        let dest = out.join("x.img");
        let spec = ArtifactsSpec {
            zstd: true,
            zstd_level: 1,
            ..Default::default()
        };
        let listing = |dir: &Path| {
            let mut v: Vec<String> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            v
        };
        // Dropped before commit: nothing anywhere but the image.
        let staged = stage(&image, &dest, &spec, &scratch, Vec::new(), &|_| {}, None).unwrap();
        assert_eq!(listing(&out), Vec::<String>::new());
        drop(staged);
        assert_eq!(listing(&scratch), ["x.img"]);
        // Asked to stop: an error, and nothing left either.
        let stop = AtomicBool::new(true);
        let e = stage(
            &image,
            &dest,
            &spec,
            &scratch,
            Vec::new(),
            &|_| {},
            Some(&stop),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("interrupted"), "{e:#}");
        assert_eq!(listing(&scratch), ["x.img"]);
        // Committed: every artifact under its final name, named after `dest`.
        let staged = stage(&image, &dest, &spec, &scratch, Vec::new(), &|_| {}, None).unwrap();
        std::fs::rename(&image, &dest).unwrap();
        let made = staged.commit().unwrap();
        assert_eq!(made.last().unwrap(), &out.join("SHA256SUMS"));
        assert_eq!(
            listing(&out),
            ["SHA256SUMS", "x.img", "x.img.bmap", "x.img.zst"]
        );
        assert_eq!(listing(&scratch), Vec::<String>::new());
        let sums = std::fs::read_to_string(out.join("SHA256SUMS")).unwrap();
        let image_line = sums.lines().find(|l| l.ends_with("  x.img")).unwrap();
        let digest = hex(&sha256(File::open(&dest).unwrap()).unwrap());
        assert_eq!(image_line, format!("{digest}  x.img"));
        assert_eq!(sums.lines().count(), 3, "{sums}");
    }

    #[test]
    fn defaults_and_unknown_keys() {
        let s: ArtifactsSpec = toml::from_str("").unwrap();
        assert_eq!(s, ArtifactsSpec::default());
        assert!(!s.zstd && !s.xz && s.bmap && s.sha256sums);
        let s: ArtifactsSpec = toml::from_str("xz = true\nzstd-level = 3").unwrap();
        assert!(s.xz && !s.zstd && s.zstd_level == 3);
        let e = toml::from_str::<ArtifactsSpec>("gzip = true")
            .unwrap_err()
            .to_string();
        assert!(e.contains("gzip"), "{e}");
        let bad = ArtifactsSpec {
            zstd_level: 30,
            ..Default::default()
        };
        assert!(bad.check().unwrap_err().to_string().contains("zstd-level"));
        let s: ArtifactsSpec = toml::from_str("vm-formats = [\"qcow2\", \"ova\"]").unwrap();
        assert_eq!(s.vm_formats, [vm::VmFormat::Qcow2, vm::VmFormat::Ova]);
        let e = toml::from_str::<ArtifactsSpec>("vm-formats = [\"vbox\"]")
            .unwrap_err()
            .to_string();
        assert!(e.contains("expected one of qcow2"), "{e}");
        let twice: ArtifactsSpec = toml::from_str("vm-formats = [\"vdi\", \"vdi\"]").unwrap();
        assert!(twice.check().unwrap_err().to_string().contains("twice"));
        let orphan: ArtifactsSpec = toml::from_str("qcow2-compress = true").unwrap();
        let e = orphan.check().unwrap_err().to_string();
        assert!(
            e.contains("qcow2-compress") && e.contains("no \"qcow2\""),
            "{e}"
        );
    }

    #[test]
    fn xz_output_does_not_depend_on_threads() {
        let data: Vec<u8> = (0..3_000_000u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8 & 0x0f)
            .collect();
        let enc = |t: u32| {
            let s = liblzma::stream::MtStreamBuilder::new()
                .preset(1)
                .check(liblzma::stream::Check::Crc64)
                .block_size(1 << 20)
                .threads(t)
                .encoder()
                .unwrap();
            let mut out = Vec::new();
            std::io::copy(
                &mut liblzma::read::XzEncoder::new_stream(&data[..], s),
                &mut out,
            )
            .unwrap();
            out
        };
        assert_eq!(enc(1), enc(2));
    }
}
