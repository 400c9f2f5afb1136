fn main() -> anyhow::Result<()> {
    pgbpf_build::build_ebpf("working_set-ebpf")
}
