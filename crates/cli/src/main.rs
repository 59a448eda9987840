//! The `oneimage` command: parses arguments and calls the libraries.

mod bmap_cmd;
mod convert_cmd;
mod inspect;
mod install_cmd;
mod interrupt;
mod update_boot_cmd;
mod write_cmd;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use oneimage_vm::{FirmwareKind, Media};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Build, inspect and boot one generic Linux OS image.
#[derive(Parser, Debug)]
#[command(name = "oneimage", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Build a disk image from a spec file (see docs/spec.md).
    Build {
        /// The image spec (TOML).
        spec: PathBuf,
        /// Directory for the image.
        #[arg(short, long, default_value = ".")]
        output: PathBuf,
        /// Keep root filesystems made by mmdebstrap in DIR and reuse them.
        #[arg(long, value_name = "DIR")]
        rootfs_cache: Option<PathBuf>,
        /// Say nothing but warnings and errors; print only the image's path.
        #[arg(short, long, conflicts_with = "json")]
        quiet: bool,
        /// Report progress as JSON lines on stdout, ending with a "done" object that
        /// lists the image, its artifacts, kernel and partitions.
        #[arg(long)]
        json: bool,
    },
    /// Show partitions, filesystems and boot files of an image, without mounting it.
    Inspect {
        /// The disk image.
        image: PathBuf,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Boot an image in QEMU (UEFI), attached as a disk and changed in place.
    Qemu {
        /// The disk image.
        image: PathBuf,
        /// Leave the image file untouched (writes go to a temporary overlay).
        #[arg(long)]
        snapshot: bool,
        /// Enlarge the disk first (sparse), like writing to a bigger USB stick.
        #[arg(long, value_name = "SIZE")]
        disk_size: Option<String>,
        /// No window: read the serial console here.
        #[arg(long)]
        headless: bool,
        /// Exit 0 as soon as TEXT appears on the serial console (needs --headless).
        #[arg(long, value_name = "TEXT", requires = "headless")]
        expect: Option<String>,
        /// Give up after SECONDS (needs --headless).
        #[arg(long, value_name = "SECONDS", requires = "headless")]
        timeout: Option<u64>,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = 1024)]
        memory: u32,
        /// Do not copy the serial console to stdout.
        #[arg(long)]
        quiet: bool,
        /// Write the serial console to FILE (needs --headless).
        #[arg(long, value_name = "FILE", requires = "headless")]
        console_log: Option<PathBuf>,
        /// Pick this boot menu entry for this run only: persistent, live, or previous
        /// (the previous kernel, after a kernel update) (needs --headless; the image's
        /// default stays).
        #[arg(long, value_name = "ENTRY", requires = "headless", value_parser = ["persistent", "live", "previous"])]
        entry: Option<String>,
        /// After TEXT appears, press the power button and wait for a clean shutdown
        /// (needs --expect), so the image is consistent afterwards.
        #[arg(long, requires = "expect")]
        poweroff: bool,
        /// After TEXT appears, let the machine run MS more milliseconds, then cut its
        /// power (QEMU is killed): for power-loss tests. Implies --disk-cache directsync
        /// unless given.
        #[arg(
            long,
            value_name = "MS",
            requires = "expect",
            conflicts_with = "poweroff"
        )]
        power_cut_after: Option<u64>,
        /// QEMU's cache mode for the disks: writeback (QEMU's default), none or
        /// directsync (both bypass the host's page cache).
        #[arg(long, value_name = "MODE", value_parser = oneimage_vm::DISK_CACHE_MODES)]
        disk_cache: Option<String>,
        /// Firmware: uefi, uefi-secure-boot (OVMF or AAVMF with Microsoft's keys,
        /// enforcing), or bios (SeaBIOS; x86_64 only).
        #[arg(long, default_value = "uefi", value_parser = firmware_names())]
        firmware: FirmwareKind,
        /// Attach the image as an internal disk, a USB stick, a DVD in a SATA drive, or a
        /// DVD in a SCSI drive.
        #[arg(long, default_value = "disk", value_parser = media_names())]
        media: Media,
        /// Also attach FILE (a raw disk image) as an internal disk that is not booted
        /// from, like a second disk or a stick left plugged in; repeat for more. Changed
        /// in place unless --snapshot.
        #[arg(long, value_name = "FILE")]
        extra_disk: Vec<PathBuf>,
        /// The machine: x86_64 (a q35 PC) or arm64 (Arm's virt machine with AAVMF).
        /// Default: the image's architecture, from its root partition's type.
        #[arg(long, value_parser = parse_arch)]
        arch: Option<oneimage_format::arch::Arch>,
        /// When PROMPT appears on the serial console, type REPLY and Enter there (a
        /// passphrase the boot asks for, say). Repeatable; each answer is used once, the
        /// answers for one prompt in the order given; answers for prompts that never
        /// appear are not used (needs --headless).
        #[arg(long, value_name = "PROMPT=REPLY", requires = "headless", value_parser = parse_answer)]
        answer: Vec<(String, String)>,
    },
    /// Write an image (raw or compressed) to a USB stick, disk or file, safely and verified.
    Write(write_cmd::WriteArgs),
    /// Convert an image to a virtual machine disk: qcow2, vmdk, vhdx, vdi, or an ova.
    Convert(convert_cmd::ConvertArgs),
    /// Create a block map (bmap 2.0) for an image.
    Bmap(bmap_cmd::BmapArgs),
    /// Inside a running oneimage system: put its newest kernels, with initramfs images
    /// made from it, on the ESP it started from, and switch its boot menu to them.
    /// Debian's kernel packages run this after installing or removing a kernel.
    UpdateBoot(update_boot_cmd::UpdateBootArgs),
    /// Inside a live session started from a oneimage stick or DVD: copy it onto a disk
    /// of this machine (only the root filesystem's used blocks), verified, and give the
    /// copy its own identity; it boots on its own and grows on its first boot.
    Install(install_cmd::InstallArgs),
}

