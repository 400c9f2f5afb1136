//! Offsets of kernel struct members (`task_struct.mm`, `file.f_inode`, ...) read from the
//! running kernel's BTF, for kernel programs that follow pointers with bpf_probe_read_kernel.
//!
//! aya-ebpf has no CO-RE relocations yet, so a program that must walk kernel structures gets
//! their layout from userspace as globals. Written by hand rather than with a BTF crate: those
//! build a model of every type (btfparse: ~100 ms and ~50 MiB for vmlinux), where a tool needs
//! a dozen members. This reader streams the file in pieces: it finds the names asked for in
//! the string section, then keeps 12 bytes per type (kind, name, where its members are) and
//! reads a struct's members only when asked: a few milliseconds and about 2 MiB.

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io::Read as _,
    os::unix::fs::FileExt as _,
    path::Path,
};

use anyhow::{Context as _, anyhow, bail};

/// The kernel's own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;
const HEADER_LEN: usize = 24;

// Kinds (include/uapi/linux/btf.h).
const KIND_INT: u8 = 1;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_TYPEDEF: u8 = 8;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// Bytes after a type's 12-byte header, by kind and member count (kinds 9 and 10,
/// volatile and const, are qualifiers like typedef).
fn extra_len(kind: u8, vlen: u32) -> Option<u64> {
    let vlen = u64::from(vlen);
    Some(match kind {
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => 12 * vlen,
        KIND_ENUM | KIND_FUNC_PROTO => 8 * vlen,
        2 | 7 | KIND_TYPEDEF..=KIND_RESTRICT | 12 | 16 | KIND_TYPE_TAG => 0,
        _ => return None,
    })
}

/// What is kept of one type.
#[derive(Clone, Copy, Default)]
struct Entry {
    kind: u8,
    /// A struct's member offsets hold a bitfield size in their top 8 bits.
    kind_flag: bool,
    /// Members of a struct or union.
    vlen: u16,
    name_off: u32,
    /// Struct or union: file offset of its members; typedef and qualifiers: the type named.
    data: u32,
}

/// The running kernel's types, asked for member offsets.
pub struct KernelTypes {
    file: File,
    path: String,
    /// Offsets in the string section of the names asked for (see [`KernelTypes::open_for`]).
    names: HashMap<String, u32>,
    /// By type id (0 is void).
    types: Vec<Entry>,
}

impl KernelTypes {
    /// The running kernel's types, able to answer for the structs and members named in
    /// `wanted` (`("task_struct", "mm")`, member paths separated by dots).
    pub fn running(wanted: &[(&str, &str)]) -> anyhow::Result<KernelTypes> {
        KernelTypes::open_for(Path::new(VMLINUX_BTF), wanted)
    }

    pub fn open_for(path: &Path, wanted: &[(&str, &str)]) -> anyhow::Result<KernelTypes> {
        let shown = path.display().to_string();
        let mut file = File::open(path).with_context(|| {
            format!("cannot read {shown} (a kernel built with CONFIG_DEBUG_INFO_BTF is needed)")
        })?;
        let mut header = [0u8; HEADER_LEN];
        file.read_exact(&mut header)
            .with_context(|| format!("{shown} is too short for BTF"))?;
        let u32_at = |o: usize| le32(&header, o);
        if u16::from_le_bytes([header[0], header[1]]) != MAGIC {
            bail!("{shown} is not BTF (no magic number; big-endian BTF is not read)");
        }
        let base = u64::from(u32_at(4));
        let (type_off, type_len) = (base + u64::from(u32_at(8)), u64::from(u32_at(12)));
        let (str_off, str_len) = (base + u64::from(u32_at(16)), u64::from(u32_at(20)));
        let mut names: Vec<&str> = vec![];
        for (s, p) in wanted {
            names.push(s);
            names.extend(p.split('.'));
        }
        let mut types = KernelTypes {
            names: find_strings(&file, str_off, str_len, &names)
                .with_context(|| format!("reading the string section of {shown}"))?,
            types: vec![],
            file,
            path: shown,
        };
        types.index(type_off, type_len)?;
        Ok(types)
    }

