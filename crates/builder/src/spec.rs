//! The image spec: a TOML file, documented key by key in `docs/spec.md`.
//!
//! Parsing refuses unknown keys and wrong types (serde names the key and line);
//! [`Spec::load`] then checks values that TOML types cannot express (sizes, paths).

use anyhow::{bail, Context, Result};
use oneimage_format::arch::Arch;
use oneimage_format::encryption::Policy;
use oneimage_format::size::parse_size;
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A whole image spec as written in the TOML file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Spec {
    /// Image name: the output is `NAME.img`.
    pub name: String,
    /// Seed every GUID and UUID derives from; defaults to `name`.
    pub seed: Option<String>,
    /// Timestamp (seconds since 1970) used for every time in the image.
    pub source_date_epoch: Option<i64>,
    /// Target architecture, `x86_64` or `arm64`; default: the build host's.
    pub architecture: Option<String>,
    /// ISO 9660 volume label of the image's ISO view; default: the name in capitals.
    pub volume_label: Option<String>,
    /// Where the root filesystem comes from.
    pub rootfs: RootfsSpec,
    /// The EFI System Partition.
    #[serde(default)]
    pub esp: EspSpec,
    /// The root partition.
    #[serde(default)]
    pub root: RootSpec,
    /// Boot loader settings.
    #[serde(default)]
    pub boot: BootSpec,
    /// Download artifacts written next to the image (see docs/spec-artifacts.md).
    #[serde(default)]
    pub artifacts: oneimage_artifacts::ArtifactsSpec,
    /// Encryption of the root.
    #[serde(default)]
    pub encryption: EncryptionSpec,
}

/// `[encryption]`: whether and how a copy's root is encrypted (LUKS2).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EncryptionSpec {
    /// `off` (default), `offer`, `require` or `build-key`.
    #[serde(default)]
    pub mode: Option<String>,
    /// `build-key` only: the public passphrase the image is encrypted with (default
    /// `oneimage`).
    pub passphrase: Option<String>,
    /// Let the filesystem's discards (TRIM) through dm-crypt to the disk; off by
    /// default, since they show which blocks are unused.
    #[serde(default)]
    pub discards: bool,
}

/// `[rootfs]`: exactly one of `directory`, `tarball`, `mmdebstrap`, plus an optional overlay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RootfsSpec {
    /// A directory holding the root filesystem.
    pub directory: Option<PathBuf>,
    /// A tarball (plain, gzip, xz or zstd) of the root filesystem.
    pub tarball: Option<PathBuf>,
    /// Build the root filesystem with mmdebstrap.
    pub mmdebstrap: Option<MmdebstrapSpec>,
    /// A directory copied over the root filesystem; its files are owned by root.
    pub overlay: Option<PathBuf>,
}

/// `[rootfs.mmdebstrap]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct MmdebstrapSpec {
    /// Debian suite, e.g. `bookworm`.
    pub suite: String,
    /// mmdebstrap variant, default `minbase`.
    #[serde(default = "default_variant")]
    pub variant: String,
    /// Extra packages to install.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Archive components, default `["main"]`.
    #[serde(default)]
    pub components: Vec<String>,
    /// Mirror URL; default: the host's apt sources.
    pub mirror: Option<String>,
    /// Keyring file for the mirror; default: the host's apt configuration.
    pub keyring: Option<PathBuf>,
}

fn default_variant() -> String {
    "minbase".into()
}

/// `[esp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct EspSpec {
    /// `auto` or a size such as `256M`.
    #[serde(default = "auto")]
    pub size: String,
    /// FAT volume label (at most 11 characters).
    #[serde(default = "esp_label")]
    pub label: String,
}

impl Default for EspSpec {
    fn default() -> Self {
        EspSpec {
            size: auto(),
            label: esp_label(),
        }
    }
}

fn auto() -> String {
    "auto".into()
}
fn esp_label() -> String {
    "ESP".into()
}

