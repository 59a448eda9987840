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

    /// Parses bmap XML (with a real XML parser, DTDs refused, nodes and size bounded);
    /// `name` is used in error messages. Checks the version, the checksum type, the
    /// whole-file checksum and that the ranges fit the image, in order and apart.
    pub fn parse(text: &str, name: &str) -> Result<Bmap> {
        let err = |what: String| BmapError(format!("{name}: {what}"));
        if text.len() > MAX_TEXT {
            bail!(
                "{name}: {} bytes; a bmap is at most {MAX_TEXT} bytes",
                text.len()
            );
        }
        let opts = roxmltree::ParsingOptions {
            allow_dtd: false,
            nodes_limit: MAX_NODES,
            ..Default::default()
        };
        let doc = roxmltree::Document::parse_with_options(text, opts)
            .map_err(|e| err(format!("not well-formed XML: {e}")))?;
        let root = doc.root_element();
        if root.tag_name().name() != "bmap" {
            bail!(
                "{name}: the root element is <{}>, expected <bmap>; this is not a bmap file",
                root.tag_name().name()
            );
        }
        let version = root
            .attribute("version")
            .ok_or_else(|| err("<bmap> has no version attribute".into()))?;
        let major: u32 = version
            .split('.')
            .next()
            .and_then(|m| m.trim().parse().ok())
            .ok_or_else(|| err(format!("version {version:?}: expected MAJOR.MINOR")))?;
        if !(1..=2).contains(&major) {
            bail!("{name}: bmap version {version} is not supported, expected 1.x or 2.x");
        }
        let child = |tag: &str| root.children().find(|n| n.has_tag_name(tag));
        let num = |tag: &str| -> Result<u64> {
            let v = child(tag)
                .ok_or_else(|| err(format!("missing <{tag}>")))?
                .text()
                .unwrap_or("");
            v.trim()
                .parse()
                .map_err(|_| err(format!("<{tag}> is {v:?}, expected a whole number")))
        };
        let image_size = num("ImageSize")?;
        let block_size = num("BlockSize")?;
        if block_size == 0 || block_size % 512 != 0 || block_size > 1 << 30 {
            bail!("{name}: <BlockSize> is {block_size}, expected a multiple of 512 up to 1 GiB");
        }
        if image_size > MAX_IMAGE {
            bail!("{name}: <ImageSize> is {image_size}, more than the {MAX_IMAGE} bytes a disk can have");
        }
        let blocks = num("BlocksCount")?;
        if blocks != image_size.div_ceil(block_size) {
            bail!("{name}: <BlocksCount> is {blocks}, but <ImageSize> {image_size} / <BlockSize> {block_size} needs {}", image_size.div_ceil(block_size));
        }
        let ctype =
            child("ChecksumType").map(|n| n.text().unwrap_or("").trim().to_ascii_lowercase());
        match ctype.as_deref() {
            Some("sha256") => {}
            Some(other) => bail!("{name}: <ChecksumType> is {other:?}; only sha256 is supported"),
            None => bail!("{name}: no <ChecksumType>: a bmap {version} file uses SHA-1, which is not supported; recreate it with `bmaptool create` 3.0 or later or `oneimage bmap`"),
        }
        if let Some(node) = child("BmapFileChecksum") {
            let sum = node.text().unwrap_or("").trim().to_ascii_lowercase();
            if unhex32(&sum).is_none() {
                bail!("{name}: <BmapFileChecksum> is {sum:?}, expected 64 hex digits");
            }
            // The checksum is over the file with this value set to zeros, at the place
            // the parser found it.
            let range = node
                .first_child()
                .map(|t| t.range())
                .ok_or_else(|| err("<BmapFileChecksum> is empty".into()))?;
            let raw = &text[range.clone()];
            let at = range.start + raw.find(|c: char| !c.is_whitespace()).unwrap_or(0);
            let mut zeroed = text.as_bytes().to_vec();
            zeroed[at..at + 64].fill(b'0');
            let actual = hex(&Sha256::digest(&zeroed));
            if actual != sum {
                bail!("{name}: <BmapFileChecksum> is {sum} but the file hashes to {actual}: the bmap file is damaged or was edited");
            }
        }
        let map = child("BlockMap").ok_or_else(|| err("missing <BlockMap>".into()))?;
        let mut ranges: Vec<Range> = Vec::new();
        for r in map.children().filter(|n| n.is_element()) {
            if !r.has_tag_name("Range") {
                bail!(
                    "{name}: <{}> inside <BlockMap>, expected only <Range>",
                    r.tag_name().name()
                );
            }
            let content = r.text().unwrap_or("").trim();
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
            let sha256 = match r.attribute("chksum") {
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
            if let Some(prev) = ranges.last().map(|r| r.last) {
                if first <= prev {
                    bail!("{name}: <Range> {content} overlaps or precedes the range before it");
                }
            }
            ranges.push(Range {
                first,
                last,
                sha256,
            });
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

/// The largest bmap text read.
const MAX_TEXT: usize = 256 << 20;
/// The most XML nodes in a bmap (two per range).
const MAX_NODES: u32 = 16 << 20;
/// The largest image size (2^62 bytes), so block arithmetic cannot overflow.
const MAX_IMAGE: u64 = 1 << 62;

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

    /// Seeded mutations of a valid map (bytes flipped, cut, repeated, numbers replaced
    /// by extremes) never panic; whatever parses keeps its ranges inside the image.
    #[test]
    fn mutated_maps_never_panic() {
        let bm = Bmap {
            image_size: 1 << 30,
            block_size: 4096,
            ranges: (0..40)
                .map(|i| Range {
                    first: i * 100,
                    last: i * 100 + 7,
                    sha256: Some([i as u8; 32]),
                })
                .collect(),
        };
        let base = bm.to_xml().into_bytes();
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let extremes = [
            "18446744073709551615",
            "0",
            "-1",
            "4611686018427387904",
            "",
            "1e9",
        ];
        let mut parsed = 0;
        for _ in 0..10_000 {
            let mut m = base.clone();
            for _ in 0..1 + next() % 4 {
                if m.is_empty() {
                    break;
                }
                let at = (next() % m.len() as u64) as usize;
                match next() % 5 {
                    0 => m[at] ^= 1 << (next() % 8),
                    1 => m.truncate(at),
                    2 => {
                        let piece = m[at..(at + 40).min(m.len())].to_vec();
                        m.splice(at..at, piece);
                    }
                    3 => {
                        // A number somewhere becomes an extreme.
                        if let Some(d) = m[at..].iter().position(|c| c.is_ascii_digit()) {
                            let start = at + d;
                            let end = start
                                + m[start..].iter().take_while(|c| c.is_ascii_digit()).count();
                            let e = extremes[(next() % extremes.len() as u64) as usize];
                            m.splice(start..end, e.bytes());
                        }
                    }
                    _ => m.insert(at, b"<>&\"\0-"[(next() % 6) as usize]),
                }
            }
            let Ok(text) = std::str::from_utf8(&m) else {
                continue;
            };
            // Half the time the file checksum is made right again, so the mutation
            // reaches the checks behind it.
            let fresh = (next() % 2 == 0).then(|| refresh_checksum(text)).flatten();
            let text = fresh.as_deref().unwrap_or(text);
            if let Ok(p) = Bmap::parse(text, "fuzz") {
                parsed += 1;
                for r in &p.ranges {
                    let (a, b) = p.byte_range(r);
                    assert!(a < b && b <= p.image_size, "{a}..{b} of {}", p.image_size);
                }
            }
        }
        assert!(parsed > 100 && parsed < 10_000, "{parsed}");
    }

    /// `text` with its `BmapFileChecksum` recomputed, if it has a 64-digit one.
    fn refresh_checksum(text: &str) -> Option<String> {
        let tag = "<BmapFileChecksum> ";
        let at = text.find(tag)? + tag.len();
        let old = text.get(at..at + 64)?;
        if !old.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        let zeroed = format!("{}{}{}", &text[..at], "0".repeat(64), &text[at + 64..]);
        let sum = hex(&Sha256::digest(zeroed.as_bytes()));
        Some(format!("{}{}{}", &text[..at], sum, &text[at + 64..]))
    }
}
