//! The waits table per (kind, site, backend type, statement) and the per-kind totals with
//! their log2 histograms, for each interval and the whole run; or NDJSON rows.

use std::{collections::HashMap, io, time::Duration};

use pgbpf_common::{
    latency::{WaitGroups, WaitTimes},
    output::{self, Output},
    periods::{Periods, period_text},
    pg_probes::{Lost, ProbeReport},
    postgres::BackendTypes,
    query_string::IdleLabels,
    records::{self, Scope},
    stacks::{StackWaits, Stacks},
};
use spin_sema_ebpf::{WaitEvent, kind};

use crate::{
    Args,
    records::{Kind, Record, Totals, Wait},
};

/// What a wait is counted under.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Key {
    kind: &'static str,
    site: String,
    backend: String,
    query: String,
}

/// Waits of one key, and the spinlocks' delays among them.
#[derive(Clone, Debug, Default)]
struct Waits {
    times: WaitTimes,
    delays: u64,
}

impl pgbpf_common::bounded::Fold for Waits {
    fn fold(&mut self, other: &Self) {
        self.times.merge(&other.times);
        self.delays += other.delays;
    }

    fn weight(&self) -> u64 {
        self.times.total_ns
    }
}

#[derive(Debug, Default)]
struct Period {
    waits: HashMap<Key, Waits>,
    kinds: HashMap<&'static str, WaitTimes>,
    stacks: StackWaits,
}

/// The kind's word in tables and records.
fn kind_name(k: u8) -> &'static str {
    match k {
        kind::SPIN => "spinlock",
        kind::SEMAPHORE => "semaphore",
        kind::FUTEX => "futex",
        _ => "unknown",
    }
}

/// A futex operation as futex(2) names it (include/uapi/linux/futex.h).
fn futex_op(op: u32) -> String {
    let name = match op & 0x7f {
        0 => "FUTEX_WAIT",
        6 => "FUTEX_LOCK_PI",
        9 => "FUTEX_WAIT_BITSET",
        11 => "FUTEX_WAIT_REQUEUE_PI",
        13 => "FUTEX_LOCK_PI2",
        other => return format!("FUTEX_OP_{other}"),
    };
    if op & 128 != 0 {
        format!("{name}_PRIVATE")
    } else {
        name.to_string()
    }
}

/// Where a wait happened: the spinlock's function and source location, the futex operation,
/// or the semaphore function.
fn site(e: &WaitEvent) -> String {
    match e.kind {
        kind::SPIN => {
            let file = output::c_str(&e.file);
            let file = file.rsplit('/').next().unwrap_or(&file).to_string();
            format!("{} {file}:{}", output::c_str(&e.func), e.line)
        }
        kind::FUTEX => futex_op(e.detail),
        _ => "PGSemaphoreLock".to_string(),
    }
}

pub struct Reporter {
    top: usize,
    periods: Periods<Period>,
    /// Waits received from the kernel.
    events: u64,
    backends: BackendTypes,
    idle_labels: IdleLabels,
    stacks: Option<Stacks>,
}

impl Reporter {
    pub fn new(args: &Args) -> Reporter {
        Reporter {
            top: args.top.max(1),
            periods: Periods::new(),
            events: 0,
            backends: BackendTypes::default(),
            idle_labels: IdleLabels::new(args.redact.shown()),
            stacks: None,
        }
    }
}

impl ProbeReport for Reporter {
    type Event = WaitEvent;
    const MIN_LEN: usize = spin_sema_ebpf::HEAD_LEN;

    /// One wait.
    fn event(&mut self, _out: &mut Output, e: &WaitEvent) -> io::Result<()> {
        self.events += 1;
        let key = Key {
            kind: kind_name(e.kind),
            site: site(e),
            backend: self.backends.of(e.tgid),
            query: self
                .idle_labels
                .statement(e.tgid, e.statement, &e.query, e.query_len),
        };
        let delays = if e.kind == kind::SPIN {
            u64::from(e.detail)
        } else {
            0
        };
        let stack = self
            .stacks
            .as_mut()
            .and_then(|s| s.user(e.tgid, e.user_stack));
        for p in self.periods.each() {
            p.stacks.add(key.kind, stack.clone(), None, e.duration_ns);
            let w = pgbpf_common::bounded::row(&mut p.waits, key.clone(), |k| Key {
                query: pgbpf_common::bounded::folded(&k.query),
                ..k.clone()
            });
            w.times.add(e.duration_ns);
            w.delays += delays;
            p.kinds.entry(key.kind).or_default().add(e.duration_ns);
        }
        Ok(())
    }

