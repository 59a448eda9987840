//! Block maps in the bmap 2.0 XML format that bmaptool reads and writes: which blocks of
//! an image hold data, with a SHA-256 per range and one over the whole file.

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Block size of the maps we create (bmaptool's default).
pub const BLOCK_SIZE: u64 = 4096;

/// A run of mapped blocks, both ends inclusive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// First block.
    pub first: u64,
    /// Last block (inclusive).
    pub last: u64,
    /// SHA-256 of the range's bytes (cut at the image end), if the map has one.
    pub sha256: Option<[u8; 32]>,
}

/// A parsed or created block map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bmap {
    /// Size of the image in bytes.
    pub image_size: u64,
    /// Block size in bytes.
    pub block_size: u64,
    /// Mapped ranges in ascending order, not overlapping.
    pub ranges: Vec<Range>,
}

impl Bmap {
    /// Number of blocks in the image.
    pub fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }

    /// Number of mapped blocks.
    pub fn mapped_blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.last - r.first + 1).sum()
    }

    /// Byte range `[start, end)` of `r` within the image.
    pub fn byte_range(&self, r: &Range) -> (u64, u64) {
        (
            r.first * self.block_size,
            ((r.last + 1) * self.block_size).min(self.image_size),
        )
    }

    /// Bytes the mapped ranges cover.
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges
            .iter()
            .map(|r| {
                let (a, b) = self.byte_range(r);
                b - a
            })
            .sum()
    }

    /// The bmap 2.0 XML text, with its `BmapFileChecksum` filled in.
    pub fn to_xml(&self) -> String {
        let zeros = "0".repeat(64);
        let text = self.xml_with_checksum(&zeros);
        let sum = hex(&Sha256::digest(text.as_bytes()));
        self.xml_with_checksum(&sum)
    }

    fn xml_with_checksum(&self, sum: &str) -> String {
        let mapped = self.mapped_blocks();
        let pct = if self.blocks_count() == 0 {
            0.0
        } else {
            mapped as f64 * 100.0 / self.blocks_count() as f64
        };
        let mut s = String::new();
        s.push_str("<?xml version=\"1.0\" ?>\n");
        s.push_str("<!-- Block map of an image, written by oneimage: only the listed blocks\n");
        s.push_str("     hold data and need to be copied; the rest of the image is zero. -->\n");
        s.push_str("<bmap version=\"2.0\">\n");
        let _ = writeln!(s, "    <!-- Image size: {} bytes -->", self.image_size);
        let _ = writeln!(s, "    <ImageSize> {} </ImageSize>", self.image_size);
        let _ = writeln!(s, "    <BlockSize> {} </BlockSize>", self.block_size);
        let _ = writeln!(
            s,
            "    <BlocksCount> {} </BlocksCount>",
            self.blocks_count()
        );
        let _ = writeln!(s, "    <!-- Mapped: {pct:.1}% of the blocks -->");
        let _ = writeln!(s, "    <MappedBlocksCount> {mapped} </MappedBlocksCount>");
        s.push_str("    <ChecksumType> sha256 </ChecksumType>\n");
        s.push_str("    <!-- SHA-256 of this file with this value set to zeros -->\n");
        let _ = writeln!(s, "    <BmapFileChecksum> {sum} </BmapFileChecksum>");
        s.push_str("    <BlockMap>\n");
        for r in &self.ranges {
            let body = if r.first == r.last {
                r.first.to_string()
            } else {
                format!("{}-{}", r.first, r.last)
            };
            match &r.sha256 {
                Some(h) => {
                    let _ = writeln!(s, "        <Range chksum=\"{}\"> {body} </Range>", hex(h));
                }
                None => {
                    let _ = writeln!(s, "        <Range> {body} </Range>");
                }
            }
        }
        s.push_str("    </BlockMap>\n</bmap>\n");
        s
    }

    /// Parses bmap XML; `name` is used in error messages. Checks the version, the
    /// checksum type, the whole-file checksum and that the ranges fit the image.
    pub fn parse(text: &str, name: &str) -> Result<Bmap> {
        let err = |what: String| anyhow!("{name}: {what}");
        let body = strip_comments(text);
        let open = body
            .find("<bmap")
            .ok_or_else(|| err("no <bmap> element; this is not a bmap file".into()))?;
        let tag_end = body[open..]
            .find('>')
            .ok_or_else(|| err("unterminated <bmap> tag".into()))?
            + open;
        let version = attr(&body[open..tag_end], "version")
            .ok_or_else(|| err("<bmap> has no version attribute".into()))?;
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|m| m.parse().ok())
            .ok_or_else(|| err(format!("version {version:?}: expected MAJOR.MINOR")))?;
        if !(1..=2).contains(&major) {
            bail!("{name}: bmap version {version} is not supported, expected 1.x or 2.x");
        }
        let num = |tag: &str| -> Result<u64> {
            let v = leaf(&body, tag).ok_or_else(|| err(format!("missing <{tag}>")))?;
            v.trim()
                .parse()
                .map_err(|_| err(format!("<{tag}> is {v:?}, expected a whole number")))
        };
        let image_size = num("ImageSize")?;
        let block_size = num("BlockSize")?;
        if block_size == 0 || block_size % 512 != 0 {
            bail!("{name}: <BlockSize> is {block_size}, expected a multiple of 512");
        }
        let blocks = num("BlocksCount")?;
        if blocks != image_size.div_ceil(block_size) {
            bail!("{name}: <BlocksCount> is {blocks}, but <ImageSize> {image_size} / <BlockSize> {block_size} needs {}", image_size.div_ceil(block_size));
        }
        let ctype = leaf(&body, "ChecksumType").map(|s| s.trim().to_ascii_lowercase());
        match ctype.as_deref() {
            Some("sha256") => {}
            Some(other) => bail!("{name}: <ChecksumType> is {other:?}; only sha256 is supported"),
            None => bail!("{name}: no <ChecksumType>: a bmap {version} file uses SHA-1, which is not supported; recreate it with `bmaptool create` 3.0 or later or `oneimage bmap`"),
        }
        if let Some(sum) = leaf(&body, "BmapFileChecksum") {
            let sum = sum.trim().to_ascii_lowercase();
            let pos = text
                .find(&sum)
                .ok_or_else(|| err("<BmapFileChecksum> value not found in the file".into()))?;
            let mut zeroed = text.as_bytes().to_vec();
            zeroed[pos..pos + sum.len()].fill(b'0');
            let actual = hex(&Sha256::digest(&zeroed));
            if actual != sum {
                bail!("{name}: <BmapFileChecksum> is {sum} but the file hashes to {actual}: the bmap file is damaged or was edited");
            }
        }
        let mut ranges = Vec::new();
        let mut rest = body.as_str();
        while let Some(p) = rest.find("<Range") {
            rest = &rest[p..];
            let gt = rest
                .find('>')
                .ok_or_else(|| err("unterminated <Range>".into()))?;
            let tag = &rest[..gt];
            let close = rest
                .find("</Range>")
                .ok_or_else(|| err("<Range> without </Range>".into()))?;
            let content = rest[gt + 1..close].trim();
            let (a, b) = match content.split_once('-') {
                Some((a, b)) => (a.trim(), b.trim()),
                None => (content, content),
            };
            let parse = |s: &str| -> Result<u64> {
                s.parse().map_err(|_| {
                    err(format!(
                        "<Range> {content:?}: expected FIRST-LAST block numbers"
                    ))
                })
            };
            let (first, last) = (parse(a)?, parse(b)?);
            let sha256 = match attr(tag, "chksum") {
                Some(h) => Some(unhex32(h).ok_or_else(|| {
                    err(format!(
                        "<Range> {content}: chksum {h:?} is not a SHA-256 in hex"
                    ))
                })?),
                None => None,
            };
            if last < first || last >= blocks {
                bail!("{name}: <Range> {content} is outside the image's {blocks} blocks");
            }
            if let Some(prev) = ranges.last().map(|r: &Range| r.last) {
                if first <= prev {
                    bail!("{name}: <Range> {content} overlaps or precedes the range before it");
                }
            }
            ranges.push(Range {
                first,
                last,
                sha256,
            });
            rest = &rest[close + 8..];
        }
        let bm = Bmap {
            image_size,
            block_size,
            ranges,
        };
        let mapped = num("MappedBlocksCount")?;
        if mapped != bm.mapped_blocks() {
            bail!(
                "{name}: <MappedBlocksCount> is {mapped} but the ranges cover {} blocks",
                bm.mapped_blocks()
            );
        }
        Ok(bm)
    }

    /// Reads and parses a bmap file.
    pub fn load(path: &Path) -> Result<Bmap> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading bmap {}", path.display()))?;
        Bmap::parse(&text, &path.display().to_string())
    }
}

