//! A window onto a byte range of a larger reader, such as one partition of a disk image.

use std::io::{self, Read, Seek, SeekFrom};

/// `Read + Seek` over `[offset, offset + len)` of `inner`. It has no `Write`: an image
/// that is only inspected is never modified.
pub struct Slice<R> {
    inner: R,
    offset: u64,
    len: u64,
    pos: u64,
}

impl<R: Read + Seek> Slice<R> {
    /// Wraps `inner`, exposing `len` bytes starting at `offset`.
    pub fn new(inner: R, offset: u64, len: u64) -> Slice<R> {
        Slice {
            inner,
            offset,
            len,
            pos: 0,
        }
    }
}

impl<R: Read + Seek> Read for Slice<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.len {
            return Ok(0);
        }
        let max = (self.len - self.pos).min(buf.len() as u64) as usize;
        // The window comes from a partition table on the disk: it may name any offset.
        let at = self.offset.checked_add(self.pos).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "window beyond 2^64 bytes")
        })?;
        self.inner.seek(SeekFrom::Start(at))?;
        let n = self.inner.read(&mut buf[..max])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: Read + Seek> Seek for Slice<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos =
            new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn window_reads_only_its_range() {
        let data: Vec<u8> = (0..100u8).collect();
        let mut s = Slice::new(Cursor::new(data), 10, 5);
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        assert_eq!(out, vec![10, 11, 12, 13, 14]);
        s.seek(SeekFrom::End(-1)).unwrap();
        let mut b = [0u8; 4];
        assert_eq!(s.read(&mut b).unwrap(), 1);
        assert_eq!(b[0], 14);
        let mut far = Slice::new(Cursor::new(vec![0u8; 8]), u64::MAX - 2, 10);
        far.seek(SeekFrom::Start(5)).unwrap();
        assert!(far.read(&mut b).is_err(), "an offset past 2^64 is an error");
    }
}
