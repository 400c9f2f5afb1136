//! wal_per_query's kernel programs: PostgreSQL's USDT probes around each statement's execution
//! (query__execute__start/done, PortalRun's, where pg_stat_statements measures too) and on
//! every WAL record (wal__insert). At the outermost execution's start and end the process's
//! own `pgWalUsage` (records, full-page images, bytes it has written to the WAL) is read from
//! its memory; a statement that wrote WAL is one ring buffer event with the difference, its
//! records per resource manager and its text. Records outside any statement (commits, vacuum,
//! checkpoints) are counted per resource manager in COUNTERS. An execution an error ended
//! (its done probe never fires) is forgotten when its transaction aborts
//! (transaction__abort), or at the next start found at or above its stack pointer (a nested
//! execution runs below its caller's; an error caught in a subtransaction aborts no
//! transaction).
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{map, uprobe},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::ProbeContext,
};
use pgbpf_common_ebpf::{
    counters::bump,
    query_string::{WalUsage, read_statement, read_wal_usage},
    ring,
    target::current_is_target,
    usdt::{stack_pointer, usdt_arg, usdt_spec},
};
use wal_per_query_ebpf::{RMGR_SLOTS, WalEvent, counter, probe};

// Every counter has a slot in the shared map.
const _: () = assert!(counter::COUNT <= pgbpf_common_ebpf::counters::SLOTS);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// A thread's statement being executed.
#[repr(C)]
#[derive(Clone, Copy)]
struct Running {
    /// PortalRun nesting (a function's statements run inside its caller's); 0: none.
    depth: u32,
    /// 1 when `start` was read.
    located: u32,
    /// The outermost execution's stack pointer: a later start at or above it is a new
    /// statement (the previous one ended in an error, past its done probe), not a nested one.
    sp: u64,
    start_ns: u64,
    start: WalUsage,
    rmgr_records: [u32; RMGR_SLOTS],
}

/// Statements in execution by thread; a thread gone leaves its entry to the LRU.
#[map]
static RUNNING: LruHashMap<u32, Running> = LruHashMap::with_max_entries(16384, 0);

/// A zeroed [`Running`] to insert from; never written.
#[map]
static EMPTY: PerCpuArray<Running> = PerCpuArray::with_max_entries(1, 0);

/// The event being built (too big for the stack).
#[map]
static SCRATCH: PerCpuArray<WalEvent> = PerCpuArray::with_max_entries(1, 0);

/// Every probe: the site's probe id (its attachment's cookie) tells which it is.
#[uprobe]
pub fn wal_probe(ctx: ProbeContext) -> u32 {
    let Some(spec) = usdt_spec(&ctx) else {
        return 0;
    };
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    match spec.probe_id {
        probe::EXECUTE_START => {
            if !current_is_target() {
                return 0;
            }
            let Some(r) = running(tid) else {
                bump(counter::RUNNING_FULL);
                return 0;
            };
            let sp = stack_pointer(&ctx);
            if r.depth > 0 && sp >= r.sp {
                forget(r);
            }
            if r.depth == 0 {
                r.sp = sp;
                match read_wal_usage(tgid) {
                    Some(w) => {
                        r.start = w;
                        r.located = 1;
                    }
                    None => r.located = 0,
                }
                // SAFETY: helper without arguments.
                r.start_ns = unsafe { bpf_ktime_get_ns() };
                r.rmgr_records = [0; RMGR_SLOTS];
            }
            r.depth += 1;
        }
        probe::EXECUTE_DONE => {
            let Some(r) = RUNNING.get_ptr_mut(&tid) else {
                return 0;
            };
            // SAFETY: this thread's entry; only its own probes write it.
            let r = unsafe { &mut *r };
            if r.depth == 0 {
                return 0;
            }
            r.depth -= 1;
            if r.depth == 0 {
                finish(tgid, tid, r);
            }
        }
        probe::WAL_INSERT => {
            let rmid = usdt_arg(&ctx, spec, 0).unwrap_or(0) as u64;
            let slot = if rmid < RMGR_SLOTS as u64 {
                rmid as usize
            } else {
                RMGR_SLOTS - 1
            };
            if let Some(r) = RUNNING.get_ptr_mut(&tid) {
                // SAFETY: as above.
                let r = unsafe { &mut *r };
                if r.depth > 0 {
                    r.rmgr_records[slot] = r.rmgr_records[slot].wrapping_add(1);
                    return 0;
                }
            }
            if current_is_target() {
                bump(counter::RMGR_OUTSIDE + slot as u32);
            }
        }
        probe::ABORT => {
            if let Some(r) = RUNNING.get_ptr_mut(&tid) {
                // SAFETY: as above.
                forget(unsafe { &mut *r });
            }
        }
        _ => {}
    }
    0
}

/// An execution an error ended (its done probe never fired): not counted, as in
/// pg_stat_statements; the records it wrote count as outside statements.
#[inline(always)]
fn forget(r: &mut Running) {
    if r.depth == 0 {
        return;
    }
    r.depth = 0;
    for slot in 0..RMGR_SLOTS {
        let n = r.rmgr_records[slot];
        if n != 0 {
            pgbpf_common_ebpf::counters::add(counter::RMGR_OUTSIDE + slot as u32, u64::from(n));
        }
    }
    r.rmgr_records = [0; RMGR_SLOTS];
}

/// The outermost execution ended: send what it wrote, if anything.
#[inline(always)]
fn finish(tgid: u32, tid: u32, r: &Running) {
    if r.located == 0 {
        bump(counter::NOT_LOCATED);
        return;
    }
    let Some(now) = read_wal_usage(tgid) else {
        return;
    };
    let records = now.records.saturating_sub(r.start.records);
    if records == 0 {
        return;
    }
    let Some(e) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot; nothing else uses it while the program runs.
    let e = unsafe { &mut *e };
    e.tgid = tgid;
    e.tid = tid;
    e.start_ns = r.start_ns;
    // SAFETY: helper without arguments.
    e.duration_ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(r.start_ns);
    // SAFETY: helper without arguments.
    e.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    e.records = records;
    e.fpi = now.fpi.saturating_sub(r.start.fpi);
    e.bytes = now.bytes.saturating_sub(r.start.bytes);
    e.rmgr_records = r.rmgr_records;
    e._pad = 0;
    e.query[0] = 0;
    (e.statement, e.query_len, e.truncated) = read_statement(tgid, &mut e.query).fields();
    if !ring::send_copy::<WalEvent, WalEvent>(&EVENTS, e) {
        bump(counter::RINGBUF_FULL);
    }
}

/// The entry of thread `tid`, made (zeroed) if it has none.
#[inline(always)]
fn running(tid: u32) -> Option<&'static mut Running> {
    if let Some(r) = RUNNING.get_ptr_mut(&tid) {
        // SAFETY: a map value lives as long as the program runs.
        return Some(unsafe { &mut *r });
    }
    let empty = EMPTY.get_ptr(0)?;
    // SAFETY: this CPU's zeroed slot, read by the helper.
    RUNNING.insert(&tid, unsafe { &*empty }, 0).ok()?;
    // SAFETY: as above.
    RUNNING.get_ptr_mut(&tid).map(|r| unsafe { &mut *r })
}

pgbpf_common_ebpf::program_support!();
