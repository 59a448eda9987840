//! A window onto a byte range of a larger reader, such as one partition of a disk image.

use std::io::{self, Read, Seek, SeekFrom, Write};

/// `Read + Seek` (and a refusing `Write`) over `[offset, offset + len)` of `inner`.
///
/// The `Write` impl always fails: it exists because some readers (fatfs) demand a
/// writable device even when they only read, and we never want to modify an image we
/// are only inspecting.
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
        self.inner.seek(SeekFrom::Start(self.offset + self.pos))?;
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

impl<R> Write for Slice<R> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            "image opened read-only",
        ))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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
        assert!(s.write(&[1]).is_err());
    }
}
