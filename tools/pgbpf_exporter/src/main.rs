//! pgbpf_exporter's binary: everything is in the library (src/lib.rs).

fn main() -> std::process::ExitCode {
    const NAME: &str = "pgbpf_exporter";
    // Usage errors as every tool has them: one line naming the option, exit 2.
    let argv = std::env::args_os().collect();
    let args = match pgbpf_common::runtime::parse_command_line::<pgbpf_exporter::Args>(NAME, argv) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let result = pgbpf_exporter::serve::run(&args);
    pgbpf_common::runtime::exit_code(NAME, result)
}
