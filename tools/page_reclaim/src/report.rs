//! Turns cumulative kernel counters into interval and final reports (tables or NDJSON).
//! Pure apart from stdout and the cgroup-name lookup, so the arithmetic is unit-tested.

use std::{collections::HashMap, io, time::Duration};

use page_reclaim_ebpf::{HIST_SLOTS, KIND_DIRECT, KIND_MEMCG, KINDS, ReclaimKey, counter};
use pgbpf_common::{
    cgroup::CgroupNames,
    output::{self, Output},
    periods::ReportClock,
    records::{self, Scope},
};

use crate::{
    Args,
    records::{CgroupRow, Lost, ProcessRow, Record, StallHistograms, Totals as TotalsRecord},
};

/// Reclaim by one process in one cgroup (summed over CPUs), cumulative since attach.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub pages: [u64; KINDS],
    pub episodes: [u64; KINDS],
    pub stall_ns: [u64; KINDS],
    /// Longest single stall since attach (a maximum cannot be split into intervals).
    pub max_stall_ns: u64,
    pub comm: String,
}

impl Totals {
    pub fn total_pages(&self) -> u64 {
        self.pages.iter().sum()
    }
    pub fn total_episodes(&self) -> u64 {
        self.episodes.iter().sum()
    }
    pub fn total_stall_ns(&self) -> u64 {
        self.stall_ns.iter().sum()
    }

    /// What happened between `earlier` and `self`.
    fn since(&self, earlier: Option<&Totals>) -> Totals {
        let Some(e) = earlier else {
            return self.clone();
        };
        let sub =
            |a: [u64; KINDS], b: [u64; KINDS]| std::array::from_fn(|k| a[k].saturating_sub(b[k]));
        Totals {
            pages: sub(self.pages, e.pages),
            episodes: sub(self.episodes, e.episodes),
            stall_ns: sub(self.stall_ns, e.stall_ns),
            max_stall_ns: self.max_stall_ns,
            comm: self.comm.clone(),
        }
    }

    fn add(&mut self, o: &Totals) {
        for k in 0..KINDS {
            self.pages[k] += o.pages[k];
            self.episodes[k] += o.episodes[k];
            self.stall_ns[k] += o.stall_ns[k];
        }
        self.max_stall_ns = self.max_stall_ns.max(o.max_stall_ns);
    }
}

/// Everything read from the kernel at one moment.
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub processes: HashMap<ReclaimKey, Totals>,
    pub hist: [[u64; HIST_SLOTS]; KINDS],
    pub counters: [u64; counter::COUNT as usize],
}

impl Snapshot {
    /// What the histograms and counters gained since `before` (the rows are diffed apart).
    fn subtract(&mut self, before: &Snapshot) {
        for (now, then) in self.hist.iter_mut().zip(&before.hist) {
            for (n, t) in now.iter_mut().zip(then) {
                *n = n.saturating_sub(*t);
            }
        }
        // Losses are reported since attach in every record, as in the text reports.
        let keep_since_attach = [
            counter::STATS_MAP_FULL,
            counter::STARTS_MAP_FULL,
            counter::END_WITHOUT_BEGIN,
        ];
        for (i, (n, t)) in self.counters.iter_mut().zip(&before.counters).enumerate() {
            if !keep_since_attach.contains(&(i as u32)) {
                *n = n.saturating_sub(*t);
            }
        }
    }
}

impl Default for Snapshot {
    fn default() -> Self {
        Snapshot {
            processes: HashMap::new(),
            hist: [[0; HIST_SLOTS]; KINDS],
            counters: [0; counter::COUNT as usize],
        }
    }
}

/// One table row: a process (pid > 0) or a cgroup (pid 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub pid: u32,
    pub cgroup_id: u64,
    pub totals: Totals,
}

/// Rows with reclaim in `now` but not in `before`, largest first.
pub fn process_rows(now: &Snapshot, before: Option<&Snapshot>) -> Vec<Row> {
    let mut rows: Vec<Row> = now
        .processes
        .iter()
        .map(|(k, t)| Row {
            pid: k.tgid,
            cgroup_id: k.cgroup_id,
            totals: t.since(before.and_then(|b| b.processes.get(k))),
        })
        .filter(|r| r.totals.total_episodes() > 0)
        .collect();
    sort_rows(&mut rows);
    rows
}

