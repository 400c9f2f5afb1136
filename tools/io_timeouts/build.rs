fn main() -> anyhow::Result<()> {
    pgbpf_build::build_ebpf("io_timeouts-ebpf")
}
