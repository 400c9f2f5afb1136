//! Throttling tables per (process, statement), the writeback table by device and reason,
//! block latency histograms per process; every pause as it happens with --each; or NDJSON.

use std::{collections::HashMap, io, time::Duration};

use io_timeouts_ebpf::{IoEvent, kind};
use pgbpf_common::{
    bounded::{self, Fold},
    output::{self, Output},
    periods::{Periods, period_text},
    query_string::IdleLabels,
    records::{self, Scope},
    system,
};

use crate::{
    Args,
    records::{Block, Dirty, Lost, Pause, PauseCause, Reclaim, Record, Totals, Writeback},
};

/// Milliseconds (the kernel's unit for dirty-page pauses) as the records' nanoseconds.
const NS_PER_MS: u64 = 1_000_000;
/// Microseconds (the kernel's unit for reclaim throttling) as nanoseconds.
const NS_PER_US: u64 = 1_000;

/// Symbolic names the kernel prints for numeric fields, read from the format files.
pub struct Names {
    /// WB_REASON_* by number (writeback_written's __print_symbolic).
    wb_reasons: Vec<(u32, String)>,
}

impl Names {
    /// From writeback_written's format file.
    pub fn from_format(writeback_written: &str) -> Names {
        Names {
            wb_reasons: print_symbolic(writeback_written, "REC->reason"),
        }
    }

    pub fn wb_reason(&self, n: u32) -> String {
        self.wb_reasons
            .iter()
            .find(|(v, _)| *v == n)
            .map_or_else(|| format!("reason {n}"), |(_, s)| s.clone())
    }
}

/// The `{ value, "name" }` pairs of `__print_symbolic(field, ...)` in a format's print fmt.
fn print_symbolic(format: &str, field: &str) -> Vec<(u32, String)> {
    let Some(start) = format.find(&format!("__print_symbolic({field},")) else {
        return vec![];
    };
    let rest = &format[start..];
    let end = rest.find(")").unwrap_or(rest.len());
    rest[..end]
        .split('{')
        .skip(1)
        .filter_map(|pair| {
            let (num, name) = pair.split_once(',')?;
            let name = name.split('"').nth(1)?;
            Some((num.trim().parse().ok()?, name.to_string()))
        })
        .collect()
}

/// vmscan_throttle_state bit names (include/linux/mmzone.h order).
fn throttle_reasons(bits: u32) -> String {
    const NAMES: [&str; 4] = ["writeback", "isolated", "noprogress", "congested"];
    let names: Vec<&str> = NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| bits & (1 << i) != 0)
        .map(|(_, n)| *n)
        .collect();
    if names.is_empty() {
        "none".into()
    } else {
        names.join("|")
    }
}

/// A process and what it was running.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Who {
    pid: u32,
    comm: String,
    query: String,
}

#[derive(Debug, Default, Clone)]
struct Pauses {
    count: u64,
    total_ms: u64,
    max_ms: u64,
    period_ms: u64,
    max_dirty: u64,
    last_limit: u64,
    bdi: String,
}

#[derive(Debug, Default, Clone)]
struct Waits {
    count: u64,
    total_us: u64,
    max_us: u64,
    reasons: u32,
}

#[derive(Debug, Default, Clone)]
struct Written {
    works: u64,
    pages: u64,
}

#[derive(Debug, Default, Clone)]
struct BlockIo {
    /// The process's name at its last request (it may exec).
    comm: String,
    requests: u64,
    bytes: u64,
    errors: u64,
    log2_us: Vec<u64>,
}

#[derive(Debug, Default)]
struct Period {
    dirty: HashMap<Who, Pauses>,
    reclaim: HashMap<Who, Waits>,
    writeback: HashMap<(String, String), Written>,
    block: HashMap<u32, BlockIo>,
}

/// Where a folded row goes (see `pgbpf_common::bounded`): its statement folded, its process
/// too (short connections make the rows many as much as statements do).
fn folded_who(who: &Who) -> Who {
    Who {
        pid: 0,
        comm: String::new(),
        query: bounded::folded(&who.query),
    }
}

impl Fold for Pauses {
    fn fold(&mut self, other: &Self) {
        self.count += other.count;
        self.total_ms += other.total_ms;
        self.max_ms = self.max_ms.max(other.max_ms);
        self.period_ms += other.period_ms;
        self.max_dirty = self.max_dirty.max(other.max_dirty);
        self.last_limit = other.last_limit;
        if self.bdi.is_empty() {
            self.bdi.clone_from(&other.bdi);
        }
    }

    fn weight(&self) -> u64 {
        self.total_ms
    }
}

impl Fold for Waits {
    fn fold(&mut self, other: &Self) {
        self.count += other.count;
        self.total_us += other.total_us;
        self.max_us = self.max_us.max(other.max_us);
        self.reasons |= other.reasons;
    }

