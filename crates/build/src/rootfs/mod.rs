//! The root filesystem as a staging directory plus a metadata table.
//!
//! Reading a tarball or a directory never needs privileges: file contents, directories,
//! symlinks and hardlinks go into the staging directory (owned by whoever builds), while
//! ownership, modes, device nodes, FIFOs, extended attributes and times are kept in
//! [`Tree::entries`] and applied to the filesystem image afterwards (see `ext4`).

mod dir;
mod mmdebstrap;
mod tarball;

pub use dir::{add_directory, add_overlay};
pub use mmdebstrap::{cached_mmdebstrap, run_mmdebstrap};
pub use tarball::add_tarball;

use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

/// What kind of filesystem object an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A directory.
    Dir,
    /// A regular file of this many bytes (its content is in the staging directory).
    File(u64),
    /// A symbolic link to this target.
    Symlink(PathBuf),
    /// A second name for the file at this path.
    Hardlink(String),
    /// A character device (major, minor).
    Char(u32, u32),
    /// A block device (major, minor).
    Block(u32, u32),
    /// A named pipe.
    Fifo,
}

/// Metadata of one path in the root filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Object kind.
    pub kind: Kind,
    /// Permission bits including setuid, setgid and sticky (`0o7777`).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since 1970.
    pub mtime: i64,
    /// Extended attributes, sorted by name.
    pub xattrs: Vec<(String, Vec<u8>)>,
}

impl Entry {
    /// The `st_mode` type bits for this entry (hardlinks report their own kind as a file).
    pub fn type_bits(&self) -> u32 {
        match self.kind {
            Kind::Dir => 0o040000,
            Kind::File(_) | Kind::Hardlink(_) => 0o100000,
            Kind::Symlink(_) => 0o120000,
            Kind::Char(..) => 0o020000,
            Kind::Block(..) => 0o060000,
            Kind::Fifo => 0o010000,
        }
    }
}

/// A root filesystem being assembled: staging directory plus metadata by absolute path.
pub struct Tree {
    /// Directory holding contents (regular files, directories, symlinks, hardlinks).
    pub staging: PathBuf,
    /// Metadata by absolute path (`/`, `/etc`, `/etc/passwd`, ...), sorted.
    pub entries: BTreeMap<String, Entry>,
    /// The staging directory is the user's own source directory: nothing is copied
    /// or created in it, and mkfs reads it as it is.
    pub borrowed: bool,
}

impl Tree {
    /// Starts an empty tree in `staging` (created), with a root directory owned by root.
    pub fn new(staging: &Path) -> Result<Tree> {
        std::fs::create_dir_all(staging)
            .with_context(|| format!("creating staging directory {}", staging.display()))?;
        let mut entries = BTreeMap::new();
        entries.insert(
            "/".to_string(),
            Entry {
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: 0,
                xattrs: Vec::new(),
            },
        );
        Ok(Tree {
            staging: staging.to_path_buf(),
            entries,
            borrowed: false,
        })
    }

    /// A tree whose contents stay in `dir`, a source directory that is only read.
    pub fn borrow(dir: &Path) -> Result<Tree> {
        let mut t = Tree::new(dir)?;
        t.borrowed = true;
        Ok(t)
    }

    /// Where `path` (absolute, normalised) lives in the staging directory.
    pub fn staged(&self, path: &str) -> PathBuf {
        self.staging.join(path.trim_start_matches('/'))
    }

