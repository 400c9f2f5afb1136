// The selftest object exercises the common loader in tests/loader.rs.
fn main() -> anyhow::Result<()> {
    pgbpf_build::build_ebpf("pgbpf-selftest-ebpf")
}
