//! Shared `build.rs` logic: every tool embeds its eBPF object, built here with aya-build.
//!
//! The eBPF side needs a nightly whose LLVM major equals bpf-linker's (22 on Debian 12);
//! nightlies from 2026-08-06 on use LLVM 23 and fail to link, so the nightly is pinned.

use anyhow::{Context as _, anyhow};

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
    aya_build::build_ebpf([pkg], aya_build::Toolchain::Custom(toolchain))
}
