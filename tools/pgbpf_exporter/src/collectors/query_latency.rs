//! Statement latency: query_latency's probes on every postgres binary the node runs (the
//! installed one, and each container's, found by a rescan), one histogram per normalized
//! statement and placement.
//!
//! USDT probes and uprobes belong to a binary file, not a process: one attachment covers
//! every server started from that file, now or later. A new file (a container image's
//! postgres) needs its own; a file no process runs any more is let go.

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use pgbpf_common::{loader::Loaded, postgres, procs, query, sql::Shown};
use query_latency_ebpf::counter;

use super::{Collector, ProgramStats, program_stats, tool_args};
use crate::{
    Args,
    families::Families,
    placement::{self, Placements},
    statements::{Key, StatementTable},
};

/// A file, whichever path and mount reach it: (inode, size, modification time in ns).
/// Not the device: the overlay mount of each container has a device number of its own
/// (in stat(2) and in /proc/PID/maps alike) while the inode number, size and times are the
/// file's underneath, the one uprobes attach to; attaching it twice would count every
/// statement twice.
type FileId = (u64, u64, i128);

/// How long a binary that could not be attached is left alone before it is tried again
/// (its server may have been starting, or exited during the attach).
const RETRY_REFUSED: Duration = Duration::from_secs(300);

struct Instance {
    id: FileId,
    binary: PathBuf,
    statements: query_latency::trace::Statements,
    /// The installed server's binary stays attached even while no server runs.
    pinned: bool,
}

pub struct Statements {
    instances: Vec<Instance>,
    /// Binaries that could not be attached (no probes), and when: not tried again at every
    /// rescan.
    refused: HashMap<FileId, Instant>,
    /// Lost events and program statistics of the binaries let go, so that the counters
    /// never go down.
    detached_lost: [u64; 2],
    detached_programs: ProgramStats,
    table: StatementTable,
    placements: Placements,
    /// `--redact`: labels without comments.
    shown: Shown,
    verbose: bool,
}

impl Statements {
    pub fn start(args: &Args) -> anyhow::Result<Statements> {
        let mut s = Statements {
            instances: vec![],
            refused: HashMap::new(),
            detached_lost: [0; 2],
            detached_programs: ProgramStats::new(),
            table: StatementTable::new(
                args.statements as usize,
                Duration::from_secs(u64::from(args.statement_idle) * 60),
            ),
            placements: Placements::default(),
            shown: Shown::redacted_if(args.redact),
            verbose: args.verbose,
        };
        // Binaries named with --postgres must be traceable: a mistake there is said at
        // once (the collector does not start). The installed server's is tried quietly.
        for binary in &args.postgres {
            let meta = std::fs::metadata(binary)
                .with_context(|| format!("--postgres {}", binary.display()))?;
            s.attach(file_id(&meta), binary.clone(), true)?;
        }
        let mut first_error = None;
        if args.postgres.is_empty()
            && let Ok(dir) = postgres::installed_bin_dir()
        {
            let binary = dir.join("postgres");
            if let Ok(meta) = std::fs::metadata(&binary)
                && let Err(e) = s.attach(file_id(&meta), binary, true)
            {
                first_error = Some(e);
            }
        }
        s.rescan()?;
        match first_error {
            // Nothing could be attached: the collector is unavailable, and says why.
            Some(e) if s.instances.is_empty() => Err(e),
            _ => Ok(s),
        }
    }

    fn attach(&mut self, id: FileId, binary: PathBuf, pinned: bool) -> anyhow::Result<()> {
        let path = binary.to_string_lossy().into_owned();
        let args: query_latency::Args = tool_args(&["query_latency", "--postgres", &path])?;
        match query_latency::trace::attach(&args) {
            Ok(statements) => {
                if self.verbose {
                    eprintln!(
                        "pgbpf_exporter: query_latency: attached to {path} ({})",
                        statements.mechanism
                    );
                }
                self.instances.push(Instance {
                    id,
                    binary,
                    statements,
                    pinned,
                });
                Ok(())
            }
            Err(e) => {
                eprintln!("pgbpf_exporter: query_latency: cannot trace {path}: {e:#}");
                self.refused.insert(id, Instant::now());
                Err(e)
            }
        }
    }

    fn attached(&self, id: FileId) -> bool {
        self.instances.iter().any(|i| i.id == id)
    }

    /// The postgres binary `pid` runs, as a file id and a path this process can open.
    fn postgres_binary(&self, pid: u32) -> Option<(FileId, PathBuf)> {
        if procs::comm_of(pid).as_deref() != Some("postgres") {
            return None;
        }
        let meta = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
        let (exe, _root) = postgres::binary_of_pid(pid).ok()?;
        if !postgres::is_postgres_binary(&exe) {
            return None;
        }
        Some((file_id(&meta), exe))
    }

