fn main() -> anyhow::Result<()> {
    pgbpf_build::build_ebpf("pgwire_trace-ebpf")
}
