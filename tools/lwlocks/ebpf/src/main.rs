//! lwlocks' kernel programs: PostgreSQL's USDT probes lwlock__wait__start / __done, which fire
//! only when a backend really sleeps on an LWLock (never on the fast path), carry the tranche's
//! name and the mode. A wait's start is kept per thread; its end is one ring buffer event with
//! the duration and the statement the process runs, read from its own `debug_query_string`.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_probe_read_user_str_bytes,
    },
    macros::{map, uprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::ProbeContext,
};
use lwlocks_ebpf::{HOLD_SLOTS, Held, HoldKey, HoldStats, TRANCHE_CAP, WaitEvent, counter, probe};
use pgbpf_common_ebpf::{
    atomic_add,
    counters::bump,
    log2_slot,
    query_string::read_statement,
    ring, stacks,
    target::current_is_target,
    usdt::{usdt_arg, usdt_spec},
};

// Every counter has a slot in the shared map.
const _: () = assert!(counter::COUNT <= pgbpf_common_ebpf::counters::SLOTS);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// A wait in progress: when it began, in which mode.
#[repr(C)]
#[derive(Clone, Copy)]
struct Waiting {
    start_ns: u64,
    mode: u32,
    _pad: u32,
}

/// Waits in progress by thread. A backend waits on one LWLock at a time (it sleeps), so one
/// slot per thread is exact; a thread killed mid-wait leaves its slot behind, which the LRU
/// lets go once the map is full (never a live wait's: those are the recent ones).
#[map]
static WAITING: LruHashMap<u32, Waiting> = LruHashMap::with_max_entries(16384, 0);

/// `--hold`: the LWLocks each traced thread holds, in the order it took them (an LRU: a
/// thread gone leaves its entry, let go once the map is full). One entry without --hold.
#[map]
static HELD: LruHashMap<u32, Held> = LruHashMap::with_max_entries(4096, 0);

/// `--hold`: hold times per tranche and mode, summed here; userspace reads them at each
/// report. One entry without --hold.
#[map]
static HOLDS: HashMap<HoldKey, HoldStats> = HashMap::with_max_entries(1024, 0);

/// Zeroed values to insert from (too big for the stack); never written but by their users.
#[map]
static EMPTY_HELD: PerCpuArray<Held> = PerCpuArray::with_max_entries(1, 0);
#[map]
static NEW_HOLD: PerCpuArray<HoldStats> = PerCpuArray::with_max_entries(1, 0);

/// Every probe: the site's probe id (its attachment's cookie) tells which it is.
#[uprobe]
pub fn lwlock_probe(ctx: ProbeContext) -> u32 {
    let Some(spec) = usdt_spec(&ctx) else {
        return 0;
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    match spec.probe_id {
        probe::WAIT_START => {
            if !current_is_target() {
                return 0;
            }
            let w = Waiting {
                // SAFETY: helper without arguments.
                start_ns: unsafe { bpf_ktime_get_ns() },
                mode: usdt_arg(&ctx, spec, 1).unwrap_or(-1) as u32,
                _pad: 0,
            };
            if WAITING.insert(&tid, &w, 0).is_err() {
                bump(counter::WAITING_FULL);
            }
        }
        probe::WAIT_DONE => {
            // SAFETY: plain lookup; the value is copied out.
            let Some(w) = (unsafe { WAITING.get(&tid) }).copied() else {
                if current_is_target() {
                    bump(counter::DONE_WITHOUT_START);
                }
                return 0;
            };
            let _ = WAITING.remove(&tid);
            let tranche = usdt_arg(&ctx, spec, 0).unwrap_or(0) as u64;
            send(&ctx, tranche, &w);
        }
        probe::ACQUIRED => {
            if !current_is_target() {
                return 0;
            }
            let name = usdt_arg(&ctx, spec, 0).unwrap_or(0) as u64;
            let mode = usdt_arg(&ctx, spec, 1).unwrap_or(-1) as u32;
            let Some(held) = held_by(tid) else {
                bump(counter::HOLDERS_FULL);
                return 0;
            };
            // SAFETY: helper without arguments.
            if !held.acquire(name, mode, unsafe { bpf_ktime_get_ns() }) {
                bump(counter::HELD_FULL);
            }
        }
        probe::RELEASE => {
            // Only traced threads have an entry: no target check needed.
            let Some(held) = HELD.get_ptr_mut(&tid) else {
                return 0;
            };
            // SAFETY: this thread's entry; only this thread's probes write it.
            let held = unsafe { &mut *held };
            let name = usdt_arg(&ctx, spec, 0).unwrap_or(0) as u64;
            // SAFETY: helper without arguments.
            match held.release(name, unsafe { bpf_ktime_get_ns() }) {
                Some((mode, ns)) => add_hold(name, mode, ns),
                None => bump(counter::RELEASE_UNMATCHED),
            }
        }
        _ => {}
    }
    0
}

/// The held locks of thread `tid`, made empty if it has none.
#[inline(always)]
fn held_by(tid: u32) -> Option<&'static mut Held> {
    if let Some(h) = HELD.get_ptr_mut(&tid) {
        // SAFETY: a map value lives as long as the program runs.
        return Some(unsafe { &mut *h });
    }
    let empty = EMPTY_HELD.get_ptr(0)?;
    // SAFETY: this CPU's zeroed slot, read by the helper.
    HELD.insert(&tid, unsafe { &*empty }, 0).ok()?;
    // SAFETY: as above.
    HELD.get_ptr_mut(&tid).map(|h| unsafe { &mut *h })
}

