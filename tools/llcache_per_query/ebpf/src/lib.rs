//! Types shared by llcache_per_query's kernel programs and its userspace (feature `user`).
#![no_std]

pub use pgbpf_common_ebpf::query::{PROTOCOL_NONE, PROTOCOL_UNKNOWN, QUERY_TEXT_CAP};

/// Key `protocol` of a sample whose process's statement could not be read: its
/// debug_query_string is not located yet (userspace is asked to) or was unreadable.
pub const PROTOCOL_UNREADABLE: u8 = 0xff;

/// Events sampled at once: one perf_event program per slot (`sample_0` ... `sample_7`).
pub const MAX_EVENTS: usize = 8;

/// Bytes of statement text in a sample key (the hash map key must stay under 512 bytes).
pub const KEY_TEXT: usize = 256;

/// Where samples are summed: one process on one CPU running one statement.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SampleKey {
    pub tgid: u32,
    pub cpu: u32,
    /// `PROTOCOL_*` of the statement (`PROTOCOL_UNKNOWN` when read from debug_query_string);
    /// `PROTOCOL_NONE` (text empty) when none was running; `PROTOCOL_UNREADABLE`.
    pub protocol: u8,
    /// 1 when the statement's text was longer than what was copied.
    pub truncated: u8,
    pub _pad: [u8; 6],
    /// The statement text, NUL padded (so equal statements are equal keys).
    pub text: [u8; KEY_TEXT],
}

/// Samples per event slot (the order of `--event`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct SampleCounts {
    pub samples: [u64; MAX_EVENTS],
}

/// Indexes of the COUNTERS per-CPU array.
pub mod counter {
    /// A sample could not be counted: the sample map was full.
    pub const MAP_FULL: u32 = 0;
    /// A statement could not be tracked (query context map full); its samples count as
    /// "no statement".
    pub const CONTEXT_FULL: u32 = 1;
    /// A statement ended that started before the tool attached.
    pub const DONE_WITHOUT_START: u32 = 2;
    /// A sample of a process whose debug_query_string was not located (yet).
    pub const UNREADABLE: u32 = 3;
    pub const COUNT: u32 = 4;
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: #[repr(C)] plain data without implicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::SampleKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::SampleCounts {}
}