/// The same rows summed per cgroup.
pub fn cgroup_rows(rows: &[Row]) -> Vec<(Row, usize)> {
    let mut by: HashMap<u64, (Totals, usize)> = HashMap::new();
    for r in rows {
        let e = by.entry(r.cgroup_id).or_default();
        e.0.add(&r.totals);
        e.1 += 1;
    }
    let mut out: Vec<(Row, usize)> = by
        .into_iter()
        .map(|(cgroup_id, (totals, n))| {
            (
                Row {
                    pid: 0,
                    cgroup_id,
                    totals,
                },
                n,
            )
        })
        .collect();
    out.sort_by(|a, b| {
        b.0.totals
            .total_pages()
            .cmp(&a.0.totals.total_pages())
            .then(a.0.cgroup_id.cmp(&b.0.cgroup_id))
    });
    out
}

fn sort_rows(rows: &mut [Row]) {
    rows.sort_by(|a, b| {
        (b.totals.total_pages(), b.totals.total_stall_ns())
            .cmp(&(a.totals.total_pages(), a.totals.total_stall_ns()))
            .then(a.pid.cmp(&b.pid))
    });
}

/// Prints reports in the format the arguments ask for.
pub struct Reporter {
    top: usize,
    target: String,
    page_size: u64,
    names: CgroupNames,
    previous: Option<Snapshot>,
    clock: ReportClock,
}

impl Reporter {
    pub fn new(args: &Args, target: String, page_size: u64) -> Reporter {
        Reporter {
            top: args.top.max(1),
            target,
            page_size,
            names: CgroupNames::new(),
            previous: None,
            clock: ReportClock::default(),
        }
    }

    /// The report of the interval that ended (what happened since the previous report), or
    /// of the whole run; `snap` is what the kernel has counted since the tool attached.
    pub fn report(&mut self, out: &mut Output, scope: Scope, snap: &Snapshot) -> io::Result<()> {
        match scope {
            Scope::Interval => self.interval(out, snap),
            Scope::Total => self.finish(out, snap),
        }
    }

    fn interval(&mut self, out: &mut Output, snap: &Snapshot) -> io::Result<()> {
        let rows = process_rows(snap, self.previous.as_ref());
        let period = self.clock.end_interval();
        let result = if out.json {
            let mut since = snap.clone();
            if let Some(before) = &self.previous {
                since.subtract(before);
            }
            self.json_report(out, Scope::Interval, period, &rows, &since)
        } else {
            let head = format!(
                "{}reclaim in the last {:.0}s",
                out.prefix(),
                period.as_secs_f64()
            );
            let text = self.tables(out.width, &head, &rows);
            out.text(&text)
        };
        self.previous = Some(snap.clone());
        result
    }

    /// The totals since attach, the stall histograms and the lost-event counts.
    fn finish(&mut self, out: &mut Output, snap: &Snapshot) -> io::Result<()> {
        let rows = process_rows(snap, None);
        let elapsed = self.clock.run();
        if out.json {
            return self.json_report(out, Scope::Total, elapsed, &rows, snap);
        }
        let sum = sum_of(&rows);
        let c = &snap.counters;
        let head = format!(
            "{}total over {:.0}s: {} reclaimed in {} episodes, {} stalled",
            out.prefix(),
            elapsed.as_secs_f64(),
            output::human_bytes(sum.total_pages() * self.page_size),
            sum.total_episodes(),
            output::human_ns(sum.total_stall_ns())
        );
        let mut text = self.tables(out.width, &head, &rows);
        for (k, label) in [(KIND_MEMCG, "memory-cgroup"), (KIND_DIRECT, "direct")] {
            let h = output::log2_histogram("usecs", &snap.hist[k]);
            if !h.is_empty() {
                text.push_str(&format!("\n{label} reclaim stalls:\n{h}"));
            }
        }
        text.push_str(&format!(
            "\nkswapd woke {} times ({} wakeups by traced tasks)\n",
            c[counter::KSWAPD_WAKES as usize],
            c[counter::KSWAPD_WAKEUPS_BY_TARGET as usize]
        ));
        text.push_str(&format!(
            "lost: {} episodes (map full); {} episodes had begun before tracing and are not counted\n",
            c[counter::STATS_MAP_FULL as usize] + c[counter::STARTS_MAP_FULL as usize],
            c[counter::END_WITHOUT_BEGIN as usize]
        ));
        out.text(&text)
    }

