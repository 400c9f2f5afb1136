//! Finds the postgres binary and its probes, attaches them, and runs the event loop.

use std::time::Duration;

use pgbpf_common::{
    cli::{Tick, Ticker},
    loader::{self, Loaded},
    postgres, query, query_probes,
    target::Target,
};
use query_latency_ebpf::QueryEvent;

use crate::{Args, report::Reporter};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/query_latency"));

pub fn run(args: &Args) -> anyhow::Result<()> {
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
    eprintln!(
        "Tracing statements of {} in {} ({} {} sites, attached in {:.0} ms)... Hit Ctrl-C to end.",
        target.describe(),
        binary.display(),
        plan.sites.len(),
        plan.source,
        loaded.startup_ms()
    );
    event_loop(args, &mut loaded)
}

fn event_loop(args: &Args, loaded: &mut Loaded) -> anyhow::Result<()> {
    let mut ring = loaded.take_ring_buffer("EVENTS")?;
    let mut reporter = Reporter::new(args);
    let mut ticker = Ticker::start(&args.out)?;
    loop {
        // 8 MiB of buffer holds far more than 50 ms of statements.
        loader::wait_readable(&ring, 50);
        while let Some(item) = ring.next() {
            let Some(ev) = loader::record::<QueryEvent>(&item) else {
                continue;
            };
            if !reporter.event(&ev) {
                ticker.request_stop();
            }
        }
        match ticker.next(Duration::ZERO) {
            Tick::Idle => {}
            Tick::Interval => {
                if args.active && !reporter.active(&query::active_queries(&loaded.ebpf)?) {
                    ticker.request_stop();
                }
                if !reporter.interval(&loaded.counters()?) {
                    ticker.request_stop();
                }
            }
            Tick::Final => {
                if args.active {
                    reporter.active(&query::active_queries(&loaded.ebpf)?);
                }
                reporter.summary(&loaded.counters()?);
                return Ok(());
            }
        }
    }
}
