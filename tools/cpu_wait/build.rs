fn main() -> anyhow::Result<()> {
    pgbpf_build::build_ebpf("cpu_wait-ebpf")
}
