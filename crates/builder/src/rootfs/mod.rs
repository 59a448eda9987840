//! The root filesystem as a staging directory plus a metadata table.
//!
//! Reading a tarball or a directory never needs privileges: file contents, directories,
//! symlinks and hardlinks go into the staging directory (owned by whoever builds), while
//! ownership, modes, device nodes, FIFOs, extended attributes and times are kept in
//! [`Tree::entries`] and applied to the filesystem image afterwards (see `ext4`).

mod dir;
mod mmdebstrap;
mod tar_out;
mod tarball;

pub use dir::{add_directory, add_overlay};
pub use mmdebstrap::{cached_mmdebstrap, run_mmdebstrap, MmdebstrapRun};
pub use tar_out::write_tar;
pub use tarball::add_tarball;

use anyhow::{bail, Context, Result};
use rustix::fs::{
    fchmod, linkat, mkdirat, openat, symlinkat, unlinkat, AtFlags, Mode, OFlags, CWD,
};
use rustix::io::Errno;
use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
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
///
/// Every entry's parents are directory entries: an entry below a symlink, a file or a
/// device is refused, so the staging directory never holds a symlink on the way to
/// anything written there, and writes never leave it.
pub struct Tree {
    /// Directory holding contents (regular files, directories, symlinks, hardlinks).
    pub staging: PathBuf,
    /// Metadata by absolute path (`/`, `/etc`, `/etc/passwd`, ...), sorted.
    pub entries: BTreeMap<String, Entry>,
    /// The staging directory is the user's own source directory: nothing is copied
    /// or created in it, and mkfs reads it as it is.
    pub borrowed: bool,
    /// The staging directory, opened once (not for a borrowed tree): every change below
    /// it is made relative to this descriptor, one component at a time, never following
    /// a symlink, so what an entry names cannot redirect a write to the host.
    root: Option<OwnedFd>,
    /// The staged directory the last entry went into, kept open: entries mostly come
    /// directory by directory, and walking down again for each would cost a syscall per
    /// component.
    last_dir: Option<(String, OwnedFd)>,
}

