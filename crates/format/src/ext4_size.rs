//! How large an ext4 filesystem must be to hold a given tree: the builder sizes a
//! `minimal` root with it, and the boot agent checks that a disk has room before it
//! expands a compressed root into ext4 there.

use crate::size::align_up;
use std::collections::HashMap;

/// The block size every oneimage ext4 filesystem uses.
pub const BLOCK: u64 = 4096;

/// Blocks mke2fs gives the journal for a filesystem of `blocks` blocks (its own table).
pub fn journal_blocks(blocks: u64) -> u64 {
    match blocks {
        0..=32767 => 1024,
        32768..=262143 => 4096,
        262144..=524287 => 8192,
        524288..=4194303 => 16384,
        4194304..=8388607 => 32768,
        8388608..=16777215 => 65536,
        16777216..=33554431 => 131072,
        _ => 262144,
    }
}

/// Inodes to create: room for the content plus growth, never fewer than the default ratio.
pub fn inode_count(entries: u64, size: u64) -> u64 {
    (entries + entries / 4 + 1024).max(size / 16384)
}

/// Bytes a filesystem needs for `data` bytes of content in `inodes` inodes, plus
/// `headroom` free, rounded up to a MiB.
pub fn minimal_bytes(data: u64, inodes: u64, headroom: u64) -> u64 {
    let mut size = data.saturating_add(headroom);
    for _ in 0..4 {
        let blocks = size / BLOCK;
        let n = inode_count(inodes, size);
        let meta = n * 256 + journal_blocks(blocks) * BLOCK + blocks / 64 * 2;
        size = ((data.saturating_add(meta)) as f64 / 0.95 * 1.02) as u64 + headroom + (4 << 20);
    }
    align_up(size, 1 << 20)
}

/// What a tree puts on an ext4 filesystem, added up entry by entry.
#[derive(Debug, Default)]
pub struct Usage {
    blocks: u64,
    entries: u64,
    dir_bytes: HashMap<String, u64>,
}

/// The kind of an entry, as far as its space goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Object {
    /// A directory (its first block; its entries are counted by name).
    Dir,
    /// A regular file of this many bytes.
    File(u64),
    /// A symbolic link whose target has this many bytes.
    Symlink(u64),
    /// A second name for a file counted already.
    Hardlink,
    /// A device node or FIFO.
    Special,
}

impl Usage {
    /// Counts the entry `path` (absolute) of kind `object` with `xattr_bytes` of
    /// extended attribute names and values (16 bytes of overhead each counted by the
    /// caller).
    pub fn add(&mut self, path: &str, object: Object, xattr_bytes: u64) {
        self.entries += 1;
        match object {
            Object::File(n) => self.blocks += n.div_ceil(BLOCK),
            Object::Symlink(n) if n >= 60 => self.blocks += 1,
            Object::Dir => self.blocks += 1,
            _ => {}
        }
        // What does not fit in the inode's 96 spare bytes takes a block of its own.
        if xattr_bytes > 96 {
            self.blocks += 1;
        }
        if let Some((parent, name)) = path.rsplit_once('/') {
            *self.dir_bytes.entry(parent.to_string()).or_default() +=
                8 + align_up(name.len() as u64, 4);
        }
    }

    /// (data bytes, inodes): what [`minimal_bytes`] takes.
    pub fn totals(&self) -> (u64, u64) {
        let dir_blocks: u64 = self.dir_bytes.values().map(|b| b / BLOCK).sum();
        ((self.blocks + dir_blocks) * BLOCK, self.entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tree_needs_its_data_plus_metadata_and_headroom() {
        let mut u = Usage::default();
        u.add("/", Object::Dir, 0);
        u.add("/big", Object::File(100 << 20), 0);
        u.add("/small", Object::File(1), 200);
        u.add("/link", Object::Symlink(100), 0);
        u.add("/again", Object::Hardlink, 0);
        let (data, inodes) = u.totals();
        assert_eq!(inodes, 5);
        assert_eq!(data, (1 + 25600 + 1 + 1 + 1) * BLOCK);
        let need = minimal_bytes(data, inodes, 64 << 20);
        assert!(
            need > data + (64 << 20) && need < data + (100 << 20),
            "{need}"
        );
        assert_eq!(need % (1 << 20), 0);
        assert!(minimal_bytes(u64::MAX / 2, 1, 1) > 0, "no overflow");
    }
}
