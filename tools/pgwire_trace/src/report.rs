//! What pgwire_trace prints: a line per request as it completes (or NDJSON), and with
//! `--summary` a table per normalized statement every INTERVAL and at the end.

use std::io;

use foldhash::{HashMap, HashMapExt};

use pgbpf_capture::lines::{Layout, Line, Lines};
use pgbpf_common::{
    bounded::Fold as _,
    latency::Latencies,
    output::{self, Output},
    periods::ReportClock,
    records::{self, Scope},
    sql::Shown,
};
use pgbpf_pgwire::value::render_all;

use crate::{
    decode::{DecodeStats, Event, Request},
    records::{self as rec, Lost, Record, StatementRow, Totals},
};

/// Options that shape the output (beyond `--json` and `-T`, which the output carries).
#[derive(Clone, Debug, Default)]
pub struct Style {
    pub summary: bool,
    /// INTERVAL given: --summary prints a table per interval too.
    pub intervals: bool,
    pub redact: bool,
    pub top: usize,
}

/// One normalized statement's figures.
#[derive(Clone, Debug, Default)]
pub struct StatementStats {
    pub latency: Latencies,
    pub errors: u64,
    pub rows: u64,
}

impl pgbpf_common::bounded::Fold for StatementStats {
    fn fold(&mut self, other: &Self) {
        self.latency.merge(&other.latency);
        self.errors += other.errors;
        self.rows += other.rows;
    }

    fn weight(&self) -> u64 {
        self.latency.total_ns
    }
}

pub struct Reporter {
    style: Style,
    lines: Lines,
    period: HashMap<String, StatementStats>,
    total: HashMap<String, StatementStats>,
    clock: ReportClock,
    /// The normalized text of the request being counted (one buffer, reused).
    key: String,
}

fn transaction_name(t: Option<u8>) -> &'static str {
    match t {
        Some(b'I') => "idle",
        Some(b'T') => "transaction",
        Some(b'E') => "failed",
        _ => "unknown",
    }
}

/// The statement as shown: whole (with parameters), or with --redact normalized and without.
pub fn statement_text(r: &Request, redact: bool) -> String {
    if redact {
        Shown::Redacted.text(&r.done.sql)
    } else {
        output::one_line(&r.done.sql)
    }
}

impl Reporter {
    pub fn new(style: Style) -> Reporter {
        Reporter {
            style,
            lines: Lines::new(Layout {
                peer_width: 22,
                duration_width: 10,
                status_width: 6,
                size_name: "ROWS",
                text_name: "STATEMENT",
            }),
            period: HashMap::new(),
            total: HashMap::new(),
            clock: ReportClock::default(),
            key: String::new(),
        }
    }

    fn request(&mut self, out: &mut Output, r: &Request) -> io::Result<()> {
        let d = &r.done;
        let ns = r.end_unix_ns.saturating_sub(r.start_unix_ns);
        if self.style.summary {
            // Only the tables need the normalized text; the per-interval table only with
            // INTERVAL (normalizing and the lookups are most of the decoder's own cost).
            Shown::redacted_if(self.style.redact).text_into(&d.sql, &mut self.key);
            let key = &self.key;
            let maps = if self.style.intervals {
                [Some(&mut self.period), Some(&mut self.total)]
            } else {
                [None, Some(&mut self.total)]
            };
            for map in maps.into_iter().flatten() {
                // Look up before inserting: a statement seen before costs no key copy.
                let s = match map.get_mut(key.as_str()) {
                    Some(s) => s,
                    None => pgbpf_common::bounded::row(map, key.clone(), |k| {
                        pgbpf_common::bounded::folded(k)
                    }),
                };
                s.latency.add(ns);
                s.errors += u64::from(d.sqlstate.is_some());
                s.rows += d.rows.unwrap_or(0);
            }
            return Ok(());
        }
        if out.json {
            return out.record(&Record::Request(self.request_record(r)));
        }
        self.line(out, r, ns)
    }

