//! net_per_query's binary: everything is in the library (src/lib.rs).
fn main() -> std::process::ExitCode {
    pgbpf_common::runtime::main::<net_per_query::Args>()
}