    /// Lets a binary no process runs any more go, keeping its counters.
    fn detach(&mut self, i: Instance) {
        if self.verbose {
            eprintln!(
                "pgbpf_exporter: query_latency: no server runs {} any more: detached",
                i.binary.display()
            );
        }
        if let Ok(lost) = lost_of(&i.statements.loaded) {
            for (sum, n) in self.detached_lost.iter_mut().zip(lost) {
                *sum += n;
            }
        }
        for (name, (seconds, runs)) in program_stats(&[&i.statements.loaded]) {
            let p = self.detached_programs.entry(name).or_default();
            p.0 += seconds;
            p.1 += runs;
        }
    }
}

fn file_id(meta: &std::fs::Metadata) -> FileId {
    let mtime = i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec());
    (meta.ino(), meta.size(), mtime)
}

/// A query_latency object's lost events: ring buffer full, statement map full.
fn lost_of(loaded: &Loaded) -> anyhow::Result<[u64; 2]> {
    let c: [u64; counter::COUNT as usize] = loaded.counters()?;
    Ok([
        c[counter::RINGBUF_FULL as usize],
        c[counter::CONTEXT_FULL as usize],
    ])
}

impl Collector for Statements {
    fn name(&self) -> &'static str {
        "query_latency"
    }

    fn poll(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        let (table, placements, shown) = (&mut self.table, &mut self.placements, self.shown);
        for instance in &mut self.instances {
            query_latency::trace::drain(&mut instance.statements.ring, |ev| {
                let text = query::text_of(&ev.text, ev.text_len);
                let key = Key {
                    statement: shown.text(&text),
                    placement: placements.of_cgroup(ev.cgroup_id).clone(),
                };
                table.record(key, ev.duration_ns, now);
                Ok::<(), std::convert::Infallible>(())
            })
            .unwrap_or_else(|never| match never {});
        }
        Ok(())
    }

    fn rescan(&mut self) -> anyhow::Result<()> {
        let mut running = HashSet::new();
        for pid in procs::all_pids() {
            let Some((id, binary)) = self.postgres_binary(pid) else {
                continue;
            };
            running.insert(id);
            let refused_lately = self
                .refused
                .get(&id)
                .is_some_and(|t| t.elapsed() < RETRY_REFUSED);
            if !self.attached(id) && !refused_lately {
                // Refused binaries are remembered and logged by attach.
                let _ = self.attach(id, binary, false);
            }
        }
        let (keep, gone): (Vec<Instance>, Vec<Instance>) = std::mem::take(&mut self.instances)
            .into_iter()
            .partition(|i| i.pinned || running.contains(&i.id));
        self.instances = keep;
        for i in gone {
            self.detach(i);
        }
        self.table.maintain(Instant::now());
        Ok(())
    }

    fn families(&mut self, out: &mut Families) -> anyhow::Result<()> {
        let family = out.histogram(
            "pgbpf_statement_duration_seconds",
            "Time from a statement's start to its end in the server (USDT query__start/done, \
             execute for the extended protocol), per normalized statement.",
        );
        for (statement, placement, histogram) in self.table.each() {
            let mut labels = vec![("statement", statement.to_string())];
            labels.extend(placement::labels(placement));
            family.histogram(labels, histogram);
        }
        out.gauge(
            "pgbpf_statement_series",
            "Statements with latency series of their own (at most --statements).",
        )
        .set(vec![], self.table.len() as f64);
        out.counter(
            "pgbpf_statement_series_retired",
            "Statement series dropped: idle for --statement-idle minutes, or displaced by a busier statement.",
        )
        .set(vec![], self.table.retired as f64);
        let traced = out.gauge(
            "pgbpf_postgres_binaries_traced",
            "postgres binaries whose probes are attached (1 per binary file).",
        );
        for i in &self.instances {
            traced.set(
                vec![
                    ("binary", display(&i.binary)),
                    ("inode", i.id.0.to_string()),
                ],
                1.0,
            );
        }
        Ok(())
    }

    fn objects(&self) -> Vec<&Loaded> {
        self.instances
            .iter()
            .map(|i| &i.statements.loaded)
            .collect()
    }

    fn programs(&self) -> ProgramStats {
        let mut stats = program_stats(&self.objects());
        for (name, (seconds, runs)) in &self.detached_programs {
            let p = stats.entry(name.clone()).or_default();
            p.0 += seconds;
            p.1 += runs;
        }
        stats
    }

    fn lost(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        let mut lost = self.detached_lost;
        for i in &self.instances {
            for (sum, n) in lost.iter_mut().zip(lost_of(&i.statements.loaded)?) {
                *sum += n;
            }
        }
        Ok(vec![
            ("ring_buffer_full", lost[0]),
            ("statement_map_full", lost[1]),
        ])
    }
}

/// A binary's path as the host would name it (without the /proc/PID/root prefix).
fn display(binary: &Path) -> String {
    let s = binary.to_string_lossy();
    match s.strip_prefix("/proc/") {
        Some(rest) => match rest.split_once("/root") {
            Some((_, path)) => path.to_string(),
            None => s.into_owned(),
        },
        None => s.into_owned(),
    }
}
