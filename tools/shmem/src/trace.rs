//! Resolves the target, prints the snapshot, loads and attaches the kernel programs (syscall
//! tracepoints, uprobes on PostgreSQL's dsm_create / PGSharedMemoryCreate), and drains the
//! ring buffer's events into the report.

use std::{os::unix::fs::MetadataExt as _, path::Path, time::Duration};

use aya::maps::{MapData, RingBuf};
use pgbpf_common::{
    elf::Symbols,
    kernel_btf::KernelTypes,
    loader::{self, Loaded, UprobeSite},
    output::Output,
    postgres, procs,
    query_string::QueryAddrs,
    records::Scope,
    runtime::{Attached, Trace},
    sql::Shown,
    stacks::{self, Stacks},
    system,
    target::Target,
};
use shmem_ebpf::{ShmEvent, counter};

use crate::{Args, event, report::Reporter, snapshot};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/shmem"));

/// Syscalls traced at entry and exit: (enter program, exit program, syscall).
const SYSCALLS: &[(&str, &str, &str)] = &[
    ("enter_openat", "exit_openat", "openat"),
    ("enter_memfd_create", "exit_memfd_create", "memfd_create"),
    ("enter_ftruncate", "exit_ftruncate", "ftruncate"),
    ("enter_fallocate", "exit_fallocate", "fallocate"),
    ("enter_unlink", "exit_unlink", "unlink"),
    ("enter_unlinkat", "exit_unlink", "unlinkat"),
    ("enter_mmap", "exit_mmap", "mmap"),
    ("enter_shmget", "exit_shmget", "shmget"),
    ("enter_shmat", "exit_shmat", "shmat"),
    ("enter_shmdt", "exit_shmdt", "shmdt"),
    ("enter_shmctl", "exit_shmctl", "shmctl"),
];

/// PostgreSQL functions with uprobes: (program, symbol).
const FUNCTIONS: &[(&str, &str)] = &[
    ("dsm_create", "dsm_create"),
    ("pg_shmem_create", "PGSharedMemoryCreate"),
];

/// The kernel layout and namespace facts the programs need, kept alive for the loader.
#[derive(Default)]
struct Globals {
    have_offsets: u32,
    offsets: [u32; 11],
    page_bytes: u64,
    pidns_dev: u64,
    pidns_ino: u64,
    fork_child_offset: u32,
    stacks_of_failures: u32,
}

const OFFSET_NAMES: [&str; 11] = [
    "OFF_TASK_FILES",
    "OFF_FILES_FDT",
    "OFF_FDT_FD",
    "OFF_FILE_INODE",
    "OFF_INODE_SB",
    "OFF_SB_MAGIC",
    "OFF_SB_FS_INFO",
    "OFF_SBI_MAX_BLOCKS",
    "OFF_SBI_USED_BLOCKS",
    "OFF_TASK_MM",
    "OFF_MM_ARG_START",
];

/// The kernel struct members the programs follow, in the order of [`OFFSET_NAMES`].
const KERNEL_MEMBERS: [(&str, &str); 11] = [
    ("task_struct", "files"),
    ("files_struct", "fdt"),
    ("fdtable", "fd"),
    ("file", "f_inode"),
    ("inode", "i_sb"),
    ("super_block", "s_magic"),
    ("super_block", "s_fs_info"),
    ("shmem_sb_info", "max_blocks"),
    ("shmem_sb_info", "used_blocks.count"),
    ("task_struct", "mm"),
    ("mm_struct", "arg_start"),
];

fn kernel_offsets() -> anyhow::Result<[u32; 11]> {
    let k = KernelTypes::running(&KERNEL_MEMBERS)?;
    let mut offsets = [0; 11];
    for (slot, (s, member)) in offsets.iter_mut().zip(KERNEL_MEMBERS) {
        *slot = k.offset(s, member)?;
    }
    Ok(offsets)
}

/// Processes the snapshot covers: the target's, or every postgres process without a target.
fn snapshot_pids(target: &Target) -> Vec<u32> {
    if !target.tgids.is_empty() {
        return target.tgids.clone();
    }
    if let Some(cg) = &target.cgroup {
        return postgres::procs_below(&cg.dir);
    }
    procs::all_pids()
        .into_iter()
        .filter(|&p| snapshot::is_postgres(p))
        .collect()
}

/// The pid namespace the user thinks in: the first target process's.
fn pid_namespace(pids: &[u32]) -> Option<(u64, u64)> {
    let md = std::fs::metadata(format!("/proc/{}/ns/pid", pids.first()?)).ok()?;
    Some((md.dev(), md.ino()))
}

