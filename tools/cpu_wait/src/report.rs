//! The report of each interval and of the whole run: run-queue latency with its histogram,
//! per backend, statement, reason and cgroup; or NDJSON rows.

use std::{collections::HashMap, io, time::Duration};

use cpu_wait_ebpf::{RunEvent, STATE_PREEMPTED, counter};
use pgbpf_common::{
    cgroup::CgroupNames,
    latency::WaitTimes,
    output::{self, Output},
    periods::{Periods, period_text},
    pg_probes::{Lost, ProbeReport},
    postgres::BackendTypes,
    query_string::IdleLabels,
    records::{self, Scope},
    stacks::{StackWaits, Stacks},
};

use crate::{
    Args, reasons,
    records::{Backend, Cgroup, Reason, Record, Statement, Totals, Waits},
};

/// Waits for a CPU of one group of stretches off it.
#[derive(Clone, Debug, Default)]
struct Use {
    runq: WaitTimes,
    involuntary: u64,
    migrations: u64,
    off_cpu_ns: u64,
}

impl pgbpf_common::bounded::Fold for Use {
    fn fold(&mut self, other: &Self) {
        self.runq.merge(&other.runq);
        self.involuntary += other.involuntary;
        self.migrations += other.migrations;
        self.off_cpu_ns = self.off_cpu_ns.saturating_add(other.off_cpu_ns);
    }

    fn weight(&self) -> u64 {
        self.runq.total_ns.saturating_add(self.off_cpu_ns)
    }
}

impl Use {
    fn add(&mut self, e: &RunEvent) {
        self.runq.add(e.runq_ns);
        self.involuntary += u64::from(e.state == STATE_PREEMPTED);
        self.migrations += u64::from(e.migrations);
        self.off_cpu_ns = self
            .off_cpu_ns
            .saturating_add(e.sleep_ns.saturating_add(e.runq_ns));
    }

    fn waits(&self) -> Waits {
        Waits {
            runq_waits: self.runq.count,
            runq_ns: self.runq.total_ns,
            runq_max_ns: self.runq.max_ns,
            hist_log2_us: self.runq.log2_us.clone(),
            involuntary: self.involuntary,
            migrations: self.migrations,
            off_cpu_ns: self.off_cpu_ns,
        }
    }

    /// WAITS, RUNQ, MEAN, MAX, INVOLUNTARY, MIGRATIONS as table cells.
    fn cells(&self) -> Vec<String> {
        vec![
            self.runq.count.to_string(),
            output::human_ns(self.runq.total_ns),
            output::human_ns(self.runq.mean_ns()),
            output::human_ns(self.runq.max_ns),
            self.involuntary.to_string(),
            self.migrations.to_string(),
        ]
    }
}

const USE_HEADER: [&str; 6] = ["WAITS", "RUNQ", "MEAN", "MAX", "INVOL", "MIGR"];

/// Stretches off the CPU that began for one reason.
#[derive(Clone, Debug, Default)]
struct Why {
    times: u64,
    asleep_ns: u64,
    runq_ns: u64,
}

#[derive(Debug, Default)]
struct Period {
    all: Use,
    /// By pid: its backend type (read at its first event, while it lives) and waits.
    backends: HashMap<u32, (String, Use)>,
    statements: HashMap<String, Use>,
    reasons: HashMap<&'static str, Why>,
    cgroups: HashMap<u64, Use>,
    stacks: StackWaits,
}

pub struct Reporter {
    top: usize,
    periods: Periods<Period>,
    /// Events received from the kernel.
    events: u64,
    backends: BackendTypes,
    idle_labels: IdleLabels,
    cgroup_names: CgroupNames,
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
            cgroup_names: CgroupNames::new(),
            stacks: None,
        }
    }
}

/// Rows sorted by run-queue time, most first.
fn by_runq<K: Ord, V>(map: &HashMap<K, V>, runq: impl Fn(&V) -> u64) -> Vec<(&K, &V)> {
    let mut rows: Vec<_> = map.iter().collect();
    rows.sort_by(|a, b| runq(b.1).cmp(&runq(a.1)).then(a.0.cmp(b.0)));
    rows
}

