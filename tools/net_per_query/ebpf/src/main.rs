//! net_per_query's kernel programs: the socket layer's `sock_recv_length` and
//! `sock_send_length` tracepoints (the bytes each call moved: transferred, not requested;
//! before Linux 6.4 the exits of recvfrom and sendto) and PostgreSQL's query__execute__start
//! USDT probe (PortalRun: simple statements and extended Executes alike). Per thread, on the
//! client's socket (the first it used): the bytes received while no statement runs
//! (debug_query_string NULL, read at each receive: no second probe per statement) are the
//! next one's request, those received while one runs are its own (COPY FROM STDIN); the first
//! PortalRun after a request begins its statement (later ones without a new request, nested
//! or of a multi-statement string, are part of it); the bytes sent from a statement's start
//! to the next one's are its response (its tail is flushed after it ends); before the first
//! statement and after the last, the connection's own (startup, authentication,
//! termination). A statement is one ring buffer event when the next starts or the process
//! exits.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::{map, raw_tracepoint, tracepoint, uprobe},
    maps::{HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{ProbeContext, RawTracePointContext, TracePointContext},
};
use net_per_query_ebpf::{
    DeviceCount, DeviceKey, MAX_DEVICES, MAX_PORTS, MAX_THREADS, NetEvent, NetState, PortKey,
    counter, direction, kind, probe,
};
use pgbpf_common_ebpf::{
    counters::bump,
    query_string::{read_statement, statement_running},
    ring, syscall,
    target::current_is_target,
    usdt::usdt_spec,
};

// Every counter has a slot in the shared map.
const _: () = assert!(counter::COUNT <= pgbpf_common_ebpf::counters::SLOTS);

/// Offsets in `struct sock_common` (from the kernel's BTF; set at load).
#[unsafe(no_mangle)]
static SOCK_FAMILY_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static SOCK_DADDR_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static SOCK_V6_DADDR_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);

/// `--dev`: offsets in `struct sk_buff`, `struct net_device` and `struct net` (from the
/// kernel's BTF; set at load with `--dev`).
#[unsafe(no_mangle)]
static SKB_LEN_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static SKB_DATA_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static SKB_HEAD_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static SKB_MAC_HEADER_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static SKB_NETWORK_HEADER_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static SKB_DEV_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static DEV_IFINDEX_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static DEV_NAME_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static DEV_NET_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
#[unsafe(no_mangle)]
static NET_INUM_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);

/// BPF_F_NO_PREALLOC: memory follows the threads met.
const NO_PREALLOC: u32 = 1;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);

/// Each traced thread's traffic being counted.
#[map]
static THREADS: HashMap<u32, NetState> = HashMap::with_max_entries(MAX_THREADS, NO_PREALLOC);

/// `--dev`: each device's packets and bytes per direction, PostgreSQL's among them.
#[map]
static DEVICES: PerCpuHashMap<DeviceKey, DeviceCount> =
    PerCpuHashMap::with_max_entries(MAX_DEVICES, NO_PREALLOC);

/// `--dev`: the traced servers' listening TCP ports (filled by userspace at attach).
#[map]
static PORTS: HashMap<PortKey, u8> = HashMap::with_max_entries(MAX_PORTS, 0);

/// `--dev`: the packet a device driver is being handed on this CPU (net_dev_start_xmit) and
/// its server-side port, counted at net_dev_xmit if the driver took it (the skb may be freed
/// by then: it is read before).
#[repr(C)]
#[derive(Clone, Copy)]
struct Xmit {
    skb: u64,
    port: u32,
    _pad: u32,
}

#[map]
static XMIT: PerCpuArray<Xmit> = PerCpuArray::with_max_entries(1, 0);

/// A zeroed state to insert from; never written.
#[map]
static EMPTY: PerCpuArray<NetState> = PerCpuArray::with_max_entries(1, 0);

#[inline(always)]
fn ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    ((id >> 32) as u32, id as u32)
}

/// The state of thread `tid`, made (zeroed) if it has none; None when the table is full.
#[inline(always)]
fn state(tid: u32) -> Option<&'static mut NetState> {
    if let Some(s) = THREADS.get_ptr_mut(&tid) {
        // SAFETY: a map value lives as long as the program runs; only this thread writes it.
        return Some(unsafe { &mut *s });
    }
    let empty = EMPTY.get_ptr(0)?;
    // SAFETY: this CPU's zeroed slot, read by the helper.
    if THREADS.insert(&tid, unsafe { &*empty }, 0).is_err() {
        bump(counter::THREADS_FULL);
        return None;
    }
    // SAFETY: as above.
    THREADS.get_ptr_mut(&tid).map(|s| unsafe { &mut *s })
}

