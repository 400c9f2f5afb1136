//! Reads the tracepoints' field offsets, loads and attaches the programs, and hands the ring
//! buffer's events to the report.

use std::{
    collections::{HashMap, hash_map::Entry},
    time::Duration,
};

use anyhow::Context as _;
use aya::maps::{MapData, RingBuf};
use io_timeouts_ebpf::{IoEvent, counter};
use pgbpf_common::{
    loader::{self, Loaded},
    output::Output,
    query_string::QueryAddrs,
    records::Scope,
    runtime::{Attached, Trace},
    target::Target,
    tracefs,
};

use crate::{
    Args,
    report::{Names, Reporter},
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/io_timeouts"));

/// Kernel global ← (tracepoint category, event, field).
const OFFSETS: &[(&str, &str, &str, &str)] = &[
    ("BDP_BDI", "writeback", "balance_dirty_pages", "bdi"),
    ("BDP_LIMIT", "writeback", "balance_dirty_pages", "limit"),
    ("BDP_DIRTY", "writeback", "balance_dirty_pages", "dirty"),
    ("BDP_PAUSE", "writeback", "balance_dirty_pages", "pause"),
    ("BDP_PERIOD", "writeback", "balance_dirty_pages", "period"),
    (
        "THR_DELAYED",
        "vmscan",
        "mm_vmscan_throttled",
        "usec_delayed",
    ),
    (
        "THR_TIMEOUT",
        "vmscan",
        "mm_vmscan_throttled",
        "usec_timeout",
    ),
    ("THR_NID", "vmscan", "mm_vmscan_throttled", "nid"),
    ("THR_REASON", "vmscan", "mm_vmscan_throttled", "reason"),
    // writeback_start and writeback_written share one record layout (writeback_work_class).
    ("WB_NAME", "writeback", "writeback_written", "name"),
    ("WB_NR_PAGES", "writeback", "writeback_written", "nr_pages"),
    ("WB_REASON", "writeback", "writeback_written", "reason"),
    ("RQ_DEV", "block", "block_rq_issue", "dev"),
    ("RQ_SECTOR", "block", "block_rq_issue", "sector"),
    ("RQ_BYTES", "block", "block_rq_issue", "bytes"),
    ("RQ_RWBS", "block", "block_rq_issue", "rwbs"),
    ("RQC_DEV", "block", "block_rq_complete", "dev"),
    ("RQC_SECTOR", "block", "block_rq_complete", "sector"),
    ("RQC_ERROR", "block", "block_rq_complete", "error"),
    ("RQC_RWBS", "block", "block_rq_complete", "rwbs"),
];

/// The programs attached: pauses, waits, writebacks and block requests arrive in `ring`.
pub struct Throttling {
    pub loaded: Loaded,
    /// One [`IoEvent`] per pause, wait, writeback and block request.
    pub ring: RingBuf<MapData>,
    /// Finds the statement text of PostgreSQL processes met later ([`QueryAddrs::locate_wanted`]).
    pub query_addrs: QueryAddrs,
    /// Names of writeback reasons, from the tracepoint's format.
    pub names: Names,
    /// PostgreSQL processes whose statement text was located at start.
    pub located: usize,
    pub target: Target,
}

/// Reads the field offsets, loads and attaches (the tool, and the exporter's throttling
/// collector).
pub fn attach(args: &Args) -> anyhow::Result<Throttling> {
    let mut target = Target::resolve(&args.target, args.comm.comm.as_deref())?;
    loader::check_privileges()?;
    target.follow_descendants()?;
    // Each format file read once: five events, twenty fields.
    let mut formats: HashMap<(&str, &str), String> = HashMap::new();
    let mut offsets = Vec::with_capacity(OFFSETS.len());
    for &(_, cat, event, field) in OFFSETS {
        let text = match formats.entry((cat, event)) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(tracefs::format(cat, event)?),
        };
        let f = tracefs::parse_field(text, field)
            .with_context(|| format!("tracepoint {cat}:{event}"))?;
        offsets.push(f.offset);
    }
    let names = Names::from_format(&formats[&("writeback", "writeback_written")]);
    let fork_child_offset = QueryAddrs::fork_child_offset()?;
    let mut loaded = loader::load("io_timeouts", OBJECT, args.out.verbose, |l| {
        target.set_globals(l);
        for ((name, ..), value) in OFFSETS.iter().zip(&offsets) {
            l.override_global(name, value, true);
        }
        QueryAddrs::set_globals(l, &fork_child_offset);
    })?;
    target.fill_maps(&mut loaded.ebpf)?;
    target.attach_fork_tracking(&mut loaded)?;
    let (query_addrs, located) = QueryAddrs::start(&mut loaded, &target.processes_now())?;
    loaded.attach_tracepoint("dirty_pause", "writeback", "balance_dirty_pages")?;
    loaded.attach_tracepoint("reclaim_throttled", "vmscan", "mm_vmscan_throttled")?;
    loaded.attach_tracepoint("writeback_start", "writeback", "writeback_start")?;
    loaded.attach_tracepoint("writeback_written", "writeback", "writeback_written")?;
    if args.block {
        loaded.attach_tracepoint("rq_issue", "block", "block_rq_issue")?;
        loaded.attach_tracepoint("rq_complete", "block", "block_rq_complete")?;
    }
    let ring = loaded.take_ring_buffer("EVENTS")?;
    Ok(Throttling {
        loaded,
        ring,
        query_addrs,
        names,
        located,
        target,
    })
}

/// Reads the field offsets, loads and attaches.
pub fn start<'a>(args: &'a Args, _out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    let t = attach(args)?;
    Ok(Some(Attached {
        what: format!(
            "Tracing write throttling of {}{}",
            t.target.describe(),
            if args.block { ", with block I/O" } else { "" }
        ),
        details: vec![format!("{} PostgreSQL processes located", t.located)],
        started: t.loaded.started,
        watch: t.target.watched(),
        trace: Box::new(IoTrace {
            reporter: Reporter::new(args, t.names),
            loaded: t.loaded,
            ring: t.ring,
            query_addrs: t.query_addrs,
        }),
    }))
}

/// Every pause, wait, writeback and block request is a ring buffer record.
struct IoTrace {
    loaded: Loaded,
    ring: RingBuf<MapData>,
    reporter: Reporter,
    query_addrs: QueryAddrs,
}

impl IoTrace {
    fn lost(&self) -> anyhow::Result<u64> {
        let c: [u64; counter::COUNT as usize] = self.loaded.counters()?;
        Ok(c[counter::RINGBUF_FULL as usize])
    }
}

impl Trace for IoTrace {
    fn wait(&mut self, timeout: Duration) {
        loader::wait_readable(&self.ring, timeout);
    }

    fn drain(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let reporter = &mut self.reporter;
        loader::drain_records(&mut self.ring, |ev: &IoEvent| reporter.event(out, ev))?;
        // Processes met before they were located: their next events carry the statement.
        self.query_addrs.locate_wanted(&mut self.loaded)
    }

    fn interval(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let lost = self.lost()?;
        Ok(self.reporter.report(out, Scope::Interval, lost)?)
    }

    fn finish(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let lost = self.lost()?;
        Ok(self.reporter.report(out, Scope::Total, lost)?)
    }
}
