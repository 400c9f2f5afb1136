//! shmem's kernel programs: syscall tracepoints on the creation, resize, mapping and removal
//! of shared memory (POSIX shm files in /dev/shm, memfd, SysV, MAP_SHARED mmaps), and uprobes
//! on PostgreSQL's dsm_create and PGSharedMemoryCreate. Each event carries the process title
//! (PostgreSQL's backend type), the statement being run (debug_query_string) and, for resizes
//! of a tmpfs file, the filesystem's size and free space when the call began.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_ktime_get_ns, bpf_probe_read_kernel, bpf_probe_read_user_str_bytes, generated,
    },
    macros::{map, tracepoint, uprobe},
    maps::{LruHashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, TracePointContext},
};
use pgbpf_common_ebpf::{counters::bump, ring, stacks, syscall};
use pgbpf_common_ebpf::{
    query_string::{StatementRead, read_statement},
    target::current_is_target,
};
use shmem_ebpf::{FdKey, NAME_CAP, QUERY_CAP, ShmEvent, counter, kind};

// Every counter has a slot in the shared map.
const _: () = assert!(counter::COUNT <= pgbpf_common_ebpf::counters::SLOTS);

const TMPFS_MAGIC: u64 = 0x0102_1994;
const MAP_SHARED: u64 = 0x01;
const MAP_ANONYMOUS: u64 = 0x20;
const DEV_SHM: &[u8; 9] = b"/dev/shm/";

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
/// Syscalls in flight, by thread: the event built at entry, sent at exit.
#[map]
static PENDING: LruHashMap<u32, ShmEvent> = LruHashMap::with_max_entries(1024, 0);
/// Open /dev/shm and memfd files of traced processes, with their names.
#[map]
static SHM_FDS: LruHashMap<FdKey, [u8; NAME_CAP]> = LruHashMap::with_max_entries(8192, 0);
/// An event does not fit on the 512-byte stack: built here.
#[map]
static SCRATCH: PerCpuArray<ShmEvent> = PerCpuArray::with_max_entries(1, 0);

// Kernel struct offsets from the running kernel's BTF (set by userspace; 0 = unknown).
#[unsafe(no_mangle)]
static HAVE_OFFSETS: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static OFF_TASK_FILES: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static OFF_FILES_FDT: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static OFF_FDT_FD: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static OFF_FILE_INODE: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static OFF_INODE_SB: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static OFF_SB_MAGIC: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static OFF_SB_FS_INFO: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static OFF_SBI_MAX_BLOCKS: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static OFF_SBI_USED_BLOCKS: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static OFF_TASK_MM: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static OFF_MM_ARG_START: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static PAGE_BYTES: aya_ebpf::Global<u64> = aya_ebpf::Global::new(4096);
/// 1 with --failures: stacks (--stack) are taken for failed calls only.
#[unsafe(no_mangle)]
static STACKS_OF_FAILURES: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
/// The target's pid namespace (st_dev, st_ino of /proc/PID/ns/pid); 0 = not asked.
#[unsafe(no_mangle)]
static PIDNS_DEV: aya_ebpf::Global<u64> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static PIDNS_INO: aya_ebpf::Global<u64> = aya_ebpf::Global::new(0);

#[inline(always)]
fn read_kernel(addr: u64) -> Option<u64> {
    if addr < 4096 {
        return None;
    }
    // SAFETY: a checked kernel read; a bad address fails cleanly.
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.ok()
}

#[inline(always)]
fn tid() -> u32 {
    bpf_get_current_pid_tgid() as u32
}

