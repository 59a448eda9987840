//! `oneimage inspect`: prints the report of `oneimage_format::inspect` as text or JSON.

use anyhow::{Context, Result};
use oneimage_format::size::format_size;
use std::path::Path;

/// Inspects `image` and prints the result.
pub fn run(image: &Path, json: bool) -> Result<()> {
    let mut f =
        std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let report = oneimage_format::inspect::inspect(&mut f)
        .with_context(|| format!("reading {}", image.display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{}: {} ({} bytes), GPT, {}-byte sectors, disk GUID {}",
        image.display(),
        format_size(report.size),
        report.size,
        report.sector_size,
        report.disk_guid
    );
    use oneimage_format::inspect::FirstBootReport;
    match &report.first_boot {
        FirstBootReport::NotStarted => println!("  first boot: not started (as built)"),
        FirstBootReport::Started {
            done,
            complete,
            original_disk_guid,
            expand_into,
            encryption,
            ..
        } => {
            println!(
                "  first boot: {}; done: {}; disk GUID as built {original_disk_guid}",
                if *complete { "complete" } else { "started" },
                done.join(", ")
            );
            if let Some(n) = expand_into {
                let state = if done.contains(&"expand") {
                    "the read-write root; the compressed partition is the factory copy the live entry boots"
                } else {
                    "not done yet"
                };
                println!("  expansion of the compressed root into partition {n}: {state}");
            }
            if encryption.policy != "off" {
                println!(
                    "  encryption ({}): {}",
                    encryption.policy, encryption.outcome
                );
            }
        }
        FirstBootReport::Stale => {
            println!("  first boot: a record of an earlier copy, ignored (not started)")
        }
        FirstBootReport::Unusable { reason } => println!("  first boot: record unusable: {reason}"),
    }
    if !report.backup_at_end {
        println!("  note: the backup partition table is not at the end of the disk (the image was enlarged)");
    }
    for p in &report.partitions {
        println!(
            "p{} {:<14} {:<12} offset {:>12}  size {:>10}  type {}  PARTUUID {}",
            p.entry.number,
            p.entry.name,
            p.type_name.unwrap_or("?"),
            p.offset,
            format_size(p.size),
            p.entry.type_guid,
            p.entry.guid
        );
        if let Some(fs) = &p.filesystem {
            let used = fs.used_bytes.map(format_size).unwrap_or_else(|| "?".into());
            println!(
                "   {} label {:?} UUID {} used {} of {}",
                fs.kind,
                fs.label,
                fs.uuid,
                used,
                format_size(fs.total_bytes)
            );
        }
        if let Some(h) = &p.luks2 {
            print_luks2(h);
        }
        for b in &p.boot_files {
            println!("   {:<40} {:>10}", b.path, format_size(b.size));
        }
        for e in &p.boot_entries {
            println!(
                "   boot entry {:?}{} in {}: {} {}",
                e.title,
                e.id.as_ref()
                    .map(|i| format!(" (id {i})"))
                    .unwrap_or_default(),
                e.config,
                e.kernel.as_deref().unwrap_or("-"),
                e.cmdline.as_deref().unwrap_or("")
            );
        }
        if let Some(e) = &p.error {
            println!("   error: {e}");
        }
    }
    if let Some(g) = &report.bios_boot {
        let part = report
            .partitions
            .iter()
            .find(|p| p.entry.first_lba <= g.core_sector && g.core_sector <= p.entry.last_lba);
        println!(
            "MBR: GRUB boot code (BIOS), core.img at sector {}{}, {} sectors",
            g.core_sector,
            part.map_or(String::new(), |p| format!(
                " (p{} {})",
                p.entry.number,
                p.type_name.unwrap_or("")
            )),
            g.core_sectors
        );
    }
    if let Some(iso) = &report.iso {
        println!(
            "ISO 9660 view: volume {:?}, {}",
            iso.volume_id,
            format_size(iso.volume_bytes)
        );
        for f in &iso.files {
            let total: u64 = f.extents.iter().map(|e| e.1).sum();
            let first = f.extents.first().map_or(0, |e| e.0);
            println!(
                "   /{:<18} offset {:>12}  size {:>10}  ({} extent{})",
                f.path,
                first,
                format_size(total),
                f.extents.len(),
                if f.extents.len() == 1 { "" } else { "s" }
            );
        }
        for e in &iso.boot_entries {
            println!(
                "   El Torito {} entry{}: offset {}, {} sectors",
                e.platform,
                if e.bootable { " (bootable)" } else { "" },
                e.offset,
                e.sectors
            );
        }
    }
    Ok(())
}

/// The lines of a LUKS2 header: what it is, its keyslots and its segments.
fn print_luks2(h: &oneimage_format::luks2::Header) {
    println!(
        "   LUKS{} UUID {} label {:?}, header {}, checksum {}{}",
        h.version,
        h.uuid,
        h.label,
        format_size(h.header_size),
        if h.checksum_ok { "good" } else { "BAD" },
        if h.reencrypt_in_progress() {
            "; an encryption or re-encryption is in progress (cut short, or running)"
        } else {
            ""
        }
    );
    for k in &h.keyslots {
        let kdf = match (&k.kdf, k.kdf_memory_kib, k.kdf_time) {
            (Some(kdf), Some(m), Some(t)) => {
                format!("{kdf}, memory {}, time {t}", format_size(m << 10))
            }
            (Some(kdf), None, Some(t)) => format!("{kdf}, {t} iterations"),
            (Some(kdf), _, _) => kdf.clone(),
            (None, _, _) => "no KDF".into(),
        };
        println!("   keyslot {}: {} ({kdf})", k.id, k.kind);
    }
    for s in &h.segments {
        println!(
            "   segment {}: {} at {}, {}{}{}",
            s.id,
            s.kind,
            format_size(s.offset),
            s.size
                .map_or("to the end of the device".into(), format_size),
            s.cipher
                .as_ref()
                .map_or(String::new(), |c| format!(", {c}")),
            s.sector_size
                .map_or(String::new(), |n| format!(", {n}-byte sectors"))
        );
    }
}
