//! oneimage's own initramfs, generated from the image's root filesystem (at build time)
//! or from the running system (on a kernel update): the agent `oneimage-init` as
//! `/init`, the kernel modules the boot needs (with their dependencies, from
//! `modules.dep`, decompressed), and the tools the agent runs (`e2fsck`, an emergency
//! `/bin/sh`) with their shared libraries. No root, no chroot.

use crate::rootfs::{Kind, Tree};
use anyhow::{bail, Context, Result};
use oneimage_format::arch::Arch;
use oneimage_format::cpio::{CpioKind, CpioWriter};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::{Path, PathBuf};

/// Modules the boot may need, by name; missing or built-in ones are skipped.
/// crc32c comes first: ext4's metadata checksums need it and nothing loads it on demand.
pub const WANTED_MODULES: &[&str] = &[
    "crc32c_generic",
    "crc32c_intel",
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "scsi_mod",
    "sd_mod",
    "sr_mod",
    "ahci",
    "ata_piix",
    "nvme",
    "xhci_pci",
    "ehci_pci",
    "ohci_pci",
    "uhci_hcd",
    "usb_storage",
    "uas",
    // A keyboard for the emergency shell: USB HID (Debian builds hid, usbhid and the host
    // controllers above as modules; the PS/2 keyboard, atkbd and i8042, is built in, but
    // not in every kernel), with the drivers of common keyboards that hid_generic does
    // not drive (Logitech receivers, Apple, Microsoft, Lenovo, Cherry, Chicony).
    "hid",
    "usbhid",
    "hid_generic",
    "hid_logitech_dj",
    "hid_logitech_hidpp",
    "hid_apple",
    "hid_microsoft",
    "hid_lenovo",
    "hid_cherry",
    "hid_chicony",
    "i8042",
    "atkbd",
    "mmc_block",
    "sdhci_pci",
    "sdhci_acpi",
    "ext4",
    "vfat",
    "nls_cp437",
    "nls_iso8859_1",
    "nls_ascii",
    "isofs",
    "squashfs",
    "erofs",
    "overlay",
    "loop",
];

/// Modules of [`WANTED_MODULES`] that only PCs have (Intel's CRC32 instruction, legacy
/// IDE, the PS/2 keyboard controller).
const X86_ONLY_MODULES: &[&str] = &["crc32c_intel", "ata_piix", "i8042", "atkbd", "aesni_intel"];

/// Modules arm64 machines add: virtio on the MMIO bus (Arm's virt machine can use it),
/// and USB and SATA controllers that sit on the system bus rather than PCI.
const ARM64_MODULES: &[&str] = &["virtio_mmio", "xhci_plat_hcd", "ahci_platform"];

/// The modules an `arch` initramfs wants, in load order (with those of encryption
/// when `encryption`).
pub fn wanted_modules(arch: Arch, encryption: bool) -> Vec<&'static str> {
    let extra: &[&str] = if encryption { ENCRYPTION_MODULES } else { &[] };
    let mut v: Vec<&str> = WANTED_MODULES
        .iter()
        .chain(extra)
        .copied()
        .filter(|m| arch == Arch::X86_64 || !X86_ONLY_MODULES.contains(m))
        .collect();
    if arch == Arch::Arm64 {
        v.extend(ARM64_MODULES);
    }
    v
}

/// Programs copied from the root filesystem when present: (path in the root, path in the
/// initramfs).
/// e2fsck checks the root; tune2fs gives a copy's root filesystem its own UUID; mke2fs
/// expands a compressed root into ext4, and unsquashfs or fsck.erofs (in a root that has
/// them: the builder installs squashfs-tools in a SquashFS root, erofs-utils in an EROFS
/// one) fill it.
const TOOLS: &[(&str, &str)] = &[
    ("/sbin/e2fsck", "/sbin/e2fsck"),
    ("/sbin/tune2fs", "/sbin/tune2fs"),
    ("/sbin/mke2fs", "/sbin/mke2fs"),
    ("/usr/bin/unsquashfs", "/sbin/unsquashfs"),
    ("/usr/bin/fsck.erofs", "/sbin/fsck.erofs"),
    ("/bin/sh", "/bin/sh"),
];

