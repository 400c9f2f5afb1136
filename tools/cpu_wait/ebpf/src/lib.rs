//! Types shared by cpu_wait's kernel programs and its userspace (feature `user`).
#![no_std]

/// Bytes of statement text per event.
pub const QUERY_CAP: usize = 256;

/// `RunEvent::state` of a process's first wait for a CPU (forked, never ran yet).
pub const STATE_NEW: u32 = u32::MAX;
/// `RunEvent::state` of a task that was preempted: it stayed runnable (an involuntary
/// context switch), all of its time off the CPU was on a run queue.
pub const STATE_PREEMPTED: u32 = 0;
/// Bits of the kernel's task state (include/linux/sched.h) the report tells apart.
pub const TASK_INTERRUPTIBLE: u32 = 0x1;
pub const TASK_UNINTERRUPTIBLE: u32 = 0x2;

/// What the process was doing at the event (pgbpf_common_ebpf::query_string).
pub use pgbpf_common_ebpf::query_string::statement;

/// One stretch off the CPU of a traced task, sent when it runs again: how long it slept
/// (until woken), then how long it waited on a run queue for a CPU.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RunEvent {
    /// From leaving the CPU to being woken; 0 when it was preempted (still runnable).
    pub sleep_ns: u64,
    /// From being runnable (woken, or preempted) to running again.
    pub runq_ns: u64,
    /// cgroup v2 id of the task.
    pub cgroup_id: u64,
    pub tgid: u32,
    pub tid: u32,
    /// The kernel's task state when it left the CPU ([`STATE_PREEMPTED`], an
    /// interruptible or uninterruptible sleep), or [`STATE_NEW`].
    pub state: u32,
    /// PostgreSQL's wait event set when it went to sleep (class in the top byte; 0: none).
    pub wait_event: u32,
    /// Times the task was moved to another CPU since its previous event.
    pub migrations: u32,
    pub statement: u8,
    pub truncated: u8,
    pub _pad: u16,
    pub query_len: u32,
    /// The task's user and kernel stack ids when it left the CPU (`--stack`), or
    /// `pgbpf_common_ebpf::stacks::NONE` / `LOST`.
    pub user_stack: i32,
    pub kernel_stack: i32,
    pub _pad2: u32,
    pub query: [u8; QUERY_CAP],
}

/// Bytes of a [`RunEvent`] before its text: all that is sent when it has none (most stretches
/// begin between statements), the rest read as zeros.
pub const HEAD_LEN: usize = core::mem::offset_of!(RunEvent, query);

/// Indexes of the COUNTERS per-CPU array (0 and 1 as `pgbpf_common::pg_probes::Lost` reads
/// them).
pub mod counter {
    /// An event could not be sent (ring buffer full).
    pub const RINGBUF_FULL: u32 = 0;
    /// A task leaving the CPU could not be remembered (TASKS full): that wait is not counted.
    pub const WAITING_FULL: u32 = 1;
    /// A task ran again without its wakeup seen: that wait is not counted.
    pub const WAKEUP_UNSEEN: u32 = 2;
    pub const COUNT: u32 = 3;
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] plain data without implicit padding, every bit pattern valid.
unsafe impl aya::Pod for RunEvent {}
