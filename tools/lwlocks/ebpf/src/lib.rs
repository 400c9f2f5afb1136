//! Types shared by lwlocks' kernel programs and its userspace (feature `user`).
#![no_std]

/// Bytes of statement text per event.
pub const QUERY_CAP: usize = 256;
/// Bytes of a tranche name (PostgreSQL's are at most 21: "SerializableFinishedList").
pub const TRANCHE_CAP: usize = 32;

/// What the USDT site that fired means (the probe id of its attachment).
pub mod probe {
    /// lwlock__wait__start(tranche, mode): the backend is about to sleep on the lock.
    pub const WAIT_START: u32 = 1;
    /// lwlock__wait__done(tranche, mode): it woke up.
    pub const WAIT_DONE: u32 = 2;
}

/// What the process was doing at the event (pgbpf_common_ebpf::query_string).
pub use pgbpf_common_ebpf::query_string::statement;

/// One LWLock wait, sent when it ends.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WaitEvent {
    /// bpf_ktime_get_ns() when the wait began.
    pub start_ns: u64,
    pub duration_ns: u64,
    /// cgroup v2 id of the waiting task.
    pub cgroup_id: u64,
    pub tgid: u32,
    pub tid: u32,
    /// PostgreSQL's LWLockMode: 0 LW_EXCLUSIVE, 1 LW_SHARED, 2 LW_WAIT_UNTIL_FREE.
    pub mode: u32,
    pub statement: u8,
    pub truncated: u8,
    pub _pad: u16,
    pub query_len: u32,
    /// The waiter's user stack id (`--stack`), or `pgbpf_common_ebpf::stacks::NONE` / `LOST`.
    pub user_stack: i32,
    /// The tranche's name (NUL padded).
    pub tranche: [u8; TRANCHE_CAP],
    pub query: [u8; QUERY_CAP],
}

/// Indexes of the COUNTERS per-CPU array (0 and 1 as `pgbpf_common::pg_probes::Lost` reads
/// them).
pub mod counter {
    /// A wait could not be sent (ring buffer full).
    pub const RINGBUF_FULL: u32 = 0;
    /// A wait's start could not be remembered (WAITING full): that wait is not counted.
    pub const WAITING_FULL: u32 = 1;
    /// A wait ended whose start was not seen (it began before the tool attached).
    pub const DONE_WITHOUT_START: u32 = 2;
    pub const COUNT: u32 = 3;
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] plain data without implicit padding, every bit pattern valid.
unsafe impl aya::Pod for WaitEvent {}
