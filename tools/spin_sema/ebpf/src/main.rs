//! spin_sema's kernel programs: uprobes at the entry and return of PostgreSQL's `s_lock` (the
//! slow path of a spinlock: the test-and-set failed, it spins, and sleeps between rounds) and
//! `PGSemaphoreLock` (a process sleeps on its own semaphore), and the futex(2) enter and exit
//! tracepoints for the waits those sleeps and others are made of. A wait's start is kept per
//! (thread, kind); its end is one ring buffer event with the duration, the spinlock's source
//! location, and the statement the process runs (its own `debug_query_string`).
#![no_std]
#![no_main]

use aya_ebpf::programs::tracing::StackIdContext;
use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_probe_read_user_str_bytes,
    },
    macros::{map, tracepoint, uprobe, uretprobe},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext, TracePointContext},
};
use pgbpf_common_ebpf::{
    counters::bump, query_string::read_statement, ring, stacks, syscall, target::current_is_target,
};
use spin_sema_ebpf::{HEAD_LEN, WaitEvent, counter, kind};

// Every counter has a slot in the shared map.
const _: () = assert!(counter::COUNT <= pgbpf_common_ebpf::counters::SLOTS);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// A wait in progress.
#[repr(C)]
#[derive(Clone, Copy)]
struct Started {
    start_ns: u64,
    /// The process that began it: a thread that died mid-wait leaves its entry, and another
    /// process reusing the tid must not end it.
    tgid: u64,
    /// s_lock's `file` and `func` (pointers into the binary) and `line`; a futex's op.
    file: u64,
    func: u64,
    detail: u32,
    line: u32,
    /// The waiter's user stack id (`--stack`).
    user_stack: i32,
    _pad: u32,
}

/// Waits in progress by (thread << 32 | kind): a semaphore sleep holds a futex wait inside it.
/// A thread killed mid-wait leaves its entry behind, which the LRU lets go once full.
#[map]
static WAITING: LruHashMap<u64, Started> = LruHashMap::with_max_entries(16384, 0);

/// The event being built (too big for the stack).
#[map]
static SCRATCH: PerCpuArray<WaitEvent> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn key(k: u8) -> u64 {
    (bpf_get_current_pid_tgid() << 32) | u64::from(k)
}

#[inline(always)]
fn start<C: StackIdContext>(ctx: &C, k: u8, file: u64, func: u64, detail: u32, line: u32) {
    if !current_is_target() {
        return;
    }
    let s = Started {
        // SAFETY: helper without arguments.
        start_ns: unsafe { bpf_ktime_get_ns() },
        tgid: bpf_get_current_pid_tgid() >> 32,
        file,
        func,
        detail,
        line,
        user_stack: stacks::user_stack(ctx),
        _pad: 0,
    };
    if WAITING.insert(&key(k), &s, 0).is_err() {
        bump(counter::WAITING_FULL);
    }
}

/// s_lock(lock, file, line, func).
#[uprobe]
pub fn spin_enter(ctx: ProbeContext) -> u32 {
    let file = ctx.arg::<u64>(1).unwrap_or(0);
    let line = ctx.arg::<u64>(2).unwrap_or(0) as u32;
    let func = ctx.arg::<u64>(3).unwrap_or(0);
    start(&ctx, kind::SPIN, file, func, 0, line);
    0
}

/// s_lock returns the number of delays (sleeps between spin rounds).
#[uretprobe]
pub fn spin_return(ctx: RetProbeContext) -> u32 {
    let delays = ctx.ret::<u64>() as u32;
    end(kind::SPIN, Some(delays));
    0
}

/// PGSemaphoreLock(sema).
#[uprobe]
pub fn sema_enter(ctx: ProbeContext) -> u32 {
    start(&ctx, kind::SEMAPHORE, 0, 0, 0, 0);
    0
}

#[uretprobe]
pub fn sema_return(_ctx: RetProbeContext) -> u32 {
    end(kind::SEMAPHORE, None);
    0
}

/// The futex commands that wait (include/uapi/linux/futex.h): WAIT, LOCK_PI, WAIT_BITSET,
/// WAIT_REQUEUE_PI, LOCK_PI2.
#[inline(always)]
fn is_wait(op: u32) -> bool {
    matches!(op & 0x7f, 0 | 6 | 9 | 11 | 13)
}

/// syscalls:sys_enter_futex(uaddr, op, val, utime, uaddr2, val3).
#[tracepoint]
pub fn futex_enter(ctx: TracePointContext) -> u32 {
    let op = syscall::arg(&ctx, 1) as u32;
    if is_wait(op) {
        start(&ctx, kind::FUTEX, 0, 0, op, 0);
    }
    0
}

#[tracepoint]
pub fn futex_exit(_ctx: TracePointContext) -> u32 {
    end(kind::FUTEX, None);
    0
}

/// The wait of kind `k` of the current thread ended: send it.
#[inline(always)]
fn end(k: u8, detail: Option<u32>) {
    let key = key(k);
    // SAFETY: plain lookup; the value is copied out.
    let Some(s) = (unsafe { WAITING.get(&key) }).copied() else {
        return;
    };
    let _ = WAITING.remove(&key);
    if s.tgid != bpf_get_current_pid_tgid() >> 32 {
        return;
    }
    let Some(e) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: this CPU's scratch slot; nothing else uses it while the program runs.
    let e = unsafe { &mut *e };
    let id = bpf_get_current_pid_tgid();
    e.tgid = (id >> 32) as u32;
    e.tid = id as u32;
    e.start_ns = s.start_ns;
    // SAFETY: helper without arguments.
    e.duration_ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(s.start_ns);
    // SAFETY: helper without arguments.
    e.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    e.kind = k;
    e.detail = detail.unwrap_or(s.detail);
    e.line = s.line;
    e._pad = 0;
    e.user_stack = s.user_stack;
    e._pad2 = 0;
    e.file[0] = 0;
    e.func[0] = 0;
    if s.file != 0 {
        // SAFETY: reads a string of the current process; fails cleanly if unmapped.
        let _ = unsafe { bpf_probe_read_user_str_bytes(s.file as *const u8, &mut e.file) };
    }
    if s.func != 0 {
        // SAFETY: as above.
        let _ = unsafe { bpf_probe_read_user_str_bytes(s.func as *const u8, &mut e.func) };
    }
    e.query[0] = 0;
    (e.statement, e.query_len, e.truncated) = read_statement(e.tgid, &mut e.query).fields();
    if e.query_len == 0 && k != kind::SPIN {
        send::<[u8; HEAD_LEN]>(e);
    } else {
        send::<WaitEvent>(e);
    }
}

/// Sends the first `size_of::<T>()` bytes of `e`, counting a full ring buffer.
#[inline(always)]
fn send<T: 'static>(e: &WaitEvent) {
    if !ring::send_copy::<T, WaitEvent>(&EVENTS, e) {
        bump(counter::RINGBUF_FULL);
    }
}

pgbpf_common_ebpf::program_support!();
