//! The life of an installed oneimage system, run inside it: `update-boot` (kernel
//! updates reach the boot menu), `install` (the live medium copied onto a disk), and
//! what they need to know about the disk the system started from.

pub mod boot_disk;
pub mod esp_mount;
pub mod install;
pub mod update_boot;
