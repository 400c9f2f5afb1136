//! The waits table per (tranche, mode, backend type, statement) and the per-tranche totals
//! with their log2 histograms, for each interval and the whole run; or NDJSON rows.

use std::{collections::HashMap, io, time::Duration};

use lwlocks_ebpf::{WaitEvent, counter};
use pgbpf_common::{
    output::{self, Output},
    periods::{Periods, period_text},
    postgres,
    query_string::IdleLabels,
    records::{self, Scope},
};

use crate::{
    Args,
    records::{Lost, Record, Totals, Tranche, Wait},
};

/// Processes whose backend type is remembered; beyond, the table starts over (pids are reused).
const MAX_BACKENDS: usize = 65_536;

/// What a wait is counted under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    tranche: String,
    mode: &'static str,
    backend: String,
    query: String,
}

/// Waits of one key (or one tranche).
#[derive(Clone, Debug, Default)]
struct Waits {
    count: u64,
    total_ns: u64,
    max_ns: u64,
    log2_us: Vec<u64>,
}

impl Waits {
    fn add(&mut self, ns: u64) {
        self.count += 1;
        self.total_ns += ns;
        self.max_ns = self.max_ns.max(ns);
        let slot = output::log2_slot(ns / 1000);
        if self.log2_us.len() <= slot {
            self.log2_us.resize(slot + 1, 0);
        }
        self.log2_us[slot] += 1;
    }

    fn mean_ns(&self) -> u64 {
        self.total_ns / self.count.max(1)
    }
}

#[derive(Debug, Default)]
struct Period {
    waits: HashMap<Key, Waits>,
    tranches: HashMap<String, Waits>,
}

/// PostgreSQL's LWLockMode as a word.
fn mode_name(mode: u32) -> &'static str {
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
    backends: HashMap<u32, String>,
    idle_labels: IdleLabels,
}

impl Reporter {
    pub fn new(args: &Args) -> Reporter {
        Reporter {
            top: args.top.max(1),
            periods: Periods::new(),
            events: 0,
            backends: HashMap::new(),
            idle_labels: IdleLabels::default(),
        }
    }

    /// The backend type of `pid` from its title, looked up once (a process gone before its
    /// first wait is read is "unknown").
    fn backend(&mut self, pid: u32) -> String {
        if self.backends.len() >= MAX_BACKENDS {
            self.backends.clear();
        }
        self.backends
            .entry(pid)
            .or_insert_with(|| {
                postgres::process_kind(pid).map_or_else(|| "unknown".to_string(), |(kind, _)| kind)
            })
            .clone()
    }

    /// One wait.
    pub fn event(&mut self, ev: &WaitEvent) {
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
            backend: self.backend(ev.tgid),
            query,
        };
        for p in self.periods.each() {
            p.waits.entry(key.clone()).or_default().add(ev.duration_ns);
            p.tranches
                .entry(key.tranche.clone())
                .or_default()
                .add(ev.duration_ns);
        }
    }

    /// The tables of the interval that ended, or of the whole run.
    pub fn report(
        &mut self,
        sink: &mut Output,
        scope: Scope,
        lost: &[u64; counter::COUNT as usize],
    ) -> io::Result<()> {
        let (p, period) = self.periods.end(scope);
        if sink.json {
            return self.json_report(sink, scope, period, &p, lost);
        }
        let mut out = String::new();
        let waits: u64 = p.tranches.values().map(|w| w.count).sum();
        let total: u64 = p.tranches.values().map(|w| w.total_ns).sum();
        out.push_str(&format!(
            "{}LWLock waits: {waits}, {} asleep {}\n",
            sink.prefix(),
            output::human_ns(total),
            period_text(scope, period)
        ));
        let mut tranches: Vec<_> = p.tranches.iter().collect();
        tranches.sort_by(|a, b| b.1.total_ns.cmp(&a.1.total_ns).then(a.0.cmp(b.0)));
        output::top_table(
            &mut out,
            &["TRANCHE", "WAITS", "TOTAL", "MEAN", "MAX"],
            &tranches,
            self.top,
            sink.width,
            |(name, w)| {
                vec![
                    name.to_string(),
                    w.count.to_string(),
                    output::human_ns(w.total_ns),
                    output::human_ns(w.mean_ns()),
                    output::human_ns(w.max_ns),
                ]
            },
        );
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
        out.push_str(&format!(
            "lost: {} waits (ring buffer full), {} (too many waits at once)\n\n",
            lost[counter::RINGBUF_FULL as usize],
            lost[counter::WAITING_FULL as usize]
        ));
        sink.text(&out)
    }

    fn json_report(
        &self,
        out: &mut Output,
        scope: Scope,
        period: Duration,
        p: &Period,
        lost: &[u64; counter::COUNT as usize],
    ) -> io::Result<()> {
        let ts_ns = output::unix_ns();
        let interval_ns = records::ns(period);
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
        let totals = Totals {
            ts_ns,
            interval_ns,
            waits: p.tranches.values().map(|w| w.count).sum(),
            total_ns: p.tranches.values().map(|w| w.total_ns).sum(),
            events: self.events,
            lost: Lost {
                ringbuf_full: lost[counter::RINGBUF_FULL as usize],
                waiting_full: lost[counter::WAITING_FULL as usize],
            },
        };
        out.record(&match scope {
            Scope::Interval => Record::Interval(totals),
            Scope::Total => Record::Summary(totals),
        })
    }
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

    #[test]
    fn waits_sum_and_bucket_by_microseconds() {
        let mut w = Waits::default();
        for ns in [500, 1_500, 3_000, 1_000_000] {
            w.add(ns);
        }
        assert_eq!(w.count, 4);
        assert_eq!(w.total_ns, 1_005_000);
        assert_eq!(w.max_ns, 1_000_000);
        // 0 us, 1 us, 3 us (slot 1), 1000 us (slot 9).
        assert_eq!(w.log2_us[0], 2);
        assert_eq!(w.log2_us[1], 1);
        assert_eq!(w.log2_us[9], 1);
    }
}