/// What an image that may be encrypted adds: cryptsetup (required, from the root
/// filesystem; its libraries come with it) ...
const ENCRYPTION_TOOL: (&str, &str) = ("/sbin/cryptsetup", "/sbin/cryptsetup");

/// ... and the kernel's pieces of aes-xts-plain64 under dm-crypt, which the kernel
/// would otherwise ask a modprobe for (there is none in the initramfs), and the socket
/// interface cryptsetup uses for its own encryption of keyslots.
pub const ENCRYPTION_MODULES: &[&str] = &[
    "dm_mod",
    "dm_crypt",
    "ecb",
    "xts",
    "cryptd",
    "crypto_simd",
    "aesni_intel",
    "af_alg",
    "algif_skcipher",
    "algif_hash",
];

/// Names under which the emergency shell finds the agent again: it restarts or powers
/// off the machine when started as one of them.
const AGENT_LINKS: &[&str] = &["/bin/reboot", "/bin/poweroff"];

/// Directories searched for shared libraries, as the dynamic loader does, for a program
/// of `arch`.
fn lib_dirs(arch: Arch) -> [String; 6] {
    let m = arch.multiarch();
    [
        format!("/usr/lib/{m}"),
        format!("/lib/{m}"),
        "/usr/lib64".into(),
        "/lib64".into(),
        "/usr/lib".into(),
        "/lib".into(),
    ]
}

/// Where an initramfs takes its files from.
pub trait RootFiles {
    /// The regular file `path` (absolute) names, symlinks on the way followed inside the
    /// root, or `None` when it names nothing or something else.
    fn file(&self, path: &str) -> Option<PathBuf>;
    /// `path` with symlinks resolved, if it names a directory.
    fn dir(&self, path: &str) -> Option<String>;
}

impl RootFiles for Tree {
    fn file(&self, path: &str) -> Option<PathBuf> {
        Tree::file(self, path)
    }
    fn dir(&self, path: &str) -> Option<String> {
        self.resolve_path(path)
            .filter(|r| matches!(self.entries.get(r).map(|e| &e.kind), Some(Kind::Dir)))
    }
}

/// The root filesystem of the running system, `/`: what a kernel update reads.
pub struct RunningSystem;

impl RootFiles for RunningSystem {
    fn file(&self, path: &str) -> Option<PathBuf> {
        let p = PathBuf::from(path);
        std::fs::metadata(&p).ok()?.is_file().then_some(p)
    }
    fn dir(&self, path: &str) -> Option<String> {
        let real = std::fs::canonicalize(path).ok()?;
        std::fs::metadata(&real)
            .ok()?
            .is_dir()
            .then(|| real.to_string_lossy().into_owned())
    }
}

/// What went into an initramfs, for the build log.
pub struct Summary {
    /// Modules included, in load order.
    pub modules: Vec<String>,
    /// Wanted modules neither found nor built into the kernel.
    pub missing: Vec<String>,
    /// Programs included.
    pub tools: Vec<String>,
}

fn module_name(path: &str) -> String {
    let base = path.rsplit('/').next().unwrap_or(path);
    let base = base.split(".ko").next().unwrap_or(base);
    base.replace('-', "_")
}

/// The largest kernel module read (decompressed): Debian's largest are a few MiB; a
/// root filesystem that claims more (a decompression bomb) is refused.
const MAX_MODULE_BYTES: u64 = 256 << 20;

/// Reads a module from the tree, decompressing `.ko.xz`, `.ko.zst` and `.ko.gz` (told by
/// their content, as every decompression in oneimage is).
fn read_module(path: &Path) -> Result<Vec<u8>> {
    use oneimage_format::compression::{sniff, Compression};
    let raw = std::fs::read(path).with_context(|| format!("reading module {}", path.display()))?;
    let decoder: Box<dyn Read + '_> = match sniff(&raw) {
        Compression::None => return Ok(raw),
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new(&raw[..])),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(&raw[..])?),
        Compression::Gzip => Box::new(flate2::read::GzDecoder::new(&raw[..])),
        c => bail!(
            "module {}: {} compression is not one the kernel loads",
            path.display(),
            c.name()
        ),
    };
    let mut out = Vec::new();
    decoder
        .take(MAX_MODULE_BYTES + 1)
        .read_to_end(&mut out)
        .with_context(|| format!("decompressing module {}", path.display()))?;
    if out.len() as u64 > MAX_MODULE_BYTES {
        bail!(
            "module {}: more than {} MiB decompressed; refusing it",
            path.display(),
            MAX_MODULE_BYTES >> 20
        );
    }
    Ok(out)
}

