//! Finds the postgres binary and its probes, attaches them, and drains the finished
//! statements from the ring buffer.

use std::{path::PathBuf, time::Duration};

use aya::maps::{MapData, RingBuf};
use pgbpf_common::{
    loader::{self, Loaded},
    output::Output,
    postgres, query, query_probes,
    records::Scope,
    runtime::{Attached, Trace},
    target::Target,
    tracefs,
};
use query_latency_ebpf::{QUERY_EVENT_HEADER, QueryEvent};

use crate::{Args, report::Reporter};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/query_latency"));

/// A postgres binary's statement probes, attached: finished statements arrive in `ring`.
pub struct Statements {
    pub loaded: Loaded,
    /// One [`QueryEvent`] per finished statement (drained with [`drain`]).
    pub ring: RingBuf<MapData>,
    /// The binary whose probes are attached (every process running it is traced).
    pub binary: PathBuf,
    /// How statements are timed: "4 USDT sites", "1 USDT site, socket tracepoints".
    pub mechanism: String,
    pub target: Target,
}

/// Hands every finished statement waiting in the ring to `each`.
pub fn drain<E>(
    ring: &mut RingBuf<MapData>,
    each: impl FnMut(&QueryEvent) -> Result<(), E>,
) -> Result<(), E> {
    // Records carry as much text as the statement has (see QueryEvent).
    loader::drain_prefixed_records(ring, QUERY_EVENT_HEADER, each)
}

/// Finds the binary and its probe sites, loads and attaches (the tool, and the exporter's
/// statement collector).
pub fn attach(args: &Args) -> anyhow::Result<Statements> {
    let mut target = Target::resolve(&args.target, None)?;
    let (binary, root) = postgres::binary_for_target(&target, args.postgres.as_deref())?;
    for &pid in &target.tgids {
        postgres::postgres_binary_of_pid(pid)?;
    }
    // The query context (four USDT hits per statement), or with --requests the socket hooks
    // and one hit per statement: measured, the hooks' programs cost as much as the three
    // traps they save (docs/query_latency.md, OVERHEAD).
    let keep_context = !args.requests;
    let plan = if args.uprobes {
        query_probes::plan_uprobes(&binary, &root)?
    } else if keep_context {
        query_probes::plan(&binary, &root, "query_latency")?
    } else {
        query_probes::plan_statement_ends(&binary, &root, "query_latency")?
    };
    loader::check_privileges()?;
    // A postmaster's backends are its children, also those forked later.
    target.follow_descendants()?;
    let text_bytes = args.text_bytes;
    let mut loaded = loader::load("query_latency", OBJECT, args.out.verbose, |l| {
        target.set_globals(l);
        l.override_global("PGBPF_QUERY_TEXT_MAX", &text_bytes, true);
        if keep_context {
            query::keep_context(l);
        }
    })?;
    target.fill_maps(&mut loaded.ebpf)?;
    target.attach_fork_tracking(&mut loaded)?;
    let mechanism = if keep_context {
        plan.attach(&mut loaded, "pg_probe", &binary)?;
        format!("{} {} sites", plan.sites.len(), plan.source)
    } else {
        plan.attach(&mut loaded, "statement_done", &binary)?;
        loaded.attach_tracepoint("forget_request", "sched", "sched_process_exit")?;
        let hooks = attach_request_hooks(&mut loaded)?;
        format!("{} {} site, {hooks}", plan.sites.len(), plan.source)
    };
    let ring = loaded.take_ring_buffer("EVENTS")?;
    Ok(Statements {
        loaded,
        ring,
        binary,
        mechanism,
        target,
    })
}

/// Finds the binary and its probe sites, loads and attaches.
pub fn start<'a>(args: &'a Args, _out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    let Statements {
        loaded,
        ring,
        binary,
        mechanism,
        target,
    } = attach(args)?;
    Ok(Some(Attached {
        what: format!(
            "Tracing statements of {} in {}",
            target.describe(),
            binary.display()
        ),
        details: vec![mechanism],
        started: loaded.started,
        watch: target.watched(),
        trace: Box::new(LatencyTrace {
            loaded,
            ring,
            reporter: Reporter::new(args),
            active: args.active,
        }),
    }))
}

/// Where requests begin and end: the socket layer's tracepoints (Linux 6.4 and later), else
/// the exits of recvfrom and sendto (what PostgreSQL's backends call). Says which.
fn attach_request_hooks(loaded: &mut Loaded) -> anyhow::Result<&'static str> {
    let events = ["sock_recv_length", "sock_send_length"];
    if events.iter().all(|e| tracefs::format("sock", e).is_ok()) {
        loaded.attach_raw_tracepoint("sock_recv", events[0])?;
        loaded.attach_raw_tracepoint("sock_send", events[1])?;
        return Ok("socket tracepoints");
    }
    loaded.attach_tracepoint("exit_recvfrom", "syscalls", "sys_exit_recvfrom")?;
    loaded.attach_tracepoint("exit_sendto", "syscalls", "sys_exit_sendto")?;
    Ok("recvfrom/sendto exits")
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
        Ok(drain(&mut self.ring, |ev| reporter.event(out, ev))?)
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
