//! Types shared by locks' kernel programs and its userspace (feature `user`).
#![no_std]

/// Bytes of statement text per event.
pub const QUERY_CAP: usize = 256;

/// What the USDT site that fired means (the probe id of its attachment).
pub mod probe {
    /// lock__wait__start(locktag fields 1-4, locktag type, mode): about to sleep on a lock.
    pub const WAIT_START: u32 = 1;
    /// lock__wait__done(the same): the lock was granted, or the wait ended in an error.
    pub const WAIT_DONE: u32 = 2;
    /// deadlock__found(): this backend's deadlock check found a cycle; it will error out.
    pub const DEADLOCK: u32 = 3;
}

/// What an event is.
pub mod kind {
    /// A wait began (its statement, for the deadlock report of the others).
    pub const WAIT_START: u8 = 1;
    /// A wait ended: `duration_ns` is its length.
    pub const WAIT_DONE: u8 = 2;
    /// A deadlock was found by this process.
    pub const DEADLOCK: u8 = 3;
}

/// What the process was doing at the event (pgbpf_common_ebpf::query_string).
pub use pgbpf_common_ebpf::query_string::statement;

/// One lock event.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct LockEvent {
    /// bpf_ktime_get_ns() when the wait began (WAIT_START, WAIT_DONE) or of the event.
    pub start_ns: u64,
    pub duration_ns: u64,
    pub cgroup_id: u64,
    pub tgid: u32,
    pub tid: u32,
    /// PostgreSQL's LOCKTAG fields (what each means depends on `locktag_type`).
    pub field1: u32,
    pub field2: u32,
    pub field3: u32,
    pub field4: u32,
    /// The LOCKMODE asked for (1 AccessShareLock .. 8 AccessExclusiveLock).
    pub mode: u32,
    pub kind: u8,
    /// LockTagType: 0 relation, 1 extend, ..., 4 tuple, 5 transactionid, ..., 10 advisory.
    pub locktag_type: u8,
    pub statement: u8,
    pub truncated: u8,
    pub query_len: u32,
    /// The waiter's user stack id (`--stack`), or `pgbpf_common_ebpf::stacks::NONE` / `LOST`.
    pub user_stack: i32,
    pub query: [u8; QUERY_CAP],
}

/// Indexes of the COUNTERS per-CPU array (0 and 1 as `pgbpf_common::pg_probes::Lost` reads
/// them).
pub mod counter {
    /// An event could not be sent (ring buffer full).
    pub const RINGBUF_FULL: u32 = 0;
    /// A wait's start could not be remembered (WAITING full): that wait is not counted.
    pub const WAITING_FULL: u32 = 1;
    pub const COUNT: u32 = 2;
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] plain data without implicit padding, every bit pattern valid.
unsafe impl aya::Pod for LockEvent {}
