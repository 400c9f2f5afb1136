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
    };

    use super::{PROTOCOL_NONE, QUERY_TEXT_CAP, QueryContext};

    /// Current statement by backend (thread id; PostgreSQL backends are single-threaded).
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
        true
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
}
