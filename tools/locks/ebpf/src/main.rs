//! locks' kernel programs: PostgreSQL's USDT probes lock__wait__start / __done (a backend
//! sleeping on a heavyweight lock: its LOCKTAG and mode as arguments) and deadlock__found. A
//! wait's start is kept per thread and sent (with the statement, for the deadlock report);
//! its end is sent with the duration; a deadlock is sent with the finder's statement.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, uprobe},
    maps::{LruHashMap, RingBuf},
    programs::ProbeContext,
};
use locks_ebpf::{LockEvent, counter, kind, probe};
use pgbpf_common_ebpf::{
    counters::bump,
    query_string::read_statement,
    ring, stacks,
    target::current_is_target,
    usdt::{UsdtSpec, usdt_arg, usdt_spec},
};

// Every counter has a slot in the shared map.
const _: () = assert!(counter::COUNT <= pgbpf_common_ebpf::counters::SLOTS);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// Start times of the waits in progress, by thread (a backend waits for one lock at a time;
/// a wait ended by an error or a cancel leaves its slot behind, which the LRU lets go).
#[map]
static WAITING: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// All three probes: the site's probe id (its attachment's cookie) says which fired.
#[uprobe]
pub fn lock_probe(ctx: ProbeContext) -> u32 {
    let Some(spec) = usdt_spec(&ctx) else {
        return 0;
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    match spec.probe_id {
        probe::WAIT_START => {
            if !current_is_target() {
                return 0;
            }
            if WAITING.insert(&tid, &now, 0).is_err() {
                bump(counter::WAITING_FULL);
                return 0;
            }
            send(&ctx, spec, kind::WAIT_START, now, 0);
        }
        probe::WAIT_DONE => {
            // SAFETY: plain lookup; the value is copied out.
            let Some(start) = (unsafe { WAITING.get(&tid) }).copied() else {
                return 0;
            };
            let _ = WAITING.remove(&tid);
            send(
                &ctx,
                spec,
                kind::WAIT_DONE,
                start,
                now.saturating_sub(start),
            );
        }
        probe::DEADLOCK => {
            // The finder's wait ends in an error, without lock__wait__done.
            let _ = WAITING.remove(&tid);
            if current_is_target() {
                send(&ctx, spec, kind::DEADLOCK, now, 0);
            }
        }
        _ => {}
    }
    0
}

/// Sends an event of `kind` with the probe's lock (if it has one) and the statement.
#[inline(always)]
fn send(ctx: &ProbeContext, spec: &UsdtSpec, kind: u8, start_ns: u64, duration_ns: u64) {
    let Some(mut slot) = EVENTS.reserve::<LockEvent>(0) else {
        bump(counter::RINGBUF_FULL);
        return;
    };
    // SAFETY: the reserved record, written field by field (too big for the stack).
    let e = unsafe { &mut *slot.as_mut_ptr() };
    let id = bpf_get_current_pid_tgid();
    e.tgid = (id >> 32) as u32;
    e.tid = id as u32;
    e.kind = kind;
    e.start_ns = start_ns;
    e.duration_ns = duration_ns;
    // SAFETY: helper without arguments.
    e.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    let arg = |n| usdt_arg(ctx, spec, n).unwrap_or(0);
    e.field1 = arg(0) as u32;
    e.field2 = arg(1) as u32;
    e.field3 = arg(2) as u32;
    e.field4 = arg(3) as u32;
    e.locktag_type = arg(4) as u8;
    e.mode = arg(5) as u32;
    // A wait's stack when it ends (the same as at its start: inside WaitOnLock); the report
    // has no use for the others'.
    e.user_stack = if kind == kind::WAIT_DONE {
        stacks::user_stack(ctx)
    } else {
        stacks::NONE
    };
    e.query[0] = 0;
    (e.statement, e.query_len, e.truncated) = read_statement(e.tgid, &mut e.query).fields();
    // Userspace drains every 100 ms; no wakeup per event.
    slot.submit(ring::NO_WAKEUP);
}

pgbpf_common_ebpf::program_support!();
