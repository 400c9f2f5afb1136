//! The waits table per (tranche, mode, backend type, statement) and the per-tranche totals
//! with their log2 histograms, for each interval and the whole run; or NDJSON rows.

use std::{collections::HashMap, io};

use lwlocks_ebpf::WaitEvent;
use pgbpf_common::{
    latency::{WaitGroups, WaitTimes},
    output::{self, Output},
    periods::{Periods, period_text},
    pg_probes::{Lost, ProbeReport},
    postgres::BackendTypes,
    query_string::IdleLabels,
    records::{self, Scope},
    stacks::{StackWaits, Stacks},
};

use crate::{
    Args,
    hold::{HoldTable, Holds},
    records::{Hold, HoldLost, Record, Totals, Tranche, Wait},
};

/// What a wait is counted under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    tranche: String,
    mode: &'static str,
    backend: String,
    query: String,
}

#[derive(Debug, Default)]
struct Period {
    waits: HashMap<Key, WaitTimes>,
    tranches: HashMap<String, WaitTimes>,
    stacks: StackWaits,
}

/// PostgreSQL's LWLockMode as a word.
pub(crate) fn mode_name(mode: u32) -> &'static str {
    match mode {
        0 => "exclusive",
        1 => "shared",
        2 => "wait_until_free",
        _ => "unknown",
    }
}

pub struct Reporter {
    top: usize,
    periods: Periods<Period>,
    /// Waits received from the kernel.
    events: u64,
    backends: BackendTypes,
    idle_labels: IdleLabels,
    stacks: Option<Stacks>,
    /// `--hold`: the kernel's hold times (taken after load).
    hold: bool,
    holds: Option<Holds>,
}

impl Reporter {
    pub fn new(args: &Args) -> Reporter {
        Reporter {
            top: args.top.max(1),
            periods: Periods::new(),
            events: 0,
            backends: BackendTypes::default(),
            idle_labels: IdleLabels::new(args.redact.shown()),
            stacks: None,
            hold: args.hold,
            holds: None,
        }
    }
}

impl ProbeReport for Reporter {
    type Event = WaitEvent;

    /// One wait.
    fn event(&mut self, _out: &mut Output, ev: &WaitEvent) -> io::Result<()> {
        self.events += 1;
        let query = self
            .idle_labels
            .statement(ev.tgid, ev.statement, &ev.query, ev.query_len);
        let tranche = output::c_str(&ev.tranche);
        let key = Key {
            tranche: if tranche.is_empty() {
                "unknown".to_string()
            } else {
                tranche
            },
            mode: mode_name(ev.mode),
            backend: self.backends.of(ev.tgid),
            query,
        };
        let stack = self
            .stacks
            .as_mut()
            .and_then(|s| s.user(ev.tgid, ev.user_stack));
        for p in self.periods.each() {
            p.stacks
                .add(&key.tranche, stack.clone(), None, ev.duration_ns);
            pgbpf_common::bounded::row(&mut p.waits, key.clone(), |k| Key {
                query: pgbpf_common::bounded::folded(&k.query),
                ..k.clone()
            })
            .add(ev.duration_ns);
            p.tranches
                .entry(key.tranche.clone())
                .or_default()
                .add(ev.duration_ns);
        }
        Ok(())
    }

    fn take_stacks(&mut self, stacks: Stacks) {
        self.stacks = Some(stacks);
    }

    fn take_maps(&mut self, loaded: &mut pgbpf_common::loader::Loaded) -> anyhow::Result<()> {
        if self.hold {
            self.holds = Some(Holds::take(loaded)?);
        }
        Ok(())
    }

