//! Kernel programs that exercise the common loader (tests/loader.rs): each counts what it saw
//! for the target, so the test can compare with what it did.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_probe_read_user_str_bytes,
    macros::{map, perf_event, tracepoint, uprobe},
    maps::Array,
    programs::{PerfEventContext, ProbeContext, TracePointContext},
};
use pgbpf_common_ebpf::{
    atomic_add,
    target::current_is_target,
    usdt::{usdt_arg, usdt_spec},
};
use pgbpf_selftest_ebpf::{
    COUNT, CPU_SAMPLES, GETPID, GUARDED_ARG0_SUM, GUARDED_FIRED, MARKER, PLAIN_ARG0_SUM,
    PLAIN_FIRED, PROBE_GUARDED,
};

#[map]
static COUNTS: Array<u64> = Array::with_max_entries(COUNT, 0);

/// The string argument 1 of the guarded probe, as last seen.
#[map]
static LABEL: Array<[u8; 16]> = Array::with_max_entries(1, 0);

#[inline(always)]
fn add(index: u32, v: u64) {
    if let Some(c) = COUNTS.get_ptr_mut(index) {
        // SAFETY: a map value; shared by CPUs, hence the atomic add.
        unsafe { atomic_add(c, v) };
    }
}

#[inline(always)]
fn count(index: u32) {
    add(index, 1)
}

#[uprobe]
pub fn usdt_probe(ctx: ProbeContext) -> u32 {
    if !current_is_target() {
        return 0;
    }
    let Some(spec) = usdt_spec(&ctx) else {
        return 0;
    };
    let arg0 = usdt_arg(&ctx, spec, 0).unwrap_or(-1) as u64;
    if spec.probe_id == PROBE_GUARDED {
        count(GUARDED_FIRED);
        add(GUARDED_ARG0_SUM, arg0);
        if let (Some(ptr), Some(label)) = (usdt_arg(&ctx, spec, 1), LABEL.get_ptr_mut(0)) {
            // SAFETY: a user string read into our own map value.
            let _ = unsafe { bpf_probe_read_user_str_bytes(ptr as *const u8, &mut *label) };
        }
    } else {
        count(PLAIN_FIRED);
        add(PLAIN_ARG0_SUM, arg0);
    }
    0
}

#[tracepoint]
pub fn getpid_enter(_ctx: TracePointContext) -> u32 {
    if current_is_target() {
        count(GETPID);
    }
    0
}

#[uprobe]
pub fn marker(_ctx: ProbeContext) -> u32 {
    if current_is_target() {
        count(MARKER);
    }
    0
}

#[perf_event]
pub fn cpu_sample(_ctx: PerfEventContext) -> u32 {
    if current_is_target() {
        count(CPU_SAMPLES);
    }
    0
}

/// Reads an arbitrary address: the verifier must refuse it (tests the error path).
#[tracepoint]
pub fn rejected(_ctx: TracePointContext) -> u32 {
    // SAFETY: not safe at all, on purpose; this program is never accepted.
    unsafe { core::ptr::read_volatile(0x1000 as *const u32) }
}

pgbpf_common_ebpf::program_support!();
