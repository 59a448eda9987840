//! The root filesystem producer: `mkfs.ext4 -d` fills the image from the staging
//! directory, then one `debugfs` script sets what an unprivileged copy cannot carry
//! (owners, modes, device nodes, FIFOs, extended attributes) and pins every timestamp.

use crate::rootfs::{Kind, Tree};
use crate::run::{run, Cancel};
use crate::spec::SizePolicy;
use anyhow::{bail, Context, Result};
use oneimage_format::size::{align_up, format_size};
use oneimage_format::Guid;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// Everything that decides the bytes of the root filesystem besides its content.
pub struct Ext4Params<'a> {
    /// Volume label.
    pub label: &'a str,
    /// Filesystem UUID (also used as the directory hash seed).
    pub uuid: Guid,
    /// Timestamp for every time field; file mtimes are clamped to it.
    pub epoch: i64,
    /// Fixed size or content plus headroom.
    pub size: SizePolicy,
}

/// Features pinned here rather than taken from the host's /etc/mke2fs.conf, so the
/// image is the same on every build host and readable by older kernels and GRUB.
const MKE2FS_CONF: &str = "[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
\treserved_ratio = 5.0
[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,64bit,dir_nlink,extra_isize
\t}
";

const BLOCK: u64 = 4096;

/// Blocks mke2fs gives the journal for a filesystem of `blocks` blocks (its own table).
fn journal_blocks(blocks: u64) -> u64 {
    match blocks {
        0..=32767 => 1024,
        32768..=262143 => 4096,
        262144..=524287 => 8192,
        524288..=4194303 => 16384,
        4194304..=8388607 => 32768,
        8388608..=16777215 => 65536,
        16777216..=33554431 => 131072,
        _ => 262144,
    }
}

/// Content estimate: (data bytes, inodes needed).
fn estimate(tree: &Tree) -> (u64, u64) {
    let mut blocks = 0u64;
    let mut dir_bytes: std::collections::HashMap<&str, u64> = Default::default();
    for (path, e) in &tree.entries {
        match &e.kind {
            Kind::File(n) => blocks += n.div_ceil(BLOCK),
            Kind::Symlink(t) if t.as_os_str().len() >= 60 => blocks += 1,
            _ => {}
        }
        if e.xattrs
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum::<usize>()
            > 96
        {
            blocks += 1;
        }
        if let Some((parent, name)) = path.rsplit_once('/') {
            *dir_bytes.entry(parent).or_default() += 8 + align_up(name.len() as u64, 4);
        }
    }
    let dirs = tree
        .entries
        .values()
        .filter(|e| e.kind == Kind::Dir)
        .count() as u64;
    blocks += dirs;
    blocks += dir_bytes.values().map(|b| b / BLOCK).sum::<u64>();
    (blocks * BLOCK, tree.entries.len() as u64)
}

/// Bytes a filesystem needs for `data` bytes of content in `inodes` inodes.
fn minimal_bytes(data: u64, inodes: u64, headroom: u64) -> u64 {
    let mut size = data + headroom;
    for _ in 0..4 {
        let blocks = size / BLOCK;
        let n = inode_count(inodes, size);
        let meta = n * 256 + journal_blocks(blocks) * BLOCK + blocks / 64 * 2;
        size = ((data + meta) as f64 / 0.95 * 1.02) as u64 + headroom + (4 << 20);
    }
    align_up(size, 1 << 20)
}

/// Inodes to create: room for the content plus growth, never fewer than the default ratio.
fn inode_count(entries: u64, size: u64) -> u64 {
    (entries + entries / 4 + 1024).max(size / 16384)
}

/// Where a filesystem of a given size is to be made: a file and a byte offset in it.
///
/// The builder passes a function that lays out the whole disk image for that size, so
/// the filesystem is made in place inside the image instead of being copied there.
pub struct Placement {
    /// The file to write into (already at its full length).
    pub file: std::path::PathBuf,
    /// Byte offset of the filesystem in it.
    pub offset: u64,
}

/// e2fsprogs' name for "the filesystem at `offset` of `file`".
fn device_name(pl: &Placement) -> Result<String> {
    let f = pl.file.to_str().context("work path is not UTF-8")?;
    if f.contains('?') {
        bail!("the output path {f} contains '?', which e2fsprogs cannot address");
    }
    Ok(format!("{f}?offset={}", pl.offset))
}