    fn tables(&mut self, width: Option<usize>, head: &str, rows: &[Row]) -> String {
        if rows.is_empty() {
            return format!("{head}: no reclaim\n\n");
        }
        let ps = self.page_size;
        let body: Vec<Vec<String>> = rows
            .iter()
            .take(self.top)
            .map(|r| {
                let t = &r.totals;
                vec![
                    format!("[{}] {}", r.pid, t.comm),
                    self.names.name(r.cgroup_id),
                    output::human_bytes(t.total_pages() * ps),
                    t.episodes[KIND_MEMCG].to_string(),
                    t.episodes[KIND_DIRECT].to_string(),
                    output::human_ns(t.total_stall_ns()),
                    output::human_ns(t.max_stall_ns),
                ]
            })
            .collect();
        let mut out = format!("{head}\n");
        out.push_str(&output::table(
            &[
                "PROCESS",
                "CGROUP",
                "RECLAIMED",
                "MEMCG",
                "DIRECT",
                "STALLED",
                "MAX STALL",
            ],
            &body,
            width,
        ));
        if rows.len() > self.top {
            out.push_str(&format!("\n({} more processes)", rows.len() - self.top));
        }
        let groups: Vec<Vec<String>> = cgroup_rows(rows)
            .iter()
            .map(|(r, n)| {
                let t = &r.totals;
                vec![
                    self.names.name(r.cgroup_id),
                    n.to_string(),
                    output::human_bytes(t.total_pages() * ps),
                    t.total_episodes().to_string(),
                    output::human_ns(t.total_stall_ns()),
                ]
            })
            .collect();
        out.push_str("\n\n");
        out.push_str(&output::table(
            &["CGROUP", "PROCESSES", "RECLAIMED", "EPISODES", "STALLED"],
            &groups,
            width,
        ));
        out.push_str("\n\n");
        out
    }

    /// The rows of one report, then its `interval` or `summary` record. `snap` holds the
    /// histograms and counters of the report's period.
    fn json_report(
        &mut self,
        out: &mut Output,
        scope: Scope,
        period: Duration,
        rows: &[Row],
        snap: &Snapshot,
    ) -> io::Result<()> {
        let ts_ns = output::unix_ns();
        let interval_ns = records::ns(period);
        let ps = self.page_size;
        for r in rows {
            let t = &r.totals;
            let cgroup = self.names.name(r.cgroup_id);
            out.record(&Record::Process(ProcessRow {
                scope,
                ts_ns,
                interval_ns,
                pid: r.pid,
                comm: &t.comm,
                cgroup: &cgroup,
                cgroup_id: r.cgroup_id,
                reclaimed_bytes: t.total_pages() * ps,
                reclaimed_pages: t.total_pages(),
                episodes: t.total_episodes(),
                memcg_episodes: t.episodes[KIND_MEMCG],
                direct_episodes: t.episodes[KIND_DIRECT],
                stall_ns: t.total_stall_ns(),
                max_stall_ns: t.max_stall_ns,
            }))?;
        }
        for (r, n) in cgroup_rows(rows) {
            let t = &r.totals;
            let cgroup = self.names.name(r.cgroup_id);
            out.record(&Record::Cgroup(CgroupRow {
                scope,
                ts_ns,
                interval_ns,
                cgroup: &cgroup,
                cgroup_id: r.cgroup_id,
                processes: n as u64,
                reclaimed_bytes: t.total_pages() * ps,
                reclaimed_pages: t.total_pages(),
                episodes: t.total_episodes(),
                stall_ns: t.total_stall_ns(),
            }))?;
        }
        let sum = sum_of(rows);
        let c = &snap.counters;
        let totals = TotalsRecord {
            ts_ns,
            interval_ns,
            target: &self.target,
            reclaimed_bytes: sum.total_pages() * ps,
            reclaimed_pages: sum.total_pages(),
            episodes: sum.total_episodes(),
            memcg_episodes: sum.episodes[KIND_MEMCG],
            direct_episodes: sum.episodes[KIND_DIRECT],
            stall_ns: sum.total_stall_ns(),
            max_stall_ns: sum.max_stall_ns,
            stall_hist_log2_us: StallHistograms {
                memcg: records::trim_hist(&snap.hist[KIND_MEMCG]),
                direct: records::trim_hist(&snap.hist[KIND_DIRECT]),
            },
            kswapd_wakes: c[counter::KSWAPD_WAKES as usize],
            kswapd_wakeups_by_target: c[counter::KSWAPD_WAKEUPS_BY_TARGET as usize],
            lost: Lost {
                map_full: c[counter::STATS_MAP_FULL as usize]
                    + c[counter::STARTS_MAP_FULL as usize],
                began_before_attach: c[counter::END_WITHOUT_BEGIN as usize],
            },
        };
        out.record(&match scope {
            Scope::Interval => Record::Interval(totals),
            Scope::Total => Record::Summary(totals),
        })
    }
}

