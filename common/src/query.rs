//! Userspace view of the query context (`pgbpf_common_ebpf::query`): which statement each
//! traced backend is running right now.

use std::time::Duration;

use aya::{Ebpf, maps::HashMap};
pub use pgbpf_common_ebpf::query::{
    PROTOCOL_EXTENDED, PROTOCOL_NONE, PROTOCOL_SIMPLE, PROTOCOL_TLS, PROTOCOL_UNKNOWN,
    QUERY_TEXT_CAP, QueryContext,
};

/// The query context's map. Every tool's object has it (the exit hook forgets contexts), so
/// the loader creates it with one entry unless the tool keeps contexts ([`keep_context`]).
pub const CONTEXT_MAP: &str = "PGBPF_QUERIES";

/// Backends whose current statement the query context can hold.
pub const CONTEXT_ENTRIES: u32 = 16384;

/// Sizes the query context for a tool that keeps it (call from `loader::load`'s configure).
pub fn keep_context(loader: &mut aya::EbpfLoader<'_>) {
    loader.map_max_entries(CONTEXT_MAP, CONTEXT_ENTRIES);
}

/// A statement in progress.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ActiveQuery {
    pub pid: u32,
    pub elapsed: Duration,
    pub protocol: &'static str,
    pub text: String,
    pub truncated: bool,
}

pub fn protocol_name(p: u8) -> &'static str {
    match p {
        PROTOCOL_SIMPLE => "simple",
        PROTOCOL_EXTENDED => "extended",
        PROTOCOL_UNKNOWN => "unknown",
        PROTOCOL_TLS => "tls",
        _ => "none",
    }
}

/// The text of a context or event buffer: `len` bytes, cut at the capacity, lossy UTF-8.
pub fn text_of(buf: &[u8], len: u32) -> String {
    let n = (len as usize).min(buf.len());
    let n = buf[..n].iter().position(|&b| b == 0).unwrap_or(n);
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// CLOCK_MONOTONIC now, the clock of bpf_ktime_get_ns().
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// Every backend's current statement, longest-running first.
pub fn active_queries(ebpf: &Ebpf) -> anyhow::Result<Vec<ActiveQuery>> {
    let map = ebpf
        .map(CONTEXT_MAP)
        .ok_or_else(|| anyhow::anyhow!("the eBPF object has no PGBPF_QUERIES map"))?;
    let map: HashMap<_, u32, QueryContext> = HashMap::try_from(map)?;
    let now = monotonic_ns();
    let mut out: Vec<ActiveQuery> = map
        .iter()
        .flatten()
        .filter(|(_, q)| q.protocol != PROTOCOL_NONE)
        .map(|(pid, q)| ActiveQuery {
            pid,
            elapsed: Duration::from_nanos(now.saturating_sub(q.start_ns)),
            protocol: protocol_name(q.protocol),
            text: text_of(&q.text, q.text_len),
            truncated: q.truncated != 0,
        })
        .collect();
    out.sort_by_key(|a| std::cmp::Reverse(a.elapsed));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_cut_at_len_nul_or_capacity() {
        assert_eq!(text_of(b"select 1\0junk", 20), "select 1");
        assert_eq!(text_of(b"select 1", 6), "select");
        assert_eq!(text_of(b"abc", 99), "abc");
        assert_eq!(text_of(b"\xff\xfe", 2), "\u{fffd}\u{fffd}");
    }
}