    fn weight(&self) -> u64 {
        self.total_us
    }
}

impl Fold for BlockIo {
    fn fold(&mut self, other: &Self) {
        if self.comm.is_empty() {
            self.comm = OTHER_PROCESSES.into();
        }
        self.requests += other.requests;
        self.bytes += other.bytes;
        self.errors += other.errors;
        if self.log2_us.len() < other.log2_us.len() {
            self.log2_us.resize(other.log2_us.len(), 0);
        }
        for (mine, theirs) in self.log2_us.iter_mut().zip(&other.log2_us) {
            *mine += theirs;
        }
    }

    fn weight(&self) -> u64 {
        self.bytes
    }
}

/// The block table's row of the processes folded away (pid 0).
const OTHER_PROCESSES: &str = "[other processes]";

impl Period {
    fn add(&mut self, ev: &IoEvent, who: &Who, names: &Names) {
        match ev.kind {
            kind::DIRTY_PAUSE => {
                let p = bounded::row(&mut self.dirty, who.clone(), folded_who);
                p.count += 1;
                p.total_ms += ev.a;
                p.max_ms = p.max_ms.max(ev.a);
                p.period_ms += ev.b;
                p.max_dirty = p.max_dirty.max(ev.c);
                p.last_limit = ev.d;
                p.bdi = output::c_str(&ev.name);
            }
            kind::RECLAIM_THROTTLE => {
                let w = bounded::row(&mut self.reclaim, who.clone(), folded_who);
                w.count += 1;
                w.total_us += ev.a;
                w.max_us = w.max_us.max(ev.a);
                w.reasons |= ev.reason;
            }
            kind::WRITEBACK => {
                let key = (output::c_str(&ev.name), names.wb_reason(ev.reason));
                let w = self.writeback.entry(key).or_default();
                w.works += 1;
                w.pages += ev.a;
            }
            kind::BLOCK_IO => {
                let b = bounded::row(&mut self.block, who.pid, |_| 0);
                if who.pid != 0 || b.comm.is_empty() {
                    b.comm.clone_from(&who.comm);
                }
                b.requests += 1;
                b.bytes += ev.b;
                b.errors += u64::from(ev.d != 0);
                let slot = output::log2_slot(ev.a / 1000);
                if b.log2_us.len() <= slot {
                    b.log2_us.resize(slot + 1, 0);
                }
                b.log2_us[slot] += 1;
            }
            _ => {}
        }
    }
}

pub struct Reporter {
    each: bool,
    block: bool,
    top: usize,
    names: Names,
    page_bytes: u64,
    periods: Periods<Period>,
    /// Events received from the kernel (all kinds).
    events: u64,
    idle_labels: IdleLabels,
}

fn mib(pages: u64, page_bytes: u64) -> String {
    format!("{:.1}", (pages * page_bytes) as f64 / (1u64 << 20) as f64)
}

impl Reporter {
    pub fn new(args: &Args, names: Names) -> Reporter {
        Reporter {
            each: args.each,
            block: args.block,
            top: args.top.max(1),
            names,
            page_bytes: system::page_size(),
            periods: Periods::new(),
            events: 0,
            idle_labels: IdleLabels::new(args.redact.shown()),
        }
    }

    /// One event.
    pub fn event(&mut self, out: &mut Output, ev: &IoEvent) -> io::Result<()> {
        self.events += 1;
        let query = self
            .idle_labels
            .statement(ev.tgid, ev.statement, &ev.query, ev.query_len);
        let who = Who {
            pid: ev.tgid,
            comm: output::c_str(&ev.comm),
            query,
        };
        for p in self.periods.each() {
            p.add(ev, &who, &self.names);
        }
        if self.each && matches!(ev.kind, kind::DIRTY_PAUSE | kind::RECLAIM_THROTTLE) {
            return print_each(out, ev, &who);
        }
        Ok(())
    }

