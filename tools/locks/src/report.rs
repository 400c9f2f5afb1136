//! The waits table per (lock type, relation, mode, backend type, statement) for each interval
//! and the whole run; every wait as it ends (`--each`) and every deadlock as it is found, with
//! the other waits in progress at that moment; or NDJSON records.

use std::{collections::HashMap, io, time::Duration};

use locks_ebpf::{LockEvent, kind};
use pgbpf_common::{
    latency::WaitTimes,
    output::{self, Output},
    periods::{Periods, period_text},
    pg_probes::{Lost, ProbeReport},
    postgres::BackendTypes,
    query_string::IdleLabels,
    records::{self, Scope},
    stacks::{StackWaits, Stacks},
};
use pgbpf_pgclient::names::RelationNames;

use crate::{
    Args, lock,
    records::{Deadlock, LockWait, Record, Totals, Wait, Waiter},
};

/// Waits in progress remembered (beyond, a wait whose end was lost would keep a place).
const MAX_IN_PROGRESS: usize = 65_536;

/// What a wait is counted under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    lock_type: &'static str,
    /// (database, relation) OIDs for the lock types that have them.
    relation: Option<(u32, u32)>,
    mode: &'static str,
    backend: String,
    query: String,
}

#[derive(Debug, Default)]
struct Period {
    waits: HashMap<Key, WaitTimes>,
    deadlocks: u64,
    stacks: StackWaits,
}

/// A wait in progress, as its start event told it.
struct InProgress {
    pid: u32,
    start_ns: u64,
    lock: String,
    mode: &'static str,
    query: String,
}

pub struct Reporter {
    each: bool,
    top: usize,
    periods: Periods<Period>,
    /// Events received from the kernel.
    events: u64,
    /// By thread.
    in_progress: HashMap<u32, InProgress>,
    backends: BackendTypes,
    idle_labels: IdleLabels,
    stacks: Option<Stacks>,
    /// With --dsn.
    names: Option<RelationNames>,
}

impl Reporter {
    pub fn new(args: &Args, names: Option<RelationNames>) -> Reporter {
        Reporter {
            each: args.each,
            top: args.top.max(1),
            periods: Periods::new(),
            events: 0,
            in_progress: HashMap::new(),
            backends: BackendTypes::default(),
            idle_labels: IdleLabels::new(args.redact.shown()),
            stacks: None,
            names,
        }
    }

    /// With --dsn, the name of the relation `e`'s lock is on, when it has one and it is in
    /// the connection's database.
    fn relation_name(&mut self, e: &LockEvent) -> Option<String> {
        let (db, rel) = lock::relation(e)?;
        self.names.as_mut()?.name(0, db, rel)
    }

    /// A wait ended: counted, and printed with `--each`.
    fn wait_done(&mut self, out: &mut Output, ev: &LockEvent, query: String) -> io::Result<()> {
        self.in_progress.remove(&ev.tid);
        let backend = self.backends.of(ev.tgid);
        let key = Key {
            lock_type: lock::type_name(ev.locktag_type),
            relation: lock::relation(ev),
            mode: lock::mode_name(ev.mode),
            backend,
            query,
        };
        let stack = self
            .stacks
            .as_mut()
            .and_then(|s| s.user(ev.tgid, ev.user_stack));
        for p in self.periods.each() {
            p.stacks
                .add(key.lock_type, stack.clone(), None, ev.duration_ns);
            pgbpf_common::bounded::row(&mut p.waits, key.clone(), |k| Key {
                query: pgbpf_common::bounded::folded(&k.query),
                ..k.clone()
            })
            .add(ev.duration_ns);
        }
        if !self.each {
            return Ok(());
        }
        let name = self.relation_name(ev);
        let described = lock::describe(ev, name.as_deref());
        if out.json {
            return out.record(&Record::LockWait(LockWait {
                ts_ns: output::unix_ns(),
                pid: ev.tgid,
                backend_type: &key.backend,
                lock_type: key.lock_type,
                lock: &described,
                mode: key.mode,
                fields: [ev.field1, ev.field2, ev.field3, ev.field4],
                duration_ns: ev.duration_ns,
                query: &key.query,
            }));
        }
        let line = format!(
            "{}PID {} ({}) waited {} for {} on {}: {}",
            out.prefix(),
            ev.tgid,
            key.backend,
            output::human_ns(ev.duration_ns),
            key.mode,
            described,
            output::one_line(&key.query)
        );
        out.text(&format!("{}\n", output::cut_to_width(&line, out.width)))
    }

    /// A deadlock found: printed at once, with the waits in progress.
    fn deadlock(&mut self, out: &mut Output, ev: &LockEvent, query: String) -> io::Result<()> {
        for p in self.periods.each() {
            p.deadlocks += 1;
        }
        let backend = self.backends.of(ev.tgid);
        // The finder's own wait, which ends here in an error (no lock__wait__done follows).
        let (lock, mode) = match self.in_progress.remove(&ev.tid) {
            Some(w) => (w.lock, w.mode),
            None => ("?".to_string(), "?"),
        };
        let mut others: Vec<&InProgress> = self
            .in_progress
            .iter()
            .filter(|(tid, _)| **tid != ev.tid)
            .map(|(_, w)| w)
            .collect();
        others.sort_by_key(|w| w.start_ns);
        let types: Vec<String> = others.iter().map(|w| self.backends.of(w.pid)).collect();
        if out.json {
            let waiting = others
                .iter()
                .zip(&types)
                .map(|(w, backend_type)| Waiter {
                    pid: w.pid,
                    backend_type,
                    lock: &w.lock,
                    mode: w.mode,
                    elapsed_ns: ev.start_ns.saturating_sub(w.start_ns),
                    query: &w.query,
                })
                .collect();
            return out.record(&Record::Deadlock(Deadlock {
                ts_ns: output::unix_ns(),
                pid: ev.tgid,
                backend_type: &backend,
                query: &query,
                lock: &lock,
                mode,
                waiting,
            }));
        }
        let mut text = format!(
            "{}DEADLOCK found by PID {} ({}) waiting for {mode} on {lock}: {}\n",
            out.prefix(),
            ev.tgid,
            backend,
            output::one_line(&query)
        );
        for (w, backend_type) in others.iter().zip(&types) {
            text.push_str(&format!(
                "  waiting then: PID {} ({backend_type}) for {} on {} for {}: {}\n",
                w.pid,
                w.mode,
                w.lock,
                output::human_ns(ev.start_ns.saturating_sub(w.start_ns)),
                output::one_line(&w.query)
            ));
        }
        out.text(&text)
    }
}

