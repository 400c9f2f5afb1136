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
    Kind, Protocol, Record,
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

/// Server processes remembered with the process that accepted their connection.
const MAX_OPENERS: usize = 65_536;

/// Counts per metric and label set, and the servers' placements.
#[derive(Default)]
pub struct Tally {
    counts: BTreeMap<(&'static str, Labels), u64>,
    wire_values: Vec<String>,
    placements: HashMap<u32, Placement>,
    placements_since: Option<Instant>,
    /// The process that accepted the connection a server process serves (a postmaster, for
    /// the backend it forked), by server pid: placed in its stead when the server process is
    /// gone by the time its records are read (a session shorter than a drain, `pgbench -C`).
    openers: HashMap<u32, u32>,
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

    /// The placement of `pid`, read from /proc once a minute at most; of the process that
    /// accepted its connection when `pid` is gone (same container: a backend is its
    /// postmaster's child); empty when neither is there.
    fn placement(&mut self, pid: u32) -> Placement {
        if self
            .placements_since
            .is_none_or(|t| t.elapsed() > KEEP_PLACEMENT)
        {
            self.placements.clear();
            self.placements_since = Some(Instant::now());
        }
        if let Some(p) = self.placements.get(&pid) {
            return p.clone();
        }
        let of = |pid| procs::cgroup_v2_of(pid).map(|path| Placement::of_path(&path));
        let placement = of(pid)
            .or_else(|| self.openers.get(&pid).and_then(|&opener| of(opener)))
            .unwrap_or_default();
        self.placements.insert(pid, placement.clone());
        placement
    }

    /// `server` serves a connection `opener` accepted.
    fn opened_by(&mut self, server: u32, opener: u32) {
        if self.openers.len() >= MAX_OPENERS {
            self.openers.clear();
        }
        self.openers.insert(server, opener);
    }
}

fn lock(tally: &Mutex<Tally>) -> MutexGuard<'_, Tally> {
    tally.lock().unwrap_or_else(|e| e.into_inner())
}

/// A decoder's events counted by `count` instead of printed.
struct Counting<F> {
    tally: Arc<Mutex<Tally>>,
    count: F,
    /// The accepting process by connection, until its serving process is known: the tally learns
    /// which process accepted each server process's connection, so short sessions are placed.
    opener_of: HashMap<u64, u32>,
}

impl<E, S, F: FnMut(&E, &mut Tally)> Report<E, S> for Counting<F> {
    fn record(&mut self, r: &Record) {
        match r.kind {
            Kind::Open => {
                if self.opener_of.len() >= MAX_OPENERS {
                    self.opener_of.clear();
                }
                self.opener_of.insert(r.conn_id, r.tgid);
            }
            // The first record of the process serving it (a forked backend) is all there is
            // to learn: its connection is forgotten then (a backend never closes its socket,
            // so no close record would come).
            Kind::Data => {
                if let Some(&opener) = self.opener_of.get(&r.conn_id)
                    && opener != r.tgid
                {
                    lock(&self.tally).opened_by(r.tgid, opener);
                    self.opener_of.remove(&r.conn_id);
                }
            }
            // Its requests are counted after this (the decoder ends them at the close).
            Kind::Close => {
                self.opener_of.remove(&r.conn_id);
            }
            _ => {}
        }
    }

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
            &capture.options(&TargetArgs::default(), args.verbose),
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
                    opener_of: HashMap::new(),
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
