//! The compressed root filesystem producers: SquashFS through `tar2sqfs`
//! (squashfs-tools-ng) and EROFS through `mkfs.erofs` (erofs-utils), both fed one tar
//! stream of the tree (`rootfs::write_tar`), so owners, modes, device nodes, hardlinks
//! and extended attributes reach them exactly as they reach the ext4 root, without root.
//!
//! `tar2sqfs` reads the stream itself. erofs-utils before 1.7 reads only a directory,
//! so the stream is unpacked under `fakeroot` (which keeps owners, device nodes and
//! extended attributes in its own table, not on the disk) and `mkfs.erofs` runs in the
//! same fakeroot session.

use crate::ext4::Placement;
use crate::rootfs::Tree;
use crate::run::{wait, Cancel};
use crate::spec::{ErofsCompression, RootFilesystem, SizePolicy, SquashfsCompression};
use anyhow::{bail, Context, Result};
use oneimage_format::size::{align_up, format_size};
use oneimage_format::Guid;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::process::{Command, Stdio};

/// Everything that decides the bytes of a compressed root besides its content.
pub struct Params {
    /// Filesystem UUID (EROFS; SquashFS has none).
    pub uuid: Guid,
    /// Timestamp for the filesystem; file mtimes are clamped to it.
    pub epoch: i64,
    /// The partition's size: `minimal` is the filesystem's own (no headroom: it is
    /// read-only), a fixed size must hold it.
    pub size: SizePolicy,
    /// Where warnings go.
    pub progress: crate::progress::Progress,
}

/// Makes the compressed root filesystem `fs` of `tree` and copies it into the image
/// where `place(partition size)` says; returns the partition size.
pub fn make(
    tree: &Tree,
    fs: RootFilesystem,
    p: &Params,
    work: &Path,
    place: impl FnOnce(u64) -> Result<Placement>,
    cancel: Cancel,
) -> Result<u64> {
    let img = work.join("root.compressed");
    let len = match fs {
        RootFilesystem::Squashfs(c) => {
            for (path, names) in squashfs_drops(tree) {
                p.progress.warn(&format!(
                    "SquashFS cannot hold {} of {} (POSIX ACLs and the system namespace); the root leaves them out (an EROFS root keeps them)",
                    names.join(", "),
                    crate::rootfs::show(&path)
                ));
            }
            make_squashfs(tree, c, p.epoch, &img, cancel)?
        }
        RootFilesystem::Erofs(c) => make_erofs(tree, c, p.uuid, p.epoch, work, &img, cancel)?,
        RootFilesystem::Ext4 => bail!("an ext4 root is made by ext4::make_ext4"),
    };
    let size = match p.size {
        SizePolicy::Minimal { .. } => align_up(len, 1 << 20),
        SizePolicy::Fixed(n) if n >= len => align_up(n, 1 << 20),
        SizePolicy::Fixed(n) => bail!(
            "root.size = {} is too small: the {} root filesystem is {}",
            format_size(n),
            fs.describe(),
            format_size(len)
        ),
    };
    let pl = place(size)?;
    let mut src =
        std::fs::File::open(&img).with_context(|| format!("opening {}", img.display()))?;
    let mut dst = std::fs::OpenOptions::new()
        .write(true)
        .open(&pl.file)
        .with_context(|| format!("opening {}", pl.file.display()))?;
    dst.seek(SeekFrom::Start(pl.offset))?;
    let copied = std::io::copy(&mut src, &mut dst)
        .with_context(|| format!("copying the root filesystem into {}", pl.file.display()))?;
    if copied != len {
        bail!("copied {copied} bytes of the {len}-byte root filesystem");
    }
    drop(src);
    std::fs::remove_file(&img).ok();
    Ok(size)
}

