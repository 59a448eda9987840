//! The image as virtual machine disks: qcow2, VMDK, VHDX and VDI made with the field's
//! standard tool (`qemu-img convert`), and an OVA (OVF descriptor, manifest with SHA-256
//! sums, streamOptimized VMDK) that hypervisors import as a whole machine.
//!
//! Reproducibility: qemu-img writes qcow2 the same every time. It puts a random content
//! id (CID) in a VMDK and random UUIDs in a VDI header; both are replaced here by values
//! derived from the image's bytes, so VMDK, VDI and OVA are byte-identical for the same
//! image too. A VHDX holds random GUIDs under CRC-32C checksums in several places: it is
//! the one format that differs from run to run.
//!
//! Every output is made in a temporary directory beside it and renamed into place when
//! complete. A VMDK names its own file in its descriptor, so it is made under its final
//! name inside that directory.

use crate::run::{self, Cancel};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

pub use oneimage_artifacts::vm::VmFormat;

/// How to convert.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConvertOptions {
    /// qcow2: compress every cluster (smaller, slower to write; reads stay fast).
    pub compress: bool,
    /// VMDK: the streamOptimized subformat (compressed, for uploads and OVAs).
    pub stream_optimized: bool,
}

/// Converts the raw `image` into `format` at `out` (default: the image's name with the
/// format's extension, next to it). Returns the path written.
pub fn convert(
    image: &Path,
    format: VmFormat,
    out: Option<&Path>,
    opts: ConvertOptions,
    cancel: Cancel,
) -> Result<PathBuf> {
    let meta = std::fs::metadata(image).with_context(|| format!("reading {}", image.display()))?;
    if !meta.is_file() {
        bail!("{} is not an image file", image.display());
    }
    if opts.compress && format != VmFormat::Qcow2 {
        bail!("--compress applies to qcow2 only (not {})", format.name());
    }
    if opts.stream_optimized && format != VmFormat::Vmdk {
        bail!(
            "--stream-optimized applies to vmdk only (an ova always holds one; not {})",
            format.name()
        );
    }
    let mut head = Vec::with_capacity(512);
    File::open(image)
        .and_then(|f| f.take(512).read_to_end(&mut head))
        .with_context(|| format!("reading {}", image.display()))?;
    let found = oneimage_format::vm_disk::sniff(&head);
    if found != oneimage_format::vm_disk::DiskFormat::Raw {
        bail!(
            "{} is a {} file; expected a raw image (what `oneimage build` makes)",
            image.display(),
            found.qemu_name()
        );
    }
    let out = match out {
        Some(o) => o.to_path_buf(),
        None => image.with_extension(format.name()),
    };
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let (work, made) = make(image, format, &out, opts, &dir, cancel)?;
    std::fs::rename(&made, &out)
        .with_context(|| format!("renaming {} to {}", made.display(), out.display()))?;
    drop(work);
    Ok(out)
}

/// Makes `format` from the raw `image` for the build's artifacts: named after `dest`, the
/// image's final path (`NAME.FORMAT`), under a temporary name in `scratch`, which is on
/// the same filesystem as `dest`.
pub fn stage(
    image: &Path,
    dest: &Path,
    format: VmFormat,
    opts: ConvertOptions,
    scratch: &Path,
    cancel: Cancel,
) -> Result<oneimage_artifacts::StagedFile> {
    let out = dest.with_extension(format.name());
    let (work, made) = make(image, format, &out, opts, scratch, cancel)?;
    let name = out.file_name().unwrap_or_default().to_string_lossy();
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}.partial-"))
        .tempfile_in(scratch)
        .with_context(|| format!("creating a temporary file in {}", scratch.display()))?
        .into_temp_path();
    std::fs::rename(&made, &tmp)
        .with_context(|| format!("renaming {} to {}", made.display(), tmp.display()))?;
    drop(work);
    Ok((tmp, out))
}

