//! query_latency's kernel program: one uprobe program on PostgreSQL's query__start /
//! query__done (simple protocol) and query__execute__start / __done (PortalRun: the extended
//! protocol) USDT sites, keeping the query context and sending each finished statement.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel_buf},
    macros::{map, uprobe},
    maps::RingBuf,
    programs::ProbeContext,
};
use pgbpf_common_ebpf::counters::bump;
use pgbpf_common_ebpf::query::{QueryContext, Tracked, on_statement_probe};
use pgbpf_common_ebpf::ring;
use query_latency_ebpf::{QUERY_TEXT_CAP, QueryEvent, counter};

// Every counter has a slot in the shared map.
const _: () = assert!(counter::COUNT <= pgbpf_common_ebpf::counters::SLOTS);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

/// Sends one finished statement.
#[inline(always)]
fn send(q: &QueryContext) {
    match EVENTS.reserve::<QueryEvent>(0) {
        Some(mut slot) => {
            let ev = slot.as_mut_ptr();
            // SAFETY: writes into the reserved record, field by field (too big for the stack).
            unsafe {
                (*ev).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
                (*ev).protocol = q.protocol;
                (*ev).truncated = q.truncated;
                (*ev).text_len = q.text_len;
                (*ev).duration_ns = bpf_ktime_get_ns().saturating_sub(q.start_ns);
                // Copy only the text in use.
                let n = (q.text_len as usize + 1).min(QUERY_TEXT_CAP);
                let dst = &mut (*ev).text;
                if bpf_probe_read_kernel_buf(q.text.as_ptr(), &mut dst[..n]).is_err() {
                    (*ev).text_len = 0;
                }
            }
            // No wakeup per statement (that costs more than the rest of the program): userspace
            // drains the buffer every 50 ms anyway.
            slot.submit(ring::NO_WAKEUP);
        }
        None => bump(counter::RINGBUF_FULL),
    }
}

#[uprobe]
pub fn pg_probe(ctx: ProbeContext) -> u32 {
    match on_statement_probe(&ctx, send) {
        Tracked::ContextFull => bump(counter::CONTEXT_FULL),
        Tracked::DoneWithoutStart => bump(counter::DONE_WITHOUT_START),
        Tracked::Done => {}
    }
    0
}

pgbpf_common_ebpf::program_support!();
