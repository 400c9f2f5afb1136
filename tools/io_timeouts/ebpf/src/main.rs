//! io_timeouts' kernel programs, tracepoints only (no kprobes): dirty-page throttling
//! (writeback:balance_dirty_pages) and reclaim throttling (vmscan:mm_vmscan_throttled) of
//! target tasks with the statement they run; pages the flusher writes back, by device and
//! reason (writeback:writeback_start / writeback_written, system-wide); with --block, the
//! latency of block requests the target issues (block:block_rq_issue / block_rq_complete).
//! Field offsets come from the tracepoints' format files (globals set by userspace).
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_ktime_get_ns,
        bpf_probe_read_kernel_buf,
    },
    macros::{map, tracepoint},
    maps::{LruHashMap, RingBuf},
    programs::TracePointContext,
};
use io_timeouts_ebpf::{BDI_CAP, IoEvent, counter, kind, statement};
use pgbpf_common_ebpf::counters::bump;
use pgbpf_common_ebpf::ring;
use pgbpf_common_ebpf::{query_string::read_statement, target::current_is_target};

// Every counter has a slot in the shared map.
const _: () = assert!(counter::COUNT <= pgbpf_common_ebpf::counters::SLOTS);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(4 << 20, 0);
/// nr_pages of the flusher's current writeback_start, by flusher thread.
#[map]
static WB_START: LruHashMap<u32, i64> = LruHashMap::with_max_entries(1024, 0);

/// A block request in flight, by device and first sector (padding explicit and zero: the
/// key is compared byte by byte).
#[repr(C)]
#[derive(Clone, Copy)]
struct RqKey {
    dev: u32,
    _pad: u32,
    sector: u64,
}

/// Who issued a request, and when.
#[repr(C)]
#[derive(Clone, Copy)]
struct Issued {
    ts: u64,
    bytes: u64,
    tgid: u32,
    tid: u32,
    comm: [u8; 16],
}
#[map]
static ISSUED: LruHashMap<RqKey, Issued> = LruHashMap::with_max_entries(65536, 0);

/// Field offsets from the format files.
macro_rules! offsets {
    ($($name:ident),*) => {$(
        #[unsafe(no_mangle)]
        static $name: aya_ebpf::Global<u32> = aya_ebpf::Global::new(0);
    )*};
}
offsets!(
    BDP_BDI,
    BDP_LIMIT,
    BDP_DIRTY,
    BDP_PAUSE,
    BDP_PERIOD,
    THR_DELAYED,
    THR_TIMEOUT,
    THR_NID,
    THR_REASON,
    WB_NAME,
    WB_NR_PAGES,
    WB_REASON,
    RQ_DEV,
    RQ_SECTOR,
    RQ_BYTES,
    RQ_RWBS,
    RQC_DEV,
    RQC_SECTOR,
    RQC_ERROR,
    RQC_RWBS
);

#[inline(always)]
fn field<T: Copy + Default>(ctx: &TracePointContext, offset: &aya_ebpf::Global<u32>) -> T {
    // SAFETY: the offset comes from the tracepoint's format file.
    unsafe { ctx.read_at::<T>(offset.load() as usize) }.unwrap_or_default()
}

/// Copies a char array field of the record (bdi name, rwbs) into `dst`.
#[inline(always)]
fn field_bytes(ctx: &TracePointContext, offset: &aya_ebpf::Global<u32>, dst: &mut [u8]) {
    let src = (ctx.as_ptr() as usize + offset.load() as usize) as *const u8;
    // SAFETY: a read of the tracepoint record, checked by the helper.
    let _ = unsafe { bpf_probe_read_kernel_buf(src, dst) };
}

/// Sends an event of `kind` for the current task with its statement, filled by `fill`;
/// counted as lost when the ring buffer is full.
#[inline(always)]
fn send(ctx: &TracePointContext, kind: u8, fill: impl FnOnce(&mut IoEvent)) {
    let Some(mut slot) = EVENTS.reserve::<IoEvent>(0) else {
        bump(counter::RINGBUF_FULL);
        return;
    };
    let e = slot.as_mut_ptr();
    // SAFETY: the reserved record, written field by field (too big for the stack).
    let e = unsafe { &mut *e };
    e.kind = kind;
    e.tgid = ctx.tgid();
    e.tid = ctx.pid();
    e.reason = 0;
    e.a = 0;
    e.b = 0;
    e.c = 0;
    e.d = 0;
    // SAFETY: helper without arguments.
    e.cgroup_id = unsafe { bpf_get_current_cgroup_id() };
    e.comm = bpf_get_current_comm().unwrap_or([0; 16]);
    e.name = [0; BDI_CAP];
    (e.statement, e.query_len, e.truncated) = read_statement(e.tgid, &mut e.query).fields();
    fill(e);
    // Userspace drains every 100 ms; no wakeup per event.
    slot.submit(ring::NO_WAKEUP);
}

