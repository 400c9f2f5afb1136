//! Live event lines (failures highlighted with the size asked and the space left), interval
//! and final summaries in postgres-bcc's sections (mmap / anon shm / shm), or NDJSON.

use std::{collections::BTreeMap, io::IsTerminal as _};

use pgbpf_common::output::{self, human_bytes as hb};
use serde_json::{Value, json};
use shmem_ebpf::counter;

use crate::event::Event;

/// What one interval (or the whole run) saw.
#[derive(Default)]
struct Period {
    events: u64,
    /// MAP_SHARED mappings made, by process: (bytes, calls).
    mmap: BTreeMap<(u32, String), (u64, u64)>,
    /// SysV segments created (shmget), by process: (bytes, calls).
    anon_shm: BTreeMap<(u32, String), (u64, u64)>,
    /// POSIX segments: the largest size each was given (ftruncate/fallocate).
    shm: BTreeMap<String, u64>,
    failures: Vec<Event>,
}

impl Period {
    fn add(&mut self, e: &Event) {
        self.events += 1;
        if e.failed() {
            self.failures.push(e.clone());
            return;
        }
        let who = (e.pid, e.backend.clone());
        match e.call {
            "mmap" => {
                let s = self.mmap.entry(who).or_default();
                s.0 += e.size;
                s.1 += 1;
            }
            "shmget" => {
                let s = self.anon_shm.entry(who).or_default();
                s.0 += e.size;
                s.1 += 1;
            }
            "ftruncate" | "fallocate" => {
                let s = self.shm.entry(e.segment.clone()).or_default();
                *s = (*s).max(e.size);
            }
            _ => {}
        }
    }
}

pub struct Reporter {
    json: bool,
    timestamp: bool,
    failures_only: bool,
    color: bool,
    width: Option<usize>,
    /// Wall clock minus CLOCK_MONOTONIC, to print event times.
    wall_offset_ns: i64,
    header_done: bool,
    started: std::time::Instant,
    last_report: std::time::Instant,
    interval: Period,
    total: Period,
}

fn now_ns(clock: nix::time::ClockId) -> i64 {
    nix::time::clock_gettime(clock)
        .map(|t| t.tv_sec() * 1_000_000_000 + t.tv_nsec())
        .unwrap_or(0)
}

impl Reporter {
    pub fn new(json: bool, timestamp: bool, failures_only: bool) -> Reporter {
        Reporter {
            json,
            timestamp,
            failures_only,
            color: std::io::stdout().is_terminal(),
            width: output::terminal_width(),
            wall_offset_ns: now_ns(nix::time::ClockId::CLOCK_REALTIME)
                - now_ns(nix::time::ClockId::CLOCK_MONOTONIC),
            header_done: false,
            started: std::time::Instant::now(),
            last_report: std::time::Instant::now(),
            interval: Period::default(),
            total: Period::default(),
        }
    }

    fn unix_ms(&self, mono_ns: u64) -> i64 {
        (mono_ns as i64 + self.wall_offset_ns) / 1_000_000
    }

    /// One event. Returns false once stdout is gone.
    pub fn event(&mut self, e: &Event) -> bool {
        self.interval.add(e);
        self.total.add(e);
        if self.failures_only && !e.failed() {
            return true;
        }
        if self.json {
            return output::json_line(&self.event_json(e));
        }
        let mut out = String::new();
        if !self.header_done {
            self.header_done = true;
            out.push_str(&format!(
                "{}{:<8} {:<16} {:<10} {:<26} {:>8} {:<14} QUERY\n",
                if self.timestamp { "TIME     " } else { "" },
                "PID",
                "BACKEND",
                "CALL",
                "SEGMENT",
                "SIZE",
                "RESULT"
            ));
        }
        let time = if self.timestamp {
            format!("{} ", output::hms_of(self.unix_ms(e.ts_ns) / 1000))
        } else {
            String::new()
        };
        let size = if e.size > 0 || e.call == "ftruncate" {
            hb(e.size)
        } else {
            String::new()
        };
        let line = format!(
            "{time}{:<8} {:<16} {:<10} {:<26} {:>8} {:<14} {}",
            e.pid,
            e.backend,
            e.call,
            e.segment,
            size,
            e.result(),
            output::one_line(&e.query)
        );
        let line = output::cut_to_width(&line, self.width);
        if e.failed() {
            let (start, end) = if self.color {
                ("\x1b[1;31m", "\x1b[0m")
            } else {
                ("", "")
            };
            out.push_str(&format!("{start}{line}{end}\n"));
            out.push_str(&format!("{start}  ^ {}{end}\n", failure_text(e)));
        } else {
            out.push_str(&line);
            out.push('\n');
        }
        output::print(&out)
    }

