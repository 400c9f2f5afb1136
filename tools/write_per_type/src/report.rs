//! The tables per backend type and kind of file, for each interval and the whole run; or
//! NDJSON rows.

use std::io;

use pgbpf_common::{
    output::{self, Output},
    periods::{Periods, period_text},
    pg_probes::ProbeReport,
    records::{self, Scope},
};
use write_per_type_ebpf::{FdKey, FileKey, OpenEvent, counter};

use crate::{
    Args,
    files::{Files, Stats, Table},
    kind::Kind,
    records::{Io, Lost, Record, Totals, Write},
};

pub struct Reporter {
    top: usize,
    files: Option<Files>,
    periods: Periods<Table>,
    events: u64,
}

impl Reporter {
    pub fn new(args: &Args) -> Reporter {
        Reporter {
            top: args.top.max(1),
            files: None,
            periods: Periods::new(),
            events: 0,
        }
    }
}

impl From<&Stats> for Io {
    fn from(s: &Stats) -> Io {
        Io {
            writes: s.writes,
            bytes: s.bytes,
            fsyncs: s.syncs,
            fsync_ns: s.sync_ns,
            fsync_max_ns: s.sync_max_ns,
        }
    }
}

/// Rows sorted by bytes, then fsync time, most first.
fn sorted<K: Ord + Clone>(rows: impl Iterator<Item = (K, Stats)>) -> Vec<(K, Stats)> {
    let mut v: Vec<_> = rows.collect();
    v.sort_by(|a, b| {
        (b.1.bytes, b.1.sync_ns)
            .cmp(&(a.1.bytes, a.1.sync_ns))
            .then(a.0.cmp(&b.0))
    });
    v
}

fn cells(s: &Stats) -> Vec<String> {
    vec![
        s.writes.to_string(),
        output::human_bytes(s.bytes),
        s.syncs.to_string(),
        output::human_ns(s.sync_ns),
        output::human_ns(s.sync_ns / s.syncs.max(1)),
        output::human_ns(s.sync_max_ns),
    ]
}

impl ProbeReport for Reporter {
    type Event = OpenEvent;

    /// A file opened: its kind, for its writes.
    fn event(&mut self, _out: &mut Output, e: &OpenEvent) -> io::Result<()> {
        self.events += 1;
        if let Some(files) = self.files.as_mut() {
            let key = FileKey {
                fd: FdKey {
                    tgid: e.tgid,
                    fd: e.fd,
                },
                id: e.id,
            };
            files.opened(key, &output::c_str(&e.path));
        }
        Ok(())
    }

    fn processes(&mut self, pids: &[u32]) {
        if let Some(files) = self.files.as_mut() {
            files.seed(pids);
        }
    }

    fn take_maps(&mut self, loaded: &mut pgbpf_common::loader::Loaded) -> anyhow::Result<()> {
        self.files = Some(Files::take(loaded)?);
        Ok(())
    }

    fn report(&mut self, sink: &mut Output, scope: Scope, kernel: &[u64]) -> io::Result<()> {
        if let Some(files) = self.files.as_mut() {
            files.read_into(self.periods.each());
        }
        let (table, period) = self.periods.end(scope);
        let at = |i: u32| kernel.get(i as usize).copied().unwrap_or(0);
        let mut all = Stats::default();
        let mut not_file_bytes = 0;
        for ((_, kind), s) in &table {
            if *kind == Kind::NotFile {
                not_file_bytes += s.bytes;
            } else {
                all.add(s);
            }
        }
        let totals = Totals {
            ts_ns: output::unix_ns(),
            interval_ns: records::ns(period),
            io: Io::from(&all),
            not_file_bytes,
            events: self.events,
            lost: Lost {
                ringbuf_full: at(counter::RINGBUF_FULL),
                files_full: at(counter::FILES_FULL),
                pending_full: at(counter::PENDING_FULL),
                fds_full: at(counter::FDS_FULL),
            },
        };
        let rows = sorted(table.iter().map(|(k, s)| (k.clone(), *s)));
        if sink.json {
            for ((backend_type, kind), s) in &rows {
                sink.record(&Record::Write(Write {
                    scope,
                    ts_ns: totals.ts_ns,
                    interval_ns: totals.interval_ns,
                    backend_type,
                    kind: *kind,
                    io: Io::from(s),
                }))?;
            }
            return sink.record(&match scope {
                Scope::Interval => Record::Interval(totals),
                Scope::Total => Record::Summary(totals),
            });
        }
        let mut out = format!(
            "{}Written: {} in {} writes, {} fsyncs taking {} {}\n",
            sink.prefix(),
            output::human_bytes(all.bytes),
            all.writes,
            all.syncs,
            output::human_ns(all.sync_ns),
            period_text(scope, period)
        );
        let header = ["WRITES", "BYTES", "FSYNCS", "FSYNC TIME", "MEAN", "MAX"];
        out.push_str("\nBy backend type and kind of file:\n");
        let h = [&["BACKEND", "KIND"][..], &header].concat();
        output::top_table(&mut out, &h, &rows, self.top, sink.width, |((b, k), s)| {
            let mut c = vec![b.clone(), k.name().to_string()];
            c.extend(cells(s));
            c
        });
        let mut by_kind: std::collections::HashMap<Kind, Stats> = Default::default();
        for ((_, kind), s) in &table {
            by_kind.entry(*kind).or_default().add(s);
        }
        out.push_str("\nBy kind of file:\n");
        let kinds = sorted(by_kind.into_iter());
        let h = [&["KIND"][..], &header].concat();
        output::top_table(&mut out, &h, &kinds, self.top, sink.width, |(k, s)| {
            let mut c = vec![k.name().to_string()];
            c.extend(cells(s));
            c
        });
        out.push_str(&format!(
            "lost: {} opens (ring buffer full), {} writes (file table full), {} (syscalls at \
             once), {} opens not remembered\n\n",
            totals.lost.ringbuf_full,
            totals.lost.files_full,
            totals.lost.pending_full,
            totals.lost.fds_full
        ));
        sink.text(&out)
    }
}
