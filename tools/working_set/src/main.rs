//! working_set's binary: everything is in the library (src/lib.rs).
fn main() -> std::process::ExitCode {
    pgbpf_common::runtime::main::<working_set::Args>()
}
