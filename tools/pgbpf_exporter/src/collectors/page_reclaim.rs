//! Memory reclaim per container: page_reclaim's vmscan tracepoint programs on every process;
//! the kernel keeps cumulative sums per process and cgroup, read at each scrape and summed
//! per cgroup. The kernel's table holds 8192 processes: those that exited are folded into
//! per-cgroup sums here and removed from it at each rescan, so a node running for months
//! never fills it.

use std::collections::{BTreeMap, HashMap};

use aya::maps::PerCpuHashMap;
use page_reclaim_ebpf::{KINDS, ReclaimKey, ReclaimStats, counter};
use pgbpf_common::{cgroup::Placement, loader::Loaded, procs, system};

use super::{Collector, tool_args};
use crate::{
    Args,
    families::Families,
    placement::{self, Placements},
};

/// The reclaim kinds by index (page_reclaim_ebpf::KIND_*), as label values.
const KIND_NAMES: [&str; KINDS] = ["memcg", "direct"];

pub struct Reclaim {
    loaded: Loaded,
    placements: Placements,
    page_size: u64,
    /// What exited processes reclaimed, per cgroup id (their rows removed from the kernel's).
    exited: HashMap<u64, Sums>,
}

impl Reclaim {
    pub fn start(args: &Args) -> anyhow::Result<Reclaim> {
        let mut tool: page_reclaim::Args = tool_args(&["page_reclaim"])?;
        tool.out.verbose = args.verbose;
        let (loaded, _target) = page_reclaim::trace::attach(&tool)?;
        Ok(Reclaim {
            loaded,
            placements: Placements::default(),
            page_size: system::page_size(),
            exited: HashMap::new(),
        })
    }
}

/// Sums of one cgroup, per kind.
#[derive(Clone, Default)]
struct Sums {
    pages: [u64; KINDS],
    episodes: [u64; KINDS],
    stall_ns: [u64; KINDS],
}

impl Sums {
    fn add(&mut self, pages: &[u64; KINDS], episodes: &[u64; KINDS], stall_ns: &[u64; KINDS]) {
        for k in 0..KINDS {
            self.pages[k] += pages[k];
            self.episodes[k] += episodes[k];
            self.stall_ns[k] += stall_ns[k];
        }
    }
}

impl Collector for Reclaim {
    fn name(&self) -> &'static str {
        "page_reclaim"
    }

    fn poll(&mut self) -> anyhow::Result<()> {
        // Nothing to drain: the kernel keeps the sums.
        Ok(())
    }

    fn rescan(&mut self) -> anyhow::Result<()> {
        let snapshot = page_reclaim::trace::read_snapshot(&self.loaded)?;
        let mut stats: PerCpuHashMap<_, ReclaimKey, ReclaimStats> =
            PerCpuHashMap::try_from(self.loaded.map_mut("STATS")?)?;
        // An exited process reclaims no more: its row is final.
        for (key, t) in snapshot.processes {
            if procs::alive(key.tgid) {
                continue;
            }
            if stats.remove(&key).is_ok() {
                self.exited.entry(key.cgroup_id).or_default().add(
                    &t.pages,
                    &t.episodes,
                    &t.stall_ns,
                );
            }
        }
        // Cgroups removed since (containers gone) have nothing more to say.
        let placements = &mut self.placements;
        self.exited.retain(|&id, _| {
            let p = placements.of_cgroup(id).clone();
            placements.exists(&p)
        });
        Ok(())
    }

    fn families(&mut self, out: &mut Families) -> anyhow::Result<()> {
        let snapshot = page_reclaim::trace::read_snapshot(&self.loaded)?;
        let mut by_id: HashMap<u64, Sums> = self.exited.clone();
        for (key, t) in &snapshot.processes {
            by_id
                .entry(key.cgroup_id)
                .or_default()
                .add(&t.pages, &t.episodes, &t.stall_ns);
        }
        let mut by_cgroup: BTreeMap<Placement, Sums> = BTreeMap::new();
        for (id, s) in by_id {
            by_cgroup
                .entry(self.placements.of_cgroup(id).clone())
                .or_default()
                .add(&s.pages, &s.episodes, &s.stall_ns);
        }
        for (placement, sums) in &by_cgroup {
            for (k, kind) in KIND_NAMES.iter().enumerate() {
                if sums.episodes[k] == 0 {
                    continue;
                }
                let mut labels = vec![("kind", (*kind).to_string())];
                labels.extend(placement::labels(placement));
                out.counter(
                    "pgbpf_reclaim_bytes",
                    "Bytes reclaimed by the cgroup's tasks, memcg (limit) or direct (global) reclaim.",
                )
                .set(labels.clone(), (sums.pages[k] * self.page_size) as f64);
                out.counter(
                    "pgbpf_reclaim_stall_seconds",
                    "Time the cgroup's tasks stalled in reclaim instead of running.",
                )
                .set(labels.clone(), sums.stall_ns[k] as f64 / 1e9);
                out.counter(
                    "pgbpf_reclaim_episodes",
                    "Reclaim episodes (begin to end) of the cgroup's tasks.",
                )
                .set(labels, sums.episodes[k] as f64);
            }
        }
        let c = snapshot.counters;
        out.counter(
            "pgbpf_kswapd_wakes",
            "Times kswapd woke up on this node (system-wide context for the reclaim series).",
        )
        .set(vec![], c[counter::KSWAPD_WAKES as usize] as f64);
        Ok(())
    }

    fn objects(&self) -> Vec<&Loaded> {
        vec![&self.loaded]
    }

    fn lost(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        let c: [u64; counter::COUNT as usize] = self.loaded.counters()?;
        Ok(vec![
            ("stats_map_full", c[counter::STATS_MAP_FULL as usize]),
            ("starts_map_full", c[counter::STARTS_MAP_FULL as usize]),
        ])
    }
}
