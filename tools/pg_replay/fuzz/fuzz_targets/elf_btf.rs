//! Arbitrary bytes as a binary's ELF file (its USDT notes and their argument specs, symbols,
//! segments: what every USDT tool reads from the postgres binary) and as a kernel BTF file
//! (the member offsets read from /sys/kernel/btf/vmlinux). Both are read from a file, as the
//! tools do. Neither may panic, hang or allocate from a count in the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::env::temp_dir().join(format!("pgbpf-fuzz-elf-btf-{}", std::process::id()));
    std::fs::write(&path, data).expect("writing the input to a temporary file");
    if let Ok(probes) = pgbpf_common::usdt::probes(&path) {
        for p in probes {
            assert!(p.args.len() <= 12, "more arguments than a note can hold");
        }
    }
    if let Ok(types) = pgbpf_common::kernel_btf::KernelTypes::open_for(
        &path,
        &[("task_struct", "mm"), ("sk_buff", "len")],
    ) {
        let _ = types.offset("task_struct", "mm");
        let _ = types.offset("sk_buff", "len");
    }
});
