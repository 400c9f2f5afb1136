//! Shared `build.rs` logic: every tool embeds its eBPF object, built here with aya-build.
//!
//! The eBPF side needs a nightly whose LLVM major equals bpf-linker's (22 on Debian 12);
//! nightlies from 2026-08-06 on use LLVM 23 and fail to link, so the nightly is pinned.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow};
use object::build::elf::SectionData;

/// The nightly used for the kernel side unless `PGBPF_EBPF_TOOLCHAIN` says otherwise.
pub const EBPF_NIGHTLY: &str = "nightly-2026-08-01";

/// Builds the eBPF crate `package` (a workspace member) into `$OUT_DIR/<bin name>`.
pub fn build_ebpf(package: &str) -> anyhow::Result<()> {
    // Rebuild when bpf-linker changes (a new LLVM makes a different object).
    let linker = which::which("bpf-linker").context(
        "bpf-linker not found on PATH: run scripts/setup.sh (it installs bpf-linker 0.13 for LLVM 22)",
    )?;
    println!("cargo:rerun-if-changed={}", linker.display());
    println!("cargo:rerun-if-env-changed=PGBPF_EBPF_TOOLCHAIN");

    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf_package = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == package)
        .ok_or_else(|| anyhow!("eBPF package {package} is not in the workspace"))?;
    let root_dir = ebpf_package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf_package.manifest_path))?;
    // aya-build watches the eBPF crate's own directory; its path dependencies (common/ebpf)
    // must be watched too, or a change there leaves a stale object embedded.
    for dep in &ebpf_package.dependencies {
        if let Some(path) = &dep.path {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let toolchain = std::env::var("PGBPF_EBPF_TOOLCHAIN").unwrap_or_else(|_| EBPF_NIGHTLY.into());
    // aya-build wants a 'static toolchain name; build scripts are short-lived.
    let toolchain: &'static str = Box::leak(toolchain.into_boxed_str());
    let pkg = aya_build::Package {
        name: ebpf_package.name.as_str(),
        root_dir: root_dir.as_str(),
        ..Default::default()
    };
    aya_build::build_ebpf([pkg], aya_build::Toolchain::Custom(toolchain))?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR is not set")?);
    for bin in ebpf_package.targets.iter().filter(|t| t.is_bin()) {
        strip_dwarf(&out_dir.join(bin.name.as_str()))?;
    }
    Ok(())
}

/// Rewrites the eBPF object at `path` without its DWARF sections (and their relocations).
/// bpf-linker makes the BTF that the kernel and aya read from the DWARF and leaves the DWARF
/// in: about 80 % of the file, embedded in every tool's binary. bpf-linker has no option to
/// drop it; object's ELF builder rewrites the file with those sections deleted.
fn strip_dwarf(path: &Path) -> anyhow::Result<()> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut elf = object::build::elf::Builder::read(&*data)
        .with_context(|| format!("parsing {}", path.display()))?;
    let mut deleted = vec![];
    for section in elf.sections.iter_mut() {
        let name = section.name.as_slice();
        if name.starts_with(b".debug") || name.starts_with(b".rel.debug") {
            section.delete = true;
            deleted.push(section.id());
        }
    }
    // The section symbols of what is deleted go with it.
    for symbol in elf.symbols.iter_mut() {
        if symbol.section.is_some_and(|s| deleted.contains(&s)) {
            symbol.delete = true;
        }
    }
    // LLVM keeps section names in .strtab with the symbols' names; the builder writes them to
    // a .shstrtab of their own.
    if !elf
        .sections
        .iter()
        .any(|s| matches!(s.data, SectionData::SectionString))
    {
        let names = elf.sections.add();
        names.name = b".shstrtab"[..].into();
        names.sh_type = object::elf::SHT_STRTAB;
        names.data = SectionData::SectionString;
    }
    let mut out = vec![];
    elf.write(&mut out)
        .with_context(|| format!("rewriting {}", path.display()))?;
    std::fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}