impl Tree {
    /// Starts an empty tree in `staging` (created), with a root directory owned by root.
    pub fn new(staging: &Path) -> Result<Tree> {
        std::fs::create_dir_all(staging)
            .with_context(|| format!("creating staging directory {}", staging.display()))?;
        let root = openat(
            CWD,
            staging,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(|| format!("opening staging directory {}", staging.display()))?;
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
            root: Some(root),
            last_dir: None,
        })
    }

    /// A tree whose contents stay in `dir`, a source directory that is only read.
    pub fn borrow(dir: &Path) -> Result<Tree> {
        let mut t = Tree::new(dir)?;
        t.borrowed = true;
        t.root = None;
        Ok(t)
    }

    /// Where `path` (absolute, normalised) lives in the staging directory.
    ///
    /// Safe to open only for an entry that is not a symlink (see [`Tree::file`]): its
    /// parents are directories, so no symlink is on the way.
    pub fn staged(&self, path: &str) -> PathBuf {
        self.staging.join(path.trim_start_matches('/'))
    }

    /// The staged copy of the regular file `path` names inside the tree (symlinks on
    /// the way followed inside the tree), or `None` when it names nothing or something
    /// else: reading a device node of a borrowed directory, or a symlink's target on the
    /// host, would copy host data into the image.
    pub fn file(&self, path: &str) -> Option<PathBuf> {
        let real = self.resolve_path(path)?;
        match self.entries.get(&real)?.kind {
            Kind::File(_) | Kind::Hardlink(_) => Some(self.staged(&real)),
            _ => None,
        }
    }

    /// Records `entry` at `path`, replacing what was there; `write` fills regular files.
    ///
    /// Parents are created as needed (their metadata comes from their own entries, which
    /// may follow). Device nodes and FIFOs are not created in the staging directory.
    /// An entry below a non-directory (a symlink above all: `a -> /etc`, then
    /// `a/passwd`) is refused, as bsdtar does, and so is a root that is not a directory.
    pub fn insert(
        &mut self,
        path: &str,
        entry: Entry,
        write: impl FnOnce(&mut File) -> Result<()>,
    ) -> Result<()> {
        check_tree_path(path)?;
        if path == "/" && entry.kind != Kind::Dir {
            bail!(
                "the root directory of the root filesystem must be a directory, but this entry makes it {}",
                kind_name(&entry.kind)
            );
        }
        // A borrowed directory's attributes are copied by mkfs.ext4 itself; others are
        // set through debugfs, which is what the names are checked for.
        if !self.borrowed {
            for (name, _) in &entry.xattrs {
                check_xattr_name(name)
                    .with_context(|| format!("{}: extended attribute", show(path)))?;
            }
        }
        // Parents the source never listed become root-owned 0755 directories (a listed
        // entry, coming later, replaces that metadata). Every entry's parents are
        // directories, so the first one found ends the search.
        let mut missing = Vec::new();
        let mut ancestor = parent(path);
        while let Some(a) = ancestor {
            match self.entries.get(a) {
                Some(e) if e.kind == Kind::Dir => break,
                Some(e) => bail!(
                    "{}: its parent {} is {} in the root filesystem, not a directory; refusing to write through it",
                    show(path),
                    show(a),
                    kind_name(&e.kind)
                ),
                None => missing.push(a.to_string()),
            }
            ancestor = parent(a);
        }
        for dir in missing.into_iter().rev() {
            if !self.borrowed {
                let (p, name) = split(&dir);
                let fd = self.dir_fd(p)?;
                mkdirat(&fd, name, Mode::from_raw_mode(0o755))
                    .with_context(|| format!("creating staged directory {}", show(&dir)))?;
                self.last_dir = Some((p.to_string(), fd));
            }
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
        if self.borrowed || path == "/" {
            // Nothing to stage: a borrowed tree is read as it is, and the staging
            // directory itself is the root.
            self.entries.insert(path.to_string(), entry);
            return Ok(());
        }
        let (p, name) = split(path);
        let dir = self.dir_fd(p)?;
        let existing = self.entries.get(path).map(|e| e.kind.clone());
        match (&existing, &entry.kind) {
            (Some(Kind::Dir), Kind::Dir) | (None, _) => {}
            (Some(Kind::Dir), _) => {
                remove_tree(&dir, name)
                    .with_context(|| format!("replacing directory {}", show(path)))?;
                let prefix = format!("{path}/");
                self.entries.retain(|k, _| !k.starts_with(&prefix));
                // The cached directory may have been inside what was removed.
                self.last_dir = None;
            }
            (Some(_), _) => match unlinkat(&dir, name, AtFlags::empty()) {
                // Device nodes and FIFOs have no staged copy.
                Ok(()) | Err(Errno::NOENT) => {}
                Err(e) => return Err(e).with_context(|| format!("replacing {}", show(path))),
            },
        }
        let ctx = || format!("staging {}", show(path));
        match &entry.kind {
            Kind::Dir => {
                match mkdirat(&dir, name, Mode::from_raw_mode(0o755)) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(e).with_context(ctx),
                }
                // Known modes in the staging copy, whatever the umask: the ext4 step
                // relies on them.
                let fd = openat(
                    &dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .with_context(ctx)?;
                fchmod(&fd, Mode::from_raw_mode(0o755)).with_context(ctx)?;
            }
            Kind::File(_) => {
                // O_EXCL|O_NOFOLLOW: the name was removed above, so anything found there
                // now is refused rather than written through.
                let fd = openat(
                    &dir,
                    name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o644),
                )
                .with_context(ctx)?;
                fchmod(&fd, Mode::from_raw_mode(0o644)).with_context(ctx)?;
                write(&mut File::from(fd))?;
            }
            Kind::Symlink(target) => symlinkat(target, &dir, name).with_context(ctx)?,
            Kind::Hardlink(target) => {
                match self.entries.get(target) {
                    Some(e) if matches!(e.kind, Kind::File(_) | Kind::Hardlink(_)) => {}
                    _ => bail!(
                        "hardlink {} points at {}, which is not a regular file in the root filesystem",
                        show(path),
                        show(target)
                    ),
                }
                let (tp, tname) = split(target);
                let tdir = self.open_dir(tp)?;
                // Flags empty: a hardlink to a symlink would link the symlink itself, but
                // only regular files get here anyway.
                linkat(&tdir, tname, &dir, name, AtFlags::empty()).with_context(ctx)?;
            }
            Kind::Char(..) | Kind::Block(..) | Kind::Fifo => {}
        }
        self.last_dir = Some((p.to_string(), dir));
        self.entries.insert(path.to_string(), entry);
        Ok(())
    }

    /// The staged directory `dir`, from the cache or opened afresh (which empties the
    /// cache; the caller puts it back).
    fn dir_fd(&mut self, dir: &str) -> Result<OwnedFd> {
        match self.last_dir.take() {
            Some((d, fd)) if d == dir => Ok(fd),
            _ => self.open_dir(dir),
        }
    }

    /// Opens the staged directory `dir` (absolute) one component at a time from the
    /// staging directory, refusing to follow a symlink anywhere on the way.
    fn open_dir(&self, dir: &str) -> Result<OwnedFd> {
        let root = self
            .root
            .as_ref()
            .context("a borrowed root filesystem is never written to")?;
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let mut fd =
            openat(root, ".", flags, Mode::empty()).context("opening the staging directory")?;
        for comp in dir.split('/').filter(|c| !c.is_empty()) {
            fd = openat(&fd, comp, flags, Mode::empty())
                .with_context(|| format!("opening staged directory {}", show(dir)))?;
        }
        Ok(fd)
    }

    /// Sets every staged file's access and modification time to its entry's mtime,
    /// clamped to `epoch`, so mkfs.ext4 -d copies final times. Children go first, so
    /// a directory's time is not disturbed again. Does nothing for a borrowed tree.
    pub fn pin_times(&self, epoch: i64) -> Result<()> {
        use rustix::fs::{utimensat, Timespec, Timestamps};
        let Some(root) = &self.root else {
            return Ok(());
        };
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
            // Relative to the staging directory: every parent is a real directory (see
            // `insert`) and the entry itself is not followed.
            let rel = match path.trim_start_matches('/') {
                "" => ".",
                r => r,
            };
            utimensat(
                root,
                rel,
                &Timestamps {
                    last_access: t,
                    last_modification: t,
                },
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .with_context(|| format!("setting times of staged {}", show(path)))?;
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

/// The longest name ext4 stores in one directory entry, in bytes.
pub const MAX_NAME: usize = 255;

/// The longest path accepted, in bytes: `PATH_MAX` less its terminating NUL. No program
/// could open a longer path by name, on the build host or on the booted system.
pub const MAX_PATH: usize = 4095;

/// A name as it may be shown to the user: quoted, with control characters, quotes and
/// bytes that are not UTF-8 escaped, so a hostile name cannot drive the terminal.
pub fn show(name: impl AsRef<[u8]>) -> String {
    format!("\"{}\"", name.as_ref().escape_ascii())
}

/// Turns `./a/b/`, `a/b` or `/a/./b` into `/a/b` (a leading `/` is dropped, as tar does);
/// refuses what [`check_tree_path`] refuses, `..` anywhere, and names that are not UTF-8.
pub fn normalize(p: &Path) -> Result<String> {
    use std::os::unix::ffi::OsStrExt;
    let shown = || show(p.as_os_str().as_bytes());
    let mut out = String::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => {
                let n = n.to_str().with_context(|| {
                    format!(
                        "path {} is not valid UTF-8; oneimage keeps names as UTF-8 and refuses others",
                        shown()
                    )
                })?;
                out.push('/');
                out.push_str(n);
            }
            Component::ParentDir | Component::Prefix(_) => {
                bail!(
                    "path {} contains '..', which could leave the root filesystem",
                    shown()
                )
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    check_tree_path(&out)?;
    Ok(out)
}

/// Checks a normalised absolute path: no empty, `.` or `..` component, every component
/// a valid [`check_name`], at most [`MAX_PATH`] bytes.
pub fn check_tree_path(path: &str) -> Result<()> {
    if path == "/" {
        return Ok(());
    }
    let Some(rest) = path.strip_prefix('/') else {
        bail!("{} is not an absolute path", show(path));
    };
    if path.len() > MAX_PATH {
        bail!(
            "{}... is {} bytes long; paths of more than {MAX_PATH} bytes are refused",
            show(head(path)),
            path.len()
        );
    }
    for comp in rest.split('/') {
        if comp.is_empty() || comp == "." || comp == ".." {
            bail!("{} is not a normalised path", show(path));
        }
        check_name(comp).with_context(|| format!("in {}", show(path)))?;
    }
    Ok(())
}

/// Checks one file name: at most [`MAX_NAME`] bytes (what ext4 stores) and no control
/// character (0x00-0x1f, 0x7f).
///
/// Names reach a debugfs command file (see `ext4`), where a line break ends a command:
/// the rest of the name would run as a command of its own, and a line starting with
/// `!` runs through the shell. No quoting carries a line break, so those are refused;
/// the other control characters are refused as well, as no real system needs them and
/// they would reach the terminal in debugfs's echo of each command and in messages.
/// Everything else (quotes, `!`, spaces, backslashes, any Unicode) is kept as it is.
pub fn check_name(name: &str) -> Result<()> {
    if name.len() > MAX_NAME {
        bail!(
            "the name {}... is {} bytes long; ext4 stores at most {MAX_NAME}",
            show(head(name)),
            name.len()
        );
    }
    if let Some(b) = name.bytes().find(|&b| b < 0x20 || b == 0x7f) {
        bail!(
            "the name {} contains the control character 0x{b:02x}; control characters in names are refused",
            show(name)
        );
    }
    Ok(())
}

/// Checks an extended attribute name from the root filesystem: not empty, and a valid
/// [`check_name`] (ext4 stores at most 255 bytes of it too).
pub fn check_xattr_name(name: &str) -> Result<()> {
    if name.is_empty() {
        bail!("an extended attribute has an empty name");
    }
    check_name(name)
}

/// The first 60 bytes or so of a long name, cut at a character boundary, for messages.
fn head(s: &str) -> &str {
    let end = (0..=60.min(s.len()))
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    &s[..end]
}

/// The parent of a normalised absolute path (`None` for `/`).
fn parent(path: &str) -> Option<&str> {
    match path.rsplit_once('/')? {
        ("", "") => None,
        ("", _) => Some("/"),
        (p, _) => Some(p),
    }
}

/// A normalised absolute path that is not `/` as its parent and its last component.
fn split(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((p, name)) => (p, name),
        None => ("/", path),
    }
}

/// What kind of object an entry is, for messages.
fn kind_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Dir => "a directory",
        Kind::File(_) => "a regular file",
        Kind::Symlink(_) => "a symlink",
        Kind::Hardlink(_) => "a hardlink",
        Kind::Char(..) => "a character device",
        Kind::Block(..) => "a block device",
        Kind::Fifo => "a FIFO",
    }
}

