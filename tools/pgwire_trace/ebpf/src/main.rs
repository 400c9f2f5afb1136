//! pgwire_trace's kernel programs: tracepoints that copy the bytes of PostgreSQL connections
//! to a ring buffer. Reads and writes are caught at the socket layer (sock_recv_length,
//! sock_send_length: socket I/O only, raw tracepoints) or, on kernels before 6.4, at the exits
//! of the read and write syscalls; connections come and go at accept, connect, close and fork.
//!
//! Which descriptors are PostgreSQL connections is kept in SOCKS, keyed by (tgid, fd):
//! filled by userspace for connections open at start, by accept() on a PostgreSQL listener
//! (server side; the backend forked right after inherits the entry), and by connect() to a
//! PostgreSQL port or socket path (client side). A read or write of a process that holds
//! none of them costs one array load (HAS_SOCKS); any other costs one hash lookup.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        generated::{
            bpf_get_current_task_btf, bpf_probe_read_user as probe_read_user_raw, bpf_task_pt_regs,
        },
    },
    macros::{map, raw_tracepoint, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{RawTracePointContext, TracePointContext},
};
use pgbpf_common_ebpf::{atomic_add, target::current_is_target};
use pgwire_trace_ebpf::{
    ADDR_BYTES, CAPTURE_MAX, CAPTURE_MAX_VECTORED, DIR_READ, DIR_WRITE, HEADER_BYTES, KIND_CLOSE,
    KIND_DATA, KIND_OPEN, MAX_IOVECS, ROLE_CLIENT, ROLE_SERVER, RecordHeader, Scratch, SockInfo,
    SockKey, counter,
};

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;
const EINPROGRESS: i64 = 115;
const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const MSG_PEEK: i32 = 2;

/// Bytes copied per syscall (set by the loader from --capture).
#[unsafe(no_mangle)]
static CAPTURE_LIMIT: aya_ebpf::Global<u32> = aya_ebpf::Global::new(8192);
/// 1: track connect() of target processes to PostgreSQL ports (client side).
#[unsafe(no_mangle)]
static TRACK_CLIENTS: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
/// 1: track bind() of target processes to PostgreSQL ports (servers started later).
#[unsafe(no_mangle)]
static TRACK_SERVERS: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
/// Offset of child_pid in sched_process_fork (from tracefs).
#[unsafe(no_mangle)]
static FORK_CHILD_PID_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(44);
/// Ring buffer size: past a quarter full, a record wakes userspace up.
#[unsafe(no_mangle)]
static RING_BYTES: aya_ebpf::Global<u64> = aya_ebpf::Global::new(16 << 20);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 << 20, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);
/// PostgreSQL connections: which (tgid, fd) to capture.
#[map]
static SOCKS: LruHashMap<SockKey, SockInfo> = LruHashMap::with_max_entries(65536, 0);
/// Listening sockets of PostgreSQL servers → their port.
#[map]
static LISTENERS: HashMap<SockKey, u32> = HashMap::with_max_entries(1024, 0);
/// Server ports (TCP port numbers, also the NNNN of Unix socket paths .s.PGSQL.NNNN).
#[map]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);
/// An accept() or connect() between its enter and exit, by thread.
#[map]
static PENDING: HashMap<u64, Pending> = HashMap::with_max_entries(16384, 0);
/// The connection a process accepted last, handed to the child it forks next.
#[map]
static LAST_ACCEPT: HashMap<u32, Accepted> = HashMap::with_max_entries(1024, 0);
/// Per tgid: 1 once the process may hold a PostgreSQL connection or listener. Never cleared
/// (a stale 1 after pid reuse only costs a SOCKS lookup); sized to pid_max by the loader.
#[map]
static HAS_SOCKS: Array<u8> = Array::with_max_entries(32768, 0);
/// Connection id allocator.
#[map]
static NEXT_CONN: Array<u64> = Array::with_max_entries(1, 0);
#[map]
static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