/// `[root]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RootSpec {
    /// `minimal` (content plus `headroom`) or a fixed size such as `4G`.
    #[serde(default = "minimal")]
    pub size: String,
    /// Free space added to a `minimal` root filesystem.
    #[serde(default = "headroom")]
    pub headroom: String,
    /// Filesystem label (at most 16 bytes).
    #[serde(default = "root_label")]
    pub label: String,
    /// Filesystem type: `ext4` (read-write), or `squashfs` or `erofs` (compressed,
    /// read-only, expanded into ext4 on a disk's first persistent boot).
    #[serde(default = "ext4")]
    pub filesystem: String,
    /// The compressor of a `squashfs` (`zstd`, the default, `xz` or `gzip`) or `erofs`
    /// (`lz4hc`, the default, or `lz4`) root.
    pub compression: Option<String>,
    /// First-boot growth on a larger disk: `fill`, `off` or the largest size.
    #[serde(default = "fill")]
    pub grow: String,
}

fn fill() -> String {
    "fill".into()
}

impl Default for RootSpec {
    fn default() -> Self {
        RootSpec {
            size: minimal(),
            headroom: headroom(),
            label: root_label(),
            filesystem: ext4(),
            compression: None,
            grow: fill(),
        }
    }
}

fn minimal() -> String {
    "minimal".into()
}
fn headroom() -> String {
    "256M".into()
}
fn root_label() -> String {
    "root".into()
}
fn ext4() -> String {
    "ext4".into()
}

/// The root filesystem's type, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootFilesystem {
    /// ext4, read-write.
    Ext4,
    /// SquashFS, read-only and compressed.
    Squashfs(SquashfsCompression),
    /// EROFS, read-only and compressed.
    Erofs(ErofsCompression),
}

/// The compressors a SquashFS root may use: those Debian's kernels read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SquashfsCompression {
    /// Zstandard at tar2sqfs's default level: small, and fast to read. (Level 19 saves
    /// about 1 % of the demo's root for three times the build time.)
    Zstd,
    /// xz: smallest, slowest to read.
    Xz,
    /// gzip: for old kernels.
    Gzip,
}

impl SquashfsCompression {
    /// The name `tar2sqfs --compressor` and the spec use.
    pub fn name(self) -> &'static str {
        match self {
            SquashfsCompression::Zstd => "zstd",
            SquashfsCompression::Xz => "xz",
            SquashfsCompression::Gzip => "gzip",
        }
    }
}

/// The compressors an EROFS root may use: those Debian 12's kernel reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErofsCompression {
    /// LZ4, high-compression encoder (same decoder).
    Lz4hc,
    /// LZ4, fast encoder.
    Lz4,
}

impl ErofsCompression {
    /// The name `mkfs.erofs -z` and the spec use.
    pub fn name(self) -> &'static str {
        match self {
            ErofsCompression::Lz4hc => "lz4hc",
            ErofsCompression::Lz4 => "lz4",
        }
    }
}

impl RootFilesystem {
    /// Reads `root.filesystem` and `root.compression`.
    pub fn parse(filesystem: &str, compression: Option<&str>) -> Result<RootFilesystem, String> {
        let bad = |c: &str, allowed: &str| {
            format!("root.compression = \"{c}\": expected one of {allowed} for root.filesystem = \"{filesystem}\"")
        };
        match filesystem {
            "ext4" => match compression {
                None => Ok(RootFilesystem::Ext4),
                Some(c) => Err(format!("root.compression = \"{c}\": an ext4 root is not compressed; remove the key, or set root.filesystem = \"squashfs\" or \"erofs\"")),
            },
            "squashfs" => Ok(RootFilesystem::Squashfs(match compression.unwrap_or("zstd") {
                "zstd" => SquashfsCompression::Zstd,
                "xz" => SquashfsCompression::Xz,
                "gzip" => SquashfsCompression::Gzip,
                c => return Err(bad(c, "\"zstd\", \"xz\", \"gzip\"")),
            })),
            "erofs" => Ok(RootFilesystem::Erofs(match compression.unwrap_or("lz4hc") {
                "lz4hc" => ErofsCompression::Lz4hc,
                "lz4" => ErofsCompression::Lz4,
                c => return Err(bad(c, "\"lz4hc\", \"lz4\"")),
            })),
            f => Err(format!("root.filesystem = \"{f}\": expected \"ext4\", \"squashfs\" or \"erofs\"")),
        }
    }

    /// Whether the root is read-only and compressed.
    pub fn is_compressed(self) -> bool {
        self != RootFilesystem::Ext4
    }

    /// The name in messages and summaries, with the compressor.
    pub fn describe(self) -> String {
        match self {
            RootFilesystem::Ext4 => "ext4".into(),
            RootFilesystem::Squashfs(c) => format!("squashfs ({})", c.name()),
            RootFilesystem::Erofs(c) => format!("erofs ({})", c.name()),
        }
    }
}

