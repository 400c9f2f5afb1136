//! Live event lines (failures highlighted with the size asked and the space left), interval
//! and final summaries in postgres-bcc's sections (mmap / anon shm / shm), or NDJSON.

use std::{
    collections::BTreeMap,
    io::{self, IsTerminal as _},
};

use pgbpf_common::{
    output::{self, Output, human_bytes as hb},
    periods::Periods,
    records::{Scope, ns},
};
use shmem_ebpf::counter;

use crate::{
    event::Event,
    records::{self, Lost, ProcessBytes, Record, SegmentBytes, Totals},
};

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
    failures_only: bool,
    color: bool,
    /// Wall clock minus CLOCK_MONOTONIC, to print event times.
    wall_offset_ns: i64,
    header_done: bool,
    periods: Periods<Period>,
    /// Stacks the kernel could not store (`--stack`), since the tool attached.
    pub stacks_lost: u64,
}

impl Reporter {
    /// Whether only failed calls are printed (`--failures`).
    pub fn failures_only(&self) -> bool {
        self.failures_only
    }

    pub fn new(failures_only: bool) -> Reporter {
        Reporter {
            failures_only,
            color: std::io::stdout().is_terminal(),
            wall_offset_ns: output::wall_offset_ns(),
            header_done: false,
            periods: Periods::new(),
            stacks_lost: 0,
        }
    }

    fn unix_ns(&self, mono_ns: u64) -> u64 {
        output::wall_of(self.wall_offset_ns, mono_ns)
    }

    /// One event.
    pub fn event(&mut self, out: &mut Output, e: &Event) -> io::Result<()> {
        for p in self.periods.each() {
            p.add(e);
        }
        if self.failures_only && !e.failed() {
            return Ok(());
        }
        if out.json {
            return out.record(&Record::Event(self.event_record(e)));
        }
        let mut text = String::new();
        if !self.header_done {
            self.header_done = true;
            text.push_str(&format!(
                "{}{:<8} {:<16} {:<10} {:<26} {:>8} {:<14} QUERY\n",
                if out.timestamp { "TIME     " } else { "" },
                "PID",
                "BACKEND",
                "CALL",
                "SEGMENT",
                "SIZE",
                "RESULT"
            ));
        }
        let time = if out.timestamp {
            format!(
                "{} ",
                output::hms_of((self.unix_ns(e.ts_ns) / 1_000_000_000) as i64)
            )
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
        let line = output::cut_to_width(&line, out.width);
        if e.failed() {
            let (start, end) = if self.color {
                ("\x1b[1;31m", "\x1b[0m")
            } else {
                ("", "")
            };
            text.push_str(&format!("{start}{line}{end}\n"));
            text.push_str(&format!("{start}  ^ {}{end}\n", failure_text(e)));
        } else {
            text.push_str(&line);
            text.push('\n');
        }
        push_stack(&mut text, e);
        out.text(&text)
    }

    fn event_record<'e>(&self, e: &'e Event) -> records::Event<'e> {
        records::Event {
            ts_ns: self.unix_ns(e.ts_ns),
            pid: e.pid,
            tid: e.tid,
            ns_pid: e.ns_pid,
            backend_type: &e.backend,
            leader_pid: e.leader,
            call: e.call,
            segment: &e.segment,
            size_bytes: e.size,
            detail: &e.detail,
            result: e.result(),
            ret: e.ret,
            errno: e.errno(),
            failed: e.failed(),
            duration_ns: e.duration_ns,
            dev_shm_size_bytes: e.space.map(|s| s.0),
            dev_shm_free_bytes: e.space.map(|s| s.1),
            query: &e.query,
            user_stack: e
                .stack
                .as_ref()
                .map(|s| s.frames.iter().map(String::as_str).collect()),
        }
    }

    /// The summary of the interval that ended, or of the whole run.
    pub fn report(&mut self, sink: &mut Output, scope: Scope, lost: &[u64]) -> io::Result<()> {
        let (stats, period) = self.periods.end(scope);
        let p = &stats;
        let whole_run = scope == Scope::Total;
        let lost_at = |i: u32| lost.get(i as usize).copied().unwrap_or(0);
        if sink.json {
            fn per_pid(m: &BTreeMap<(u32, String), (u64, u64)>) -> Vec<ProcessBytes<'_>> {
                m.iter()
                    .map(|((pid, b), (bytes, calls))| ProcessBytes {
                        pid: *pid,
                        backend_type: b,
                        bytes: *bytes,
                        calls: *calls,
                    })
                    .collect()
            }
            let totals = Totals {
                ts_ns: output::unix_ns(),
                interval_ns: ns(period),
                events: p.events,
                mmap: per_pid(&p.mmap),
                anon_shm: per_pid(&p.anon_shm),
                shm: p
                    .shm
                    .iter()
                    .map(|(s, b)| SegmentBytes {
                        segment: s,
                        bytes: *b,
                    })
                    .collect(),
                failures: p.failures.iter().map(|e| self.event_record(e)).collect(),
                lost: Lost {
                    ringbuf_full: lost_at(counter::RINGBUF_FULL),
                    pending_full: lost_at(counter::PENDING_FULL),
                    fds_full: lost_at(counter::FDS_FULL),
                    stacks: self.stacks_lost,
                },
            };
            return sink.record(&if whole_run {
                Record::Summary(totals)
            } else {
                Record::Interval(totals)
            });
        }
        let mut out = format!(
            "\n{}{} ({} events)\n",
            sink.prefix(),
            if whole_run {
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
            push_stack(&mut out, e);
        }
        if self.stacks_lost > 0 {
            out.push_str(&format!(
                "stacks lost: {} (the kernel could not store them)\n",
                self.stacks_lost
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
        sink.text(&out)
    }
}

/// The call's stack under its line, innermost frame first (strace -k's layout).
fn push_stack(text: &mut String, e: &Event) {
    for frame in e.stack.iter().flat_map(|s| s.frames.iter()) {
        text.push_str(&format!("    > {frame}\n"));
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