#[inline(always)]
fn tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// This CPU's scratch event, reset and filled with who and when.
#[inline(always)]
fn new_event(kind: u8) -> Option<&'static mut ShmEvent> {
    let e = SCRATCH.get_ptr_mut(0)?;
    // SAFETY: this CPU's scratch slot, used only while this program runs.
    let e = unsafe { &mut *e };
    // SAFETY: the whole value is plain data; zeroing is a valid state.
    unsafe { core::ptr::write_bytes(e as *mut ShmEvent as *mut u8, 0, 128) };
    let id = bpf_get_current_pid_tgid();
    e.tgid = (id >> 32) as u32;
    e.tid = id as u32;
    // SAFETY: helper without arguments.
    e.ts_ns = unsafe { bpf_ktime_get_ns() };
    // SAFETY: helper without arguments.
    e.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    e.kind = kind;
    e.fd = -1;
    e.query_len = 0;
    e.user_stack = stacks::NONE;
    e.name[0] = 0;
    e.title[0] = 0;
    e.query[0] = 0;
    Some(e)
}

/// Who the process is and what it is doing: pid in its namespace, title, statement.
#[inline(always)]
fn describe_process(e: &mut ShmEvent) {
    let dev = PIDNS_DEV.load();
    if dev != 0 {
        let mut ns = aya_ebpf::bindings::bpf_pidns_info { pid: 0, tgid: 0 };
        // SAFETY: the helper writes one bpf_pidns_info into `ns`.
        let rc = unsafe {
            generated::bpf_get_ns_current_pid_tgid(
                dev,
                PIDNS_INO.load(),
                &mut ns,
                core::mem::size_of::<aya_ebpf::bindings::bpf_pidns_info>() as u32,
            )
        };
        if rc == 0 {
            e.ns_pid = ns.tgid;
        }
    }
    if HAVE_OFFSETS.load() != 0 {
        // SAFETY: helper without arguments.
        let task = unsafe { bpf_get_current_task() };
        if let Some(mm) = read_kernel(task + OFF_TASK_MM.load() as u64)
            && let Some(arg_start) = read_kernel(mm + OFF_MM_ARG_START.load() as u64)
        {
            // The ps display PostgreSQL writes over its argv: "postgres: ... parallel worker".
            // SAFETY: a checked user read into our buffer.
            let _ = unsafe { bpf_probe_read_user_str_bytes(arg_start as *const u8, &mut e.title) };
        }
    }
    if let StatementRead::Running { len, .. } = read_statement(e.tgid, &mut e.query) {
        e.query_len = len as u32;
    }
}

/// Size and free space of the tmpfs behind `fd` of the current process, when the kernel's
/// layout is known and the file is on a size-limited tmpfs.
#[inline(always)]
fn tmpfs_space(fd: u64, e: &mut ShmEvent) {
    if HAVE_OFFSETS.load() == 0 || fd > 1 << 20 {
        return;
    }
    // SAFETY: helper without arguments.
    let task = unsafe { bpf_get_current_task() };
    let Some(files) = read_kernel(task + OFF_TASK_FILES.load() as u64) else {
        return;
    };
    let Some(fdt) = read_kernel(files + OFF_FILES_FDT.load() as u64) else {
        return;
    };
    let Some(fd_array) = read_kernel(fdt + OFF_FDT_FD.load() as u64) else {
        return;
    };
    let Some(file) = read_kernel(fd_array + fd * 8) else {
        return;
    };
    let Some(inode) = read_kernel(file + OFF_FILE_INODE.load() as u64) else {
        return;
    };
    let Some(sb) = read_kernel(inode + OFF_INODE_SB.load() as u64) else {
        return;
    };
    if read_kernel(sb + OFF_SB_MAGIC.load() as u64) != Some(TMPFS_MAGIC) {
        return;
    }
    let Some(sbi) = read_kernel(sb + OFF_SB_FS_INFO.load() as u64) else {
        return;
    };
    let Some(max_blocks) = read_kernel(sbi + OFF_SBI_MAX_BLOCKS.load() as u64) else {
        return;
    };
    // A tmpfs without a size limit (memfd, SysV) has max_blocks 0: nothing to report.
    if max_blocks == 0 {
        return;
    }
    // percpu_counter.count: exact to within a batch per CPU (shmem: 32 pages).
    let used = read_kernel(sbi + OFF_SBI_USED_BLOCKS.load() as u64).unwrap_or(0) as i64;
    let used = if used < 0 { 0 } else { used as u64 };
    let page = PAGE_BYTES.load();
    e.space_total = max_blocks * page;
    e.space_free = max_blocks.saturating_sub(used) * page;
    e.has_space = 1;
}