/// Prints the snapshot; unless `--snapshot`, loads and attaches.
pub fn start<'a>(args: &'a Args, out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    // This kernel's struct layout is read from its BTF on another thread meanwhile (the
    // names' strings found, then one pass over the types: 2-3 ms).
    let offsets = (!args.snapshot).then(|| std::thread::spawn(kernel_offsets));
    let mut target = Target::resolve(&args.target, None)?;
    let roots = target.roots();
    let not_postgres: Vec<u32> = roots
        .iter()
        .copied()
        .filter(|&p| postgres::postgres_binary_of_pid(p).is_err())
        .collect();
    for &p in &not_postgres {
        eprintln!(
            "shmem: note: PID {p} is not a PostgreSQL process: showing its shared memory \
             without PostgreSQL's meaning (no backend types, statements or DSM)"
        );
    }
    if !target.tgids.is_empty() {
        target.follow_descendants()?;
    }
    let pids = snapshot_pids(&target);
    // Read on another thread while the programs load and verify (the verifier leaves a core
    // idle while the first uprobe on the postgres binary waits for its breakpoints); shown
    // before the tracepoints are attached and the first event can arrive, and also when
    // loading fails.
    let snapshot = std::thread::spawn({
        let pids = pids.clone();
        move || snapshot::take(&pids)
    });
    let show_snapshot = |out: &mut Output| -> anyhow::Result<()> {
        let snap = snapshot
            .join()
            .map_err(|_| anyhow::anyhow!("reading the shared-memory snapshot failed"))?;
        show(out, &snap)
    };
    if args.snapshot {
        show_snapshot(out)?;
        return Ok(None);
    }
    let with_functions = !(not_postgres.len() == roots.len() && !roots.is_empty());
    let loading = load(args, &mut target, with_functions, &pids, offsets);
    show_snapshot(out)?;
    let programs = loading?.attach(&target, &pids)?;
    Ok(Some(Attached {
        what: format!("Tracing shared memory of {}", target.describe()),
        details: vec![
            format!("{} syscalls", SYSCALLS.len() + 1),
            format!("{} PostgreSQL functions", programs.functions),
        ],
        started: programs.loaded.started,
        watch: target.watched(),
        trace: Box::new(ShmTrace {
            programs,
            reporter: Reporter::new(args.failures),
            shown: args.redact.shown(),
        }),
    }))
}

/// Prints a snapshot now (flushed: a Ctrl-C from now on keeps it).
fn show(out: &mut Output, snap: &snapshot::Snapshot) -> anyhow::Result<()> {
    if out.json {
        snap.write_json(out)?;
    } else {
        out.text(&snap.render(out.width))?;
    }
    out.flush()?;
    Ok(())
}

/// shmem's kernel programs, attached: every call of the target's processes is a record of
/// `ring`.
pub struct Programs {
    pub loaded: Loaded,
    pub ring: RingBuf<MapData>,
    /// Where each process keeps its statement (located as processes are met).
    pub query_addrs: QueryAddrs,
    /// PostgreSQL functions probed (dsm_create, PGSharedMemoryCreate).
    pub functions: usize,
    /// The callers' stacks (`--stack`).
    pub stacks: Option<Stacks>,
}

/// Loads and attaches the syscall programs for `target` (no snapshot, no function probes):
/// pgbpf_exporter's shared-memory collector, which counts the calls of every postgres
/// process on the node.
pub fn attach(args: &Args, target: &mut Target) -> anyhow::Result<Programs> {
    let offsets = std::thread::spawn(kernel_offsets);
    let pids = snapshot_pids(target);
    load(args, target, false, &pids, Some(offsets))?.attach(target, &pids)
}

impl Loading {
    /// Attaches the syscall tracepoints (the function probes are already placed).
    fn attach(self, target: &Target, pids: &[u32]) -> anyhow::Result<Programs> {
        let Loading {
            mut loaded,
            functions,
            stacks,
        } = self;
        // Statements are read at each event from the process's debug_query_string.
        let (query_addrs, _) = QueryAddrs::start(&mut loaded, pids)?;
        target.attach_fork_tracking(&mut loaded)?;
        loaded.attach_tracepoint("enter_close", "syscalls", "sys_enter_close")?;
        for (enter, exit, name) in SYSCALLS {
            loaded.attach_tracepoint(enter, "syscalls", &format!("sys_enter_{name}"))?;
            loaded.attach_tracepoint(exit, "syscalls", &format!("sys_exit_{name}"))?;
        }
        let ring = loaded.take_ring_buffer("EVENTS")?;
        Ok(Programs {
            loaded,
            ring,
            query_addrs,
            functions,
            stacks,
        })
    }
}

/// The kernel programs loaded, with the function probes attached.
struct Loading {
    loaded: Loaded,
    functions: usize,
    stacks: Option<Stacks>,
}