/// `[boot]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct BootSpec {
    /// Extra kernel command line, appended after `root=... rw`.
    #[serde(default)]
    pub cmdline: String,
    /// GRUB menu timeout in seconds.
    #[serde(default = "timeout")]
    pub timeout: u32,
    /// Menu entry title; default: the image name.
    pub title: Option<String>,
    /// `oneimage` (our own agent, the default) or `rootfs` (the root filesystem's own).
    #[serde(default = "initramfs")]
    pub initramfs: String,
    /// Boot through Debian's signed shim and GRUB, so the image boots with Secure Boot on.
    #[serde(default)]
    pub secure_boot: bool,
    /// Also boot on PCs with a BIOS (or UEFI's legacy mode), from disk and DVD.
    #[serde(default = "yes")]
    pub bios: bool,
}

fn yes() -> bool {
    true
}

fn initramfs() -> String {
    "oneimage".into()
}

impl Default for BootSpec {
    fn default() -> Self {
        BootSpec {
            cmdline: String::new(),
            timeout: timeout(),
            title: None,
            initramfs: initramfs(),
            secure_boot: false,
            bios: true,
        }
    }
}

fn timeout() -> u32 {
    3
}

/// Where the root filesystem comes from, resolved and checked.
#[derive(Debug, Clone)]
pub enum RootfsSource {
    /// An existing directory.
    Directory(PathBuf),
    /// An existing tarball.
    Tarball(PathBuf),
    /// To be made by mmdebstrap.
    Mmdebstrap(MmdebstrapSpec),
}

/// Size of a partition: fixed or derived from the content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SizePolicy {
    /// Exactly this many bytes.
    Fixed(u64),
    /// Content plus this many bytes of headroom.
    Minimal {
        /// Free bytes to add.
        headroom: u64,
    },
}

/// A spec after loading and checking: paths absolute, sizes in bytes.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The spec as written.
    pub spec: Spec,
    /// The architecture the image is for.
    pub arch: Arch,
    /// The spec file, for messages.
    pub path: PathBuf,
    /// Seed for identifiers.
    pub seed: String,
    /// Root filesystem source.
    pub source: RootfsSource,
    /// Overlay directory, if any.
    pub overlay: Option<PathBuf>,
    /// ESP size policy (`auto` is `Minimal`).
    pub esp_size: SizePolicy,
    /// Root size policy.
    pub root_size: SizePolicy,
    /// The root filesystem's type.
    pub root_fs: RootFilesystem,
    /// First-boot growth limit in bytes: `None` fills the disk, `Some(0)` means off.
    pub grow: Option<u64>,
    /// ISO 9660 volume label.
    pub volume_label: String,
    /// What a copy's first boot does about encrypting the root.
    pub encryption: Policy,
}

impl Checked {
    /// The public passphrase of a `build-key` image.
    pub fn build_passphrase(&self) -> &str {
        self.spec
            .encryption
            .passphrase
            .as_deref()
            .unwrap_or(DEFAULT_BUILD_PASSPHRASE)
    }
}

/// The passphrase of a `build-key` image whose spec names none.
pub const DEFAULT_BUILD_PASSPHRASE: &str = "oneimage";