    /// One pass over the type section, keeping an [`Entry`] per type.
    fn index(&mut self, start: u64, len: u64) -> anyhow::Result<()> {
        let mut types = vec![Entry::default()];
        let mut buf = vec![0u8; 1 << 16];
        let mut pos = start;
        let end = start + len;
        // Bytes of `buf` holding the file from `pos`.
        let (mut have, mut at) = (0usize, 0usize);
        while pos < end {
            if have - at < 12 {
                buf.copy_within(at..have, 0);
                have -= at;
                at = 0;
                let want = ((end - pos) as usize).min(buf.len()).saturating_sub(have);
                let n = self
                    .file
                    .read_at(&mut buf[have..have + want], pos + have as u64)?;
                have += n;
                if have < 12 {
                    bail!("{}: the type section ends inside a type", self.path);
                }
            }
            let word = |o: usize| le32(&buf, at + o);
            let (name_off, info, size_or_type) = (word(0), word(4), word(8));
            let kind = ((info >> 24) & 0x1f) as u8;
            let vlen = info & 0xffff;
            let extra = extra_len(kind, vlen)
                .ok_or_else(|| anyhow!("{}: unknown BTF kind {kind}", self.path))?;
            let members_at = pos + 12;
            types.push(Entry {
                kind,
                kind_flag: info >> 31 != 0,
                vlen: vlen as u16,
                name_off,
                data: match kind {
                    KIND_STRUCT | KIND_UNION => u32::try_from(members_at).unwrap_or(u32::MAX),
                    _ => size_or_type,
                },
            });
            let step = 12 + extra;
            pos += step;
            // Skip what the buffer holds of this type, then whatever lies beyond it.
            let in_buf = ((have - at) as u64).min(step) as usize;
            at += in_buf;
            if (in_buf as u64) < step {
                have = 0;
                at = 0;
            }
        }
        self.types = types;
        Ok(())
    }

    /// Byte offset of `path` (members separated by dots, e.g. "used_blocks.count") in
    /// `struct_name`, which must be a whole byte (no bitfield). Both must have been asked for
    /// when opening.
    pub fn offset(&self, struct_name: &str, path: &str) -> anyhow::Result<u32> {
        let name = self.name(struct_name)?;
        let mut id = self
            .types
            .iter()
            .position(|t| t.kind == KIND_STRUCT && t.name_off == name && t.vlen > 0)
            .ok_or_else(|| anyhow!("this kernel's BTF has no type {struct_name}"))?;
        let mut total = 0u32;
        for part in path.split('.') {
            let (member_type, bits) = self
                .member(id, self.name(part)?, 0)?
                .ok_or_else(|| anyhow!("this kernel's {struct_name} has no member {path}"))?;
            if bits % 8 != 0 {
                bail!("{struct_name}.{path} is a bitfield");
            }
            total += bits / 8;
            id = self.resolve(member_type);
        }
        Ok(total)
    }

    fn name(&self, s: &str) -> anyhow::Result<u32> {
        self.names
            .get(s)
            .copied()
            .ok_or_else(|| anyhow!("this kernel's BTF has no name {s}"))
    }

    /// The type under typedefs and qualifiers.
    fn resolve(&self, mut id: usize) -> usize {
        for _ in 0..32 {
            match self.types.get(id) {
                Some(t) if matches!(t.kind, KIND_TYPEDEF..=KIND_RESTRICT | KIND_TYPE_TAG) => {
                    id = t.data as usize
                }
                _ => break,
            }
        }
        id
    }