#[derive(Clone, Copy)]
#[repr(C)]
struct Pending {
    /// The socket address.
    ptr: u64,
    /// connect(): the address length; accept(): a pointer to it.
    count: u64,
    fd: u32,
    op: u8,
    _pad: [u8; 3],
}

#[derive(Clone, Copy)]
#[repr(C)]
struct Accepted {
    key: SockKey,
    info: SockInfo,
}

const OP_BUF: u8 = 1;
const OP_IOV: u8 = 2;
const OP_MSG: u8 = 3;
const OP_ACCEPT: u8 = 4;
const OP_CONNECT: u8 = 5;

#[inline(always)]
fn bump(index: u32) {
    pgbpf_common_ebpf::bump(&COUNTERS, index)
}

#[inline(always)]
fn add(index: u32, v: u64) {
    if let Some(c) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: this CPU's own slot.
        unsafe { *c += v };
    }
}

/// The 8-byte field at `offset` of the tracepoint's record, loaded directly (the verifier
/// allows reads of a tracepoint's context; a probe_read helper call costs more).
#[inline(always)]
fn field(ctx: &TracePointContext, offset: usize) -> u64 {
    // SAFETY: offsets below are those of the syscall tracepoints' format files, inside the
    // record the kernel passes.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(offset).cast::<u64>()) }
}

#[inline(always)]
fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // Syscall tracepoint arguments are 8-byte fields from offset 16.
    field(ctx, 16 + 8 * n)
}

#[inline(always)]
fn ret(ctx: &TracePointContext) -> i64 {
    // `ret` of every sys_exit_* tracepoint, at offset 16.
    field(ctx, 16) as i64
}

/// False only when `tgid` certainly holds no PostgreSQL socket (the common case, cheap).
#[inline(always)]
fn may_have_socks(tgid: u32) -> bool {
    HAS_SOCKS.get(tgid).is_none_or(|&v| v != 0)
}

#[inline(always)]
fn mark_has_socks(tgid: u32) {
    if let Some(v) = HAS_SOCKS.get_ptr_mut(tgid) {
        // SAFETY: array value pointer.
        unsafe { *v = 1 };
    }
}

#[inline(always)]
fn key_of(tgid: u32, fd: u64) -> SockKey {
    SockKey {
        tgid,
        fd: fd as u32,
    }
}

#[inline(always)]
fn ids() -> (u64, u32) {
    let id = bpf_get_current_pid_tgid();
    (id, (id >> 32) as u32)
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// Offsets in `struct pt_regs` of the registers that hold a syscall's number and first three
/// arguments after it began (aya-build sets `bpf_target_arch` to the host's architecture).
/// Constants, because the verifier checks loads from a BTF-typed pointer at fixed offsets only.
#[cfg(bpf_target_arch = "aarch64")]
mod regs {
    /// syscallno (an s32), orig_x0 (x0 is overwritten by the result), x1, x2.
    pub const NR: usize = 280;
    pub const ARGS: [usize; 3] = [272, 8, 16];
    pub const READ: u32 = 63;
    pub const WRITE: u32 = 64;
    pub const READV: u32 = 65;
    pub const WRITEV: u32 = 66;
    pub const SENDTO: u32 = 206;
    pub const RECVFROM: u32 = 207;
    pub const SENDMSG: u32 = 211;
    pub const RECVMSG: u32 = 212;
}
#[cfg(not(bpf_target_arch = "aarch64"))]
mod regs {
    /// x86_64: orig_ax, di, si, dx.
    pub const NR: usize = 120;
    pub const ARGS: [usize; 3] = [112, 104, 96];
    pub const READ: u32 = 0;
    pub const WRITE: u32 = 1;
    pub const READV: u32 = 19;
    pub const WRITEV: u32 = 20;
    pub const SENDTO: u32 = 44;
    pub const RECVFROM: u32 = 45;
    pub const SENDMSG: u32 = 46;
    pub const RECVMSG: u32 = 47;
}

/// The current syscall's number and first three arguments, from the task's saved user
/// registers. Exit tracepoints carry only the return value and socket tracepoints no syscall
/// detail at all; reading them here spares an enter program and a per-thread map update for
/// every read and write.
#[inline(always)]
fn syscall_regs() -> Option<(u32, [u64; 3])> {
    // SAFETY: helpers on the current task. The verifier types `regs` as the kernel's
    // struct pt_regs (BTF), so plain loads of its fields are allowed and checked; they cost
    // far less than a probe_read per register.
    unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const u8;
        if regs.is_null() {
            return None;
        }
        let load = |offset: usize| core::ptr::read_volatile(regs.add(offset).cast::<u64>());
        Some((
            core::ptr::read_volatile(regs.add(regs::NR).cast::<u32>()),
            [
                load(regs::ARGS[0]),
                load(regs::ARGS[1]),
                load(regs::ARGS[2]),
            ],
        ))
    }
}

