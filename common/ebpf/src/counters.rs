//! The per-CPU counters every tool keeps of what it lost (ring buffer full, table full, ...):
//! one map, `COUNTERS`, whose slots each tool names in its `counter` module; userspace sums
//! them over CPUs (`pgbpf_common::loader::Loaded::counters`).

use aya_ebpf::{macros::map, maps::PerCpuArray};

/// Slots of [`COUNTERS`]: a tool's `counter::COUNT` must not exceed it.
pub const SLOTS: u32 = 32;

#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(SLOTS, 0);

/// Adds one to slot `index`.
#[inline(always)]
pub fn bump(index: u32) {
    add(index, 1);
}

/// Adds `v` to slot `index`.
#[inline(always)]
pub fn add(index: u32, v: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's own slot; nothing else writes it while the program runs.
        unsafe { *c += v };
    }
}
