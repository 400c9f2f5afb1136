fn main() -> anyhow::Result<()> {
    pgbpf_build::build_ebpf("net_per_query-ebpf")
}
