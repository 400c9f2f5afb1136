//! query_latency's kernel program: one uprobe program on PostgreSQL's query__start /
//! query__done (simple protocol) and query__execute__start / __done (PortalRun: the extended
//! protocol) USDT sites, keeping the query context and sending each finished statement.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel_buf},
    macros::{map, uprobe},
    maps::{PerCpuArray, RingBuf},
    programs::ProbeContext,
};
use pgbpf_common_ebpf::{
    query::{PROTOCOL_EXTENDED, PROTOCOL_SIMPLE, query_begin, query_current, query_end},
    target::current_is_target,
    usdt::{usdt_arg, usdt_spec},
};
use query_latency_ebpf::{
    PROBE_EXECUTE_DONE, PROBE_EXECUTE_START, PROBE_PORTAL_DONE, PROBE_PORTAL_START,
    PROBE_QUERY_DONE, PROBE_QUERY_START, PROTOCOL_UNKNOWN, QUERY_TEXT_CAP, QueryEvent, counter,
};

const BPF_RB_NO_WAKEUP: u64 = 1;

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

#[inline(always)]
fn bump(index: u32) {
    pgbpf_common_ebpf::bump(&COUNTERS, index)
}

#[inline(always)]
fn begin(protocol: u8, text: u64) {
    if !query_begin(protocol, text) {
        bump(counter::CONTEXT_FULL);
    }
}

/// Sends the current statement of `protocol`, if it is the one being tracked, and forgets it.
#[inline(always)]
fn finish(protocol: u8) {
    let Some(qp) = query_current() else {
        bump(counter::DONE_WITHOUT_START);
        return;
    };
    // SAFETY: a map value pointer, valid while this program runs.
    let q = unsafe { &*qp };
    if q.protocol != protocol {
        // PortalRun inside a simple query: the simple query's own probes time it.
        return;
    }
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
            slot.submit(BPF_RB_NO_WAKEUP);
        }
        None => bump(counter::RINGBUF_FULL),
    }
    // SAFETY: the same map value; `q` is not used after this.
    query_end(unsafe { &mut *qp });
}

#[uprobe]
pub fn pg_probe(ctx: ProbeContext) -> u32 {
    if !current_is_target() {
        return 0;
    }
    let Some(spec) = usdt_spec(&ctx) else {
        return 0;
    };
    match spec.probe_id {
        PROBE_QUERY_START => begin(PROTOCOL_SIMPLE, usdt_arg(&ctx, spec, 0).unwrap_or(0) as u64),
        PROBE_QUERY_DONE => finish(PROTOCOL_SIMPLE),
        PROBE_EXECUTE_START => {
            if let Some(q) = query_current() {
                // SAFETY: map value pointer.
                if unsafe { (*q).protocol } == PROTOCOL_SIMPLE {
                    return 0;
                }
            }
            // Argument 0 was added by the loader: the value of debug_query_string.
            begin(
                PROTOCOL_EXTENDED,
                usdt_arg(&ctx, spec, 0).unwrap_or(0) as u64,
            );
        }
        PROBE_EXECUTE_DONE => finish(PROTOCOL_EXTENDED),
        PROBE_PORTAL_START => begin(
            PROTOCOL_UNKNOWN,
            usdt_arg(&ctx, spec, 0).unwrap_or(0) as u64,
        ),
        PROBE_PORTAL_DONE => finish(PROTOCOL_UNKNOWN),
        _ => {}
    }
    0
}

pgbpf_common_ebpf::program_support!();
