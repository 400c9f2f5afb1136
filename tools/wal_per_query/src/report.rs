//! The tables per statement, backend type and resource manager, for each interval and the
//! whole run; or NDJSON rows.

use std::{collections::HashMap, io};

use pgbpf_common::{
    output::{self, Output},
    periods::{Periods, period_text},
    pg_probes::ProbeReport,
    postgres::BackendTypes,
    query_string::IdleLabels,
    records::{self, Scope},
};
use wal_per_query_ebpf::{RMGR_SLOTS, WalEvent, counter};

use crate::{
    Args,
    records::{self as rec, Backend, Lost, Record, Rmgr, Statement, Totals, Wal},
    rmgr,
    system::{SystemWal, WalIoTable},
};

impl pgbpf_common::bounded::Fold for Wal {
    fn fold(&mut self, other: &Self) {
        self.calls += other.calls;
        self.wal_records += other.wal_records;
        self.wal_fpi += other.wal_fpi;
        self.wal_bytes += other.wal_bytes;
    }

    fn weight(&self) -> u64 {
        self.wal_bytes
    }
}

impl Wal {
    fn add(&mut self, e: &WalEvent) {
        self.calls += 1;
        self.wal_records += e.records;
        self.wal_fpi += e.fpi;
        self.wal_bytes += e.bytes;
    }

    fn cells(&self) -> Vec<String> {
        vec![
            self.calls.to_string(),
            self.wal_records.to_string(),
            self.wal_fpi.to_string(),
            output::human_bytes(self.wal_bytes),
            output::human_bytes(self.wal_bytes / self.calls.max(1)),
        ]
    }
}

#[derive(Debug, Default)]
struct Period {
    all: Wal,
    statements: HashMap<String, Wal>,
    backends: HashMap<String, Wal>,
    rmgr_in: [u64; RMGR_SLOTS],
    /// `--system`: pg_wal writes and syncs per backend type.
    wal_io: WalIoTable,
}

pub struct Reporter {
    top: usize,
    periods: Periods<Period>,
    events: u64,
    backends: BackendTypes,
    idle_labels: IdleLabels,
    /// The kernel's outside-statement counts at the previous interval report.
    outside_before: [u64; RMGR_SLOTS],
    /// `--system`'s kernel tables.
    system: Option<SystemWal>,
    with_system: bool,
}

impl Reporter {
    pub fn new(args: &Args) -> Reporter {
        Reporter {
            top: args.top.max(1),
            periods: Periods::new(),
            events: 0,
            backends: BackendTypes::default(),
            idle_labels: IdleLabels::new(args.redact.shown()),
            outside_before: [0; RMGR_SLOTS],
            system: None,
            with_system: args.system,
        }
    }

    /// Records outside statements per resource manager in the period, from the counters
    /// (kept since attach).
    fn outside(&mut self, scope: Scope, kernel: &[u64]) -> [u64; RMGR_SLOTS] {
        let mut now = [0; RMGR_SLOTS];
        for (i, n) in now.iter_mut().enumerate() {
            *n = kernel
                .get(counter::RMGR_OUTSIDE as usize + i)
                .copied()
                .unwrap_or(0);
        }
        match scope {
            Scope::Total => now,
            Scope::Interval => {
                let mut d = [0; RMGR_SLOTS];
                for i in 0..RMGR_SLOTS {
                    d[i] = now[i].saturating_sub(self.outside_before[i]);
                }
                self.outside_before = now;
                d
            }
        }
    }
}

/// Rows sorted by WAL bytes, most first.
fn by_bytes(map: &HashMap<String, Wal>) -> Vec<(&String, &Wal)> {
    let mut rows: Vec<_> = map.iter().collect();
    rows.sort_by(|a, b| b.1.wal_bytes.cmp(&a.1.wal_bytes).then(a.0.cmp(b.0)));
    rows
}

impl ProbeReport for Reporter {
    type Event = WalEvent;

    /// One statement that wrote WAL.
    fn event(&mut self, _out: &mut Output, e: &WalEvent) -> io::Result<()> {
        self.events += 1;
        let query = self
            .idle_labels
            .statement(e.tgid, e.statement, &e.query, e.query_len);
        let backend = self.backends.of(e.tgid);
        for p in self.periods.each() {
            p.all.add(e);
            pgbpf_common::bounded::row(&mut p.statements, query.clone(), |k| {
                pgbpf_common::bounded::folded(k)
            })
            .add(e);
            p.backends.entry(backend.clone()).or_default().add(e);
            for (sum, n) in p.rmgr_in.iter_mut().zip(e.rmgr_records) {
                *sum += u64::from(n);
            }
        }
        Ok(())
    }

    fn take_maps(&mut self, loaded: &mut pgbpf_common::loader::Loaded) -> anyhow::Result<()> {
        if self.with_system {
            self.system = Some(SystemWal::take(loaded)?);
        }
        Ok(())
    }

    fn processes(&mut self, pids: &[u32]) {
        if let Some(s) = self.system.as_mut() {
            s.seed(pids);
        }
    }