/// How the data of syscall `nr` moving bytes in direction `dir` is laid out, if it is one of
/// the read and write families (the socket tracepoints also fire for sendfile, splice,
/// io_uring and the kernel's own sockets, which are not captured).
#[inline(always)]
fn data_op(nr: u32, dir: u8) -> Option<u8> {
    match (nr, dir) {
        (regs::READ | regs::RECVFROM, DIR_READ) | (regs::WRITE | regs::SENDTO, DIR_WRITE) => {
            Some(OP_BUF)
        }
        (regs::READV, DIR_READ) | (regs::WRITEV, DIR_WRITE) => Some(OP_IOV),
        (regs::RECVMSG, DIR_READ) | (regs::SENDMSG, DIR_WRITE) => Some(OP_MSG),
        _ => None,
    }
}

#[inline(always)]
fn take_pending(id: u64) -> Option<Pending> {
    // SAFETY: copied out before removal.
    let p = unsafe { PENDING.get(&id) }.copied()?;
    let _ = PENDING.remove(&id);
    Some(p)
}

/// Writes a record header field by field (a whole-struct assignment compiles to a memset
/// call, which showed in profiles).
#[inline(always)]
fn fill_header(h: *mut RecordHeader, kind: u8, key: &SockKey, tid: u32, info: &SockInfo, ts: u64) {
    // SAFETY: `h` points at a header in this CPU's scratch value or in a ring reservation.
    unsafe {
        (*h).ts_ns = ts;
        (*h).conn_id = info.conn_id;
        (*h).len = 0;
        (*h).lost = [0, 0];
        (*h).tgid = key.tgid;
        (*h).tid = tid;
        (*h).fd = key.fd;
        (*h).captured = 0;
        (*h).port = info.port;
        (*h).kind = kind;
        (*h).role = info.role;
        (*h).dir = 0;
        (*h)._pad = 0;
    }
}

/// Fills the scratch header for a record of `kind` on `key`.
#[inline(always)]
fn header(s: *mut Scratch, kind: u8, key: &SockKey, tid: u32, info: &SockInfo, ts: u64) {
    // SAFETY: `s` is this CPU's scratch value.
    fill_header(unsafe { &mut (*s).header }, kind, key, tid, info, ts);
}