impl ProbeReport for Reporter {
    type Event = RunEvent;
    const MIN_LEN: usize = cpu_wait_ebpf::HEAD_LEN;

    /// One stretch off the CPU.
    fn event(&mut self, _out: &mut Output, e: &RunEvent) -> io::Result<()> {
        self.events += 1;
        let query = self
            .idle_labels
            .statement(e.tgid, e.statement, &e.query, e.query_len);
        let why = reasons::reason(e);
        let types = &mut self.backends;
        let (user, kernel) = match self.stacks.as_mut() {
            Some(s) => (s.user(e.tgid, e.user_stack), s.kernel(e.kernel_stack)),
            None => (None, None),
        };
        let off_cpu_ns = e.sleep_ns.saturating_add(e.runq_ns);
        for p in self.periods.each() {
            p.stacks.add(why, user.clone(), kernel.clone(), off_cpu_ns);
            p.all.add(e);
            p.backends
                .entry(e.tgid)
                .or_insert_with(|| (types.of(e.tgid), Use::default()))
                .1
                .add(e);
            pgbpf_common::bounded::row(&mut p.statements, query.clone(), |k| {
                pgbpf_common::bounded::folded(k)
            })
            .add(e);
            p.cgroups.entry(e.cgroup_id).or_default().add(e);
            let w = p.reasons.entry(why).or_default();
            w.times += 1;
            w.asleep_ns = w.asleep_ns.saturating_add(e.sleep_ns);
            w.runq_ns = w.runq_ns.saturating_add(e.runq_ns);
        }
        Ok(())
    }

    fn take_stacks(&mut self, stacks: Stacks) {
        self.stacks = Some(stacks);
    }

    /// The tables of the interval that ended, or of the whole run.
    fn report(&mut self, sink: &mut Output, scope: Scope, kernel: &[u64]) -> io::Result<()> {
        let (p, period) = self.periods.end(scope);
        if sink.json {
            return self.json_report(sink, scope, period, &p, kernel);
        }
        let (top, width) = (self.top, sink.width);
        let mut out = String::new();
        let all = &p.all;
        out.push_str(&format!(
            "{}Run-queue waits: {}, {} in total (mean {}, max {}), {} involuntary switches, \
             {} migrations {}\n",
            sink.prefix(),
            all.runq.count,
            output::human_ns(all.runq.total_ns),
            output::human_ns(all.runq.mean_ns()),
            output::human_ns(all.runq.max_ns),
            all.involuntary,
            all.migrations,
            period_text(scope, period)
        ));
        if all.runq.count > 0 {
            out.push_str("\nRun-queue latency:\n");
            out.push_str(&output::log2_histogram("us", &all.runq.log2_us));
            out.push_str("\nBy backend:\n");
            let header = [&["PID", "BACKEND"][..], &USE_HEADER, &["OFF_CPU"]].concat();
            let rows = by_runq(&p.backends, |(_, u)| u.runq.total_ns);
            output::top_table(&mut out, &header, &rows, top, width, |(pid, (kind, u))| {
                let mut cells = vec![pid.to_string(), kind.clone()];
                cells.extend(u.cells());
                cells.push(output::human_ns(u.off_cpu_ns));
                cells
            });
            out.push_str("\nBy statement:\n");
            let header = [&USE_HEADER[..], &["QUERY"]].concat();
            let rows = by_runq(&p.statements, |u| u.runq.total_ns);
            output::top_table(&mut out, &header, &rows, top, width, |(query, u)| {
                let mut cells = u.cells();
                cells.push(output::one_line(query));
                cells
            });
            out.push_str("\nOff the CPU, by why:\n");
            let rows = by_runq(&p.reasons, |w| w.asleep_ns.saturating_add(w.runq_ns));
            let header = ["WHY", "TIMES", "ASLEEP", "RUNQ", "RUNQ_MEAN"];
            output::top_table(&mut out, &header, &rows, top, width, |(why, w)| {
                vec![
                    why.to_string(),
                    w.times.to_string(),
                    output::human_ns(w.asleep_ns),
                    output::human_ns(w.runq_ns),
                    output::human_ns(w.runq_ns / w.times.max(1)),
                ]
            });
            out.push_str("\nBy cgroup:\n");
            let header = [&["CGROUP"][..], &USE_HEADER].concat();
            let rows = by_runq(&p.cgroups, |u| u.runq.total_ns);
            let names = &mut self.cgroup_names;
            output::top_table(&mut out, &header, &rows, top, width, |(id, u)| {
                let mut cells = vec![names.name(**id)];
                cells.extend(u.cells());
                cells
            });
        }
        out.push_str(&format!(
            "{} waits not counted: their wakeup was not seen\n",
            unseen(kernel)
        ));
        p.stacks
            .text(&mut out, "Top stacks by time off the CPU", self.top);
        out.push_str(&Lost::from_counters(kernel, self.stacks.as_ref()).line());
        sink.text(&out)
    }
}