fn strip_comments(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let c = rest.find("<!--");
        let q = rest.find("<?");
        let (p, end) = match (c, q) {
            (Some(c), Some(q)) if q < c => (q, "?>"),
            (Some(c), _) => (c, "-->"),
            (None, Some(q)) => (q, "?>"),
            (None, None) => {
                out.push_str(rest);
                return out;
            }
        };
        out.push_str(&rest[..p]);
        match rest[p..].find(end) {
            Some(e) => rest = &rest[p + e + end.len()..],
            None => return out,
        }
    }
}

fn leaf<'a>(body: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let a = body.find(&open)? + open.len();
    let b = body[a..].find(&close)? + a;
    Some(&body[a..b])
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let key = format!("{name}=");
    let p = tag.find(&key)? + key.len();
    let q = tag[p..].chars().next()?;
    if q != '"' && q != '\'' {
        return None;
    }
    let v = &tag[p + 1..];
    Some(&v[..v.find(q)?])
}

/// Lowercase hex of `b`.
pub fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

/// Parses 64 hex digits.
pub fn unhex32(h: &str) -> Option<[u8; 32]> {
    let h = h.trim();
    if h.len() != 64 || !h.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&h[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Creates a map of `image`: blocks in holes (SEEK_HOLE) or holding only zeros are
/// unmapped; each range gets a SHA-256. The result depends only on the content.
pub fn create(image: &Path) -> Result<Bmap> {
    let mut f = File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let size = f.seek(SeekFrom::End(0))?;
    let mut ranges: Vec<Range> = Vec::new();
    let mut cur: Option<(u64, Sha256)> = None;
    let mut last_block = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    for (start, end) in data_extents(&f, size)? {
        let mut off = start;
        while off < end {
            let n = ((end - off) as usize).min(buf.len());
            f.read_exact_at(&mut buf[..n], off)
                .with_context(|| format!("reading {} at byte {off}", image.display()))?;
            for (i, blk) in buf[..n].chunks(BLOCK_SIZE as usize).enumerate() {
                let b = off / BLOCK_SIZE + i as u64;
                let zero = blk.iter().all(|&x| x == 0);
                if let Some((first, h)) = cur.take() {
                    if !zero && b == last_block + 1 {
                        let mut h = h;
                        h.update(blk);
                        cur = Some((first, h));
                        last_block = b;
                        continue;
                    }
                    ranges.push(finish(first, last_block, h));
                }
                if !zero {
                    let mut h = Sha256::new();
                    h.update(blk);
                    cur = Some((b, h));
                    last_block = b;
                }
            }
            off += n as u64;
        }
    }
    if let Some((first, h)) = cur {
        ranges.push(finish(first, last_block, h));
    }
    Ok(Bmap {
        image_size: size,
        block_size: BLOCK_SIZE,
        ranges,
    })
}

fn finish(first: u64, last: u64, h: Sha256) -> Range {
    Range {
        first,
        last,
        sha256: Some(h.finalize().into()),
    }
}

/// Data extents of `f` rounded out to whole blocks, from SEEK_DATA / SEEK_HOLE; the whole
/// file when the filesystem does not support them.
fn data_extents(f: &File, size: u64) -> Result<Vec<(u64, u64)>> {
    use rustix::fs::{seek, SeekFrom as S};
    let mut out: Vec<(u64, u64)> = Vec::new();
    let mut off = 0u64;
    while off < size {
        let data = match seek(f, S::Data(off)) {
            Ok(d) => d,
            Err(rustix::io::Errno::NXIO) => break,
            Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::OPNOTSUPP) => {
                return Ok(vec![(0, size)])
            }
            Err(e) => return Err(e).context("SEEK_DATA"),
        };
        let hole = seek(f, S::Hole(data)).context("SEEK_HOLE")?.min(size);
        let a = data / BLOCK_SIZE * BLOCK_SIZE;
        let b = hole
            .div_ceil(BLOCK_SIZE)
            .saturating_mul(BLOCK_SIZE)
            .min(size);
        match out.last_mut() {
            Some(l) if l.1 >= a => l.1 = l.1.max(b),
            _ => out.push((a.max(out.last().map(|l| l.1).unwrap_or(0)), b)),
        }
        off = hole;
    }
    Ok(out)
}

/// Looks for the bmap of `source` next to it the way bmaptool does: `NAME.bmap`, then
/// with one extension after another removed (`x.img.xz` -> `x.img.bmap` -> `x.bmap`).
pub fn find_next_to(source: &Path) -> Option<PathBuf> {
    let name = source.file_name()?.to_str()?;
    let mut base = name;
    loop {
        let cand = source.with_file_name(format!("{base}.bmap"));
        if cand.is_file() {
            return Some(cand);
        }
        base = &base[..base.rfind('.')?];
    }
}

/// The SHA-256 of a byte slice.
pub fn sha256(data: impl Read) -> std::io::Result<[u8; 32]> {
    let mut h = Sha256::new();
    let mut r = data;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Ok(h.finalize().into());
        }
        h.update(&buf[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_round_trip_and_checksum() {
        let bm = Bmap {
            image_size: 10 * 4096 + 100,
            block_size: 4096,
            ranges: vec![
                Range {
                    first: 0,
                    last: 0,
                    sha256: Some([1; 32]),
                },
                Range {
                    first: 3,
                    last: 10,
                    sha256: Some([2; 32]),
                },
            ],
        };
        let x = bm.to_xml();
        assert_eq!(Bmap::parse(&x, "t").unwrap(), bm);
        assert_eq!(bm.byte_range(&bm.ranges[1]), (3 * 4096, 10 * 4096 + 100));
        let bad = x.replacen("3-10", "4-10", 1);
        let e = Bmap::parse(&bad, "t.bmap").unwrap_err().to_string();
        assert!(e.contains("BmapFileChecksum"), "{e}");
    }

    #[test]
    fn refuses_sha1_maps_and_out_of_range() {
        let v1 = "<bmap version=\"1.3\"><ImageSize>4096</ImageSize><BlockSize>4096</BlockSize><BlocksCount>1</BlocksCount><MappedBlocksCount>1</MappedBlocksCount><BlockMap><Range>0</Range></BlockMap></bmap>";
        assert!(Bmap::parse(v1, "a")
            .unwrap_err()
            .to_string()
            .contains("SHA-1"));
        let oob = v1
            .replace(
                "version=\"1.3\">",
                "version=\"2.0\"><ChecksumType>sha256</ChecksumType>",
            )
            .replace("<Range>0", "<Range>5");
        assert!(Bmap::parse(&oob, "a")
            .unwrap_err()
            .to_string()
            .contains("outside"));
    }
}