/// `--firmware` takes the names the VM runner defines.
fn firmware_names() -> impl clap::builder::TypedValueParser<Value = FirmwareKind> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(FirmwareKind::ALL.map(FirmwareKind::name))
        .map(|s| s.parse::<FirmwareKind>().expect("one of the listed names"))
}

/// `--media` takes the names the VM runner defines.
fn media_names() -> impl clap::builder::TypedValueParser<Value = Media> {
    use clap::builder::TypedValueParser;
    clap::builder::PossibleValuesParser::new(Media::ALL.map(Media::name))
        .map(|s| s.parse::<Media>().expect("one of the listed names"))
}

fn main() {
    let cli = Cli::parse();
    // Only the commands that make files catch signals, to remove what they made; the
    // others are ended by them as usual (QEMU gets a terminal's Ctrl-C itself).
    let cancel = matches!(
        cli.command,
        Cmd::Build { .. } | Cmd::Write(_) | Cmd::Install(_) | Cmd::Convert(_)
    )
    .then(interrupt::install);
    let is_write = matches!(cli.command, Cmd::Write(_));
    if let Err(e) = run(cli, cancel.clone()) {
        let asked = cancel.is_some_and(|c| c.load(Ordering::SeqCst));
        if asked
            || e.chain()
                .any(|c| c.is::<oneimage_builder::run::Interrupted>())
        {
            // A build removed everything it made: there is nothing more to say. A write
            // says what it left (INCOMPLETE, and what it erased).
            if is_write {
                eprintln!("oneimage: error: {e:#}");
            }
            eprintln!("oneimage: interrupted");
            std::process::exit(interrupt::EXIT_INTERRUPTED);
        }
        eprintln!("oneimage: error: {e:#}");
        std::process::exit(1);
    }
}

