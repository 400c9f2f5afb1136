//! What pgwire_trace prints: a line per request as it completes (or NDJSON), and with
//! `--summary` a table per normalized statement every INTERVAL and at the end.

use foldhash::{HashMap, HashMapExt};

use pgbpf_common::{
    latency::Latencies,
    output,
    sql::{normalize, normalize_into},
};
use pgbpf_pgwire::value::render_all;
use serde_json::json;

use crate::decode::{DecodeStats, Event, Request};

/// Options that shape the output.
#[derive(Clone, Debug, Default)]
pub struct Style {
    pub json: bool,
    pub timestamp: bool,
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

pub struct Reporter {
    style: Style,
    width: Option<usize>,
    header_done: bool,
    period: HashMap<String, StatementStats>,
    total: HashMap<String, StatementStats>,
    started: std::time::Instant,
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
        normalize(&r.done.sql)
    } else {
        output::one_line(&r.done.sql)
    }
}

impl Reporter {
    pub fn new(style: Style) -> Reporter {
        Reporter {
            style,
            width: output::terminal_width(),
            header_done: false,
            period: HashMap::new(),
            total: HashMap::new(),
            started: std::time::Instant::now(),
            key: String::new(),
        }
    }

    /// Handles one decoder event; false when stdout is gone.
    pub fn event(&mut self, e: &Event) -> bool {
        match e {
            Event::Request(r) => self.request(r),
            Event::Encrypted { pid, conn_id, peer } => {
                if self.style.json {
                    output::json_line(&json!({
                        "event": "encrypted", "pid": pid, "conn_id": conn_id, "peer": peer,
                    }))
                } else if self.style.summary {
                    true
                } else {
                    output::print(&format!(
                        "# PID {pid} {peer}: connection encrypted (TLS/GSS), payload not visible\n"
                    ))
                }
            }
        }
    }

