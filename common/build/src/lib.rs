//! Shared `build.rs` logic: every tool embeds its eBPF object, built here by a nested
//! `cargo build` for bpfel-unknown-none with the pinned nightly.
//!
//! The eBPF side needs a nightly whose LLVM major equals bpf-linker's (22 on Debian 12);
//! nightlies from 2026-08-06 on use LLVM 23 and fail to link, so the nightly is pinned.
//!
//! Written here rather than with aya-build, which does the same but gives every tool, in
//! every profile (check, test, release), a target directory of its own under OUT_DIR: core
//! compiled for BPF some 40 times, 166 MB each, which filled a CI machine's disk. Here every
//! eBPF crate builds in one directory beside the workspace's (`target/ebpf`): core and the
//! shared crate once, then each tool's programs; the nested builds take turns on its lock.

use std::{
    io::BufReader,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, anyhow, bail};
use cargo_metadata::Message;
use object::build::elf::SectionData;

/// The nightly used for the kernel side unless `PGBPF_EBPF_TOOLCHAIN` says otherwise.
pub const EBPF_NIGHTLY: &str = "nightly-2026-08-01";

/// The eBPF target (this project runs on little-endian x86_64).
const TARGET: &str = "bpfel-unknown-none";

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
        .iter()
        .find(|p| p.name.as_str() == package)
        .ok_or_else(|| anyhow!("eBPF package {package} is not in the workspace"))?;
    let root_dir = ebpf_package
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf_package.manifest_path))?;
    println!("cargo:rerun-if-changed={root_dir}");
    // Its path dependencies (common/ebpf) must be watched too, or a change there leaves a
    // stale object embedded.
    for dep in &ebpf_package.dependencies {
        if let Some(path) = &dep.path {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let toolchain = std::env::var("PGBPF_EBPF_TOOLCHAIN").unwrap_or_else(|_| EBPF_NIGHTLY.into());
    let target_dir = metadata.target_directory.as_std_path().join("ebpf");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR is not set")?);
    let arch =
        std::env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH is not set")?;
    for (name, object) in cargo_build(package, &toolchain, &arch, &target_dir)? {
        let embedded = out_dir.join(&name);
        std::fs::copy(&object, &embedded)
            .with_context(|| format!("copying {} to {}", object.display(), embedded.display()))?;
        strip_dwarf(&embedded)?;
    }
    Ok(())
}

/// Runs `cargo build` of `package`'s binaries for BPF in `target_dir`; returns each binary's
/// name and file. The compiler's messages become build-script warnings.
fn cargo_build(
    package: &str,
    toolchain: &str,
    arch: &str,
    target_dir: &Path,
) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut cmd = match which::which("rustup") {
        Ok(rustup) => {
            let mut c = Command::new(rustup);
            c.args(["run", toolchain, "cargo"]);
            c
        }
        Err(_) => {
            println!(
                "cargo:warning=rustup not found: the eBPF side is built with the cargo on \
                 PATH, not {toolchain}"
            );
            Command::new("cargo")
        }
    };
    // --locked: the workspace's lock file already holds the eBPF crates (they are members);
    // the nested build must not rewrite it under the outer one.
    cmd.args([
        "build",
        "--locked",
        "--package",
        package,
        "--bins",
        "--release",
    ])
    .args([
        "--message-format=json",
        "--target",
        TARGET,
        "-Z",
        "build-std=core",
    ])
    .arg("--target-dir")
    .arg(target_dir)
    // The common crate's architecture-dependent parts (registers, syscall numbers) are
    // those of the machine the programs will run on; the DWARF becomes BTF.
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
    )
    // The outer build's compiler is the host toolchain's.
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    // cargo's own lines (progress, waits for locks, its errors): shown only if it fails.
    let stderr = child.stderr.take().context("no stderr pipe")?;
    let progress = std::thread::spawn(move || {
        use std::io::BufRead as _;
        BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let mut binaries = vec![];
    for message in Message::parse_stream(BufReader::new(stdout)) {
        match message.context("cargo's JSON messages")? {
            Message::CompilerArtifact(a) => {
                if let Some(exe) = a.executable {
                    binaries.push((a.target.name.to_string(), exe.into_std_path_buf()));
                }
            }
            Message::CompilerMessage(m) => {
                for line in m.message.rendered.unwrap_or_default().lines() {
                    println!("cargo:warning={line}");
                }
            }
            Message::TextLine(line) => println!("cargo:warning={line}"),
            _ => {}
        }
    }
    let status = child
        .wait()
        .with_context(|| format!("waiting for {cmd:?}"))?;
    let progress = progress.join().unwrap_or_default();
    if !status.success() {
        for line in progress {
            println!("cargo:warning={line}");
        }
        bail!("{cmd:?} failed: {status}");
    }
    Ok(binaries)
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
