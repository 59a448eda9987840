//! The oneimage builder: spec -> root filesystem tree -> plan -> filesystems -> image.
//!
//! Every step works in a private directory inside the output directory; the image and
//! its artifacts appear under their final names only when all of them are complete. A
//! build that fails or is interrupted (see [`BuildOptions::cancel`]) leaves nothing
//! behind.

pub mod assemble;
pub mod build_key;
pub mod compressed_root;
pub mod esp;
pub mod ext4;
pub mod grub;
pub mod initramfs;
pub mod kernel;
pub mod kernel_updates;
pub mod plan;
pub mod progress;
pub mod rootfs;
pub mod run;
pub mod spec;
pub mod vm_formats;

use anyhow::{bail, Context, Result};
use oneimage_format::encryption::Policy;
use oneimage_format::size::format_size;
use spec::{RootfsSource, Spec};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Options that are not part of the spec.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Directory the image is written to (created if missing).
    pub outdir: PathBuf,
    /// Keep root filesystems made by mmdebstrap here and reuse them when the
    /// `[rootfs.mmdebstrap]` settings and the epoch are the same.
    pub rootfs_cache: Option<PathBuf>,
    /// Set (by a signal handler, say) to stop the build: the tool running is stopped,
    /// everything made so far removed, and `build` fails with [`run::Interrupted`].
    pub cancel: Option<Arc<AtomicBool>>,
    /// Where progress is reported.
    pub progress: progress::Progress,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The disk image.
    pub image: PathBuf,
    /// Its layout.
    pub plan: plan::Plan,
    /// Kernel release booted by default.
    pub kernel_version: String,
    /// The artifacts written next to the image (bmap, compressed copies, SHA256SUMS).
    pub artifacts: Vec<PathBuf>,
}

fn epoch_from_env() -> Result<Option<i64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => Ok(Some(v.trim().parse().with_context(|| {
            format!(
                "environment variable SOURCE_DATE_EPOCH = {v:?}: expected whole seconds since 1970"
            )
        })?)),
        Err(_) => Ok(None),
    }
}

/// Builds the image described by the spec at `spec_path`.
///
/// When `opts.cancel` is set meanwhile, the error is (or has as context)
/// [`run::Interrupted`].
pub fn build(spec_path: &Path, opts: &BuildOptions) -> Result<BuildReport> {
    let cancel = run::Cancel::new(opts.cancel.as_deref());
    build_steps(spec_path, opts, cancel).map_err(|e| {
        // Whatever failed after the request (a tool killed, a read cut short) failed
        // because of it.
        if cancel.requested() && !e.is::<run::Interrupted>() {
            e.context(run::Interrupted)
        } else {
            e
        }
    })
}