/// Converts `image` into `format` in a new temporary directory in `dir`, under the file
/// name of `out` (a VMDK and an OVA name their own file inside); returns the directory
/// (deleted when dropped) and the synced file in it.
fn make(
    image: &Path,
    format: VmFormat,
    out: &Path,
    opts: ConvertOptions,
    dir: &Path,
    cancel: Cancel,
) -> Result<(tempfile::TempDir, PathBuf)> {
    let name = out
        .file_name()
        .with_context(|| format!("{}: expected a file name", out.display()))?
        .to_owned();
    let work = tempfile::Builder::new()
        .prefix(&format!(".{}.partial-", name.to_string_lossy()))
        .tempdir_in(dir)
        .with_context(|| format!("creating a temporary directory in {}", dir.display()))?;
    let made = work.path().join(&name);
    let id = image_id(image, cancel)?;
    match format {
        VmFormat::Ova => make_ova(image, &made, &id, cancel)?,
        _ => qemu_img(image, format, &made, opts, &id, cancel)?,
    }
    File::open(&made)
        .and_then(|f| f.sync_all())
        .with_context(|| format!("syncing {}", made.display()))?;
    Ok((work, made))
}

/// A digest of the image's bytes: the seed of the ids the formats need.
fn image_id(image: &Path, cancel: Cancel) -> Result<[u8; 32]> {
    let mut f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        cancel.check()?;
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

fn qemu_img(
    image: &Path,
    format: VmFormat,
    out: &Path,
    opts: ConvertOptions,
    id: &[u8; 32],
    cancel: Cancel,
) -> Result<()> {
    let mut cmd = Command::new("qemu-img");
    cmd.env("LC_ALL", "C")
        .args(["convert", "-f", "raw", "-O", format.name()]);
    if format == VmFormat::Qcow2 && opts.compress {
        cmd.arg("-c");
    }
    if format == VmFormat::Vmdk && opts.stream_optimized {
        cmd.args(["-o", "subformat=streamOptimized"]);
    }
    cmd.arg(image).arg(out);
    run::run(&mut cmd, "qemu-img convert (package qemu-utils)", cancel)?;
    match format {
        VmFormat::Vmdk => set_vmdk_cid(out, id),
        VmFormat::Vdi => set_vdi_uuids(out, id),
        _ => Ok(()),
    }
}

/// Replaces the random content id in the VMDK's descriptor (the `CID=` line of the text
/// that the sparse header's descriptor offset and size point at; qemu-img writes it in
/// hex without leading zeros) with 8 hex digits derived from the image. The text is
/// written back in place, padded with zeros as before.
fn set_vmdk_cid(vmdk: &Path, id: &[u8; 32]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(vmdk)?;
    let mut header = [0u8; 512];
    f.read_exact(&mut header)?;
    let le64 = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().expect("8 bytes"));
    let (offset, sectors) = (le64(28), le64(36));
    if &header[..4] != b"KDMV" || offset == 0 || sectors == 0 || sectors > 128 {
        bail!(
            "{}: not a sparse VMDK with an embedded descriptor",
            vmdk.display()
        );
    }
    let mut region = vec![0u8; (sectors * 512) as usize];
    f.seek(SeekFrom::Start(offset * 512))?;
    f.read_exact(&mut region)?;
    let end = region.iter().position(|&b| b == 0).unwrap_or(region.len());
    let text = std::str::from_utf8(&region[..end])
        .with_context(|| format!("{}: the descriptor is not text", vmdk.display()))?;
    // A CID of ffffffff means "none" (it is what parentCID says); avoid it.
    let cid = u32::from_be_bytes([id[0], id[1], id[2], id[3]]).min(0xffff_fffe);
    let mut found = false;
    let new: String = text
        .split_inclusive('\n')
        .map(|line| match line.strip_prefix("CID=") {
            Some(rest) if !found => {
                found = true;
                let eol = if rest.ends_with('\n') { "\n" } else { "" };
                format!("CID={cid:08x}{eol}")
            }
            _ => line.to_string(),
        })
        .collect();
    if !found {
        bail!("{}: no CID= line in its descriptor", vmdk.display());
    }
    if new.len() >= region.len() {
        bail!(
            "{}: the descriptor has no room for an 8-digit CID",
            vmdk.display()
        );
    }
    region.fill(0);
    region[..new.len()].copy_from_slice(new.as_bytes());
    f.seek(SeekFrom::Start(offset * 512))?;
    f.write_all(&region)?;
    Ok(())
}

