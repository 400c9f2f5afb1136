//! USDT (SystemTap SDT) probes: the `.note.stapsdt` notes of a binary, their locations as file
//! offsets, their semaphores, and their argument specs (`8@%rbx`, `-4@-144(%rbp)`,
//! `8@16(%rax,%rdx,8)`, `-4@$1`) decoded into something a BPF program can evaluate.

use std::path::Path;

use anyhow::{Context as _, bail};

use crate::elf::ElfFile;

/// One probe site (a probe name may have several).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsdtProbe {
    pub provider: String,
    pub name: String,
    /// Virtual address of the site, corrected for prelink via `.stapsdt.base`.
    pub address: u64,
    /// File offset of the site (what a uprobe is attached to).
    pub offset: u64,
    /// File offset of the semaphore (the uprobe's `ref_ctr_offset`), if the probe has one.
    pub semaphore_offset: Option<u64>,
    pub args: Vec<UsdtArg>,
}

/// Where an argument lives when the probe fires.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ArgLocation {
    /// A constant.
    Immediate(i64),
    /// A register's value (offset into x86-64 `struct pt_regs`).
    Register { reg: u16 },
    /// Memory at `base + index * scale + disp`.
    Memory {
        base: u16,
        disp: i64,
        index: Option<(u16, u8)>,
    },
    /// A global variable (`NBuffers(%rip)`, `40+CheckpointStats(%rip)`): memory at this
    /// virtual address plus the process's load bias.
    Global { vaddr: u64 },
    /// A spec this reader cannot evaluate; the probe stays usable, this argument does not.
    Unsupported,
}

/// One argument: its size in bytes, signedness and location.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsdtArg {
    pub size: u8,
    pub signed: bool,
    pub location: ArgLocation,
}

/// The x86-64 kernel's `struct pt_regs`, as far as USDT arguments reach: its layout is that
/// of ptrace's `user_regs_struct` up to `ss`, so libc's definition gives the offsets by name.
#[cfg(target_arch = "x86_64")]
type PtRegs = libc::user_regs_struct;

/// The argument specs name x86-64 registers: elsewhere none resolves (the probe's other
/// arguments stay usable).
#[cfg(not(target_arch = "x86_64"))]
pub fn pt_regs_offset(_reg: &str) -> Option<u16> {
    None
}

/// x86-64 `struct pt_regs` offsets by register name (any width: rax, eax, ax, al).
#[cfg(target_arch = "x86_64")]
pub fn pt_regs_offset(reg: &str) -> Option<u16> {
    use std::mem::offset_of;
    let r = reg.trim_start_matches('%');
    let offset = match r {
        "rax" | "eax" | "ax" | "al" | "ah" => offset_of!(PtRegs, rax),
        "rbx" | "ebx" | "bx" | "bl" | "bh" => offset_of!(PtRegs, rbx),
        "rcx" | "ecx" | "cx" | "cl" | "ch" => offset_of!(PtRegs, rcx),
        "rdx" | "edx" | "dx" | "dl" | "dh" => offset_of!(PtRegs, rdx),
        "rsi" | "esi" | "si" | "sil" => offset_of!(PtRegs, rsi),
        "rdi" | "edi" | "di" | "dil" => offset_of!(PtRegs, rdi),
        "rbp" | "ebp" | "bp" | "bpl" => offset_of!(PtRegs, rbp),
        "rsp" | "esp" | "sp" | "spl" => offset_of!(PtRegs, rsp),
        "rip" => offset_of!(PtRegs, rip),
        other => {
            // r8..r15 with optional d/w/b suffix
            let n = other.strip_prefix('r')?.trim_end_matches(['d', 'w', 'b']);
            match n.parse::<u8>().ok()? {
                8 => offset_of!(PtRegs, r8),
                9 => offset_of!(PtRegs, r9),
                10 => offset_of!(PtRegs, r10),
                11 => offset_of!(PtRegs, r11),
                12 => offset_of!(PtRegs, r12),
                13 => offset_of!(PtRegs, r13),
                14 => offset_of!(PtRegs, r14),
                15 => offset_of!(PtRegs, r15),
                _ => return None,
            }
        }
    };
    u16::try_from(offset).ok()
}

