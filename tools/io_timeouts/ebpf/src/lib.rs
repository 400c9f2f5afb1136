//! Types shared by io_timeouts' kernel programs and its userspace (feature `user`).
#![no_std]

/// Bytes of statement text per event.
pub const QUERY_CAP: usize = 256;
/// Bytes of a backing device name (bdi), as the writeback tracepoints keep it.
pub const BDI_CAP: usize = 32;

/// What an event is.
pub mod kind {
    /// writeback:balance_dirty_pages with a positive pause: the writer is put to sleep.
    pub const DIRTY_PAUSE: u8 = 1;
    /// vmscan:mm_vmscan_throttled: reclaim made the task wait for writeback or progress.
    pub const RECLAIM_THROTTLE: u8 = 2;
    /// writeback:writeback_written after writeback_start: pages the flusher wrote.
    pub const WRITEBACK: u8 = 3;
    /// block:block_rq_complete of a request the target issued (with --block).
    pub const BLOCK_IO: u8 = 4;
}

/// What the process was doing at the event (pgbpf_common_ebpf::query_string).
pub use pgbpf_common_ebpf::query_string::statement;

/// One event, through the ring buffer. The meaning of `a`..`d` depends on `kind`:
/// - DIRTY_PAUSE: pause ms, period ms, dirty pages, limit pages (`name`: the bdi);
/// - RECLAIM_THROTTLE: delayed us, timeout us, node, 0 (`reason`: VMSCAN_THROTTLE_* bits);
/// - WRITEBACK: pages written, 0, 0, 0 (`name`: the bdi, `reason`: WB_REASON_*);
/// - BLOCK_IO: latency ns, bytes, device (dev_t), error (`name`: rwbs).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct IoEvent {
    pub kind: u8,
    pub statement: u8,
    pub truncated: u8,
    pub _pad: u8,
    pub tgid: u32,
    pub tid: u32,
    pub reason: u32,
    pub a: u64,
    pub b: u64,
    pub c: u64,
    pub d: u64,
    /// cgroup v2 id of the task the event happened in (0 for block completions, which run
    /// in interrupt context): the exporter's per-container series.
    pub cgroup_id: u64,
    pub comm: [u8; 16],
    pub name: [u8; BDI_CAP],
    pub query_len: u32,
    pub _pad2: u32,
    pub query: [u8; QUERY_CAP],
}

/// Indexes of the COUNTERS per-CPU array.
pub mod counter {
    /// An event could not be sent (ring buffer full).
    pub const RINGBUF_FULL: u32 = 0;
    pub const COUNT: u32 = 1;
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] plain data without implicit padding, every bit pattern valid.
unsafe impl aya::Pod for IoEvent {}