/// No wakeup per record (that costs more than the capture): userspace drains the ring every
/// 50 ms, or sooner once it is a quarter full.
#[inline(always)]
fn wakeup_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA) > RING_BYTES.load() / 4 {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Sends the scratch record with `captured` payload bytes; false when the ring is full.
#[inline(always)]
fn send(s: *mut Scratch, captured: u32) -> bool {
    let mut n = captured as usize;
    if n > CAPTURE_MAX {
        n = CAPTURE_MAX;
    }
    // SAFETY: HEADER_BYTES + n <= size_of::<Scratch>(), all inside this CPU's scratch value.
    let bytes = unsafe { core::slice::from_raw_parts(s as *const u8, HEADER_BYTES + n) };
    EVENTS.output(bytes, wakeup_flags()).is_ok()
}

/// Copies `len` bytes of user memory at `src` to the payload at `off`.
#[inline(always)]
fn copy_user(s: *mut Scratch, off: usize, src: u64, len: usize) -> bool {
    // Masks bound both numbers for the verifier: off < 8192 and len <= 8192 keep the copy
    // inside the 16 KiB payload.
    let off = off & (CAPTURE_MAX_VECTORED - 1);
    if len > CAPTURE_MAX_VECTORED || len == 0 {
        return len == 0;
    }
    // SAFETY: destination inside the scratch payload (bounds above); source is user memory.
    unsafe {
        let dst = (*s).data.as_mut_ptr().add(off);
        probe_read_user_raw(dst.cast(), len as u32, src as *const _) == 0
    }
}

/// A DATA record with room for N payload bytes, reserved in the ring buffer itself.
#[repr(C)]
struct Sized<const N: usize> {
    header: RecordHeader,
    data: [u8; N],
}

/// What one read or write moved, on which connection.
struct Moved<'a> {
    key: SockKey,
    tid: u32,
    info: &'a SockInfo,
    dir: u8,
    ts: u64,
    /// Bytes the syscall moved.
    len: u64,
}

/// Sends a DATA record with the first `n` (<= CAPTURE_MAX) bytes at `buf` (user memory), read
/// straight into a ring buffer reservation of the smallest size class that holds them: no
/// per-CPU scratch copy, no second copy into the ring. Returns the bytes captured, or None
/// when the ring is full.
#[inline(always)]
fn send_buffer(m: &Moved, buf: u64, n: u64) -> Option<u64> {
    // The reservation's size must be a constant for the verifier: a few classes keep the
    // wasted ring space small for the short messages of OLTP traffic.
    if n <= 128 {
        send_sized::<128>(m, buf, n)
    } else if n <= 1024 {
        send_sized::<1024>(m, buf, n)
    } else if n <= 4096 {
        send_sized::<4096>(m, buf, n)
    } else {
        send_sized::<CAPTURE_MAX>(m, buf, n)
    }
}

#[inline(always)]
fn send_sized<const N: usize>(m: &Moved, buf: u64, n: u64) -> Option<u64> {
    let mut entry = EVENTS.reserve::<Sized<N>>(0)?;
    let rec = entry.as_mut_ptr();
    let n = if n > N as u64 { N as u64 } else { n };
    // SAFETY: `rec` is this program's exclusive reservation of size_of::<Sized<N>>() bytes;
    // n <= N keeps the user copy inside its payload.
    let captured = unsafe {
        fill_header(&mut (*rec).header, KIND_DATA, &m.key, m.tid, m.info, m.ts);
        let ok =
            probe_read_user_raw((*rec).data.as_mut_ptr().cast(), n as u32, buf as *const _) == 0;
        let captured = if ok { n } else { 0 };
        (*rec).header.dir = m.dir;
        (*rec).header.len = m.len;
        (*rec).header.captured = captured as u32;
        (*rec).header.lost = m.info.lost;
        captured
    };
    entry.submit(wakeup_flags());
    Some(captured)
}

/// Sends a DATA record of a vectored call (iovecs at `iov`, `count` of them), assembled in
/// the per-CPU scratch buffer. Returns the bytes captured, or None when the ring is full.
#[inline(always)]
fn send_vectored(m: &Moved, iov: u64, count: u64, want: u64) -> Option<u64> {
    let s = SCRATCH.get_ptr_mut(0)?;
    header(s, KIND_DATA, &m.key, m.tid, m.info, m.ts);
    let mut captured: u64 = 0;
    let mut i = 0u32;
    while i < MAX_IOVECS {
        if (i as u64) >= count || captured >= want {
            break;
        }
        let at = iov + 16 * i as u64;
        // SAFETY: user memory (struct iovec { base, len }), read by helper.
        let base = unsafe { bpf_probe_read_user(at as *const u64) }.unwrap_or(0);
        // SAFETY: as above.
        let len = unsafe { bpf_probe_read_user((at + 8) as *const u64) }.unwrap_or(0);
        let n = len.min(want - captured);
        if !copy_user(s, captured as usize, base, n as usize) {
            break;
        }
        captured += n;
        i += 1;
    }
    if i == MAX_IOVECS && (i as u64) < count && captured < want {
        bump(counter::IOVECS_SKIPPED);
    }
    // SAFETY: this CPU's scratch header.
    unsafe {
        (*s).header.dir = m.dir;
        (*s).header.len = m.len;
        (*s).header.captured = captured as u32;
        (*s).header.lost = m.info.lost;
    }
    send(s, captured as u32).then_some(captured)
}

