//! Write throttling per container: io_timeouts' programs on every process: dirty-page
//! pauses (balance_dirty_pages), reclaim throttling (mm_vmscan_throttled), and the pages
//! the flushers wrote per device.

use std::collections::BTreeMap;

use io_timeouts::report::Names;
use io_timeouts_ebpf::{IoEvent, counter, kind};
use pgbpf_common::{cgroup::Placement, loader::Loaded, output, query_string::QueryAddrs, system};

use super::{Collector, tool_args};
use crate::{
    Args,
    families::Families,
    placement::{self, Placements},
};

/// Throttling of one cgroup's tasks, cumulative.
#[derive(Default)]
struct Waits {
    dirty_pauses: u64,
    dirty_ns: u64,
    reclaim_waits: u64,
    reclaim_ns: u64,
}

pub struct Throttling {
    loaded: Loaded,
    ring: aya::maps::RingBuf<aya::maps::MapData>,
    query_addrs: QueryAddrs,
    counts: Counts,
    page_size: u64,
}

/// What the records added up to so far.
struct Counts {
    names: Names,
    placements: Placements,
    by_cgroup: BTreeMap<Placement, Waits>,
    /// Pages written per (device, reason).
    writeback: BTreeMap<(String, String), u64>,
}

impl Throttling {
    pub fn start(args: &Args) -> anyhow::Result<Throttling> {
        let mut tool: io_timeouts::Args = tool_args(&["io_timeouts"])?;
        tool.out.verbose = args.verbose;
        let t = io_timeouts::trace::attach(&tool)?;
        Ok(Throttling {
            loaded: t.loaded,
            ring: t.ring,
            query_addrs: t.query_addrs,
            counts: Counts {
                names: t.names,
                placements: Placements::default(),
                by_cgroup: BTreeMap::new(),
                writeback: BTreeMap::new(),
            },
            page_size: system::page_size(),
        })
    }
}

impl Counts {
    fn event(&mut self, ev: &IoEvent) {
        match ev.kind {
            kind::DIRTY_PAUSE | kind::RECLAIM_THROTTLE => {
                // The cgroup the kernel saw: the task may be gone when this is read.
                let placement = self.placements.of_cgroup(ev.cgroup_id).clone();
                let w = self.by_cgroup.entry(placement).or_default();
                if ev.kind == kind::DIRTY_PAUSE {
                    w.dirty_pauses += 1;
                    w.dirty_ns += ev.a * 1_000_000;
                } else {
                    w.reclaim_waits += 1;
                    w.reclaim_ns += ev.a * 1_000;
                }
            }
            kind::WRITEBACK => {
                let key = (output::c_str(&ev.name), self.names.wb_reason(ev.reason));
                *self.writeback.entry(key).or_default() += ev.a;
            }
            _ => {}
        }
    }
}

impl Collector for Throttling {
    fn name(&self) -> &'static str {
        "io_timeouts"
    }

    fn poll(&mut self) -> anyhow::Result<()> {
        let counts = &mut self.counts;
        pgbpf_common::loader::drain_records(&mut self.ring, |ev: &IoEvent| {
            counts.event(ev);
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap_or_else(|never| match never {});
        // Processes met before they were located: their next events carry the statement.
        self.query_addrs.locate_wanted(&mut self.loaded)
    }

    fn rescan(&mut self) -> anyhow::Result<()> {
        // Containers removed since have nothing more to say: their series go.
        let placements = &self.counts.placements;
        self.counts.by_cgroup.retain(|p, _| placements.exists(p));
        Ok(())
    }

    fn families(&mut self, out: &mut Families) -> anyhow::Result<()> {
        for (placement, w) in &self.counts.by_cgroup {
            let labels = placement::labels(placement);
            let mut add = |reason: &str, waits: u64, ns: u64| {
                let mut l = labels.clone();
                l.push(("reason", reason.to_string()));
                out.counter(
                    "pgbpf_write_throttle_seconds",
                    "Time the cgroup's tasks were put to sleep: dirty_pages (balance_dirty_pages \
                     pauses of writers) or reclaim (mm_vmscan_throttled waits).",
                )
                .set(l.clone(), ns as f64 / 1e9);
                out.counter(
                    "pgbpf_write_throttles",
                    "Pauses and throttling waits of the cgroup's tasks.",
                )
                .set(l, waits as f64);
            };
            if w.dirty_pauses > 0 {
                add("dirty_pages", w.dirty_pauses, w.dirty_ns);
            }
            if w.reclaim_waits > 0 {
                add("reclaim", w.reclaim_waits, w.reclaim_ns);
            }
        }
        for ((device, reason), pages) in &self.counts.writeback {
            out.counter(
                "pgbpf_writeback_bytes",
                "Bytes the kernel's flushers wrote back, per backing device and reason.",
            )
            .set(
                vec![("device", device.clone()), ("reason", reason.clone())],
                (pages * self.page_size) as f64,
            );
        }
        Ok(())
    }

    fn objects(&self) -> Vec<&Loaded> {
        vec![&self.loaded]
    }

    fn lost(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        let c: [u64; counter::COUNT as usize] = self.loaded.counters()?;
        Ok(vec![(
            "ring_buffer_full",
            c[counter::RINGBUF_FULL as usize],
        )])
    }
}
