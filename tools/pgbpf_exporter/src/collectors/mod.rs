//! The collectors: each runs one tool's kernel programs (attached with the tool's own
//! `attach`) and turns what they gather into metric families; and the self-metrics every
//! collector shares (BPF run time and runs per program, lost events, programs loaded).
//!
//! - [`query_latency`]: statement latency histograms.
//! - [`page_reclaim`]: reclaim per container.
//! - [`io_timeouts`]: dirty-page and reclaim throttling, writeback.
//! - [`shmem`]: shared-memory calls and their failures.
//! - [`wire`]: PostgreSQL requests and errors by SQLSTATE class, Redis commands and errors by
//!   code, from the wire.

pub mod io_timeouts;
pub mod page_reclaim;
pub mod query_latency;
pub mod shmem;
pub mod wire;

use std::collections::BTreeMap;

use pgbpf_common::loader::Loaded;

use crate::{Args, CollectorName, families::Families};

/// One tool's programs, running until the exporter ends.
pub trait Collector: Send {
    fn name(&self) -> &'static str;

    /// Takes what the kernel gathered since the last call (ring buffers).
    fn poll(&mut self) -> anyhow::Result<()>;

    /// Every few seconds: picks up what appeared since (a server started from another
    /// binary, in a new container) and retires what is gone.
    fn rescan(&mut self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Adds the collector's metrics to a scrape (maps are read here).
    fn families(&mut self, out: &mut Families) -> anyhow::Result<()>;

    /// The loaded objects, for the self-metrics.
    fn objects(&self) -> Vec<&Loaded>;

    /// Run time and runs per program name, summed over the objects (and over those let go:
    /// counters never go down).
    fn programs(&self) -> ProgramStats {
        program_stats(&self.objects())
    }

    /// Events lost so far, by why (the kernel's COUNTERS).
    fn lost(&self) -> anyhow::Result<Vec<(&'static str, u64)>>;
}

/// Seconds and runs per program name.
pub type ProgramStats = BTreeMap<String, (f64, u64)>;

/// The kernel's run time and run count of every loaded program of `objects`, by name
/// (programs of the same name in several objects, one per postgres binary, summed).
pub fn program_stats(objects: &[&Loaded]) -> ProgramStats {
    let mut programs = ProgramStats::new();
    for object in objects {
        for (name, program) in object.ebpf.programs() {
            let Ok(info) = program.info() else { continue };
            let p = programs.entry(name.to_string()).or_default();
            p.0 += info.run_time().as_secs_f64();
            p.1 += info.run_count();
        }
    }
    programs
}

/// Starts the collector `name`.
pub fn start(name: CollectorName, args: &Args) -> anyhow::Result<Box<dyn Collector>> {
    Ok(match name {
        CollectorName::QueryLatency => Box::new(query_latency::Statements::start(args)?),
        CollectorName::PageReclaim => Box::new(page_reclaim::Reclaim::start(args)?),
        CollectorName::IoTimeouts => Box::new(io_timeouts::Throttling::start(args)?),
        CollectorName::Shmem => Box::new(shmem::SharedMemory::start(args)?),
        CollectorName::PgwireTrace => Box::new(wire::WireCollector::postgres(args)?),
        CollectorName::RedisTrace => Box::new(wire::WireCollector::redis(args)?),
    })
}

/// A tool's arguments as its command line would give them: the exporter runs the tools'
/// default configuration, on every process.
pub fn tool_args<T: clap::Parser>(argv: &[&str]) -> anyhow::Result<T> {
    Ok(T::try_parse_from(argv)?)
}

/// The self-metrics of the running collectors, and the `up` gauge of all the asked ones.
pub fn self_metrics(
    running: &mut [Box<dyn Collector>],
    failed: &[(&'static str, String)],
    out: &mut Families,
) {
    for c in running.iter() {
        out.gauge(
            "pgbpf_collector_up",
            "1 when the collector's programs are attached, 0 when they could not be (see pgbpf_collector_error).",
        )
        .set(vec![("collector", c.name().into())], 1.0);
    }
    for (name, error) in failed {
        out.gauge(
            "pgbpf_collector_up",
            "1 when the collector's programs are attached, 0 when they could not be (see pgbpf_collector_error).",
        )
        .set(vec![("collector", (*name).into())], 0.0);
        out.gauge(
            "pgbpf_collector_error",
            "Why a collector is not running (1, with the error as a label).",
        )
        .set(
            vec![("collector", (*name).into()), ("error", error.clone())],
            1.0,
        );
    }
    for c in running.iter() {
        let collector = c.name();
        let loaded_programs = c
            .objects()
            .iter()
            .flat_map(|o| o.ebpf.programs())
            .filter(|(_, p)| p.info().is_ok())
            .count();
        out.gauge(
            "pgbpf_bpf_programs",
            "Kernel programs the collector has loaded.",
        )
        .set(
            vec![("collector", collector.into())],
            loaded_programs as f64,
        );
        for (program, (seconds, runs)) in c.programs() {
            let labels = vec![("collector", collector.into()), ("program", program)];
            out.counter(
                "pgbpf_bpf_program_run_seconds",
                "Time the kernel spent running the program (0 with --no-bpf-stats).",
            )
            .set(labels.clone(), seconds);
            out.counter(
                "pgbpf_bpf_program_runs",
                "Times the kernel ran the program (0 with --no-bpf-stats).",
            )
            .set(labels, runs as f64);
        }
        match c.lost() {
            Ok(lost) => {
                for (reason, n) in lost {
                    out.counter(
                        "pgbpf_lost_events",
                        "Events the kernel programs could not pass on or keep, by why.",
                    )
                    .set(
                        vec![("collector", collector.into()), ("reason", reason.into())],
                        n as f64,
                    );
                }
            }
            Err(e) => eprintln!("pgbpf_exporter: {collector}: reading lost events: {e:#}"),
        }
    }
}