/// VDI header (VirtualBox's VDICore.h, version 1.1): the image's creation and
/// modification UUIDs, which qemu-img makes random.
const VDI_SIGNATURE: u32 = 0xbeda_107f;
const VDI_UUID_CREATE: u64 = 0x188;
const VDI_UUID_MODIFY: u64 = 0x198;

fn set_vdi_uuids(vdi: &Path, id: &[u8; 32]) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(vdi)?;
    let mut head = [0u8; 0x1c8];
    f.read_exact(&mut head)?;
    if u32::from_le_bytes(head[0x40..0x44].try_into().expect("4 bytes")) != VDI_SIGNATURE {
        bail!("{}: not a VDI header", vdi.display());
    }
    let seed = oneimage_format::hash::hex(id);
    for (at, what) in [(VDI_UUID_CREATE, "create"), (VDI_UUID_MODIFY, "modify")] {
        let uuid = oneimage_format::Guid::derive(&seed, &format!("vdi {what}"));
        f.seek(SeekFrom::Start(at))?;
        f.write_all(&uuid.0)?;
    }
    Ok(())
}

/// Makes the OVA: the OVF descriptor first (as the OVF standard requires), then the
/// manifest, then the disk; a POSIX tar with fixed owners, modes and times.
fn make_ova(image: &Path, out: &Path, id: &[u8; 32], cancel: Cancel) -> Result<()> {
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "oneimage".into());
    let work = out.parent().context("the OVA's directory")?;
    let disk_name = format!("{stem}-disk1.vmdk");
    let disk = work.join(&disk_name);
    qemu_img(
        image,
        VmFormat::Vmdk,
        &disk,
        ConvertOptions {
            compress: false,
            stream_optimized: true,
        },
        id,
        cancel,
    )?;
    let capacity = std::fs::metadata(image)?.len();
    let disk_size = std::fs::metadata(&disk)?.len();
    let ovf = ovf_descriptor(&stem, &disk_name, disk_size, capacity);
    let ovf_name = format!("{stem}.ovf");
    let mf_name = format!("{stem}.mf");
    let manifest = format!(
        "SHA256({ovf_name})= {}\nSHA256({disk_name})= {}\n",
        oneimage_format::hash::hex(&Sha256::digest(ovf.as_bytes())),
        oneimage_format::hash::hex(&image_id(&disk, cancel)?)
    );
    let mut tar = tar::Builder::new(File::create(out)?);
    let mut add = |name: &str, len: u64, data: &mut dyn Read| -> Result<()> {
        let mut h = tar::Header::new_ustar();
        h.set_size(len);
        h.set_mode(0o644);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        tar.append_data(&mut h, name, data)
            .with_context(|| format!("adding {name} to {}", out.display()))
    };
    add(&ovf_name, ovf.len() as u64, &mut ovf.as_bytes())?;
    add(&mf_name, manifest.len() as u64, &mut manifest.as_bytes())?;
    add(&disk_name, disk_size, &mut File::open(&disk)?)?;
    tar.into_inner()?.sync_all()?;
    std::fs::remove_file(&disk)?;
    Ok(())
}

