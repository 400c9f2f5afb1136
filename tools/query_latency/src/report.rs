//! Statement latency reports: slow-statement lines as they happen, interval and final tables
//! with the log2 histogram, or NDJSON.

use std::time::Instant;

use pgbpf_common::{output, query, sql::normalize};
use query_latency_ebpf::{QueryEvent, counter};
use serde_json::json;

use crate::{
    Args,
    stats::{Key, Latencies, Period},
};

pub struct Reporter {
    json: bool,
    timestamp: bool,
    per_backend: bool,
    min_ns: Option<u64>,
    top: usize,
    width: Option<usize>,
    interval: Period,
    total: Period,
    started: Instant,
    last_report: Instant,
}

impl Reporter {
    pub fn new(args: &Args) -> Reporter {
        Reporter {
            json: args.out.json,
            timestamp: args.out.timestamp,
            per_backend: args.per_backend,
            min_ns: args.min_ms.map(|ms| (ms.max(0.0) * 1e6) as u64),
            top: args.top.max(1),
            width: output::terminal_width(),
            interval: Period::default(),
            total: Period::default(),
            started: Instant::now(),
            last_report: Instant::now(),
        }
    }

    /// One finished statement. Returns false once stdout is gone.
    pub fn event(&mut self, ev: &QueryEvent) -> bool {
        let text = query::text_of(&ev.text, ev.text_len);
        let key = Key {
            pid: if self.per_backend { ev.pid } else { 0 },
            statement: normalize(&text),
        };
        let truncated = ev.truncated != 0;
        self.interval.add(key.clone(), ev.duration_ns, truncated);
        self.total.add(key, ev.duration_ns, truncated);
        match self.min_ns {
            Some(min) if ev.duration_ns >= min => self.slow(ev, &text),
            _ => true,
        }
    }

    fn slow(&self, ev: &QueryEvent, text: &str) -> bool {
        if self.json {
            return output::json_line(&json!({
                "type": "slow",
                "ts_ms": output::unix_ms(),
                "pid": ev.pid,
                "duration_ns": ev.duration_ns,
                "protocol": query::protocol_name(ev.protocol),
                "query": text,
                "truncated": ev.truncated != 0,
            }));
        }
        let line = format!(
            "{}{:<7} {:>10.3} ms  {}\n",
            self.prefix(),
            ev.pid,
            ev.duration_ns as f64 / 1e6,
            output::one_line(text)
        );
        // The line ends in a newline, which the width does not count.
        output::print(&format!(
            "{}\n",
            output::cut_to_width(line.trim_end_matches('\n'), self.width)
        ))
    }

    /// Statements running right now, longest first. Returns false once stdout is gone.
    pub fn active(&self, running: &[query::ActiveQuery]) -> bool {
        if self.json {
            let ts = output::unix_ms();
            return running.iter().all(|a| {
                output::json_line(&json!({
                    "type": "active",
                    "ts_ms": ts,
                    "pid": a.pid,
                    "elapsed_ns": a.elapsed.as_nanos() as u64,
                    "protocol": a.protocol,
                    "query": a.text,
                    "truncated": a.truncated,
                }))
            });
        }
        let rows: Vec<Vec<String>> = running
            .iter()
            .map(|a| {
                vec![
                    a.pid.to_string(),
                    output::human_ns(a.elapsed.as_nanos() as u64),
                    a.protocol.to_string(),
                    output::one_line(&a.text),
                ]
            })
            .collect();
        let mut out = format!(
            "{}{} statements running now\n",
            self.prefix(),
            running.len()
        );
        if !rows.is_empty() {
            out.push_str(&output::table(
                &["PID", "RUNNING", "PROTOCOL", "QUERY"],
                &rows,
                self.width,
            ));
            out.push('\n');
        }
        output::print(&out)
    }

    pub fn interval(&mut self, counters: &[u64; counter::COUNT as usize]) -> bool {
        let secs = self.last_report.elapsed().as_secs_f64();
        self.last_report = Instant::now();
        let period = std::mem::take(&mut self.interval);
        if self.json {
            return self.json_statements("interval", &period);
        }
        let head = format!(
            "{}{} statements in the last {secs:.0}s",
            self.prefix(),
            period.calls
        );
        output::print(&self.tables(&head, &period, counters))
    }

    pub fn summary(&mut self, counters: &[u64; counter::COUNT as usize]) {
        let secs = self.started.elapsed().as_secs_f64();
        let total = std::mem::take(&mut self.total);
        if self.json {
            self.json_statements("total", &total);
            output::json_line(&json!({
                "type": "summary",
                "ts_ms": output::unix_ms(),
                "duration_s": (secs * 1000.0).round() / 1000.0,
                "calls": total.calls,
                "hist_log2_us": total.log2_us,
                "lost": lost_json(counters),
            }));
            return;
        }
        let head = format!("{}{} statements in {secs:.0}s", self.prefix(), total.calls);
        output::print(&self.tables(&head, &total, counters));
    }

    fn prefix(&self) -> String {
        if self.timestamp {
            format!("{} ", output::hms_now())
        } else {
            String::new()
        }
    }

    fn tables(&self, head: &str, p: &Period, counters: &[u64; counter::COUNT as usize]) -> String {
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
            out.push_str(&output::table(&header, &rows, self.width));
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

    fn json_statements(&self, scope: &str, p: &Period) -> bool {
        let ts = output::unix_ms();
        let mut ok = true;
        for (k, l) in p.sorted() {
            let mut v = json!({
                "type": "statement",
                "scope": scope,
                "ts_ms": ts,
                "query": k.statement,
                "calls": l.calls,
                "total_ns": l.total_ns,
                "mean_ns": l.mean_ns().round(),
                "p50_ns": l.percentile_ns(50.0).round(),
                "p95_ns": l.percentile_ns(95.0).round(),
                "p99_ns": l.percentile_ns(99.0).round(),
                "max_ns": l.max_ns,
                "truncated": l.truncated,
            });
            if self.per_backend {
                v["pid"] = json!(k.pid);
            }
            ok &= output::json_line(&v);
        }
        ok
    }
}

fn lost_json(c: &[u64; counter::COUNT as usize]) -> serde_json::Value {
    json!({
        "ringbuf_full": c[counter::RINGBUF_FULL as usize],
        "context_full": c[counter::CONTEXT_FULL as usize],
        "began_before_attach": c[counter::DONE_WITHOUT_START as usize],
    })
}

fn lost_text(c: &[u64; counter::COUNT as usize]) -> String {
    format!(
        "lost: {} statements (ring buffer full), {} untracked (context map full); {} had begun before tracing",
        c[counter::RINGBUF_FULL as usize],
        c[counter::CONTEXT_FULL as usize],
        c[counter::DONE_WITHOUT_START as usize]
    )
}
