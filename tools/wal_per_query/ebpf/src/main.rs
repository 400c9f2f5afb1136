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
//!
//! `--system` adds the syscall tracepoints: descriptors opened on `pg_wal/` paths (as
//! PostgreSQL opens its WAL segments, relative to the data directory; those open before
//! attach are added by userspace from /proc) are remembered, and the writes and syncs on
//! them timed and summed per process in WAL_IO.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
    },
    macros::{map, tracepoint, uprobe},
    maps::{HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, TracePointContext},
};
use pgbpf_common_ebpf::{
    atomic_add,
    counters::bump,
    query_string::{WalUsage, read_statement, read_wal_usage},
    ring, syscall,
    target::current_is_target,
    usdt::{stack_pointer, usdt_arg, usdt_spec},
};
use wal_per_query_ebpf::{FdKey, Pending, RMGR_SLOTS, WalEvent, WalIo, counter, probe};

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

// ---- --system: WAL files written and synced, by process ----

/// BPF_F_NO_PREALLOC: memory follows the entries met.
const NO_PREALLOC: u32 = 1;

/// The path argument of an openat in progress, by thread.
#[map]
static WAL_OPENING: HashMap<u32, u64> = HashMap::with_max_entries(4096, 0);

/// Descriptors of pg_wal files, by process.
#[map]
static WAL_FDS: HashMap<FdKey, u8> = HashMap::with_max_entries(16384, NO_PREALLOC);

/// WAL writes and syncs in progress, by thread.
#[map]
static WAL_PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(4096, 0);

/// Writes and syncs of WAL files per process since attach.
#[map]
static WAL_IO: HashMap<u32, WalIo> = HashMap::with_max_entries(4096, NO_PREALLOC);

#[inline(always)]
fn ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

/// syscalls:sys_enter_openat(dfd, filename, flags, mode).
#[tracepoint]
pub fn wal_enter_openat(ctx: TracePointContext) -> u32 {
    if current_is_target() {
        let _ = WAL_OPENING.insert(&ids().1, &syscall::arg(&ctx, 1), 0);
    }
    0
}

/// syscalls:sys_exit_openat: a descriptor of a file under pg_wal/ is remembered.
#[tracepoint]
pub fn wal_exit_openat(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = ids();
    // SAFETY: plain lookup; the value is copied out.
    let Some(path) = (unsafe { WAL_OPENING.get(&tid) }).copied() else {
        return 0;
    };
    let _ = WAL_OPENING.remove(&tid);
    let fd = syscall::ret(&ctx);
    if fd < 0 {
        return 0;
    }
    // SAFETY: a user-space read the kernel checks; a bad pointer fails cleanly.
    let Ok(head) = (unsafe { bpf_probe_read_user(path as *const [u8; 7]) }) else {
        return 0;
    };
    if &head != b"pg_wal/" {
        return 0;
    }
    let key = FdKey {
        tgid,
        fd: fd as u32,
    };
    if WAL_FDS.insert(&key, &1, 0).is_err() {
        bump(counter::WAL_FDS_FULL);
    }
    0
}

/// syscalls:sys_enter_close.
#[tracepoint]
pub fn wal_enter_close(ctx: TracePointContext) -> u32 {
    let key = FdKey {
        tgid: ids().0,
        fd: syscall::arg(&ctx, 0) as u32,
    };
    let _ = WAL_FDS.remove(&key);
    0
}

/// sys_enter_write, pwrite64, writev, pwritev, pwritev2 (the descriptor is the first
/// argument).
#[tracepoint]
pub fn wal_enter_write(ctx: TracePointContext) -> u32 {
    wal_enter(&ctx, 0);
    0
}

/// sys_enter_fsync, fdatasync.
#[tracepoint]
pub fn wal_enter_sync(ctx: TracePointContext) -> u32 {
    wal_enter(&ctx, 1);
    0
}

#[inline(always)]
fn wal_enter(ctx: &TracePointContext, sync: u32) {
    let (tgid, tid) = ids();
    let key = FdKey {
        tgid,
        fd: syscall::arg(ctx, 0) as u32,
    };
    // SAFETY: plain lookup.
    if unsafe { WAL_FDS.get(&key) }.is_none() {
        return;
    }
    let p = Pending {
        // SAFETY: helper without arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
        sync,
        _pad: 0,
    };
    let _ = WAL_PENDING.insert(&tid, &p, 0);
}

/// The exits of the WAL writes and syncs `wal_enter_*` saw begin.
#[tracepoint]
pub fn wal_exit(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = ids();
    // SAFETY: plain lookup; the value is copied out.
    let Some(p) = (unsafe { WAL_PENDING.get(&tid) }).copied() else {
        return 0;
    };
    let _ = WAL_PENDING.remove(&tid);
    let ret = syscall::ret(&ctx);
    if ret < 0 || (p.sync == 0 && ret == 0) {
        return 0;
    }
    // SAFETY: helper without arguments.
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(p.start_ns);
    if WAL_IO.get_ptr_mut(&tgid).is_none() {
        // BPF_NOEXIST: another thread may have made it in between; then its entry is used.
        let _ = WAL_IO.insert(&tgid, &WalIo::default(), 1);
    }
    let Some(io) = WAL_IO.get_ptr_mut(&tgid) else {
        bump(counter::WAL_IO_FULL);
        return 0;
    };
    // SAFETY: a map value; other threads of the process may add too, hence atomic adds.
    unsafe {
        if p.sync == 0 {
            atomic_add(&raw mut (*io).writes, 1);
            atomic_add(&raw mut (*io).bytes, ret as u64);
            atomic_add(&raw mut (*io).write_ns, ns);
            if ns > (*io).write_max_ns {
                (*io).write_max_ns = ns;
            }
        } else {
            atomic_add(&raw mut (*io).syncs, 1);
            atomic_add(&raw mut (*io).sync_ns, ns);
            if ns > (*io).sync_max_ns {
                (*io).sync_max_ns = ns;
            }
        }
    }
    0
}

pgbpf_common_ebpf::program_support!();