/// A read or write syscall's exit: `ret` bytes moved.
#[inline(always)]
fn exit_data(ctx: &TracePointContext, op: u8, dir: u8) -> u32 {
    // The result first: a load from the context, cheaper than anything else here.
    let moved = ret(ctx);
    if moved <= 0 {
        return 0;
    }
    let (id, tgid) = ids();
    if !may_have_socks(tgid) {
        return 0;
    }
    let Some((_, args)) = syscall_regs() else {
        return 0;
    };
    capture(id, tgid, moved as u64, op, dir, args);
    0
}

/// sock_recvmsg or sock_sendmsg of a socket finished (sock:sock_{recv,send}_length; raw
/// tracepoint arguments: the sock, the result, the flags): when the syscall under it is a read
/// or write of a PostgreSQL connection, capture it. Unlike the syscall tracepoints these fire
/// for socket I/O only, and a raw tracepoint calls the program directly, without building a
/// perf record first.
#[inline(always)]
fn sock_data(ctx: &RawTracePointContext, dir: u8) -> i32 {
    // SAFETY: both tracepoints have three arguments, each widened to a u64.
    let (moved, flags) = unsafe {
        let args = ctx.as_ptr().cast::<u64>();
        (*args.add(1) as i32, *args.add(2) as i32)
    };
    // A peek leaves the bytes to be read again.
    if moved <= 0 || (dir == DIR_READ && flags & MSG_PEEK != 0) {
        return 0;
    }
    let (id, tgid) = ids();
    if !may_have_socks(tgid) {
        return 0;
    }
    let Some((nr, args)) = syscall_regs() else {
        return 0;
    };
    if let Some(op) = data_op(nr, dir) {
        capture(id, tgid, moved as u64, op, dir, args);
    }
    0
}

