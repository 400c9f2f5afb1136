//! Statement latency: query_latency's probes on every postgres binary the node runs (the
//! installed one, and each container's, found by a rescan), one histogram per normalized
//! statement and placement.
//!
//! USDT probes and uprobes belong to a binary file, not a process: one attachment covers
//! every server started from that file, now or later. A new file (a container image's
//! postgres) needs its own; a file no process runs any more is let go.

use std::{
    collections::HashSet,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use pgbpf_common::{loader::Loaded, postgres, procs, query, sql::normalize};
use query_latency_ebpf::counter;

use super::{Collector, tool_args};
use crate::{
    Args,
    families::Families,
    placement::{self, Placements},
    statements::{Key, StatementTable},
};

/// A file, whichever path reaches it: (device, inode).
type FileId = (u64, u64);

struct Instance {
    id: FileId,
    binary: PathBuf,
    statements: query_latency::trace::Statements,
    /// The installed server's binary stays attached even while no server runs.
    pinned: bool,
}

pub struct Statements {
    instances: Vec<Instance>,
    /// Binaries that could not be attached (no probes): not tried again at every rescan.
    refused: HashSet<FileId>,
    table: StatementTable,
    placements: Placements,
    verbose: bool,
}

impl Statements {
    pub fn start(args: &Args) -> anyhow::Result<Statements> {
        let mut s = Statements {
            instances: vec![],
            refused: HashSet::new(),
            table: StatementTable::new(
                args.statements as usize,
                Duration::from_secs(u64::from(args.statement_idle) * 60),
            ),
            placements: Placements::default(),
            verbose: args.verbose,
        };
        let mut first_error = None;
        if let Ok(dir) = postgres::installed_bin_dir() {
            let binary = dir.join("postgres");
            if let Ok(meta) = std::fs::metadata(&binary)
                && let Err(e) = s.attach((meta.dev(), meta.ino()), binary, true)
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
                self.refused.insert(id);
                Err(e)
            }
        }
    }

    fn attached(&self, id: FileId) -> bool {
        self.instances.iter().any(|i| i.id == id)
    }
}

/// The postgres binary `pid` runs, as a file id and a path this process can open.
fn postgres_binary(pid: u32) -> Option<(FileId, PathBuf)> {
    if procs::comm_of(pid).as_deref() != Some("postgres") {
        return None;
    }
    let meta = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    let (exe, _root) = postgres::binary_of_pid(pid).ok()?;
    postgres::is_postgres_binary(&exe).then_some(((meta.dev(), meta.ino()), exe))
}

impl Collector for Statements {
    fn name(&self) -> &'static str {
        "query_latency"
    }

    fn poll(&mut self) -> anyhow::Result<()> {
        let now = Instant::now();
        let (table, placements) = (&mut self.table, &mut self.placements);
        for instance in &mut self.instances {
            query_latency::trace::drain(&mut instance.statements.ring, |ev| {
                let text = query::text_of(&ev.text, ev.text_len);
                let key = Key {
                    statement: normalize(&text),
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
            let Some((id, binary)) = postgres_binary(pid) else {
                continue;
            };
            running.insert(id);
            if !self.attached(id) && !self.refused.contains(&id) {
                // Refused binaries are remembered and logged by attach.
                let _ = self.attach(id, binary, false);
            }
        }
        let verbose = self.verbose;
        self.instances.retain(|i| {
            let keep = i.pinned || running.contains(&i.id);
            if !keep && verbose {
                eprintln!(
                    "pgbpf_exporter: query_latency: no server runs {} any more: detached",
                    i.binary.display()
                );
            }
            keep
        });
        self.table.retire_idle(Instant::now());
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
            "Statement series dropped after --statement-idle minutes without a call.",
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
                    ("inode", i.id.1.to_string()),
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

    fn lost(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        let (mut full, mut context) = (0, 0);
        for i in &self.instances {
            let c: [u64; counter::COUNT as usize] = i.statements.loaded.counters()?;
            full += c[counter::RINGBUF_FULL as usize];
            context += c[counter::CONTEXT_FULL as usize];
        }
        Ok(vec![
            ("ring_buffer_full", full),
            ("statement_map_full", context),
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
