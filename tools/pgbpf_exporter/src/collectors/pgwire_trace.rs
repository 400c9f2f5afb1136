//! PostgreSQL requests and errors on the wire: pgwire_trace's capture (socket tracepoints,
//! libssl plaintext for TLS) and decoder on every PostgreSQL server of the node, counted per
//! database, SQLSTATE class and placement. The capture's own drain loop runs it (the tool's
//! `Trace`), with the tool's decoder; the decoded requests are counted here instead of
//! printed.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use pgbpf_capture_ebpf::counter;
use pgbpf_common::{
    cgroup::Placement, loader::Loaded, output::Output, procs, records::Scope, runtime::Trace,
};
use pgwire_trace::{
    decode::{DecodeStats, Event},
    trace::{PgWire, Requests},
};

use super::{Collector, tool_args};
use crate::{
    Args,
    families::Families,
    placement::{self},
};

/// How long a backend's placement is trusted: a pid reused in another container is
/// labelled right again after this.
const KEEP_PLACEMENT: Duration = Duration::from_secs(60);

/// Requests and errors counted so far.
#[derive(Default)]
struct Counts {
    /// (database, placement) → requests.
    requests: BTreeMap<(String, Placement), u64>,
    /// (database, SQLSTATE class, placement) → requests that ended in an error.
    errors: BTreeMap<(String, String, Placement), u64>,
    /// Backends' placements, read from /proc once per backend.
    placements: HashMap<u32, Placement>,
    placements_since: Option<Instant>,
}

impl Counts {
    fn placement(&mut self, pid: u32) -> Placement {
        if self
            .placements_since
            .is_none_or(|t| t.elapsed() > KEEP_PLACEMENT)
        {
            self.placements.clear();
            self.placements_since = Some(Instant::now());
        }
        self.placements
            .entry(pid)
            .or_insert_with(|| {
                procs::cgroup_v2_of(pid)
                    .map(|path| Placement::of_path(&path))
                    .unwrap_or_default()
            })
            .clone()
    }
}

fn lock(counts: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    counts.lock().unwrap_or_else(|e| e.into_inner())
}

/// pgwire_trace's requests, counted instead of printed.
struct Counter(Arc<Mutex<Counts>>);

impl Requests for Counter {
    fn event(&mut self, _out: &mut Output, e: &Event) -> io::Result<()> {
        let Event::Request(r) = e else {
            return Ok(());
        };
        let mut counts = lock(&self.0);
        let database = r.meta.database.clone().unwrap_or_default();
        let placement = counts.placement(r.pid);
        if let Some(state) = &r.done.sqlstate {
            // The class: the first two characters (23 integrity, 40 rollback, 53 resources).
            let class: String = state.chars().take(2).collect();
            *counts
                .errors
                .entry((database.clone(), class, placement.clone()))
                .or_default() += 1;
        }
        *counts.requests.entry((database, placement)).or_default() += 1;
        Ok(())
    }

    fn report(
        &mut self,
        _out: &mut Output,
        _scope: Scope,
        _stats: &DecodeStats,
        _kernel: &[u64],
    ) -> io::Result<()> {
        Ok(())
    }
}

pub struct WireRequests {
    trace: Box<dyn Trace + Send>,
    counts: Arc<Mutex<Counts>>,
}

/// The tools write reports to an `Output`; the counting decoder writes nothing.
fn nowhere() -> Output {
    Output::to_writer(Box::new(io::sink()), false)
}

impl WireRequests {
    pub fn start(args: &Args) -> anyhow::Result<WireRequests> {
        let tool: pgwire_trace::Args = tool_args(&["pgwire_trace"])?;
        let capture = pgbpf_capture::Capture::start(
            &pgbpf_capture::POSTGRES,
            &tool.target,
            &tool.capture.options(args.verbose),
        )?;
        let counts = Arc::new(Mutex::new(Counts::default()));
        let shared = Arc::clone(&counts);
        let attached = pgbpf_capture::wire::attach(
            capture,
            move |wall| PgWire::with(Counter(shared), wall),
            None,
            &mut nowhere(),
        )?;
        Ok(WireRequests {
            trace: attached.trace,
            counts,
        })
    }
}

impl Collector for WireRequests {
    fn name(&self) -> &'static str {
        "pgwire_trace"
    }

    fn poll(&mut self) -> anyhow::Result<()> {
        self.trace.drain(&mut nowhere())
    }

    fn families(&mut self, out: &mut Families) -> anyhow::Result<()> {
        let counts = lock(&self.counts);
        for ((database, placement), n) in &counts.requests {
            let mut labels = vec![("database", database.clone())];
            labels.extend(placement::labels(placement));
            out.counter(
                "pgbpf_wire_requests",
                "PostgreSQL requests (a query, or an extended-protocol batch up to its Sync) seen \
                 on the wire, per database.",
            )
            .set(labels, *n as f64);
        }
        for ((database, class, placement), n) in &counts.errors {
            let mut labels = vec![
                ("database", database.clone()),
                ("sqlstate_class", class.clone()),
            ];
            labels.extend(placement::labels(placement));
            out.counter(
                "pgbpf_wire_errors",
                "PostgreSQL requests that ended in an ErrorResponse, per SQLSTATE class.",
            )
            .set(labels, *n as f64);
        }
        Ok(())
    }

    fn objects(&self) -> Vec<&Loaded> {
        self.trace.objects()
    }

    fn lost(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        let Some(loaded) = self.trace.objects().into_iter().next() else {
            return Ok(vec![]);
        };
        let c: [u64; counter::COUNT as usize] = loaded.counters()?;
        Ok(vec![
            ("ring_buffer_full", c[counter::LOST_RECORDS as usize]),
            ("socket_table_full", c[counter::SOCKETS_FULL as usize]),
        ])
    }
}
