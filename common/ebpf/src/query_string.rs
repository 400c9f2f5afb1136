//! The statement a PostgreSQL process is working on, read from its own `debug_query_string`
//! at the moment of an event (a perf sample, a throttling tracepoint): nothing runs per
//! statement; and the wait event it has set (`my_wait_event_info`, what pg_stat_activity
//! shows). Userspace (`pgbpf_common::query_string`) puts each process's addresses of the
//! variables in [`PGBPF_QUERY_ADDR`] and locates the processes listed in
//! [`PGBPF_ADDR_WANTED`]; children inherit the addresses at fork, an exec forgets them.

/// `QueryAddr::statement` of a process without debug_query_string (not PostgreSQL).
pub const NO_QUERY_STRING: u64 = u64::MAX;

/// Where one process keeps the variables (absolute addresses in its memory).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct QueryAddr {
    /// `debug_query_string` (`char *`), or [`NO_QUERY_STRING`].
    pub statement: u64,
    /// `my_wait_event_info` (`uint32 *`, PostgreSQL 14 on), or 0.
    pub wait_event: u64,
    /// `pgWalUsage` (a `WalUsage`: WAL records, full-page images, bytes, each 8 bytes; 13 on),
    /// or 0.
    pub wal_usage: u64,
}

/// PostgreSQL's `WalUsage` (src/include/executor/instrument.h, 13 on): what the process has
/// written to the WAL since it started.
#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct WalUsage {
    pub records: u64,
    pub fpi: u64,
    pub bytes: u64,
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] plain data without padding, every bit pattern valid.
unsafe impl aya::Pod for QueryAddr {}

/// What [`read_statement`] found.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum StatementRead {
    /// A statement is running: `len` bytes of text copied, `truncated` if it was longer.
    Running { len: usize, truncated: bool },
    /// No statement (debug_query_string is NULL), or not a PostgreSQL process.
    Idle,
    /// Not read: the process is not located yet (userspace was asked to), or its memory
    /// could not be read (a process that is exiting).
    Unreadable,
}

/// [`StatementRead`] as an event's `statement` byte, for userspace.
pub mod statement {
    /// No statement running, or not a PostgreSQL process.
    pub const NONE: u8 = 0;
    /// A statement's text follows.
    pub const RUNNING: u8 = 1;
    /// The process's statement could not be read (not located yet).
    pub const UNREADABLE: u8 = 2;
}

impl StatementRead {
    /// As an event carries it: (`statement` code, text length, truncated 0/1).
    #[inline(always)]
    pub fn fields(self) -> (u8, u32, u8) {
        match self {
            StatementRead::Running { len, truncated } => {
                (statement::RUNNING, len as u32, u8::from(truncated))
            }
            StatementRead::Idle => (statement::NONE, 0, 0),
            StatementRead::Unreadable => (statement::UNREADABLE, 0, 0),
        }
    }
}

#[cfg(target_arch = "bpf")]
pub use kernel::*;

#[cfg(target_arch = "bpf")]
mod kernel {
    use aya_ebpf::{
        EbpfContext as _,
        helpers::{bpf_probe_read_user, bpf_probe_read_user_str_bytes},
        macros::{map, tracepoint},
        maps::LruHashMap,
        programs::TracePointContext,
    };

    use super::{NO_QUERY_STRING, QueryAddr, StatementRead};

    /// Where each PostgreSQL process keeps debug_query_string and my_wait_event_info.
    #[map]
    pub static PGBPF_QUERY_ADDR: LruHashMap<u32, QueryAddr> =
        LruHashMap::with_max_entries(16384, 0);
    /// Processes seen without a known address: userspace locates them and empties this.
    #[map]
    pub static PGBPF_ADDR_WANTED: LruHashMap<u32, u8> = LruHashMap::with_max_entries(1024, 0);

    /// Offset of `child_pid` in sched:sched_process_fork (from its format file).
    #[unsafe(no_mangle)]
    static PGBPF_QS_FORK_CHILD_OFFSET: aya_ebpf::Global<u32> = aya_ebpf::Global::new(20);

    /// sched:sched_process_fork: a backend inherits its postmaster's address.
    #[tracepoint]
    pub fn pgbpf_inherit_query_addr(ctx: TracePointContext) -> u32 {
        let parent = ctx.tgid();
        let offset = PGBPF_QS_FORK_CHILD_OFFSET.load() as usize;
        // SAFETY: offset from the tracepoint's format file.
        let child: u32 = unsafe { ctx.read_at(offset) }.unwrap_or(0);
        // SAFETY: plain lookup; the value is copied out.
        if let Some(addr) = unsafe { PGBPF_QUERY_ADDR.get(&parent) }.copied()
            && child != 0
        {
            let _ = PGBPF_QUERY_ADDR.insert(&child, &addr, 0);
        }
        0
    }