/// Everything the initramfs will hold, by path.
#[derive(Default)]
struct Contents {
    dirs: BTreeSet<String>,
    files: BTreeMap<String, (u32, Vec<u8>)>,
}

impl Contents {
    fn add_file(&mut self, path: &str, perm: u32, data: Vec<u8>) {
        let mut p = Path::new(path).parent();
        while let Some(d) = p {
            let s = d.to_string_lossy();
            if s != "/" {
                self.dirs.insert(s.into_owned());
            }
            p = d.parent();
        }
        self.files.insert(path.to_string(), (perm, data));
    }
}

/// Adds `program` (a path in the tree) as `dest`, with its interpreter and libraries.
fn add_program(
    tree: &dyn RootFiles,
    c: &mut Contents,
    program: &str,
    dest: &str,
    arch: Arch,
) -> Result<bool> {
    let Some(file) = tree.file(program) else {
        return Ok(false);
    };
    let data = std::fs::read(file).with_context(|| format!("reading {program}"))?;
    let mut queue = vec![data.clone()];
    c.add_file(dest, 0o755, data);
    while let Some(bin) = queue.pop() {
        let Some(needs) = oneimage_format::elf::needs(&bin) else {
            continue;
        };
        let mut wanted: Vec<(String, String)> = Vec::new();
        if let Some(interp) = needs.interpreter {
            wanted.push((interp.clone(), interp));
        }
        for lib in needs.libraries {
            let found = lib_dirs(arch)
                .iter()
                .map(|d| format!("{d}/{lib}"))
                .find(|p| tree.file(p).is_some());
            match found {
                Some(p) => wanted.push((p.clone(), format!("/usr/lib/{}/{lib}", arch.multiarch()))),
                None => bail!("{program} needs {lib}, which the root filesystem does not have"),
            }
        }
        for (src, dst) in wanted {
            if c.files.contains_key(&dst) {
                continue;
            }
            let file = tree
                .file(&src)
                .with_context(|| format!("{program} needs {src}, which is not a file there"))?;
            let lib = std::fs::read(file).with_context(|| format!("reading {src}"))?;
            queue.push(lib.clone());
            c.add_file(&dst, 0o755, lib);
        }
    }
    Ok(true)
}

/// Adds the wanted modules of `moddir` with their dependencies; returns the load list,
/// the module names in load order and the wanted modules that are neither there nor
/// built in.
fn add_modules(
    tree: &dyn RootFiles,
    c: &mut Contents,
    arch: Arch,
    version: &str,
    moddir: &str,
    encryption: bool,
) -> Result<(String, Vec<String>, Vec<String>)> {
    let read_text = |name: &str| {
        tree.file(&format!("{moddir}/{name}"))
            .and_then(|f| std::fs::read_to_string(f).ok())
            .unwrap_or_default()
    };
    let dep_text = read_text("modules.dep");
    if dep_text.is_empty() {
        bail!("{moddir}/modules.dep is missing or empty (run depmod {version} in the root filesystem)");
    }
    let mut deps: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    for line in dep_text.lines() {
        if let Some((m, rest)) = line.split_once(':') {
            let d = rest.split_whitespace().map(str::to_string).collect();
            deps.insert(module_name(m), (m.to_string(), d));
        }
    }
    let builtin: BTreeSet<String> = read_text("modules.builtin")
        .lines()
        .map(module_name)
        .collect();
    let mut order: Vec<String> = Vec::new();
    let mut missing = Vec::new();
    fn visit(
        p: &str,
        deps: &BTreeMap<String, (String, Vec<String>)>,
        order: &mut Vec<String>,
        depth: usize,
    ) {
        if depth > 64 || order.iter().any(|o| o == p) {
            return;
        }
        if let Some((_, ds)) = deps.get(&module_name(p)) {
            for d in ds {
                visit(d, deps, order, depth + 1);
            }
        }
        order.push(p.to_string());
    }
    for want in wanted_modules(arch, encryption) {
        match deps.get(want) {
            Some((path, _)) => visit(path, &deps, &mut order, 0),
            None if builtin.contains(want) => {}
            None => missing.push(want.to_string()),
        }
    }
    let mut list = String::new();
    let mut modules = Vec::new();
    for rel in &order {
        let src = format!("{moddir}/{rel}");
        let file = tree
            .file(&src)
            .with_context(|| format!("modules.dep names {src}, which is not a file there"))?;
        let data = read_module(&file)?;
        let dest_rel = rel
            .trim_end_matches(".xz")
            .trim_end_matches(".zst")
            .trim_end_matches(".gz");
        let dest = format!("/usr/lib/modules/{version}/{dest_rel}");
        list.push_str(&dest);
        list.push('\n');
        modules.push(module_name(rel));
        c.add_file(&dest, 0o644, data);
    }
    Ok((list, modules, missing))
}

