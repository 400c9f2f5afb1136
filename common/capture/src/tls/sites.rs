//! Where in a libssl the TLS probes go, chosen for what a hit costs.
//!
//! A uprobe hit costs one trap when the kernel can emulate the probed instruction (push, nop,
//! relative jumps and calls) and a trap plus a single step out of line when it cannot.
//! Measured on this project's VMs (Linux 6.18, a tight loop calling a probed function): 0.8 µs
//! per hit on `push %r13`, 10 µs on `sub $0x18,%rsp` or `endbr64`. OpenSSL's SSL_read and
//! SSL_read_ex begin with `sub` and both call one local function,
//! `ssl_read_internal(ssl, buf, num, size_t *readbytes)`, which begins with `push`; SSL_write,
//! SSL_write_ex and `ssl_write_internal` likewise. So the read and write probes go on those
//! internal functions (one hook serves both wrappers, with SSL_read_ex's arguments) when both
//! wrappers' first direct call lands on the same local function; else on the exported
//! functions themselves. A leading `endbr64` (CET builds) is stepped over: the arguments and
//! the return address are where they were at the entry, one instruction later.
//!
//! Decoding machine code by hand is error-prone; iced-x86 (decoder only) does it.

use iced_x86::{Code, Decoder, DecoderOptions};
use object::{Architecture, Object as _};
use pgbpf_common::elf::ElfFile;

/// A probe to attach: the entry program, where, and what it is (for `-v`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Site {
    pub prog: &'static str,
    pub vaddr: u64,
    pub offset: u64,
    pub what: String,
}

/// One direction of TLS I/O: its exported wrappers and the programs for each.
struct Direction {
    /// The wrapper with the C int count (`SSL_read`) and its program.
    plain: (&'static str, &'static str),
    /// The wrapper with a size_t count pointer (`SSL_read_ex`) and its program, which also
    /// serves the internal function (same arguments).
    ex: (&'static str, &'static str),
    /// The internal function's name in OpenSSL's sources, for messages.
    internal: &'static str,
}

const DIRECTIONS: [Direction; 2] = [
    Direction {
        plain: ("SSL_read", "ssl_read"),
        ex: ("SSL_read_ex", "ssl_read_ex"),
        internal: "ssl_read_internal",
    },
    Direction {
        plain: ("SSL_write", "ssl_write"),
        ex: ("SSL_write_ex", "ssl_write_ex"),
        internal: "ssl_write_internal",
    },
];

/// The program of the handshake functions.
pub const HANDSHAKE_PROG: &str = "ssl_handshake";

/// The handshake's socket I/O is only marked TLS (never copied): SSL_accept and SSL_connect
/// may do it without SSL_do_handshake. Once per connection: cost does not matter here.
const HANDSHAKE: [&str; 3] = ["SSL_do_handshake", "SSL_accept", "SSL_connect"];

/// The functions probed when a libssl has none of them, for the error message.
pub const FUNCTIONS: [&str; 7] = [
    "SSL_read",
    "SSL_read_ex",
    "SSL_write",
    "SSL_write_ex",
    "SSL_do_handshake",
    "SSL_accept",
    "SSL_connect",
];

/// Bytes of a function decoded when its symbol has no size.
const UNSIZED_FUNCTION_BYTES: u64 = 256;

/// The probes for `lib`: reads and writes on their internal functions where they can be
/// found, else on the exported ones; the handshake functions.
pub fn plan(lib: &ElfFile) -> anyhow::Result<Vec<Site>> {
    let x86_64 = lib.parse()?.architecture() == Architecture::X86_64;
    let mut sites = vec![];
    for dir in &DIRECTIONS {
        let plain = lib.symbol_range(dir.plain.0)?;
        let ex = lib.symbol_range(dir.ex.0)?;
        let internal = match (plain, ex) {
            (Some(p), Some(e)) if x86_64 => shared_internal_call(lib, p, e),
            _ => None,
        };
        if let Some(at) = internal {
            sites.push(site(
                lib,
                dir.ex.1,
                at,
                x86_64,
                format!(
                    "{} (called by {} and {})",
                    dir.internal, dir.plain.0, dir.ex.0
                ),
            )?);
            continue;
        }
        for ((function, prog), range) in [(dir.plain, plain), (dir.ex, ex)] {
            if let Some((at, _)) = range {
                sites.push(site(lib, prog, at, x86_64, function.to_string())?);
            }
        }
    }
    for function in HANDSHAKE {
        if let Some(at) = lib.symbol(function)? {
            sites.push(site(lib, HANDSHAKE_PROG, at, x86_64, function.to_string())?);
        }
    }
    Ok(sites)
}