/// COUNTERS' WAKEUP_UNSEEN slot.
fn unseen(kernel: &[u64]) -> u64 {
    kernel
        .get(counter::WAKEUP_UNSEEN as usize)
        .copied()
        .unwrap_or(0)
}

impl Reporter {
    /// The report's rows as NDJSON records.
    fn json_report(
        &mut self,
        out: &mut Output,
        scope: Scope,
        period: Duration,
        p: &Period,
        kernel: &[u64],
    ) -> io::Result<()> {
        let ts_ns = output::unix_ns();
        let interval_ns = records::ns(period);
        for (&pid, (backend_type, u)) in &p.backends {
            out.record(&Record::Backend(Backend {
                scope,
                ts_ns,
                interval_ns,
                pid,
                backend_type,
                waits: u.waits(),
            }))?;
        }
        for (query, u) in &p.statements {
            out.record(&Record::Statement(Statement {
                scope,
                ts_ns,
                interval_ns,
                query,
                waits: u.waits(),
            }))?;
        }
        for (reason, w) in &p.reasons {
            out.record(&Record::Reason(Reason {
                scope,
                ts_ns,
                interval_ns,
                reason,
                times: w.times,
                asleep_ns: w.asleep_ns,
                runq_ns: w.runq_ns,
            }))?;
        }
        for (&cgroup_id, u) in &p.cgroups {
            let cgroup = self.cgroup_names.name(cgroup_id);
            out.record(&Record::Cgroup(Cgroup {
                scope,
                ts_ns,
                interval_ns,
                cgroup: &cgroup,
                cgroup_id,
                waits: u.waits(),
            }))?;
        }
        for row in p.stacks.rows(scope, ts_ns, interval_ns) {
            out.record(&Record::Stack(row))?;
        }
        let totals = Totals {
            ts_ns,
            interval_ns,
            waits: p.all.waits(),
            events: self.events,
            lost: Lost::from_counters(kernel, self.stacks.as_ref()),
            wakeup_unseen: unseen(kernel),
        };
        out.record(&match scope {
            Scope::Interval => Record::Interval(totals),
            Scope::Total => Record::Summary(totals),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preempted_stretch_is_involuntary_and_all_run_queue() {
        // SAFETY: RunEvent is plain data; all zeroes is a valid value.
        let mut e: RunEvent = unsafe { std::mem::zeroed() };
        e.runq_ns = 3_000;
        e.migrations = 2;
        let mut u = Use::default();
        u.add(&e);
        e.state = 1;
        e.sleep_ns = 1_000_000;
        e.migrations = 0;
        u.add(&e);
        assert_eq!((u.runq.count, u.runq.total_ns), (2, 6_000));
        assert_eq!((u.involuntary, u.migrations), (1, 2));
        assert_eq!(u.off_cpu_ns, 1_006_000);
    }
}
