fn main() -> anyhow::Result<()> {
    pgbpf_build::build_ebpf("query_latency-ebpf")
}