    /// The NDJSON record of a request.
    pub fn request_record<'r>(&self, r: &'r Request) -> rec::Request<'r> {
        let d = &r.done;
        let params: Vec<String> = if self.style.redact {
            vec![]
        } else {
            (0..d.params.values().len())
                .map(|i| {
                    pgbpf_pgwire::value::render(
                        d.params.values()[i].as_deref(),
                        d.params.format(i),
                        d.params.type_oid(i),
                    )
                })
                .collect()
        };
        rec::Request {
            ts_ns: r.start_unix_ns,
            pid: r.pid,
            conn_id: r.conn_id,
            peer: &r.meta.peer,
            tls: r.meta.tls,
            user: r.meta.user.as_deref(),
            database: r.meta.database.as_deref(),
            application: r.meta.application.as_deref(),
            protocol: if d.extended { "extended" } else { "simple" },
            statement_name: d.statement.as_deref(),
            query: statement_text(r, self.style.redact),
            truncated: d.truncated,
            params,
            duration_ns: r.end_unix_ns.saturating_sub(r.start_unix_ns),
            status: d.sqlstate.as_deref().unwrap_or("ok"),
            error: if self.style.redact {
                None
            } else {
                d.error.as_deref()
            },
            tag: d.tag.as_deref(),
            rows: d.rows,
            transaction: transaction_name(d.transaction),
        }
    }

    fn line(&mut self, sink: &mut Output, r: &Request, ns: u64) -> io::Result<()> {
        let d = &r.done;
        let mut text = statement_text(r, self.style.redact);
        if d.truncated {
            // The statement (or its parameters) was longer than --capture.
            text.push('…');
        }
        let params = render_all(&d.params, self.style.redact);
        if !params.is_empty() {
            text.push_str(&format!(" [{params}]"));
        }
        if let (Some(e), false) = (&d.error, self.style.redact) {
            text.push_str(&format!(" -- ERROR: {e}"));
        }
        self.lines.write(
            sink,
            &Line {
                start_unix_ns: r.start_unix_ns,
                pid: r.pid,
                peer: &r.meta.label,
                duration_ns: Some(ns),
                status: d.sqlstate.as_deref().unwrap_or("ok"),
                size: d.rows,
                text: &text,
            },
        )
    }

    fn table(&self, width: Option<usize>, stats: &HashMap<String, StatementStats>) -> String {
        let mut v: Vec<_> = stats.iter().collect();
        v.sort_by(|a, b| {
            b.1.latency
                .total_ns
                .cmp(&a.1.latency.total_ns)
                .then(a.0.cmp(b.0))
        });
        let ms = |ns: f64| format!("{:.3}", ns / 1e6);
        let rows: Vec<Vec<String>> = v
            .iter()
            .take(self.style.top)
            .map(|(sql, s)| {
                vec![
                    s.latency.calls.to_string(),
                    s.errors.to_string(),
                    s.rows.to_string(),
                    ms(s.latency.total_ns as f64),
                    ms(s.latency.mean_ns()),
                    ms(s.latency.percentile_ns(50.0)),
                    ms(s.latency.percentile_ns(99.0)),
                    output::one_line(sql),
                ]
            })
            .collect();
        let mut t = output::table(
            &[
                "CALLS",
                "ERRORS",
                "ROWS",
                "TOTAL_MS",
                "MEAN_MS",
                "P50_MS",
                "P99_MS",
                "STATEMENT",
            ],
            &rows,
            width,
        );
        if v.len() > self.style.top {
            t.push_str(&format!(
                "\n({} more statements; --top N shows more)",
                v.len() - self.style.top
            ));
        }
        t
    }

    fn statement_records(
        &self,
        out: &mut Output,
        scope: Scope,
        interval_ns: u64,
        stats: &HashMap<String, StatementStats>,
    ) -> io::Result<()> {
        let ts_ns = output::unix_ns();
        let mut v: Vec<_> = stats.iter().collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        let round = |ns: f64| ns.round() as u64;
        for (sql, s) in v {
            out.record(&Record::Statement(StatementRow {
                scope,
                ts_ns,
                interval_ns,
                query: sql,
                calls: s.latency.calls,
                errors: s.errors,
                rows: s.rows,
                total_ns: s.latency.total_ns,
                mean_ns: round(s.latency.mean_ns()),
                p50_ns: round(s.latency.percentile_ns(50.0)),
                p99_ns: round(s.latency.percentile_ns(99.0)),
            }))?;
        }
        Ok(())
    }

    fn interval(
        &mut self,
        out: &mut Output,
        stats: &DecodeStats,
        kernel: &[u64],
    ) -> io::Result<()> {
        let period = std::mem::take(&mut self.period);
        let interval_ns = records::ns(self.clock.end_interval());
        if !self.style.summary {
            return Ok(());
        }
        if out.json {
            self.statement_records(out, Scope::Interval, interval_ns, &period)?;
            return out.record(&Record::Interval(totals(stats, kernel, interval_ns)));
        }
        let text = format!(
            "\n{}\n{}\n{}\n",
            output::hms_now(),
            self.table(out.width, &period),
            totals_line(stats, kernel)
        );
        out.text(&text)
    }

    fn finish(&mut self, out: &mut Output, stats: &DecodeStats, kernel: &[u64]) -> io::Result<()> {
        let interval_ns = records::ns(self.clock.run());
        if out.json {
            if self.style.summary {
                self.statement_records(out, Scope::Total, interval_ns, &self.total)?;
            }
            return out.record(&Record::Summary(totals(stats, kernel, interval_ns)));
        }
        if self.style.summary {
            let text = format!("\n{}\n", self.table(out.width, &self.total));
            out.text(&text)?;
        }
        out.text(&format!("{}\n", totals_line(stats, kernel)))
    }
}