/// Runs the command; `cancel` is the flag [`interrupt::install`] made for it, if any.
fn run(cli: Cli, cancel: Option<Arc<AtomicBool>>) -> Result<()> {
    match cli.command {
        Cmd::Build {
            spec,
            output,
            rootfs_cache,
            quiet,
            json,
        } => {
            use oneimage_builder::progress::Progress;
            let progress = match (quiet, json) {
                (_, true) => Progress::Json,
                (true, false) => Progress::Quiet,
                (false, false) => Progress::Text,
            };
            let opts = oneimage_builder::BuildOptions {
                outdir: output,
                rootfs_cache,
                cancel,
                progress,
            };
            let report = oneimage_builder::build(&spec, &opts)?;
            if json {
                println!("{}", build_summary(&report));
            } else {
                println!("{}", report.image.display());
            }
            Ok(())
        }
        Cmd::Inspect { image, json } => inspect::run(&image, json),
        Cmd::Write(a) => write_cmd::run(a, cancel),
        Cmd::Bmap(a) => bmap_cmd::run(a),
        Cmd::UpdateBoot(a) => update_boot_cmd::run(a),
        Cmd::Install(a) => install_cmd::run(a, cancel),
        Cmd::Convert(a) => convert_cmd::run(a, cancel),
        Cmd::Qemu {
            image,
            snapshot,
            disk_size,
            headless,
            expect,
            timeout,
            memory,
            quiet,
            console_log,
            entry,
            poweroff,
            power_cut_after,
            disk_cache,
            firmware,
            media,
            extra_disk,
            arch,
            answer,
        } => {
            let disk_size = disk_size
                .map(|s| oneimage_format::size::parse_size(&s).context("--disk-size"))
                .transpose()?;
            let opts = oneimage_vm::QemuOptions {
                image,
                snapshot,
                disk_size,
                headless,
                expect: expect.clone(),
                timeout: timeout.map(Duration::from_secs),
                memory_mib: memory,
                echo_console: !quiet,
                console_log,
                entry,
                poweroff,
                power_cut_after: power_cut_after.map(Duration::from_millis),
                disk_cache: disk_cache.or_else(|| power_cut_after.map(|_| "directsync".into())),
                firmware,
                media,
                extra_disks: extra_disk,
                arch,
                answers: answer,
            };
            use oneimage_vm::Outcome;
            match oneimage_vm::run(&opts)? {
                Outcome::Found => {
                    eprintln!(
                        "oneimage: found {:?} on the console",
                        expect.unwrap_or_default()
                    );
                    Ok(())
                }
                Outcome::FoundNoPoweroff { tail } => bail!(
                    "found {:?}, but the guest did not power off after the power button; last console lines:\n{tail}",
                    expect.unwrap_or_default()
                ),
                Outcome::Exited(Some(0)) => Ok(()),
                Outcome::Exited(code) => bail!("qemu exited with {code:?}"),
                Outcome::ExitedEarly { code, tail } => bail!(
                    "qemu exited ({code:?}) before {:?} appeared; last console lines:\n{tail}",
                    expect.unwrap_or_default()
                ),
                Outcome::NothingToBoot { tail } => bail!(
                    "the firmware found nothing it could boot (it started its built-in shell) before {:?} appeared; last console lines:\n{tail}",
                    expect.unwrap_or_default()
                ),
                Outcome::TimedOut { tail } => bail!(
                    "timed out after {} s waiting for {:?}; last console lines:\n{tail}",
                    timeout.unwrap_or(0),
                    expect.unwrap_or_default()
                ),
            }
        }
    }
}

/// The `"done"` object `build --json` ends with.
fn build_summary(r: &oneimage_builder::BuildReport) -> serde_json::Value {
    let parts: Vec<_> = [
        Some(&r.plan.esp),
        Some(&r.plan.root),
        r.plan.bios_boot.as_ref(),
    ]
    .into_iter()
    .flatten()
    .map(|p| {
        serde_json::json!({
            "number": p.number,
            "name": p.name,
            "guid": p.guid,
            "offset": p.offset(512),
            "size": p.len(512),
        })
    })
    .collect();
    serde_json::json!({
        "event": "done",
        "image": r.image,
        "size": r.plan.total_bytes,
        "disk_guid": r.plan.disk_guid,
        "kernel": r.kernel_version,
        "artifacts": r.artifacts,
        "partitions": parts,
    })
}

/// `PROMPT=REPLY` of `qemu --answer`: split at the first `=`.
fn parse_answer(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((prompt, reply)) if !prompt.is_empty() => Ok((prompt.to_string(), reply.to_string())),
        _ => Err(format!(
            "{s:?}: expected PROMPT=REPLY with a non-empty PROMPT"
        )),
    }
}

fn parse_arch(s: &str) -> Result<oneimage_format::arch::Arch, String> {
    s.parse()
}

#[cfg(test)]
mod tests {
    #[test]
    fn cli_definition_is_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
