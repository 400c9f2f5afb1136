//! The query context: per PostgreSQL backend, the statement it is running now (text, start
//! time, protocol), kept by a tool's USDT programs and read by any other program of the tool
//! (a cache-miss sample, a throttling pause) to attribute its event to a statement.
//! Userspace reads the same map through `pgbpf_common::query`.

/// Bytes of statement text the map can hold per backend.
pub const QUERY_TEXT_CAP: usize = 512;

/// No statement running (the backend is idle).
pub const PROTOCOL_NONE: u8 = 0;
pub const PROTOCOL_SIMPLE: u8 = 1;
pub const PROTOCOL_EXTENDED: u8 = 2;
/// Timed without protocol-specific probes (uprobes on PortalRun).
pub const PROTOCOL_UNKNOWN: u8 = 3;
/// A TLS connection: its messages are encrypted where the socket hooks see them.
pub const PROTOCOL_TLS: u8 = 4;

/// Probe ids handed to the loader with each site (`pgbpf_common::query_probes`): which
/// PostgreSQL probe fired, for [`track_probe`].
pub const PROBE_QUERY_START: u32 = 1;
pub const PROBE_QUERY_DONE: u32 = 2;
pub const PROBE_EXECUTE_START: u32 = 3;
pub const PROBE_EXECUTE_DONE: u32 = 4;
/// uprobe/uretprobe on PortalRun (no USDT): both protocols, which cannot be told apart.
pub const PROBE_PORTAL_START: u32 = 5;
pub const PROBE_PORTAL_DONE: u32 = 6;

/// What [`track_probe`] did, for the tool's lost-event counters.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Tracked {
    /// A statement began or ended, or the probe was not one to act on.
    Done,
    /// A statement could not be tracked: the context map is full.
    ContextFull,
    /// A statement ended that began before the tool attached.
    DoneWithoutStart,
}

/// One backend's current statement.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct QueryContext {
    /// bpf_ktime_get_ns() when the statement started.
    pub start_ns: u64,
    pub protocol: u8,
    /// 1 when the text was longer than what was copied.
    pub truncated: u8,
    pub _pad: u16,
    /// Bytes of `text` in use (without the NUL).
    pub text_len: u32,
    pub text: [u8; QUERY_TEXT_CAP],
}

#[cfg(feature = "user")]
// SAFETY: #[repr(C)] plain data, every bit pattern valid.
unsafe impl aya::Pod for QueryContext {}

#[cfg(target_arch = "bpf")]
pub use kernel::*;