/// What an initramfs holds besides the agent, the modules and the tools every image
/// gets.
pub struct Extras {
    /// Timestamp of every file.
    pub epoch: i64,
    /// The image's encryption: anything but `off` adds cryptsetup and dm-crypt's modules.
    pub encryption: oneimage_format::encryption::Settings,
}

/// Writes the initramfs for kernel `version` of `tree`, an `arch` root filesystem, to
/// `out` (zstd-compressed cpio).
pub fn make_initramfs(
    tree: &dyn RootFiles,
    arch: Arch,
    version: &str,
    agent: &Path,
    extras: &Extras,
    out: &Path,
) -> Result<Summary> {
    let epoch = extras.epoch;
    let encryption = extras.encryption.policy.needs_cryptsetup();
    let mut c = Contents::default();
    let agent_bin =
        std::fs::read(agent).with_context(|| format!("reading the agent {}", agent.display()))?;
    match oneimage_format::elf::needs(&agent_bin) {
        Some(n) if n.interpreter.is_none() => {}
        _ => bail!(
            "{} is not a statically linked ELF program (build it with scripts/build-agent.sh)",
            agent.display()
        ),
    }
    c.add_file("/init", 0o755, agent_bin);

    let moddir = [
        format!("/usr/lib/modules/{version}"),
        format!("/lib/modules/{version}"),
    ]
    .into_iter()
    .find_map(|d| tree.dir(&d));
    let (list, modules, missing) = match moddir {
        Some(dir) => add_modules(tree, &mut c, arch, version, &dir, encryption)?,
        // A kernel with every driver built in needs no modules.
        None => (
            String::new(),
            Vec::new(),
            wanted_modules(arch, encryption)
                .iter()
                .map(|m| m.to_string())
                .collect(),
        ),
    };
    c.add_file("/etc/oneimage/modules", 0o644, list.into_bytes());
    // The expanded root gets the features the builder gives an ext4 root.
    c.add_file(
        "/etc/mke2fs.conf",
        0o644,
        crate::ext4::MKE2FS_CONF.as_bytes().to_vec(),
    );

    let mut tools = Vec::new();
    for (src, dst) in TOOLS {
        if add_program(tree, &mut c, src, dst, arch)? {
            tools.push(dst.to_string());
        }
    }
    if encryption {
        let (src, dst) = ENCRYPTION_TOOL;
        if !add_program(tree, &mut c, src, dst, arch)? {
            bail!(
                "the image asks for encryption (encryption.mode = \"{}\"), but the root filesystem has no {src}: install cryptsetup-bin in it",
                extras.encryption.policy
            );
        }
        tools.push(dst.to_string());
        c.add_file(
            oneimage_format::encryption::POLICY_PATH,
            0o644,
            extras.encryption.to_text().into_bytes(),
        );
    }

    let f = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let enc = zstd::stream::write::Encoder::new(f, 9)?;
    let mut w = CpioWriter::new(enc, epoch.clamp(0, u32::MAX as i64) as u32);
    for d in ["/bin", "/dev", "/proc", "/sys", "/run", "/sysroot", "/tmp"] {
        c.dirs.insert(d.to_string());
    }
    for d in &c.dirs {
        w.add(d, CpioKind::Dir, 0o755, &[])?;
    }
    // The kernel opens /dev/console for /init before any devtmpfs is mounted.
    w.add("/dev/console", CpioKind::Char(5, 1), 0o600, &[])?;
    for (path, (perm, data)) in &c.files {
        w.add(path, CpioKind::File, *perm, data)?;
    }
    for link in AGENT_LINKS {
        w.add(link, CpioKind::Symlink, 0o777, b"/init")?;
    }
    w.finish()?.finish()?.sync_all()?;
    Ok(Summary {
        modules,
        missing,
        tools,
    })
}

