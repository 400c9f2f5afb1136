fn main() -> anyhow::Result<()> {
    pgbpf_build::build_ebpf("wal_per_query-ebpf")
}