/// Makes the ext4 root filesystem of `tree` where `place(size)` says; returns its size.
///
/// For `minimal` sizes a filesystem that turns out too full is made again, larger, at
/// the placement `place` gives for the new size.
pub fn make_ext4(
    tree: &Tree,
    p: &Ext4Params,
    work: &Path,
    mut place: impl FnMut(u64) -> Result<Placement>,
    cancel: Cancel,
) -> Result<u64> {
    let conf = work.join("mke2fs.conf");
    std::fs::write(&conf, MKE2FS_CONF).context("writing mke2fs.conf")?;
    let (data, inodes) = estimate(tree);
    let (mut size, retries) = match p.size {
        SizePolicy::Fixed(n) => (align_up(n, BLOCK), 0),
        SizePolicy::Minimal { headroom } => (minimal_bytes(data, inodes, headroom), 6),
    };
    if let SizePolicy::Fixed(n) = p.size {
        if n < data {
            bail!(
                "root.size = {} is too small: the root filesystem holds about {} of data",
                format_size(n),
                format_size(data)
            );
        }
    }
    let mut attempt = 0;
    let placement = loop {
        let pl = place(size)?;
        let uuid = p.uuid.to_string();
        let mut cmd = Command::new("mkfs.ext4");
        cmd.env("MKE2FS_CONFIG", &conf)
            .env("E2FSPROGS_FAKE_TIME", p.epoch.to_string())
            .env("SOURCE_DATE_EPOCH", p.epoch.to_string())
            .args(["-q", "-F", "-t", "ext4", "-b", "4096", "-I", "256"])
            .arg("-N")
            .arg(inode_count(inodes, size).to_string())
            .arg("-L")
            .arg(p.label)
            .arg("-U")
            .arg(&uuid)
            .arg("-E")
            // One -E only: mke2fs keeps just the last one given.
            .arg(format!(
                "hash_seed={uuid},lazy_itable_init=1,nodiscard,offset={}",
                pl.offset
            ))
            .arg("-d")
            .arg(&tree.staging)
            .arg(&pl.file)
            .arg((size / BLOCK).to_string());
        match run(&mut cmd, "making the root filesystem", cancel) {
            Ok(_) => break pl,
            Err(e) => {
                if e.is::<crate::run::Interrupted>() {
                    return Err(e);
                }
                let msg = format!("{e:#}");
                let full = msg.contains("Could not allocate")
                    || msg.contains("No space left")
                    || msg.contains("No free space")
                    || msg.contains("Could not allocate inode");
                if !full {
                    return Err(e);
                }
                if attempt >= retries {
                    bail!(
                        "the root filesystem content (about {}) does not fit in root.size = {}",
                        format_size(data),
                        format_size(size)
                    );
                }
                attempt += 1;
                size = align_up(size + size / 6, 1 << 20);
                eprintln!(
                    "oneimage: root filesystem full, retrying with {}",
                    format_size(size)
                );
            }
        }
    };
    let dev = device_name(&placement)?;
    apply_metadata(tree, p.epoch, &dev, work, cancel)?;
    let o = crate::run::output(
        Command::new("e2fsck").args(["-fn"]).arg(&dev),
        "checking the root filesystem",
        cancel,
    )?;
    // With -n, e2fsck exits 0 after declining some fixes; any declined fix is a defect.
    if !o.status.success() || String::from_utf8_lossy(&o.stdout).contains("? no") {
        bail!(
            "e2fsck found problems in the root filesystem we made:\n{}",
            crate::run::tail(&o.stdout)
        );
    }
    Ok(size)
}

/// The permission bits a staged copy of an entry has (see `rootfs::make_owner_accessible`).
fn staged_mode(kind: &Kind) -> u32 {
    match kind {
        Kind::Dir => 0o755,
        Kind::Symlink(_) => 0o777,
        _ => 0o644,
    }
}