/// Where the `oneimage-init` agent for `arch` is (see [`find_static_program`]).
pub fn find_agent(arch: Arch) -> Result<PathBuf> {
    find_static_program(
        "oneimage-init",
        "ONEIMAGE_INIT",
        "the static boot agent",
        arch,
    )
}

/// Where the statically linked `oneimage` program for `arch` that images carry is (for
/// kernel updates and `install`; see [`find_static_program`]).
pub fn find_static_tool(arch: Arch) -> Result<PathBuf> {
    find_static_program(
        "oneimage",
        "ONEIMAGE_STATIC",
        "a statically linked oneimage program",
        arch,
    )
}

/// Whether `path` is a statically linked program for `arch`.
fn is_static_for(path: &Path, arch: Arch) -> bool {
    std::fs::read(path).ok().is_some_and(|b| {
        oneimage_format::elf::machine(&b) == Some(arch.elf_machine())
            && oneimage_format::elf::needs(&b).is_some_and(|n| n.interpreter.is_none())
    })
}

/// Finds the static program `name` for `arch`: `$VAR` (x86_64) or `$VAR_ARM64` (arm64)
/// when set; else the first static program for `arch` among: next to this program (a
/// static oneimage inside an image, or an installed tool's own directory), the cargo
/// target directory's `agent/MACHINE/` and, for x86_64, `agent/` (where
/// `scripts/build-agent.sh` puts them), and an installed tool's
/// `../lib/oneimage/MACHINE/` (the Debian package's).
fn find_static_program(name: &str, var: &str, what: &str, arch: Arch) -> Result<PathBuf> {
    let var = match arch {
        Arch::X86_64 => var.to_string(),
        Arch::Arm64 => format!("{var}_ARM64"),
    };
    if let Some(p) = std::env::var_os(&var) {
        let p = PathBuf::from(p);
        if !is_static_for(&p, arch) {
            bail!(
                "${var} = {}: expected a statically linked {} program",
                p.display(),
                arch.machine()
            );
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("locating the oneimage program")?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let m = arch.machine();
    let mut candidates = vec![dir.join(name), dir.join("../agent").join(m).join(name)];
    if arch == Arch::X86_64 {
        candidates.push(dir.join("../agent").join(name));
    }
    candidates.push(dir.join("../lib/oneimage").join(m).join(name));
    if let Some(c) = candidates.iter().find(|c| is_static_for(c, arch)) {
        return Ok(c.clone());
    }
    let script = match arch {
        Arch::X86_64 => "scripts/build-agent.sh",
        Arch::Arm64 => "scripts/build-agent-aarch64.sh",
    };
    bail!(
        "{what} ({name}) for {arch} was not found (looked for ${var}, {}); build it with {script}",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn compressed_modules_are_decompressed() {
        let d = tempfile::tempdir().unwrap();
        let module = b"\x7fELF pretend module".repeat(100);
        let xz = d.path().join("a.ko.xz");
        let mut enc = liblzma::write::XzEncoder::new(std::fs::File::create(&xz).unwrap(), 6);
        enc.write_all(&module).unwrap();
        enc.finish().unwrap();
        let zst = d.path().join("b.ko.zst");
        std::fs::write(&zst, zstd::encode_all(&module[..], 3).unwrap()).unwrap();
        let plain = d.path().join("c.ko");
        std::fs::write(&plain, &module).unwrap();
        for p in [&xz, &zst, &plain] {
            assert_eq!(read_module(p).unwrap(), module, "{}", p.display());
        }
        assert_eq!(module_name("kernel/fs/ext4/ext4.ko.xz"), "ext4");
        assert_eq!(
            module_name("kernel/drivers/usb/storage/usb-storage.ko"),
            "usb_storage"
        );
    }
}
