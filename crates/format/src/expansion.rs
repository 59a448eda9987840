//! The partition table of a disk whose compressed root was expanded on its first boot
//! (see the boot agent's `expand` module): the names it uses, and how to see the image
//! it started from again in such a table.

use crate::arch::Arch;
use crate::gpt::{Partition, Table, TYPE_LINUX_DATA};

/// The new partition's name while the expanded root is being made in it.
pub const EXPANDING_NAME: &str = "oneimage-expanding";
/// The expanded root's partition name.
pub const EXPANDED_NAME: &str = "root";
/// The compressed root's partition name once the expanded root has taken over.
pub const FACTORY_NAME: &str = "factory-root";
/// Free space the expanded root must have beyond its content: with less, the disk is
/// too small (the system would start full).
pub const MIN_FREE: u64 = 256 << 20;

/// The number the expanded root's partition gets: the first after every partition.
pub fn expanded_number(table: &Table) -> u32 {
    table.partitions.iter().map(|p| p.number).max().unwrap_or(0) + 1
}

/// Whether the filesystem `kind` (as `probe` names it) is a compressed root that
/// expands on first boot.
pub fn is_compressed(kind: &str) -> bool {
    matches!(kind, "squashfs" | "erofs")
}

/// The name the builder gives the root partition of an `arch` image.
pub fn root_partition_name(arch: Arch) -> String {
    format!("root-{}", arch.name().replace('_', "-"))
}

/// The table of the image that `table` started as, whose root partition (compressed)
/// is number `root`: the partitions after the root (what an expansion added, being made
/// or made) left out, and the root given back its root type and name when an expansion
/// had made it the factory copy.
pub fn image_table(table: &Table, root: u32) -> Table {
    let Some(r) = table.partitions.iter().find(|p| p.number == root) else {
        return table.clone();
    };
    let after: Vec<&Partition> = table
        .partitions
        .iter()
        .filter(|p| p.first_lba > r.last_lba)
        .collect();
    let arch = after
        .iter()
        .find_map(|p| Arch::from_root_type(p.type_guid))
        .or_else(|| Arch::from_root_type(r.type_guid));
    let data: crate::Guid = TYPE_LINUX_DATA.parse().expect("constant");
    let partitions = table
        .partitions
        .iter()
        .filter(|p| p.first_lba <= r.last_lba)
        .map(|p| match arch {
            Some(a) if p.number == root && p.type_guid == data && p.name == FACTORY_NAME => {
                Partition {
                    type_guid: a.root_type().parse().expect("constant"),
                    name: root_partition_name(a),
                    ..p.clone()
                }
            }
            _ => p.clone(),
        })
        .collect();
    Table {
        partitions,
        ..table.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Guid;

    fn part(number: u32, type_guid: &str, name: &str, first: u64, last: u64) -> Partition {
        Partition {
            number,
            type_guid: type_guid.parse().unwrap(),
            guid: Guid([number as u8; 16]),
            name: name.into(),
            first_lba: first,
            last_lba: last,
            attributes: 0,
        }
    }

    #[test]
    fn an_expansion_is_undone_and_an_image_left_as_it_is() {
        let esp = part(1, crate::gpt::TYPE_ESP, "esp", 2048, 4095);
        let image = Table {
            sector_size: 512,
            disk_guid: Guid([9; 16]),
            first_usable_lba: 34,
            last_usable_lba: 100_000,
            backup_lba: 100_033,
            partitions: vec![
                esp.clone(),
                part(2, crate::gpt::TYPE_ROOT_X86_64, "root-x86-64", 4096, 8191),
            ],
        };
        assert_eq!(image_table(&image, 2), image);
        let mut expanded = image.clone();
        expanded.partitions[1] = part(2, TYPE_LINUX_DATA, FACTORY_NAME, 4096, 8191);
        expanded.partitions.push(part(
            4,
            crate::gpt::TYPE_ROOT_X86_64,
            EXPANDED_NAME,
            10240,
            99_999,
        ));
        assert_eq!(image_table(&expanded, 2), image);
        // Cut short while the new partition was being filled: still plain data.
        let mut half = image.clone();
        half.partitions
            .push(part(4, TYPE_LINUX_DATA, EXPANDING_NAME, 10240, 99_999));
        assert_eq!(image_table(&half, 2), image);
    }
}