/// Remembers the event built at a syscall's entry until its exit.
#[inline(always)]
fn park(e: &ShmEvent) {
    if PENDING.insert(&e.tid, e, 0).is_err() {
        bump(counter::PENDING_FULL);
    }
}

/// At a syscall's exit: completes the parked event of `kind` and sends it. Returns the fd
/// to remember when an open or memfd_create succeeded, with the event's name.
#[inline(always)]
fn finish(ctx: &TracePointContext, kind: u8) {
    let tid = tid();
    let Some(p) = PENDING.get_ptr_mut(&tid) else {
        return;
    };
    // SAFETY: a map value pointer, valid while this program runs.
    let parked = unsafe { &mut *p };
    if parked.kind != kind {
        return;
    }
    let rc = syscall::ret(ctx);
    parked.ret = rc;
    // The caller's stack, as strace -k shows it (the same at the syscall's exit as at its
    // entry).
    parked.user_stack = if rc >= 0 && STACKS_OF_FAILURES.load() != 0 {
        stacks::NONE
    } else {
        stacks::user_stack(ctx)
    };
    // SAFETY: helper without arguments.
    parked.duration_ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(parked.ts_ns);
    if (kind == kind::OPEN || kind == kind::MEMFD_CREATE) && rc >= 0 {
        let key = FdKey {
            tgid: parked.tgid,
            fd: rc as u32,
        };
        if SHM_FDS.insert(&key, &parked.name, 0).is_err() {
            bump(counter::FDS_FULL);
        }
    }
    send(parked);
    let _ = PENDING.remove(&tid);
}

#[inline(always)]
fn send(e: &ShmEvent) {
    match EVENTS.reserve::<ShmEvent>(0) {
        Some(mut slot) => {
            // SAFETY: copies one whole event from map memory into the reserved record.
            unsafe {
                generated::bpf_probe_read_kernel(
                    slot.as_mut_ptr() as *mut _,
                    core::mem::size_of::<ShmEvent>() as u32,
                    e as *const ShmEvent as *const _,
                );
            }
            slot.submit(ring::NO_WAKEUP);
        }
        None => bump(counter::RINGBUF_FULL),
    }
}

/// Copies a user path into `name` and says whether it is under /dev/shm/.
#[inline(always)]
fn read_shm_path(path: u64, name: &mut [u8; NAME_CAP]) -> bool {
    // SAFETY: a checked user read into our buffer.
    let Ok(s) = (unsafe { bpf_probe_read_user_str_bytes(path as *const u8, name) }) else {
        return false;
    };
    s.len() > DEV_SHM.len() && name[..DEV_SHM.len()] == DEV_SHM[..]
}

/// The remembered name of an open /dev/shm or memfd file, into the event.
#[inline(always)]
fn name_of_fd(fd: u64, e: &mut ShmEvent) -> bool {
    let key = FdKey {
        tgid: e.tgid,
        fd: fd as u32,
    };
    // SAFETY: plain lookup; the value is copied out.
    match unsafe { SHM_FDS.get(&key) } {
        Some(n) => {
            e.name = *n;
            e.has_name = 1;
            true
        }
        None => false,
    }
}

// ---- POSIX shared memory: shm_open (openat), ftruncate, fallocate, unlink; memfd ----

#[tracepoint]
pub fn enter_openat(ctx: TracePointContext) -> u32 {
    if !current_is_target() {
        return 0;
    }
    let Some(e) = new_event(kind::OPEN) else {
        return 0;
    };
    if !read_shm_path(syscall::arg(&ctx, 1), &mut e.name) {
        return 0;
    }
    e.has_name = 1;
    e.arg = syscall::arg(&ctx, 2);
    describe_process(e);
    park(e);
    0
}