    /// The tables of the interval that ended, or of the whole run.
    pub fn report(&mut self, sink: &mut Output, scope: Scope, lost: u64) -> io::Result<()> {
        let (stats, period) = self.periods.end(scope);
        let p = &stats;
        if sink.json {
            return self.json_report(sink, scope, period, p, lost);
        }
        let when = period_text(scope, period);
        let width = sink.width;
        let mut out = String::new();
        let pauses: u64 = p.dirty.values().map(|d| d.count).sum();
        out.push_str(&format!(
            "{}Dirty-page throttling: {pauses} pauses {when}\n",
            sink.prefix()
        ));
        let mut dirty: Vec<_> = p.dirty.iter().collect();
        dirty.sort_by(|a, b| b.1.total_ms.cmp(&a.1.total_ms).then(a.0.cmp(b.0)));
        let header = [
            "PID",
            "COMM",
            "PAUSES",
            "TOTAL_MS",
            "MAX_MS",
            "PERIOD_MS",
            "DIRTY_MB",
            "LIMIT_MB",
            "BDI",
            "QUERY",
        ];
        output::top_table(&mut out, &header, &dirty, self.top, width, |(w, d)| {
            vec![
                w.pid.to_string(),
                w.comm.clone(),
                d.count.to_string(),
                d.total_ms.to_string(),
                d.max_ms.to_string(),
                format!("{:.0}", d.period_ms as f64 / d.count.max(1) as f64),
                mib(d.max_dirty, self.page_bytes),
                mib(d.last_limit, self.page_bytes),
                d.bdi.clone(),
                output::one_line(&w.query),
            ]
        });
        let waits: u64 = p.reclaim.values().map(|w| w.count).sum();
        out.push_str(&format!("Reclaim throttling: {waits} waits {when}\n"));
        let mut reclaim: Vec<_> = p.reclaim.iter().collect();
        reclaim.sort_by(|a, b| b.1.total_us.cmp(&a.1.total_us).then(a.0.cmp(b.0)));
        let header = [
            "PID", "COMM", "WAITS", "TOTAL_MS", "MAX_MS", "REASONS", "QUERY",
        ];
        output::top_table(&mut out, &header, &reclaim, self.top, width, |(who, w)| {
            vec![
                who.pid.to_string(),
                who.comm.clone(),
                w.count.to_string(),
                format!("{:.1}", w.total_us as f64 / 1000.0),
                format!("{:.1}", w.max_us as f64 / 1000.0),
                throttle_reasons(w.reasons),
                output::one_line(&who.query),
            ]
        });
        let pages: u64 = p.writeback.values().map(|w| w.pages).sum();
        out.push_str(&format!(
            "Writeback by the flusher threads (all processes): {pages} pages ({} MiB) {when}\n",
            mib(pages, self.page_bytes)
        ));
        let mut wb: Vec<_> = p.writeback.iter().collect();
        wb.sort_by(|a, b| b.1.pages.cmp(&a.1.pages).then(a.0.cmp(b.0)));
        if !wb.is_empty() {
            let rows: Vec<Vec<String>> = wb
                .iter()
                .map(|((bdi, reason), w)| {
                    vec![
                        bdi.clone(),
                        reason.clone(),
                        w.works.to_string(),
                        w.pages.to_string(),
                        mib(w.pages, self.page_bytes),
                    ]
                })
                .collect();
            out.push_str(&output::table(
                &["BDI", "REASON", "WORKS", "PAGES", "MB"],
                &rows,
                width,
            ));
            out.push('\n');
        }
        if self.block {
            let mut block: Vec<_> = p.block.iter().collect();
            block.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(b.0)));
            let requests: u64 = block.iter().map(|b| b.1.requests).sum();
            out.push_str(&format!("Block I/O: {requests} requests {when}\n"));
            for (pid, b) in block.iter().take(self.top) {
                out.push_str(&format!(
                    "PID {pid} {}: {} requests, {} MiB, {} errors\n",
                    b.comm,
                    b.requests,
                    mib(b.bytes, 1),
                    b.errors
                ));
                out.push_str(&output::log2_histogram("usecs", &b.log2_us));
            }
            output::more_rows(&mut out, block.len(), self.top);
        }
        out.push_str(&format!("lost: {lost} events (ring buffer full)\n\n"));
        sink.text(&out)
    }

    fn json_report(
        &self,
        out: &mut Output,
        scope: Scope,
        period: Duration,
        p: &Period,
        lost: u64,
    ) -> io::Result<()> {
        let ts_ns = output::unix_ns();
        let interval_ns = records::ns(period);
        for (w, d) in &p.dirty {
            out.record(&Record::Dirty(Dirty {
                scope,
                ts_ns,
                interval_ns,
                pid: w.pid,
                comm: &w.comm,
                query: &w.query,
                pauses: d.count,
                total_ns: d.total_ms * NS_PER_MS,
                max_ns: d.max_ms * NS_PER_MS,
                period_sum_ns: d.period_ms * NS_PER_MS,
                max_dirty_pages: d.max_dirty,
                limit_pages: d.last_limit,
                bdi: &d.bdi,
            }))?;
        }
        for (who, w) in &p.reclaim {
            out.record(&Record::Reclaim(Reclaim {
                scope,
                ts_ns,
                interval_ns,
                pid: who.pid,
                comm: &who.comm,
                query: &who.query,
                waits: w.count,
                total_ns: w.total_us * NS_PER_US,
                max_ns: w.max_us * NS_PER_US,
                reasons: throttle_reasons(w.reasons),
            }))?;
        }
        for ((bdi, reason), w) in &p.writeback {
            out.record(&Record::Writeback(Writeback {
                scope,
                ts_ns,
                interval_ns,
                bdi,
                reason,
                works: w.works,
                pages: w.pages,
            }))?;
        }
        for (pid, b) in &p.block {
            out.record(&Record::Block(Block {
                scope,
                ts_ns,
                interval_ns,
                pid: *pid,
                comm: &b.comm,
                requests: b.requests,
                bytes: b.bytes,
                errors: b.errors,
                hist_log2_us: b.log2_us.clone(),
            }))?;
        }
        let totals = Totals {
            ts_ns,
            interval_ns,
            pauses: p.dirty.values().map(|d| d.count).sum(),
            reclaim_waits: p.reclaim.values().map(|w| w.count).sum(),
            writeback_pages: p.writeback.values().map(|w| w.pages).sum(),
            events: self.events,
            lost: Lost { ringbuf_full: lost },
        };
        out.record(&match scope {
            Scope::Interval => Record::Interval(totals),
            Scope::Total => Record::Summary(totals),
        })
    }
}

