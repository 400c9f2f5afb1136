//! query_latency's kernel programs.
//!
//! By default the query context (`pg_probe`: query__start/done and PortalRun's
//! query__execute__start/done, or uprobes on PortalRun) keeps each backend's current
//! statement from its start, and a statement is sent when it finishes: four USDT hits per
//! statement of the simple protocol, two of the extended one.
//!
//! With `--requests` a statement is timed per request, from the first bytes of the client's
//! request (the socket layer's `sock_recv_length`, or the exit of recvfrom) to the
//! ReadyForQuery that ends it (`sock_send_length`, or the exit of sendto, whose last six bytes
//! are `Z 0 0 0 5 _`), with the text read from debug_query_string where PortalRun finishes (its
//! `query__execute__done` USDT site): one uprobe hit per statement, but the socket hooks run
//! for every socket read and write on the machine. On TLS connections the request's end is
//! encrypted: there each statement is sent when its PortalRun finishes.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_F_NO_PREALLOC,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_probe_read_kernel_buf, bpf_probe_read_user,
    },
    macros::{map, raw_tracepoint, tracepoint, uprobe},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RawTracePointContext, TracePointContext},
};
use pgbpf_common_ebpf::counters::bump;
use pgbpf_common_ebpf::query::{
    PROTOCOL_EXTENDED, PROTOCOL_SIMPLE, PROTOCOL_UNKNOWN, QueryContext, Tracked,
    on_statement_probe, query_copy_text,
};
use pgbpf_common_ebpf::{
    regs::{self, nr},
    ring, syscall,
    target::current_is_target,
    usdt::{usdt_arg, usdt_spec},
};
use query_latency_ebpf::{PROTOCOL_TLS, counter};

// Every counter has a slot in the shared map.
const _: () = assert!(counter::COUNT <= pgbpf_common_ebpf::counters::SLOTS);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// A ring buffer record with room for `N` bytes of text: the layout of `QueryEvent`, cut short.
#[repr(C)]
struct SizedEvent<const N: usize> {
    pid: u32,
    protocol: u8,
    truncated: u8,
    _pad: u16,
    text_len: u32,
    _pad2: u32,
    duration_ns: u64,
    cgroup_id: u64,
    text: [u8; N],
}

const _: () =
    assert!(core::mem::offset_of!(SizedEvent<64>, text) == query_latency_ebpf::QUERY_EVENT_HEADER);

#[inline(always)]
fn send_sized<const N: usize>(q: &QueryContext, duration_ns: u64) {
    let Some(mut slot) = EVENTS.reserve::<SizedEvent<N>>(0) else {
        bump(counter::RINGBUF_FULL);
        return;
    };
    let ev = slot.as_mut_ptr();
    // SAFETY: writes into the reserved record, field by field (too big for the stack).
    unsafe {
        (*ev).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*ev).protocol = q.protocol;
        (*ev).truncated = q.truncated;
        (*ev).text_len = q.text_len;
        (*ev).duration_ns = duration_ns;
        (*ev).cgroup_id = bpf_get_current_cgroup_id();
        // Copy only the text in use.
        let n = (q.text_len as usize + 1).min(N);
        let dst = &mut (*ev).text;
        if bpf_probe_read_kernel_buf(q.text.as_ptr(), &mut dst[..n]).is_err() {
            (*ev).text_len = 0;
        }
    }
    // No wakeup per statement (that costs more than the rest of the program): userspace
    // drains the buffer every 50 ms anyway.
    slot.submit(ring::NO_WAKEUP);
}

/// Sends one finished statement in the smallest record its text fits.
#[inline(always)]
fn send(q: &QueryContext, duration_ns: u64) {
    let n = q.text_len as usize + 1;
    if n <= 64 {
        send_sized::<64>(q, duration_ns)
    } else if n <= 128 {
        send_sized::<128>(q, duration_ns)
    } else if n <= 256 {
        send_sized::<256>(q, duration_ns)
    } else {
        send_sized::<{ query_latency_ebpf::QUERY_TEXT_CAP }>(q, duration_ns)
    }
}

fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

// ---- The query context (the default) ----

#[uprobe]
pub fn pg_probe(ctx: ProbeContext) -> u32 {
    match on_statement_probe(&ctx, |q| send(q, now().saturating_sub(q.start_ns))) {
        Tracked::ContextFull => bump(counter::CONTEXT_FULL),
        Tracked::DoneWithoutStart => bump(counter::DONE_WITHOUT_START),
        Tracked::Done => {}
    }
    0
}

// ---- Requests (`--requests`) ----

/// One backend's request: when it arrived, its protocol and the text of its first finished
/// statement (in `q`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Request {
    /// 1 from the request's first bytes to its ReadyForQuery.
    busy: u8,
    /// 1 once a statement of the request finished (its text is in `q`).
    statement: u8,
    _pad: [u8; 6],
    /// start_ns: the request's arrival; protocol: from its first byte.
    q: QueryContext,
}

/// The current request by backend (thread id). Allocated as backends appear (a backend's
/// entry is reused from request to request) and removed when they exit.
#[map]
static REQUESTS: HashMap<u32, Request> = HashMap::with_max_entries(16384, BPF_F_NO_PREALLOC);

/// Zeros to insert a new backend's entry from (a Request does not fit on the BPF stack).
#[map]
static REQUEST_ZERO: PerCpuArray<Request> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn request_of(tid: u32) -> Option<&'static mut Request> {
    if let Some(r) = REQUESTS.get_ptr_mut(&tid) {
        // SAFETY: a map value pointer, valid while this program runs; one backend, one CPU.
        return Some(unsafe { &mut *r });
    }
    let zero = REQUEST_ZERO.get_ptr(0)?;
    // SAFETY: this CPU's slot, never written.
    REQUESTS.insert(&tid, unsafe { &*zero }, 0).ok()?;
    // SAFETY: as above.
    REQUESTS.get_ptr_mut(&tid).map(|r| unsafe { &mut *r })
}

/// A request's protocol from its first byte: a Query message, an extended-protocol message, a
/// TLS record (handshake, alert or application data), or something else (a startup packet).
#[inline(always)]
fn classify(first: u8) -> u8 {
    match first {
        b'Q' => PROTOCOL_SIMPLE,
        b'P' | b'B' | b'E' | b'D' | b'S' | b'H' | b'C' | b'F' => PROTOCOL_EXTENDED,
        0x15..=0x17 => PROTOCOL_TLS,
        _ => PROTOCOL_UNKNOWN,
    }
}

/// Whether a request's end can be seen in the clear (its ReadyForQuery).
#[inline(always)]
fn plaintext(protocol: u8) -> bool {
    protocol == PROTOCOL_SIMPLE || protocol == PROTOCOL_EXTENDED
}