impl Spec {
    /// Reads, parses and checks a spec file; relative paths are taken from its directory.
    pub fn load(path: &Path) -> Result<Checked> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading spec {}", path.display()))?;
        let spec: Spec =
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        spec.check(path)
    }

    fn check(self, path: &Path) -> Result<Checked> {
        let p = path.display();
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let resolve = |key: &str, rel: &Path, want_dir: bool| -> Result<PathBuf> {
            let abs = base.join(rel);
            let meta = std::fs::metadata(&abs).with_context(|| {
                format!(
                    "{p}: {key} = \"{}\": {} does not exist or cannot be read",
                    rel.display(),
                    abs.display()
                )
            })?;
            if want_dir && !meta.is_dir() {
                bail!("{p}: {key} = \"{}\": expected a directory", rel.display());
            }
            if !want_dir && !meta.is_file() {
                bail!("{p}: {key} = \"{}\": expected a file", rel.display());
            }
            Ok(abs)
        };
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            || self.name.starts_with('.')
        {
            bail!("{p}: name = \"{}\": expected letters, digits, '-', '_' or '.', not starting with '.'", self.name);
        }
        let arch = match &self.architecture {
            Some(a) => a
                .parse::<Arch>()
                .map_err(|e| anyhow::anyhow!("{p}: architecture = {e}"))?,
            None => Arch::host().with_context(|| {
                format!(
                    "{p}: architecture is not set, and this host ({}) is not one oneimage builds for: set \"x86_64\" or \"arm64\"",
                    std::env::consts::ARCH
                )
            })?,
        };
        oneimage_artifacts::check_spec(&self.artifacts).with_context(|| format!("{p}"))?;
        let root_fs =
            RootFilesystem::parse(&self.root.filesystem, self.root.compression.as_deref())
                .map_err(|e| anyhow::anyhow!("{p}: {e}"))?;
        if self.esp.label.is_empty() || self.esp.label.len() > 11 || !self.esp.label.is_ascii() {
            bail!(
                "{p}: esp.label = \"{}\": expected 1 to 11 ASCII characters",
                self.esp.label
            );
        }
        if !matches!(self.boot.initramfs.as_str(), "oneimage" | "rootfs") {
            bail!(
                "{p}: boot.initramfs = \"{}\": expected \"oneimage\" or \"rootfs\"",
                self.boot.initramfs
            );
        }
        let encryption = match &self.encryption.mode {
            None => Policy::Off,
            Some(m) => m
                .parse::<Policy>()
                .map_err(|e| anyhow::anyhow!("{p}: encryption.mode = {e}"))?,
        };
        match (&self.encryption.passphrase, encryption) {
            (Some(_), Policy::BuildKey) | (None, _) => {}
            (Some(_), other) => bail!(
                "{p}: encryption.passphrase is for mode = \"build-key\" (mode is \"{other}\"): the other modes ask the user on the first boot"
            ),
        }
        if let Some(pass) = &self.encryption.passphrase {
            if pass.is_empty() || pass.len() > 512 || pass.chars().any(|c| c.is_control()) {
                bail!("{p}: encryption.passphrase: expected 1 to 512 bytes without control characters");
            }
        }
        if encryption != Policy::Off {
            if root_fs.is_compressed() && encryption == Policy::BuildKey {
                bail!(
                    "{p}: encryption.mode = \"build-key\" with root.filesystem = \"{}\": a compressed root is not encrypted when built (with \"offer\" or \"require\", its first boot expands it into a LUKS2 volume)",
                    self.root.filesystem
                );
            }
            if self.boot.initramfs != "oneimage" {
                bail!(
                    "{p}: encryption.mode = \"{encryption}\" needs boot.initramfs = \"oneimage\" (oneimage's boot agent encrypts and unlocks the root)"
                );
            }
        } else if self.encryption.discards {
            bail!("{p}: encryption.discards = true without encryption: set encryption.mode");
        }
        if self.root.label.len() > 16 {
            bail!(
                "{p}: root.label = \"{}\": expected at most 16 bytes",
                self.root.label
            );
        }
        let r = &self.rootfs;
        let given = [
            r.directory.is_some(),
            r.tarball.is_some(),
            r.mmdebstrap.is_some(),
        ];
        let source = match given {
            [true, false, false] => RootfsSource::Directory(resolve(
                "rootfs.directory",
                r.directory.as_ref().unwrap(),
                true,
            )?),
            [false, true, false] => RootfsSource::Tarball(resolve(
                "rootfs.tarball",
                r.tarball.as_ref().unwrap(),
                false,
            )?),
            [false, false, true] => {
                let mut m = r.mmdebstrap.clone().unwrap();
                // The initramfs takes cryptsetup from the root filesystem.
                if encryption.needs_cryptsetup()
                    && !m
                        .packages
                        .iter()
                        .any(|p| p == "cryptsetup-bin" || p == "cryptsetup")
                {
                    m.packages.push("cryptsetup-bin".into());
                }
                // The first boot expands a SquashFS root with unsquashfs (all cores),
                // an EROFS one with fsck.erofs --extract; the initramfs takes them from
                // the root filesystem.
                let expander = match root_fs {
                    RootFilesystem::Squashfs(_) => Some("squashfs-tools"),
                    RootFilesystem::Erofs(_) => Some("erofs-utils"),
                    RootFilesystem::Ext4 => None,
                };
                if let Some(p) = expander.filter(|p| !m.packages.iter().any(|q| q == p)) {
                    m.packages.push(p.into());
                }
                if let Some(k) = &m.keyring {
                    m.keyring = Some(resolve("rootfs.mmdebstrap.keyring", k, false)?);
                }
                RootfsSource::Mmdebstrap(m)
            }
            _ => bail!(
                "{p}: [rootfs]: expected exactly one of directory, tarball or [rootfs.mmdebstrap]"
            ),
        };
        let overlay = match &r.overlay {
            Some(o) => Some(resolve("rootfs.overlay", o, true)?),
            None => None,
        };
        let size =
            |key: &str, v: &str| parse_size(v).map_err(|e| anyhow::anyhow!("{p}: {key}: {e}"));
        let esp_size = match self.esp.size.as_str() {
            "auto" => SizePolicy::Minimal { headroom: 16 << 20 },
            s => SizePolicy::Fixed(size("esp.size", s)?),
        };
        let root_size = match self.root.size.as_str() {
            "minimal" => SizePolicy::Minimal {
                headroom: size("root.headroom", &self.root.headroom)?,
            },
            s => SizePolicy::Fixed(size("root.size", s)?),
        };
        if let SizePolicy::Fixed(n) = esp_size {
            if n < 33 << 20 {
                bail!(
                    "{p}: esp.size = \"{}\": a FAT32 ESP needs at least 33M",
                    self.esp.size
                );
            }
        }
        if let SizePolicy::Fixed(n) = root_size {
            if n < 16 << 20 {
                bail!(
                    "{p}: root.size = \"{}\": expected at least 16M",
                    self.root.size
                );
            }
        }
        let grow = match self.root.grow.as_str() {
            "fill" => None,
            "off" => Some(0),
            s => Some(size("root.grow", s)?),
        };
        let volume_label = match &self.volume_label {
            Some(l) => {
                if l.is_empty()
                    || l.len() > 32
                    || !l
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
                {
                    bail!("{p}: volume-label = \"{l}\": expected 1 to 32 of A-Z, 0-9 and _");
                }
                l.clone()
            }
            None => self
                .name
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .take(32)
                .collect(),
        };
        let seed = self.seed.clone().unwrap_or_else(|| self.name.clone());
        Ok(Checked {
            arch,
            path: path.to_path_buf(),
            seed,
            source,
            overlay,
            esp_size,
            root_size,
            root_fs,
            grow,
            volume_label,
            encryption,
            spec: self,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Checked> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tree")).unwrap();
        let p = dir.path().join("s.toml");
        std::fs::write(&p, text).unwrap();
        Spec::load(&p)
    }

    #[test]
    fn compressed_roots_take_only_compressors_their_kernel_reads() {
        let root = |extra: &str| {
            load(&format!(
                "name = \"x\"\n[rootfs]\ndirectory = \"tree\"\n[root]\n{extra}"
            ))
        };
        assert_eq!(root("").unwrap().root_fs, RootFilesystem::Ext4);
        assert_eq!(
            root("filesystem = \"squashfs\"\n").unwrap().root_fs,
            RootFilesystem::Squashfs(SquashfsCompression::Zstd)
        );
        assert_eq!(
            root("filesystem = \"erofs\"\ncompression = \"lz4\"\n")
                .unwrap()
                .root_fs,
            RootFilesystem::Erofs(ErofsCompression::Lz4)
        );
        for (extra, want) in [
            (
                "filesystem = \"erofs\"\ncompression = \"zstd\"\n",
                "root.compression = \"zstd\": expected one of \"lz4hc\", \"lz4\" for root.filesystem = \"erofs\"",
            ),
            (
                "compression = \"xz\"\n",
                "an ext4 root is not compressed",
            ),
            (
                "filesystem = \"btrfs\"\n",
                "root.filesystem = \"btrfs\": expected \"ext4\", \"squashfs\" or \"erofs\"",
            ),
        ] {
            let e = format!("{:#}", root(extra).unwrap_err());
            assert!(e.contains(want) && e.contains("s.toml"), "{e}");
        }
    }

    #[test]
    fn encryption_modes_are_checked_and_bring_cryptsetup() {
        let with = |extra: &str| {
            load(&format!(
                "name = \"x\"\n[rootfs]\ndirectory = \"tree\"\n{extra}"
            ))
        };
        assert_eq!(with("").unwrap().encryption, Policy::Off);
        assert_eq!(
            with("[encryption]\nmode = \"offer\"\n").unwrap().encryption,
            Policy::Offer
        );
        let b = with("[encryption]\nmode = \"build-key\"\n").unwrap();
        assert_eq!(
            (b.encryption, b.build_passphrase()),
            (Policy::BuildKey, "oneimage")
        );
        let m = load(
            "name = \"x\"\n[rootfs.mmdebstrap]\nsuite = \"bookworm\"\npackages = [\"systemd\"]\n[encryption]\nmode = \"require\"\n",
        )
        .unwrap();
        let RootfsSource::Mmdebstrap(m) = m.source else {
            panic!("mmdebstrap")
        };
        assert_eq!(m.packages, ["systemd", "cryptsetup-bin"]);
        for (extra, want) in [
            (
                "[encryption]\nmode = \"on\"\n",
                "encryption.mode = \"on\": expected off, offer, require or build-key",
            ),
            (
                "[encryption]\nmode = \"offer\"\npassphrase = \"x\"\n",
                "encryption.passphrase is for mode = \"build-key\"",
            ),
            (
                "[encryption]\nmode = \"build-key\"\npassphrase = \"a\\nb\"\n",
                "without control characters",
            ),
            (
                "[root]\nfilesystem = \"squashfs\"\n[encryption]\nmode = \"build-key\"\n",
                "a compressed root is not encrypted when built",
            ),
            (
                "[boot]\ninitramfs = \"rootfs\"\n[encryption]\nmode = \"offer\"\n",
                "needs boot.initramfs = \"oneimage\"",
            ),
            (
                "[encryption]\ndiscards = true\n",
                "encryption.discards = true without encryption",
            ),
            ("[encryption]\nkey = \"x\"\n", "unknown field `key`"),
        ] {
            let e = format!("{:#}", with(extra).unwrap_err());
            assert!(e.contains(want) && e.contains("s.toml"), "{e}");
        }
    }

    #[test]
    fn a_compressed_root_gets_the_tool_of_its_expansion() {
        let spec = |fs: &str| {
            format!("name = \"x\"\n[rootfs.mmdebstrap]\nsuite = \"bookworm\"\npackages = [\"systemd\"]\n[root]\nfilesystem = \"{fs}\"\n")
        };
        for (fs, want) in [
            ("squashfs", vec!["systemd", "squashfs-tools"]),
            ("erofs", vec!["systemd", "erofs-utils"]),
            ("ext4", vec!["systemd"]),
        ] {
            let RootfsSource::Mmdebstrap(m) = load(&spec(fs)).unwrap().source else {
                panic!("mmdebstrap")
            };
            assert_eq!(m.packages, want, "{fs}");
        }
    }

    #[test]
    fn minimal_spec_loads_with_defaults() {
        let c = load("name = \"x\"\n[rootfs]\ndirectory = \"tree\"\n").unwrap();
        assert_eq!(c.seed, "x");
        assert_eq!(
            c.root_size,
            SizePolicy::Minimal {
                headroom: 256 << 20
            }
        );
        assert!(matches!(c.source, RootfsSource::Directory(_)));
    }

    #[test]
    fn unknown_key_is_named() {
        let e = load("name = \"x\"\nbogus = 1\n[rootfs]\ndirectory = \"tree\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("bogus"), "{e:#}");
    }

    #[test]
    fn wrong_type_is_named() {
        let e = load("name = \"x\"\n[rootfs]\ndirectory = \"tree\"\n[boot]\ntimeout = \"no\"\n")
            .unwrap_err();
        assert!(format!("{e:#}").contains("timeout"), "{e:#}");
    }

    #[test]
    fn missing_tree_and_bad_size_are_named() {
        let e = load("name = \"x\"\n[rootfs]\ndirectory = \"nope\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("rootfs.directory"), "{e:#}");
        let e = load("name = \"x\"\n[rootfs]\ndirectory = \"tree\"\n[root]\nsize = \"4X\"\n")
            .unwrap_err();
        assert!(format!("{e:#}").contains("root.size"), "{e:#}");
        let e = load("name = \"x\"\n[rootfs]\n").unwrap_err();
        assert!(format!("{e:#}").contains("exactly one"), "{e:#}");
    }
}
