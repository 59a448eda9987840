//! A hostile root filesystem cannot run a command or touch a host file while it is
//! built: crafted tarballs and directories with names full of newlines, quotes, `!`,
//! control characters, very long or non-UTF-8 bytes, and escapes through symlinks,
//! hardlinks and `..`. Each is either refused with a message naming the entry, or built
//! faithfully (checked in the image with debugfs); nothing appears outside the output.

use oneimage_builder::ext4::{make_ext4, Ext4Params, Placement, MAX_SCRIPT_LINE};
use oneimage_builder::rootfs::{add_directory, add_overlay, add_tarball, Tree};
use oneimage_builder::run::Cancel;
use oneimage_builder::spec::SizePolicy;
use oneimage_format::Guid;
use std::path::{Path, PathBuf};
use std::process::Command;
use tar::EntryType as T;

/// Places outside the output that a hostile root filesystem aims at: a marker file that
/// an injected command would create, and a directory that symlinks point into.
struct Outside {
    dir: tempfile::TempDir,
}

impl Outside {
    fn new() -> Outside {
        let dir = tempfile::Builder::new()
            .prefix("oneimage-hostile-")
            .tempdir()
            .unwrap();
        std::fs::create_dir(dir.path().join("target")).unwrap();
        std::fs::write(dir.path().join("secret"), b"host secret").unwrap();
        Outside { dir }
    }

    /// The file an injected `touch` would create.
    fn marker(&self) -> String {
        self.dir.path().join("PWNED").to_str().unwrap().to_string()
    }

    /// A host directory symlinks in the root filesystem point at.
    fn target(&self) -> String {
        self.dir.path().join("target").to_str().unwrap().to_string()
    }

    /// Fails unless the outside is exactly as made: no marker, nothing in `target`.
    fn untouched(&self) {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["secret", "target"], "something was written outside");
        let inside: Vec<_> = std::fs::read_dir(self.target()).unwrap().collect();
        assert!(
            inside.is_empty(),
            "the symlink target on the host was written to"
        );
        assert_eq!(
            std::fs::read(self.dir.path().join("secret")).unwrap(),
            b"host secret"
        );
    }
}

/// One tar entry with a name of any bytes.
struct E {
    name: Vec<u8>,
    kind: T,
    mode: u32,
    uid: u64,
    gid: u64,
    data: Vec<u8>,
    link: Option<Vec<u8>>,
    dev: (u32, u32),
    /// Raw PAX records (key, value) written before the entry.
    pax: Vec<(Vec<u8>, Vec<u8>)>,
}

