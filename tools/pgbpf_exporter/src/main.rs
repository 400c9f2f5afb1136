//! pgbpf_exporter's binary: everything is in the library (src/lib.rs).
use clap::Parser as _;

fn main() -> std::process::ExitCode {
    let args = pgbpf_exporter::Args::parse();
    let result = pgbpf_exporter::serve::run(&args);
    pgbpf_common::runtime::exit_code("pgbpf_exporter", result)
}
