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

fn u16_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?) as u64)
}
fn u32_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?) as u64)
}
fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}
fn cstr(b: &[u8], o: usize) -> Option<String> {
    let rest = b.get(o..)?;
    let end = rest.iter().position(|&c| c == 0)?;
    String::from_utf8(rest[..end].to_vec()).ok()
}

/// Reads what a little-endian ELF64 file needs; `None` when it is not one.
pub fn needs(b: &[u8]) -> Option<Needs> {
    if b.get(0..4)? != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return None;
    }
    let phoff = u64_at(b, 0x20)? as usize;
    let phentsize = u16_at(b, 0x36)? as usize;
    let phnum = u16_at(b, 0x38)? as usize;
    let mut out = Needs::default();
    let mut loads = Vec::new();
    let mut dynamic = None;
    for i in 0..phnum {
        let p = phoff + i * phentsize;
        let (ty, off, vaddr, filesz) = (
            u32_at(b, p)?,
            u64_at(b, p + 8)?,
            u64_at(b, p + 16)?,
            u64_at(b, p + 32)?,
        );
        match ty {
            1 => loads.push((vaddr, off, filesz)),
            2 => dynamic = Some((off as usize, filesz as usize)),
            3 => out.interpreter = cstr(b, off as usize),
            _ => {}
        }
    }
    let Some((doff, dsize)) = dynamic else {
        return Some(out);
    };
    let to_file = |va: u64| {
        loads
            .iter()
            .find(|(v, _, s)| va >= *v && va < v + s)
            .map(|(v, o, _)| (va - v + o) as usize)
    };
    let (mut strtab, mut needed) = (None, Vec::new());
    for i in 0..dsize / 16 {
        let (tag, val) = (u64_at(b, doff + i * 16)?, u64_at(b, doff + i * 16 + 8)?);
        match tag {
            0 => break,
            1 => needed.push(val as usize),
            5 => strtab = to_file(val),
            _ => {}
        }
    }
    let strtab = strtab?;
    out.libraries = needed
        .into_iter()
        .filter_map(|o| cstr(b, strtab + o))
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
    }
}