fn e(name: impl AsRef<[u8]>, kind: T) -> E {
    E {
        name: name.as_ref().to_vec(),
        kind,
        mode: if kind == T::Directory { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        data: Vec::new(),
        link: None,
        dev: (0, 0),
        pax: Vec::new(),
    }
}

fn file(name: impl AsRef<[u8]>, data: &[u8]) -> E {
    E {
        data: data.to_vec(),
        ..e(name, T::Regular)
    }
}

fn link(name: impl AsRef<[u8]>, kind: T, target: impl AsRef<[u8]>) -> E {
    E {
        link: Some(target.as_ref().to_vec()),
        ..e(name, kind)
    }
}

/// One PAX record, `LEN KEY=VALUE\n`, where LEN counts the whole record.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 2;
    let mut len = body + 1;
    while len != body + len.to_string().len() + 1 {
        len = body + len.to_string().len() + 1;
    }
    let mut r = format!("{len} ").into_bytes();
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// Writes a tarball by hand, so names and PAX keys can be any bytes: names (and link
/// targets) of up to 99 bytes go in the header itself, longer ones in PAX records.
fn write_tar(path: &Path, entries: &[E]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for en in entries {
        let mut pax = en.pax.clone();
        if en.name.len() > 99 {
            pax.push((b"path".to_vec(), en.name.clone()));
        }
        if let Some(l) = en.link.as_ref().filter(|l| l.len() > 99) {
            pax.push((b"linkpath".to_vec(), l.clone()));
        }
        if !pax.is_empty() {
            let data: Vec<u8> = pax.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(T::XHeader);
            h.as_old_mut().name[..9].copy_from_slice(b"PaxHeader");
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append(&h, &data[..]).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(en.kind);
        h.set_mode(en.mode);
        h.set_uid(en.uid);
        h.set_gid(en.gid);
        h.set_mtime(1_600_000_000);
        h.set_size(en.data.len() as u64);
        let name: &[u8] = if en.name.len() > 99 {
            b"long-name-in-pax"
        } else {
            &en.name
        };
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        if let Some(l) = &en.link {
            let l: &[u8] = if l.len() > 99 { b"long-link-in-pax" } else { l };
            h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
        }
        if matches!(en.kind, T::Char | T::Block) {
            h.set_device_major(en.dev.0).unwrap();
            h.set_device_minor(en.dev.1).unwrap();
        }
        h.set_cksum();
        b.append(&h, &en.data[..]).unwrap();
    }
    b.finish().unwrap();
}

/// Reads `entries` as a root tarball into a fresh tree in `work`.
fn read_tar(work: &Path, entries: &[E]) -> anyhow::Result<Tree> {
    let tar = work.join("root.tar");
    write_tar(&tar, entries);
    let mut tree = Tree::new(&work.join("staging"))?;
    add_tarball(&mut tree, &tar)?;
    Ok(tree)
}

/// The message of a refused tarball (panics if it was accepted).
fn refusal(out: &Outside, entries: &[E]) -> String {
    let work = tempfile::tempdir().unwrap();
    let err = match read_tar(work.path(), entries) {
        Ok(_) => panic!("a hostile tarball was accepted"),
        Err(e) => format!("{e:#}"),
    };
    out.untouched();
    err
}

/// Makes the ext4 image of `tree` in `work`; returns its path.
fn make_image(tree: &Tree, work: &Path) -> PathBuf {
    tree.pin_times(1_700_000_000).unwrap();
    let img = work.join("root.ext4");
    let p = Ext4Params {
        label: "root",
        uuid: Guid([7; 16]),
        epoch: 1_700_000_000,
        size: SizePolicy::Minimal { headroom: 0 },
        progress: Default::default(),
    };
    let img2 = img.clone();
    make_ext4(
        tree,
        &p,
        work,
        move |size| {
            std::fs::File::create(&img2)?.set_len(size)?;
            Ok(Placement {
                file: img2.clone(),
                offset: 0,
            })
        },
        Cancel::new(None),
    )
    .unwrap();
    img
}

/// Runs debugfs `commands` (one per line) read-only on `img` in the C locale; returns
/// what it printed, failing on any error it reports.
fn debugfs(img: &Path, commands: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("cmds");
    std::fs::write(&script, commands).unwrap();
    let out = Command::new("debugfs")
        .env("LC_ALL", "C")
        .arg("-f")
        .arg(&script)
        .arg(img)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let problems: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
        .collect();
    assert!(
        out.status.success() && problems.is_empty(),
        "debugfs: {err}"
    );
    out.stdout
}

/// A path as one debugfs word (a quote doubled inside quotes, as libss reads it).
fn word(path: &[u8]) -> Vec<u8> {
    let mut w = vec![b'"'];
    for &b in path {
        if b == b'"' {
            w.push(b'"');
        }
        w.push(b);
    }
    w.push(b'"');
    w
}

/// One line of `ls -p`: mode, uid, gid and the raw name.
#[derive(Debug)]
struct Listed {
    mode: u32,
    uid: u32,
    gid: u32,
    name: Vec<u8>,
}

/// The entries of directory `dir` of the image, with names as raw bytes.
fn ls(img: &Path, dir: &[u8]) -> Vec<Listed> {
    let mut cmd = b"ls -p ".to_vec();
    cmd.extend(word(dir));
    cmd.push(b'\n');
    let out = debugfs(img, std::str::from_utf8(&cmd).unwrap());
    out.split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"/"))
        .map(|l| {
            // /INODE/MODE/UID/GID/NAME/SIZE/ (names hold no '/' and, here, no newline)
            let f: Vec<&[u8]> = l.split(|&b| b == b'/').collect();
            let num = |s: &[u8], radix| {
                u32::from_str_radix(std::str::from_utf8(s).unwrap(), radix).unwrap()
            };
            Listed {
                mode: num(f[2], 8),
                uid: num(f[3], 10),
                gid: num(f[4], 10),
                name: f[5].to_vec(),
            }
        })
        .collect()
}

