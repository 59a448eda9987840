//! Reading a root filesystem, or an overlay, from a directory.

use super::{normalize, show, Entry, Kind, Tree};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::Path;

/// How ownership of the files read is decided.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Owner {
    /// Keep each file's own owner, group and extended attributes.
    Keep,
    /// Everything belongs to root:root (overlays checked out by an ordinary user).
    Root,
}

/// Adds every file under `dir` to `tree`, keeping ownership and extended attributes.
pub fn add_directory(tree: &mut Tree, dir: &Path) -> Result<()> {
    walk(tree, dir, Owner::Keep)
}

/// Copies every file under `dir` over `tree`, owned by root, keeping modes.
pub fn add_overlay(tree: &mut Tree, dir: &Path) -> Result<()> {
    walk(tree, dir, Owner::Root)
}

fn walk(tree: &mut Tree, dir: &Path, owner: Owner) -> Result<()> {
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    for item in walkdir::WalkDir::new(dir)
        .follow_links(false)
        .sort_by_file_name()
    {
        let item = item.with_context(|| format!("reading directory {}", dir.display()))?;
        let src = item.path();
        let rel = src.strip_prefix(dir).expect("walkdir stays under its root");
        let p = normalize(rel).with_context(|| format!("in {}", dir.display()))?;
        let md = item
            .path()
            .symlink_metadata()
            .with_context(|| format!("reading {}", src.display()))?;
        if p == "/" && owner == Owner::Root {
            continue; // an overlay does not change the root directory itself
        }
        let ft = md.file_type();
        let rdev = md.rdev();
        let (major, minor) = (
            ((rdev >> 8) & 0xfff) as u32 | ((rdev >> 32) & !0xfff) as u32,
            (rdev & 0xff) as u32 | ((rdev >> 12) & !0xff) as u32,
        );
        let mut kind = if ft.is_dir() {
            Kind::Dir
        } else if ft.is_file() {
            Kind::File(md.len())
        } else if ft.is_symlink() {
            Kind::Symlink(
                std::fs::read_link(src)
                    .with_context(|| format!("reading link {}", src.display()))?,
            )
        } else if ft.is_char_device() {
            Kind::Char(major, minor)
        } else if ft.is_block_device() {
            Kind::Block(major, minor)
        } else if ft.is_fifo() {
            Kind::Fifo
        } else {
            bail!("{}: sockets cannot be stored in an image", src.display());
        };
        if ft.is_file() && md.nlink() > 1 {
            let key = (md.dev(), md.ino());
            match links.get(&key) {
                Some(first) => kind = Kind::Hardlink(first.clone()),
                None => {
                    links.insert(key, p.clone());
                }
            }
        }
        let mut xattrs = Vec::new();
        if owner == Owner::Keep && !ft.is_symlink() {
            let names = xattr::list(src)
                .with_context(|| format!("listing extended attributes of {}", src.display()))?;
            for name in names {
                let name_str = match name.to_str() {
                    Some(n) => n.to_string(),
                    // mkfs.ext4 copies a borrowed directory's attributes itself, bytes as
                    // they are; the name here only counts toward the size estimate.
                    None if tree.borrowed => name.to_string_lossy().into_owned(),
                    None => bail!(
                        "{}: the extended attribute name {} is not valid UTF-8; oneimage refuses such names",
                        src.display(),
                        show(name.as_encoded_bytes())
                    ),
                };
                if let Some(v) = xattr::get(src, &name)
                    .with_context(|| format!("reading attribute {name_str} of {}", src.display()))?
                {
                    xattrs.push((name_str, v));
                }
            }
            xattrs.sort();
        }
        let (uid, gid) = match owner {
            Owner::Keep => (md.uid(), md.gid()),
            Owner::Root => (0, 0),
        };
        let entry = Entry {
            kind,
            mode: md.mode() & 0o7777,
            uid,
            gid,
            mtime: md.mtime(),
            xattrs,
        };
        tree.insert(&p, entry, |dest| {
            // O_NOFOLLOW: the walk saw a regular file here; if it has been swapped for a
            // symlink since, its target is not copied.
            let mut from = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(src)
                .with_context(|| format!("opening {}", src.display()))?;
            std::io::copy(&mut from, dest).with_context(|| format!("copying {}", src.display()))?;
            Ok(())
        })
        .with_context(|| format!("in {}", dir.display()))?;
    }
    Ok(())
}
