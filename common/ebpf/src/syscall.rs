//! The records of the syscall tracepoints (`syscalls:sys_enter_*`, `syscalls:sys_exit_*`),
//! a stable ABI: the arguments and the result, loaded straight from the context (the verifier
//! allows reads of a tracepoint's record; a probe_read helper call costs more).

use core::mem::offset_of;

use aya_ebpf::{EbpfContext as _, programs::TracePointContext};

/// `sys_enter_*`'s record (see any of their format files).
#[repr(C)]
struct SysEnter {
    common: [u8; 8],
    syscall_nr: i32,
    _pad: u32,
    args: [u64; 6],
}

/// `sys_exit_*`'s record.
#[repr(C)]
struct SysExit {
    common: [u8; 8],
    syscall_nr: i32,
    _pad: u32,
    ret: i64,
}

#[inline(always)]
fn load<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: `offset` is inside the record the kernel passes (the layouts above).
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

/// Argument `n` (0 to 5) of a `sys_enter_*` tracepoint; 0 beyond.
#[inline(always)]
pub fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    if n >= 6 {
        return 0;
    }
    load(ctx, offset_of!(SysEnter, args) + 8 * n)
}

/// The result of a `sys_exit_*` tracepoint: a value, or a negative errno.
#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    load(ctx, offset_of!(SysExit, ret))
}
