//! What an image carries so that kernel updates reach its boot: the static `oneimage`
//! program and the agent under `/usr/lib/oneimage`, the Debian kernel hooks that run
//! `oneimage update-boot`, and the boot menu's settings.
//!
//! Debian's kernel packages run every program in `/etc/kernel/postinst.d` after
//! installing a kernel and in `/etc/kernel/postrm.d` after removing one, with the
//! release as the first argument; initramfs-tools and dracut hook in the same way, and
//! ours runs after them (`zz-`), leaving their files alone.

use crate::esp::{MenuSettings, MENU_SETTINGS_PATH};
use crate::rootfs::{Entry, Kind, Tree};
use anyhow::{Context, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Where the image keeps its own programs.
pub const LIB_DIR: &str = "/usr/lib/oneimage";
/// The `oneimage` program in the image.
pub const TOOL_PATH: &str = "/usr/lib/oneimage/oneimage";
/// The command name an administrator types.
pub const TOOL_LINK: &str = "/usr/sbin/oneimage";
/// The kernel hooks, by directory: (path, what the kernel package did).
pub const HOOKS: &[(&str, &str)] = &[
    ("/etc/kernel/postinst.d/zz-oneimage", "installed"),
    ("/etc/kernel/postrm.d/zz-oneimage", "removed"),
];

fn hook_script(event: &str) -> String {
    format!(
        "#!/bin/sh\n\
         # Written by oneimage: the kernel package {event} kernel $1; rebuild the boot\n\
         # menu and oneimage's initramfs images on the ESP this system started from.\n\
         # (Nothing is done in a chroot, in a live session or on a system that\n\
         # oneimage's boot menu did not start.)\n\
         set -e\n\
         exec {TOOL_PATH} update-boot --kernel-hook {event} \"${{1:-}}\"\n"
    )
}

/// Adds the kit to `tree`, files dated `menu.epoch`.
pub fn add_to_root(tree: &mut Tree, menu: &MenuSettings, tool: &Path, agent: &Path) -> Result<()> {
    let file = |mode: u32, len: usize| Entry {
        kind: Kind::File(len as u64),
        mode,
        uid: 0,
        gid: 0,
        mtime: menu.epoch,
        xattrs: Vec::new(),
    };
    let mut add = |path: &str, mode: u32, data: &[u8]| -> Result<()> {
        tree.insert(path, file(mode, data.len()), |f| {
            f.write_all(data)?;
            Ok(())
        })
        .with_context(|| format!("adding {path} to the root filesystem"))
    };
    for (path, program) in [
        (TOOL_PATH.to_string(), tool),
        (format!("{LIB_DIR}/oneimage-init"), agent),
    ] {
        let data =
            std::fs::read(program).with_context(|| format!("reading {}", program.display()))?;
        add(&path, 0o755, &data)?;
    }
    for (path, event) in HOOKS {
        add(path, 0o755, hook_script(event).as_bytes())?;
    }
    let settings = format!(
        "# The boot menu oneimage writes on the ESP: `oneimage update-boot` (run by the\n\
         # kernel packages) reads this. Change it, then run `oneimage update-boot`.\n\
         {}",
        toml::to_string(menu).context("writing the boot menu settings")?
    );
    add(MENU_SETTINGS_PATH, 0o644, settings.as_bytes())?;
    tree.insert(
        TOOL_LINK,
        Entry {
            kind: Kind::Symlink(PathBuf::from("../lib/oneimage/oneimage")),
            mode: 0o777,
            uid: 0,
            gid: 0,
            mtime: menu.epoch,
            xattrs: Vec::new(),
        },
        |_| Ok(()),
    )
    .with_context(|| format!("adding {TOOL_LINK} to the root filesystem"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_pass_the_release_and_the_event() {
        let s = hook_script("installed");
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("update-boot --kernel-hook installed \"${1:-}\""));
    }

    #[test]
    fn menu_settings_round_trip_through_toml() {
        let m = MenuSettings {
            title: "Demo 'quoted'".into(),
            cmdline: "rw console=ttyS0".into(),
            root_partuuid: "01234567-89ab-cdef-0123-456789abcdef".into(),
            root_number: 2,
            timeout: 1,
            epoch: 1767225600,
            encryption: "require".into(),
            encryption_discards: true,
        };
        let text = toml::to_string(&m).unwrap();
        assert_eq!(toml::from_str::<MenuSettings>(&text).unwrap(), m);
        // An image built before encryption existed has no such key.
        let old = text
            .replace("encryption = \"require\"\n", "")
            .replace("encryption-discards = true\n", "");
        assert_eq!(
            toml::from_str::<MenuSettings>(&old).unwrap().encryption,
            "off"
        );
    }
}
