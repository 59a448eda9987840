//! The root filesystem producer: `mkfs.ext4 -d` fills the image from the staging
//! directory, then one `debugfs` script sets what an unprivileged copy cannot carry
//! (owners, modes, device nodes, FIFOs, extended attributes) and pins every timestamp.

use crate::rootfs::{Kind, Tree};
use crate::run::{run, Cancel};
use crate::spec::SizePolicy;
use anyhow::{bail, Context, Result};
use oneimage_format::ext4_size::{inode_count, minimal_bytes, Object, Usage, BLOCK};
use oneimage_format::size::{align_up, format_size};
use oneimage_format::Guid;
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
    /// Where a retry with a larger size is reported.
    pub progress: crate::progress::Progress,
}

/// Features pinned here rather than taken from the host's /etc/mke2fs.conf, so the
/// image is the same on every build host and readable by older kernels and GRUB.
pub const MKE2FS_CONF: &str = "[defaults]
\tbase_features = sparse_super,large_file,filetype,resize_inode,dir_index,ext_attr
\tdefault_mntopts = acl,user_xattr
\tblocksize = 4096
\tinode_size = 256
\tinode_ratio = 16384
\treserved_ratio = 5.0
[fs_types]
\text4 = {
\t\tfeatures = has_journal,extent,huge_file,flex_bg,metadata_csum,metadata_csum_seed,64bit,dir_nlink,extra_isize
\t}
";