/// The OVF 1.0 descriptor: one machine with 2 CPUs, 2 GiB of memory, UEFI firmware, and
/// the disk on a SATA (AHCI) controller, which oneimage's initramfs drives.
fn ovf_descriptor(name: &str, disk_file: &str, disk_size: u64, capacity: u64) -> String {
    let name = xml_escape(name);
    let disk_file = xml_escape(disk_file);
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<Envelope ovf:version="1.0" xml:lang="en-US" xmlns="http://schemas.dmtf.org/ovf/envelope/1" xmlns:ovf="http://schemas.dmtf.org/ovf/envelope/1" xmlns:rasd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData" xmlns:vssd="http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_VirtualSystemSettingData" xmlns:vmw="http://www.vmware.com/schema/ovf" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
  <References>
    <File ovf:id="file1" ovf:href="{disk_file}" ovf:size="{disk_size}"/>
  </References>
  <DiskSection>
    <Info>The virtual disk</Info>
    <Disk ovf:capacity="{capacity}" ovf:capacityAllocationUnits="byte" ovf:diskId="vmdisk1" ovf:fileRef="file1" ovf:format="http://www.vmware.com/interfaces/specifications/vmdk.html#streamOptimized"/>
  </DiskSection>
  <VirtualSystem ovf:id="{name}">
    <Info>A oneimage system</Info>
    <Name>{name}</Name>
    <OperatingSystemSection ovf:id="96">
      <Info>The operating system</Info>
      <Description>Linux 64-bit</Description>
    </OperatingSystemSection>
    <VirtualHardwareSection>
      <Info>2 CPUs, 2 GiB of memory, UEFI, one SATA disk</Info>
      <System>
        <vssd:ElementName>Virtual Hardware Family</vssd:ElementName>
        <vssd:InstanceID>0</vssd:InstanceID>
        <vssd:VirtualSystemIdentifier>{name}</vssd:VirtualSystemIdentifier>
        <vssd:VirtualSystemType>vmx-14 virtualbox-2.2</vssd:VirtualSystemType>
      </System>
      <Item>
        <rasd:AllocationUnits>hertz * 10^6</rasd:AllocationUnits>
        <rasd:Description>Number of virtual CPUs</rasd:Description>
        <rasd:ElementName>2 virtual CPUs</rasd:ElementName>
        <rasd:InstanceID>1</rasd:InstanceID>
        <rasd:ResourceType>3</rasd:ResourceType>
        <rasd:VirtualQuantity>2</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:AllocationUnits>byte * 2^20</rasd:AllocationUnits>
        <rasd:Description>Memory size</rasd:Description>
        <rasd:ElementName>2048 MB of memory</rasd:ElementName>
        <rasd:InstanceID>2</rasd:InstanceID>
        <rasd:ResourceType>4</rasd:ResourceType>
        <rasd:VirtualQuantity>2048</rasd:VirtualQuantity>
      </Item>
      <Item>
        <rasd:Description>SATA controller</rasd:Description>
        <rasd:ElementName>sataController0</rasd:ElementName>
        <rasd:InstanceID>3</rasd:InstanceID>
        <rasd:ResourceSubType>AHCI</rasd:ResourceSubType>
        <rasd:ResourceType>20</rasd:ResourceType>
      </Item>
      <Item>
        <rasd:AddressOnParent>0</rasd:AddressOnParent>
        <rasd:ElementName>disk1</rasd:ElementName>
        <rasd:HostResource>ovf:/disk/vmdisk1</rasd:HostResource>
        <rasd:InstanceID>4</rasd:InstanceID>
        <rasd:Parent>3</rasd:Parent>
        <rasd:ResourceType>17</rasd:ResourceType>
      </Item>
      <vmw:Config ovf:required="false" vmw:key="firmware" vmw:value="efi"/>
    </VirtualHardwareSection>
  </VirtualSystem>
</Envelope>
"#
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_descriptor_escapes_names() {
        let d = ovf_descriptor("a<b&c", "a<b&c-disk1.vmdk", 10, 20);
        assert!(d.contains(r#"ovf:id="a&lt;b&amp;c""#), "{d}");
        assert!(d.contains(r#"ovf:capacity="20""#));
    }
}
