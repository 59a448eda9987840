//! `oneimage update-boot`: the kernel hooks' command.

use anyhow::{bail, Result};
use oneimage_system::boot_disk::NotBootedFromDisk;
use oneimage_system::update_boot::{update_boot, HookEvent};

/// Arguments of `oneimage update-boot`.
#[derive(clap::Args, Debug)]
pub struct UpdateBootArgs {
    /// Run by a kernel package's hook: what it did (installed or removed) and the kernel
    /// release. On a system with no disk boot to update (a chroot, a live session, a
    /// disc) this says so and succeeds, so that the package's installation goes on.
    #[arg(long, num_args = 2, value_names = ["EVENT", "RELEASE"])]
    kernel_hook: Option<Vec<String>>,
}

/// Runs `oneimage update-boot`.
pub fn run(a: UpdateBootArgs) -> Result<()> {
    let event = match a.kernel_hook.as_deref() {
        None => None,
        Some([e, v]) if e == "installed" => Some(HookEvent::Installed(v.clone())),
        Some([e, v]) if e == "removed" => Some(HookEvent::Removed(v.clone())),
        Some(other) => bail!(
            "--kernel-hook {}: expected `installed RELEASE` or `removed RELEASE`",
            other.join(" ")
        ),
    };
    let say = |m: &str| eprintln!("oneimage: update-boot: {m}");
    match update_boot(event.as_ref(), &say) {
        Ok(u) => {
            for (i, k) in u.kernels.iter().enumerate() {
                let role = if i == 0 { "default" } else { "fallback" };
                say(&format!("{role}: kernel {} ({})", k.version, k.kernel));
            }
            say(&format!(
                "ESP {}: {} files written, {} removed, boot menu {}",
                u.esp.display(),
                u.written.len(),
                u.removed.len(),
                if u.menu_changed {
                    "switched"
                } else {
                    "unchanged"
                }
            ));
            Ok(())
        }
        Err(e) if event.is_some() && e.is::<NotBootedFromDisk>() => {
            say(&format!("nothing to do: {e}"));
            Ok(())
        }
        Err(e) => Err(e),
    }
}
