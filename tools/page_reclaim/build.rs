fn main() -> anyhow::Result<()> {
    pgbpf_build::build_ebpf("page_reclaim-ebpf")
}