fn build_steps(spec_path: &Path, opts: &BuildOptions, cancel: run::Cancel) -> Result<BuildReport> {
    let checked = Spec::load(spec_path)?;
    let spec = &checked.spec;
    let arch = checked.arch;
    let progress = opts.progress;
    let say = |step: &str, message: &str| progress.step(step, message);
    std::fs::create_dir_all(&opts.outdir)
        .with_context(|| format!("creating output directory {}", opts.outdir.display()))?;
    let work = tempfile::Builder::new()
        .prefix(&format!(".oneimage-work-{}-", spec.name))
        .tempdir_in(&opts.outdir)
        .with_context(|| format!("creating a work directory in {}", opts.outdir.display()))?;
    let w = work.path();
    let mut epoch = spec.source_date_epoch.or(epoch_from_env()?);

    // A plain directory is read in place; anything else is staged in the work directory.
    let mut tree = match (&checked.source, &checked.overlay) {
        (RootfsSource::Directory(d), None) => rootfs::Tree::borrow(d)?,
        _ => rootfs::Tree::new(&w.join("rootfs"))?,
    };
    match &checked.source {
        RootfsSource::Directory(d) => {
            say(
                "rootfs",
                &format!("reading root filesystem from {}", d.display()),
            );
            rootfs::add_directory(&mut tree, d)?;
        }
        RootfsSource::Tarball(t) => {
            say(
                "rootfs",
                &format!("reading root filesystem from {}", t.display()),
            );
            rootfs::add_tarball(&mut tree, t)?;
        }
        RootfsSource::Mmdebstrap(m) => {
            let run = rootfs::MmdebstrapRun {
                spec: m,
                arch,
                distro_initramfs: spec.boot.initramfs == "rootfs",
                epoch,
            };
            match &opts.rootfs_cache {
                Some(cache) => {
                    let tar = rootfs::cached_mmdebstrap(&run, cache, progress, cancel)?;
                    rootfs::add_tarball(&mut tree, &tar)?;
                }
                None => {
                    let tar = w.join("mmdebstrap.tar");
                    rootfs::run_mmdebstrap(&run, &tar, progress, cancel)?;
                    rootfs::add_tarball(&mut tree, &tar)?;
                    std::fs::remove_file(&tar)?;
                }
            }
        }
    }
    cancel.check()?;
    if let Some(o) = &checked.overlay {
        say("rootfs", &format!("applying overlay {}", o.display()));
        rootfs::add_overlay(&mut tree, o)?;
    }
    // Without a given epoch, the newest file time is the only one the inputs fix.
    let epoch =
        *epoch.get_or_insert_with(|| tree.entries.values().map(|e| e.mtime).max().unwrap_or(0));
    let ids = plan::Ids::from_seed(&checked.seed);
    // root= and oneimage.esp= are added by grub.cfg, from the disk GRUB started on.
    let mut cmdline = String::from("rw");
    match checked.grow {
        None => {}
        Some(0) => cmdline.push_str(" oneimage.grow=off"),
        Some(n) => cmdline.push_str(&format!(" oneimage.grow={n}")),
    }
    if !spec.boot.cmdline.is_empty() {
        cmdline.push(' ');
        cmdline.push_str(&spec.boot.cmdline);
    }
    let menu = esp::MenuSettings {
        title: spec.boot.title.clone().unwrap_or_else(|| spec.name.clone()),
        cmdline,
        root_partuuid: ids.root_part.to_string(),
        root_number: plan::ROOT_NUMBER,
        timeout: spec.boot.timeout,
        epoch,
        encryption: checked.encryption.name().into(),
        encryption_discards: spec.encryption.discards,
    };
    // Kernel updates rebuild oneimage's initramfs inside the running system, so the
    // image carries the programs that make it. A root read in place from a directory is
    // never changed.
    let kernel_updates = spec.boot.initramfs == "oneimage" && !tree.borrowed;
    // What the initramfs tells the agent about encryption; for a build-time key, the
    // header is made now (it depends on the seed only) and written with the root.
    let (build_key, encryption) = if checked.encryption == Policy::BuildKey {
        let (made, settings) = build_key::header(
            &checked.seed,
            checked.build_passphrase(),
            spec.encryption.discards,
        )
        .with_context(|| format!("{}: [encryption]", spec_path.display()))?;
        (Some(made), settings)
    } else {
        (
            None,
            oneimage_format::encryption::Settings {
                policy: checked.encryption,
                discards: spec.encryption.discards,
                build_key: None,
            },
        )
    };
    if kernel_updates {
        kernel_updates::add_to_root(
            &mut tree,
            &menu,
            &initramfs::find_static_tool(arch)?,
            &initramfs::find_agent(arch)?,
        )?;
    } else if spec.boot.initramfs == "oneimage" {
        progress.warn(
            "the root filesystem is read in place from a directory, which oneimage does not change: kernel updates installed in the image will not reach its boot menu",
        );
    }
    cancel.check()?;
    tree.pin_times(epoch)?;
    let mut kernel = kernel::find_kernel(&tree)
        .with_context(|| format!("{}: root filesystem", spec_path.display()))?;
    say("kernel", &format!("kernel {}", kernel.version));
    kernel
        .check_arch(arch)
        .with_context(|| format!("{}: root filesystem", spec_path.display()))?;
    match spec.boot.initramfs.as_str() {
        "oneimage" => {
            let agent = initramfs::find_agent(arch)?;
            let initrd = w.join("oneimage-initrd.img");
            let sum = initramfs::make_initramfs(
                &tree,
                arch,
                &kernel.version,
                &agent,
                &initramfs::Extras {
                    epoch,
                    encryption: encryption.clone(),
                },
                &initrd,
            )
                .with_context(|| format!("{}: initramfs", spec_path.display()))?;
            say(
                "initramfs",
                &format!(
                    "initramfs with {} modules and {}",
                    sum.modules.len(),
                    sum.tools.join(", ")
                ),
            );
            if !sum.missing.is_empty() {
                progress.warn(&format!(
                    "modules not in this kernel: {}",
                    sum.missing.join(" ")
                ));
            }
            kernel.initrd = Some(initrd);
            cancel.check()?;
        }
        _ if kernel.initrd.is_none() => bail!(
            "{}: boot.initramfs = \"rootfs\", but kernel {} has no initramfs in the root filesystem (looked for /boot/initrd.img-{v}, /boot/initramfs-{v}.img, /usr/lib/modules/{v}/initrd)",
            spec_path.display(),
            kernel.version,
            v = kernel.version
        ),
        _ => {}
    }

    let esp_img = w.join("esp.img");
    let esp_bytes = esp::make_esp(
        &kernel,
        &esp::EspParams {
            arch,
            tree: Some(&tree),
            label: &spec.esp.label,
            volume_id: ids.esp_volume_id,
            size: checked.esp_size,
            menu: &menu,
            room_for_updates: kernel_updates,
            signed: if spec.boot.secure_boot {
                Some(esp::find_signed_loaders(&tree, arch)?)
            } else {
                None
            },
        },
        &esp_img,
        w,
        cancel,
    )
    .with_context(|| format!("{}: ESP", spec_path.display()))?;
    say("esp", &format!("ESP {} ready", format_size(esp_bytes)));
    // x86_64 PCs without UEFI (or with it switched off) boot through GRUB for BIOS.
    let bios = spec.boot.bios && arch.has_bios();
    let bios_images = bios
        .then(|| grub::make_bios(ids.esp_volume_id, w, cancel))
        .transpose()
        .with_context(|| format!("{}: GRUB for BIOS", spec_path.display()))?;

    let image = opts.outdir.join(format!("{}.img", spec.name));
    if image.is_dir() {
        bail!("{} is a directory; refusing to replace it", image.display());
    }
    let partial = w.join(format!("{}.img", spec.name));
    // The root filesystem is made in place inside the image, laid out for its size.
    // An in-place encryption on the first boot puts its LUKS2 header in front of the
    // data: the partition keeps room for it after the filesystem.
    // An image encrypted at build time has its LUKS2 header there instead, in front.
    // (A compressed root is never encrypted in place: its expansion goes into LUKS2.)
    let (header_room, data_offset) = match checked.encryption {
        Policy::Off => (0, 0),
        Policy::BuildKey => (0, build_key::DATA_OFFSET),
        Policy::Offer | Policy::Require if checked.root_fs.is_compressed() => (0, 0),
        Policy::Offer | Policy::Require => (oneimage_format::encryption::HEADER_ROOM, 0),
    };
    let plan_for = |root_bytes: u64| {
        plan::Plan::new(
            &ids,
            arch,
            esp_bytes,
            data_offset + root_bytes + header_room,
            bios,
        )
    };
    let place = |root_bytes: u64| -> Result<ext4::Placement> {
        cancel.check()?;
        let plan = plan_for(root_bytes);
        assemble::create_image(&partial, plan.total_bytes)?;
        Ok(ext4::Placement {
            file: partial.clone(),
            offset: plan.root.offset(plan::SECTOR) + data_offset,
        })
    };
    let root_bytes = match checked.root_fs {
        spec::RootFilesystem::Ext4 => ext4::make_ext4(
            &tree,
            &ext4::Ext4Params {
                label: &spec.root.label,
                uuid: ids.root_fs,
                epoch,
                size: checked.root_size,
                progress,
            },
            w,
            place,
            cancel,
        ),
        compressed => compressed_root::make(
            &tree,
            compressed,
            &compressed_root::Params {
                uuid: ids.root_fs,
                epoch,
                size: checked.root_size,
                progress,
            },
            w,
            place,
            cancel,
        ),
    }
    .with_context(|| format!("{}: root filesystem", spec_path.display()))?;
    say(
        "root",
        &format!(
            "root filesystem ({}) {} ready",
            checked.root_fs.describe(),
            format_size(root_bytes)
        ),
    );
    let expansion_estimate = ext4::estimate(&tree);
    if !tree.borrowed {
        // The staging copy is no longer needed; free the space before finishing.
        std::fs::remove_dir_all(&tree.staging).ok();
    }

    let plan = plan_for(root_bytes);
    if let Some(made) = &build_key {
        build_key::encrypt_in_place(&partial, plan.root.offset(plan::SECTOR), root_bytes, made)
            .with_context(|| format!("{}: encrypting the root", spec_path.display()))?;
        say(
            "root",
            &format!(
                "the root is LUKS2 (aes-xts-plain64, argon2id) under the public passphrase {:?}: each copy's first persistent boot asks for a new one and re-encrypts it to a new volume key",
                checked.build_passphrase()
            ),
        );
    }
    if header_room > 0 {
        say(
            "root",
            &format!(
                "the root partition keeps {} after the filesystem for the LUKS2 header of its encryption (encryption.mode = \"{}\")",
                format_size(header_room),
                checked.encryption
            ),
        );
    }
    say(
        "layout",
        &format!("layout\n{}", plan.to_string().trim_end()),
    );
    if checked.root_fs.is_compressed() {
        // What the boot agent will find when it adds up the same tree (expand.rs).
        let (data, inodes) = expansion_estimate;
        // Expanded into LUKS2 when the image asks for encryption: its header first.
        let luks = match checked.encryption {
            Policy::Offer | Policy::Require => oneimage_format::luks2::DATA_OFFSET,
            Policy::Off | Policy::BuildKey => 0,
        };
        let expanded = oneimage_format::ext4_size::minimal_bytes(
            data,
            inodes,
            oneimage_format::expansion::MIN_FREE,
        ) + luks;
        say(
            "root",
            &format!(
                "its first persistent boot expands it into an ext4 root of at least {} after the image: it needs a disk of {} or more, and boots live on a smaller one",
                format_size(expanded),
                format_size(plan.total_bytes + expanded)
            ),
        );
    }
    cancel.check()?;
    let cdrom = assemble::finish(&plan, &esp_img, bios_images.as_ref(), &partial)?;
    assemble::write_iso_view(
        &plan,
        &checked.volume_label,
        epoch,
        ids.esp_volume_id,
        cdrom,
        &partial,
    )?;
    cancel.check()?;
    // The artifacts are made from the image where it is, under temporary names, so
    // that nothing appears in the output directory before everything is complete.
    let mut vm_disks = Vec::new();
    for &format in &spec.artifacts.vm_formats {
        let opts = vm_formats::ConvertOptions {
            compress: spec.artifacts.qcow2_compress && format == vm_formats::VmFormat::Qcow2,
            stream_optimized: spec.artifacts.vmdk_stream_optimized
                && format == vm_formats::VmFormat::Vmdk,
        };
        say(
            "artifact",
            &format!(
                "converting to {}",
                image.with_extension(format.name()).display()
            ),
        );
        vm_disks.push(
            vm_formats::stage(&partial, &image, format, opts, w, cancel)
                .with_context(|| format!("{}: [artifacts] vm-formats", spec_path.display()))?,
        );
    }
    let artifacts = oneimage_artifacts::stage(
        &partial,
        &image,
        &spec.artifacts,
        w,
        vm_disks,
        &|m: &str| say("artifact", m),
        cancel.flag(),
    )
    .with_context(|| format!("{}: [artifacts]", spec_path.display()))?;
    // The last look at the request: from here on, only renames remain.
    cancel.check()?;
    std::fs::rename(&partial, &image)
        .with_context(|| format!("moving the finished image to {}", image.display()))?;
    let artifacts = artifacts
        .commit()
        .with_context(|| format!("{}: [artifacts]", spec_path.display()))?;
    say("image", &format!("wrote {}", image.display()));
    Ok(BuildReport {
        image,
        plan,
        kernel_version: kernel.version,
        artifacts,
    })
}