/// The listing of `name` in directory `dir` of the image (panics if it is missing).
fn find(img: &Path, dir: &[u8], name: &[u8]) -> Listed {
    ls(img, dir)
        .into_iter()
        .find(|l| l.name == name)
        .unwrap_or_else(|| {
            panic!(
                "{} missing from {}",
                name.escape_ascii(),
                dir.escape_ascii()
            )
        })
}

fn root_dir() -> E {
    e("./", T::Directory)
}

#[test]
fn names_with_line_breaks_and_control_characters_are_refused_by_name() {
    let out = Outside::new();
    let m = out.marker();
    for (name, shown) in [
        (format!("etc/x\n!touch {m}"), "\\n!touch"),
        (format!("etc/x\r!touch {m}"), "\\r!touch"),
        ("etc/a\x1b[31mred".to_string(), "\\x1b[31mred"),
        ("etc/tab\there".to_string(), "\\there"),
        ("etc/del\x7f".to_string(), "\\x7f"),
    ] {
        let err = refusal(&out, &[root_dir(), file(&name, b"x")]);
        assert!(err.contains(shown), "{err}");
        assert!(err.contains("control character"), "{err}");
        assert!(
            !err.contains('\n') && !err.contains('\r') && !err.contains('\x1b'),
            "{err:?}"
        );
    }
    // Also in a device node's name, a hardlink's or a symlink's.
    let dev = E {
        dev: (1, 3),
        ..e(format!("dev/n\n!touch {m}"), T::Char)
    };
    let err = refusal(&out, &[root_dir(), dev]);
    assert!(err.contains("\\n!touch"), "{err}");
    let err = refusal(
        &out,
        &[
            root_dir(),
            file("f", b"x"),
            link(format!("h\n!touch {m}"), T::Link, "f"),
        ],
    );
    assert!(err.contains("control character"), "{err}");
    let err = refusal(
        &out,
        &[root_dir(), file("f", b"x"), link("h", T::Link, "f\n!x")],
    );
    assert!(err.contains("control character"), "{err}");
}

#[test]
fn names_that_are_not_utf8_are_refused_by_name() {
    let out = Outside::new();
    let err = refusal(&out, &[root_dir(), file(b"etc/caf\xe9", b"x")]);
    assert!(
        err.contains("etc/caf\\xe9") && err.contains("not valid UTF-8"),
        "{err}"
    );
    // A PAX key that is not UTF-8 (where attribute names come from).
    let f = E {
        pax: vec![(b"SCHILY.xattr.user.\xff".to_vec(), b"v".to_vec())],
        ..file("etc/f", b"x")
    };
    let err = refusal(&out, &[root_dir(), f]);
    assert!(
        err.contains("\"/etc/f\"")
            && err.contains("\"SCHILY.xattr.user.\\xff\" is not valid UTF-8"),
        "{err}"
    );
}

#[test]
fn names_too_long_for_ext4_or_any_path_are_refused() {
    let out = Outside::new();
    let long = "n".repeat(256);
    let err = refusal(&out, &[root_dir(), file(format!("etc/{long}"), b"x")]);
    assert!(
        err.contains("256 bytes long") && err.contains("at most 255"),
        "{err}"
    );
    let deep = vec!["d".repeat(200); 21].join("/");
    let err = refusal(&out, &[root_dir(), file(&deep, b"x")]);
    assert!(
        err.contains("4221 bytes long") && err.contains("4095"),
        "{err}"
    );
}

