//! Types shared by spin_sema's kernel programs and its userspace (feature `user`).
#![no_std]

/// Bytes of statement text per event.
pub const QUERY_CAP: usize = 256;
/// Bytes of a spinlock's source file name (`__FILE__` as the build saw it).
pub const FILE_CAP: usize = 96;
/// Bytes of a spinlock's function name (`__func__`).
pub const FUNC_CAP: usize = 48;

/// What kind of wait an event is.
pub mod kind {
    /// `s_lock`: a spinlock that was taken (TAS failed), spun on until free.
    pub const SPIN: u8 = 1;
    /// `PGSemaphoreLock`: the process slept on its semaphore (an LWLock, a group update...).
    pub const SEMAPHORE: u8 = 2;
    /// A futex(2) wait of the process (what its semaphore sleeps are made of, and more).
    pub const FUTEX: u8 = 3;
}

/// What the process was doing at the event (pgbpf_common_ebpf::query_string).
pub use pgbpf_common_ebpf::query_string::statement;

/// One wait, sent when it ends.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct WaitEvent {
    pub start_ns: u64,
    pub duration_ns: u64,
    /// cgroup v2 id of the waiting task.
    pub cgroup_id: u64,
    pub tgid: u32,
    pub tid: u32,
    /// SPIN: the delays (sleeps between spin rounds) s_lock returned; FUTEX: the operation.
    pub detail: u32,
    /// SPIN: the source line of the spinlock's acquisition.
    pub line: u32,
    pub kind: u8,
    pub statement: u8,
    pub truncated: u8,
    pub _pad: u8,
    pub query_len: u32,
    /// The waiter's user stack id when the wait began (`--stack`), or
    /// `pgbpf_common_ebpf::stacks::NONE` / `LOST`.
    pub user_stack: i32,
    pub _pad2: u32,
    /// SPIN: where the spinlock is taken (NUL padded).
    pub file: [u8; FILE_CAP],
    pub func: [u8; FUNC_CAP],
    pub query: [u8; QUERY_CAP],
}

/// Bytes of a [`WaitEvent`] before its text: all that is sent for a wait without site and
/// statement, the rest read as zeros.
pub const HEAD_LEN: usize = core::mem::offset_of!(WaitEvent, file);

/// Indexes of the COUNTERS per-CPU array (0 and 1 as `pgbpf_common::pg_probes::Lost` reads
/// them).
pub mod counter {
    /// A wait could not be sent (ring buffer full).
    pub const RINGBUF_FULL: u32 = 0;
    /// A wait's start could not be remembered (WAITING full): that wait is not counted.
    pub const WAITING_FULL: u32 = 1;
    pub const COUNT: u32 = 2;
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] plain data without implicit padding, every bit pattern valid.
unsafe impl aya::Pod for WaitEvent {}
