//! USDT argument access for uprobe programs attached by `pgbpf_common::loader::attach_usdt`.
//!
//! Each probe site is attached with a BPF cookie that indexes [`PGBPF_USDT_SPECS`], where the
//! loader stored how to find each argument at that site (register, memory, constant, global).
//! The types are shared with userspace (feature `user` adds `aya::Pod`).

#[cfg(target_arch = "bpf")]
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_attach_cookie, bpf_probe_read_kernel, bpf_probe_read_user},
    macros::map,
    maps::Array,
    programs::ProbeContext,
};

/// Most arguments a spec describes (SystemTap allows 12; PostgreSQL uses at most 8:
/// buffer__read__done).
pub const USDT_MAX_ARGS: usize = 8;
/// Probe sites one object can attach with distinct specs.
pub const USDT_MAX_SPECS: u32 = 256;

pub const ARG_NONE: u8 = 0;
pub const ARG_CONST: u8 = 1;
pub const ARG_REG: u8 = 2;
pub const ARG_REG_DEREF: u8 = 3;
pub const ARG_GLOBAL: u8 = 4;

/// How to read one argument.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsdtArgSpec {
    /// ARG_* kind.
    pub kind: u8,
    /// Size in bytes (1, 2, 4, 8).
    pub size: u8,
    pub signed: u8,
    pub _pad: u8,
    /// Offset of the register in `struct pt_regs` (base register for ARG_REG_DEREF).
    pub reg_off: u16,
    pub _pad2: u16,
    /// Constant (ARG_CONST), displacement (ARG_REG_DEREF) or virtual address (ARG_GLOBAL).
    pub value: i64,
}

/// Everything about one attached probe site.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsdtSpec {
    /// Virtual address of the site: `ip - site_vaddr` is the process's load bias.
    pub site_vaddr: u64,
    pub arg_count: u32,
    /// What the probe means to the tool (its own numbering, e.g. QUERY_START).
    pub probe_id: u32,
    pub args: [UsdtArgSpec; USDT_MAX_ARGS],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain data, every bit pattern valid.
    unsafe impl aya::Pod for super::UsdtSpec {}
    unsafe impl aya::Pod for super::UsdtArgSpec {}
}

/// Specs by cookie, filled by the loader before attaching.
#[cfg(target_arch = "bpf")]
#[map]
pub static PGBPF_USDT_SPECS: Array<UsdtSpec> = Array::with_max_entries(USDT_MAX_SPECS, 0);

/// The spec of the site that fired.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub fn usdt_spec(ctx: &ProbeContext) -> Option<&'static UsdtSpec> {
    // SAFETY: the helper reads the cookie of the link that ran this program.
    let cookie = unsafe { bpf_get_attach_cookie(ctx.as_ptr()) } as u32;
    PGBPF_USDT_SPECS.get(cookie)
}

#[cfg(target_arch = "bpf")]
#[inline(always)]
fn reg(ctx: &ProbeContext, off: u16) -> Option<u64> {
    // pt_regs cannot be read at a variable offset directly; the helper can.
    let at = (ctx.as_ptr() as *const u8).wrapping_add((off as usize) & 0xff) as *const u64;
    // SAFETY: reads 8 bytes inside the probe's pt_regs (offset masked below 256).
    unsafe { bpf_probe_read_kernel(at) }.ok()
}

/// Argument `n` (0-based) of the site that fired, sign- or zero-extended to 64 bits.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub fn usdt_arg(ctx: &ProbeContext, spec: &UsdtSpec, n: usize) -> Option<i64> {
    if n >= USDT_MAX_ARGS || n as u32 >= spec.arg_count {
        return None;
    }
    let a = &spec.args[n];
    let raw: u64 = match a.kind {
        ARG_CONST => a.value as u64,
        ARG_REG => reg(ctx, a.reg_off)?,
        ARG_REG_DEREF => {
            let base = reg(ctx, a.reg_off)?;
            let addr = base.wrapping_add(a.value as u64) as *const u64;
            // SAFETY: a user-space read the kernel checks; fails cleanly on a bad address.
            unsafe { bpf_probe_read_user(addr) }.ok()?
        }
        ARG_GLOBAL => {
            // SAFETY: reading the instruction pointer of the interrupted user context.
            let ip = unsafe { (*ctx.regs).rip };
            let addr =
                (a.value as u64).wrapping_add(ip.wrapping_sub(spec.site_vaddr)) as *const u64;
            // SAFETY: as above.
            unsafe { bpf_probe_read_user(addr) }.ok()?
        }
        _ => return None,
    };
    let shift = 64 - 8 * (a.size.clamp(1, 8) as u32);
    Some(if a.signed != 0 {
        ((raw << shift) as i64) >> shift
    } else {
        ((raw << shift) >> shift) as i64
    })
}

/// Arguments `first..first + N` of the site that fired, as 32-bit values (0 for one that
/// cannot be read). Where they are consecutive 4-byte fields in memory, the members of a
/// struct the probe passes one by one (buffer__read__done's RelFileNode), one read fetches
/// them all instead of one read each.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub fn usdt_args_u32<const N: usize>(
    ctx: &ProbeContext,
    spec: &UsdtSpec,
    first: usize,
) -> [u32; N] {
    if first + N <= USDT_MAX_ARGS && (first + N) as u32 <= spec.arg_count {
        let base = &spec.args[first];
        let mut contiguous = true;
        for i in 0..N {
            let a = &spec.args[first + i];
            contiguous &= a.kind == ARG_REG_DEREF
                && a.size == 4
                && a.reg_off == base.reg_off
                && a.value == base.value + 4 * i as i64;
        }
        if contiguous && let Some(at) = reg(ctx, base.reg_off) {
            let addr = at.wrapping_add(base.value as u64) as *const [u32; N];
            // SAFETY: a user-space read the kernel checks; fails cleanly on a bad address.
            if let Ok(v) = unsafe { bpf_probe_read_user(addr) } {
                return v;
            }
        }
    }
    let mut v = [0u32; N];
    for (i, x) in v.iter_mut().enumerate() {
        *x = usdt_arg(ctx, spec, first + i).unwrap_or(0) as u32;
    }
    v
}

/// The user stack pointer at the probe: a frame called from inside another sits below it.
#[cfg(target_arch = "bpf")]
#[inline(always)]
pub fn stack_pointer(ctx: &ProbeContext) -> u64 {
    // SAFETY: the probe's saved registers, valid while the program runs.
    let regs = unsafe { &*ctx.regs };
    #[cfg(bpf_target_arch = "aarch64")]
    return regs.sp;
    #[cfg(not(bpf_target_arch = "aarch64"))]
    return regs.rsp;
}
