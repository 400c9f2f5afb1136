fn main() -> anyhow::Result<()> {
    pgbpf_build::build_ebpf("locks-ebpf")
}
