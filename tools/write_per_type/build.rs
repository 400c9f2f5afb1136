fn main() -> anyhow::Result<()> {
    pgbpf_build::build_ebpf("write_per_type-ebpf")
}