fn parse_int(s: &str) -> Option<i64> {
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let v = match digits.strip_prefix("0x") {
        Some(hex) => i64::from_str_radix(hex, 16).ok()?,
        None => digits.parse().ok()?,
    };
    Some(if neg { -v } else { v })
}

/// Parses one argument spec such as `-4@-144(%rbp)`; `symbol` resolves names used in
/// RIP-relative specs to virtual addresses.
pub fn parse_arg(spec: &str, symbol: &dyn Fn(&str) -> Option<u64>) -> anyhow::Result<UsdtArg> {
    let bad = || anyhow::anyhow!("unsupported USDT argument spec {spec:?}");
    let (size, loc) = spec.split_once('@').ok_or_else(bad)?;
    let size: i8 = size.parse().map_err(|_| bad())?;
    if ![1, 2, 4, 8].contains(&size.unsigned_abs()) {
        return Err(bad());
    }
    let location = if let Some(imm) = loc.strip_prefix('$') {
        ArgLocation::Immediate(parse_int(imm).ok_or_else(bad)?)
    } else if loc.starts_with('%') {
        ArgLocation::Register {
            reg: pt_regs_offset(loc).ok_or_else(bad)?,
        }
    } else if let Some(sym) = loc.strip_suffix("(%rip)") {
        // "SYM" or "N+SYM" (the assembler's spelling of SYM+N)
        let (disp, name) = match sym.split_once('+') {
            Some((n, name)) if parse_int(n).is_some() => (parse_int(n).unwrap_or(0), name),
            _ => (0, sym),
        };
        match symbol(name) {
            Some(vaddr) => ArgLocation::Global {
                vaddr: vaddr.wrapping_add_signed(disp),
            },
            None => ArgLocation::Unsupported,
        }
    } else if let Some(open) = loc.find('(') {
        let disp = if open == 0 {
            0
        } else {
            parse_int(&loc[..open]).ok_or_else(bad)?
        };
        let inner = loc[open + 1..].strip_suffix(')').ok_or_else(bad)?;
        let parts: Vec<&str> = inner.split(',').map(str::trim).collect();
        let base = pt_regs_offset(parts[0]).ok_or_else(bad)?;
        let index = match parts.len() {
            1 => None,
            3 => {
                let idx = pt_regs_offset(parts[1]).ok_or_else(bad)?;
                let scale: u8 = parts[2].parse().map_err(|_| bad())?;
                if ![1, 2, 4, 8].contains(&scale) {
                    return Err(bad());
                }
                Some((idx, scale))
            }
            _ => return Err(bad()),
        };
        ArgLocation::Memory { base, disp, index }
    } else {
        return Err(bad());
    };
    Ok(UsdtArg {
        size: size.unsigned_abs(),
        signed: size < 0,
        location,
    })
}

/// Parses the raw `.note.stapsdt` section. `base_fix` corrects addresses when the binary was
/// prelinked: the actual `.stapsdt.base` address minus the one recorded in each note.
pub fn parse_notes(section: &[u8], stapsdt_base: Option<u64>) -> anyhow::Result<Vec<RawNote>> {
    let mut out = vec![];
    let mut pos = 0usize;
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let quad = |b: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
    };
    let align4 = |n: usize| n.checked_add(3).map(|v| v & !3);
    while pos + 12 <= section.len() {
        let (Some(namesz), Some(descsz), Some(ntype)) = (
            word(section, pos),
            word(section, pos + 4),
            word(section, pos + 8),
        ) else {
            break;
        };
        let name_at = pos + 12;
        let desc_at = align4(name_at + namesz as usize).context("note too large")?;
        let next = align4(desc_at + descsz as usize).context("note too large")?;
        if next > section.len() {
            bail!("truncated .note.stapsdt note at offset {pos}");
        }
        let name = &section[name_at..name_at + namesz as usize];
        if ntype == 3 && name == b"stapsdt\0" {
            let desc = &section[desc_at..desc_at + descsz as usize];
            let (Some(pc), Some(base), Some(sema)) = (quad(desc, 0), quad(desc, 8), quad(desc, 16))
            else {
                bail!("short stapsdt note at offset {pos}");
            };
            let mut strings = desc.get(24..).unwrap_or(&[]).split(|&b| b == 0);
            let mut text = || {
                strings
                    .next()
                    .map(|s| String::from_utf8_lossy(s).into_owned())
            };
            let (provider, name, args) = (
                text().unwrap_or_default(),
                text().unwrap_or_default(),
                text().unwrap_or_default(),
            );
            let fix = stapsdt_base.map_or(0, |actual| actual.wrapping_sub(base));
            out.push(RawNote {
                provider,
                name,
                pc: pc.wrapping_add(fix),
                semaphore: (sema != 0).then(|| sema.wrapping_add(fix)),
                args,
            });
        }
        pos = next;
    }
    Ok(out)
}

