//! Finds the postgres binary and its probes, attaches them, and drains the finished
//! statements from the ring buffer.

use std::time::Duration;

use aya::maps::{MapData, RingBuf};
use pgbpf_common::{
    loader::{self, Loaded},
    output::Output,
    postgres, query, query_probes,
    records::Scope,
    runtime::{Attached, Trace},
    target::Target,
};
use query_latency_ebpf::QueryEvent;

use crate::{Args, report::Reporter};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/query_latency"));

/// Finds the binary and its probe sites, loads and attaches.
pub fn start<'a>(args: &'a Args, _out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    let mut target = Target::resolve(&args.target, None)?;
    let (binary, root) = postgres::binary_for_target(&target, args.postgres.as_deref())?;
    for &pid in &target.tgids {
        postgres::postgres_binary_of_pid(pid)?;
    }
    let plan = if args.uprobes {
        query_probes::plan_uprobes(&binary, &root)?
    } else {
        query_probes::plan(&binary, &root, "query_latency")?
    };
    loader::check_privileges()?;
    // A postmaster's backends are its children, also those forked later.
    target.follow_descendants()?;
    let text_bytes = args.text_bytes;
    let mut loaded = loader::load("query_latency", OBJECT, args.out.verbose, |l| {
        target.set_globals(l);
        l.override_global("PGBPF_QUERY_TEXT_MAX", &text_bytes, true);
    })?;
    target.fill_maps(&mut loaded.ebpf)?;
    target.attach_fork_tracking(&mut loaded)?;
    plan.attach(&mut loaded, "pg_probe", &binary)?;
    let ring = loaded.take_ring_buffer("EVENTS")?;
    Ok(Some(Attached {
        what: format!(
            "Tracing statements of {} in {}",
            target.describe(),
            binary.display()
        ),
        details: vec![format!("{} {} sites", plan.sites.len(), plan.source)],
        started: loaded.started,
        watch: target.roots(),
        trace: Box::new(LatencyTrace {
            loaded,
            ring,
            reporter: Reporter::new(args),
            active: args.active,
        }),
    }))
}

/// A finished statement is one ring buffer record.
struct LatencyTrace {
    loaded: Loaded,
    ring: RingBuf<MapData>,
    reporter: Reporter,
    /// `--active`: each report lists the statements running at that moment.
    active: bool,
}

impl Trace for LatencyTrace {
    fn wait(&mut self, timeout: Duration) {
        loader::wait_readable(&self.ring, timeout);
    }

    fn drain(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let reporter = &mut self.reporter;
        Ok(loader::drain_records(&mut self.ring, |ev: &QueryEvent| {
            reporter.event(out, ev)
        })?)
    }

    fn interval(&mut self, out: &mut Output) -> anyhow::Result<()> {
        if self.active {
            let running = query::active_queries(&self.loaded.ebpf)?;
            self.reporter.active(out, &running)?;
        }
        Ok(self
            .reporter
            .report(out, Scope::Interval, &self.loaded.counters()?)?)
    }

    fn finish(&mut self, out: &mut Output) -> anyhow::Result<()> {
        if self.active {
            let running = query::active_queries(&self.loaded.ebpf)?;
            self.reporter.active(out, &running)?;
        }
        Ok(self
            .reporter
            .report(out, Scope::Total, &self.loaded.counters()?)?)
    }
}