fn site(
    lib: &ElfFile,
    prog: &'static str,
    vaddr: u64,
    x86_64: bool,
    what: String,
) -> anyhow::Result<Site> {
    let skip = if x86_64 && lib.bytes_at(vaddr, 4) == Some(&ENDBR64[..]) {
        ENDBR64.len() as u64
    } else {
        0
    };
    Ok(Site {
        prog,
        vaddr: vaddr + skip,
        offset: lib.vaddr_to_offset(vaddr + skip)?,
        what,
    })
}

const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// The local function both wrappers (address, size) call first, when they agree on one that
/// is not a PLT stub (an exported function called through the PLT is another library call).
fn shared_internal_call(lib: &ElfFile, a: (u64, u64), b: (u64, u64)) -> Option<u64> {
    let first = first_direct_call(lib, a)?;
    if first_direct_call(lib, b)? != first {
        return None;
    }
    let section = lib.section_name_at(first)?;
    (section == ".text").then_some(first)
}

/// The target of the first `call rel32` in the function at (address, size).
fn first_direct_call(lib: &ElfFile, (vaddr, size): (u64, u64)) -> Option<u64> {
    let len = if size == 0 {
        UNSIZED_FUNCTION_BYTES
    } else {
        size
    };
    let code = lib.bytes_at(vaddr, len)?;
    first_call_in(code, vaddr)
}

/// Pure: the target of the first `call rel32` in `code` (at address `ip`), stopping at the
/// first undecodable instruction.
fn first_call_in(code: &[u8], ip: u64) -> Option<u64> {
    let decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    for insn in decoder {
        if insn.is_invalid() {
            return None;
        }
        if insn.code() == Code::Call_rel32_64 {
            return Some(insn.near_branch_target());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_relative_call_is_found() {
        // sub $0x18,%rsp; mov %rsp,%rcx; call +0x10 (from the end of the call at 0x100c)
        let code = [
            0x48, 0x83, 0xec, 0x18, 0x48, 0x89, 0xe1, 0xe8, 0x10, 0x00, 0x00, 0x00, 0xc3,
        ];
        assert_eq!(first_call_in(&code, 0x1000), Some(0x1000 + 12 + 0x10));
        // an indirect call is not one
        assert_eq!(first_call_in(&[0xff, 0xd0, 0xc3], 0x1000), None);
        // a cut instruction stops the search
        assert_eq!(first_call_in(&[0xe8, 0x10], 0x1000), None);
    }

    /// Debian's own libssl (installed with PostgreSQL): the internal functions are found and
    /// begin with an instruction the kernel emulates (push).
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn system_libssl_probes_its_internal_functions() {
        let lib = ElfFile::open(std::path::Path::new(
            "/usr/lib/x86_64-linux-gnu/libssl.so.3",
        ))
        .unwrap();
        let sites = plan(&lib).unwrap();
        for (prog, internal) in [
            ("ssl_read_ex", "ssl_read_internal"),
            ("ssl_write_ex", "ssl_write_internal"),
        ] {
            let found: Vec<_> = sites.iter().filter(|s| s.prog == prog).collect();
            assert_eq!(found.len(), 1, "{sites:?}");
            assert!(found[0].what.starts_with(internal), "{sites:?}");
            let first = lib.bytes_at(found[0].vaddr, 2).unwrap();
            let push = (0x50..=0x57).contains(&first[0])
                || (first[0] == 0x41 && (0x50..=0x57).contains(&first[1]));
            assert!(push, "{internal} begins with {first:02x?}");
        }
        assert!(!sites.iter().any(|s| s.prog == "ssl_read"), "{sites:?}");
        assert!(sites.iter().any(|s| s.prog == "ssl_handshake"));
    }
}