/// writeback:balance_dirty_pages: fires once per throttling decision; a positive pause is a
/// sleep of that many milliseconds (planned) in the writer's context.
#[tracepoint]
pub fn dirty_pause(ctx: TracePointContext) -> u32 {
    let pause: i64 = field(&ctx, &BDP_PAUSE);
    if pause <= 0 || !current_is_target() {
        return 0;
    }
    send(&ctx, kind::DIRTY_PAUSE, |e| {
        e.a = pause as u64;
        e.b = field::<u64>(&ctx, &BDP_PERIOD);
        e.c = field::<u64>(&ctx, &BDP_DIRTY);
        e.d = field::<u64>(&ctx, &BDP_LIMIT);
        field_bytes(&ctx, &BDP_BDI, &mut e.name);
    });
    0
}

/// vmscan:mm_vmscan_throttled: fires after the wait, with the time actually waited.
#[tracepoint]
pub fn reclaim_throttled(ctx: TracePointContext) -> u32 {
    if !current_is_target() {
        return 0;
    }
    send(&ctx, kind::RECLAIM_THROTTLE, |e| {
        e.a = field::<i32>(&ctx, &THR_DELAYED).max(0) as u64;
        e.b = field::<i32>(&ctx, &THR_TIMEOUT).max(0) as u64;
        e.c = field::<i32>(&ctx, &THR_NID).max(0) as u64;
        e.reason = field::<i32>(&ctx, &THR_REASON) as u32;
    });
    0
}

/// writeback:writeback_start: remember the work's page budget (nr_pages counts down).
#[tracepoint]
pub fn writeback_start(ctx: TracePointContext) -> u32 {
    let pages: i64 = field(&ctx, &WB_NR_PAGES);
    let _ = WB_START.insert(&ctx.pid(), &pages, 0);
    0
}

/// writeback:writeback_written: the same flusher thread, same work, after writing.
#[tracepoint]
pub fn writeback_written(ctx: TracePointContext) -> u32 {
    let tid = ctx.pid();
    // SAFETY: plain lookup; the value is copied out.
    let Some(start) = (unsafe { WB_START.get(&tid) }).copied() else {
        return 0;
    };
    let _ = WB_START.remove(&tid);
    let left: i64 = field(&ctx, &WB_NR_PAGES);
    let written = start.saturating_sub(left);
    if written <= 0 {
        return 0;
    }
    send(&ctx, kind::WRITEBACK, |e| {
        e.a = written as u64;
        e.reason = field::<i32>(&ctx, &WB_REASON) as u32;
        field_bytes(&ctx, &WB_NAME, &mut e.name);
    });
    0
}

/// block:block_rq_issue: a request goes to the device; remember who sent it.
#[tracepoint]
pub fn rq_issue(ctx: TracePointContext) -> u32 {
    if !current_is_target() {
        return 0;
    }
    let key = RqKey {
        dev: field(&ctx, &RQ_DEV),
        _pad: 0,
        sector: field(&ctx, &RQ_SECTOR),
    };
    let issued = Issued {
        // SAFETY: helper without arguments.
        ts: unsafe { bpf_ktime_get_ns() },
        bytes: field::<u32>(&ctx, &RQ_BYTES) as u64,
        tgid: ctx.tgid(),
        tid: ctx.pid(),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    let _ = ISSUED.insert(&key, &issued, 0);
    0
}

/// block:block_rq_complete: latency of a request a target issued. (Unmatched completions,
/// requests of other processes or issued before the tool attached, are none of ours.)
#[tracepoint]
pub fn rq_complete(ctx: TracePointContext) -> u32 {
    let key = RqKey {
        dev: field(&ctx, &RQC_DEV),
        _pad: 0,
        sector: field(&ctx, &RQC_SECTOR),
    };
    // SAFETY: plain lookup; the value is copied out.
    let Some(issued) = (unsafe { ISSUED.get(&key) }).copied() else {
        return 0;
    };
    let _ = ISSUED.remove(&key);
    // Completions run in interrupt context: the issuer is not current, so no statement.
    let Some(mut slot) = EVENTS.reserve::<IoEvent>(0) else {
        bump(counter::RINGBUF_FULL);
        return 0;
    };
    // SAFETY: the reserved record, written field by field.
    let e = unsafe { &mut *slot.as_mut_ptr() };
    e.kind = kind::BLOCK_IO;
    e.statement = statement::NONE;
    e.truncated = 0;
    e.tgid = issued.tgid;
    e.tid = issued.tid;
    e.reason = 0;
    // SAFETY: helper without arguments.
    e.a = unsafe { bpf_ktime_get_ns() }.saturating_sub(issued.ts);
    e.b = issued.bytes;
    e.c = key.dev as u64;
    e.d = field::<i32>(&ctx, &RQC_ERROR) as i64 as u64;
    // Interrupt context: not the issuer's cgroup.
    e.cgroup_id = 0;
    e.comm = issued.comm;
    e.name = [0; BDI_CAP];
    field_bytes(&ctx, &RQC_RWBS, &mut e.name[..10]);
    e.query_len = 0;
    slot.submit(ring::NO_WAKEUP);
    0
}

pgbpf_common_ebpf::program_support!();
