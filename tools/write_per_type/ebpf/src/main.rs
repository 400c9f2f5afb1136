//! write_per_type's kernel programs, on the syscall tracepoints: each open of a traced
//! process is remembered by descriptor with an id and sent to userspace with its path (which
//! userspace classifies: WAL, relation data, temp file, SLRU, log, ...); each write's result
//! and each fsync's duration is added to its open file's counts in a hash map the report
//! reads. A close forgets the descriptor. No event per write crosses to userspace.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user_str_bytes},
    macros::{map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use pgbpf_common_ebpf::{atomic_add, counters::bump, ring, syscall, target::current_is_target};
use write_per_type_ebpf::{
    FdKey, FileKey, FileStats, MAX_FDS, MAX_FILES, OpenEvent, Pending, counter,
};

// Every counter has a slot in the shared map.
const _: () = assert!(counter::COUNT <= pgbpf_common_ebpf::counters::SLOTS);

/// BPF_F_NO_PREALLOC: memory follows the entries, not the most a map may hold.
const NO_PREALLOC: u32 = 1;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 << 10, 0);

/// The path argument of an openat in progress, by thread.
#[map]
static OPENING: HashMap<u32, u64> = HashMap::with_max_entries(4096, 0);

/// The open id of each descriptor a traced process opened since attach.
#[map]
static FDS: HashMap<FdKey, u64> = HashMap::with_max_entries(MAX_FDS, NO_PREALLOC);

/// Writes and syncs in progress, by thread.
#[map]
static PENDING: HashMap<u32, Pending> = HashMap::with_max_entries(4096, 0);

/// Counts per open file since attach.
#[map]
static FILES: HashMap<FileKey, FileStats> = HashMap::with_max_entries(MAX_FILES, NO_PREALLOC);

/// The open event being built (too big for the stack).
#[map]
static SCRATCH: PerCpuArray<OpenEvent> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

/// syscalls:sys_enter_openat(dfd, filename, flags, mode).
#[tracepoint]
pub fn enter_openat(ctx: TracePointContext) -> u32 {
    if current_is_target() {
        let _ = OPENING.insert(&ids().1, &syscall::arg(&ctx, 1), 0);
    }
    0
}

/// syscalls:sys_exit_openat: the descriptor, remembered and sent with its path.
#[tracepoint]
pub fn exit_openat(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = ids();
    // SAFETY: plain lookup; the value is copied out.
    let Some(path) = (unsafe { OPENING.get(&tid) }).copied() else {
        return 0;
    };
    let _ = OPENING.remove(&tid);
    let fd = syscall::ret(&ctx);
    if fd < 0 {
        return 0;
    }
    let key = FdKey {
        tgid,
        fd: fd as u32,
    };
    // SAFETY: helper without arguments.
    let id = unsafe { bpf_ktime_get_ns() };
    if FDS.insert(&key, &id, 0).is_err() {
        bump(counter::FDS_FULL);
        return 0;
    }
    let Some(e) = SCRATCH.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: this CPU's scratch slot; nothing else uses it while the program runs.
    let e = unsafe { &mut *e };
    e.tgid = tgid;
    e.fd = fd as u32;
    e.id = id;
    e.path[0] = 0;
    // SAFETY: a user-space string read the kernel checks; a bad pointer leaves it empty.
    let _ = unsafe { bpf_probe_read_user_str_bytes(path as *const u8, &mut e.path) };
    if !ring::send_copy::<OpenEvent, OpenEvent>(&EVENTS, e) {
        bump(counter::RINGBUF_FULL);
    }
    0
}

/// syscalls:sys_enter_close: the descriptor's open is over.
#[tracepoint]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    if current_is_target() {
        let key = FdKey {
            tgid: ids().0,
            fd: syscall::arg(&ctx, 0) as u32,
        };
        let _ = FDS.remove(&key);
    }
    0
}

/// sys_enter_write, pwrite64, writev, pwritev, pwritev2 (the descriptor is the first
/// argument of each).
#[tracepoint]
pub fn enter_write(ctx: TracePointContext) -> u32 {
    enter(&ctx, 0, 0);
    0
}

/// sys_enter_fsync, fdatasync.
#[tracepoint]
pub fn enter_sync(ctx: TracePointContext) -> u32 {
    // SAFETY: helper without arguments.
    enter(&ctx, 1, unsafe { bpf_ktime_get_ns() });
    0
}

#[inline(always)]
fn enter(ctx: &TracePointContext, sync: u32, start_ns: u64) {
    if !current_is_target() {
        return;
    }
    let p = Pending {
        fd: syscall::arg(ctx, 0) as u32,
        sync,
        start_ns,
    };
    if PENDING.insert(&ids().1, &p, 0).is_err() {
        bump(counter::PENDING_FULL);
    }
}

/// The exits of the syscalls `enter_write` and `enter_sync` saw begin.
#[tracepoint]
pub fn exit_write(ctx: TracePointContext) -> u32 {
    let (tgid, tid) = ids();
    // SAFETY: plain lookup; the value is copied out.
    let Some(p) = (unsafe { PENDING.get(&tid) }).copied() else {
        return 0;
    };
    let _ = PENDING.remove(&tid);
    let ret = syscall::ret(&ctx);
    if ret < 0 || (p.sync == 0 && ret == 0) {
        return 0;
    }
    let fd = FdKey { tgid, fd: p.fd };
    // SAFETY: plain lookup; the value is copied out.
    let id = unsafe { FDS.get(&fd) }.copied().unwrap_or(0);
    let key = FileKey { fd, id };
    if FILES.get_ptr_mut(&key).is_none() {
        // BPF_NOEXIST: another CPU may have made it in between; then its entry is used.
        let _ = FILES.insert(&key, &FileStats::default(), 1);
    }
    let Some(s) = FILES.get_ptr_mut(&key) else {
        bump(counter::FILES_FULL);
        return 0;
    };
    // SAFETY: a map value; other threads of the process add to it too, hence atomic adds.
    unsafe {
        if p.sync == 0 {
            atomic_add(&raw mut (*s).writes, 1);
            atomic_add(&raw mut (*s).bytes, ret as u64);
        } else {
            let ns = bpf_ktime_get_ns().saturating_sub(p.start_ns);
            atomic_add(&raw mut (*s).syncs, 1);
            atomic_add(&raw mut (*s).sync_ns, ns);
            if ns > (*s).sync_max_ns {
                (*s).sync_max_ns = ns;
            }
        }
    }
    0
}

pgbpf_common_ebpf::program_support!();
