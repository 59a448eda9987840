//! Just enough ELF64 reading to copy a program with its libraries: the interpreter
//! (`PT_INTERP`) and the needed libraries (`DT_NEEDED`).

/// What a dynamically linked ELF file asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Needs {
    /// The program interpreter (dynamic loader), if any.
    pub interpreter: Option<String>,
    /// Needed shared libraries, by soname.
    pub libraries: Vec<String>,
}

/// Longest interpreter path or library name read (the kernel's PATH_MAX): a name that
/// runs on without a NUL is not read to the end of a large file, once per entry.
const MAX_NAME: usize = 4096;
/// Most `DT_NEEDED` entries taken from one file; real programs have a handful.
const MAX_NEEDED: usize = 1024;
/// Bytes of one ELF64 program header.
const PHDR: u64 = 56;

// Offsets come from the file: every one is checked against its length, and every sum
// of two of them is checked for overflow, so any bytes give `None`, never a panic.
fn at<const N: usize>(b: &[u8], o: u64) -> Option<[u8; N]> {
    let o = usize::try_from(o).ok()?;
    b.get(o..o.checked_add(N)?)?.try_into().ok()
}
fn u16_at(b: &[u8], o: u64) -> Option<u64> {
    Some(u16::from_le_bytes(at(b, o)?).into())
}
fn u32_at(b: &[u8], o: u64) -> Option<u64> {
    Some(u32::from_le_bytes(at(b, o)?).into())
}
fn u64_at(b: &[u8], o: u64) -> Option<u64> {
    Some(u64::from_le_bytes(at(b, o)?))
}
fn cstr(b: &[u8], o: u64) -> Option<String> {
    let rest = b.get(usize::try_from(o).ok()?..)?;
    let rest = &rest[..rest.len().min(MAX_NAME + 1)];
    let end = rest.iter().position(|&c| c == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// The `e_machine` of a little-endian ELF64 file (62 x86-64, 183 AArch64); `None` when it
/// is not one.
pub fn machine(b: &[u8]) -> Option<u16> {
    if b.get(0..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    Some(u16::from_le_bytes(at(b, 0x12)?))
}

/// Reads what a little-endian ELF64 file needs; `None` when it is not one (or not one
/// whose headers lie inside it).
pub fn needs(b: &[u8]) -> Option<Needs> {
    if b.get(0..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = u64_at(b, 0x20)?;
    let phentsize = u16_at(b, 0x36)?;
    let phnum = u16_at(b, 0x38)?;
    if phentsize < PHDR {
        return None;
    }
    let mut out = Needs::default();
    let mut loads = Vec::new();
    let mut dynamic = None;
    for i in 0..phnum {
        let p = phoff.checked_add(i * phentsize)?;
        let (ty, off, vaddr, filesz) = (
            u32_at(b, p)?,
            u64_at(b, p.checked_add(8)?)?,
            u64_at(b, p.checked_add(16)?)?,
            u64_at(b, p.checked_add(32)?)?,
        );
        match ty {
            1 => loads.push((vaddr, off, filesz)),
            2 => dynamic = Some((off, filesz)),
            3 => out.interpreter = cstr(b, off),
            _ => {}
        }
    }
    let Some((doff, dsize)) = dynamic else {
        return Some(out);
    };
    // The file offset of a virtual address, through the PT_LOAD segment holding it.
    let to_file = |va: u64| {
        loads.iter().find_map(|&(v, o, s)| {
            let d = va.checked_sub(v).filter(|&d| d < s)?;
            o.checked_add(d)
        })
    };
    let (mut strtab, mut needed) = (None, Vec::new());
    // Entries past the end of the file end the read (`?`), so this runs at most
    // len / 16 times whatever the recorded size.
    for i in 0..dsize / 16 {
        let e = doff.checked_add(i * 16)?;
        let (tag, val) = (u64_at(b, e)?, u64_at(b, e.checked_add(8)?)?);
        match tag {
            0 => break,
            1 if needed.len() < MAX_NEEDED => needed.push(val),
            5 => strtab = to_file(val),
            _ => {}
        }
    }
    let strtab = strtab?;
    out.libraries = needed
        .into_iter()
        .filter_map(|o| cstr(b, strtab.checked_add(o)?))
        .collect();
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_a_real_program() {
        // /bin/ls is a dynamically linked ELF on every Debian system.
        let n = super::needs(&std::fs::read("/bin/ls").unwrap()).unwrap();
        assert_eq!(
            n.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert!(n.libraries.iter().any(|l| l == "libc.so.6"), "{n:?}");
    }

    #[test]
    fn not_elf_is_none() {
        assert_eq!(super::needs(b"#!/bin/sh\n"), None);
        // Found by `fuzz_elf_needs`: a file cut right after the magic was indexed past
        // its end, and offsets near 2^64 overflowed when added to.
        assert_eq!(super::needs(b"\x7fELF"), None);
        let mut far = super::fuzz::small_program();
        far[0x20..0x28].copy_from_slice(&(u64::MAX - 4).to_le_bytes());
        assert_eq!(super::needs(&far), None);
        let mut strtab = super::fuzz::small_program();
        strtab[0x300 + 24..0x300 + 32].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(super::needs(&strtab).unwrap().libraries, ["libm.so.6"]);
    }
}

#[cfg(test)]
mod fuzz {
    use crate::testing::Fuzz;

    /// A small ELF64 executable with an interpreter, two needed libraries and a dynamic
    /// section reached through a PT_LOAD segment, as `needs` reads real programs.
    pub(super) fn small_program() -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&3u16.to_le_bytes());
        let ph = |b: &mut Vec<u8>, i: usize, ty: u32, off: u64, vaddr: u64, size: u64| {
            let p = 0x40 + i * 56;
            b[p..p + 4].copy_from_slice(&ty.to_le_bytes());
            b[p + 8..p + 16].copy_from_slice(&off.to_le_bytes());
            b[p + 16..p + 24].copy_from_slice(&vaddr.to_le_bytes());
            b[p + 32..p + 40].copy_from_slice(&size.to_le_bytes());
        };
        ph(&mut b, 0, 1, 0, 0x40_0000, 0x400);
        ph(&mut b, 1, 3, 0x200, 0x40_0200, 28);
        ph(&mut b, 2, 2, 0x300, 0x40_0300, 64);
        b[0x200..0x21b].copy_from_slice(b"/lib64/ld-linux-x86-64.so.2");
        b[0x280..0x28a].copy_from_slice(b"libc.so.6\0");
        b[0x28a..0x294].copy_from_slice(b"libm.so.6\0");
        let dynamic = [(5u64, 0x40_0280u64), (1, 0), (1, 10), (0, 0)];
        for (i, (tag, val)) in dynamic.iter().enumerate() {
            b[0x300 + i * 16..0x308 + i * 16].copy_from_slice(&tag.to_le_bytes());
            b[0x308 + i * 16..0x310 + i * 16].copy_from_slice(&val.to_le_bytes());
        }
        b
    }

    #[test]
    fn the_small_program_reads() {
        let n = super::needs(&small_program()).unwrap();
        assert_eq!(
            n.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert_eq!(n.libraries, ["libc.so.6", "libm.so.6"]);
    }

    /// Programs from a root filesystem are untrusted: any mutation of a small program
    /// or of a real one (`/bin/ls`) is read without a panic, and every name found is a
    /// string of the file.
    #[test]
    fn fuzz_elf_needs() {
        let small = small_program();
        let ls = std::fs::read("/bin/ls").expect("/bin/ls, a dynamically linked program");
        let ls_hot = 0..(0x40 + 13 * 56);
        let report = Fuzz::new("fuzz_elf_needs").run(
            |m, case| match case % 4 {
                0 => m.hot(std::slice::from_ref(&ls_hot)).mutate(&ls),
                3 => m.generate(512),
                _ => m
                    .hot(&[0..0x40, 0x40..0x40 + 3 * 56, 0x300..0x340])
                    .mutate(&small),
            },
            |input| {
                let Some(n) = super::needs(input) else {
                    return false;
                };
                for s in n.interpreter.iter().chain(&n.libraries) {
                    assert!(s.len() < input.len(), "{s:?}");
                }
                assert!(n.libraries.len() <= input.len() / 16, "{n:?}");
                true
            },
        );
        assert!(
            report.accepted > 1000 && report.accepted < report.cases,
            "{report:?}"
        );
    }
}