#[test]
fn escapes_through_dotdot_symlinks_and_hardlinks_are_refused() {
    let out = Outside::new();
    let t = out.target();
    // `..` anywhere, also under an absolute name.
    for name in ["../x", "a/../../x", "/../../x"] {
        let err = refusal(&out, &[root_dir(), file(name, b"x")]);
        assert!(err.contains("'..'"), "{name}: {err}");
    }
    // Writing through a symlink to a host directory, absolute or relative.
    for target in [t.clone(), format!("../../../../../../../..{t}")] {
        let err = refusal(
            &out,
            &[
                root_dir(),
                link("a", T::Symlink, &target),
                file("a/x", b"pwned"),
            ],
        );
        assert!(
            err.contains("\"/a/x\"") && err.contains("parent \"/a\" is a symlink"),
            "{err}"
        );
    }
    // A directory replaced by a symlink cannot be written through either.
    let err = refusal(
        &out,
        &[
            root_dir(),
            e("d/", T::Directory),
            file("d/f", b"x"),
            link("d", T::Symlink, &t),
            file("d/g", b"pwned"),
        ],
    );
    assert!(err.contains("parent \"/d\" is a symlink"), "{err}");
    // Nor through a regular file or a device taken for a directory.
    let err = refusal(&out, &[root_dir(), file("f", b"x"), file("f/x", b"y")]);
    assert!(err.contains("parent \"/f\" is a regular file"), "{err}");
    // Hardlinks: outside the tree, to nothing, to a symlink that points at the host.
    let err = refusal(&out, &[root_dir(), link("h", T::Link, "../../secret")]);
    assert!(err.contains("'..'"), "{err}");
    let err = refusal(&out, &[root_dir(), link("h", T::Link, "/etc/passwd")]);
    assert!(
        err.contains("not a regular file in the root filesystem"),
        "{err}"
    );
    let secret = format!("{}/secret", out.dir.path().display());
    let err = refusal(
        &out,
        &[
            root_dir(),
            link("s", T::Symlink, &secret),
            link("h", T::Link, "s"),
        ],
    );
    assert!(err.contains("hardlink \"/h\" points at \"/s\""), "{err}");
    // The root itself replaced by a symlink (mkfs would copy the host directory).
    let err = refusal(
        &out,
        &[root_dir(), file("f", b"x"), link("./", T::Symlink, &t)],
    );
    assert!(
        err.contains("root directory") && err.contains("a symlink"),
        "{err}"
    );
    let err = refusal(&out, &[link(".", T::Symlink, &t)]);
    assert!(err.contains("root directory"), "{err}");
}

#[test]
fn hostile_attribute_names_are_refused() {
    let out = Outside::new();
    let m = out.marker();
    for name in [
        format!("user.a\r!touch {m}"),
        "user.\x1b]0;x".into(),
        String::new(),
    ] {
        let f = E {
            pax: vec![(format!("SCHILY.xattr.{name}").into_bytes(), b"v".to_vec())],
            ..file("etc/f", b"x")
        };
        let err = refusal(&out, &[root_dir(), f]);
        assert!(err.contains("\"/etc/f\": extended attribute"), "{err}");
    }
    // A newline in a PAX record (name or value) is beyond the tar reader: refused too.
    for (k, v) in [
        (format!("SCHILY.xattr.user.a\n!touch {m}"), b"v".to_vec()),
        (
            "SCHILY.xattr.user.a".to_string(),
            format!("\n!touch {m}\n").into_bytes(),
        ),
    ] {
        let f = E {
            pax: vec![(k.into_bytes(), v)],
            ..file("etc/f", b"x")
        };
        let err = refusal(&out, &[root_dir(), f]);
        assert!(
            err.contains("\"/etc/f\": a PAX extended header record"),
            "{err}"
        );
    }
}