fn sum_of(rows: &[Row]) -> Totals {
    rows.iter().fold(Totals::default(), |mut acc, r| {
        acc.add(&r.totals);
        acc
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(tgid: u32, cgroup_id: u64) -> ReclaimKey {
        ReclaimKey {
            tgid,
            _pad: 0,
            cgroup_id,
        }
    }

    fn totals(pages: u64, episodes: u64, stall: u64) -> Totals {
        Totals {
            pages: [pages, 0],
            episodes: [episodes, 0],
            stall_ns: [stall, 0],
            max_stall_ns: stall,
            comm: "postgres".into(),
        }
    }

    #[test]
    fn intervals_are_differences_of_cumulative_counters() {
        let mut before = Snapshot::default();
        before.processes.insert(key(1, 10), totals(100, 2, 1_000));
        before.processes.insert(key(2, 10), totals(50, 1, 500));
        let mut now = before.clone();
        now.processes.insert(key(1, 10), totals(300, 5, 4_000));
        now.processes.insert(key(3, 20), totals(7, 1, 70));
        let rows = process_rows(&now, Some(&before));
        // pid 2 had nothing new; pid 1 reclaimed 200 pages in 3 episodes; pid 3 is new.
        assert_eq!(rows.iter().map(|r| r.pid).collect::<Vec<_>>(), vec![1, 3]);
        assert_eq!(rows[0].totals.pages, [200, 0]);
        assert_eq!(rows[0].totals.episodes, [3, 0]);
        assert_eq!(rows[0].totals.stall_ns, [3_000, 0]);
        // Without a previous snapshot everything since attach counts.
        assert_eq!(process_rows(&now, None).len(), 3);
    }

    #[test]
    fn cgroups_sum_their_processes() {
        let mut now = Snapshot::default();
        now.processes.insert(key(1, 10), totals(300, 5, 4_000));
        now.processes.insert(key(2, 10), totals(100, 1, 9_000));
        now.processes.insert(key(3, 20), totals(7, 1, 70));
        let groups = cgroup_rows(&process_rows(&now, None));
        assert_eq!(groups.len(), 2);
        assert_eq!(groups[0].0.cgroup_id, 10);
        assert_eq!(groups[0].1, 2);
        assert_eq!(groups[0].0.totals.pages, [400, 0]);
        assert_eq!(groups[0].0.totals.max_stall_ns, 9_000);
    }

    #[test]
    fn counters_going_backwards_never_underflow() {
        let mut before = Snapshot::default();
        before.processes.insert(key(1, 10), totals(300, 5, 4_000));
        let mut now = Snapshot::default();
        now.processes.insert(key(1, 10), totals(100, 6, 1_000));
        let rows = process_rows(&now, Some(&before));
        assert_eq!(rows[0].totals.pages, [0, 0]);
        assert_eq!(rows[0].totals.episodes, [1, 0]);
    }
}
