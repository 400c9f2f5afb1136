fn main() -> anyhow::Result<()> {
    pgbpf_build::build_ebpf("shmem-ebpf")
}
