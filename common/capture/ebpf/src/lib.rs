//! Types shared by the capture's kernel programs and its userspace (feature `user`): the
//! socket table that says which file descriptors carry connections of the traced protocol
//! (PostgreSQL, Redis), and the records sent through the ring buffer.
#![no_std]

/// Most payload bytes a record assembled in the per-CPU scratch buffer carries.
pub const CAPTURE_MAX: usize = 16384;
/// Most payload bytes of a plain read or write (read/write/recvfrom/sendto), copied straight
/// into a ring buffer reservation: Redis reads pipelined commands some 20 KiB at a time and
/// writes batched replies in up to 64 KiB.
pub const CAPTURE_MAX_BUF: usize = 65536;
/// Most payload bytes of a vectored call (readv/writev/recvmsg/sendmsg): each iovec is
/// copied at a variable offset, which the verifier bounds by half the scratch buffer.
pub const CAPTURE_MAX_VECTORED: usize = 8192;
/// iovecs looked at in one vectored call.
pub const MAX_IOVECS: u32 = 8;
/// Bytes of a socket address kept (a sockaddr_un is 110).
pub const ADDR_BYTES: usize = 112;

/// The side of the connection the traced process is on.
pub const ROLE_SERVER: u8 = 1;
pub const ROLE_CLIENT: u8 = 2;

/// Record kinds.
pub const KIND_DATA: u8 = 1;
/// A connection accepted (server side) or connected (client side); payload: socket address.
pub const KIND_OPEN: u8 = 2;
/// The traced process closed the connection's descriptor.
pub const KIND_CLOSE: u8 = 3;

/// The direction of data as the traced process sees it.
pub const DIR_READ: u8 = 0;
pub const DIR_WRITE: u8 = 1;

/// A file descriptor of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SockKey {
    pub tgid: u32,
    pub fd: u32,
}

/// What the kernel knows of a traced connection's descriptor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockInfo {
    pub conn_id: u64,
    /// Bytes read/written that could not be sent (ring buffer full) since the last record.
    pub lost: [u64; 2],
    pub role: u8,
    /// Set on the postmaster's copy once a forked backend took the connection over: its
    /// close is then not the end of the connection.
    pub handed_off: u8,
    /// 1 once a TLS library call was seen doing this socket's I/O: its bytes are encrypted
    /// and not copied (the plaintext comes from the library's uprobes).
    pub tls: u8,
    pub _pad: u8,
    /// Server port of the connection (0 for Unix sockets of unknown port).
    pub port: u32,
}

/// Header of every ring buffer record; `captured` payload bytes follow.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct RecordHeader {
    pub ts_ns: u64,
    pub conn_id: u64,
    /// Bytes the syscall moved (DATA); the payload holds the first `captured` of them.
    pub len: u64,
    /// Bytes lost (ring buffer full) before this record, per direction.
    pub lost: [u64; 2],
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub captured: u32,
    pub port: u32,
    pub kind: u8,
    pub role: u8,
    pub dir: u8,
    /// FLAG_TLS: the payload is TLS plaintext from the TLS library, not socket bytes.
    pub flags: u8,
}

/// RecordHeader::flags: plaintext read or written through the TLS library.
pub const FLAG_TLS: u8 = 1;

pub const HEADER_BYTES: usize = core::mem::size_of::<RecordHeader>();

/// The per-CPU buffer a record is assembled in before it goes to the ring buffer.
#[repr(C)]
pub struct Scratch {
    pub header: RecordHeader,
    pub data: [u8; CAPTURE_MAX],
}

/// Indexes of the COUNTERS per-CPU array.
pub mod counter {
    /// Records that did not fit in the ring buffer.
    pub const LOST_RECORDS: u32 = 0;
    /// Payload bytes of those records.
    pub const LOST_BYTES: u32 = 1;
    /// Syscalls whose bytes were cut at the capture limit.
    pub const TRUNCATED: u32 = 2;
    /// Connections not tracked because the socket table was full.
    pub const SOCKETS_FULL: u32 = 3;
    // 4 counted records sent until 2026-11; userspace counts what it reads. Kept free so
    // that the counters of older capture files keep their meaning.
    /// Vectored calls with more iovecs than looked at.
    pub const IOVECS_SKIPPED: u32 = 5;
    /// TLS reads and writes whose connection could not be told (no socket I/O in the call,
    /// and the SSL object not seen before).
    pub const TLS_UNMAPPED: u32 = 6;
    pub const COUNT: u32 = 7;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain data, every bit pattern valid.
    unsafe impl aya::Pod for super::SockKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SockInfo {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RecordHeader {}
}