    /// (type, bit offset) of the member named `name` of struct or union `id`, looking into
    /// its anonymous struct and union members too (`mm_struct.arg_start` is in one).
    fn member(&self, id: usize, name: u32, depth: u32) -> anyhow::Result<Option<(usize, u32)>> {
        let Some(t) = self
            .types
            .get(id)
            .filter(|t| matches!(t.kind, KIND_STRUCT | KIND_UNION))
        else {
            return Ok(None);
        };
        let mut raw = vec![0u8; 12 * t.vlen as usize];
        self.file
            .read_exact_at(&mut raw, u64::from(t.data))
            .with_context(|| format!("reading the members of a type in {}", self.path))?;
        for m in raw.as_chunks::<12>().0 {
            let word = |o: usize| le32(m, o);
            let (member_name, member_type, offset) = (word(0), word(4) as usize, word(8));
            let bits = if t.kind_flag {
                offset & 0x00ff_ffff
            } else {
                offset
            };
            if member_name == name {
                return Ok(Some((member_type, bits)));
            }
            if member_name == 0 && depth < 8 {
                let inner = self.resolve(member_type);
                if let Some((ty, b)) = self.member(inner, name, depth + 1)? {
                    return Ok(Some((ty, bits + b)));
                }
            }
        }
        Ok(None)
    }
}

/// The little-endian u32 at `at` of `bytes` (callers keep `at + 4` within them).
fn le32(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Offsets in the string section (at `start`, `len` bytes) of each of `names` that is there
/// as a whole string: one pass over its strings (NUL-terminated, found with memchr), read a
/// megabyte at a time, that ends once every name is found.
fn find_strings(
    file: &File,
    start: u64,
    len: u64,
    names: &[&str],
) -> anyhow::Result<HashMap<String, u32>> {
    const PIECE: usize = 1 << 20;
    // The empty string (offset 0, also the name of anonymous members) is no name.
    let wanted: HashSet<&[u8]> = names
        .iter()
        .map(|n| n.as_bytes())
        .filter(|n| !n.is_empty())
        .collect();
    let mut found: HashMap<String, u32> = HashMap::new();
    let mut buf = vec![0u8; PIECE];
    // Offset in the section of the piece read, always the start of a string.
    let mut at = 0u64;
    while at < len && found.len() < wanted.len() {
        let n = ((len - at) as usize).min(PIECE);
        file.read_exact_at(&mut buf[..n], start + at)?;
        let piece = &buf[..n];
        let mut from = 0;
        while let Some(end) = memchr::memchr(0, &piece[from..]) {
            let string = &piece[from..from + end];
            if wanted.contains(string) {
                let offset = u32::try_from(at + from as u64)?;
                found
                    .entry(String::from_utf8_lossy(string).into_owned())
                    .or_insert(offset);
            }
            from += end + 1;
        }
        if at + n as u64 == len {
            break; // an unterminated last string is no name
        }
        if from == 0 {
            bail!("a string of over {PIECE} bytes in the BTF string section");
        }
        // The next piece starts at the string this one cut (if any).
        at += from as u64;
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_of_the_running_kernel() {
        let k = KernelTypes::running(&[
            ("shmem_sb_info", "max_blocks"),
            ("shmem_sb_info", "used_blocks.count"),
            ("task_struct", "mm"),
            ("mm_struct", "arg_start"),
            ("task_struct", "no_such_member"),
        ])
        .unwrap();
        // Members at the start of their struct on every kernel since 4.x.
        assert_eq!(k.offset("shmem_sb_info", "max_blocks").unwrap(), 0);
        assert!(k.offset("task_struct", "mm").unwrap() > 0);
        // Nested path through an embedded struct.
        assert!(k.offset("shmem_sb_info", "used_blocks.count").unwrap() >= 8);
        // Inside an anonymous struct.
        assert!(k.offset("mm_struct", "arg_start").unwrap() > 0);
        let e = k.offset("task_struct", "no_such_member").unwrap_err();
        assert!(e.to_string().contains("no_such_member"), "{e}");
        assert!(k.offset("no_such_struct", "x").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("btf");
        let wanted = [("task_struct", "mm")];
        std::fs::write(&p, b"\x9f\xeb\x01\x00garbage").unwrap();
        assert!(KernelTypes::open_for(&p, &wanted).is_err());
        // A header whose sections point past the end.
        let mut h = vec![0x9f, 0xeb, 1, 0];
        for v in [24u32, 0, 1000, 1000, 1000] {
            h.extend(v.to_le_bytes());
        }
        std::fs::write(&p, &h).unwrap();
        assert!(KernelTypes::open_for(&p, &wanted).is_err());
        assert!(KernelTypes::open_for(&dir.path().join("missing"), &wanted).is_err());
    }
}
