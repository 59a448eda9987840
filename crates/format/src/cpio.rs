//! Writing "newc" cpio archives, the format the kernel unpacks an initramfs from.
//!
//! Every field is an input (no clock, inode numbers in write order), so the same
//! entries always give the same bytes. Device nodes need no privileges here.

use std::io::{self, Write};

/// What kind of entry to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CpioKind {
    /// A directory.
    Dir,
    /// A regular file.
    File,
    /// A symbolic link (the data is the target).
    Symlink,
    /// A character device (major, minor).
    Char(u32, u32),
}

/// A cpio archive being written to `W`.
pub struct CpioWriter<W: Write> {
    out: W,
    written: u64,
    next_ino: u32,
    mtime: u32,
}

impl<W: Write> CpioWriter<W> {
    /// Starts an archive whose entries all carry `mtime`.
    pub fn new(out: W, mtime: u32) -> Self {
        CpioWriter {
            out,
            written: 0,
            next_ino: 1,
            mtime,
        }
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - (self.written % 4) as usize) % 4;
        self.out.write_all(&[0u8; 3][..n])?;
        self.written += n as u64;
        Ok(())
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        size: u32,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let name = name.trim_start_matches('/');
        let h = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.next_ino,
            mode,
            0,
            0,
            nlink,
            self.mtime,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() + 1,
            0
        );
        self.next_ino += 1;
        self.out.write_all(h.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.written += h.len() as u64 + name.len() as u64 + 1;
        self.pad()
    }

    /// Adds an entry owned by root; `perm` holds the permission bits.
    pub fn add(&mut self, path: &str, kind: CpioKind, perm: u32, data: &[u8]) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{path}: larger than 4 GiB"),
            )
        })?;
        let (ty, nlink, rdev) = match kind {
            CpioKind::Dir => (0o040000, 2, (0, 0)),
            CpioKind::File => (0o100000, 1, (0, 0)),
            CpioKind::Symlink => (0o120000, 1, (0, 0)),
            CpioKind::Char(ma, mi) => (0o020000, 1, (ma, mi)),
        };
        self.header(path, ty | (perm & 0o7777), nlink, size, rdev)?;
        self.out.write_all(data)?;
        self.written += data.len() as u64;
        self.pad()
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 1, 0, (0, 0))?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_layout_known_answer() {
        let mut w = CpioWriter::new(Vec::new(), 0x10);
        w.add("/init", CpioKind::File, 0o755, b"hi").unwrap();
        let out = w.finish().unwrap();
        let head = std::str::from_utf8(&out[..110]).unwrap();
        assert_eq!(
            head,
            "07070100000001000081ed000000000000000000000001000000100000000200000000000000000000000000000000000000050000000"
                .to_string()
                + "0"
        );
        assert_eq!(&out[110..115], b"init\0");
        assert_eq!(out.len() % 4, 0);
        assert!(out.windows(10).any(|x| x == b"TRAILER!!!"));
    }
}
