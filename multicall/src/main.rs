//! `pgbpf`: every tool in one static binary, run by the name it is called by (busybox's way):
//! the debug image holds this binary and a link per tool (`/bin/shmem -> pgbpf`). The tools
//! share most of their code (aya, clap, the loader, the runtime), so one binary is a fraction
//! of their separate sizes: the image stays small as tools are added. Releases still install
//! one binary per tool.

use std::{path::Path, process::ExitCode};

use pgbpf_common::runtime::main as run;

/// A tool's whole run: parse its arguments, trace, report, exit.
type Main = fn() -> ExitCode;

/// The tools this binary is, by name.
const TOOLS: &[(&str, Main)] = &[
    ("cpu_wait", run::<cpu_wait::Args>),
    ("io_timeouts", run::<io_timeouts::Args>),
    ("llcache_per_query", run::<llcache_per_query::Args>),
    ("locks", run::<locks::Args>),
    ("lwlocks", run::<lwlocks::Args>),
    ("net_per_query", run::<net_per_query::Args>),
    ("page_reclaim", run::<page_reclaim::Args>),
    ("pg_replay", run::<pg_replay::Args>),
    ("pgwire_trace", run::<pgwire_trace::Args>),
    ("query_latency", run::<query_latency::Args>),
    ("redis_trace", run::<redis_trace::Args>),
    ("shmem", run::<shmem::Args>),
    ("spin_sema", run::<spin_sema::Args>),
    ("wal_per_query", run::<wal_per_query::Args>),
    ("working_set", run::<working_set::Args>),
    ("write_per_type", run::<write_per_type::Args>),
];

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let called = Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some((_, tool)) = TOOLS.iter().find(|(name, _)| *name == called) {
        return tool();
    }
    let names: Vec<&str> = TOOLS.iter().map(|(name, _)| *name).collect();
    let what = format!(
        "pgbpf: every pgbpf tool in one binary, run by the name it is called by (a link named \
         after the tool: ln -s pgbpf shmem). Tools: {}",
        names.join(", ")
    );
    // `pgbpf --help` or `--list` asks what this is; anything else is a usage error.
    if let Some("--help" | "-h" | "--list") = std::env::args().nth(1).as_deref() {
        println!("{what}");
        ExitCode::SUCCESS
    } else {
        eprintln!("{what}");
        ExitCode::from(2)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tool added under tools/ is one of this binary's too (the exporter has its own image).
    #[test]
    fn every_tool_is_here() {
        let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools");
        let mut dirs: Vec<String> = std::fs::read_dir(tools)
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("Cargo.toml").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name != "pgbpf_exporter")
            .collect();
        dirs.sort();
        let here: Vec<String> = TOOLS.iter().map(|(name, _)| name.to_string()).collect();
        assert_eq!(here, dirs);
    }
}