/// Content estimate: (data bytes, inodes needed).
pub fn estimate(tree: &Tree) -> (u64, u64) {
    let mut u = Usage::default();
    for (path, e) in &tree.entries {
        let object = match &e.kind {
            Kind::Dir => Object::Dir,
            Kind::File(n) => Object::File(*n),
            Kind::Symlink(t) => Object::Symlink(t.as_os_str().len() as u64),
            Kind::Hardlink(_) => Object::Hardlink,
            Kind::Char(..) | Kind::Block(..) | Kind::Fifo => Object::Special,
        };
        let xattr_bytes = e
            .xattrs
            .iter()
            .map(|(k, v)| (k.len() + v.len() + 16) as u64)
            .sum();
        u.add(path, object, xattr_bytes);
    }
    u.totals()
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
        // Its messages are parsed below (a full filesystem is retried larger); the
        // runner gives every tool the C locale.
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
                p.progress.step(
                    "root",
                    &format!("root filesystem full, retrying with {}", format_size(size)),
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

/// The longest line written to a debugfs command file, in bytes.
///
/// debugfs reads its command file with `fgets` into an 8192-byte buffer: a longer line
/// is cut, and its rest runs as a command of its own (with e2fsprogs 1.47, 8190 bytes and
/// the newline are read whole, 8191 are not; `debugfs_reads_script_lines_this_long_whole`
/// checks the host's debugfs). Kept well below that.
pub const MAX_SCRIPT_LINE: usize = 8000;

/// The longest quoted path used as one word; longer ones are reached one directory at a
/// time (see [`Script::address`]), so every path [`crate::rootfs::check_tree_path`]
/// accepts fits.
const MAX_PATH_WORD: usize = 4000;

/// A debugfs command file.
///
/// libss, which reads it, splits a line into words at blanks, takes a word in double
/// quotes as it is (a quote inside doubled), and hands a line that starts with `!` to the
/// shell. Every word that comes from the root filesystem (paths, names, attribute
/// names) goes through [`quote`], every line starts with one of our commands, and no
/// line is longer than [`MAX_SCRIPT_LINE`], so nothing from the root filesystem can
/// start a command.
#[derive(Default)]
pub struct Script {
    text: String,
}

impl Script {
    /// Appends one command line, refusing one that debugfs would not read whole.
    pub fn line(&mut self, line: &str) -> Result<()> {
        if line.len() > MAX_SCRIPT_LINE {
            bail!(
                "a debugfs command would be {} bytes long; debugfs cuts lines of more than {MAX_SCRIPT_LINE}",
                line.len()
            );
        }
        if line.bytes().any(|b| b == b'\n' || b == b'\r' || b == 0) {
            bail!("a debugfs command would contain a line break");
        }
        self.text.push_str(line);
        self.text.push('\n');
        Ok(())
    }

    /// The word that names `path` (absolute, normalised) in the next command. A path
    /// too long for one word is reached with one `cd` per directory first and then named
    /// relative to it (the caller goes back with `cd /`).
    pub fn address(&mut self, path: &str) -> Result<String> {
        let word = quote(path)?;
        if word.len() <= MAX_PATH_WORD {
            return Ok(word);
        }
        self.line("cd /")?;
        let (dirs, name) = path.rsplit_once('/').unwrap_or(("", path));
        for comp in dirs.split('/').filter(|c| !c.is_empty()) {
            self.line(&format!("cd {}", relative(comp)?))?;
        }
        relative(name)
    }

    /// The command file as written so far.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// `s` as one debugfs word: in double quotes, a quote inside doubled (libss reads `""`
/// inside quotes as one `"`). Refuses what no quoting carries: line breaks and the
/// other control characters (see [`crate::rootfs::check_name`]).
pub fn quote(s: &str) -> Result<String> {
    if let Some(b) = s.bytes().find(|&b| b < 0x20 || b == 0x7f) {
        bail!(
            "{} contains the control character 0x{b:02x}, which cannot be passed to debugfs",
            crate::rootfs::show(s)
        );
    }
    Ok(format!("\"{}\"", s.replace('"', "\"\"")))
}

/// A name relative to debugfs's current directory as one word. debugfs reads a word
/// of the form `<N>` as inode number N, so the name is written as `./NAME`.
fn relative(name: &str) -> Result<String> {
    quote(&format!("./{name}"))
}

/// Applies owners, modes, special files, extended attributes and times with debugfs.
fn apply_metadata(tree: &Tree, epoch: i64, img: &str, work: &Path, cancel: Cancel) -> Result<()> {
    let xdir = work.join("xattrs");
    std::fs::create_dir_all(&xdir)?;
    let mut s = Script::default();
    let mut nx = 0usize;
    let builder = (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    );
    for (path, e) in &tree.entries {
        entry_commands(&mut s, tree, path, e, epoch, builder, &xdir, &mut nx)
            .with_context(|| format!("root filesystem entry {}", crate::rootfs::show(path)))?;
    }
    for field in ["mtime", "atime", "ctime", "crtime"] {
        s.line(&format!("sif /lost+found {field} @{epoch}"))?;
    }
    let script = work.join("metadata.debugfs");
    std::fs::write(&script, s.text())?;
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

/// Appends the commands for one entry of the tree to `s`.
#[allow(clippy::too_many_arguments)]
fn entry_commands(
    s: &mut Script,
    tree: &Tree,
    path: &str,
    e: &crate::rootfs::Entry,
    epoch: i64,
    builder: (u32, u32),
    xdir: &Path,
    nx: &mut usize,
) -> Result<()> {
    let special = matches!(e.kind, Kind::Char(..) | Kind::Block(..) | Kind::Fifo);
    match e.kind {
        Kind::Hardlink(_) => return Ok(()), // same inode as its first name
        // mkfs.ext4 -d made the special files of a borrowed source directory itself.
        _ if !special || tree.borrowed => {}
        _ => {
            // debugfs's mknod links the new node into the current directory under the
            // name given (taken as it is, never as `<N>`), so it runs from the parent.
            let (parent, name) = path.rsplit_once('/').unwrap_or(("", path));
            let parent = if parent.is_empty() { "/" } else { parent };
            let dir = s.address(parent)?;
            s.line(&format!("cd {dir}"))?;
            let how = match e.kind {
                Kind::Char(ma, mi) => format!("c {ma} {mi}"),
                Kind::Block(ma, mi) => format!("b {ma} {mi}"),
                _ => "p".to_string(),
            };
            s.line(&format!("mknod {} {how}", quote(name)?))?;
            s.line("cd /")?;
        }
    }
    // Only what mkfs.ext4 -d did not already get right is set, which keeps the
    // script short: mkfs copies owner, mode and times from the staged file, takes the
    // creation time from the fake clock, and copies a borrowed directory's xattrs.
    let made_by_debugfs = special && !tree.borrowed;
    let (staged_mode, staged_uid, staged_gid) = if tree.borrowed {
        (e.mode, e.uid, e.gid)
    } else {
        (staged_mode(&e.kind), builder.0, builder.1)
    };
    let target = s.address(path)?;
    let mut sif = |field: &str, value: String| s.line(&format!("sif {target} {field} {value}"));
    // debugfs reads a bare number as a date (YYYYMMDD...) when it can; "@N" is seconds.
    let mtime = e.mtime.min(epoch);
    if made_by_debugfs || staged_mode != e.mode {
        sif("mode", format!("0{:o}", e.type_bits() | e.mode))?;
    }
    if made_by_debugfs || staged_uid != e.uid {
        sif("uid", e.uid.to_string())?;
    }
    if made_by_debugfs || staged_gid != e.gid {
        sif("gid", e.gid.to_string())?;
    }
    // Staged files carry their final mtimes (see Tree::pin_times); a borrowed
    // directory's files may carry newer ones.
    if made_by_debugfs || (tree.borrowed && e.mtime > epoch) {
        sif("mtime", format!("@{mtime}"))?;
    }
    // mkfs.ext4 -d reading a file or directory may update its access time first.
    sif("atime", format!("@{mtime}"))?;
    sif("ctime", format!("@{epoch}"))?;
    if made_by_debugfs {
        sif("crtime", format!("@{epoch}"))?;
    }
    if !tree.borrowed {
        for (name, value) in &e.xattrs {
            crate::rootfs::check_xattr_name(name)?;
            let f = xdir.join(nx.to_string());
            *nx += 1;
            std::fs::write(&f, value)?;
            let f = f
                .to_str()
                .context("the work directory's path is not UTF-8")?;
            // `--`: debugfs parses ea_set's arguments with getopt, which would take a
            // later word starting with `-` for an option.
            s.line(&format!(
                "ea_set -f {} -- {target} {}",
                quote(f)?,
                quote(name)?
            ))?;
        }
    }
    if target.starts_with("\"./") {
        s.line("cd /")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_doubles_quotes_and_refuses_control_characters() {
        assert_eq!(quote("/a b").unwrap(), "\"/a b\"");
        assert_eq!(quote("/q\"x\"").unwrap(), "\"/q\"\"x\"\"\"");
        assert_eq!(quote("!x").unwrap(), "\"!x\"");
        for bad in ["a\nb", "a\rb", "a\0b", "a\x1bb", "a\x7f"] {
            assert!(quote(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lines_are_bounded_and_long_paths_reached_by_parts() {
        let mut s = Script::default();
        assert!(s.line(&"x".repeat(MAX_SCRIPT_LINE + 1)).is_err());
        assert!(s.line("sif a\nb").is_err());
        assert_eq!(s.address("/etc/<12>").unwrap(), "\"/etc/<12>\"");
        assert!(s.text().is_empty());
        let comp = "\"".repeat(250);
        let path = format!("/{}", vec![comp.as_str(); 16].join("/"));
        let word = s.address(&path).unwrap();
        assert_eq!(word, quote(&format!("./{comp}")).unwrap());
        let lines: Vec<&str> = s.text().lines().collect();
        assert_eq!(lines.len(), 16, "cd / and one cd per directory");
        assert_eq!(lines[0], "cd /");
        assert!(lines.iter().all(|l| l.len() < 600));
    }
}