    fn event_json(&self, e: &Event) -> Value {
        json!({
            "type": "event",
            "ts_ms": self.unix_ms(e.ts_ns),
            "pid": e.pid,
            "tid": e.tid,
            "ns_pid": e.ns_pid,
            "backend": e.backend,
            "leader_pid": e.leader,
            "call": e.call,
            "segment": e.segment,
            "size": e.size,
            "detail": e.detail,
            "result": e.result(),
            "ret": e.ret,
            "errno": e.errno(),
            "failed": e.failed(),
            "duration_ns": e.duration_ns,
            "dev_shm_size": e.space.map(|s| s.0),
            "dev_shm_free": e.space.map(|s| s.1),
            "query": e.query,
        })
    }

    /// The interval summary. Returns false once stdout is gone.
    pub fn interval(&mut self, lost: &[u64]) -> bool {
        let p = std::mem::take(&mut self.interval);
        let secs = self.last_report.elapsed().as_secs_f64();
        self.last_report = std::time::Instant::now();
        self.summary_of(&p, "interval", secs, lost)
    }

    /// The summary of the whole run.
    pub fn finish(&mut self, lost: &[u64]) -> bool {
        let p = std::mem::take(&mut self.total);
        self.summary_of(&p, "total", self.started.elapsed().as_secs_f64(), lost)
    }

    fn summary_of(&self, p: &Period, scope: &str, secs: f64, lost: &[u64]) -> bool {
        let lost_at = |i: u32| lost.get(i as usize).copied().unwrap_or(0);
        if self.json {
            let per_pid = |m: &BTreeMap<(u32, String), (u64, u64)>| -> Vec<Value> {
                m.iter()
                    .map(|((pid, b), (bytes, calls))| {
                        json!({"pid": pid, "backend": b, "bytes": bytes, "calls": calls})
                    })
                    .collect()
            };
            return output::json_line(&json!({
                "type": "summary",
                "scope": scope,
                "ts_ms": output::unix_ms(),
                "events": p.events,
                "duration_s": secs,
                "mmap": per_pid(&p.mmap),
                "anon_shm": per_pid(&p.anon_shm),
                "shm": p.shm.iter().map(|(s, b)| json!({"segment": s, "bytes": b})).collect::<Vec<_>>(),
                "failures": p.failures.iter().map(|e| self.event_json(e)).collect::<Vec<_>>(),
                "lost": {
                    "ringbuf_full": lost_at(counter::RINGBUF_FULL),
                    "pending_full": lost_at(counter::PENDING_FULL),
                    "fds_full": lost_at(counter::FDS_FULL),
                },
            }));
        }
        let mut out = format!(
            "\n{}{} ({} events)\n",
            if self.timestamp {
                format!("{} ", output::hms_now())
            } else {
                String::new()
            },
            if scope == "total" {
                "Summary of the whole trace"
            } else {
                "Interval"
            },
            p.events
        );
        let section = |out: &mut String, title: &str, m: &BTreeMap<(u32, String), (u64, u64)>| {
            out.push_str(title);
            out.push('\n');
            for ((pid, b), (bytes, calls)) in m {
                out.push_str(&format!("  [{pid} {b}]: {} ({calls} calls)\n", hb(*bytes)));
            }
        };
        section(&mut out, "mmap:", &p.mmap);
        section(&mut out, "anon shm:", &p.anon_shm);
        out.push_str("shm:\n");
        for (s, b) in &p.shm {
            out.push_str(&format!("  [{s}]: {}\n", hb(*b)));
        }
        out.push_str(&format!("failures: {}\n", p.failures.len()));
        for e in &p.failures {
            out.push_str(&format!(
                "  {} {} {} {} {}: {}\n",
                e.pid,
                e.backend,
                e.call,
                e.segment,
                e.result(),
                failure_text(e)
            ));
        }
        let lost_total: u64 = lost.iter().sum();
        if lost_total > 0 {
            out.push_str(&format!(
                "lost: {} events (ring buffer full), {} (in-flight table full), {} file names\n",
                lost_at(counter::RINGBUF_FULL),
                lost_at(counter::PENDING_FULL),
                lost_at(counter::FDS_FULL)
            ));
        }
        output::print(&out)
    }
}

/// "asked for 48M; /dev/shm 64M with 12M free when the call began".
fn failure_text(e: &Event) -> String {
    let mut s = format!("{} asked for {}", e.call, hb(e.size));
    match e.space {
        Some((total, free)) => s.push_str(&format!(
            "; its tmpfs had {} of {} free when the call began",
            hb(free),
            hb(total)
        )),
        None => s.push_str("; free space unknown (not a size-limited tmpfs)"),
    }
    if let Some(ns) = e.ns_pid
        && ns != e.pid
    {
        s.push_str(&format!("; PID {ns} in its container"));
    }
    s
}