    /// sched:sched_process_exec: the process now runs another program (a shell started by
    /// archive_command, COPY ... PROGRAM): the inherited address means nothing there; its next
    /// event asks userspace to locate it again.
    #[tracepoint]
    pub fn pgbpf_forget_query_addr(ctx: TracePointContext) -> u32 {
        let _ = PGBPF_QUERY_ADDR.remove(&ctx.tgid());
        0
    }

    /// Whether process `tgid` (the current task's process) is running a statement
    /// (debug_query_string set); None when its address is not located yet (userspace is
    /// asked to locate it) or cannot be read.
    #[inline(always)]
    pub fn statement_running(tgid: u32) -> Option<bool> {
        // SAFETY: plain lookup; the value is copied out.
        let Some(addr) = (unsafe { PGBPF_QUERY_ADDR.get(&tgid) }).map(|a| a.statement) else {
            let _ = PGBPF_ADDR_WANTED.insert(&tgid, &1, 0);
            return None;
        };
        if addr == NO_QUERY_STRING {
            return Some(false);
        }
        // SAFETY: reads 8 bytes of the current process's memory; fails cleanly if unmapped.
        let text = unsafe { bpf_probe_read_user(addr as *const u64) }.ok()?;
        Some(text != 0)
    }

    /// Copies the statement process `tgid` (the current task's process) is running into
    /// `buf` (NUL-terminated, the rest of `buf` untouched). debug_query_string is set when a
    /// message with a statement (Query; Parse, Bind, Execute) is taken up and reset to NULL
    /// when it is done: parse, plan and execution all count, waiting for the client does not.
    #[inline(always)]
    pub fn read_statement(tgid: u32, buf: &mut [u8]) -> StatementRead {
        // SAFETY: plain lookup; the value is copied out.
        let Some(addr) = (unsafe { PGBPF_QUERY_ADDR.get(&tgid) }).map(|a| a.statement) else {
            let _ = PGBPF_ADDR_WANTED.insert(&tgid, &1, 0);
            return StatementRead::Unreadable;
        };
        if addr == NO_QUERY_STRING {
            return StatementRead::Idle;
        }
        // SAFETY: reads 8 bytes of the current process's memory; fails cleanly if unmapped.
        let Ok(text) = (unsafe { bpf_probe_read_user(addr as *const u64) }) else {
            return StatementRead::Unreadable;
        };
        if text == 0 {
            return StatementRead::Idle;
        }
        let max = buf.len();
        // SAFETY: reads a NUL-terminated user string into `buf`; fails cleanly.
        match unsafe { bpf_probe_read_user_str_bytes(text as *const u8, buf) } {
            // The helper stops at the buffer's end (keeping a NUL): a full buffer means cut.
            Ok(s) => StatementRead::Running {
                len: s.len(),
                truncated: s.len() + 1 >= max,
            },
            Err(_) => StatementRead::Unreadable,
        }
    }

    /// What process `tgid` (the current task's process) has written to the WAL so far (its
    /// `pgWalUsage`); None when not located (userspace is asked to locate it) or before
    /// PostgreSQL 13.
    #[inline(always)]
    pub fn read_wal_usage(tgid: u32) -> Option<super::WalUsage> {
        // SAFETY: plain lookup; the value is copied out.
        let Some(addr) = (unsafe { PGBPF_QUERY_ADDR.get(&tgid) }).map(|a| a.wal_usage) else {
            let _ = PGBPF_ADDR_WANTED.insert(&tgid, &1, 0);
            return None;
        };
        if addr == 0 {
            return None;
        }
        // SAFETY: reads the variable from the current process's memory; fails cleanly if
        // unmapped.
        unsafe { bpf_probe_read_user(addr as *const super::WalUsage) }.ok()
    }

    /// The wait event process `tgid` (the current task's process) has set: PostgreSQL's
    /// `wait_event_info` (class in the top byte, as pg_stat_activity shows it), 0 when none
    /// is set or the process is not located (read_statement asks for that).
    #[inline(always)]
    pub fn read_wait_event(tgid: u32) -> u32 {
        // SAFETY: plain lookup; the value is copied out.
        let Some(addr) = (unsafe { PGBPF_QUERY_ADDR.get(&tgid) }).map(|a| a.wait_event) else {
            return 0;
        };
        if addr == 0 {
            return 0;
        }
        // SAFETY: reads the pointer, then the value, from the current process's memory;
        // both fail cleanly if unmapped.
        unsafe {
            match bpf_probe_read_user(addr as *const u64) {
                Ok(p) if p != 0 => bpf_probe_read_user(p as *const u32).unwrap_or(0),
                _ => 0,
            }
        }
    }
}
