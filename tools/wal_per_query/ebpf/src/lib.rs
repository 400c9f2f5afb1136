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

/// A descriptor of a process (`--system`'s table of open WAL files).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FdKey {
    pub tgid: u32,
    pub fd: u32,
}

/// `--system`: one process's writes and syncs of WAL files since attach.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalIo {
    /// write, pwrite64, writev, pwritev, pwritev2 calls on pg_wal files that wrote something.
    pub writes: u64,
    pub bytes: u64,
    pub write_ns: u64,
    /// The longest (kept without a lock: two CPUs may race to raise it).
    pub write_max_ns: u64,
    /// fsync and fdatasync calls on pg_wal files.
    pub syncs: u64,
    pub sync_ns: u64,
    pub sync_max_ns: u64,
}

/// A WAL write or sync between its syscall's entry and exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub start_ns: u64,
    /// 1: fsync or fdatasync; 0: a write.
    pub sync: u32,
    pub _pad: u32,
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
    /// `--system`: a WAL file's open not remembered (table full): its writes not counted.
    pub const WAL_FDS_FULL: u32 = RMGR_OUTSIDE + super::RMGR_SLOTS as u32;
    /// `--system`: a process past the table of processes: its WAL writes not counted.
    pub const WAL_IO_FULL: u32 = WAL_FDS_FULL + 1;
    pub const COUNT: u32 = WAL_IO_FULL + 1;
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: #[repr(C)] plain data without implicit padding, every bit pattern valid.
    unsafe impl aya::Pod for super::WalEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::FdKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::WalIo {}
}