/// Runs `cmd` with the tar stream of `tree` on its standard input; fails with the
/// tool's last messages when it fails.
fn feed_tar(
    cmd: &mut Command,
    what: &str,
    tree: &Tree,
    epoch: i64,
    keep_xattr: &dyn Fn(&str) -> bool,
    cancel: Cancel,
) -> Result<()> {
    let mut child = cmd
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{what}: starting {:?}", cmd.get_program()))?;
    let stdin = child.stdin.take().expect("piped");
    let stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut s = Vec::new();
        let _ = std::io::Read::read_to_end(&mut std::io::BufReader::new(stderr), &mut s);
        s
    });
    let written = crate::rootfs::write_tar(
        tree,
        epoch,
        keep_xattr,
        std::io::BufWriter::with_capacity(1 << 20, stdin),
    )
    .and_then(|mut w| w.flush().context("flushing the tar stream"));
    let status = wait(&mut child, cancel)?;
    let errors = errors.join().unwrap_or_default();
    if !status.success() {
        bail!(
            "{what}: {:?} failed ({status}):\n{}",
            cmd.get_program(),
            crate::run::tail(&errors)
        );
    }
    written.with_context(|| format!("{what}: writing the root filesystem's tar stream"))?;
    Ok(())
}

/// Whether SquashFS can hold the extended attribute `name`: it has the user, trusted
/// and security namespaces only, so POSIX ACLs (`system.posix_acl_*`) cannot be kept.
pub fn squashfs_keeps(name: &str) -> bool {
    ["user.", "trusted.", "security."]
        .iter()
        .any(|ns| name.starts_with(ns))
}

/// The entries of `tree` holding extended attributes SquashFS cannot keep, with them.
pub fn squashfs_drops(tree: &Tree) -> Vec<(String, Vec<String>)> {
    tree.entries
        .iter()
        .filter_map(|(path, e)| {
            let lost: Vec<String> = e
                .xattrs
                .iter()
                .map(|(k, _)| k.clone())
                .filter(|k| !squashfs_keeps(k))
                .collect();
            (!lost.is_empty()).then(|| (path.clone(), lost))
        })
        .collect()
}

/// Makes a SquashFS image of `tree` at `out`; returns its size in bytes.
pub fn make_squashfs(
    tree: &Tree,
    compression: SquashfsCompression,
    epoch: i64,
    out: &Path,
    cancel: Cancel,
) -> Result<u64> {
    let mut cmd = Command::new("tar2sqfs");
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args(["--quiet", "--force", "--no-skip"])
        .args(["--compressor", compression.name()])
        .args(["--block-size", "131072", "--dev-block-size", "4096"])
        .arg("--defaults")
        .arg(format!("uid=0,gid=0,mode=0755,mtime={}", epoch.max(0)))
        .arg(out);
    feed_tar(
        &mut cmd,
        "making the SquashFS root",
        tree,
        epoch,
        &squashfs_keeps,
        cancel,
    )?;
    let len = std::fs::metadata(out)
        .with_context(|| format!("reading {}", out.display()))?
        .len();
    check_squashfs(out, cancel)?;
    Ok(len)
}

/// Has `unsquashfs` read every inode of the image (`-stat` reads the superblock, `-lls`
/// every directory and inode) to catch a defect before it ships.
fn check_squashfs(img: &Path, cancel: Cancel) -> Result<()> {
    for args in [&["-stat"][..], &["-lls", "-n"][..]] {
        let o = crate::run::output(
            Command::new("unsquashfs").args(args).arg(img),
            "checking the SquashFS root",
            cancel,
        )?;
        if !o.status.success() {
            bail!(
                "unsquashfs {} refused the SquashFS root we made:\n{}",
                args.join(" "),
                crate::run::tail(&o.stderr)
            );
        }
    }
    Ok(())
}

