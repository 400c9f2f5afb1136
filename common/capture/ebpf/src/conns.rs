//! The connection table: which (tgid, fd) are traced connections, kept by accept() on a
//! PostgreSQL listener (server side; the backend forked right after inherits the entry),
//! connect() to a PostgreSQL port or socket path (client side), bind() of a server started
//! later, close() and fork; userspace adds the connections open at start.

use aya_ebpf::{
    helpers::{bpf_probe_read_user, generated::bpf_probe_read_user_str as probe_read_user_str_raw},
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap},
    programs::TracePointContext,
};
use pgbpf_capture_ebpf::{KIND_CLOSE, ROLE_CLIENT, ROLE_SERVER, SockInfo, SockKey, counter};
use pgbpf_common_ebpf::{atomic_add, counters::bump, syscall, target::current_is_target};

use crate::{
    FOLLOW_ACCEPT_FORK, FORK_CHILD_PID_OFFSET, TRACK_CLIENTS, TRACK_SERVERS, UNIX_PG_PATHS,
    emit::{header, scratch, send, send_open},
    ids, now,
};

const EINPROGRESS: i64 = 115;
const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// traced connections: which (tgid, fd) to capture.
#[map]
pub static SOCKS: LruHashMap<SockKey, SockInfo> = LruHashMap::with_max_entries(65536, 0);
/// Listening sockets of servers → their port.
#[map]
static LISTENERS: HashMap<SockKey, u32> = HashMap::with_max_entries(1024, 0);
/// Server ports (TCP port numbers, also the NNNN of PostgreSQL's socket paths .s.PGSQL.NNNN).
#[map]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(64, 0);
/// An accept() or connect() between its enter and exit, by thread.
#[map]
static PENDING: HashMap<u64, Pending> = HashMap::with_max_entries(16384, 0);
/// The connection a process accepted last, handed to the child it forks next.
#[map]
static LAST_ACCEPT: HashMap<u32, Accepted> = HashMap::with_max_entries(1024, 0);
/// Per tgid: 1 once the process may hold a traced connection or listener. Never cleared
/// (a stale 1 after pid reuse only costs a SOCKS lookup); sized to pid_max by the loader.
#[map]
static HAS_SOCKS: Array<u8> = Array::with_max_entries(32768, 0);
/// Connection id allocator.
#[map]
static NEXT_CONN: Array<u64> = Array::with_max_entries(1, 0);

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

/// What an accept() or connect() between its enter and exit is.
const OP_ACCEPT: u8 = 4;
const OP_CONNECT: u8 = 5;

/// False only when `tgid` certainly holds no traced socket (the common case, cheap).
#[inline(always)]
pub fn may_have_socks(tgid: u32) -> bool {
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
pub fn key_of(tgid: u32, fd: u64) -> SockKey {
    SockKey {
        tgid,
        fd: fd as u32,
    }
}

#[inline(always)]
fn take_pending(id: u64) -> Option<Pending> {
    // SAFETY: copied out before removal.
    let p = unsafe { PENDING.get(&id) }.copied()?;
    let _ = PENDING.remove(&id);
    Some(p)
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
    let fd = syscall::arg(&ctx, 0);
    if LISTENERS.get_ptr(&key_of(tgid, fd)).is_none() {
        return 0;
    }
    let p = Pending {
        ptr: syscall::arg(&ctx, 1),
        count: syscall::arg(&ctx, 2),
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
    let fd = syscall::ret(&ctx);
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
    if FOLLOW_ACCEPT_FORK.load() != 0 {
        let _ = LAST_ACCEPT.insert(&tgid, &Accepted { key, info }, 0);
    }
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

/// The server port a socket address points at, if it is a traced server's (TCP port in
/// PORTS, or with UNIX_PG_PATHS a Unix socket path ending in .s.PGSQL.NNNN with NNNN in PORTS).
#[inline(always)]
fn server_port_of(addr: u64, addr_len: u64) -> Option<u32> {
    // SAFETY: user memory, read by helper.
    let family = unsafe { bpf_probe_read_user(addr as *const u16) }.ok()?;
    let port = match family {
        AF_INET | AF_INET6 => {
            // SAFETY: as above; sin_port/sin6_port at offset 2, network byte order.
            let p = unsafe { bpf_probe_read_user((addr + 2) as *const u16) }.ok()?;
            u16::from_be(p)
        }
        AF_UNIX if UNIX_PG_PATHS.load() != 0 => unix_pg_port(addr, addr_len)?,
        _ => return None,
    };
    PORTS.get_ptr(&port).map(|_| port as u32)
}

/// NNNN of a Unix socket path ending in ".s.PGSQL.NNNN".
///
/// Written for the verifier: the helper that copies the path up to its NUL returns its
/// length as one number, which the verifier follows as a range. Finding the NUL with a loop
/// gave it one constant end per iteration, each followed through the rest of the function:
/// 117 ms to load.
#[inline(always)]
fn unix_pg_port(addr: u64, addr_len: u64) -> Option<u16> {
    // sun_path: 108 bytes after the 2-byte family.
    const SUN_PATH: u32 = 108;
    let mut path = [0u8; 128];
    // SAFETY: user memory into a stack buffer of 128 bytes, at most 108 of them written.
    let copied = unsafe {
        probe_read_user_str_raw(path.as_mut_ptr().cast(), SUN_PATH, (addr + 2) as *const _)
    };
    if copied <= 1 {
        return None;
    }
    // Bytes of the path: up to its NUL, and within addr_len.
    let end = ((copied - 1) as u64).min(addr_len.saturating_sub(2)) as usize;
    // Byte `j` counted back from the end (0: the last); masks keep the verifier's bounds.
    let back = |j: usize| path[end.wrapping_sub(1 + j) & 127];
    let mut port: u32 = 0;
    let mut scale: u32 = 1;
    let mut digits = 0;
    while digits < 5 && digits < end {
        let c = back(digits);
        if !c.is_ascii_digit() {
            break;
        }
        port += (c - b'0') as u32 * scale;
        scale *= 10;
        digits += 1;
    }
    let marker = b".s.PGSQL.";
    if digits == 0 || port > 65535 || end < digits + marker.len() {
        return None;
    }
    // The marker before the digits, read backwards from its last byte.
    let mut m = 0;
    while m < marker.len() {
        if back(digits + m) != marker[marker.len() - 1 - m] {
            return None;
        }
        m += 1;
    }
    Some(port as u16)
}

#[tracepoint]
pub fn enter_connect(ctx: TracePointContext) -> u32 {
    if TRACK_CLIENTS.load() == 0 || !current_is_target() {
        return 0;
    }
    let (id, tgid) = ids();
    let fd = syscall::arg(&ctx, 0);
    let (addr, addr_len) = (syscall::arg(&ctx, 1), syscall::arg(&ctx, 2));
    let Some(port) = server_port_of(addr, addr_len) else {
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
    let r = syscall::ret(&ctx);
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
    let fd = syscall::arg(&ctx, 0);
    if let Some(port) = server_port_of(syscall::arg(&ctx, 1), syscall::arg(&ctx, 2)) {
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
    let Some(s) = scratch() else {
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
    close_fd(tgid, id as u32, syscall::arg(&ctx, 0));
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