#[tracepoint]
pub fn exit_openat(ctx: TracePointContext) -> u32 {
    finish(&ctx, kind::OPEN);
    0
}

#[tracepoint]
pub fn enter_memfd_create(ctx: TracePointContext) -> u32 {
    if !current_is_target() {
        return 0;
    }
    let Some(e) = new_event(kind::MEMFD_CREATE) else {
        return 0;
    };
    // SAFETY: a checked user read into our buffer.
    let _ =
        unsafe { bpf_probe_read_user_str_bytes(syscall::arg(&ctx, 0) as *const u8, &mut e.name) };
    e.has_name = 1;
    e.arg = syscall::arg(&ctx, 1);
    describe_process(e);
    park(e);
    0
}

#[tracepoint]
pub fn exit_memfd_create(ctx: TracePointContext) -> u32 {
    finish(&ctx, kind::MEMFD_CREATE);
    0
}

/// ftruncate(fd, length) and fallocate(fd, mode, offset, len) of a /dev/shm or memfd file.
#[inline(always)]
fn enter_resize(ctx: &TracePointContext, kind: u8) {
    if !current_is_target() {
        return;
    }
    let Some(e) = new_event(kind) else {
        return;
    };
    let fd = syscall::arg(ctx, 0);
    if !name_of_fd(fd, e) {
        return;
    }
    e.fd = fd as i32;
    if kind == kind::FTRUNCATE {
        e.size = syscall::arg(ctx, 1);
    } else {
        e.arg2 = syscall::arg(ctx, 1);
        e.arg = syscall::arg(ctx, 2);
        e.size = syscall::arg(ctx, 3);
    }
    tmpfs_space(fd, e);
    describe_process(e);
    park(e);
}

#[tracepoint]
pub fn enter_ftruncate(ctx: TracePointContext) -> u32 {
    enter_resize(&ctx, kind::FTRUNCATE);
    0
}

#[tracepoint]
pub fn exit_ftruncate(ctx: TracePointContext) -> u32 {
    finish(&ctx, kind::FTRUNCATE);
    0
}

#[tracepoint]
pub fn enter_fallocate(ctx: TracePointContext) -> u32 {
    enter_resize(&ctx, kind::FALLOCATE);
    0
}

#[tracepoint]
pub fn exit_fallocate(ctx: TracePointContext) -> u32 {
    finish(&ctx, kind::FALLOCATE);
    0
}

/// unlink(path) and unlinkat(dfd, path, flags) of a /dev/shm file (shm_unlink).
#[inline(always)]
fn enter_remove(path: u64) {
    if !current_is_target() {
        return;
    }
    let Some(e) = new_event(kind::UNLINK) else {
        return;
    };
    if !read_shm_path(path, &mut e.name) {
        return;
    }
    e.has_name = 1;
    describe_process(e);
    park(e);
}

#[tracepoint]
pub fn enter_unlink(ctx: TracePointContext) -> u32 {
    enter_remove(syscall::arg(&ctx, 0));
    0
}

#[tracepoint]
pub fn enter_unlinkat(ctx: TracePointContext) -> u32 {
    enter_remove(syscall::arg(&ctx, 1));
    0
}

#[tracepoint]
pub fn exit_unlink(ctx: TracePointContext) -> u32 {
    finish(&ctx, kind::UNLINK);
    0
}

#[tracepoint]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    if !current_is_target() {
        return 0;
    }
    let key = FdKey {
        tgid: tgid(),
        fd: syscall::arg(&ctx, 0) as u32,
    };
    let _ = SHM_FDS.remove(&key);
    0
}

// ---- mmap(MAP_SHARED) ----