/// Adds one hold of `ns` to its tranche and mode.
#[inline(always)]
fn add_hold(name: u64, mode: u32, ns: u64) {
    let key = HoldKey {
        name,
        mode,
        _pad: 0,
    };
    let slot = (log2_slot(ns / 1000) as usize).min(HOLD_SLOTS - 1);
    if let Some(s) = HOLDS.get_ptr_mut(&key) {
        // SAFETY: a map value, updated atomically where other CPUs add too (the max may
        // miss a race's larger value).
        unsafe {
            atomic_add(&raw mut (*s).count, 1);
            atomic_add(&raw mut (*s).total_ns, ns);
            atomic_add(&raw mut (*s).log2_us[slot], 1);
            if ns > (*s).max_ns {
                (*s).max_ns = ns;
            }
            // The name could not be read at the first hold (its page not in memory then).
            if (*s).tranche[0] == 0 && name != 0 {
                let _ = bpf_probe_read_user_str_bytes(name as *const u8, &mut (*s).tranche);
            }
        }
        return;
    }
    let Some(new) = NEW_HOLD.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch value, used only while this program runs.
    let new = unsafe { &mut *new };
    new.count = 1;
    new.total_ns = ns;
    new.max_ns = ns;
    new.log2_us = [0; HOLD_SLOTS];
    new.log2_us[slot] = 1;
    new.tranche = [0; TRANCHE_CAP];
    if name != 0 {
        // SAFETY: reads a string of the current process; fails cleanly if unmapped.
        let _ = unsafe { bpf_probe_read_user_str_bytes(name as *const u8, &mut new.tranche) };
    }
    // Another CPU may have made it meanwhile: that first hold is then not counted.
    // -17: EEXIST, the other CPU's entry.
    if let Err(e) = HOLDS.insert(&key, new, aya_ebpf::bindings::BPF_NOEXIST as u64)
        && e != -17
    {
        bump(counter::HOLDS_FULL);
    }
}

/// Sends the ended wait with its tranche name and the process's statement.
#[inline(always)]
fn send(ctx: &ProbeContext, tranche: u64, w: &Waiting) {
    let Some(mut slot) = EVENTS.reserve::<WaitEvent>(0) else {
        bump(counter::RINGBUF_FULL);
        return;
    };
    // SAFETY: the reserved record, written field by field (too big for the stack).
    let e = unsafe { &mut *slot.as_mut_ptr() };
    let id = bpf_get_current_pid_tgid();
    e.tgid = (id >> 32) as u32;
    e.tid = id as u32;
    e.start_ns = w.start_ns;
    // SAFETY: helper without arguments.
    e.duration_ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(w.start_ns);
    // SAFETY: helper without arguments.
    e.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    e.mode = w.mode;
    e._pad = 0;
    // Where it waited: the stack at lwlock__wait__done is LWLockAcquire's, as at the start.
    e.user_stack = stacks::user_stack(ctx);
    e.tranche = [0; TRANCHE_CAP];
    if tranche != 0 {
        // SAFETY: reads a string of the current process; fails cleanly if unmapped.
        let _ = unsafe { bpf_probe_read_user_str_bytes(tranche as *const u8, &mut e.tranche) };
    }
    e.query[0] = 0;
    (e.statement, e.query_len, e.truncated) = read_statement(e.tgid, &mut e.query).fields();
    // Userspace drains every 100 ms; no wakeup per event.
    slot.submit(ring::NO_WAKEUP);
}

pgbpf_common_ebpf::program_support!();
