//! Sample tables by (process, statement, CPU): interval and final reports with the totals line
//! of bcc's llcstat, or NDJSON.

use std::{collections::HashMap, io, time::Duration};

use llcache_per_query_ebpf::{
    KEY_TEXT, MAX_EVENTS, PROTOCOL_NONE, PROTOCOL_UNREADABLE, SampleCounts, SampleKey, counter,
};
use pgbpf_common::{
    output::{self, Output},
    periods::{Periods, period_text},
    query,
    query_string::IdleLabels,
    records::{self, Scope},
};

use crate::{
    Args,
    events::Event,
    records::{EventCount, EventCounts, Lost, Record, Row as RowRecord, Totals},
};

/// The kernel side's COUNTERS, summed over CPUs.
pub type Counters = [u64; counter::COUNT as usize];

/// Width of the QUERY column when stdout is not a terminal (JSON carries the whole text).
const QUERY_COLUMN_MAX: usize = 60;

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RowKey {
    pid: u32,
    /// Normalized statement, or "[no statement: <process type>]".
    query: String,
    cpu: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct Row {
    samples: [u64; MAX_EVENTS],
    /// A statement (not time between statements).
    statement: bool,
    truncated: bool,
}

impl pgbpf_common::bounded::Fold for Row {
    fn fold(&mut self, other: &Self) {
        for (sum, n) in self.samples.iter_mut().zip(other.samples) {
            *sum += n;
        }
        self.statement |= other.statement;
        self.truncated |= other.truncated;
    }

    fn weight(&self) -> u64 {
        self.samples[0]
    }
}

#[derive(Debug, Default)]
struct Period {
    rows: HashMap<RowKey, Row>,
}

impl Period {
    fn add(&mut self, key: &RowKey, counts: &SampleCounts, statement: bool, truncated: bool) {
        // Folded rows lose their process and CPU too: those are what make rows many (one per
        // backend with short connections).
        let row = pgbpf_common::bounded::row(&mut self.rows, key.clone(), |k| RowKey {
            pid: 0,
            query: pgbpf_common::bounded::folded(&k.query),
            cpu: 0,
        });
        for (sum, n) in row.samples.iter_mut().zip(counts.samples) {
            *sum += n;
        }
        row.statement = statement;
        row.truncated |= truncated;
    }

    fn totals(&self) -> [u64; MAX_EVENTS] {
        let mut t = [0u64; MAX_EVENTS];
        for row in self.rows.values() {
            for (sum, n) in t.iter_mut().zip(row.samples) {
                *sum += n;
            }
        }
        t
    }

    /// Rows by the first event's samples, most first (then by pid and CPU, for stable output).
    fn sorted(&self) -> Vec<(&RowKey, &Row)> {
        let mut rows: Vec<_> = self.rows.iter().collect();
        rows.sort_by(|a, b| {
            b.1.samples[0]
                .cmp(&a.1.samples[0])
                .then(
                    b.1.samples
                        .iter()
                        .sum::<u64>()
                        .cmp(&a.1.samples.iter().sum()),
                )
                .then(a.0.pid.cmp(&b.0.pid))
                .then(a.0.cpu.cmp(&b.0.cpu))
                .then(a.0.query.cmp(&b.0.query))
        });
        rows
    }
}

pub struct Reporter {
    events: Vec<Event>,
    top: usize,
    periods: Periods<Period>,
    idle_labels: IdleLabels,
}

impl Reporter {
    pub fn new(args: &Args, events: Vec<Event>) -> Reporter {
        Reporter {
            events,
            top: args.top.max(1),
            periods: Periods::new(),
            idle_labels: IdleLabels::new(args.redact.shown()),
        }
    }

    /// Adds samples drained from the kernel.
    pub fn add(&mut self, entries: &[(SampleKey, SampleCounts)]) {
        for (k, counts) in entries {
            let statement = k.protocol != PROTOCOL_NONE && k.protocol != PROTOCOL_UNREADABLE;
            let query = if statement {
                self.idle_labels
                    .shown()
                    .text(&query::text_of(&k.text, KEY_TEXT as u32))
            } else if k.protocol == PROTOCOL_UNREADABLE {
                // Sampled before the tool had located the process's statement pointer.
                "[statement not read]".to_string()
            } else {
                self.idle_labels.label(k.tgid)
            };
            let key = RowKey {
                pid: k.tgid,
                query,
                cpu: k.cpu,
            };
            let truncated = k.truncated != 0;
            for p in self.periods.each() {
                p.add(&key, counts, statement, truncated);
            }
        }
    }

    /// The table of the interval that ended, or of the whole run.
    pub fn report(
        &mut self,
        sink: &mut Output,
        scope: Scope,
        counters: &Counters,
    ) -> io::Result<()> {
        let (stats, period) = self.periods.end(scope);
        let p = &stats;
        if sink.json {
            return self.json_report(sink, scope, period, p, counters);
        }
        let when = period_text(scope, period);
        let samples: u64 = p.totals().iter().sum();
        let mut out = format!("{}{samples} samples {when}\n", sink.prefix());
        let sorted = p.sorted();
        if !sorted.is_empty() {
            let mut header = vec!["PID", "QUERY", "CPU"];
            header.extend(self.events.iter().map(|e| e.kind.column));
            let hit = self.hit_columns();
            if hit.is_some() {
                header.push("HIT%");
            }
            output::top_table(
                &mut out,
                &header,
                &sorted,
                self.top,
                sink.width,
                |(k, r)| self.row(sink.width, k, r),
            );
        }
        out.push('\n');
        out.push_str(&self.totals_line(&p.totals()));
        out.push_str(&format!("\n{}\n\n", lost_text(counters)));
        sink.text(&out)
    }

    /// Slots of cache-references and cache-misses, when both are sampled.
    fn hit_columns(&self) -> Option<(usize, usize)> {
        let slot = |name: &str| self.events.iter().position(|e| e.kind.name == name);
        Some((slot("cache-references")?, slot("cache-misses")?))
    }

    fn hit_pct(&self, samples: &[u64; MAX_EVENTS]) -> Option<f64> {
        let (r, m) = self.hit_columns()?;
        let refs = self.events[r].estimate(samples[r]);
        let misses = self.events[m].estimate(samples[m]);
        // Sampling can put more misses than references in a small row: clamp at 0 %.
        (refs > 0.0).then(|| 100.0 * (refs - misses.min(refs)) / refs)
    }

    fn value(&self, slot: usize, samples: u64) -> String {
        let e = &self.events[slot];
        let v = e.estimate(samples);
        if e.kind.is_cpu_clock() {
            format!("{v:.1}")
        } else {
            format!("{v:.0}")
        }
    }

    fn row(&self, width: Option<usize>, k: &RowKey, r: &Row) -> Vec<String> {
        let mut query = output::one_line(&k.query);
        if r.truncated {
            query.push('…');
        }
        if width.is_none() {
            query = output::cut_to_width(&query, Some(QUERY_COLUMN_MAX));
        }
        let mut cells = vec![k.pid.to_string(), query, k.cpu.to_string()];
        cells.extend((0..self.events.len()).map(|slot| self.value(slot, r.samples[slot])));
        if self.hit_columns().is_some() {
            cells.push(match self.hit_pct(&r.samples) {
                Some(h) => format!("{h:.2}%"),
                None => "-".to_string(),
            });
        }
        cells
    }

    /// "Total References: 3303100 Total Misses: 599100 Hit Rate: 81.86%", as llcstat prints it.
    fn totals_line(&self, totals: &[u64; MAX_EVENTS]) -> String {
        let mut parts: Vec<String> = self
            .events
            .iter()
            .enumerate()
            .map(|(slot, e)| {
                format!(
                    "Total {}: {}",
                    e.kind.total_title,
                    self.value(slot, totals[slot])
                )
            })
            .collect();
        if self.hit_columns().is_some() {
            parts.push(match self.hit_pct(totals) {
                Some(h) => format!("Hit Rate: {h:.2}%"),
                None => "Hit Rate: -".to_string(),
            });
        }
        parts.join(" ")
    }

    fn event_counts(&self, samples: &[u64; MAX_EVENTS]) -> EventCounts {
        self.events
            .iter()
            .enumerate()
            .map(|(slot, e)| {
                let count = EventCount {
                    samples: samples[slot],
                    period: e.period,
                    estimate: samples[slot].saturating_mul(e.period),
                };
                (e.kind.name, count)
            })
            .collect()
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
        for (k, r) in p.sorted() {
            out.record(&Record::Row(RowRecord {
                scope,
                ts_ns,
                interval_ns,
                pid: k.pid,
                cpu: k.cpu,
                query: &k.query,
                statement: r.statement,
                truncated: r.truncated,
                events: self.event_counts(&r.samples),
                hit_pct: self.hit_pct(&r.samples),
            }))?;
        }
        let totals = p.totals();
        let record = Totals {
            ts_ns,
            interval_ns,
            samples: totals.iter().sum(),
            events: self.event_counts(&totals),
            hit_pct: self.hit_pct(&totals),
            lost: Lost {
                map_full: c[counter::MAP_FULL as usize],
                context_full: c[counter::CONTEXT_FULL as usize],
                began_before_attach: c[counter::DONE_WITHOUT_START as usize],
                statement_not_read: c[counter::UNREADABLE as usize],
            },
        };
        out.record(&match scope {
            Scope::Interval => Record::Interval(record),
            Scope::Total => Record::Summary(record),
        })
    }
}

fn lost_text(c: &Counters) -> String {
    let mut s = format!(
        "lost: {} samples (sample map full); {} samples with statement not read",
        c[counter::MAP_FULL as usize],
        c[counter::UNREADABLE as usize],
    );
    // Only the probes (--usdt) keep a context that can fill up or miss a start.
    let (full, before) = (
        c[counter::CONTEXT_FULL as usize],
        c[counter::DONE_WITHOUT_START as usize],
    );
    if full + before > 0 {
        s.push_str(&format!(
            "; {full} statements untracked (context map full); {before} had begun before tracing"
        ));
    }
    s
}
