//! The oneimage writer: reads an image in any common compression (detected by content),
//! checks its signature, writes only the mapped blocks to a file or block device after
//! safety checks, and reads everything back to verify it. It has no network code.

#![warn(missing_docs)]

pub mod bmap;
pub mod copy;
pub mod gpt_fix;
pub mod progress;
pub mod signature;
pub mod source;
pub mod tap;
pub mod target;
pub mod verify;
pub mod write;