impl ProbeReport for Reporter {
    type Event = LockEvent;

    fn event(&mut self, out: &mut Output, ev: &LockEvent) -> io::Result<()> {
        self.events += 1;
        let query = self
            .idle_labels
            .statement(ev.tgid, ev.statement, &ev.query, ev.query_len);
        match ev.kind {
            kind::WAIT_START => {
                // Its type read now, while it runs: a deadlock's finder is gone moments after
                // its error, and a waiter may be too by the time its wait's end is read.
                self.backends.of(ev.tgid);
                if self.in_progress.len() >= MAX_IN_PROGRESS {
                    self.in_progress.clear();
                }
                let name = self.relation_name(ev);
                let w = InProgress {
                    pid: ev.tgid,
                    start_ns: ev.start_ns,
                    lock: lock::describe(ev, name.as_deref()),
                    mode: lock::mode_name(ev.mode),
                    query,
                };
                self.in_progress.insert(ev.tid, w);
                Ok(())
            }
            kind::WAIT_DONE => self.wait_done(out, ev, query),
            kind::DEADLOCK => self.deadlock(out, ev, query),
            _ => Ok(()),
        }
    }

    fn take_stacks(&mut self, stacks: Stacks) {
        self.stacks = Some(stacks);
    }

    /// The tables of the interval that ended, or of the whole run.
    fn report(&mut self, sink: &mut Output, scope: Scope, lost: &[u64]) -> io::Result<()> {
        let (p, period) = self.periods.end(scope);
        if sink.json {
            let names = self.names.as_mut();
            let lost = Lost::from_counters(lost, self.stacks.as_ref());
            return json_report(sink, self.events, scope, period, &p, lost, names);
        }
        let waits: u64 = p.waits.values().map(|w| w.count).sum();
        let total: u64 = p.waits.values().map(|w| w.total_ns).sum();
        let mut out = format!(
            "{}Lock waits: {waits}, {} waited, {} deadlocks {}\n",
            sink.prefix(),
            output::human_ns(total),
            p.deadlocks,
            period_text(scope, period)
        );
        let mut rows: Vec<_> = p.waits.iter().collect();
        rows.sort_by(|a, b| b.1.total_ns.cmp(&a.1.total_ns).then(a.0.cmp(b.0)));
        let header = [
            "LOCKTYPE", "RELATION", "MODE", "BACKEND", "WAITS", "TOTAL", "MAX", "QUERY",
        ];
        let names = &mut self.names;
        output::top_table(&mut out, &header, &rows, self.top, sink.width, |(k, w)| {
            vec![
                k.lock_type.to_string(),
                k.relation.map_or_else(
                    || "-".to_string(),
                    |(db, rel)| {
                        names
                            .as_mut()
                            .and_then(|n| n.name(0, db, rel))
                            .unwrap_or_else(|| format!("{db}/{rel}"))
                    },
                ),
                k.mode.to_string(),
                k.backend.clone(),
                w.count.to_string(),
                output::human_ns(w.total_ns),
                output::human_ns(w.max_ns),
                output::one_line(&k.query),
            ]
        });
        p.stacks.text(&mut out, "Top stacks by wait time", self.top);
        out.push_str(&Lost::from_counters(lost, self.stacks.as_ref()).line());
        sink.text(&out)
    }
}

/// The report's rows as NDJSON records.
fn json_report(
    out: &mut Output,
    events: u64,
    scope: Scope,
    period: Duration,
    p: &Period,
    lost: Lost,
    mut names: Option<&mut RelationNames>,
) -> io::Result<()> {
    let ts_ns = output::unix_ns();
    let interval_ns = records::ns(period);
    for (k, w) in &p.waits {
        out.record(&Record::Wait(Wait {
            scope,
            ts_ns,
            interval_ns,
            lock_type: k.lock_type,
            database: k.relation.map(|(db, _)| db),
            relation: k.relation.map(|(_, rel)| rel),
            relation_name: k
                .relation
                .and_then(|(db, rel)| names.as_mut()?.name(0, db, rel)),
            mode: k.mode,
            backend_type: &k.backend,
            query: &k.query,
            waits: w.count,
            total_ns: w.total_ns,
            max_ns: w.max_ns,
            hist_log2_us: w.log2_us.clone(),
        }))?;
    }
    for row in p.stacks.rows(scope, ts_ns, interval_ns) {
        out.record(&Record::Stack(row))?;
    }
    let totals = Totals {
        ts_ns,
        interval_ns,
        waits: p.waits.values().map(|w| w.count).sum(),
        total_ns: p.waits.values().map(|w| w.total_ns).sum(),
        deadlocks: p.deadlocks,
        events,
        lost,
    };
    out.record(&match scope {
        Scope::Interval => Record::Interval(totals),
        Scope::Total => Record::Summary(totals),
    })
}