/// Loads the object for `target` and its programs, attaching the uprobes on the postgres
/// binary's shared-memory functions when `with_functions` (the tracepoints are attached by
/// [`Loading::attach`]).
fn load(
    args: &Args,
    target: &mut Target,
    with_functions: bool,
    pids: &[u32],
    offsets: Option<std::thread::JoinHandle<anyhow::Result<[u32; 11]>>>,
) -> anyhow::Result<Loading> {
    let binary = if with_functions {
        postgres::binary_for_target(target, args.postgres.as_deref()).ok()
    } else {
        None
    };
    let mut g = Globals {
        page_bytes: system::page_size(),
        fork_child_offset: QueryAddrs::fork_child_offset()?,
        stacks_of_failures: u32::from(args.failures),
        ..Default::default()
    };
    let offsets = match offsets.map(std::thread::JoinHandle::join) {
        Some(Ok(offsets)) => offsets,
        _ => Err(anyhow::anyhow!("reading the kernel's BTF failed")),
    };
    match offsets {
        Ok(o) => {
            g.offsets = o;
            g.have_offsets = 1;
        }
        Err(e) => eprintln!(
            "shmem: note: without this kernel's struct layout ({e:#}), events show no backend \
             type and failures no free space"
        ),
    }
    if let Some((dev, ino)) = pid_namespace(pids) {
        g.pidns_dev = dev;
        g.pidns_ino = ino;
    }
    let mut loaded = loader::load("shmem", OBJECT, args.out.verbose, |l| {
        target.set_globals(l);
        l.override_global("HAVE_OFFSETS", &g.have_offsets, true)
            .override_global("PAGE_BYTES", &g.page_bytes, true)
            .override_global("PIDNS_DEV", &g.pidns_dev, true)
            .override_global("PIDNS_INO", &g.pidns_ino, true)
            .override_global("STACKS_OF_FAILURES", &g.stacks_of_failures, true);
        QueryAddrs::set_globals(l, &g.fork_child_offset);
        stacks::configure(l, if args.stack { stacks::mode::USER } else { 0 });
        for (name, value) in OFFSET_NAMES.iter().zip(&g.offsets) {
            l.override_global(name, value, true);
        }
    })?;
    target.fill_maps(&mut loaded.ebpf)?;
    let probes = match &binary {
        Some((bin, _)) => function_probes(bin)?,
        None => vec![],
    };
    let functions = probes.len();
    let stacks = if args.stack {
        Some(Stacks::take(&mut loaded)?)
    } else {
        None
    };
    // The syscall programs verified on both cores while the function probes are placed
    // (the first on the postgres binary waits ~20 ms for its breakpoints, with no CPU).
    let programs: Vec<&str> = std::iter::once("enter_close")
        .chain(SYSCALLS.iter().flat_map(|(enter, exit, _)| [*enter, *exit]))
        .chain(QueryAddrs::PROGRAMS)
        .chain(target.fork_tracking_programs().iter().copied())
        .collect();
    loaded.preload(&programs, &probes)?;
    Ok(Loading {
        loaded,
        functions,
        stacks,
    })
}

/// The uprobes on PostgreSQL's shared-memory functions in `binary` (those it has).
fn function_probes(binary: &Path) -> anyhow::Result<Vec<UprobeSite>> {
    let symbols = Symbols::open(binary, Path::new("/"))?;
    let mut probes = vec![];
    for (prog, symbol) in FUNCTIONS {
        let Some(vaddr) = symbols.address(symbol)? else {
            eprintln!(
                "shmem: note: {} has no symbol {symbol}: its calls are seen as syscalls only",
                binary.display()
            );
            continue;
        };
        probes.push(UprobeSite {
            prog,
            binary: binary.to_path_buf(),
            offset: symbols.binary.vaddr_to_offset(vaddr)?,
        });
    }
    Ok(probes)
}

/// Every call is a ring buffer record.
struct ShmTrace {
    programs: Programs,
    reporter: Reporter,
    /// `--redact`.
    shown: Shown,
}

impl Trace for ShmTrace {
    fn wait(&mut self, timeout: Duration) {
        loader::wait_readable(&self.programs.ring, timeout);
    }

    fn drain(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let reporter = &mut self.reporter;
        let p = &mut self.programs;
        let stacks = &mut p.stacks;
        let shown_as = self.shown;
        loader::drain_records(&mut p.ring, |raw: &ShmEvent| {
            let mut e = event::decode(raw);
            if shown_as == Shown::Redacted {
                e.query = shown_as.text(&e.query);
            }
            // Symbolized when shown: with --failures, failed calls only.
            let shown = !reporter.failures_only() || e.failed();
            if let Some(stacks) = stacks.as_mut().filter(|_| shown) {
                e.stack = stacks.user(raw.tgid, raw.user_stack);
                reporter.stacks_lost = stacks.lost;
            }
            reporter.event(out, &e)
        })?;
        // Processes met before they were located (started outside a traced tree): their next
        // events carry the statement.
        p.query_addrs.locate_wanted(&mut p.loaded)
    }

    fn interval(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let lost = self.counters()?;
        Ok(self.reporter.report(out, Scope::Interval, &lost)?)
    }

    fn finish(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let lost = self.counters()?;
        Ok(self.reporter.report(out, Scope::Total, &lost)?)
    }

    /// A restarted server has new shared memory: its snapshot, as at start.
    fn server_ready(&mut self, out: &mut Output, pids: &[u32]) -> anyhow::Result<()> {
        show(out, &snapshot::take(pids))
    }
}

impl ShmTrace {
    fn counters(&self) -> anyhow::Result<[u64; counter::COUNT as usize]> {
        self.programs.loaded.counters()
    }
}