    /// The tables of the interval that ended, or of the whole run.
    fn report(&mut self, sink: &mut Output, scope: Scope, kernel: &[u64]) -> io::Result<()> {
        if let Some(s) = self.system.as_mut() {
            let [a, b] = self.periods.each();
            s.read_into(&mut self.backends, [&mut a.wal_io, &mut b.wal_io]);
        }
        let (p, period) = self.periods.end(scope);
        let outside = self.outside(scope, kernel);
        let at = |i: u32| kernel.get(i as usize).copied().unwrap_or(0);
        let totals = Totals {
            ts_ns: output::unix_ns(),
            interval_ns: records::ns(period),
            wal: p.all.clone(),
            outside_records: outside.iter().sum(),
            events: self.events,
            not_located: at(counter::NOT_LOCATED),
            lost: Lost {
                ringbuf_full: at(counter::RINGBUF_FULL),
                running_full: at(counter::RUNNING_FULL),
                wal_fds_full: at(counter::WAL_FDS_FULL),
                wal_io_full: at(counter::WAL_IO_FULL),
            },
        };
        if sink.json {
            return json_report(sink, scope, &p, &outside, totals);
        }
        let (top, width) = (self.top, sink.width);
        let mut out = format!(
            "{}WAL of statements: {} records ({} full-page images), {} in {} executions; {} \
             records outside statements {}\n",
            sink.prefix(),
            p.all.wal_records,
            p.all.wal_fpi,
            output::human_bytes(p.all.wal_bytes),
            p.all.calls,
            totals.outside_records,
            period_text(scope, period)
        );
        let header = ["CALLS", "RECORDS", "FPI", "BYTES", "MEAN"];
        out.push_str("\nBy statement:\n");
        let rows = by_bytes(&p.statements);
        let h = [&header[..], &["QUERY"]].concat();
        output::top_table(&mut out, &h, &rows, top, width, |(q, w)| {
            let mut cells = w.cells();
            cells.push(output::one_line(q));
            cells
        });
        out.push_str("\nBy backend type:\n");
        let rows = by_bytes(&p.backends);
        let h = [&["BACKEND"][..], &header].concat();
        output::top_table(&mut out, &h, &rows, top, width, |(b, w)| {
            let mut cells = vec![b.to_string()];
            cells.extend(w.cells());
            cells
        });
        out.push_str("\nRecords by resource manager:\n");
        let rows = rmgr_rows(&p.rmgr_in, &outside);
        output::top_table(
            &mut out,
            &["RMGR", "IN STATEMENTS", "OUTSIDE"],
            &rows,
            RMGR_SLOTS,
            width,
            |(name, a, b)| vec![name.to_string(), a.to_string(), b.to_string()],
        );
        if self.system.is_some() {
            out.push_str("\nWritten to pg_wal and synced, by backend type:\n");
            let mut rows: Vec<_> = p.wal_io.iter().collect();
            rows.sort_by(|a, b| b.1.bytes.cmp(&a.1.bytes).then(a.0.cmp(b.0)));
            let ns = |n: u64| output::human_ns(n);
            output::top_table(
                &mut out,
                &[
                    "BACKEND",
                    "WRITES",
                    "BYTES",
                    "WRITE TIME",
                    "MEAN",
                    "MAX",
                    "FSYNCS",
                    "FSYNC TIME",
                    "MEAN",
                    "MAX",
                ],
                &rows,
                top,
                width,
                |(b, w)| {
                    vec![
                        b.to_string(),
                        w.writes.to_string(),
                        output::human_bytes(w.bytes),
                        ns(w.write_ns),
                        ns(w.write_ns / w.writes.max(1)),
                        ns(w.write_max_ns),
                        w.syncs.to_string(),
                        ns(w.sync_ns),
                        ns(w.sync_ns / w.syncs.max(1)),
                        ns(w.sync_max_ns),
                    ]
                },
            );
        }
        out.push_str(&format!(
            "not counted: {} statements of processes not located yet, {} (ring buffer full), \
             {} (too many executing at once)\n\n",
            totals.not_located, totals.lost.ringbuf_full, totals.lost.running_full
        ));
        sink.text(&out)
    }
}

/// (name, in statements, outside) of the resource managers with records, most first.
fn rmgr_rows(
    inside: &[u64; RMGR_SLOTS],
    outside: &[u64; RMGR_SLOTS],
) -> Vec<(&'static str, u64, u64)> {
    let mut rows: Vec<_> = (0..RMGR_SLOTS)
        .filter(|&i| inside[i] + outside[i] > 0)
        .map(|i| (rmgr::name(i), inside[i], outside[i]))
        .collect();
    rows.sort_by(|a, b| (b.1 + b.2).cmp(&(a.1 + a.2)).then(a.0.cmp(b.0)));
    rows
}

/// The report's rows as NDJSON records, then its totals.
fn json_report(
    out: &mut Output,
    scope: Scope,
    p: &Period,
    outside: &[u64; RMGR_SLOTS],
    totals: Totals,
) -> io::Result<()> {
    let (ts_ns, interval_ns) = (totals.ts_ns, totals.interval_ns);
    for (query, w) in &p.statements {
        out.record(&Record::Statement(Statement {
            scope,
            ts_ns,
            interval_ns,
            query,
            wal: w.clone(),
        }))?;
    }
    for (backend_type, w) in &p.backends {
        out.record(&Record::Backend(Backend {
            scope,
            ts_ns,
            interval_ns,
            backend_type,
            wal: w.clone(),
        }))?;
    }
    for (backend_type, w) in &p.wal_io {
        out.record(&Record::WalIo(rec::WalIo {
            scope,
            ts_ns,
            interval_ns,
            backend_type,
            writes: w.writes,
            bytes: w.bytes,
            write_ns: w.write_ns,
            write_max_ns: w.write_max_ns,
            fsyncs: w.syncs,
            fsync_ns: w.sync_ns,
            fsync_max_ns: w.sync_max_ns,
        }))?;
    }
    for (rmgr, in_statements, outside_statements) in rmgr_rows(&p.rmgr_in, outside) {
        out.record(&Record::Rmgr(Rmgr {
            scope,
            ts_ns,
            interval_ns,
            rmgr,
            in_statements,
            outside_statements,
        }))?;
    }
    out.record(&match scope {
        Scope::Interval => Record::Interval(totals),
        Scope::Total => Record::Summary(totals),
    })
}
