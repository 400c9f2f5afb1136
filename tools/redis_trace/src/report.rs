//! What redis_trace prints: a line per command as it ends (or NDJSON), and with `--summary` a
//! table per command name every INTERVAL and at the end (with `--keys` the top keys and key
//! prefixes, redis-faina's view without MONITOR), with log2 latency histograms at the end.

use std::io;

use foldhash::HashMap;
use pgbpf_capture::lines::{Layout, Line, Lines};
use pgbpf_common::{
    latency::Latencies,
    output::{self, Output},
    periods::Periods,
    records::{self as common, Scope},
};
use pgbpf_resp::{
    Completed, Outcome, TxOutcome,
    command::{Arg, quote},
    conn::Reply,
};

use crate::{
    decode::{DecodeStats, Event, Who},
    records::{self as rec, Lost, Record},
};

/// Distinct keys (and prefixes) counted per period; past it, new keys go uncounted (and are
/// said to be) so memory stays bounded under a scan of millions of keys.
pub const MAX_KEYS: usize = 100_000;

/// Options that shape the output (beyond `--json` and `-T`, which the output carries).
#[derive(Clone, Debug, Default)]
pub struct Style {
    pub summary: bool,
    pub keys: bool,
    /// INTERVAL given: --summary prints a table per interval too.
    pub intervals: bool,
    pub redact: bool,
    pub top: usize,
}

/// One command name's figures.
#[derive(Clone, Debug, Default)]
pub struct CommandStats {
    pub calls: u64,
    pub errors: u64,
    pub latency: Latencies,
    pub hist_log2_us: [u64; 32],
    pub request_bytes: u64,
    pub reply_bytes: u64,
}

/// Calls and bytes of a key or prefix.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyStats {
    pub calls: u64,
    pub request_bytes: u64,
    pub reply_bytes: u64,
}

/// One period's figures.
#[derive(Debug, Default)]
pub struct Figures {
    pub commands: HashMap<String, CommandStats>,
    pub keys: HashMap<Vec<u8>, KeyStats>,
    pub prefixes: HashMap<Vec<u8>, KeyStats>,
    /// Keys not counted because `MAX_KEYS` were counted already.
    pub keys_over: u64,
}

pub struct Reporter {
    style: Style,
    lines: Lines,
    figures: Periods<Figures>,
}

/// `ok`, the error code, or what became of a command that got no reply of its own.
pub fn status(d: &Completed) -> &str {
    match &d.outcome {
        Outcome::Reply(r) => match &r.error {
            Some(e) => &e.code,
            None if d.timed_out => "timeout",
            None => "ok",
        },
        Outcome::NoReply => "noreply",
        Outcome::Aborted => "aborted",
        Outcome::Discarded => "discarded",
        Outcome::Unanswered => "unanswered",
    }
}

/// The reply, if one came.
fn reply(d: &Completed) -> Option<&Reply> {
    match &d.outcome {
        Outcome::Reply(r) => Some(r),
        _ => None,
    }
}

/// A reply type's name.
pub fn reply_type(r: &Reply) -> &'static str {
    use pgbpf_resp::frame::kind as k;
    match r.kind {
        _ if r.null => "null",
        k::SIMPLE => "simple",
        k::ERROR => "error",
        k::INTEGER => "integer",
        k::BULK => "bulk",
        k::ARRAY => "array",
        k::MAP => "map",
        k::SET => "set",
        k::DOUBLE => "double",
        k::BOOLEAN => "boolean",
        k::BIG_NUMBER => "big_number",
        k::VERBATIM => "verbatim",
        k::BULK_ERROR => "bulk_error",
        k::PUSH => "push",
        _ => "other",
    }
}

/// The duration of a command, when it has one of its own.
fn duration_ns(start: u64, end: u64, d: &Completed) -> Option<u64> {
    (reply(d).is_some() && !d.in_exec).then(|| end.saturating_sub(start))
}