/// Sends the statement counted, if there is one.
#[inline(always)]
fn send(e: &NetEvent) {
    if e.kind == 0 || (e.recv == 0 && e.sent == 0) {
        return;
    }
    if !ring::send_copy::<NetEvent, NetEvent>(&EVENTS, e) {
        bump(counter::RINGBUF_FULL);
    }
}

#[uprobe]
pub fn query_probe(ctx: ProbeContext) -> u32 {
    let Some(spec) = usdt_spec(&ctx) else {
        return 0;
    };
    if !current_is_target() {
        return 0;
    }
    let (tgid, tid) = ids();
    let Some(s) = state(tid) else {
        return 0;
    };
    if spec.probe_id != probe::EXECUTE || (s.current.kind == kind::STATEMENT && s.requested == 0) {
        return 0;
    }
    // A new request's statement: the previous one's response ended where it begins.
    send(&s.current);
    s.requested = 0;
    let e = &mut s.current;
    e.kind = kind::STATEMENT;
    e.tgid = tgid;
    e.tid = tid;
    // SAFETY: helper without arguments.
    e.start_ns = unsafe { bpf_ktime_get_ns() };
    e.recv = s.pending_recv;
    e.sent = 0;
    s.pending_recv = 0;
    e.query[0] = 0;
    (_, e.query_len, e.truncated) = read_statement(tgid, &mut e.query).fields();
    0
}

/// The peer of the client's socket `sk` into `e`.
#[inline(always)]
fn learn_client(e: &mut NetEvent, sk: u64) {
    const AF_INET: u16 = 2;
    const AF_INET6: u16 = 10;
    let at = |off: u32| (sk + u64::from(off)) as *const u8;
    // SAFETY: checked kernel reads at BTF offsets inside the socket; a bad one fails cleanly.
    unsafe {
        let Ok(family) = bpf_probe_read_kernel(at(SOCK_FAMILY_OFFSET.load()) as *const u16) else {
            return;
        };
        match family {
            AF_INET => {
                if let Ok(a) = bpf_probe_read_kernel(at(SOCK_DADDR_OFFSET.load()) as *const [u8; 4])
                {
                    e.client[..4].copy_from_slice(&a);
                }
            }
            AF_INET6 => {
                if let Ok(a) =
                    bpf_probe_read_kernel(at(SOCK_V6_DADDR_OFFSET.load()) as *const [u8; 16])
                {
                    e.client = a;
                }
            }
            _ => {}
        }
        e.family = family;
    }
}

/// Bytes moved on socket `sk` (0: not known) by a traced thread: to its statement, or to
/// the connection.
#[inline(always)]
fn on_bytes(received: bool, moved: i64, sk: u64) {
    if moved <= 0 || !current_is_target() {
        return;
    }
    let (tgid, tid) = ids();
    let Some(s) = state(tid) else {
        return;
    };
    if sk != 0 {
        if s.sk == 0 {
            s.sk = sk;
            learn_client(&mut s.current, sk);
        } else if s.sk != sk {
            pgbpf_common_ebpf::counters::add(counter::OTHER_SOCKET_BYTES, moved as u64);
            return;
        }
    }
    let n = moved as u64;
    let counting = s.current.kind == kind::STATEMENT;
    match (received, counting) {
        // Not located yet: counted as the next request.
        (true, true) if statement_running(tgid) == Some(true) => s.current.recv += n,
        (true, _) => {
            s.pending_recv += n;
            s.requested = 1;
        }
        (false, true) => s.current.sent += n,
        // A response before any statement (authentication, the first ReadyForQuery): the
        // bytes received so far were the connection's too.
        (false, false) => {
            s.outside_sent += n;
            s.outside_recv += s.pending_recv;
            s.pending_recv = 0;
        }
    }
}

#[raw_tracepoint(tracepoint = "sock_recv_length")]
pub fn sock_recv(ctx: RawTracePointContext) -> i32 {
    let (moved, sk) = sock_moved(&ctx);
    on_bytes(true, moved, sk);
    0
}

