//! The working set and the relations' accesses, for each interval and the whole run; or
//! NDJSON rows.

use std::{
    collections::{HashMap, HashSet},
    io,
};

use pgbpf_common::{
    globals,
    output::{self, Output},
    periods::{ReportClock, period_text},
    pg_probes::ProbeReport,
    procs,
    records::{self, Scope},
};
use pgbpf_pgclient::names::RelationNames;
use working_set_ebpf::{RelFork, counter};

use crate::{
    Args,
    blocks::{BUCKETS, Figures, RelationFigures, Tables},
    records::{Bucket, Lost, Record, Relation, Totals},
};

/// PostgreSQL's default block size, used without --dsn to ask the server.
const DEFAULT_BLOCK_SIZE: u64 = 8192;

pub struct Reporter {
    top: usize,
    sample: u32,
    intervals: bool,
    tables: Option<Tables>,
    names: Option<RelationNames>,
    block_size: u64,
    /// shared_buffers in blocks (NBuffers) of each traced server, by its main process.
    servers: HashMap<u32, u64>,
    clock: ReportClock,
}

impl Reporter {
    pub fn new(args: &Args, mut names: Option<RelationNames>) -> Reporter {
        let block_size = names
            .as_mut()
            .and_then(|n| n.setting("block_size"))
            .and_then(|s| s.parse().ok())
            .unwrap_or(DEFAULT_BLOCK_SIZE);
        Reporter {
            top: args.top.max(1),
            sample: args.sample,
            intervals: args.out.interval().is_some(),
            tables: None,
            names,
            block_size,
            servers: HashMap::new(),
            clock: ReportClock::default(),
        }
    }

    /// "pgbench_accounts" with --dsn, else "tablespace/database/filenode".
    fn label(&mut self, r: &RelFork) -> (String, Option<String>) {
        let name = self.names.as_mut().and_then(|n| n.name(r.spc, r.db, r.rel));
        let label = name
            .clone()
            .unwrap_or_else(|| format!("{}/{}/{}", r.spc, r.db, r.rel));
        (label, name)
    }
}

/// PostgreSQL's names of the relation forks.
fn fork_name(fork: u32) -> &'static str {
    match fork {
        0 => "main",
        1 => "fsm",
        2 => "vm",
        3 => "init",
        _ => "other",
    }
}

/// Relations by accesses, most first.
fn by_accesses(f: &Figures) -> Vec<(RelFork, RelationFigures)> {
    let mut rows: Vec<_> = f.relations.iter().map(|(k, v)| (*k, *v)).collect();
    let total = |r: &RelationFigures| r.accesses.hits + r.accesses.reads;
    rows.sort_by(|a, b| total(&b.1).cmp(&total(&a.1)).then(a.0.cmp(&b.0)));
    rows
}

fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "-".to_string()
    } else {
        format!("{:.1}", part as f64 * 100.0 / whole as f64)
    }
}

impl ProbeReport for Reporter {
    /// Nothing is sent per access: the kernel sums them in its tables.
    type Event = u64;

    fn event(&mut self, _out: &mut Output, _e: &u64) -> io::Result<()> {
        Ok(())
    }

    fn take_maps(&mut self, loaded: &mut pgbpf_common::loader::Loaded) -> anyhow::Result<()> {
        self.tables = Some(Tables::take(loaded, self.intervals, self.sample)?);
        Ok(())
    }

    /// shared_buffers of each traced server, from its processes' NBuffers (a process whose
    /// parent is traced too shares its parent's).
    fn processes(&mut self, pids: &[u32]) {
        // Without a target the pids are the machine's: the servers are their postgres
        // processes whose parent is not one.
        let postgres: HashSet<u32> = pids
            .iter()
            .copied()
            .filter(|&p| procs::comm_of(p).as_deref() == Some("postgres"))
            .collect();
        for &pid in &postgres {
            if procs::parent_of(pid).is_some_and(|p| postgres.contains(&p)) {
                continue;
            }
            if let Ok(n) = globals::read_i32(pid, "NBuffers") {
                self.servers.insert(pid, u64::try_from(n).unwrap_or(0));
            }
        }
    }

    /// A restarted server's shared_buffers replace its previous one's (whose postmaster is
    /// gone), which a changed setting may have made different.
    fn server_ready(&mut self, pids: &[u32]) {
        // Gone, or its pid reused by another process.
        self.servers
            .retain(|&pid, _| procs::comm_of(pid).as_deref() == Some("postgres"));
        self.processes(pids);
    }