/// An argument as text: UTF-8 as is, other bytes as \xNN; a secret as `(redacted)`.
fn arg_text(a: &Arg) -> String {
    if a.secret {
        return "(redacted)".into();
    }
    let mut s = String::new();
    for chunk in a.data.utf8_chunks() {
        s.push_str(chunk.valid());
        for b in chunk.invalid() {
            s.push_str(&format!("\\x{b:02x}"));
        }
    }
    s
}

/// The prefix of a key: up to and with its first ':' (None without one).
fn prefix_of(key: &[u8]) -> Option<&[u8]> {
    key.iter().position(|&c| c == b':').map(|i| &key[..=i])
}

impl Reporter {
    pub fn new(style: Style) -> Reporter {
        Reporter {
            style,
            lines: Lines::new(Layout {
                peer_width: 21,
                duration_width: 9,
                status_width: 10,
                size_name: "REPLY",
                text_name: "COMMAND",
            }),
            figures: Periods::new(),
        }
    }

    fn count(&mut self, d: &Completed, ns: Option<u64>) {
        let style_keys = self.style.keys;
        let request = d.command.wire;
        let reply_bytes = reply(d).map_or(0, |r| r.wire);
        let key = d.command.key().map(|k| k.data);
        for f in self.figures.each_reported(self.style.intervals) {
            let name = d.command.name();
            let s = match f.commands.get_mut(name) {
                Some(s) => s,
                None => f.commands.entry(name.to_string()).or_default(),
            };
            s.calls += 1;
            s.errors += u64::from(d.error().is_some());
            s.request_bytes += request;
            s.reply_bytes += reply_bytes;
            if let Some(ns) = ns {
                s.latency.add(ns);
                s.hist_log2_us[output::log2_slot(ns / 1000).min(31)] += 1;
            }
            if let (true, Some(key)) = (style_keys, key) {
                let add = |map: &mut HashMap<Vec<u8>, KeyStats>, k: &[u8], over: &mut u64| {
                    if !map.contains_key(k) && map.len() >= MAX_KEYS {
                        *over += 1;
                        return;
                    }
                    let e = match map.get_mut(k) {
                        Some(e) => e,
                        None => map.entry(k.to_vec()).or_default(),
                    };
                    e.calls += 1;
                    e.request_bytes += request;
                    e.reply_bytes += reply_bytes;
                };
                add(&mut f.keys, key, &mut f.keys_over);
                if let Some(p) = prefix_of(key) {
                    add(&mut f.prefixes, p, &mut f.keys_over);
                }
            }
        }
    }

