//! Types shared by net_per_query's kernel programs and its userspace (feature `user`).
#![no_std]

/// Bytes of statement text per event.
pub const QUERY_CAP: usize = 256;
/// The globals userspace sets from the kernel's BTF: offsets in `struct sock_common`.
pub mod global {
    pub const FAMILY_OFFSET: &str = "SOCK_FAMILY_OFFSET";
    pub const DADDR_OFFSET: &str = "SOCK_DADDR_OFFSET";
    pub const V6_DADDR_OFFSET: &str = "SOCK_V6_DADDR_OFFSET";
    /// `--dev`: offsets in `struct sk_buff`, `struct net_device` and `struct net`.
    pub const SKB_LEN_OFFSET: &str = "SKB_LEN_OFFSET";
    pub const SKB_DATA_OFFSET: &str = "SKB_DATA_OFFSET";
    pub const SKB_HEAD_OFFSET: &str = "SKB_HEAD_OFFSET";
    pub const SKB_MAC_HEADER_OFFSET: &str = "SKB_MAC_HEADER_OFFSET";
    pub const SKB_NETWORK_HEADER_OFFSET: &str = "SKB_NETWORK_HEADER_OFFSET";
    pub const SKB_DEV_OFFSET: &str = "SKB_DEV_OFFSET";
    pub const DEV_IFINDEX_OFFSET: &str = "DEV_IFINDEX_OFFSET";
    pub const DEV_NAME_OFFSET: &str = "DEV_NAME_OFFSET";
    pub const DEV_NET_OFFSET: &str = "DEV_NET_OFFSET";
    pub const NET_INUM_OFFSET: &str = "NET_INUM_OFFSET";
}

/// `--dev`: which way a device moved a packet.
pub mod direction {
    pub const RECEIVED: u32 = 0;
    pub const SENT: u32 = 1;
}

/// `--dev`: a network device (in its network namespace) and a direction.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, Debug)]
pub struct DeviceKey {
    /// The inode number of the device's network namespace (as /proc/PID/ns/net shows it).
    pub netns: u32,
    pub ifindex: u32,
    pub direction: u32,
}

/// `--dev`: what one device moved one way (per CPU), and PostgreSQL's part of it.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct DeviceCount {
    pub packets: u64,
    /// Bytes as the device counts them (/proc/net/dev): link-layer header included.
    pub bytes: u64,
    /// TCP packets to or from a traced server's listening port.
    pub postgres_packets: u64,
    pub postgres_bytes: u64,
    /// The device's name (set on the CPU's first packet of it).
    pub name: [u8; 16],
}

/// `--dev`: a port a traced server listens on, in its network namespace (host byte order).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct PortKey {
    pub netns: u32,
    pub port: u32,
}

/// `--dev`: devices (times two directions) counted.
pub const MAX_DEVICES: u32 = 1024;
/// `--dev`: listening ports of traced servers.
pub const MAX_PORTS: u32 = 64;

/// Threads followed at once.
pub const MAX_THREADS: u32 = 16_384;

/// What the USDT site that fired means (the probe id of its attachment).
pub mod probe {
    /// query__execute__start: PortalRun begins, in the simple protocol's statements and the
    /// extended protocol's Execute alike (query__start fires for the simple one only).
    pub const EXECUTE: u32 = 1;
}

/// What an event counts.
pub mod kind {
    /// One statement: the request that brought it and its whole response.
    pub const STATEMENT: u8 = 1;
    /// A connection's traffic outside statements (startup and authentication, the
    /// termination), sent when its process exits or at the end of the run.
    pub const CONNECTION: u8 = 2;
}

/// One statement's traffic (or a connection's outside statements), sent when the session's
/// next statement starts or its process exits: the response's tail (the last buffer, the
/// CommandComplete and the ReadyForQuery) is flushed after the statement ends.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NetEvent {
    pub start_ns: u64,
    /// Bytes received: the request (from the previous statement's end) and whatever came
    /// during the execution (COPY FROM STDIN's data).
    pub recv: u64,
    /// Bytes sent: the response, up to the next statement's start.
    pub sent: u64,
    pub tgid: u32,
    pub tid: u32,
    pub kind: u8,
    pub truncated: u8,
    /// The client's address family (AF_INET, AF_INET6, AF_UNIX; 0: not known).
    pub family: u16,
    pub query_len: u32,
    /// The client's address (the socket's peer): 4 bytes for IPv4, 16 for IPv6.
    pub client: [u8; 16],
    pub query: [u8; QUERY_CAP],
}

/// A thread's traffic being counted.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct NetState {
    /// The statement counted (kind STATEMENT once the first one started).
    pub current: NetEvent,
    /// The client's socket: the first the thread used (the startup packet's, for a backend
    /// forked under trace); others (postgres_fdw, dblink) are not the client's traffic.
    pub sk: u64,
    /// 1 when a request arrived since the statement began: the next PortalRun starts a new
    /// statement (without one, it is the same request's: a nested or a multi-statement one).
    pub requested: u64,
    /// Received since the last statement ended: the next statement's request.
    pub pending_recv: u64,
    /// Traffic outside statements (before the first one; the termination).
    pub outside_recv: u64,
    pub outside_sent: u64,
}

/// Indexes of the COUNTERS per-CPU array (0 and 1 as `pgbpf_common::pg_probes::Lost` reads
/// them).
pub mod counter {
    /// A statement could not be sent (ring buffer full).
    pub const RINGBUF_FULL: u32 = 0;
    /// A thread could not be followed (thread table full): its bytes are not counted.
    pub const THREADS_FULL: u32 = 1;
    /// Bytes a traced thread moved on a socket other than its client's (postgres_fdw,
    /// dblink, PostgreSQL 14's statistics messages): not counted.
    pub const OTHER_SOCKET_BYTES: u32 = 2;
    /// `--dev`: packets of devices past the device table's size: not counted.
    pub const DEVICES_FULL: u32 = 3;
    pub const COUNT: u32 = 4;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain data without implicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::NetEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::NetState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DeviceKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::DeviceCount {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::PortKey {}
}