/// Everything ext4 and debugfs can carry is built as it is, and nothing runs: quotes,
/// `!`, `#`, `-`, `<N>` (debugfs's inode syntax), spaces, backslashes, Unicode, 255-byte
/// names, paths too long for one debugfs word, hostile symlink targets, attribute
/// names and values.
#[test]
fn hostile_but_valid_names_are_built_faithfully_and_run_nothing() {
    let out = Outside::new();
    let m = out.marker();
    let t = out.target();
    let long = "n".repeat(255);
    let quotes = "\"".repeat(250);
    let deep = format!("deep/{}", vec![quotes.as_str(); 15].join("/"));
    let names: Vec<String> = vec![
        "q\"uote".into(),
        "a\"\"b\"".into(),
        "!touch PWNED".into(),
        "$(touch PWNED)".into(),
        "`touch PWNED`; touch PWNED".into(),
        "sp ace".into(),
        "'single'".into(),
        "back\\slash".into(),
        "ünïcødé 🚀".into(),
        "<12>".into(),
        "-r".into(),
        "#hash".into(),
        long.clone(),
    ];
    let mut entries = vec![root_dir(), e("etc/", T::Directory)];
    for (i, n) in names.iter().enumerate() {
        entries.push(E {
            mode: 0o600,
            uid: 1000 + i as u64,
            gid: 2000 + i as u64,
            ..file(format!("etc/{n}"), n.as_bytes())
        });
    }
    entries.push(E {
        uid: 42,
        gid: 43,
        mode: 0o640,
        ..file(format!("{deep}/end \"x\""), b"deep")
    });
    entries.push(E {
        mode: 0o620,
        gid: 5,
        dev: (1, 3),
        ..e("dev/n\"ode !x", T::Char)
    });
    entries.push(E {
        mode: 0o600,
        uid: 7,
        ..e("dev/<13>", T::Fifo)
    });
    entries.push(link("etc/link-nl", T::Symlink, format!("\n!touch {m}\n")));
    entries.push(link("etc/link-ff", T::Symlink, b"\xff\xfe"));
    entries.push(link("etc/link-out", T::Symlink, &t));
    entries.push(link("etc/hard \"x\"", T::Link, "etc/q\"uote"));
    // A symlink replaced by a directory, then written into: the directory is real.
    entries.push(link("swap", T::Symlink, &t));
    entries.push(e("swap/", T::Directory));
    entries.push(file("swap/inside", b"in the image"));
    // A later entry of the same name wins, as with tar.
    entries.push(file("etc/dup", b"one"));
    entries.push(file("etc/dup", b"two"));
    let attrs: Vec<(&str, Vec<u8>)> = vec![
        ("user.q\"x", format!("\r!touch {m}\r").into_bytes()),
        ("user.!x y", b"\x00\xff\"".to_vec()),
        // getopt would take a word starting with `-` for an option.
        ("-r", b"dash".to_vec()),
        ("security.capability", vec![1, 0, 0, 2, 0, 0x20, 0, 0]),
    ];
    entries.push(E {
        pax: attrs
            .iter()
            .map(|(k, v)| (format!("SCHILY.xattr.{k}").into_bytes(), v.clone()))
            .collect(),
        ..file("etc/attrs", b"x")
    });

    // The same as a path: directories named `!touch /tmp`... in the image.
    entries.push(file(format!("etc/!touch {m}"), b"x"));

    let work = tempfile::tempdir().unwrap();
    let tree = read_tar(work.path(), &entries).unwrap();
    out.untouched();
    let img = make_image(&tree, work.path());
    out.untouched();

    for (i, n) in names.iter().enumerate() {
        let l = find(&img, b"/etc", n.as_bytes());
        assert_eq!(
            (l.mode, l.uid, l.gid),
            (0o100600, 1000 + i as u32, 2000 + i as u32),
            "{n}"
        );
        let dumped = work.path().join("dumped");
        let mut cmd = b"dump ".to_vec();
        cmd.extend(word(format!("/etc/{n}").as_bytes()));
        cmd.push(b' ');
        cmd.extend(word(dumped.to_str().unwrap().as_bytes()));
        debugfs(&img, std::str::from_utf8(&cmd).unwrap());
        assert_eq!(std::fs::read(&dumped).unwrap(), n.as_bytes(), "{n}");
        std::fs::remove_file(&dumped).unwrap();
    }
    // The deep path is longer than one debugfs word, and still named exactly.
    let deep_dir = format!("/{deep}");
    assert!(word(deep_dir.as_bytes()).len() > 4000 && deep_dir.len() < 4095);
    let l = find(&img, deep_dir.as_bytes(), b"end \"x\"");
    assert_eq!((l.mode, l.uid, l.gid), (0o100640, 42, 43));
    let l = find(&img, b"/dev", b"n\"ode !x");
    assert_eq!((l.mode, l.uid, l.gid), (0o020620, 0, 5));
    let stat = debugfs(&img, "stat \"/dev/n\"\"ode !x\"\n");
    assert!(
        String::from_utf8_lossy(&stat).contains("Device major/minor number: 01:03"),
        "{}",
        String::from_utf8_lossy(&stat)
    );
    let l = find(&img, b"/dev", b"<13>");
    assert_eq!((l.mode, l.uid), (0o010600, 7));
    for (name, target) in [
        ("link-nl", format!("\n!touch {m}\n").into_bytes()),
        ("link-ff", b"\xff\xfe".to_vec()),
        ("link-out", t.clone().into_bytes()),
    ] {
        let stat = debugfs(&img, &format!("stat \"/etc/{name}\"\n"));
        let mut want = b"Fast link dest: \"".to_vec();
        want.extend(&target);
        want.push(b'"');
        assert!(
            stat.windows(want.len()).any(|w| w == want),
            "{name}: {}",
            stat.escape_ascii()
        );
    }
    let hard = find(&img, b"/etc", b"hard \"x\"");
    assert_eq!((hard.mode, hard.uid), (0o100600, 1000));
    let (m_dir, m_name) = m.rsplit_once('/').unwrap();
    find(
        &img,
        format!("/etc/!touch {m_dir}").as_bytes(),
        m_name.as_bytes(),
    );
    let l = find(&img, b"/", b"swap");
    assert_eq!(l.mode, 0o040755);
    find(&img, b"/swap", b"inside");
    let dumped = work.path().join("dup");
    debugfs(&img, &format!("dump /etc/dup {}\n", dumped.display()));
    assert_eq!(std::fs::read(&dumped).unwrap(), b"two");
    for (name, value) in &attrs {
        let got = work.path().join("attr");
        let mut cmd = b"ea_get -f ".to_vec();
        cmd.extend(word(got.to_str().unwrap().as_bytes()));
        cmd.extend(b" -- \"/etc/attrs\" ");
        cmd.extend(word(name.as_bytes()));
        cmd.push(b'\n');
        debugfs(&img, std::str::from_utf8(&cmd).unwrap());
        assert_eq!(&std::fs::read(&got).unwrap(), value, "{name}");
        std::fs::remove_file(&got).unwrap();
    }
    let fsck = Command::new("e2fsck")
        .env("LC_ALL", "C")
        .arg("-fn")
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    out.untouched();
}

