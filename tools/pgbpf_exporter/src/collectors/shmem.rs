//! Shared-memory calls per container: shmem's syscall programs on every postgres process
//! (shm_open, ftruncate, fallocate, shared mmap, unlink, memfd, SysV), counted by call and
//! result. The series a DBA alerts on is the failures: a parallel query's `fallocate` of a
//! DSM segment failing with ENOSPC in a container whose /dev/shm is too small.

use std::collections::BTreeMap;

use pgbpf_common::{cgroup::Placement, loader::Loaded, target::Target};
use shmem::event;
use shmem_ebpf::{ShmEvent, counter};

use super::{Collector, tool_args};
use crate::{
    Args,
    families::Families,
    placement::{self, Placements},
};

/// Calls of one (cgroup, call, result), cumulative.
#[derive(Default)]
struct Calls {
    calls: u64,
    /// Bytes asked for by the calls that carry a size (ftruncate, fallocate, mmap, shmget).
    bytes: u64,
}

pub struct SharedMemory {
    programs: shmem::trace::Programs,
    placements: Placements,
    /// By (where, call, result: "ok" or the errno's name).
    calls: BTreeMap<(Placement, &'static str, String), Calls>,
}

impl SharedMemory {
    pub fn start(args: &Args) -> anyhow::Result<SharedMemory> {
        let mut tool: shmem::Args = tool_args(&["shmem"])?;
        tool.out.verbose = args.verbose;
        // Every postgres process of the node, in any container; nothing else (a shared
        // mmap of another program is not PostgreSQL's shared memory).
        let mut target = Target::resolve(&tool.target, Some("postgres"))?;
        Ok(SharedMemory {
            programs: shmem::trace::attach(&tool, &mut target)?,
            placements: Placements::default(),
            calls: BTreeMap::new(),
        })
    }
}

/// Counts one kernel record in `calls`, placed when it is read (a container removed right
/// after a failure still has its labels).
fn count(
    calls: &mut BTreeMap<(Placement, &'static str, String), Calls>,
    placements: &mut Placements,
    raw: &ShmEvent,
) {
    let ev = event::decode(raw);
    // Function events (dsm_create, ...) have no result; the exporter probes none.
    if !ev.is_syscall {
        return;
    }
    let result = match ev.errno() {
        Some(errno) => event::errno_name(errno),
        None => "ok".to_string(),
    };
    let placement = placements.of_cgroup(raw.cgroup_id).clone();
    let c = calls.entry((placement, ev.call, result)).or_default();
    c.calls += 1;
    c.bytes += ev.size;
}

impl Collector for SharedMemory {
    fn name(&self) -> &'static str {
        "shmem"
    }

    fn poll(&mut self) -> anyhow::Result<()> {
        let (calls, placements) = (&mut self.calls, &mut self.placements);
        let p = &mut self.programs;
        pgbpf_common::loader::drain_records(&mut p.ring, |raw: &ShmEvent| {
            count(calls, placements, raw);
            Ok::<(), std::convert::Infallible>(())
        })
        .unwrap_or_else(|never| match never {});
        // Processes met before they were located: their next events carry the statement.
        p.query_addrs.locate_wanted(&mut p.loaded)
    }

    fn rescan(&mut self) -> anyhow::Result<()> {
        // Containers removed since have nothing more to say: their series go.
        let placements = &self.placements;
        self.calls.retain(|(p, _, _), _| placements.exists(p));
        Ok(())
    }

    fn families(&mut self, out: &mut Families) -> anyhow::Result<()> {
        for ((placement, call, result), c) in &self.calls {
            let mut labels = placement::labels(placement);
            labels.push(("call", call.to_string()));
            labels.push(("result", result.clone()));
            out.counter(
                "pgbpf_shm_calls",
                "Shared-memory calls of postgres processes, by call and result (ok, or the \
                 errno's name: ENOSPC is a /dev/shm too small for a DSM segment).",
            )
            .set(labels.clone(), c.calls as f64);
            if c.bytes > 0 {
                out.counter(
                    "pgbpf_shm_requested_bytes",
                    "Bytes asked for by the calls that carry a size (ftruncate, fallocate, \
                     mmap, shmget), by call and result.",
                )
                .set(labels, c.bytes as f64);
            }
        }
        Ok(())
    }

    fn objects(&self) -> Vec<&Loaded> {
        vec![&self.programs.loaded]
    }

    fn lost(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        let c: [u64; counter::COUNT as usize] = self.programs.loaded.counters()?;
        Ok(vec![
            ("ring_buffer_full", c[counter::RINGBUF_FULL as usize]),
            ("pending_full", c[counter::PENDING_FULL as usize]),
        ])
    }
}
