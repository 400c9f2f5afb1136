//! A PostgreSQL process's global variables read from its memory (/proc/PID/mem at the
//! symbol's address plus the binary's load bias): settings no probe carries, such as
//! NBuffers, the shared buffers working_set compares the working set with.

use std::{fs::File, os::unix::fs::FileExt as _, os::unix::fs::MetadataExt as _, path::Path};

use anyhow::Context as _;

use crate::{elf::Symbols, procs, query_string::load_bias};

/// The `int` variable `name` of process `pid`.
pub fn read_i32(pid: u32, name: &str) -> anyhow::Result<i32> {
    let exe = format!("/proc/{pid}/exe");
    let ino = std::fs::metadata(&exe)
        .with_context(|| format!("process {pid}"))?
        .ino();
    let symbols = Symbols::open(Path::new(&exe), Path::new(&format!("/proc/{pid}/root")))?;
    let vaddr = symbols.require(name)?;
    let first = symbols
        .binary
        .segments()?
        .iter()
        .map(|s| s.vaddr)
        .min()
        .unwrap_or(0);
    let maps = procs::memory_maps(pid, false)
        .with_context(|| format!("reading the memory maps of process {pid}"))?;
    let bias = load_bias(&maps, ino, first)
        .with_context(|| format!("process {pid} does not map its executable"))?;
    let mut buf = [0u8; 4];
    File::open(format!("/proc/{pid}/mem"))
        .and_then(|f| f.read_exact_at(&mut buf, bias + vaddr))
        .with_context(|| format!("reading {name} in process {pid}"))?;
    Ok(i32::from_ne_bytes(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_gone_or_without_the_symbol_is_an_error() {
        assert!(read_i32(u32::MAX - 1, "NBuffers").is_err());
        let e = read_i32(std::process::id(), "NBuffers").unwrap_err();
        assert!(format!("{e:#}").contains("NBuffers"), "{e:#}");
    }
}