    fn request(&mut self, r: &Request) -> bool {
        let d = &r.done;
        let ns = r.end_unix_ns.saturating_sub(r.start_unix_ns);
        if self.style.summary {
            // Only the tables need the normalized text; the per-interval table only with
            // INTERVAL (normalizing and the lookups are most of the decoder's own cost).
            normalize_into(&d.sql, &mut self.key);
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
                    None => map.entry(key.clone()).or_default(),
                };
                s.latency.add(ns);
                s.errors += u64::from(d.sqlstate.is_some());
                s.rows += d.rows.unwrap_or(0);
            }
            return true;
        }
        if self.style.json {
            return output::json_line(&self.request_json(r));
        }
        self.line(r, ns)
    }

    /// The NDJSON object of a request (stable field names, see docs/pgwire_trace.md).
    pub fn request_json(&self, r: &Request) -> serde_json::Value {
        let d = &r.done;
        let params: Vec<String> = if self.style.redact {
            vec![]
        } else {
            (0..d.params.values.len())
                .map(|i| {
                    pgbpf_pgwire::value::render(
                        d.params.values[i].as_deref(),
                        d.params.format(i),
                        d.params.type_oid(i),
                    )
                })
                .collect()
        };
        json!({
            "event": "request",
            "ts_ms": r.start_unix_ns / 1_000_000,
            "pid": r.pid,
            "conn_id": r.conn_id,
            "peer": r.meta.peer,
            "user": r.meta.user,
            "database": r.meta.database,
            "application": r.meta.application,
            "protocol": if d.extended { "extended" } else { "simple" },
            "statement_name": d.statement,
            "sql": statement_text(r, self.style.redact),
            "truncated": d.truncated,
            "params": params,
            "duration_us": r.end_unix_ns.saturating_sub(r.start_unix_ns) as f64 / 1000.0,
            "status": d.sqlstate.as_deref().unwrap_or("ok"),
            "error": if self.style.redact { None } else { d.error.clone() },
            "tag": d.tag,
            "rows": d.rows,
            "transaction": transaction_name(d.transaction),
        })
    }

    fn line(&mut self, r: &Request, ns: u64) -> bool {
        let d = &r.done;
        let mut out = String::new();
        if !self.header_done {
            self.header_done = true;
            if self.style.timestamp {
                out.push_str(&format!("{:<8} ", "TIME"));
            }
            out.push_str(&format!(
                "{:>7} {:<22} {:>10} {:<6} {:>6} STATEMENT\n",
                "PID", "CONNECTION", "DURATION", "STATUS", "ROWS"
            ));
        }
        let mut line = String::new();
        if self.style.timestamp {
            line.push_str(&output::hms_of((r.start_unix_ns / 1_000_000_000) as i64));
            line.push(' ');
        }
        let mut peer = r.meta.peer.clone();
        if peer.chars().count() > 22 {
            let skip = peer.chars().count() - 21;
            peer = format!("…{}", peer.chars().skip(skip).collect::<String>());
        }
        let rows = d.rows.map_or("-".to_string(), |n| n.to_string());
        line.push_str(&format!(
            "{:>7} {:<22} {:>10} {:<6} {:>6} {}",
            r.pid,
            peer,
            output::human_ns(ns),
            d.sqlstate.as_deref().unwrap_or("ok"),
            rows,
            statement_text(r, self.style.redact)
        ));
        if d.truncated {
            // The statement (or its parameters) was longer than --capture.
            line.push('…');
        }
        let params = render_all(&d.params, self.style.redact);
        if !params.is_empty() {
            line.push_str(&format!(" [{params}]"));
        }
        if let (Some(e), false) = (&d.error, self.style.redact) {
            line.push_str(&format!(" -- ERROR: {e}"));
        }
        if let Some(w) = self.width
            && line.chars().count() > w
        {
            line = line.chars().take(w.saturating_sub(1)).collect::<String>() + "…";
        }
        out.push_str(&line);
        out.push('\n');
        output::print(&out)
    }

    fn table(&self, stats: &HashMap<String, StatementStats>) -> String {
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
            self.width,
        );
        if v.len() > self.style.top {
            t.push_str(&format!(
                "\n({} more statements; --top N shows more)",
                v.len() - self.style.top
            ));
        }
        t
    }

    fn summary_json(&self, stats: &HashMap<String, StatementStats>, final_: bool) -> bool {
        let mut v: Vec<_> = stats.iter().collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        for (sql, s) in v {
            let ok = output::json_line(&json!({
                "event": if final_ { "summary" } else { "interval" },
                "ts_ms": output::unix_ms(),
                "sql": sql,
                "calls": s.latency.calls,
                "errors": s.errors,
                "rows": s.rows,
                "total_ms": s.latency.total_ns as f64 / 1e6,
                "mean_ms": s.latency.mean_ns() / 1e6,
                "p50_ms": s.latency.percentile_ns(50.0) / 1e6,
                "p99_ms": s.latency.percentile_ns(99.0) / 1e6,
            }));
            if !ok {
                return false;
            }
        }
        true
    }

    /// End of an interval: with --summary, that interval's table.
    pub fn interval(&mut self, stats: &DecodeStats, kernel: &[u64]) -> bool {
        let period = std::mem::take(&mut self.period);
        if !self.style.summary {
            return true;
        }
        if self.style.json {
            return self.summary_json(&period, false);
        }
        output::print(&format!(
            "\n{}\n{}\n{}\n",
            output::hms_now(),
            self.table(&period),
            totals_line(stats, kernel)
        ))
    }

    /// The end: the whole trace's table (with --summary) and the totals line.
    pub fn finish(&mut self, stats: &DecodeStats, kernel: &[u64]) {
        if self.style.json {
            if self.style.summary {
                self.summary_json(&self.total, true);
            }
            let mut j = stats_json(stats, kernel);
            j["duration_s"] = json!(self.started.elapsed().as_secs_f64());
            output::json_line(&j);
            return;
        }
        if self.style.summary {
            output::print(&format!("\n{}\n", self.table(&self.total)));
        }
        output::print(&format!("{}\n", totals_line(stats, kernel)));
    }
}

/// Kernel counter `i`, 0 when absent (offline captures without counters).
fn counter(kernel: &[u64], i: u32) -> u64 {
    kernel.get(i as usize).copied().unwrap_or(0)
}

pub fn totals_line(s: &DecodeStats, kernel: &[u64]) -> String {
    use pgwire_trace_ebpf::counter as c;
    format!(
        "# {} requests ({} errors) on {} connections ({} encrypted); lost: {} records ({} bytes); \
         {} responses unmatched after gaps; {} bytes beyond the capture limit; {} malformed messages",
        s.requests,
        s.errors,
        s.connections,
        s.encrypted,
        counter(kernel, c::LOST_RECORDS),
        counter(kernel, c::LOST_BYTES),
        s.unmatched,
        s.truncated_bytes,
        s.malformed
    )
}

fn stats_json(s: &DecodeStats, kernel: &[u64]) -> serde_json::Value {
    use pgwire_trace_ebpf::counter as c;
    json!({
        "event": "stats",
        "requests": s.requests,
        "errors": s.errors,
        "connections": s.connections,
        "encrypted": s.encrypted,
        "lost_records": counter(kernel, c::LOST_RECORDS),
        "lost_bytes": counter(kernel, c::LOST_BYTES),
        "unmatched": s.unmatched,
        "truncated_bytes": s.truncated_bytes,
        "malformed": s.malformed,
        "sockets_table_full": counter(kernel, c::SOCKETS_FULL),
    })
}