/// Applies owners, modes, special files, extended attributes and times with debugfs.
fn apply_metadata(tree: &Tree, epoch: i64, img: &str, work: &Path, cancel: Cancel) -> Result<()> {
    let xdir = work.join("xattrs");
    std::fs::create_dir_all(&xdir)?;
    let mut s = String::new();
    let mut nx = 0usize;
    let builder = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    for (path, e) in &tree.entries {
        // debugfs's mknod links the new node into the current directory under the name
        // given, so it has to be run from the parent.
        let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
        let parent = if parent.is_empty() { "/" } else { parent };
        match e.kind {
            Kind::Hardlink(_) => continue, // same inode as its first name
            // mkfs.ext4 -d made the special files of a borrowed source directory itself.
            Kind::Char(..) | Kind::Block(..) | Kind::Fifo if tree.borrowed => {}
            Kind::Char(ma, mi) => {
                writeln!(s, "cd \"{parent}\"\nmknod \"{name}\" c {ma} {mi}\ncd /")?
            }
            Kind::Block(ma, mi) => {
                writeln!(s, "cd \"{parent}\"\nmknod \"{name}\" b {ma} {mi}\ncd /")?
            }
            Kind::Fifo => writeln!(s, "cd \"{parent}\"\nmknod \"{name}\" p\ncd /")?,
            _ => {}
        }
        // Only what mkfs.ext4 -d did not already get right is set, which keeps the
        // script short: mkfs copies owner, mode and times from the staged file, takes the
        // creation time from the fake clock, and copies a borrowed directory's xattrs.
        let special = matches!(e.kind, Kind::Char(..) | Kind::Block(..) | Kind::Fifo);
        let made_by_debugfs = special && !tree.borrowed;
        let (staged_mode, staged_uid, staged_gid) = if tree.borrowed {
            (e.mode, e.uid, e.gid)
        } else {
            (staged_mode(&e.kind), builder.0, builder.1)
        };
        // debugfs reads a bare number as a date (YYYYMMDD...) when it can; "@N" is seconds.
        let mtime = e.mtime.min(epoch);
        if made_by_debugfs || staged_mode != e.mode {
            writeln!(s, "sif \"{path}\" mode 0{:o}", e.type_bits() | e.mode)?;
        }
        if made_by_debugfs || staged_uid != e.uid {
            writeln!(s, "sif \"{path}\" uid {}", e.uid)?;
        }
        if made_by_debugfs || staged_gid != e.gid {
            writeln!(s, "sif \"{path}\" gid {}", e.gid)?;
        }
        // Staged files carry their final mtimes (see Tree::pin_times); a borrowed
        // directory's files may carry newer ones.
        if made_by_debugfs || (tree.borrowed && e.mtime > epoch) {
            writeln!(s, "sif \"{path}\" mtime @{mtime}")?;
        }
        // mkfs.ext4 -d reading a file or directory may update its access time first.
        writeln!(s, "sif \"{path}\" atime @{mtime}")?;
        writeln!(s, "sif \"{path}\" ctime @{epoch}")?;
        if made_by_debugfs {
            writeln!(s, "sif \"{path}\" crtime @{epoch}")?;
        }
        if !tree.borrowed {
            for (name, value) in &e.xattrs {
                let f = xdir.join(nx.to_string());
                nx += 1;
                std::fs::write(&f, value)?;
                writeln!(s, "ea_set -f \"{}\" \"{path}\" \"{name}\"", f.display())?;
            }
        }
    }
    for field in ["mtime", "atime", "ctime", "crtime"] {
        writeln!(s, "sif /lost+found {field} @{epoch}")?;
    }
    let script = work.join("metadata.debugfs");
    std::fs::write(&script, s)?;
    let out = run(
        // Without the fake time debugfs stamps the superblock with the wall clock.
        Command::new("debugfs")
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
            .arg("-w")
            .arg("-f")
            .arg(&script)
            .arg(img),
        "setting ownership and special files",
        cancel,
    )?;
    // debugfs exits 0 even when a command fails; its errors go to stderr.
    let errors: Vec<String> = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .map(str::to_string)
        .collect();
    if !errors.is_empty() {
        bail!(
            "debugfs could not apply metadata ({} errors), first: {}",
            errors.len(),
            errors
                .iter()
                .take(5)
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        );
    }
    // The superblock counts the kilobytes ever written, which depends on how much the
    // script above had to change (more as an ordinary user). A fresh filesystem has
    // written nothing worth counting; a separate run so its own writes are the same.
    run(
        Command::new("debugfs")
            .env("E2FSPROGS_FAKE_TIME", epoch.to_string())
            .args(["-w", "-R", "ssv kbytes_written 0"])
            .arg(img),
        "resetting the write counter",
        cancel,
    )?;
    Ok(())
}