    /// Records `entry` at `path`, replacing what was there; `write` fills regular files.
    ///
    /// Parents are created as needed (their metadata comes from their own entries, which
    /// may follow). Device nodes and FIFOs are not created in the staging directory.
    pub fn insert(
        &mut self,
        path: &str,
        entry: Entry,
        write: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        if self.borrowed {
            self.entries.insert(path.to_string(), entry);
            return Ok(());
        }
        let staged = self.staged(path);
        let existing = self.entries.get(path).map(|e| e.kind.clone());
        match (&existing, &entry.kind) {
            (Some(Kind::Dir), Kind::Dir) | (None, _) => {}
            (Some(Kind::Dir), _) => {
                std::fs::remove_dir_all(&staged)
                    .with_context(|| format!("replacing directory {}", staged.display()))?;
                let prefix = format!("{}/", path.trim_end_matches('/'));
                self.entries.retain(|k, _| !k.starts_with(&prefix));
            }
            (Some(_), _) => {
                if std::fs::symlink_metadata(&staged).is_ok() {
                    std::fs::remove_file(&staged)
                        .with_context(|| format!("replacing {}", staged.display()))?;
                }
            }
        }
        // Parents the source never listed become root-owned 0755 directories (a listed
        // entry, coming later, replaces that metadata).
        let mut missing = Vec::new();
        let mut ancestor = Path::new(path).parent();
        while let Some(a) = ancestor {
            let a_str = a.to_str().expect("normalised paths are UTF-8");
            if a_str == "/" || self.entries.contains_key(a_str) {
                break;
            }
            missing.push(a_str.to_string());
            ancestor = a.parent();
        }
        for dir in missing.into_iter().rev() {
            let staged_dir = self.staged(&dir);
            std::fs::create_dir_all(&staged_dir)
                .with_context(|| format!("creating {}", staged_dir.display()))?;
            make_owner_accessible(&staged_dir, true)?;
            let implied = Entry {
                kind: Kind::Dir,
                mode: 0o755,
                uid: 0,
                gid: 0,
                mtime: entry.mtime,
                xattrs: Vec::new(),
            };
            self.entries.insert(dir, implied);
        }
        match &entry.kind {
            Kind::Dir => {
                std::fs::create_dir_all(&staged)
                    .with_context(|| format!("creating {}", staged.display()))?;
                make_owner_accessible(&staged, true)?;
            }
            Kind::File(_) => {
                write(&staged)?;
                // Known modes in the staging copy, whatever the umask: the ext4 step
                // relies on them.
                make_owner_accessible(&staged, false)?;
            }
            Kind::Symlink(target) => std::os::unix::fs::symlink(target, &staged)
                .with_context(|| format!("creating symlink {}", staged.display()))?,
            Kind::Hardlink(target) => {
                match self.entries.get(target) {
                    Some(e) if !matches!(e.kind, Kind::Dir) => {}
                    _ => bail!("hardlink {path} points at {target}, which is not a file in the root filesystem"),
                }
                std::fs::hard_link(self.staged(target), &staged)
                    .with_context(|| format!("creating hardlink {}", staged.display()))?;
            }
            Kind::Char(..) | Kind::Block(..) | Kind::Fifo => {}
        }
        self.entries.insert(path.to_string(), entry);
        Ok(())
    }

