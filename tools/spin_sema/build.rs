fn main() -> anyhow::Result<()> {
    pgbpf_build::build_ebpf("spin_sema-ebpf")
}
