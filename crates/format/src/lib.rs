//! Pure on-disk format code for oneimage.
//!
//! Everything here works over byte buffers and `Read`/`Write`/`Seek`: no processes are
//! spawned, no clock is read and there is no global state, so every function gives the
//! same bytes for the same inputs.

pub mod arch;
pub mod bmap;
pub mod compressed_size;
pub mod compression;
pub mod cpio;
pub mod elf;
pub mod encryption;
pub mod expansion;
pub mod ext4_size;
pub mod ext4_used;
pub mod fat;
pub mod firstboot;
pub mod gpt;
pub mod grub_pc;
pub mod grubcfg;
pub mod grubenv;
pub mod guid;
pub mod hash;
pub mod identity;
pub mod inspect;
pub mod iso9660;
pub mod luks2;
pub mod probe;
pub mod size;
pub mod slice;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod vm_disk;
pub mod zstd_seekable;

pub use guid::Guid;
