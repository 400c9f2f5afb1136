//! Offsets of kernel struct members (`task_struct.mm`, `file.f_inode`, ...) read from the
//! running kernel's BTF, for kernel programs that follow pointers with bpf_probe_read_kernel.
//!
//! aya-ebpf has no CO-RE relocations yet, so a program that must walk kernel structures gets
//! their layout from userspace as globals. Parsing /sys/kernel/btf/vmlinux takes ~100 ms.

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use btfparse::{Offset, Readable, TypeInformation};

/// The kernel's own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// BTF bytes held in memory (btfparse reads through the `Readable` trait).
struct Bytes(Vec<u8>);

impl Readable for Bytes {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        match start
            .checked_add(buffer.len())
            .and_then(|end| self.0.get(start..end))
        {
            Some(b) => {
                buffer.copy_from_slice(b);
                Ok(())
            }
            None => Err(btfparse::Error::new(
                btfparse::ErrorKind::EOF,
                "read past the end of the BTF data",
            )),
        }
    }
}

/// A parsed BTF file, asked for member offsets.
pub struct KernelTypes {
    types: TypeInformation,
}

impl KernelTypes {
    /// The running kernel's types.
    pub fn running() -> anyhow::Result<KernelTypes> {
        KernelTypes::open(Path::new(VMLINUX_BTF))
    }

    pub fn open(path: &Path) -> anyhow::Result<KernelTypes> {
        let bytes = std::fs::read(path).with_context(|| {
            format!(
                "cannot read {} (a kernel built with CONFIG_DEBUG_INFO_BTF is needed)",
                path.display()
            )
        })?;
        let types = TypeInformation::new(&Bytes(bytes))
            .map_err(|e| anyhow!("cannot parse the BTF of {}: {e:?}", path.display()))?;
        Ok(KernelTypes { types })
    }

    /// Byte offset of `path` (members separated by dots, e.g. "used_blocks.count") in
    /// `struct_name`, which must be a whole byte (no bitfield).
    pub fn offset(&self, struct_name: &str, path: &str) -> anyhow::Result<u32> {
        let id = self
            .types
            .id_of(struct_name)
            .ok_or_else(|| anyhow!("this kernel's BTF has no type {struct_name}"))?;
        match self.types.offset_of(id, path) {
            Ok((_, Offset::ByteOffset(n))) => Ok(n),
            Ok((_, other)) => bail!("{struct_name}.{path} is a bitfield ({other:?})"),
            Err(e) => bail!("this kernel's {struct_name} has no member {path} ({e:?})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_of_the_running_kernel() {
        let k = KernelTypes::running().unwrap();
        // Members at the start of their struct on every kernel since 4.x.
        assert_eq!(k.offset("shmem_sb_info", "max_blocks").unwrap(), 0);
        assert!(k.offset("task_struct", "mm").unwrap() > 0);
        // Nested path through an embedded struct.
        assert!(k.offset("shmem_sb_info", "used_blocks.count").unwrap() >= 8);
        let e = k.offset("task_struct", "no_such_member").unwrap_err();
        assert!(e.to_string().contains("no member no_such_member"), "{e}");
        assert!(k.offset("no_such_struct", "x").is_err());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("btf");
        std::fs::write(&p, b"\x9f\xeb\x01\x00garbage").unwrap();
        assert!(KernelTypes::open(&p).is_err());
        assert!(KernelTypes::open(&dir.path().join("missing")).is_err());
    }
}