/// The same from a directory, read in place (borrowed) and staged (as an overlay).
#[test]
fn hostile_directories_are_refused_by_name_or_built_faithfully() {
    use std::os::unix::ffi::OsStrExt;
    let out = Outside::new();
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/q\"uote !x"), b"q").unwrap();
    std::fs::write(root.join("etc/<12>"), b"n").unwrap();
    std::os::unix::fs::symlink(out.target(), root.join("etc/out")).unwrap();
    for borrowed in [true, false] {
        let work = tempfile::tempdir().unwrap();
        let mut tree = if borrowed {
            Tree::borrow(&root).unwrap()
        } else {
            Tree::new(&work.path().join("staging")).unwrap()
        };
        if borrowed {
            add_directory(&mut tree, &root).unwrap();
        } else {
            add_overlay(&mut tree, &root).unwrap();
        }
        let img = make_image(&tree, work.path());
        find(&img, b"/etc", b"q\"uote !x");
        find(&img, b"/etc", b"<12>");
        assert_eq!(find(&img, b"/etc", b"out").mode & 0o170000, 0o120000);
        out.untouched();
    }
    // Host file names cannot hold '/', so the injected command writes to the cwd.
    for bad in [
        b"x\n!touch PWNED".to_vec(),
        b"x\r!y".to_vec(),
        b"caf\xe9".to_vec(),
    ] {
        let dir = src.path().join("bad");
        std::fs::create_dir_all(dir.join("etc")).unwrap();
        let f = dir.join("etc").join(std::ffi::OsStr::from_bytes(&bad));
        std::fs::write(&f, b"x").unwrap();
        for borrowed in [true, false] {
            let work = tempfile::tempdir().unwrap();
            let mut tree = if borrowed {
                Tree::borrow(&dir).unwrap()
            } else {
                Tree::new(&work.path().join("staging")).unwrap()
            };
            let err = format!("{:#}", add_directory(&mut tree, &dir).unwrap_err());
            assert!(
                err.contains(&bad.escape_ascii().to_string())
                    && (err.contains("control character") || err.contains("not valid UTF-8")),
                "{err}"
            );
            out.untouched();
            assert!(!Path::new("PWNED").exists());
        }
        std::fs::remove_file(&f).unwrap();
    }
}