/// Sends the bytes a read or write moved (`moved`, with the syscall's arguments `fd`, buffer or
/// iovecs or msghdr, count) when `fd` is a PostgreSQL connection of `tgid`.
#[inline(always)]
fn capture(id: u64, tgid: u32, moved: u64, op: u8, dir: u8, [fd, ptr, count]: [u64; 3]) {
    let key = key_of(tgid, fd);
    let Some(info) = SOCKS.get_ptr_mut(&key) else {
        return;
    };
    // SAFETY: `info` is a map value pointer, valid during this program.
    let snapshot = unsafe { *info };
    // Stamped at the end of the transfer: when a read's data arrived, when a write was handed
    // to the kernel (PostgreSQL's sockets are non-blocking, so that is also when it began).
    let m = Moved {
        key,
        tid: id as u32,
        info: &snapshot,
        dir,
        ts: now(),
        len: moved,
    };
    let want = moved.min(CAPTURE_LIMIT.load() as u64);
    let sent = match op {
        OP_BUF => send_buffer(&m, ptr, want.min(CAPTURE_MAX as u64)),
        OP_IOV => send_vectored(&m, ptr, count, want.min(CAPTURE_MAX_VECTORED as u64)),
        OP_MSG => {
            // struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
            // SAFETY: user memory, read by helper.
            let iov = unsafe { bpf_probe_read_user((ptr + 16) as *const u64) }.unwrap_or(0);
            // SAFETY: as above.
            let n = unsafe { bpf_probe_read_user((ptr + 24) as *const u64) }.unwrap_or(0);
            send_vectored(&m, iov, n, want.min(CAPTURE_MAX_VECTORED as u64))
        }
        _ => return,
    };
    match sent {
        Some(captured) => {
            if captured < moved {
                bump(counter::TRUNCATED);
            }
            // The lost bytes travelled with this record: take them off the connection.
            // SAFETY: map value pointer; atomic adds of the negated amounts.
            unsafe {
                if snapshot.lost[0] != 0 {
                    atomic_add(&mut (*info).lost[0], snapshot.lost[0].wrapping_neg());
                }
                if snapshot.lost[1] != 0 {
                    atomic_add(&mut (*info).lost[1], snapshot.lost[1].wrapping_neg());
                }
            }
        }
        None => {
            bump(counter::LOST_RECORDS);
            add(counter::LOST_BYTES, moved);
            // SAFETY: map value pointer.
            unsafe { atomic_add(&mut (*info).lost[(dir & 1) as usize], moved) };
        }
    }
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv(ctx: RawTracePointContext) -> i32 {
    sock_data(&ctx, DIR_READ)
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send(ctx: RawTracePointContext) -> i32 {
    sock_data(&ctx, DIR_WRITE)
}

macro_rules! data_syscall {
    ($exit:ident, $op:expr, $dir:expr) => {
        #[tracepoint]
        pub fn $exit(ctx: TracePointContext) -> u32 {
            exit_data(&ctx, $op, $dir)
        }
    };
}

data_syscall!(exit_read, OP_BUF, DIR_READ);
data_syscall!(exit_write, OP_BUF, DIR_WRITE);
data_syscall!(exit_recvfrom, OP_BUF, DIR_READ);
data_syscall!(exit_sendto, OP_BUF, DIR_WRITE);
data_syscall!(exit_readv, OP_IOV, DIR_READ);
data_syscall!(exit_writev, OP_IOV, DIR_WRITE);
data_syscall!(exit_recvmsg, OP_MSG, DIR_READ);
data_syscall!(exit_sendmsg, OP_MSG, DIR_WRITE);

/// Sends an OPEN record with the socket address at `addr` (user memory).
#[inline(always)]
fn send_open(key: &SockKey, tid: u32, info: &SockInfo, addr: u64, addr_len: u64) {
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    header(s, KIND_OPEN, key, tid, info, now());
    let mut n = addr_len.min(ADDR_BYTES as u64) as u32;
    // SAFETY: n <= ADDR_BYTES, inside the payload; source is user memory.
    if addr == 0
        || unsafe { probe_read_user_raw((*s).data.as_mut_ptr().cast(), n, addr as *const _) } != 0
    {
        n = 0;
    }
    // SAFETY: this CPU's scratch header.
    unsafe { (*s).header.captured = n };
    if !send(s, n) {
        bump(counter::LOST_RECORDS);
    }
}

#[inline(always)]
fn new_conn_id() -> u64 {
    let Some(p) = NEXT_CONN.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: the one map value; atomic increment, then read (ids need only be unique per
    // connection, and two CPUs racing here each see their own increment reflected).
    unsafe {
        atomic_add(p, 1);
        *p
    }
}

/// A new connection's entry with a fresh id.
#[inline(always)]
fn new_connection(role: u8, port: u32) -> SockInfo {
    SockInfo {
        conn_id: new_conn_id(),
        role,
        port,
        ..SockInfo::default()
    }
}

/// Puts a descriptor in the socket table; false (and counted) when the table is full.
#[inline(always)]
fn track(key: &SockKey, info: &SockInfo) -> bool {
    if SOCKS.insert(key, info, 0).is_err() {
        bump(counter::SOCKETS_FULL);
        return false;
    }
    mark_has_socks(key.tgid);
    true
}

#[tracepoint]
pub fn enter_accept(ctx: TracePointContext) -> u32 {
    let (id, tgid) = ids();
    let fd = arg(&ctx, 0);
    if LISTENERS.get_ptr(&key_of(tgid, fd)).is_none() {
        return 0;
    }
    let p = Pending {
        ptr: arg(&ctx, 1),
        count: arg(&ctx, 2),
        fd: fd as u32,
        op: OP_ACCEPT,
        _pad: [0; 3],
    };
    let _ = PENDING.insert(&id, &p, 0);
    0
}

#[tracepoint]
pub fn exit_accept(ctx: TracePointContext) -> u32 {
    let (id, tgid) = ids();
    let Some(p) = take_pending(id) else {
        return 0;
    };
    let fd = ret(&ctx);
    if p.op != OP_ACCEPT || fd < 0 {
        return 0;
    }
    // SAFETY: copied out.
    let port = unsafe { LISTENERS.get(&key_of(tgid, p.fd as u64)) }
        .copied()
        .unwrap_or(0);
    let key = key_of(tgid, fd as u64);
    let info = new_connection(ROLE_SERVER, port);
    if !track(&key, &info) {
        return 0;
    }
    let _ = LAST_ACCEPT.insert(&tgid, &Accepted { key, info }, 0);
    // The peer address: accept's addrlen argument points at its length.
    let len = if p.count != 0 {
        // SAFETY: user memory, read by helper.
        unsafe { bpf_probe_read_user(p.count as *const u32) }.unwrap_or(0) as u64
    } else {
        0
    };
    send_open(&key, id as u32, &info, p.ptr, len);
    0
}

/// The server port a socket address points at, if it is a PostgreSQL one (TCP port in
/// PORTS, or a Unix socket path ending in .s.PGSQL.NNNN with NNNN in PORTS).
#[inline(always)]
fn pg_port_of(addr: u64, addr_len: u64) -> Option<u32> {
    // SAFETY: user memory, read by helper.
    let family = unsafe { bpf_probe_read_user(addr as *const u16) }.ok()?;
    let port = match family {
        AF_INET | AF_INET6 => {
            // SAFETY: as above; sin_port/sin6_port at offset 2, network byte order.
            let p = unsafe { bpf_probe_read_user((addr + 2) as *const u16) }.ok()?;
            u16::from_be(p)
        }
        AF_UNIX => unix_pg_port(addr, addr_len)?,
        _ => return None,
    };
    PORTS.get_ptr(&port).map(|_| port as u32)
}

/// NNNN of a Unix socket path ending in ".s.PGSQL.NNNN".
#[inline(always)]
fn unix_pg_port(addr: u64, addr_len: u64) -> Option<u16> {
    let mut path = [0u8; 128];
    // SAFETY: user memory into a stack buffer of 128 bytes (sun_path is 108).
    let ok = unsafe { probe_read_user_raw(path.as_mut_ptr().cast(), 110, addr as *const _) };
    if ok != 0 {
        return None;
    }
    // Path bytes start at 2; its end is the first NUL or addr_len.
    let mut end = 2usize;
    let limit = (addr_len as usize).min(110);
    while end < limit && end < 110 {
        if path[end & 127] == 0 {
            break;
        }
        end += 1;
    }
    // Digits backwards from the end.
    let mut port: u32 = 0;
    let mut scale: u32 = 1;
    let mut i = end;
    let mut digits = 0;
    while digits < 5 && i > 2 {
        let c = path[(i - 1) & 127];
        if !c.is_ascii_digit() {
            break;
        }
        port += (c - b'0') as u32 * scale;
        scale *= 10;
        i -= 1;
        digits += 1;
    }
    if digits == 0 || i < 11 || port > 65535 {
        return None;
    }
    let marker = b".s.PGSQL.";
    let mut j = 0;
    while j < 9 {
        if path[(i - 9 + j) & 127] != marker[j] {
            return None;
        }
        j += 1;
    }
    Some(port as u16)
}

#[tracepoint]
pub fn enter_connect(ctx: TracePointContext) -> u32 {
    if TRACK_CLIENTS.load() == 0 || !current_is_target() {
        return 0;
    }
    let (id, tgid) = ids();
    let fd = arg(&ctx, 0);
    let (addr, addr_len) = (arg(&ctx, 1), arg(&ctx, 2));
    let Some(port) = pg_port_of(addr, addr_len) else {
        return 0;
    };
    let key = key_of(tgid, fd);
    let info = new_connection(ROLE_CLIENT, port);
    // Marked now, so no byte is missed; a failed connect() unmarks it at exit.
    if !track(&key, &info) {
        return 0;
    }
    let p = Pending {
        ptr: addr,
        count: addr_len,
        fd: fd as u32,
        op: OP_CONNECT,
        _pad: [0; 3],
    };
    let _ = PENDING.insert(&id, &p, 0);
    send_open(&key, id as u32, &info, addr, addr_len);
    0
}

#[tracepoint]
pub fn exit_connect(ctx: TracePointContext) -> u32 {
    let (id, tgid) = ids();
    let Some(p) = take_pending(id) else {
        return 0;
    };
    let r = ret(&ctx);
    if p.op == OP_CONNECT && r < 0 && r != -EINPROGRESS {
        close_fd(tgid, id as u32, p.fd as u64);
    }
    0
}

#[tracepoint]
pub fn enter_bind(ctx: TracePointContext) -> u32 {
    if TRACK_SERVERS.load() == 0 || !current_is_target() {
        return 0;
    }
    let (_, tgid) = ids();
    let fd = arg(&ctx, 0);
    if let Some(port) = pg_port_of(arg(&ctx, 1), arg(&ctx, 2)) {
        let _ = LISTENERS.insert(&key_of(tgid, fd), &port, 0);
        mark_has_socks(tgid);
    }
    0
}

/// Forgets a descriptor; a CLOSE record ends the connection unless a child took it over.
#[inline(always)]
fn close_fd(tgid: u32, tid: u32, fd: u64) {
    if !may_have_socks(tgid) {
        return;
    }
    let key = key_of(tgid, fd);
    let _ = LISTENERS.remove(&key);
    // SAFETY: copied out before removal.
    let Some(info) = (unsafe { SOCKS.get(&key) }).copied() else {
        return;
    };
    let _ = SOCKS.remove(&key);
    // SAFETY: copied out.
    if let Some(a) = unsafe { LAST_ACCEPT.get(&tgid) }.copied()
        && a.key.fd == key.fd
    {
        let _ = LAST_ACCEPT.remove(&tgid);
    }
    if info.handed_off != 0 {
        return;
    }
    let Some(s) = SCRATCH.get_ptr_mut(0) else {
        return;
    };
    header(s, KIND_CLOSE, &key, tid, &info, now());
    if !send(s, 0) {
        bump(counter::LOST_RECORDS);
    }
}

#[tracepoint]
pub fn enter_close(ctx: TracePointContext) -> u32 {
    let (id, tgid) = ids();
    close_fd(tgid, id as u32, arg(&ctx, 0));
    0
}

/// A postmaster forks the backend for the connection it just accepted: the child gets the
/// descriptor's entry.
#[tracepoint]
pub fn on_fork(ctx: TracePointContext) -> u32 {
    let (_, parent) = ids();
    // SAFETY: copied out.
    let Some(a) = (unsafe { LAST_ACCEPT.get(&parent) }).copied() else {
        return 0;
    };
    let _ = LAST_ACCEPT.remove(&parent);
    // SAFETY: offset from the tracepoint's format file.
    let child = unsafe { ctx.read_at::<u32>(FORK_CHILD_PID_OFFSET.load() as usize) }.unwrap_or(0);
    if child == 0 {
        return 0;
    }
    let key = SockKey {
        tgid: child,
        fd: a.key.fd,
    };
    if !track(&key, &a.info) {
        return 0;
    }
    if let Some(info) = SOCKS.get_ptr_mut(&a.key) {
        // SAFETY: map value pointer.
        unsafe { (*info).handed_off = 1 };
    }
    0
}

pgbpf_common_ebpf::program_support!();
