fn main() -> anyhow::Result<()> {
    pgbpf_build::build_ebpf("llcache_per_query-ebpf")
}