    fn take_stacks(&mut self, stacks: Stacks) {
        self.stacks = Some(stacks);
    }

    /// The tables of the interval that ended, or of the whole run.
    fn report(&mut self, sink: &mut Output, scope: Scope, lost: &[u64]) -> io::Result<()> {
        let (p, period) = self.periods.end(scope);
        if sink.json {
            let lost = Lost::from_counters(lost, self.stacks.as_ref());
            return json_report(sink, self.events, scope, period, &p, lost);
        }
        let mut out = String::new();
        let kinds = WaitGroups {
            head: "Waits",
            verb: "waited",
            column: "KIND",
            period: &period_text(scope, period),
        }
        .text(&mut out, sink, &p.kinds, self.top);
        if !kinds.is_empty() {
            let mut rows: Vec<_> = p.waits.iter().collect();
            rows.sort_by(|a, b| {
                b.1.times
                    .total_ns
                    .cmp(&a.1.times.total_ns)
                    .then(a.0.cmp(b.0))
            });
            out.push_str("\nBy site, backend type and statement:\n");
            let header = [
                "KIND", "SITE", "BACKEND", "WAITS", "TOTAL", "MAX", "DELAYS", "QUERY",
            ];
            output::top_table(&mut out, &header, &rows, self.top, sink.width, |(k, w)| {
                vec![
                    k.kind.to_string(),
                    k.site.clone(),
                    k.backend.clone(),
                    w.times.count.to_string(),
                    output::human_ns(w.times.total_ns),
                    output::human_ns(w.times.max_ns),
                    w.delays.to_string(),
                    output::one_line(&k.query),
                ]
            });
            for (name, w) in &kinds {
                out.push_str(&format!("\n{name} wait time:\n"));
                out.push_str(&output::log2_histogram("us", &w.log2_us));
            }
        }
        p.stacks.text(&mut out, "Top stacks by wait time", self.top);
        out.push_str(&Lost::from_counters(lost, self.stacks.as_ref()).line());
        sink.text(&out)
    }
}

/// The report's rows as NDJSON records.
fn json_report(
    out: &mut Output,
    events: u64,
    scope: Scope,
    period: Duration,
    p: &Period,
    lost: Lost,
) -> io::Result<()> {
    let ts_ns = output::unix_ns();
    let interval_ns = records::ns(period);
    for (k, w) in &p.waits {
        out.record(&Record::Wait(Wait {
            scope,
            ts_ns,
            interval_ns,
            kind: k.kind,
            site: &k.site,
            backend_type: &k.backend,
            query: &k.query,
            waits: w.times.count,
            total_ns: w.times.total_ns,
            max_ns: w.times.max_ns,
            delays: w.delays,
            hist_log2_us: w.times.log2_us.clone(),
        }))?;
    }
    for (kind, w) in &p.kinds {
        out.record(&Record::Kind(Kind {
            scope,
            ts_ns,
            interval_ns,
            kind,
            waits: w.count,
            total_ns: w.total_ns,
            max_ns: w.max_ns,
            hist_log2_us: w.log2_us.clone(),
        }))?;
    }
    for row in p.stacks.rows(scope, ts_ns, interval_ns) {
        out.record(&Record::Stack(row))?;
    }
    let totals = Totals {
        ts_ns,
        interval_ns,
        waits: p.kinds.values().map(|w| w.count).sum(),
        total_ns: p.kinds.values().map(|w| w.total_ns).sum(),
        events,
        lost,
    };
    out.record(&match scope {
        Scope::Interval => Record::Interval(totals),
        Scope::Total => Record::Summary(totals),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn futex_operations_are_named_as_futex_2_names_them() {
        assert_eq!(futex_op(0), "FUTEX_WAIT");
        assert_eq!(futex_op(128 | 9), "FUTEX_WAIT_BITSET_PRIVATE");
        assert_eq!(futex_op(256 | 9), "FUTEX_WAIT_BITSET");
        assert_eq!(futex_op(42), "FUTEX_OP_42");
    }

    #[test]
    fn a_spinlock_site_is_its_function_file_and_line() {
        // SAFETY: WaitEvent is plain data; all zeroes is a valid value.
        let mut e: WaitEvent = unsafe { std::mem::zeroed() };
        e.kind = kind::SPIN;
        e.line = 1234;
        e.file[..22].copy_from_slice(b"../src/backend/x/a.c\0\0");
        e.func[..5].copy_from_slice(b"Func\0");
        assert_eq!(site(&e), "Func a.c:1234");
        e.kind = kind::SEMAPHORE;
        assert_eq!(site(&e), "PGSemaphoreLock");
    }
}
