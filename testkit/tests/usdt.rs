//! USDT against real binaries: the notes and argument specs of C programs built with sdt.h
//! (with and without semaphores) cross-checked with readelf; then attached for real: every
//! firing counted, arguments decoded, semaphores raised in running and later processes and
//! lowered again on detach.

// Helpers of a test binary: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
};

use aya::maps::Array;
use pgbpf_common::{
    loader::{self, Loaded},
    target::{Target, TargetArgs},
    usdt::{self, UsdtProbe},
};
use pgbpf_selftest_ebpf::{
    GUARDED_ARG0_SUM, GUARDED_FIRED, PLAIN_ARG0_SUM, PLAIN_FIRED, PROBE_GUARDED, PROBE_PLAIN,
};
use pgbpf_testkit::{exclusive, require_root, run};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/selftest"));

/// Builds the sdt.h fixture into `dir`.
fn fixture(dir: &Path, semaphores: bool) -> PathBuf {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/sdt_probes.c");
    let out = dir.join(if semaphores { "sdt_sem" } else { "sdt_plain" });
    let mut cc = Command::new("cc");
    cc.args(["-O2", "-o"]).arg(&out).arg(&src);
    if semaphores {
        cc.arg("-DWITH_SEMAPHORES");
    }
    run(&mut cc).expect("building the sdt.h fixture (needs gcc and systemtap-sdt-dev)");
    out
}

fn readelf_notes(bin: &Path) -> String {
    run(Command::new("readelf").arg("-n").arg(bin)).unwrap()
}

#[test]
fn notes_match_readelf_with_and_without_semaphores() {
    let dir = tempfile::tempdir().unwrap();
    for semaphores in [true, false] {
        let bin = fixture(dir.path(), semaphores);
        let probes = usdt::probes(&bin).unwrap();
        let notes = readelf_notes(&bin);
        assert_eq!(probes.len(), 2, "{probes:?}");
        for p in &probes {
            assert_eq!(p.provider, "pgbpftest");
            assert!(
                notes.contains(&format!("Location: 0x{:016x}", p.address)),
                "{p:?}\n{notes}"
            );
            assert_eq!(p.semaphore_offset.is_some(), semaphores);
        }
        let guarded = probes.iter().find(|p| p.name == "guarded").unwrap();
        assert_eq!(guarded.args.len(), 2);
        assert!(guarded.args[0].signed && guarded.args[0].size == 8);
        assert!(!guarded.args[1].signed && guarded.args[1].size == 8);
        if semaphores {
            // The semaphore's file offset equals its address here (the data segment of a small
            // PIE is mapped at its file offset plus a page-aligned constant); readelf agrees.
            let line = notes
                .lines()
                .find(|l| l.contains(&format!("Location: 0x{:016x}", guarded.address)))
                .unwrap();
            let sema = u64::from_str_radix(line.rsplit("0x").next().unwrap().trim(), 16).unwrap();
            assert_ne!(sema, 0);
        }
    }
}