/// The extended attributes of `tree` in the form `setfattr --restore` reads (what
/// `getfattr --dump` writes): paths relative to the root, every byte but letters,
/// digits and `/._-` as a three-digit octal escape; values in base64.
fn xattr_dump(tree: &Tree) -> String {
    use base64::Engine;
    let mut out = String::new();
    for (path, e) in tree.entries.iter().filter(|(_, e)| !e.xattrs.is_empty()) {
        let rel = match path.trim_start_matches('/') {
            "" => ".",
            r => r,
        };
        out.push_str("# file: ");
        for b in rel.bytes() {
            if b.is_ascii_alphanumeric() || b"/._-".contains(&b) {
                out.push(b as char);
            } else {
                out.push_str(&format!("\\{b:03o}"));
            }
        }
        out.push('\n');
        for (name, value) in &e.xattrs {
            out.push_str(&format!(
                "{name}=0s{}\n",
                base64::engine::general_purpose::STANDARD.encode(value)
            ));
        }
        out.push('\n');
    }
    out
}

/// Makes an EROFS image of `tree` at `out` with UUID `uuid` (erofs-utils 1.5 sets no
/// volume label); returns its size in bytes. `work` holds the unpacked copy while it runs.
pub fn make_erofs(
    tree: &Tree,
    compression: ErofsCompression,
    uuid: Guid,
    epoch: i64,
    work: &Path,
    out: &Path,
    cancel: Cancel,
) -> Result<u64> {
    let unpacked = work.join("erofs-tree");
    if unpacked.exists() {
        std::fs::remove_dir_all(&unpacked)
            .with_context(|| format!("removing {}", unpacked.display()))?;
    }
    std::fs::create_dir_all(&unpacked)?;
    // GNU tar under fakeroot believes it is root: it keeps numeric owners and makes
    // device nodes, all in fakeroot's table; mkfs.erofs, run in the same session, reads
    // them back from there. Extended attributes are set afterwards by setfattr: set by
    // tar, fakeroot 1.31 loses the file's type. A file tar created with its final mode
    // (0000, say) stays unreadable for real; a chmod to the same mode under fakeroot
    // keeps the mode fakeroot reports and lets the builder read it. "$@" keeps every
    // path one word, whatever it holds.
    let xattrs = work.join("erofs-xattrs");
    std::fs::write(&xattrs, xattr_dump(tree))
        .with_context(|| format!("writing {}", xattrs.display()))?;
    let script = "tar --extract --file=- --directory=\"$1\" --numeric-owner --same-owner \
                  --preserve-permissions --no-xattrs \
                  && (cd \"$1\" && setfattr -h --restore=\"$2\") \
                  && find \"$1\" ! -type l \\( ! -perm -u=r -o -type d ! -perm -u=rx \\) \
                     -exec chmod --reference={} {} \\; \
                  && shift 2 && exec mkfs.erofs \"$@\"";
    let mut cmd = Command::new("fakeroot");
    cmd.env("SOURCE_DATE_EPOCH", epoch.to_string())
        .args(["--", "sh", "-c", script, "sh"])
        .arg(&unpacked)
        .arg(&xattrs)
        .arg("--quiet")
        .arg(format!("-z{}", compression.name()))
        .arg(format!("-T{}", epoch.max(0)))
        .arg("--preserve-mtime")
        .arg(format!("-U{uuid}"))
        .arg(out)
        .arg(&unpacked);
    let made = feed_tar(
        &mut cmd,
        "making the EROFS root",
        tree,
        epoch,
        &|_| true,
        cancel,
    );
    std::fs::remove_dir_all(&unpacked).ok();
    std::fs::remove_file(&xattrs).ok();
    made?;
    let len = std::fs::metadata(out)
        .with_context(|| format!("reading {}", out.display()))?
        .len();
    let o = crate::run::output(
        Command::new("fsck.erofs").arg(out),
        "checking the EROFS root",
        cancel,
    )?;
    if !o.status.success() {
        bail!(
            "fsck.erofs refused the EROFS root we made:\n{}",
            crate::run::tail(&o.stderr)
        );
    }
    Ok(len)
}
