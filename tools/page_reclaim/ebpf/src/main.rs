//! page_reclaim's kernel programs: time memory-cgroup and direct reclaim episodes per process
//! from the vmscan tracepoints, count what they reclaimed, and note kswapd wakeups.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_ktime_get_ns},
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, PerCpuHashMap},
    programs::TracePointContext,
};
use page_reclaim_ebpf::{
    HIST_SLOTS, KIND_DIRECT, KIND_MEMCG, ReclaimKey, ReclaimStart, ReclaimStats, counter,
};
use pgbpf_common_ebpf::counters::bump;
use pgbpf_common_ebpf::{log2_slot, target::current_is_target};

// Every counter has a slot in the shared map.
const _: () = assert!(counter::COUNT <= pgbpf_common_ebpf::counters::SLOTS);

/// Offset of `nr_reclaimed` in the *_reclaim_end tracepoints, read from tracefs by the loader.
#[unsafe(no_mangle)]
static NR_RECLAIMED_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(8);

#[map]
static STARTS: HashMap<u64, ReclaimStart> = HashMap::with_max_entries(16384, 0);
#[map]
static STATS: PerCpuHashMap<ReclaimKey, ReclaimStats> = PerCpuHashMap::with_max_entries(8192, 0);
#[map]
static STALL_HIST: PerCpuArray<u64> = PerCpuArray::with_max_entries((2 * HIST_SLOTS) as u32, 0);

#[inline(always)]
fn start_key(ctx: &TracePointContext, kind: usize) -> u64 {
    ((ctx.pid() as u64) << 1) | kind as u64
}

#[inline(always)]
fn begin(ctx: &TracePointContext, kind: usize) -> u32 {
    if !current_is_target() {
        return 0;
    }
    // SAFETY: helper without arguments.
    let start = ReclaimStart {
        ts_ns: unsafe { bpf_ktime_get_ns() },
    };
    if STARTS.insert(&start_key(ctx, kind), &start, 0).is_err() {
        bump(counter::STARTS_MAP_FULL);
    }
    0
}

#[inline(always)]
fn end(ctx: &TracePointContext, kind: usize) -> u32 {
    let key = start_key(ctx, kind);
    // SAFETY: copied out before the entry is removed.
    let Some(start) = (unsafe { STARTS.get(&key) }).copied() else {
        if current_is_target() {
            bump(counter::END_WITHOUT_BEGIN);
        }
        return 0;
    };
    let _ = STARTS.remove(&key);
    // SAFETY: helper without arguments.
    let stall_ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(start.ts_ns);
    // SAFETY: the offset comes from the tracepoint's own format file.
    let pages: u64 = unsafe { ctx.read_at(NR_RECLAIMED_OFFSET.load() as usize) }.unwrap_or(0);
    // SAFETY: helper without arguments.
    let cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let stats_key = ReclaimKey {
        tgid: ctx.tgid(),
        _pad: 0,
        cgroup_id,
    };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    match STATS.get_ptr_mut(&stats_key) {
        Some(s) => {
            // SAFETY: this CPU's copy of the value; nothing else writes it meanwhile.
            let s = unsafe { &mut *s };
            s.pages[kind] += pages;
            s.episodes[kind] += 1;
            s.stall_ns[kind] += stall_ns;
            if stall_ns > s.max_stall_ns {
                s.max_stall_ns = stall_ns;
            }
            s.comm = comm;
        }
        None => {
            let mut s = ReclaimStats {
                comm,
                max_stall_ns: stall_ns,
                ..Default::default()
            };
            s.pages[kind] = pages;
            s.episodes[kind] = 1;
            s.stall_ns[kind] = stall_ns;
            if STATS.insert(&stats_key, &s, 0).is_err() {
                bump(counter::STATS_MAP_FULL);
            }
        }
    }
    let slot = (log2_slot(stall_ns / 1000) as usize).min(HIST_SLOTS - 1);
    if let Some(c) = STALL_HIST.get_ptr_mut((kind * HIST_SLOTS + slot) as u32) {
        // SAFETY: per-CPU slot.
        unsafe { *c += 1 };
    }
    0
}

#[tracepoint]
pub fn memcg_reclaim_begin(ctx: TracePointContext) -> u32 {
    begin(&ctx, KIND_MEMCG)
}

#[tracepoint]
pub fn memcg_reclaim_end(ctx: TracePointContext) -> u32 {
    end(&ctx, KIND_MEMCG)
}

#[tracepoint]
pub fn direct_reclaim_begin(ctx: TracePointContext) -> u32 {
    begin(&ctx, KIND_DIRECT)
}

#[tracepoint]
pub fn direct_reclaim_end(ctx: TracePointContext) -> u32 {
    end(&ctx, KIND_DIRECT)
}

#[tracepoint]
pub fn kswapd_wake(_ctx: TracePointContext) -> u32 {
    bump(counter::KSWAPD_WAKES);
    0
}

#[tracepoint]
pub fn wakeup_kswapd(_ctx: TracePointContext) -> u32 {
    if current_is_target() {
        bump(counter::KSWAPD_WAKEUPS_BY_TARGET);
    }
    0
}

pgbpf_common_ebpf::program_support!();
