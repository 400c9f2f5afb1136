//! io_timeouts' binary: everything is in the library (src/lib.rs).
fn main() -> std::process::ExitCode {
    pgbpf_common::runtime::main::<io_timeouts::Args>()
}
