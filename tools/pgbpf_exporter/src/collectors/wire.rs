//! Requests and errors on the wire: pgwire_trace's and redis_trace's capture (socket
//! tracepoints, libssl's plaintext for TLS) and decoders on every server of the node, their
//! events counted per label set instead of printed. The capture's own drain loop runs them
//! (the tools' `Trace`).

use std::{
    collections::{BTreeMap, HashMap},
    io,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use pgbpf_capture::{
    Protocol,
    wire::{Decode, Decoded, Report},
};
use pgbpf_capture_ebpf::counter;
use pgbpf_common::{
    cgroup::Placement, loader::Loaded, output::Output, procs, records::Scope, runtime::Trace,
    target::TargetArgs,
};

use super::{Collector, tool_args};
use crate::{
    Args,
    families::{Families, Labels},
    placement,
};

/// How long a backend's placement is trusted: a pid reused in another container is
/// labelled right again after this.
const KEEP_PLACEMENT: Duration = Duration::from_secs(60);
/// Distinct values a label taken from the wire (a Redis error code) may have; later ones
/// count as "other".
const MAX_WIRE_VALUES: usize = 64;

/// Counts per metric and label set, and the servers' placements.
#[derive(Default)]
pub struct Tally {
    counts: BTreeMap<(&'static str, Labels), u64>,
    wire_values: Vec<String>,
    placements: HashMap<u32, Placement>,
    placements_since: Option<Instant>,
}

impl Tally {
    /// Adds one to `metric` with `labels` and the placement of server process `pid`.
    pub fn add(&mut self, metric: &'static str, mut labels: Labels, pid: u32) {
        labels.extend(placement::labels(&self.placement(pid)));
        *self.counts.entry((metric, labels)).or_default() += 1;
    }

    /// `value` as a label value when it is among the first [`MAX_WIRE_VALUES`] seen, else
    /// "other": what a server or client sends must not make series without bound.
    pub fn bounded(&mut self, value: &str) -> String {
        if self.wire_values.iter().any(|v| v == value) {
            return value.to_string();
        }
        if self.wire_values.len() < MAX_WIRE_VALUES {
            self.wire_values.push(value.to_string());
            return value.to_string();
        }
        "other".to_string()
    }

    /// The placement of `pid`, read from /proc once a minute at most: the server process is
    /// alive while its connection is (a session shorter than a drain is not placed).
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

fn lock(tally: &Mutex<Tally>) -> MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(|e| e.into_inner())
}

/// A decoder's events counted by `count` instead of printed.
struct Counting<F> {
    tally: Arc<Mutex<Tally>>,
    count: F,
}

impl<E, S, F: FnMut(&E, &mut Tally)> Report<E, S> for Counting<F> {
    fn event(&mut self, _out: &mut Output, e: &E) -> io::Result<()> {
        (self.count)(e, &mut lock(&self.tally));
        Ok(())
    }

    fn report(&mut self, _out: &mut Output, _: Scope, _: &S, _: &[u64]) -> io::Result<()> {
        Ok(())
    }
}

/// A wire collector: the capture of one protocol, its decoder, and what is counted.
pub struct WireCollector {
    name: &'static str,
    trace: Box<dyn Trace + Send>,
    tally: Arc<Mutex<Tally>>,
    /// Help text per metric.
    helps: &'static [(&'static str, &'static str)],
}

/// The tools write reports to an `Output`; the counting reports write nothing.
fn nowhere() -> Output {
    Output::to_writer(Box::new(io::sink()), false)
}

impl WireCollector {
    fn start<D, F>(
        name: &'static str,
        protocol: &'static Protocol,
        capture: &pgbpf_capture::cli::CaptureArgs,
        args: &Args,
        decoder: fn(i64) -> D,
        count: F,
        helps: &'static [(&'static str, &'static str)],
    ) -> anyhow::Result<WireCollector>
    where
        D: Decode + Send + 'static,
        D::Event: Send,
        F: FnMut(&D::Event, &mut Tally) + Send + 'static,
    {
        let live = pgbpf_capture::Capture::start(
            protocol,
            &TargetArgs::default(),
            &capture.options(args.verbose),
        )?;
        let tally = Arc::new(Mutex::new(Tally::default()));
        let shared = Arc::clone(&tally);
        let attached = pgbpf_capture::wire::attach(
            live,
            move |wall| Decoded {
                decoder: decoder(wall),
                report: Counting {
                    tally: shared,
                    count,
                },
            },
            None,
            &mut nowhere(),
        )?;
        Ok(WireCollector {
            name,
            trace: attached.trace,
            tally,
            helps,
        })
    }

    /// PostgreSQL: requests per database, and those that ended in an error per SQLSTATE
    /// class.
    pub fn postgres(args: &Args) -> anyhow::Result<WireCollector> {
        use pgwire_trace::decode::{Decoder, Event};
        let tool: pgwire_trace::Args = tool_args(&["pgwire_trace"])?;
        let count = |e: &Event, tally: &mut Tally| {
            let Event::Request(r) = e else { return };
            let database = r.meta.database.clone().unwrap_or_default();
            if let Some(state) = &r.done.sqlstate {
                // The class: the first two characters (23 integrity, 40 rollback, ...).
                let class: String = state.chars().take(2).collect();
                let class = tally.bounded(&class);
                let labels = vec![("database", database.clone()), ("sqlstate_class", class)];
                tally.add("pgbpf_wire_errors", labels, r.pid);
            }
            tally.add("pgbpf_wire_requests", vec![("database", database)], r.pid);
        };
        WireCollector::start(
            "pgwire_trace",
            &pgbpf_capture::POSTGRES,
            &tool.capture,
            args,
            Decoder::new,
            count,
            &[
                (
                    "pgbpf_wire_requests",
                    "PostgreSQL requests (a query, or an extended-protocol batch up to its \
                     Sync) seen on the wire, per database.",
                ),
                (
                    "pgbpf_wire_errors",
                    "PostgreSQL requests that ended in an ErrorResponse, per SQLSTATE class.",
                ),
            ],
        )
    }

    /// Redis: commands per name, and error replies per error code (`ERR`, `WRONGTYPE`, ...).
    pub fn redis(args: &Args) -> anyhow::Result<WireCollector> {
        use redis_trace::decode::{Decoder, Event};
        let tool: redis_trace::Args = tool_args(&["redis_trace"])?;
        let count = |e: &Event, tally: &mut Tally| {
            let Event::Command { who, done, .. } = e else {
                return;
            };
            let command = tally.bounded(&done.command.name().to_ascii_uppercase());
            if let Some(error) = done.error() {
                let code = tally.bounded(&error.code);
                tally.add("pgbpf_redis_errors", vec![("code", code)], who.pid);
            }
            tally.add("pgbpf_redis_commands", vec![("command", command)], who.pid);
        };
        WireCollector::start(
            "redis_trace",
            &pgbpf_capture::REDIS,
            &tool.capture,
            args,
            Decoder::new,
            count,
            &[
                (
                    "pgbpf_redis_commands",
                    "Redis commands seen on the wire, per command name.",
                ),
                (
                    "pgbpf_redis_errors",
                    "Redis commands answered with an error reply, per error code.",
                ),
            ],
        )
    }
}

impl Collector for WireCollector {
    fn name(&self) -> &'static str {
        self.name
    }

    fn poll(&mut self) -> anyhow::Result<()> {
        self.trace.drain(&mut nowhere())
    }

    fn families(&mut self, out: &mut Families) -> anyhow::Result<()> {
        let tally = lock(&self.tally);
        for ((metric, labels), n) in &tally.counts {
            let help = self
                .helps
                .iter()
                .find(|(m, _)| m == metric)
                .map_or("", |(_, h)| h);
            out.counter(metric, help).set(labels.clone(), *n as f64);
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
