//! Types shared by wal_per_query's kernel programs and its userspace (feature `user`).
#![no_std]

/// Bytes of statement text per event.
pub const QUERY_CAP: usize = 256;
/// Resource managers counted apart (PostgreSQL 15 has 22 built in, ids 0-21; ids past the
/// slots, custom ones from 128, count in the last).
pub const RMGR_SLOTS: usize = 24;

/// What the USDT site that fired means (the probe id of its attachment).
pub mod probe {
    /// query__execute__start: PortalRun begins (a statement's execution; nested for the
    /// statements of functions).
    pub const EXECUTE_START: u32 = 1;
    /// query__execute__done: PortalRun returns.
    pub const EXECUTE_DONE: u32 = 2;
    /// wal__insert(rmid, info): a WAL record is inserted.
    pub const WAL_INSERT: u32 = 3;
    /// transaction__abort: an error ended the transaction and any execution in it.
    pub const ABORT: u32 = 4;
}

/// What the process was doing at the event (pgbpf_common_ebpf::query_string).
pub use pgbpf_common_ebpf::query_string::statement;

/// The WAL one statement wrote (from its process's pgWalUsage before and after, as
/// pg_stat_statements counts it), sent when its execution ends, if it wrote any.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WalEvent {
    /// bpf_ktime_get_ns() when its execution began.
    pub start_ns: u64,
    pub duration_ns: u64,
    pub cgroup_id: u64,
    pub records: u64,
    /// Full-page images among them.
    pub fpi: u64,
    pub bytes: u64,
    pub tgid: u32,
    pub tid: u32,
    pub statement: u8,
    pub truncated: u8,
    pub _pad: u16,
    pub query_len: u32,
    /// Records per resource manager (its id; the last slot for ids past it), from
    /// wal__insert.
    pub rmgr_records: [u32; RMGR_SLOTS],
    pub query: [u8; QUERY_CAP],
}

/// Indexes of the COUNTERS per-CPU array (0 and 1 as `pgbpf_common::pg_probes::Lost` reads
/// them); RMGR_OUTSIDE on: WAL records of traced processes outside any statement's execution
/// (commit records, vacuum, checkpoints) per resource manager.
pub mod counter {
    /// A statement could not be sent (ring buffer full).
    pub const RINGBUF_FULL: u32 = 0;
    /// A statement's start could not be remembered (RUNNING full): its WAL is not counted.
    pub const RUNNING_FULL: u32 = 1;
    /// A statement ran in a process not located yet (no pgWalUsage address): not counted.
    pub const NOT_LOCATED: u32 = 2;
    /// First of [`super::RMGR_SLOTS`] slots.
    pub const RMGR_OUTSIDE: u32 = 3;
    pub const COUNT: u32 = RMGR_OUTSIDE + super::RMGR_SLOTS as u32;
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] plain data without implicit padding, every bit pattern valid.
unsafe impl aya::Pod for WalEvent {}