/// Removes the staged directory `name` of `dir` with everything in it, without
/// following a symlink (one inside is removed, not what it points to).
fn remove_tree(dir: &OwnedFd, name: &str) -> Result<()> {
    let fd = openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let mut children = Vec::new();
    for item in rustix::fs::Dir::read_from(&fd)? {
        let item = item?;
        let n = item.file_name().to_bytes();
        if n != b"." && n != b".." {
            children.push(std::ffi::OsStr::from_bytes(n).to_os_string());
        }
    }
    for child in children {
        match unlinkat(&fd, &child, AtFlags::empty()) {
            Ok(()) => {}
            // unlink(2) refuses directories with EISDIR on Linux.
            Err(Errno::ISDIR) => {
                remove_tree(&fd, child.to_str().context("staged names are UTF-8")?)?
            }
            Err(e) => return Err(e.into()),
        }
    }
    unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn normalizes_paths() {
        assert_eq!(normalize(Path::new("./etc/passwd")).unwrap(), "/etc/passwd");
        assert_eq!(normalize(Path::new("./")).unwrap(), "/");
        assert_eq!(normalize(Path::new("a/./b/")).unwrap(), "/a/b");
        assert!(normalize(Path::new("a/../../etc")).is_err());
        assert_eq!(
            normalize(Path::new("/etc/q\"uote !x")).unwrap(),
            "/etc/q\"uote !x"
        );
        let err = format!("{:#}", normalize(Path::new("etc/a\nb")).unwrap_err());
        assert!(err.contains("\"a\\nb\"") && err.contains("0x0a"), "{err}");
        assert!(normalize(Path::new(&"n".repeat(256))).is_err());
        assert!(normalize(Path::new(&"n".repeat(255))).is_ok());
        assert!(check_xattr_name("").is_err());
        assert!(check_xattr_name("user.a\rb").is_err());
        assert!(check_xattr_name("user.\"!").is_ok());
    }

    fn entry(kind: Kind) -> Entry {
        Entry {
            kind,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 0,
            xattrs: vec![],
        }
    }

    #[test]
    fn refuses_entries_below_non_directories_and_a_root_that_is_not_one() {
        let d = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        let mut t = Tree::new(&d.path().join("s")).unwrap();
        t.insert("/a", entry(Kind::Symlink(host.path().into())), |_| Ok(()))
            .unwrap();
        let err = t
            .insert("/a/x", entry(Kind::File(1)), |f| Ok(f.write_all(b"x")?))
            .unwrap_err();
        assert!(
            format!("{err}").contains("parent \"/a\" is a symlink"),
            "{err}"
        );
        assert!(t.insert("/a/b/c", entry(Kind::Dir), |_| Ok(())).is_err());
        assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 0);
        assert!(t
            .insert("/", entry(Kind::Symlink(host.path().into())), |_| Ok(()))
            .is_err());
        assert!(!t.entries.contains_key("/a/x") && !t.entries.contains_key("/a/b"));
    }

    #[test]
    fn replacing_a_directory_removes_it_without_following_symlinks_inside() {
        let d = tempfile::tempdir().unwrap();
        let host = tempfile::tempdir().unwrap();
        std::fs::write(host.path().join("keep"), b"host").unwrap();
        let mut t = Tree::new(&d.path().join("s")).unwrap();
        t.insert("/d/e/f", entry(Kind::File(1)), |f| Ok(f.write_all(b"x")?))
            .unwrap();
        t.insert("/d/l", entry(Kind::Symlink(host.path().into())), |_| Ok(()))
            .unwrap();
        t.insert("/d", entry(Kind::File(2)), |f| Ok(f.write_all(b"yz")?))
            .unwrap();
        assert_eq!(std::fs::read(t.staged("/d")).unwrap(), b"yz");
        assert_eq!(std::fs::read(host.path().join("keep")).unwrap(), b"host");
        assert_eq!(
            t.entries.keys().collect::<Vec<_>>(),
            ["/", "/d"],
            "entries below a replaced directory are gone"
        );
        // And back: a file replaced by a directory, a symlink by a directory.
        t.insert("/d", entry(Kind::Dir), |_| Ok(())).unwrap();
        t.insert("/d/s", entry(Kind::Symlink(host.path().into())), |_| Ok(()))
            .unwrap();
        t.insert("/d/s", entry(Kind::Dir), |_| Ok(())).unwrap();
        t.insert("/d/s/x", entry(Kind::File(0)), |_| Ok(()))
            .unwrap();
        assert!(t.staged("/d/s/x").is_file());
        assert_eq!(std::fs::read_dir(host.path()).unwrap().count(), 1);
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
        t.insert("/boot/vmlinuz-1", e(Kind::File(0)), |_| Ok(()))
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
