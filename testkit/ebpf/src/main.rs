//! Kernel programs that exercise the common loader (tests/loader.rs): each counts what it saw
//! for the target, so the test can compare with what it did.
#![no_std]
#![no_main]

use aya_ebpf::{
    macros::{map, perf_event, tracepoint, uprobe},
    maps::Array,
    programs::{PerfEventContext, ProbeContext, TracePointContext},
};
use pgbpf_common_ebpf::{atomic_add, target::current_is_target};
use pgbpf_selftest_ebpf::{COUNT, CPU_SAMPLES, GETPID, MARKER};

#[map]
static COUNTS: Array<u64> = Array::with_max_entries(COUNT, 0);

#[inline(always)]
fn count(index: u32) {
    if let Some(c) = COUNTS.get_ptr_mut(index) {
        // SAFETY: a map value; shared by CPUs, hence the atomic add.
        unsafe { atomic_add(c, 1) };
    }
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