    /// The NDJSON record of a command.
    pub fn command_record<'r>(
        &self,
        who: &'r Who,
        start_unix_ns: u64,
        ns: Option<u64>,
        d: &'r Completed,
    ) -> rec::Command<'r> {
        let c = &d.command;
        let args: Vec<String> = if self.style.redact {
            vec![]
        } else {
            c.args()
                .enumerate()
                .filter(|(i, _)| Some(*i) != c.key)
                .map(|(_, a)| arg_text(&a))
                .collect()
        };
        let r = reply(d);
        rec::Command {
            ts_ns: start_unix_ns,
            pid: who.pid,
            conn_id: who.conn_id,
            peer: &who.peer,
            tls: who.tls,
            command: c.name(),
            key: c.key().as_ref().map(arg_text),
            args,
            truncated: c.truncated(),
            duration_ns: ns,
            status: status(d),
            error: match (d.error(), self.style.redact) {
                (Some(e), false) => Some(&e.message),
                _ => None,
            },
            reply_type: r.map(reply_type),
            reply_bytes: r.map(|r| r.wire),
            request_bytes: c.wire,
            transaction: d.transaction,
            blocking: c.blocking,
            inline: c.inline,
        }
    }

    /// The command as shown: name, key and (without --redact) the other arguments quoted.
    fn command_text(&self, d: &Completed) -> String {
        let c = &d.command;
        let mut s = c.name().to_string();
        for (i, a) in c.args().enumerate() {
            if self.style.redact && Some(i) != c.key {
                continue;
            }
            s.push(' ');
            if a.secret {
                s.push_str("(redacted)");
            } else {
                s.push_str(&quote(a.data, a.truncated));
            }
        }
        if let Some(t) = d.transaction.filter(|_| d.in_exec) {
            s.push_str(&format!(" (in EXEC #{t})"));
        }
        s
    }

    fn line(
        &mut self,
        out: &mut Output,
        who: &Who,
        start_unix_ns: u64,
        ns: Option<u64>,
        d: &Completed,
    ) -> io::Result<()> {
        let mut text = self.command_text(d);
        if let (Some(e), false) = (d.error(), self.style.redact) {
            text.push_str(&format!(" -- {} {}", e.code, e.message));
        }
        let size = reply(d).map(|r| r.wire);
        self.write_line(out, who, start_unix_ns, ns, status(d), size, &text)
    }

    #[allow(clippy::too_many_arguments)]
    fn write_line(
        &mut self,
        sink: &mut Output,
        who: &Who,
        start_unix_ns: u64,
        ns: Option<u64>,
        status: &str,
        reply_bytes: Option<u64>,
        text: &str,
    ) -> io::Result<()> {
        self.lines.write(
            sink,
            &Line {
                start_unix_ns,
                pid: who.pid,
                peer: &who.label,
                duration_ns: ns,
                status,
                size: reply_bytes,
                text,
            },
        )
    }

    /// Commands by total time, then by calls.
    fn ranked<'f>(&self, f: &'f Figures) -> Vec<(&'f String, &'f CommandStats)> {
        let mut v: Vec<_> = f.commands.iter().collect();
        v.sort_by(|a, b| {
            (b.1.latency.total_ns, b.1.calls, a.0).cmp(&(a.1.latency.total_ns, a.1.calls, b.0))
        });
        v
    }

    fn table(&self, width: Option<usize>, f: &Figures) -> String {
        let v = self.ranked(f);
        let us = |ns: f64| format!("{:.1}", ns / 1e3);
        let rows: Vec<Vec<String>> = v
            .iter()
            .take(self.style.top)
            .map(|(name, s)| {
                vec![
                    s.calls.to_string(),
                    s.errors.to_string(),
                    us(s.latency.percentile_ns(50.0)),
                    us(s.latency.percentile_ns(99.0)),
                    us(s.latency.max_ns as f64),
                    output::human_bytes(s.request_bytes),
                    output::human_bytes(s.reply_bytes),
                    name.to_string(),
                ]
            })
            .collect();
        let mut t = output::table(
            &[
                "CALLS", "ERRORS", "P50_US", "P99_US", "MAX_US", "IN", "OUT", "COMMAND",
            ],
            &rows,
            width,
        );
        if v.len() > self.style.top {
            t.push_str(&format!(
                "\n({} more commands; --top N shows more)",
                v.len() - self.style.top
            ));
        }
        t
    }

    fn top_keys<'f>(
        &self,
        map: &'f HashMap<Vec<u8>, KeyStats>,
    ) -> Vec<(&'f Vec<u8>, &'f KeyStats)> {
        let mut v: Vec<_> = map.iter().collect();
        v.sort_by(|a, b| (b.1.calls, a.0).cmp(&(a.1.calls, b.0)));
        v.truncate(self.style.top);
        v
    }

    fn key_table(&self, width: Option<usize>, f: &Figures) -> String {
        let mut text = String::new();
        for (title, map) in [("KEY", &f.keys), ("PREFIX", &f.prefixes)] {
            let rows: Vec<Vec<String>> = self
                .top_keys(map)
                .iter()
                .map(|(k, s)| {
                    vec![
                        s.calls.to_string(),
                        output::human_bytes(s.request_bytes),
                        output::human_bytes(s.reply_bytes),
                        quote(k, false),
                    ]
                })
                .collect();
            if rows.is_empty() {
                continue;
            }
            text.push('\n');
            text.push_str(&output::table(&["CALLS", "IN", "OUT", title], &rows, width));
            text.push('\n');
        }
        if f.keys_over > 0 {
            text.push_str(&format!(
                "({} commands on keys beyond the first {MAX_KEYS} distinct ones not counted)\n",
                f.keys_over
            ));
        }
        text
    }

    /// Log2 latency histograms of the three busiest commands.
    fn histograms(&self, f: &Figures) -> String {
        let mut v: Vec<_> = f
            .commands
            .iter()
            .filter(|(_, s)| s.latency.calls > 0)
            .collect();
        v.sort_by(|a, b| (b.1.calls, a.0).cmp(&(a.1.calls, b.0)));
        let mut text = String::new();
        for (name, s) in v.into_iter().take(3) {
            text.push_str(&format!("\n{name}\n"));
            text.push_str(&output::log2_histogram("usecs", &s.hist_log2_us));
        }
        text
    }

    fn rows(
        &self,
        out: &mut Output,
        scope: Scope,
        interval_ns: u64,
        f: &Figures,
    ) -> io::Result<()> {
        let ts_ns = output::unix_ns();
        let mut names: Vec<_> = f.commands.iter().collect();
        names.sort_by(|a, b| a.0.cmp(b.0));
        let round = |ns: f64| ns.round() as u64;
        for (name, s) in names {
            out.record(&Record::CommandStats(rec::CommandRow {
                scope,
                ts_ns,
                interval_ns,
                command: name,
                calls: s.calls,
                errors: s.errors,
                total_ns: s.latency.total_ns,
                mean_ns: round(s.latency.mean_ns()),
                p50_ns: round(s.latency.percentile_ns(50.0)),
                p99_ns: round(s.latency.percentile_ns(99.0)),
                max_ns: s.latency.max_ns,
                hist_log2_us: common::trim_hist(&s.hist_log2_us),
                request_bytes: s.request_bytes,
                reply_bytes: s.reply_bytes,
            }))?;
        }
        if self.style.keys {
            for (map, prefix) in [(&f.keys, false), (&f.prefixes, true)] {
                for (k, s) in self.top_keys(map) {
                    out.record(&Record::Key(rec::KeyRow {
                        scope,
                        ts_ns,
                        interval_ns,
                        key: &String::from_utf8_lossy(k),
                        prefix,
                        calls: s.calls,
                        request_bytes: s.request_bytes,
                        reply_bytes: s.reply_bytes,
                    }))?;
                }
            }
        }
        Ok(())
    }
}