/// A note as written in the binary (addresses are virtual).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawNote {
    pub provider: String,
    pub name: String,
    pub pc: u64,
    pub semaphore: Option<u64>,
    pub args: String,
}

/// Every site of the probes `wanted` (name, the id the kernel program dispatches on) in
/// `binary`, with its id; an error naming the missing probes when one has no site (a server
/// built without `--enable-dtrace`).
pub fn sites(
    binary: &Path,
    wanted: &[(&str, u32)],
    tool: &str,
) -> anyhow::Result<Vec<(UsdtProbe, u32)>> {
    let all = probes(binary)?;
    let sites: Vec<(UsdtProbe, u32)> = all
        .iter()
        .filter_map(|p| {
            let (_, id) = wanted.iter().find(|(name, _)| p.name == *name)?;
            Some((p.clone(), *id))
        })
        .collect();
    let missing: Vec<&str> = wanted
        .iter()
        .map(|(name, _)| *name)
        .filter(|name| !sites.iter().any(|(p, _)| p.name == *name))
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "{} has no USDT probes {} (searched its .note.stapsdt: {} probes); {tool} needs a \
             PostgreSQL built with --enable-dtrace, as Debian's and Ubuntu's packages are",
            binary.display(),
            missing.join(", "),
            all.len()
        );
    }
    Ok(sites)
}