    /// The tables of the interval that ended, or of the whole run.
    fn report(&mut self, sink: &mut Output, scope: Scope, lost: &[u64]) -> io::Result<()> {
        let (p, period) = self.periods.end(scope);
        let holds = self.holds.as_mut().map(|h| match scope {
            Scope::Interval => h.interval(),
            Scope::Total => h.total(),
        });
        let hold_lost = self.holds.as_ref().map(|_| HoldLost::from_counters(lost));
        if sink.json {
            let totals = Totals {
                ts_ns: output::unix_ns(),
                interval_ns: records::ns(period),
                waits: p.tranches.values().map(|w| w.count).sum(),
                total_ns: p.tranches.values().map(|w| w.total_ns).sum(),
                events: self.events,
                lost: Lost::from_counters(lost, self.stacks.as_ref()),
                holds_not_timed: hold_lost,
            };
            return json_report(sink, scope, &p, holds.as_ref(), totals);
        }
        let mut out = String::new();
        let tranches = WaitGroups {
            head: "LWLock waits",
            verb: "asleep",
            column: "TRANCHE",
            period: &period_text(scope, period),
        }
        .text(&mut out, sink, &p.tranches, self.top);
        if let Some((name, w)) = tranches.first() {
            let mut rows: Vec<_> = p.waits.iter().collect();
            rows.sort_by(|a, b| b.1.total_ns.cmp(&a.1.total_ns).then(a.0.cmp(b.0)));
            out.push_str("\nBy mode, backend type and statement:\n");
            let header = [
                "TRANCHE", "MODE", "BACKEND", "WAITS", "TOTAL", "MAX", "QUERY",
            ];
            output::top_table(&mut out, &header, &rows, self.top, sink.width, |(k, w)| {
                vec![
                    k.tranche.clone(),
                    k.mode.to_string(),
                    k.backend.clone(),
                    w.count.to_string(),
                    output::human_ns(w.total_ns),
                    output::human_ns(w.max_ns),
                    output::one_line(&k.query),
                ]
            });
            // The busiest tranche's distribution.
            out.push_str(&format!("\n{name} wait time:\n"));
            out.push_str(&output::log2_histogram("us", &w.log2_us));
        }
        if let Some(holds) = &holds {
            hold_text(&mut out, holds, self.top, sink.width);
        }
        p.stacks.text(&mut out, "Top stacks by wait time", self.top);
        if let Some(l) = &hold_lost {
            out.push_str(&l.line());
        }
        out.push_str(&Lost::from_counters(lost, self.stacks.as_ref()).line());
        sink.text(&out)
    }
}

/// `--hold`'s table: hold times per tranche and mode, longest total first.
fn hold_text(out: &mut String, holds: &HoldTable, top: usize, width: Option<usize>) {
    let mut rows: Vec<_> = holds.iter().collect();
    rows.sort_by(|a, b| b.1.total_ns.cmp(&a.1.total_ns).then(a.0.cmp(b.0)));
    out.push_str("\nLWLock holds (max since attach):\n");
    let header = ["TRANCHE", "MODE", "HOLDS", "TOTAL", "MEAN", "MAX"];
    output::top_table(out, &header, &rows, top, width, |((tranche, mode), t)| {
        vec![
            tranche.clone(),
            mode.to_string(),
            t.holds.to_string(),
            output::human_ns(t.total_ns),
            output::human_ns(t.mean_ns()),
            output::human_ns(t.max_ns),
        ]
    });
}

/// The report's rows as NDJSON records, then its `totals`.
fn json_report(
    out: &mut Output,
    scope: Scope,
    p: &Period,
    holds: Option<&HoldTable>,
    totals: Totals,
) -> io::Result<()> {
    let (ts_ns, interval_ns) = (totals.ts_ns, totals.interval_ns);
    for (k, w) in &p.waits {
        out.record(&Record::Wait(Wait {
            scope,
            ts_ns,
            interval_ns,
            tranche: &k.tranche,
            mode: k.mode,
            backend_type: &k.backend,
            query: &k.query,
            waits: w.count,
            total_ns: w.total_ns,
            max_ns: w.max_ns,
            hist_log2_us: w.log2_us.clone(),
        }))?;
    }
    for (name, w) in &p.tranches {
        out.record(&Record::Tranche(Tranche {
            scope,
            ts_ns,
            interval_ns,
            tranche: name,
            waits: w.count,
            total_ns: w.total_ns,
            max_ns: w.max_ns,
            hist_log2_us: w.log2_us.clone(),
        }))?;
    }
    for ((tranche, mode), t) in holds.into_iter().flatten() {
        out.record(&Record::Hold(Hold {
            scope,
            ts_ns,
            interval_ns,
            tranche,
            mode,
            holds: t.holds,
            total_ns: t.total_ns,
            max_ns: t.max_ns,
            hist_log2_us: t.log2_us.clone(),
        }))?;
    }
    for row in p.stacks.rows(scope, ts_ns, interval_ns) {
        out.record(&Record::Stack(row))?;
    }
    out.record(&match scope {
        Scope::Interval => Record::Interval(totals),
        Scope::Total => Record::Summary(totals),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_postgres_lwlock_modes() {
        assert_eq!(mode_name(0), "exclusive");
        assert_eq!(mode_name(1), "shared");
        assert_eq!(mode_name(2), "wait_until_free");
        assert_eq!(mode_name(7), "unknown");
    }
}