#[raw_tracepoint(tracepoint = "sock_send_length")]
pub fn sock_send(ctx: RawTracePointContext) -> i32 {
    let (moved, sk) = sock_moved(&ctx);
    on_bytes(false, moved, sk);
    0
}

/// Bytes a sock_{recv,send}_length moved and its socket (its arguments: the sock, the
/// result, the flags); a peek counts as nothing (the bytes stay to be read).
#[inline(always)]
fn sock_moved(ctx: &RawTracePointContext) -> (i64, u64) {
    const MSG_PEEK: i32 = 2;
    // SAFETY: both tracepoints have three arguments, each widened to a u64.
    let (sk, moved, flags) = unsafe {
        let args = ctx.as_ptr().cast::<u64>();
        (*args, *args.add(1) as i32, *args.add(2) as i32)
    };
    if flags & MSG_PEEK != 0 {
        (0, sk)
    } else {
        (moved as i64, sk)
    }
}

/// Before Linux 6.4 (no socket tracepoints): the exits of the calls PostgreSQL makes.
#[tracepoint]
pub fn exit_recvfrom(ctx: TracePointContext) -> u32 {
    on_bytes(true, syscall::ret(&ctx), 0);
    0
}

#[tracepoint]
pub fn exit_sendto(ctx: TracePointContext) -> u32 {
    on_bytes(false, syscall::ret(&ctx), 0);
    0
}

/// sched:sched_process_exit: a thread ends; its last statement and its connection's own
/// traffic are sent, its state forgotten.
#[tracepoint]
pub fn thread_exit(_ctx: TracePointContext) -> u32 {
    let tid = ids().1;
    let Some(s) = THREADS.get_ptr_mut(&tid) else {
        return 0;
    };
    // SAFETY: this thread's entry; it is ending.
    let s = unsafe { &mut *s };
    send(&s.current);
    let e = &mut s.current;
    e.kind = kind::CONNECTION;
    e.recv = s.outside_recv + s.pending_recv;
    e.sent = s.outside_sent;
    e.tgid = ids().0;
    e.tid = tid;
    e.query_len = 0;
    e.query[0] = 0;
    send(e);
    let _ = THREADS.remove(&tid);
    0
}

/// `--dev`: the `T` at `base + offset` in kernel memory.
#[inline(always)]
fn kernel_at<T>(base: u64, offset: &aya_ebpf::Global<u32>) -> Option<T> {
    // SAFETY: a checked kernel read; a bad address fails cleanly.
    unsafe { bpf_probe_read_kernel((base + u64::from(offset.load())) as *const T).ok() }
}

/// `--dev`: the TCP port of the packet whose IP header is at `l3`, its source or destination
/// (0: not TCP over IPv4 or IPv6 without extension headers).
#[inline(always)]
fn tcp_port(l3: u64, source: bool) -> u16 {
    const TCP: u8 = 6;
    // SAFETY: checked kernel reads of the packet's headers.
    let Ok(ip) = (unsafe { bpf_probe_read_kernel(l3 as *const [u8; 10]) }) else {
        return 0;
    };
    let transport = match ip[0] >> 4 {
        4 if ip[9] == TCP => l3 + u64::from(ip[0] & 0xf) * 4,
        6 if ip[6] == TCP => l3 + 40,
        _ => return 0,
    };
    // SAFETY: as above.
    let Ok(ports) = (unsafe { bpf_probe_read_kernel(transport as *const [u8; 4]) }) else {
        return 0;
    };
    if source {
        u16::from_be_bytes([ports[0], ports[1]])
    } else {
        u16::from_be_bytes([ports[2], ports[3]])
    }
}