    /// Sets every staged file's access and modification time to its entry's mtime,
    /// clamped to `epoch`, so mkfs.ext4 -d copies final times. Children go first, so
    /// a directory's time is not disturbed again. Does nothing for a borrowed tree.
    pub fn pin_times(&self, epoch: i64) -> Result<()> {
        use rustix::fs::{utimensat, AtFlags, Timespec, Timestamps, CWD};
        if self.borrowed {
            return Ok(());
        }
        for (path, e) in self.entries.iter().rev() {
            if matches!(
                e.kind,
                Kind::Char(..) | Kind::Block(..) | Kind::Fifo | Kind::Hardlink(_)
            ) {
                continue;
            }
            let t = Timespec {
                tv_sec: e.mtime.min(epoch),
                tv_nsec: 0,
            };
            let staged = self.staged(path);
            utimensat(
                CWD,
                &staged,
                &Timestamps {
                    last_access: t,
                    last_modification: t,
                },
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .with_context(|| format!("setting times of {}", staged.display()))?;
        }
        Ok(())
    }

    /// Resolves `path` component by component, following symlinks inside the tree (as
    /// the booted system would, e.g. `/lib64` -> `usr/lib64`), to the path of an entry
    /// that is not a symlink. `None` when something on the way is missing.
    pub fn resolve_path(&self, path: &str) -> Option<String> {
        let mut todo: Vec<String> = path
            .split('/')
            .filter(|c| !c.is_empty())
            .rev()
            .map(str::to_string)
            .collect();
        let mut cur = String::new();
        let mut hops = 0;
        while let Some(comp) = todo.pop() {
            match comp.as_str() {
                "." => continue,
                ".." => {
                    cur.truncate(cur.rfind('/').unwrap_or(0));
                    continue;
                }
                _ => {}
            }
            let next = format!("{cur}/{comp}");
            match &self.entries.get(&next)?.kind {
                Kind::Symlink(target) => {
                    hops += 1;
                    if hops > 40 {
                        return None;
                    }
                    let t = target.to_str()?;
                    if t.starts_with('/') {
                        cur.clear();
                    }
                    todo.extend(
                        t.split('/')
                            .filter(|c| !c.is_empty())
                            .rev()
                            .map(str::to_string),
                    );
                }
                _ => cur = next,
            }
        }
        Some(if cur.is_empty() { "/".into() } else { cur })
    }

    /// Looks up an entry, following symlinks inside the tree (at most 16 hops).
    pub fn resolve(&self, path: &str) -> Option<(String, &Entry)> {
        let mut p = path.to_string();
        for _ in 0..16 {
            let e = self.entries.get(&p)?;
            match &e.kind {
                Kind::Symlink(t) => {
                    let base = Path::new(&p).parent().unwrap_or(Path::new("/"));
                    p = normalize(&base.join(t)).ok()?;
                }
                _ => return Some((p, e)),
            }
        }
        None
    }
}

/// Turns `./a/b/`, `a/b` or `/a/./b` into `/a/b`; refuses `..` and names debugfs cannot
/// address.
pub fn normalize(p: &Path) -> Result<String> {
    let mut out = String::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => {
                let n = n
                    .to_str()
                    .with_context(|| format!("path {} is not valid UTF-8", p.display()))?;
                if n.contains(['"', '\n']) {
                    bail!(
                        "path {} contains a double quote or newline, which is not supported",
                        p.display()
                    );
                }
                out.push('/');
                out.push_str(n);
            }
            Component::ParentDir | Component::Prefix(_) => {
                bail!("path {} leaves the root filesystem ('..')", p.display())
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// Makes the staging copy readable and writable by the builder, whatever the real mode.
pub(crate) fn make_owner_accessible(path: &Path, is_dir: bool) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = if is_dir { 0o755 } else { 0o644 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting permissions of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize(Path::new("./etc/passwd")).unwrap(), "/etc/passwd");
        assert_eq!(normalize(Path::new("./")).unwrap(), "/");
        assert_eq!(normalize(Path::new("a/./b/")).unwrap(), "/a/b");
        assert!(normalize(Path::new("a/../../etc")).is_err());
    }

    #[test]
    fn resolves_symlinks_inside_tree() {
        let d = tempfile::tempdir().unwrap();
        let mut t = Tree::new(d.path()).unwrap();
        let e = |kind| Entry {
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: vec![],
        };
        t.insert("/boot", e(Kind::Dir), |_| Ok(())).unwrap();
        t.insert("/boot/vmlinuz-1", e(Kind::File(0)), |p| {
            std::fs::write(p, b"")?;
            Ok(())
        })
        .unwrap();
        t.insert(
            "/vmlinuz",
            e(Kind::Symlink("boot/vmlinuz-1".into())),
            |_| Ok(()),
        )
        .unwrap();
        assert_eq!(t.resolve("/vmlinuz").unwrap().0, "/boot/vmlinuz-1");
        t.insert("/b", e(Kind::Symlink("/boot".into())), |_| Ok(()))
            .unwrap();
        assert_eq!(t.resolve_path("/b/vmlinuz-1").unwrap(), "/boot/vmlinuz-1");
        assert_eq!(t.resolve_path("/b/../vmlinuz").unwrap(), "/boot/vmlinuz-1");
        assert_eq!(t.resolve_path("/b/nothing"), None);
    }
}