/// Every USDT probe site of `binary`.
pub fn probes(binary: &Path) -> anyhow::Result<Vec<UsdtProbe>> {
    let elf = ElfFile::open(binary)?;
    let Some((_, notes)) = elf.section(".note.stapsdt")? else {
        return Ok(vec![]);
    };
    let symbol = |name: &str| elf.symbol(name).ok().flatten();
    let base = elf.section(".stapsdt.base")?.map(|(addr, _)| addr);
    let mut out = vec![];
    for n in parse_notes(&notes, base)? {
        let args = n
            .args
            .split_whitespace()
            .map(|spec| parse_arg(spec, &symbol))
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("probe {}:{}", n.provider, n.name))?;
        out.push(UsdtProbe {
            offset: elf.vaddr_to_offset(n.pc)?,
            semaphore_offset: n.semaphore.map(|s| elf.vaddr_to_offset(s)).transpose()?,
            provider: n.provider,
            name: n.name,
            address: n.pc,
            args,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn register_offsets_are_the_kernels_pt_regs() {
        // arch/x86/include/asm/ptrace.h: r15 first, rbx after rbp, rdi before orig_ax.
        let expect = [
            ("%r15", 0),
            ("%rbp", 32),
            ("%ebx", 40),
            ("%rax", 80),
            ("%rdi", 112),
        ];
        for (reg, off) in expect {
            assert_eq!(pt_regs_offset(reg), Some(off), "{reg}");
        }
        assert_eq!(
            (pt_regs_offset("%rip"), pt_regs_offset("%rsp")),
            (Some(128), Some(152))
        );
        assert_eq!(pt_regs_offset("%xmm0"), None);
    }

    fn no_symbols(_: &str) -> Option<u64> {
        None
    }

    fn parse(spec: &str) -> anyhow::Result<UsdtArg> {
        parse_arg(spec, &no_symbols)
    }

    #[test]
    fn rip_relative_globals() {
        let sym = |n: &str| (n == "CheckpointStats").then_some(0x1000);
        assert_eq!(
            parse_arg("-4@40+CheckpointStats(%rip)", &sym)
                .unwrap()
                .location,
            ArgLocation::Global { vaddr: 0x1028 }
        );
        assert_eq!(
            parse_arg("-4@CheckpointStats(%rip)", &sym)
                .unwrap()
                .location,
            ArgLocation::Global { vaddr: 0x1000 }
        );
        assert_eq!(
            parse_arg("-4@NBuffers(%rip)", &sym).unwrap().location,
            ArgLocation::Unsupported
        );
    }

    #[test]
    fn argument_specs() {
        assert_eq!(
            parse("8@%rbx").unwrap(),
            UsdtArg {
                size: 8,
                signed: false,
                location: ArgLocation::Register { reg: 40 }
            }
        );
        assert_eq!(
            parse("-4@-144(%rbp)").unwrap(),
            UsdtArg {
                size: 4,
                signed: true,
                location: ArgLocation::Memory {
                    base: 32,
                    disp: -144,
                    index: None
                }
            }
        );
        assert_eq!(
            parse("8@16(%rax,%rdx,8)").unwrap().location,
            ArgLocation::Memory {
                base: 80,
                disp: 16,
                index: Some((96, 8))
            }
        );
        assert_eq!(parse("-4@$1").unwrap().location, ArgLocation::Immediate(1));
        assert_eq!(
            parse("4@60(%rax)").unwrap().location,
            ArgLocation::Memory {
                base: 80,
                disp: 60,
                index: None
            }
        );
        assert_eq!(
            parse("8@(%r12)").unwrap().location,
            ArgLocation::Memory {
                base: 24,
                disp: 0,
                index: None
            }
        );
        assert_eq!(
            parse("4@%r9d").unwrap().location,
            ArgLocation::Register { reg: 64 }
        );
        assert_eq!(parse("1@%al").unwrap().size, 1);
        for bad in [
            "",
            "8",
            "8@",
            "3@%rax",
            "8@%xmm0",
            "8@16(%rax,%rdx,3)",
            "x@%rax",
            "8@(%rax",
            "8@$zz",
        ] {
            assert!(parse(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn truncated_or_garbage_notes_never_panic() {
        let probes = probes(
            &crate::postgres::installed_bin_dir()
                .unwrap()
                .join("postgres"),
        )
        .unwrap();
        assert!(!probes.is_empty());
        let elf = ElfFile::open(
            &crate::postgres::installed_bin_dir()
                .unwrap()
                .join("postgres"),
        )
        .unwrap();
        let (_, notes) = elf.section(".note.stapsdt").unwrap().unwrap();
        for cut in [0, 1, 11, 12, 13, 40, notes.len() / 2, notes.len() - 1] {
            let _ = parse_notes(&notes[..cut], None);
        }
        let mut seed = 0x1234_5678_u64;
        for _ in 0..200 {
            let junk: Vec<u8> = (0..256)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    (seed >> 56) as u8
                })
                .collect();
            let _ = parse_notes(&junk, Some(1));
        }
    }

    #[test]
    fn debian_postgres_probes_with_semaphores() {
        let bin = crate::postgres::installed_bin_dir()
            .unwrap()
            .join("postgres");
        let all = probes(&bin).unwrap();
        assert!(all.len() >= 70, "{} probe sites", all.len());
        assert!(all.iter().all(|p| p.provider == "postgresql"));
        assert!(
            all.iter().all(|p| p.semaphore_offset.is_some()),
            "Debian guards every probe"
        );
        let start: Vec<_> = all.iter().filter(|p| p.name == "query__start").collect();
        assert_eq!(start.len(), 1);
        assert_eq!(start[0].args.len(), 1);
        assert_eq!(start[0].args[0].size, 8);
        let done = all.iter().find(|p| p.name == "query__done").unwrap();
        assert!(matches!(
            done.args[0].location,
            ArgLocation::Memory { .. } | ArgLocation::Register { .. }
        ));
        // query__execute__start has two sites (PortalRun and PortalRunFetch).
        assert_eq!(
            all.iter()
                .filter(|p| p.name == "query__execute__start")
                .count(),
            2
        );
        // Cross-check with readelf, an independent reader of the same notes.
        let out = std::process::Command::new("readelf")
            .arg("-n")
            .arg(&bin)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            text.matches("stapsdt").count() - text.matches(".note.stapsdt").count(),
            all.len()
        );
        let loc = format!("Location: 0x{:016x}", start[0].address);
        assert!(text.contains(&loc), "{loc} not in readelf's output");
    }
}
