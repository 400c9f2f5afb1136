//! Loads the kernel programs, attaches them to the vmscan tracepoints and reads the maps.

use std::collections::HashMap;

use anyhow::{Context as _, anyhow, bail};
use aya::maps::{PerCpuArray, PerCpuHashMap};
use page_reclaim_ebpf::{HIST_SLOTS, KINDS, ReclaimKey, ReclaimStats};
use pgbpf_common::{
    loader::{self, Loaded},
    output::{self, Output},
    records::Scope,
    runtime::{Attached, Trace},
    system,
    target::Target,
    tracefs,
};

use crate::{
    Args,
    report::{Reporter, Snapshot, Totals},
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/page_reclaim"));

/// The tracepoints and the programs attached to them.
const HOOKS: [(&str, &str); 6] = [
    ("memcg_reclaim_begin", "mm_vmscan_memcg_reclaim_begin"),
    ("memcg_reclaim_end", "mm_vmscan_memcg_reclaim_end"),
    ("direct_reclaim_begin", "mm_vmscan_direct_reclaim_begin"),
    ("direct_reclaim_end", "mm_vmscan_direct_reclaim_end"),
    ("kswapd_wake", "mm_vmscan_kswapd_wake"),
    ("wakeup_kswapd", "mm_vmscan_wakeup_kswapd"),
];

/// `nr_reclaimed` of both *_reclaim_end events (one template, so one offset).
fn nr_reclaimed_offset() -> anyhow::Result<u32> {
    let memcg = tracefs::field("vmscan", "mm_vmscan_memcg_reclaim_end", "nr_reclaimed")?;
    let direct = tracefs::field("vmscan", "mm_vmscan_direct_reclaim_end", "nr_reclaimed")?;
    if memcg != direct || memcg.size != 8 {
        bail!("unexpected layout of the vmscan reclaim_end tracepoints: {memcg:?} vs {direct:?}");
    }
    Ok(memcg.offset)
}

/// Resolves the target, loads and attaches the programs (the tool, and the exporter's reclaim
/// collector, which reads the maps with [`read_snapshot`]).
pub fn attach(args: &Args) -> anyhow::Result<(Loaded, Target)> {
    let mut target = Target::resolve(&args.target, args.comm.comm.as_deref())?;
    loader::check_privileges()?;
    // A server named by --pgdata or --port is its processes: the postmaster's children too.
    if target.follows_servers() {
        target.follow_descendants()?;
    }
    let offset = nr_reclaimed_offset()?;
    let mut loaded = loader::load("page_reclaim", OBJECT, args.out.verbose, |l| {
        target.set_globals(l);
        l.override_global("NR_RECLAIMED_OFFSET", &offset, true);
    })?;
    target.fill_maps(&mut loaded.ebpf)?;
    if target.follows_servers() {
        target.attach_fork_tracking(&mut loaded)?;
    }
    for (prog, event) in HOOKS {
        loaded.attach_tracepoint(prog, "vmscan", event)?;
    }
    Ok((loaded, target))
}

/// Resolves the target, loads and attaches the programs.
pub fn start<'a>(args: &'a Args, _out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    let (loaded, target) = attach(args)?;
    let reporter = Reporter::new(args, target.describe(), system::page_size());
    Ok(Some(Attached {
        what: format!("Tracing memory reclaim of {}", target.describe()),
        details: vec![],
        started: loaded.started,
        watch: target.watched(),
        trace: Box::new(ReclaimTrace { loaded, reporter }),
    }))
}

/// The kernel keeps cumulative per-CPU sums: nothing to drain, a snapshot per report.
struct ReclaimTrace {
    loaded: Loaded,
    reporter: Reporter,
}

impl Trace for ReclaimTrace {
    fn drain(&mut self, _out: &mut Output) -> anyhow::Result<()> {
        Ok(())
    }

    fn interval(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let snap = read_snapshot(&self.loaded)?;
        Ok(self.reporter.report(out, Scope::Interval, &snap)?)
    }

    fn finish(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let snap = read_snapshot(&self.loaded)?;
        Ok(self.reporter.report(out, Scope::Total, &snap)?)
    }
}

/// Sums the per-CPU maps into one [`Snapshot`] (cumulative since attach).
pub fn read_snapshot(loaded: &Loaded) -> anyhow::Result<Snapshot> {
    let ebpf = &loaded.ebpf;
    let map = |name: &str| {
        ebpf.map(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
    };
    let stats: PerCpuHashMap<_, ReclaimKey, ReclaimStats> = PerCpuHashMap::try_from(map("STATS")?)?;
    let mut processes: HashMap<ReclaimKey, Totals> = HashMap::new();
    for item in stats.iter() {
        // An entry can vanish between the key walk and the lookup; skip it this round.
        let Ok((key, per_cpu)) = item else { continue };
        let t = processes.entry(key).or_default();
        for s in per_cpu.iter() {
            for k in 0..KINDS {
                t.pages[k] += s.pages[k];
                t.episodes[k] += s.episodes[k];
                t.stall_ns[k] += s.stall_ns[k];
            }
            t.max_stall_ns = t.max_stall_ns.max(s.max_stall_ns);
            if s.episodes.iter().any(|&e| e > 0) && t.comm.is_empty() {
                t.comm = output::c_str(&s.comm);
            }
        }
    }
    let hist_map: PerCpuArray<_, u64> = PerCpuArray::try_from(map("STALL_HIST")?)?;
    let mut hist = [[0u64; HIST_SLOTS]; KINDS];
    for (kind, slots) in hist.iter_mut().enumerate() {
        for (slot, v) in slots.iter_mut().enumerate() {
            let idx = (kind * HIST_SLOTS + slot) as u32;
            *v = hist_map
                .get(&idx, 0)
                .context("reading STALL_HIST")?
                .iter()
                .sum();
        }
    }
    Ok(Snapshot {
        processes,
        hist,
        counters: loaded.counters()?,
    })
}