#[cfg(target_arch = "bpf")]
mod kernel {
    use aya_ebpf::{
        helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user_str_bytes},
        macros::map,
        maps::{HashMap, PerCpuArray},
        programs::ProbeContext,
    };

    use super::{
        PROBE_EXECUTE_DONE, PROBE_EXECUTE_START, PROBE_PORTAL_DONE, PROBE_PORTAL_START,
        PROBE_QUERY_DONE, PROBE_QUERY_START, PROTOCOL_EXTENDED, PROTOCOL_NONE, PROTOCOL_SIMPLE,
        PROTOCOL_UNKNOWN, QUERY_TEXT_CAP, QueryContext, Tracked,
    };
    use crate::{
        target::current_is_target,
        usdt::{usdt_arg, usdt_spec},
    };

    /// Current statement by backend (thread id; PostgreSQL backends are single-threaded).
    /// Created with one entry unless the tool keeps contexts (`pgbpf_common::query`).
    /// Preallocated: before Linux 6.1 perf_event programs (llcache_per_query's samples) may
    /// only use preallocated hash maps.
    #[map]
    pub static PGBPF_QUERIES: HashMap<u32, QueryContext> = HashMap::with_max_entries(16384, 0);

    /// Scratch space: a QueryContext does not fit on the 512-byte BPF stack.
    #[map]
    static PGBPF_QUERY_SCRATCH: PerCpuArray<QueryContext> = PerCpuArray::with_max_entries(1, 0);

    /// How many bytes of text to copy (set by the loader, at most QUERY_TEXT_CAP).
    #[unsafe(no_mangle)]
    static PGBPF_QUERY_TEXT_MAX: aya_ebpf::Global<u32> = aya_ebpf::Global::new(256);

    fn tid() -> u32 {
        bpf_get_current_pid_tgid() as u32
    }

    /// Records that this backend started a statement whose text is at `text` (user memory).
    /// Returns false when the map is full (the statement is then not tracked).
    #[inline(always)]
    pub fn query_begin(protocol: u8, text: u64) -> bool {
        let tid = tid();
        // A backend keeps its entry from statement to statement: overwrite it in place
        // (cheaper than a delete and an insert of a 528-byte value each time).
        let q = match PGBPF_QUERIES.get_ptr_mut(&tid) {
            Some(q) => q,
            None => {
                let Some(scratch) = PGBPF_QUERY_SCRATCH.get_ptr_mut(0) else {
                    return false;
                };
                // SAFETY: this CPU's scratch slot, used only while this program runs.
                if PGBPF_QUERIES.insert(&tid, unsafe { &*scratch }, 0).is_err() {
                    return false;
                }
                match PGBPF_QUERIES.get_ptr_mut(&tid) {
                    Some(q) => q,
                    None => return false,
                }
            }
        };
        // SAFETY: a map value pointer, valid while this program runs; one backend, one CPU.
        let q = unsafe { &mut *q };
        // SAFETY: helper without arguments.
        q.start_ns = unsafe { bpf_ktime_get_ns() };
        q.protocol = protocol;
        query_copy_text(q, text);
        true
    }

    /// Copies the statement text at `text` (user memory, NUL-terminated; 0: none) into `q`, at
    /// most `--text-bytes` of it, marking it truncated when it did not fit.
    #[inline(always)]
    pub fn query_copy_text(q: &mut QueryContext, text: u64) {
        let max = (PGBPF_QUERY_TEXT_MAX.load() as usize).clamp(1, QUERY_TEXT_CAP);
        let len = if text == 0 {
            0
        } else {
            // SAFETY: reads a NUL-terminated user string into our buffer; fails cleanly.
            match unsafe { bpf_probe_read_user_str_bytes(text as *const u8, &mut q.text[..max]) } {
                Ok(s) => s.len(),
                Err(_) => 0,
            }
        };
        q.text_len = len as u32;
        // The helper stops at the buffer's end (keeping a NUL): a full buffer means cut text.
        q.truncated = u8::from(len + 1 >= max);
    }

    /// This backend's current statement, if one is running and tracked.
    #[inline(always)]
    pub fn query_current() -> Option<*mut QueryContext> {
        let q = PGBPF_QUERIES.get_ptr_mut(&tid())?;
        // SAFETY: a map value pointer, valid while this program runs.
        (unsafe { (*q).protocol } != PROTOCOL_NONE).then_some(q)
    }

    /// Marks this backend's statement as finished (the entry stays for the next one).
    #[inline(always)]
    pub fn query_end(q: &mut QueryContext) {
        q.protocol = PROTOCOL_NONE;
    }

    /// Forgets a backend that exited.
    #[inline(always)]
    pub fn query_forget(tid: u32) {
        let _ = PGBPF_QUERIES.remove(&tid);
    }

    /// The program of a statement probe site (attached by `pgbpf_common::query_probes`):
    /// for a target task, keeps the query context with [`track_probe`]. Argument 0 of a
    /// start is the statement text (for the extended protocol and PortalRun the loader made it
    /// the value of debug_query_string).
    #[inline(always)]
    pub fn on_statement_probe(ctx: &ProbeContext, finished: impl FnOnce(&QueryContext)) -> Tracked {
        if !current_is_target() {
            return Tracked::Done;
        }
        let Some(spec) = usdt_spec(ctx) else {
            return Tracked::Done;
        };
        let text = || usdt_arg(ctx, spec, 0).unwrap_or(0) as u64;
        track_probe(spec.probe_id, text, finished)
    }

    /// Keeps the query context from one of PostgreSQL's probes (`probe_id`, a `PROBE_*`):
    /// a start records the statement whose text `text` yields (called only for starts), a
    /// done calls `finished` with the statement, if it is the one of that protocol being
    /// tracked, then marks the backend idle.
    #[inline(always)]
    pub fn track_probe(
        probe_id: u32,
        text: impl FnOnce() -> u64,
        finished: impl FnOnce(&QueryContext),
    ) -> Tracked {
        let (starting, protocol) = match probe_id {
            PROBE_QUERY_START => (true, PROTOCOL_SIMPLE),
            PROBE_EXECUTE_START => (true, PROTOCOL_EXTENDED),
            PROBE_PORTAL_START => (true, PROTOCOL_UNKNOWN),
            PROBE_QUERY_DONE => (false, PROTOCOL_SIMPLE),
            PROBE_EXECUTE_DONE => (false, PROTOCOL_EXTENDED),
            PROBE_PORTAL_DONE => (false, PROTOCOL_UNKNOWN),
            _ => return Tracked::Done,
        };
        if starting {
            if protocol == PROTOCOL_EXTENDED
                && let Some(q) = query_current()
                // SAFETY: map value pointer.
                && unsafe { (*q).protocol } == PROTOCOL_SIMPLE
            {
                // PortalRun inside a simple query: the simple query's own probes time it.
                return Tracked::Done;
            }
            return if query_begin(protocol, text()) {
                Tracked::Done
            } else {
                Tracked::ContextFull
            };
        }
        let Some(qp) = query_current() else {
            return Tracked::DoneWithoutStart;
        };
        // SAFETY: a map value pointer, valid while this program runs; one backend, one CPU.
        let q = unsafe { &mut *qp };
        if q.protocol == protocol {
            finished(q);
            query_end(q);
        }
        Tracked::Done
    }
}