/// A target's socket read or write moved `moved` bytes.
#[inline(always)]
fn on_bytes(read: bool, moved: i64) {
    if moved <= 0 || !current_is_target() {
        return;
    }
    let Some((syscall_nr, [_fd, buf, _])) = regs::current_syscall() else {
        return;
    };
    // PostgreSQL's backends use recv and send; other calls' buffers are not looked into.
    let flat = if read {
        syscall_nr == nr::RECVFROM || syscall_nr == nr::READ
    } else {
        syscall_nr == nr::SENDTO || syscall_nr == nr::WRITE
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    if read {
        let Some(r) = request_of(tid) else {
            bump(counter::CONTEXT_FULL);
            return;
        };
        // A plaintext request runs to its ReadyForQuery; on a connection whose boundaries
        // cannot be seen, every read starts the clock again.
        if r.busy != 0 && plaintext(r.q.protocol) {
            return;
        }
        r.busy = 1;
        r.statement = 0;
        r.q.start_ns = now();
        // A backend serves one client connection: once TLS, always (a record's body, read
        // after its header, starts with any byte).
        if r.q.protocol != PROTOCOL_TLS {
            let first = if flat {
                // SAFETY: a user-space read the kernel checks.
                unsafe { bpf_probe_read_user(buf as *const u8) }.unwrap_or(0)
            } else {
                0
            };
            r.q.protocol = classify(first);
        }
        return;
    }
    if !flat || moved < 6 {
        return;
    }
    let Some(r) = REQUESTS.get_ptr_mut(&tid) else {
        return;
    };
    // SAFETY: a map value pointer, valid while this program runs.
    let r = unsafe { &mut *r };
    if r.busy == 0 || !plaintext(r.q.protocol) {
        return;
    }
    // ReadyForQuery ends every response and is flushed at once: the write's last six bytes.
    // SAFETY: as above.
    let Ok(tail) = (unsafe { bpf_probe_read_user((buf + moved as u64 - 6) as *const [u8; 6]) })
    else {
        return;
    };
    if tail[0] != b'Z' || tail[1] != 0 || tail[2] != 0 || tail[3] != 0 || tail[4] != 5 {
        return;
    }
    if r.statement != 0 {
        send(&r.q, now().saturating_sub(r.q.start_ns));
    }
    r.busy = 0;
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv(ctx: RawTracePointContext) -> i32 {
    on_bytes(true, sock_moved(&ctx));
    0
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send(ctx: RawTracePointContext) -> i32 {
    on_bytes(false, sock_moved(&ctx));
    0
}

/// Bytes a sock_{recv,send}_length moved (its arguments: the sock, the result, the flags);
/// a peek counts as nothing (the bytes stay to be read).
#[inline(always)]
fn sock_moved(ctx: &RawTracePointContext) -> i64 {
    const MSG_PEEK: i32 = 2;
    // SAFETY: both tracepoints have three arguments, each widened to a u64.
    let (moved, flags) = unsafe {
        let args = ctx.as_ptr().cast::<u64>();
        (*args.add(1) as i32, *args.add(2) as i32)
    };
    if flags & MSG_PEEK != 0 {
        0
    } else {
        moved as i64
    }
}

/// Before Linux 6.4 (no socket tracepoints): the exits of the calls PostgreSQL makes.
#[tracepoint]
pub fn exit_recvfrom(ctx: TracePointContext) -> u32 {
    on_bytes(true, syscall::ret(&ctx));
    0
}

#[tracepoint]
pub fn exit_sendto(ctx: TracePointContext) -> u32 {
    on_bytes(false, syscall::ret(&ctx));
    0
}

/// PortalRun finished a statement (its query__execute__done site; argument 0 is the value of
/// debug_query_string): keep the request's first text, or on a connection whose requests
/// cannot be seen end to end, send the statement now.
#[uprobe]
pub fn statement_done(ctx: ProbeContext) -> u32 {
    if !current_is_target() {
        return 0;
    }
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(r) = REQUESTS.get_ptr_mut(&tid) else {
        // No request seen: it began before the tool attached.
        bump(counter::DONE_WITHOUT_START);
        return 0;
    };
    // SAFETY: a map value pointer, valid while this program runs; one backend, one CPU.
    let r = unsafe { &mut *r };
    let plain = plaintext(r.q.protocol);
    if plain && (r.busy == 0 || r.statement != 0) {
        if r.busy == 0 {
            bump(counter::DONE_WITHOUT_START);
        }
        return 0;
    }
    let Some(spec) = usdt_spec(&ctx) else {
        return 0;
    };
    query_copy_text(&mut r.q, usdt_arg(&ctx, spec, 0).unwrap_or(0) as u64);
    if plain {
        r.statement = 1;
        return 0;
    }
    // TLS: the next statement of the same request (or the next request) starts now.
    let t = now();
    send(&r.q, t.saturating_sub(r.q.start_ns));
    r.q.start_ns = t;
    r.busy = 0;
    0
}

/// sched:sched_process_exit: a backend that exits leaves its request entry behind otherwise.
#[tracepoint]
pub fn forget_request(ctx: TracePointContext) -> u32 {
    let _ = REQUESTS.remove(&ctx.pid());
    0
}

pgbpf_common_ebpf::program_support!();