pub fn totals_line(s: &DecodeStats, kernel: &[u64]) -> String {
    let lost = Lost::of(kernel);
    format!(
        "# {} commands ({} errors, {} transactions), {} pushes, on {} connections; lost: {}; \
         {} unmatched after gaps; {} bytes beyond the capture limit; {} \
         malformed values",
        s.commands,
        s.errors,
        s.transactions,
        s.pushes,
        s.connections,
        lost.text(),
        s.unmatched,
        s.truncated_bytes,
        s.malformed
    )
}

fn totals(s: &DecodeStats, kernel: &[u64], interval_ns: u64) -> rec::Totals {
    rec::Totals {
        ts_ns: output::unix_ns(),
        interval_ns,
        commands: s.commands,
        errors: s.errors,
        transactions: s.transactions,
        pushes: s.pushes,
        connections: s.connections,
        encrypted: s.encrypted,
        unmatched: s.unmatched,
        malformed: s.malformed,
        skipped_bytes: s.skipped_bytes,
        truncated_bytes: s.truncated_bytes,
        lost: Lost::of(kernel),
    }
}

impl pgbpf_capture::wire::Report<Event, DecodeStats> for Reporter {
    /// Handles one decoder event.
    fn event(&mut self, out: &mut Output, e: &Event) -> io::Result<()> {
        match e {
            Event::Command {
                who,
                start_unix_ns,
                end_unix_ns,
                done,
            } => {
                let ns = duration_ns(*start_unix_ns, *end_unix_ns, done);
                if self.style.summary {
                    self.count(done, ns);
                    return Ok(());
                }
                if out.json {
                    return out.record(&Record::Command(self.command_record(
                        who,
                        *start_unix_ns,
                        ns,
                        done,
                    )));
                }
                self.line(out, who, *start_unix_ns, ns, done)
            }
            Event::Transaction {
                who,
                start_unix_ns,
                end_unix_ns,
                tx,
            } => {
                if self.style.summary {
                    return Ok(());
                }
                let (status, error) = match &tx.outcome {
                    TxOutcome::Executed => ("executed", None),
                    TxOutcome::Aborted(code) => ("aborted", Some(code.as_str())),
                    TxOutcome::WatchFailed => ("watch_failed", None),
                    TxOutcome::Discarded => ("discarded", None),
                };
                let ns = end_unix_ns.saturating_sub(*start_unix_ns);
                if out.json {
                    return out.record(&Record::Transaction(rec::Transaction {
                        ts_ns: *start_unix_ns,
                        pid: who.pid,
                        conn_id: who.conn_id,
                        peer: &who.peer,
                        tls: who.tls,
                        transaction: tx.id,
                        duration_ns: ns,
                        commands: tx.commands,
                        status,
                        error,
                    }));
                }
                let text = format!(
                    "MULTI…{} #{}: {} commands {status}",
                    if tx.outcome == TxOutcome::Discarded {
                        "DISCARD"
                    } else {
                        "EXEC"
                    },
                    tx.id,
                    tx.commands
                );
                self.write_line(out, who, *start_unix_ns, Some(ns), status, None, &text)
            }
            // Counted in the totals; one line per pub/sub message would drown the commands.
            Event::Push { .. } => Ok(()),
            Event::Encrypted { who, reason } => {
                if out.json {
                    out.record(&Record::Encrypted(rec::Encrypted {
                        ts_ns: output::unix_ns(),
                        pid: who.pid,
                        conn_id: who.conn_id,
                        peer: &who.peer,
                        reason,
                    }))
                } else if self.style.summary {
                    Ok(())
                } else {
                    out.text(&format!(
                        "# PID {} {}: connection encrypted, payload not visible: {reason}\n",
                        who.pid, who.peer
                    ))
                }
            }
        }
    }