pub fn totals_line(s: &DecodeStats, kernel: &[u64]) -> String {
    let lost = Lost::of(kernel);
    format!(
        "# {} requests ({} errors) on {} connections ({} encrypted); lost: {}; \
         {} responses unmatched after gaps; {} bytes beyond the capture limit; {} malformed messages",
        s.requests,
        s.errors,
        s.connections,
        s.encrypted,
        lost.text(),
        s.unmatched,
        s.truncated_bytes,
        s.malformed
    )
}

fn totals(s: &DecodeStats, kernel: &[u64], interval_ns: u64) -> Totals {
    Totals {
        ts_ns: output::unix_ns(),
        interval_ns,
        requests: s.requests,
        errors: s.errors,
        connections: s.connections,
        encrypted: s.encrypted,
        unmatched: s.unmatched,
        truncated_bytes: s.truncated_bytes,
        malformed: s.malformed,
        lost: Lost::of(kernel),
    }
}

impl pgbpf_capture::wire::Report<Event, DecodeStats> for Reporter {
    /// Handles one decoder event.
    fn event(&mut self, out: &mut Output, e: &Event) -> io::Result<()> {
        match e {
            Event::Request(r) => self.request(out, r),
            Event::Encrypted {
                unix_ns,
                pid,
                conn_id,
                peer,
                reason,
            } => {
                if out.json {
                    out.record(&Record::Encrypted(rec::Encrypted {
                        ts_ns: *unix_ns,
                        pid: *pid,
                        conn_id: *conn_id,
                        peer,
                        reason,
                    }))
                } else if self.style.summary {
                    Ok(())
                } else {
                    out.text(&format!(
                        "# PID {pid} {peer}: connection encrypted, payload not visible: {reason}\n"
                    ))
                }
            }
        }
    }

    /// A summary table: requests print nothing as they come (encrypted connections do, as
    /// JSON records).
    fn shardable(&self, out: &Output) -> bool {
        self.style.summary && !out.json
    }

    fn absorb(&mut self, other: Reporter) {
        for (mine, theirs) in [
            (&mut self.period, other.period),
            (&mut self.total, other.total),
        ] {
            for (statement, stats) in theirs {
                pgbpf_common::bounded::row(mine, statement, |k| pgbpf_common::bounded::folded(k))
                    .fold(&stats);
            }
        }
    }

    /// The report of the interval that ended (with --summary, its table), or of the whole
    /// trace (with --summary its table; always the totals).
    fn report(
        &mut self,
        out: &mut Output,
        scope: Scope,
        stats: &DecodeStats,
        kernel: &[u64],
    ) -> io::Result<()> {
        match scope {
            Scope::Interval => self.interval(out, stats, kernel),
            Scope::Total => self.finish(out, stats, kernel),
        }
    }
}
