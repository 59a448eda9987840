//! Writing a [`Tree`] as one tar stream, with every piece of metadata the image keeps
//! (owners, modes, device nodes, FIFOs, hardlinks, extended attributes as PAX
//! `SCHILY.xattr.` records, times clamped to the epoch), for the tools that make the
//! compressed root filesystems (`tar2sqfs`, and GNU tar under fakeroot for
//! `mkfs.erofs`). The stream is a pure function of the tree and the epoch: entries in
//! path order (every parent before its children), hardlinks last, so that each names a
//! file already written.

use super::{show, Kind, Tree};
use anyhow::{Context, Result};
use std::io::Write;

/// The path of `path` (absolute, normalised) inside the archive: relative, the root
/// being `./` (the entry `tar2sqfs` takes the root directory's attributes from).
fn archive_path(path: &str) -> String {
    match path.trim_start_matches('/') {
        "" => "./".to_string(),
        rel => rel.to_string(),
    }
}

fn header_for(e: &super::Entry, epoch: i64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_mode(e.mode & 0o7777);
    h.set_uid(u64::from(e.uid));
    h.set_gid(u64::from(e.gid));
    // Times before 1970 cannot be carried by every tar reader; they become 1970.
    h.set_mtime(e.mtime.min(epoch).max(0) as u64);
    h.set_size(0);
    h
}

/// Writes `tree` to `out` as a tar stream, with the extended attributes whose names
/// `keep_xattr` accepts; returns `out`.
pub fn write_tar<W: Write>(
    tree: &Tree,
    epoch: i64,
    keep_xattr: &dyn Fn(&str) -> bool,
    out: W,
) -> Result<W> {
    let mut b = tar::Builder::new(out);
    b.mode(tar::HeaderMode::Complete);
    b.follow_symlinks(false);
    let mut links = Vec::new();
    for (path, e) in &tree.entries {
        let ctx = || format!("root filesystem entry {}", show(path));
        if let Kind::Hardlink(target) = &e.kind {
            links.push((path, e, target));
            continue;
        }
        let records: Vec<(String, &[u8])> = e
            .xattrs
            .iter()
            .filter(|(k, _)| keep_xattr(k))
            .map(|(k, v)| (format!("SCHILY.xattr.{k}"), v.as_slice()))
            .collect();
        if !records.is_empty() {
            for (name, _) in &e.xattrs {
                super::check_xattr_name(name).with_context(ctx)?;
            }
            b.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), *v)))
                .with_context(ctx)?;
        }
        let mut h = header_for(e, epoch);
        let name = archive_path(path);
        match &e.kind {
            Kind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                b.append_data(&mut h, &name, std::io::empty())
                    .with_context(ctx)?;
            }
            Kind::File(size) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(*size);
                let staged = tree.staged(path);
                let f = std::fs::File::open(&staged)
                    .with_context(|| format!("opening staged {}", staged.display()))?;
                let len = f.metadata()?.len();
                if len != *size {
                    anyhow::bail!(
                        "staged {} is {len} bytes, the tree says {size}",
                        staged.display()
                    );
                }
                b.append_data(&mut h, &name, f).with_context(ctx)?;
            }
            Kind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, &name, target).with_context(ctx)?;
            }
            Kind::Char(major, minor) | Kind::Block(major, minor) => {
                h.set_entry_type(if matches!(e.kind, Kind::Char(..)) {
                    tar::EntryType::Char
                } else {
                    tar::EntryType::Block
                });
                h.set_device_major(*major).with_context(ctx)?;
                h.set_device_minor(*minor).with_context(ctx)?;
                b.append_data(&mut h, &name, std::io::empty())
                    .with_context(ctx)?;
            }
            Kind::Fifo => {
                h.set_entry_type(tar::EntryType::Fifo);
                b.append_data(&mut h, &name, std::io::empty())
                    .with_context(ctx)?;
            }
            Kind::Hardlink(_) => unreachable!("hardlinks are written last"),
        }
    }
    for (path, e, target) in links {
        let mut h = header_for(e, epoch);
        h.set_entry_type(tar::EntryType::Link);
        b.append_link(&mut h, archive_path(path), archive_path(target))
            .with_context(|| format!("root filesystem entry {}", show(path)))?;
    }
    b.into_inner().context("finishing the tar stream")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rootfs::Entry;

    fn entry(kind: Kind, mode: u32, uid: u32, mtime: i64) -> Entry {
        Entry {
            kind,
            mode,
            uid,
            gid: uid + 1,
            mtime,
            xattrs: Vec::new(),
        }
    }

    #[test]
    fn every_kind_and_its_metadata_reach_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = Tree::new(&dir.path().join("s")).unwrap();
        t.insert("/bin", entry(Kind::Dir, 0o755, 0, 5), |_| Ok(()))
            .unwrap();
        let mut f = entry(Kind::File(5), 0o4755, 1000, 9_000_000_000);
        f.xattrs = vec![("security.capability".into(), vec![1, 0, 0, 2])];
        t.insert("/bin/z", f, |file| {
            std::io::Write::write_all(file, b"hello")?;
            Ok(())
        })
        .unwrap();
        t.insert(
            "/bin/a",
            entry(Kind::Hardlink("/bin/z".into()), 0o4755, 1000, 5),
            |_| Ok(()),
        )
        .unwrap();
        t.insert("/null", entry(Kind::Char(1, 3), 0o666, 0, 5), |_| Ok(()))
            .unwrap();
        let long = format!("/{}", "l".repeat(150));
        t.insert(
            &long,
            entry(Kind::Symlink("t".repeat(200).into()), 0o777, 0, 5),
            |_| Ok(()),
        )
        .unwrap();
        t.insert("/p", entry(Kind::Fifo, 0o600, 3, 5), |_| Ok(()))
            .unwrap();
        let bytes = write_tar(&t, 1000, &|_| true, Vec::new()).unwrap();
        assert_eq!(bytes, write_tar(&t, 1000, &|_| true, Vec::new()).unwrap());

        let mut a = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            let h = e.header().clone();
            let xattrs: Vec<String> = e
                .pax_extensions()
                .unwrap()
                .into_iter()
                .flatten()
                .map(|x| x.unwrap().key().unwrap().to_string())
                .filter(|k| k.starts_with("SCHILY"))
                .collect();
            seen.push((
                path,
                h.entry_type(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.mtime().unwrap(),
                xattrs,
            ));
        }
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(names[0], "./");
        assert_eq!(*names.last().unwrap(), "bin/a", "hardlinks come last");
        let z = seen.iter().find(|s| s.0 == "bin/z").unwrap();
        assert_eq!(z.1, tar::EntryType::Regular);
        assert_eq!((z.2, z.3, z.4), (0o4755, 1000, 1000), "mtime clamped");
        assert_eq!(z.5, vec!["SCHILY.xattr.security.capability"]);
        let null = seen.iter().find(|s| s.0 == "null").unwrap();
        assert_eq!(null.1, tar::EntryType::Char);
        assert!(seen.iter().any(|s| s.0 == long[1..]), "long names");
        assert!(seen
            .iter()
            .any(|s| s.0 == "p" && s.1 == tar::EntryType::Fifo));
    }
}