/// `--each`: a pause or a wait as it happens.
fn print_each(out: &mut Output, ev: &IoEvent, who: &Who) -> io::Result<()> {
    let (cause, what, ns) = if ev.kind == kind::DIRTY_PAUSE {
        (PauseCause::DirtyPages, "dirty pause", ev.a * NS_PER_MS)
    } else {
        (PauseCause::Reclaim, "reclaim wait", ev.a * NS_PER_US)
    };
    if out.json {
        return out.record(&Record::Pause(Pause {
            ts_ns: output::unix_ns(),
            cause,
            pid: who.pid,
            tid: ev.tid,
            comm: &who.comm,
            duration_ns: ns,
            query: &who.query,
        }));
    }
    let line = format!(
        "{}{:<7} {:<15} {what:<12} {:>8.1} ms  {}",
        out.prefix(),
        who.pid,
        who.comm,
        ns as f64 / 1e6,
        output::one_line(&who.query)
    );
    let line = output::cut_to_width(&line, out.width);
    out.text(&format!("{line}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writeback_reasons_come_from_the_format() {
        let fmt = r#"print fmt: "bdi %s: reason=%s", REC->name, __print_symbolic(REC->reason, { 0, "background" }, { 1, "vmscan" }, { 3, "periodic" }), (unsigned long)REC->cgroup_ino"#;
        assert_eq!(
            print_symbolic(fmt, "REC->reason"),
            [
                (0, "background".to_string()),
                (1, "vmscan".into()),
                (3, "periodic".into())
            ]
        );
        assert!(print_symbolic("garbage", "REC->reason").is_empty());
        let names = Names {
            wb_reasons: print_symbolic(fmt, "REC->reason"),
        };
        assert_eq!(names.wb_reason(3), "periodic");
        assert_eq!(names.wb_reason(9), "reason 9");
    }

    #[test]
    fn tables_of_many_processes_and_statements_stay_bounded_and_lose_no_event() {
        let names = Names::from_format("");
        let mut period = Period::default();
        let events = 10 * bounded::MAX_ROWS as u32;
        for i in 0..events {
            let who = Who {
                pid: 1000 + i,
                comm: "postgres".into(),
                query: format!("select {i}"),
            };
            for kind in [kind::DIRTY_PAUSE, kind::RECLAIM_THROTTLE, kind::BLOCK_IO] {
                // SAFETY: plain data (aya::Pod), all zeroes a valid value.
                let mut ev: IoEvent = unsafe { std::mem::zeroed() };
                (ev.kind, ev.a, ev.b) = (kind, 5, 4096);
                period.add(&ev, &who, &names);
            }
        }
        for len in [period.dirty.len(), period.reclaim.len(), period.block.len()] {
            assert!(len <= bounded::MAX_ROWS, "{len} rows");
        }
        let pauses: u64 = period.dirty.values().map(|p| p.count).sum();
        let waits: u64 = period.reclaim.values().map(|w| w.count).sum();
        let requests: u64 = period.block.values().map(|b| b.requests).sum();
        let bytes: u64 = period.block.values().map(|b| b.bytes).sum();
        assert_eq!(
            (pauses, waits, requests),
            (events.into(), events.into(), events.into())
        );
        assert_eq!(bytes, u64::from(events) * 4096);
        assert_eq!(period.block[&0].comm, OTHER_PROCESSES);
        let other = period
            .dirty
            .keys()
            .find(|w| w.pid == 0)
            .expect("a folded row");
        assert_eq!(other.query, bounded::OTHER_STATEMENTS);
    }

    #[test]
    fn throttle_reason_bits() {
        assert_eq!(throttle_reasons(0), "none");
        assert_eq!(throttle_reasons(0b101), "writeback|noprogress");
    }
}
