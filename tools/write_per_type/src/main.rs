//! write_per_type's binary: everything is in the library (src/lib.rs).
fn main() -> std::process::ExitCode {
    pgbpf_common::runtime::main::<write_per_type::Args>()
}