#[tracepoint]
pub fn enter_mmap(ctx: TracePointContext) -> u32 {
    let flags = syscall::arg(&ctx, 3);
    // MAP_SHARED and MAP_SHARED_VALIDATE both have the low bit set; MAP_PRIVATE does not.
    if flags & MAP_SHARED == 0 || !current_is_target() {
        return 0;
    }
    let Some(e) = new_event(kind::MMAP) else {
        return 0;
    };
    e.size = syscall::arg(&ctx, 1);
    e.arg2 = syscall::arg(&ctx, 2);
    e.arg = flags;
    if flags & MAP_ANONYMOUS == 0 {
        let fd = syscall::arg(&ctx, 4);
        e.fd = fd as i32;
        name_of_fd(fd, e);
    }
    describe_process(e);
    park(e);
    0
}

#[tracepoint]
pub fn exit_mmap(ctx: TracePointContext) -> u32 {
    finish(&ctx, kind::MMAP);
    0
}

// ---- SysV: shmget, shmat, shmdt, shmctl ----

#[inline(always)]
fn enter_sysv(ctx: &TracePointContext, kind: u8) {
    if !current_is_target() {
        return;
    }
    let Some(e) = new_event(kind) else {
        return;
    };
    match kind {
        kind::SHMGET => {
            e.arg = syscall::arg(ctx, 0);
            e.size = syscall::arg(ctx, 1);
            e.arg2 = syscall::arg(ctx, 2);
        }
        kind::SHMAT => {
            e.arg = syscall::arg(ctx, 0);
            e.arg2 = syscall::arg(ctx, 2);
        }
        kind::SHMDT => e.arg = syscall::arg(ctx, 0),
        _ => {
            e.arg = syscall::arg(ctx, 0);
            e.arg2 = syscall::arg(ctx, 1);
        }
    }
    describe_process(e);
    park(e);
}

#[tracepoint]
pub fn enter_shmget(ctx: TracePointContext) -> u32 {
    enter_sysv(&ctx, kind::SHMGET);
    0
}

#[tracepoint]
pub fn exit_shmget(ctx: TracePointContext) -> u32 {
    finish(&ctx, kind::SHMGET);
    0
}

#[tracepoint]
pub fn enter_shmat(ctx: TracePointContext) -> u32 {
    enter_sysv(&ctx, kind::SHMAT);
    0
}

#[tracepoint]
pub fn exit_shmat(ctx: TracePointContext) -> u32 {
    finish(&ctx, kind::SHMAT);
    0
}

#[tracepoint]
pub fn enter_shmdt(ctx: TracePointContext) -> u32 {
    enter_sysv(&ctx, kind::SHMDT);
    0
}

#[tracepoint]
pub fn exit_shmdt(ctx: TracePointContext) -> u32 {
    finish(&ctx, kind::SHMDT);
    0
}

#[tracepoint]
pub fn enter_shmctl(ctx: TracePointContext) -> u32 {
    enter_sysv(&ctx, kind::SHMCTL);
    0
}

#[tracepoint]
pub fn exit_shmctl(ctx: TracePointContext) -> u32 {
    finish(&ctx, kind::SHMCTL);
    0
}

// ---- PostgreSQL functions ----

/// dsm_create(Size size, int flags) and PGSharedMemoryCreate(Size size, ...): the size
/// PostgreSQL asks for, before the syscalls that follow.
#[inline(always)]
fn pg_function(ctx: &ProbeContext, kind: u8) {
    if !current_is_target() {
        return;
    }
    let Some(e) = new_event(kind) else {
        return;
    };
    e.size = ctx.arg::<u64>(0).unwrap_or(0);
    e.arg = ctx.arg::<u64>(1).unwrap_or(0);
    if STACKS_OF_FAILURES.load() == 0 {
        e.user_stack = stacks::user_stack(ctx);
    }
    describe_process(e);
    send(e);
}

#[uprobe]
pub fn dsm_create(ctx: ProbeContext) -> u32 {
    pg_function(&ctx, kind::DSM_CREATE);
    0
}

#[uprobe]
pub fn pg_shmem_create(ctx: ProbeContext) -> u32 {
    pg_function(&ctx, kind::PG_SHMEM_CREATE);
    0
}

// ---- process tree ----

const _: () = assert!(QUERY_CAP == 256);

pgbpf_common_ebpf::program_support!();