/// `--dev`: one packet of `bytes` that device `dev` moved in `way`; `port`: the packet's TCP
/// port on this host's side (0: none), PostgreSQL's when a traced server listens on it in the
/// device's network namespace.
#[inline(always)]
fn count_packet(dev: u64, way: u32, bytes: u64, port: u16) {
    let (Some(ifindex), Some(net)) = (
        kernel_at::<u32>(dev, &DEV_IFINDEX_OFFSET),
        kernel_at::<u64>(dev, &DEV_NET_OFFSET),
    ) else {
        return;
    };
    let key = DeviceKey {
        netns: kernel_at::<u32>(net, &NET_INUM_OFFSET).unwrap_or(0),
        ifindex,
        direction: way,
    };
    let c = match DEVICES.get_ptr_mut(&key) {
        Some(c) => c,
        None => {
            let mut fresh = DeviceCount::default();
            if let Some(name) = kernel_at::<[u8; 16]>(dev, &DEV_NAME_OFFSET) {
                fresh.name = name;
            }
            // BPF_NOEXIST: another CPU's insert of the same device is not replaced.
            let _ = DEVICES.insert(&key, &fresh, 1);
            match DEVICES.get_ptr_mut(&key) {
                Some(c) => c,
                None => {
                    bump(counter::DEVICES_FULL);
                    return;
                }
            }
        }
    };
    // SAFETY: this CPU's value, written by this CPU only (BH context does not nest here).
    let c = unsafe { &mut *c };
    c.packets += 1;
    c.bytes += bytes;
    if port != 0 {
        let server = PortKey {
            netns: key.netns,
            port: u32::from(port),
        };
        // SAFETY: a lookup; the value is not kept.
        if unsafe { PORTS.get(&server) }.is_some() {
            c.postgres_packets += 1;
            c.postgres_bytes += bytes;
        }
    }
}

/// net:netif_receive_skb: a packet a device received, its link-layer header already pulled
/// (counted back in, as /proc/net/dev counts it); the destination port is this host's side.
#[raw_tracepoint(tracepoint = "netif_receive_skb")]
pub fn dev_receive(ctx: RawTracePointContext) -> i32 {
    // SAFETY: the tracepoint's one argument, the sk_buff.
    let skb = unsafe { *ctx.as_ptr().cast::<u64>() };
    let (Some(dev), Some(len), Some(data), Some(head), Some(mac)) = (
        kernel_at::<u64>(skb, &SKB_DEV_OFFSET),
        kernel_at::<u32>(skb, &SKB_LEN_OFFSET),
        kernel_at::<u64>(skb, &SKB_DATA_OFFSET),
        kernel_at::<u64>(skb, &SKB_HEAD_OFFSET),
        kernel_at::<u16>(skb, &SKB_MAC_HEADER_OFFSET),
    ) else {
        return 0;
    };
    let mac_at = head + u64::from(mac);
    let link = if mac != u16::MAX && mac_at <= data {
        data - mac_at
    } else {
        0
    };
    count_packet(
        dev,
        direction::RECEIVED,
        u64::from(len) + link,
        tcp_port(data, false),
    );
    0
}

/// net:net_dev_start_xmit: a packet about to be handed to a driver; its source port (this
/// host's side) is read while the skb is sure to be there.
#[raw_tracepoint(tracepoint = "net_dev_start_xmit")]
pub fn dev_start_xmit(ctx: RawTracePointContext) -> i32 {
    // SAFETY: the tracepoint's arguments: the sk_buff, the device.
    let skb = unsafe { *ctx.as_ptr().cast::<u64>() };
    let Some(pending) = XMIT.get_ptr_mut(0) else {
        return 0;
    };
    let port = match (
        kernel_at::<u64>(skb, &SKB_HEAD_OFFSET),
        kernel_at::<u16>(skb, &SKB_NETWORK_HEADER_OFFSET),
    ) {
        (Some(head), Some(network)) if network != u16::MAX => {
            tcp_port(head + u64::from(network), true)
        }
        _ => 0,
    };
    // SAFETY: this CPU's slot; start_xmit and xmit of one packet run on one CPU, in order.
    unsafe {
        (*pending).skb = skb;
        (*pending).port = u32::from(port);
    }
    0
}

/// net:net_dev_xmit: the driver's answer for the packet; counted when it took it
/// (NETDEV_TX_OK), with the length the device counts.
#[raw_tracepoint(tracepoint = "net_dev_xmit")]
pub fn dev_xmit(ctx: RawTracePointContext) -> i32 {
    // SAFETY: the tracepoint's arguments: the sk_buff, the result, the device, the length.
    let (skb, rc, dev, len) = unsafe {
        let args = ctx.as_ptr().cast::<u64>();
        (
            *args,
            *args.add(1) as i32,
            *args.add(2),
            *args.add(3) as u32,
        )
    };
    if rc != 0 {
        return 0;
    }
    let port = match XMIT.get(0) {
        Some(p) if p.skb == skb => p.port as u16,
        _ => 0,
    };
    count_packet(dev, direction::SENT, u64::from(len), port);
    0
}

pgbpf_common_ebpf::program_support!();
