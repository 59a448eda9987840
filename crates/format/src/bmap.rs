//! Block maps in the bmap 2.0 XML format that bmaptool reads and writes: which blocks of
//! an image hold data, with a SHA-256 per range and one over the whole file. A block
//! that is not mapped is a hole of the image file; its content is zero.

use crate::hash::{hex, unhex32};
use sha2::{Digest, Sha256};
use std::fmt::Write as _;

/// A bmap file that cannot be used, with the reason (naming the file and the field).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BmapError(pub String);

/// The result of parsing a bmap.
pub type Result<T> = std::result::Result<T, BmapError>;

macro_rules! bail {
    ($($t:tt)*) => { return Err(BmapError(format!($($t)*))) };
}

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
        let err = |what: String| BmapError(format!("{name}: {what}"));
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
