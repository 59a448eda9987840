//! Telling apart copies of one image that never booted: they carry the same GUIDs, so
//! GRUB's persistent entry marks the ESP it started from (`oneimage_booted=1` in the
//! environment block `/EFI/BOOT/oneimage.env`), and the agent takes the one disk marked.
//! The mark is cleared once used, so that it says "this boot" and nothing older.

use crate::disks::Found;
use crate::log::say;
use oneimage_format::{fat, gpt, grubenv};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

const FILE: &str = "/EFI/BOOT/oneimage.env";
const VAR: &str = "oneimage_booted";

/// Where an environment block lies on the disk, and the variables it holds.
type Mark = (Vec<fat::ByteRange>, Vec<(String, String)>);

/// Where the environment block of `disk`'s ESP lies, and what it holds.
fn read_mark(disk: &mut File) -> Result<Mark, String> {
    let table = gpt::read_table(disk).map_err(|e| e.to_string())?;
    let esp = table
        .partitions
        .iter()
        .find(|p| p.is_esp())
        .ok_or("no ESP")?;
    let ss = table.sector_size;
    let (ranges, size) = fat::file_ranges(&mut *disk, esp.offset(ss), esp.len(ss), FILE)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no {FILE} on the ESP"))?;
    if size != grubenv::SIZE as u64 {
        return Err(format!("{FILE} is {size} bytes, not {}", grubenv::SIZE));
    }
    let mut bytes = Vec::with_capacity(grubenv::SIZE);
    for &(at, n) in &ranges {
        let mut b = vec![0u8; n as usize];
        disk.seek(SeekFrom::Start(at))
            .and_then(|_| disk.read_exact(&mut b))
            .map_err(|e| e.to_string())?;
        bytes.extend_from_slice(&b);
    }
    let vars =
        grubenv::parse(&bytes).ok_or_else(|| format!("{FILE} is not a GRUB environment block"))?;
    Ok((ranges, vars))
}

/// Rewrites the block in place with the mark cleared (other variables kept).
fn clear_mark(
    disk: &mut File,
    ranges: &[fat::ByteRange],
    vars: &[(String, String)],
) -> Result<(), String> {
    let kept: Vec<(&str, &str)> = vars
        .iter()
        .map(|(k, v)| (k.as_str(), if k == VAR { "0" } else { v.as_str() }))
        .collect();
    let bytes = grubenv::block(&kept).ok_or("the cleared block does not fit")?;
    let mut at = 0usize;
    for &(off, n) in ranges {
        disk.seek(SeekFrom::Start(off))
            .and_then(|_| disk.write_all(&bytes[at..at + n as usize]))
            .map_err(|e| e.to_string())?;
        at += n as usize;
    }
    disk.sync_all().map_err(|e| e.to_string())
}

/// The one of `candidates` (disks holding the same root) whose ESP GRUB marked in this
/// boot, its mark cleared; `None` when no disk or several are marked.
pub fn pick(candidates: &[Found]) -> Option<usize> {
    let mut marked = Vec::new();
    for (i, f) in candidates.iter().enumerate() {
        let dev = format!("/dev/{}", f.disk);
        let mut disk = match crate::disks::open_rw(&dev) {
            Ok(d) => d,
            Err(e) => {
                say(&format!("boot mark: {e}"));
                continue;
            }
        };
        match read_mark(&mut disk) {
            Ok((ranges, vars)) => {
                if vars.iter().any(|(k, v)| k == VAR && v == "1") {
                    marked.push((i, disk, ranges, vars));
                }
            }
            Err(e) => say(&format!("boot mark: {dev}: {e}")),
        }
    }
    if marked.len() != 1 {
        say(&format!(
            "boot mark: {} of the {} disks carry GRUB's mark of this boot",
            marked.len(),
            candidates.len()
        ));
        return None;
    }
    let (i, mut disk, ranges, vars) = marked.pop().expect("one");
    let dev = format!("/dev/{}", candidates[i].disk);
    say(&format!(
        "boot mark: GRUB started from {dev}, the only disk it marked"
    ));
    if let Err(e) = clear_mark(&mut disk, &ranges, &vars) {
        say(&format!("boot mark: clearing it on {dev}: {e}"));
    }
    Some(i)
}

/// Sets GRUB's mark of this boot on `found`'s disk back to what the image holds as
/// built, for a persistent boot that wrote nothing else (it went live): the disk is then
/// exactly as it was, a copy that never booted.
pub fn undo(found: &Found) {
    let dev = format!("/dev/{}", found.disk);
    let result = crate::disks::open_rw(&dev).and_then(|mut disk| {
        let (ranges, vars) = read_mark(&mut disk)?;
        if vars.iter().any(|(k, v)| k == VAR && v == "1") {
            clear_mark(&mut disk, &ranges, &vars)?;
            say(&format!("boot mark: set back on {dev}"));
        }
        Ok(())
    });
    if let Err(e) = result {
        say(&format!("boot mark: {dev}: {e}"));
    }
}
