//! Types shared by query_latency's kernel programs and its userspace (feature `user`).
#![no_std]

pub use pgbpf_common_ebpf::query::{
    PROTOCOL_EXTENDED, PROTOCOL_SIMPLE, PROTOCOL_TLS, PROTOCOL_UNKNOWN, QUERY_TEXT_CAP,
};

/// Bytes before the text in a ring buffer record.
pub const QUERY_EVENT_HEADER: usize = core::mem::offset_of!(QueryEvent, text);

/// One finished statement, sent through the ring buffer. The kernel sends only as much of
/// `text` as the statement needs (records of 64, 128, 256 or 512 text bytes); userspace reads
/// a shorter record into a zeroed `QueryEvent`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct QueryEvent {
    pub pid: u32,
    pub protocol: u8,
    pub truncated: u8,
    pub _pad: u16,
    pub text_len: u32,
    pub _pad2: u32,
    pub duration_ns: u64,
    /// cgroup v2 id of the backend at the statement's end (the exporter's per-container
    /// series: the backend may be gone by the time its record is read).
    pub cgroup_id: u64,
    pub text: [u8; QUERY_TEXT_CAP],
}

/// Indexes of the COUNTERS per-CPU array.
pub mod counter {
    /// A finished statement could not be sent (ring buffer full).
    pub const RINGBUF_FULL: u32 = 0;
    /// A statement could not be tracked (query context or request map full).
    pub const CONTEXT_FULL: u32 = 1;
    /// A statement ended that started before the tool attached.
    pub const DONE_WITHOUT_START: u32 = 2;
    pub const COUNT: u32 = 3;
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] plain data, every bit pattern valid.
unsafe impl aya::Pod for QueryEvent {}