/// A running fixture, paused at its two prompts.
struct Fixture {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Fixture {
    fn start(bin: &Path, count: u32) -> Fixture {
        let mut child = Command::new(bin)
            .arg(count.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        Fixture { child, out }
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.out.read_line(&mut l).unwrap();
        l.trim().to_string()
    }

    fn go(&mut self) -> String {
        self.child
            .stdin
            .as_mut()
            .unwrap()
            .write_all(b"go\n")
            .unwrap();
        self.line()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn attach(bin: &Path, pids: Vec<u32>) -> Loaded {
    let mut target = Target::resolve(
        &TargetArgs {
            pids,
            ..Default::default()
        },
        None,
    )
    .unwrap();
    let mut loaded = loader::load("selftest", OBJECT, false, |l| target.set_globals(l)).unwrap();
    target.fill_maps(&mut loaded.ebpf).unwrap();
    let probes = usdt::probes(bin).unwrap();
    let find = |name: &str| -> &UsdtProbe { probes.iter().find(|p| p.name == name).unwrap() };
    loaded
        .attach_usdt("usdt_probe", bin, find("guarded"), PROBE_GUARDED)
        .unwrap();
    loaded
        .attach_usdt("usdt_probe", bin, find("plain"), PROBE_PLAIN)
        .unwrap();
    loaded
}

fn counter(loaded: &Loaded, index: u32) -> u64 {
    let map: Array<_, u64> = Array::try_from(loaded.ebpf.map("COUNTS").unwrap()).unwrap();
    map.get(&index, 0).unwrap()
}

#[test]
fn semaphores_are_raised_counted_and_lowered() {
    require_root();
    let _lock = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let bin = fixture(dir.path(), true);
    let mut running = Fixture::start(&bin, 300);
    assert_eq!(running.line(), "semaphore 0");
    let loaded = attach(&bin, vec![running.child.id()]);
    // The kernel raised the semaphore in the process that was already running...
    assert_eq!(running.go(), "semaphore 1 fired 300");
    // ...and raises it in processes started after the attach.
    let mut later = Fixture::start(&bin, 5);
    assert_eq!(later.line(), "semaphore 1");

    let expected_sum: u64 = (0..300).sum();
    assert_eq!(counter(&loaded, GUARDED_FIRED), 300);
    assert_eq!(counter(&loaded, PLAIN_FIRED), 300);
    assert_eq!(counter(&loaded, GUARDED_ARG0_SUM), expected_sum);
    assert_eq!(counter(&loaded, PLAIN_ARG0_SUM), 2 * expected_sum);
    let labels: Array<_, [u8; 16]> = Array::try_from(loaded.ebpf.map("LABEL").unwrap()).unwrap();
    assert_eq!(&labels.get(&0, 0).unwrap()[..6], b"hello\0");

    // The pid filter: the later process fired too, but is not a target.
    assert_eq!(later.go(), "semaphore 1 fired 5");
    assert_eq!(counter(&loaded, GUARDED_FIRED), 300);

    drop(loaded);
    // Detaching is asynchronous in the kernel: wait for the semaphores to come down.
    let probes = usdt::probes(&bin).unwrap();
    let sema = probes
        .iter()
        .find(|p| p.name == "guarded")
        .unwrap()
        .semaphore_offset
        .unwrap();
    let suffix = bin.file_name().unwrap().to_str().unwrap().to_string();
    for f in [&running, &later] {
        assert_eq!(
            pgbpf_testkit::wait_semaphore(f.child.id(), &suffix, sema, 0).unwrap(),
            0
        );
    }
    assert_eq!(
        running.go(),
        "semaphore 0",
        "semaphore left raised after detach"
    );
    assert_eq!(later.go(), "semaphore 0");
}

#[test]
fn probes_without_semaphores_attach_too() {
    require_root();
    let _lock = exclusive();
    let dir = tempfile::tempdir().unwrap();
    let bin = fixture(dir.path(), false);
    let mut f = Fixture::start(&bin, 40);
    assert_eq!(f.line(), "semaphore 0");
    let loaded = attach(&bin, vec![f.child.id()]);
    assert_eq!(f.go(), "semaphore 0 fired 40");
    assert_eq!(counter(&loaded, GUARDED_FIRED), 40);
    assert_eq!(counter(&loaded, PLAIN_ARG0_SUM), 2 * (0..40).sum::<u64>());
}

#[test]
fn symbols_from_symtab_or_a_separate_debug_file() {
    use pgbpf_common::elf::Symbols;
    let dir = tempfile::tempdir().unwrap();
    let bin = fixture(dir.path(), true);
    // Not stripped: main is in .symtab (an executable exports nothing in .dynsym).
    let full = Symbols::open(&bin, Path::new("/")).unwrap();
    assert!(full.binary.has_symtab());
    let main = full.address("main").unwrap().expect("main in .symtab");
    // Stripped, with its debug file installed by build-id under a root (as in a container).
    let root = dir.path().join("root");
    let id: String = full
        .binary
        .build_id()
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let debug_dir = root.join("usr/lib/debug/.build-id").join(&id[..2]);
    std::fs::create_dir_all(&debug_dir).unwrap();
    let debug_file = debug_dir.join(format!("{}.debug", &id[2..]));
    run(Command::new("objcopy")
        .arg("--only-keep-debug")
        .arg(&bin)
        .arg(&debug_file))
    .unwrap();
    let stripped = dir.path().join("stripped");
    run(Command::new("strip").arg("-o").arg(&stripped).arg(&bin)).unwrap();
    let without = Symbols::open(&stripped, Path::new("/")).unwrap();
    assert_eq!(
        without.address("main").unwrap(),
        None,
        "strip left the symbol"
    );
    let e = without.require("main").unwrap_err().to_string();
    assert!(e.contains("no debug file installed"), "{e}");
    let with_debug = Symbols::open(&stripped, &root).unwrap();
    assert_eq!(
        with_debug.debug.as_ref().map(|d| d.path.clone()),
        Some(debug_file)
    );
    assert_eq!(with_debug.address("main").unwrap(), Some(main));
}
