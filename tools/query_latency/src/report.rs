//! Statement latency reports: slow-statement lines as they happen, interval and final tables
//! with the log2 histogram, or NDJSON.

use std::{io, time::Duration};

use pgbpf_common::{
    output::{self, Output},
    periods::{Periods, period_text},
    query,
    records::{self, Scope},
    sql::Shown,
};
use query_latency_ebpf::{QueryEvent, counter};

use crate::{
    Args,
    records::{Active, Lost, Record, Slow, StatementRow, Totals},
    stats::{Key, Latencies, Period},
};

pub struct Reporter {
    /// `--redact`.
    shown: Shown,
    per_backend: bool,
    min_ns: Option<u64>,
    top: usize,
    periods: Periods<Period>,
}

impl Reporter {
    pub fn new(args: &Args) -> Reporter {
        Reporter {
            shown: args.redact.shown(),
            per_backend: args.per_backend,
            min_ns: args.min_ms.map(|ms| (ms.max(0.0) * 1e6) as u64),
            top: args.top.max(1),
            periods: Periods::new(),
        }
    }

    /// One finished statement.
    pub fn event(&mut self, out: &mut Output, ev: &QueryEvent) -> io::Result<()> {
        let text = query::text_of(&ev.text, ev.text_len);
        let key = Key {
            pid: if self.per_backend { ev.pid } else { 0 },
            statement: self.shown.text(&text),
        };
        let truncated = ev.truncated != 0;
        for p in self.periods.each() {
            p.add(key.clone(), ev.duration_ns, truncated);
        }
        match self.min_ns {
            Some(min) if ev.duration_ns >= min => self.slow(out, ev, &self.shown.as_ran(&text)),
            _ => Ok(()),
        }
    }

    fn slow(&self, out: &mut Output, ev: &QueryEvent, text: &str) -> io::Result<()> {
        if out.json {
            return out.record(&Record::Slow(Slow {
                ts_ns: output::unix_ns(),
                pid: ev.pid,
                duration_ns: ev.duration_ns,
                protocol: query::protocol_name(ev.protocol),
                query: text,
                truncated: ev.truncated != 0,
            }));
        }
        let line = format!(
            "{}{:<7} {:>10.3} ms  {}",
            out.prefix(),
            ev.pid,
            ev.duration_ns as f64 / 1e6,
            output::one_line(text)
        );
        let line = output::cut_to_width(&line, out.width);
        out.text(&format!("{line}\n"))
    }

    /// Statements running right now, longest first.
    pub fn active(&self, out: &mut Output, running: &[query::ActiveQuery]) -> io::Result<()> {
        if out.json {
            let ts_ns = output::unix_ns();
            for a in running {
                out.record(&Record::Active(Active {
                    ts_ns,
                    pid: a.pid,
                    elapsed_ns: records::ns(a.elapsed),
                    protocol: a.protocol,
                    query: &self.shown.as_ran(&a.text),
                    truncated: a.truncated,
                }))?;
            }
            return Ok(());
        }
        let rows: Vec<Vec<String>> = running
            .iter()
            .map(|a| {
                vec![
                    a.pid.to_string(),
                    output::human_ns(records::ns(a.elapsed)),
                    a.protocol.to_string(),
                    output::one_line(&self.shown.as_ran(&a.text)),
                ]
            })
            .collect();
        let mut text = format!("{}{} statements running now\n", out.prefix(), running.len());
        if !rows.is_empty() {
            text.push_str(&output::table(
                &["PID", "RUNNING", "PROTOCOL", "QUERY"],
                &rows,
                out.width,
            ));
            text.push('\n');
        }
        out.text(&text)
    }

    /// The report of the interval that ended, or of the whole run: histogram and tables.
    pub fn report(
        &mut self,
        out: &mut Output,
        scope: Scope,
        counters: &Counters,
    ) -> io::Result<()> {
        let (stats, period) = self.periods.end(scope);
        if out.json {
            return self.json_report(out, scope, period, &stats, counters);
        }
        let head = format!(
            "{}{} statements {}",
            out.prefix(),
            stats.calls,
            period_text(scope, period)
        );
        let text = self.tables(out.width, &head, &stats, counters);
        out.text(&text)
    }

    fn tables(&self, width: Option<usize>, head: &str, p: &Period, counters: &Counters) -> String {
        let mut out = format!("{head}\n");
        if p.calls > 0 {
            out.push_str(&output::log2_histogram("usecs", &p.log2_us));
            out.push('\n');
            let mut header = vec!["CALLS", "MEAN", "P50", "P95", "P99", "MAX"];
            if self.per_backend {
                header.push("PID");
            }
            header.push("QUERY");
            let sorted = p.sorted();
            let rows: Vec<Vec<String>> = sorted
                .iter()
                .take(self.top)
                .map(|(k, l)| self.row(k, l))
                .collect();
            out.push_str(&output::table(&header, &rows, width));
            out.push('\n');
            if sorted.len() > self.top {
                out.push_str(&format!("({} more statements)\n", sorted.len() - self.top));
            }
        }
        out.push_str(&format!("{}\n", lost_text(counters)));
        out
    }

    fn row(&self, k: &Key, l: &Latencies) -> Vec<String> {
        let ns = |v: f64| output::human_ns(v as u64);
        let mut r = vec![
            l.calls.to_string(),
            ns(l.mean_ns()),
            ns(l.percentile_ns(50.0)),
            ns(l.percentile_ns(95.0)),
            ns(l.percentile_ns(99.0)),
            output::human_ns(l.max_ns),
        ];
        if self.per_backend {
            r.push(k.pid.to_string());
        }
        let mark = if l.truncated { "…" } else { "" };
        r.push(format!("{}{mark}", output::one_line(&k.statement)));
        r
    }

    fn json_report(
        &self,
        out: &mut Output,
        scope: Scope,
        period: Duration,
        p: &Period,
        c: &Counters,
    ) -> io::Result<()> {
        let ts_ns = output::unix_ns();
        let interval_ns = records::ns(period);
        let round = |ns: f64| ns.round() as u64;
        for (k, l) in p.sorted() {
            out.record(&Record::Statement(StatementRow {
                scope,
                ts_ns,
                interval_ns,
                query: &k.statement,
                pid: self.per_backend.then_some(k.pid),
                calls: l.calls,
                total_ns: l.total_ns,
                mean_ns: round(l.mean_ns()),
                p50_ns: round(l.percentile_ns(50.0)),
                p95_ns: round(l.percentile_ns(95.0)),
                p99_ns: round(l.percentile_ns(99.0)),
                max_ns: l.max_ns,
                truncated: l.truncated,
            }))?;
        }
        let totals = Totals {
            ts_ns,
            interval_ns,
            calls: p.calls,
            hist_log2_us: records::trim_hist(&p.log2_us),
            lost: Lost {
                ringbuf_full: c[counter::RINGBUF_FULL as usize],
                context_full: c[counter::CONTEXT_FULL as usize],
                began_before_attach: c[counter::DONE_WITHOUT_START as usize],
            },
        };
        out.record(&match scope {
            Scope::Interval => Record::Interval(totals),
            Scope::Total => Record::Summary(totals),
        })
    }
}

/// The kernel side's COUNTERS, summed over CPUs.
pub type Counters = [u64; counter::COUNT as usize];

fn lost_text(c: &Counters) -> String {
    format!(
        "lost: {} statements (ring buffer full), {} untracked (context map full); {} had begun before tracing",
        c[counter::RINGBUF_FULL as usize],
        c[counter::CONTEXT_FULL as usize],
        c[counter::DONE_WITHOUT_START as usize]
    )
}