    /// The report of the interval that ended (with --summary, its tables), or of the whole
    /// trace (with --summary its tables and histograms; always the totals).
    fn report(
        &mut self,
        out: &mut Output,
        scope: Scope,
        stats: &DecodeStats,
        kernel: &[u64],
    ) -> io::Result<()> {
        if scope == Scope::Interval && !self.style.summary {
            return Ok(());
        }
        let (figures, period) = self.figures.end(scope);
        let interval_ns = common::ns(period);
        if out.json {
            if self.style.summary {
                self.rows(out, scope, interval_ns, &figures)?;
            }
            let t = totals(stats, kernel, interval_ns);
            return out.record(&match scope {
                Scope::Interval => Record::Interval(t),
                Scope::Total => Record::Summary(t),
            });
        }
        let mut text = String::new();
        if self.style.summary {
            text.push('\n');
            if scope == Scope::Interval {
                text.push_str(&format!("{}\n", output::hms_now()));
            }
            text.push_str(&self.table(out.width, &figures));
            text.push('\n');
            if self.style.keys {
                text.push_str(&self.key_table(out.width, &figures));
            }
            if scope == Scope::Total {
                text.push_str(&self.histograms(&figures));
            }
        }
        text.push_str(&totals_line(stats, kernel));
        text.push('\n');
        out.text(&text)
    }
}