    fn report(&mut self, sink: &mut Output, scope: Scope, kernel: &[u64]) -> io::Result<()> {
        let period = match scope {
            Scope::Interval => self.clock.end_interval(),
            Scope::Total => self.clock.run(),
        };
        let Some(tables) = self.tables.as_mut() else {
            return Ok(());
        };
        let f = tables.figures(scope);
        let at = |i: u32| kernel.get(i as usize).copied().unwrap_or(0);
        let bs = self.block_size;
        let blocks = f.blocks();
        let (hits, reads) = f.relations.values().fold((0, 0), |(h, r), x| {
            (h + x.accesses.hits, r + x.accesses.reads)
        });
        let totals = Totals {
            ts_ns: output::unix_ns(),
            interval_ns: records::ns(period),
            blocks,
            bytes: blocks * bs,
            block_size: bs,
            shared_buffers_bytes: (!self.servers.is_empty())
                .then(|| self.servers.values().sum::<u64>() * bs),
            sample: self.sample,
            accesses: hits + reads,
            hits,
            reads,
            lost: Lost {
                blocks_full: at(counter::BLOCKS_FULL),
                relations_full: at(counter::RELATIONS_FULL),
            },
        };
        let relations = by_accesses(&f);
        if sink.json {
            let (ts_ns, interval_ns) = (totals.ts_ns, totals.interval_ns);
            for (i, b) in f.buckets.iter().enumerate() {
                sink.record(&Record::Bucket(Bucket {
                    scope,
                    ts_ns,
                    interval_ns,
                    min_accesses: BUCKETS[i].0,
                    max_accesses: BUCKETS[i].1,
                    blocks: b.blocks,
                    bytes: b.blocks * bs,
                    accesses: b.accesses,
                }))?;
            }
            for (r, x) in &relations {
                let (_, name) = self.label(r);
                sink.record(&Record::Relation(Relation {
                    scope,
                    ts_ns,
                    interval_ns,
                    tablespace: r.spc,
                    database: r.db,
                    filenode: r.rel,
                    name,
                    fork: fork_name(r.fork),
                    hits: x.accesses.hits,
                    reads: x.accesses.reads,
                    extends: x.accesses.extends,
                    local: x.accesses.local,
                    blocks: x.blocks,
                }))?;
            }
            return sink.record(&match scope {
                Scope::Interval => Record::Interval(totals),
                Scope::Total => Record::Summary(totals),
            });
        }
        let of_shared = match totals.shared_buffers_bytes {
            Some(sb) => format!(
                ", {} % of shared_buffers {}",
                percent(totals.bytes, sb),
                output::human_bytes(sb)
            ),
            None => String::new(),
        };
        let sampled = if self.sample > 1 {
            format!(
                " (sampled: one access in {}, counts multiplied)",
                self.sample
            )
        } else {
            String::new()
        };
        let mut out = format!(
            "{}Working set: {blocks} blocks ({}{of_shared}); {} accesses, {} % hits {}{sampled}\n",
            sink.prefix(),
            output::human_bytes(totals.bytes),
            hits + reads,
            percent(hits, hits + reads),
            period_text(scope, period)
        );
        out.push_str("\nBlocks by accesses:\n");
        let rows: Vec<Vec<String>> = BUCKETS
            .iter()
            .zip(&f.buckets)
            .map(|((min, max), b)| {
                vec![
                    match max {
                        Some(max) if max == min => min.to_string(),
                        Some(max) => format!("{min}-{max}"),
                        None => format!("{min}+"),
                    },
                    b.blocks.to_string(),
                    output::human_bytes(b.blocks * bs),
                    percent(b.blocks, blocks),
                    b.accesses.to_string(),
                ]
            })
            .collect();
        out.push_str(&output::table(
            &["TIMES", "BLOCKS", "SIZE", "% BLOCKS", "ACCESSES"],
            &rows,
            sink.width,
        ));
        out.push_str("\n\nBy relation:\n");
        let labelled: Vec<_> = relations
            .iter()
            .take(self.top)
            .map(|(r, x)| (self.label(r).0, fork_name(r.fork), *x))
            .collect();
        output::top_table(
            &mut out,
            &[
                "RELATION", "FORK", "ACCESSES", "HITS", "READS", "HIT %", "BLOCKS", "SIZE",
            ],
            &labelled,
            self.top,
            sink.width,
            |(label, fork, x)| {
                let a = x.accesses;
                vec![
                    label.clone(),
                    fork.to_string(),
                    (a.hits + a.reads).to_string(),
                    a.hits.to_string(),
                    a.reads.to_string(),
                    percent(a.hits, a.hits + a.reads),
                    x.blocks.to_string(),
                    output::human_bytes(x.blocks * bs),
                ]
            },
        );
        output::more_rows(&mut out, relations.len(), self.top);
        out.push_str(&format!(
            "not counted: {} accesses past --max-blocks (in their relation, not in the working \
             set), {} of relations past the relation table\n\n",
            totals.lost.blocks_full, totals.lost.relations_full
        ));
        sink.text(&out)
    }
}