/// An attribute name with a line break in a directory: staged (a directory root with an
/// overlay), its name would go to debugfs, which before this check ran the rest of the
/// line through the shell; it is refused. Read in place, mkfs.ext4 copies it itself,
/// bytes as they are, and it is kept.
#[test]
fn attribute_names_with_line_breaks_in_a_directory_are_refused_or_copied_as_they_are() {
    let out = Outside::new();
    let name = format!("user.a\n!touch {} #", out.marker());
    let src = tempfile::tempdir().unwrap();
    let root = src.path().join("root");
    std::fs::create_dir_all(root.join("etc")).unwrap();
    let f = root.join("etc/f");
    std::fs::write(&f, b"x").unwrap();
    xattr::set(&f, &name, b"value").unwrap();

    let work = tempfile::tempdir().unwrap();
    let mut tree = Tree::new(&work.path().join("staging")).unwrap();
    let err = format!("{:#}", add_directory(&mut tree, &root).unwrap_err());
    assert!(
        err.contains("\"/etc/f\": extended attribute") && err.contains("user.a\\n!touch"),
        "{err}"
    );
    out.untouched();

    let mut tree = Tree::borrow(&root).unwrap();
    add_directory(&mut tree, &root).unwrap();
    let img = make_image(&tree, work.path());
    let listed = debugfs(&img, "ea_list /etc/f\n");
    // debugfs shows the line break in the name as `\n`.
    let want = format!("{} (5) = \"value\"", name.replace('\n', "\\n"));
    assert!(
        listed.windows(want.len()).any(|w| w == want.as_bytes()),
        "{}",
        listed.escape_ascii()
    );
    out.untouched();
}

/// The line limit the builder keeps to is one this host's debugfs reads whole, and a
/// line longer than debugfs's buffer really is cut, with its rest run as a command.
#[test]
fn debugfs_reads_script_lines_this_long_whole() {
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("scratch.ext4");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let mk = Command::new("mkfs.ext4")
        .env("LC_ALL", "C")
        .args(["-q", "-F"])
        .arg(&img)
        .output()
        .unwrap();
    assert!(
        mk.status.success(),
        "{}",
        String::from_utf8_lossy(&mk.stderr)
    );
    let run = |len: usize| {
        // `cd "/././…/."`: one command of exactly `len` bytes, harmless when read whole.
        let mut line = String::from("cd \"/");
        while line.len() + 3 <= len {
            line.push_str("./");
        }
        if line.len() + 2 == len {
            line.push('.');
        }
        line.push('"');
        assert_eq!(line.len(), len);
        let script = work.path().join("cmds");
        std::fs::write(&script, format!("{line}\n")).unwrap();
        let out = Command::new("debugfs")
            .env("LC_ALL", "C")
            .arg("-f")
            .arg(&script)
            .arg(&img)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .filter(|l| !l.starts_with("debugfs ") && !l.trim().is_empty())
            .count()
    };
    assert_eq!(
        run(MAX_SCRIPT_LINE),
        0,
        "debugfs cut a line of {MAX_SCRIPT_LINE} bytes"
    );
    assert!(
        run(8300) > 0,
        "debugfs read a line longer than its buffer whole"
    );
}
