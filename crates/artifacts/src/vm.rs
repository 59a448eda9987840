//! The virtual machine disk formats an image can be converted to (made by the builder's
//! `vm_formats` with `qemu-img`): their names in specs and on the command line.

use anyhow::{Context, Result};

/// A virtual machine disk format `convert` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmFormat {
    /// QEMU's qcow2.
    Qcow2,
    /// VMware's VMDK (monolithic sparse, or streamOptimized).
    Vmdk,
    /// Hyper-V's VHDX.
    Vhdx,
    /// VirtualBox's VDI.
    Vdi,
    /// An OVF package in one tar file, holding a streamOptimized VMDK.
    Ova,
}

impl VmFormat {
    /// Every format, in the order they are listed.
    pub const ALL: [VmFormat; 5] = [
        VmFormat::Qcow2,
        VmFormat::Vmdk,
        VmFormat::Vhdx,
        VmFormat::Vdi,
        VmFormat::Ova,
    ];

    /// The name on the command line and in specs, which is also the file extension.
    pub fn name(self) -> &'static str {
        match self {
            VmFormat::Qcow2 => "qcow2",
            VmFormat::Vmdk => "vmdk",
            VmFormat::Vhdx => "vhdx",
            VmFormat::Vdi => "vdi",
            VmFormat::Ova => "ova",
        }
    }
}

impl std::str::FromStr for VmFormat {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<VmFormat> {
        VmFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .with_context(|| format!("{s:?}: expected one of qcow2, vmdk, vhdx, vdi, ova"))
    }
}

impl<'de> serde::Deserialize<'de> for VmFormat {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_round_trip_and_others_are_refused() {
        for f in VmFormat::ALL {
            assert_eq!(f.name().parse::<VmFormat>().unwrap(), f);
        }
        let e = "qcow".parse::<VmFormat>().unwrap_err().to_string();
        assert!(e.contains("expected one of qcow2"), "{e}");
    }
}
