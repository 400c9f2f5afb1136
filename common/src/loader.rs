//! Loading a tool's embedded eBPF object and attaching its programs, with errors that name
//! the hook and the remedy (privileges, tracefs, kernel support, the verifier).

use std::{
    io,
    os::fd::{AsFd as _, AsRawFd, OwnedFd},
    sync::Once,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow};
use pgbpf_common_ebpf::usdt::{
    ARG_CONST, ARG_GLOBAL, ARG_NONE, ARG_REG, ARG_REG_DEREF, USDT_MAX_ARGS, USDT_MAX_SPECS,
    UsdtArgSpec, UsdtSpec,
};

use crate::{
    perf,
    usdt::{ArgLocation, UsdtProbe},
};
use aya::{
    Ebpf, EbpfError, EbpfLoader, VerifierLogLevel,
    maps::Array,
    programs::{
        PerfEvent, ProgramError, RawTracePoint, TracePoint, UProbe,
        perf_event::{PerfEventConfig, PerfEventScope, SamplePolicy},
        uprobe::{UProbeAttachLocation, UProbeScope},
    },
    util::online_cpus,
};

/// A uprobe for [`Loaded::preload`] to attach: program `prog` at `offset` in `binary`.
#[derive(Clone, Debug)]
pub struct UprobeSite {
    pub prog: &'static str,
    pub binary: std::path::PathBuf,
    pub offset: u64,
}

/// The kernel-side description of a USDT site: how to read each argument.
pub fn usdt_spec(probe: &UsdtProbe, probe_id: u32) -> UsdtSpec {
    let mut spec = UsdtSpec {
        site_vaddr: probe.address,
        probe_id,
        ..Default::default()
    };
    spec.arg_count = probe.args.len().min(USDT_MAX_ARGS) as u32;
    for (slot, arg) in spec.args.iter_mut().zip(&probe.args) {
        let (kind, reg_off, value) = match arg.location {
            ArgLocation::Immediate(v) => (ARG_CONST, 0, v),
            ArgLocation::Register { reg } => (ARG_REG, reg, 0),
            ArgLocation::Memory {
                base,
                disp,
                index: None,
            } => (ARG_REG_DEREF, base, disp),
            ArgLocation::Global { vaddr } => (ARG_GLOBAL, 0, vaddr as i64),
            // Indexed memory and unresolved globals read as "absent" in the kernel.
            ArgLocation::Memory { index: Some(_), .. } | ArgLocation::Unsupported => {
                (ARG_NONE, 0, 0)
            }
        };
        *slot = UsdtArgSpec {
            kind,
            size: arg.size,
            signed: u8::from(arg.signed),
            reg_off,
            value,
            ..Default::default()
        };
    }
    spec
}

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Fails with a clear message unless this process may load and attach tracing programs:
/// root, or CAP_BPF with CAP_PERFMON, or CAP_SYS_ADMIN.
pub fn check_privileges() -> anyhow::Result<()> {
    let cap_eff = crate::procs::effective_capabilities();
    let has = |cap: u32| cap_eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON)) {
        return Ok(());
    }
    Err(anyhow!(
        "permission denied: tracing needs root (or CAP_BPF and CAP_PERFMON); run it with sudo"
    ))
}

/// Kernels >= 5.11 charge BPF memory to the cgroup and ignore RLIMIT_MEMLOCK; older ones need
/// it raised, which fails without CAP_SYS_RESOURCE. On failure warn once (on new kernels, where
/// it is harmless, only with `-v`) and carry on: if the limit matters, map creation says so.
pub fn raise_memlock_rlimit(tool: &str, verbose: bool) {
    static ONCE: Once = Once::new();
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return;
    }
    let err = io::Error::last_os_error();
    let harmless = kernel_at_least(5, 11);
    if harmless && !verbose {
        return;
    }
    ONCE.call_once(|| {
        let why = if harmless {
            "harmless: this kernel accounts BPF memory to the cgroup"
        } else {
            "this kernel charges BPF maps to it, so loading may fail"
        };
        eprintln!("{tool}: warning: cannot raise RLIMIT_MEMLOCK ({err}); continuing ({why})");
    });
}

/// True when the running kernel is at least `major.minor`.
pub fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(u) = nix::sys::utsname::uname() else {
        return true;
    };
    let release = u.release().to_string_lossy().into_owned();
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse::<u32>().ok());
    let (ma, mi) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (ma, mi) >= (major, minor)
}

/// A loaded object and how long each startup step took.
pub struct Loaded {
    pub ebpf: Ebpf,
    /// Perf events and BPF links of USDT probes (closing them detaches and lowers semaphores).
    usdt_links: Vec<OwnedFd>,
    /// Next free slot of PGBPF_USDT_SPECS.
    usdt_specs: u32,
    pub started: Instant,
    pub verbose: bool,
    tool: String,
}

/// A ring buffer item as the kernel program's record type, when it holds a whole one.
pub fn record<T: aya::Pod>(item: &[u8]) -> Option<T> {
    record_prefix(item, std::mem::size_of::<T>())
}

/// A ring buffer item of at least `min_len` bytes as the kernel program's record type, the
/// bytes it lacks zero: for records whose tail (text) is sent only as long as needed.
pub fn record_prefix<T: aya::Pod>(item: &[u8], min_len: usize) -> Option<T> {
    if item.len() < min_len {
        return None;
    }
    let n = item.len().min(std::mem::size_of::<T>());
    // SAFETY: a Pod type, every bit pattern (zeros included) valid.
    let mut value: T = unsafe { std::mem::zeroed() };
    // SAFETY: `n` fits both the item and the value.
    unsafe {
        std::ptr::copy_nonoverlapping(item.as_ptr(), (&raw mut value).cast::<u8>(), n);
    }
    Some(value)
}

/// Like [`drain_records`], for records that may be cut short down to `min_len` bytes
/// ([`record_prefix`]).
pub fn drain_prefixed_records<T: aya::Pod, E>(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    min_len: usize,
    mut each: impl FnMut(&T) -> Result<(), E>,
) -> Result<(), E> {
    while let Some(item) = ring.next() {
        if let Some(r) = record_prefix::<T>(&item, min_len) {
            each(&r)?;
        }
    }
    Ok(())
}

/// Waits up to `timeout` for `fd` (a ring buffer) to become readable. The tools' kernel
/// sides do not wake userspace per event (that costs more than the event), so this is mostly
/// a nap between drains.
pub fn wait_readable(fd: &impl AsRawFd, timeout: Duration) {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd that lives across the call.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// Hands every whole `T` record waiting in `ring` to `each`, in order (items too short to
/// be one are skipped); stops at the first error, leaving the rest for the next drain.
pub fn drain_records<T: aya::Pod, E>(
    ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
    each: impl FnMut(&T) -> Result<(), E>,
) -> Result<(), E> {
    drain_prefixed_records(ring, std::mem::size_of::<T>(), each)
}

/// Loads `object` (embedded with `aya::include_bytes_aligned!`) after `configure` set its
/// globals. Checks privileges and makes sure tracefs is there first.
pub fn load<'a>(
    tool: &str,
    object: &[u8],
    verbose: bool,
    configure: impl FnOnce(&mut EbpfLoader<'a>),
) -> anyhow::Result<Loaded> {
    let started = Instant::now();
    check_privileges()?;
    crate::tracefs::ensure_mounted()?;
    raise_memlock_rlimit(tool, verbose);
    let mut loader = EbpfLoader::new();
    // Maps a tool may not use are created as small as the kernel allows; the tool's configure
    // sizes those it uses.
    loader
        .map_max_entries(crate::query::CONTEXT_MAP, 1)
        .map_max_entries(crate::query_string::ADDR_MAP, 1)
        .map_max_entries(crate::query_string::WANTED_MAP, 1);
    if verbose {
        loader.verifier_log_level(VerifierLogLevel::VERBOSE | VerifierLogLevel::STATS);
    }
    configure(&mut loader);
    let ebpf = loader
        .load(object)
        .map_err(|e| explain_load_error(e, verbose))?;
    if verbose {
        eprintln!("{tool}: object loaded in {:.1} ms", ms(started.elapsed()));
        if let Some(maps) = crate::map_memory::maps_of(std::process::id()) {
            eprintln!("{tool}: {}", crate::map_memory::summary(&maps));
        }
    }
    Ok(Loaded {
        ebpf,
        usdt_links: vec![],
        usdt_specs: 0,
        started,
        verbose,
        tool: tool.to_string(),
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn explain_load_error(e: EbpfError, verbose: bool) -> anyhow::Error {
    let text = e.to_string();
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        return anyhow!(
            "the kernel refused to create BPF maps ({text}); run as root (or with CAP_BPF and \
             CAP_PERFMON); in a container, run it privileged"
        );
    }
    if verbose {
        anyhow!("loading the eBPF object failed: {text}")
    } else {
        anyhow!(
            "loading the eBPF object failed: {}; rerun with -v for details",
            first_line(&text)
        )
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

/// What went wrong loading or attaching one program, in words a user can act on.
fn explain_program_error(hook: &str, e: ProgramError, verbose: bool) -> anyhow::Error {
    let raw_os = find_os_error(&e);
    match (&e, raw_os) {
        (ProgramError::LoadError { verifier_log, .. }, _) => {
            if verbose {
                anyhow!("the kernel's verifier rejected the program for {hook}:\n{verifier_log}")
            } else {
                anyhow!(
                    "the kernel's verifier rejected the program for {hook}; rerun with -v to see \
                     the verifier log"
                )
            }
        }
        (_, Some(libc::EPERM)) | (_, Some(libc::EACCES)) => anyhow!(
            "permission denied attaching {hook}: run as root (or with CAP_BPF and CAP_PERFMON)"
        ),
        (_, Some(libc::ENOENT)) => anyhow!("{hook} does not exist on this kernel ({e})"),
        (_, Some(libc::EINVAL)) | (_, Some(libc::EOPNOTSUPP)) => {
            anyhow!("this kernel does not support the program type needed for {hook} ({e})")
        }
        _ => anyhow!("cannot attach {hook}: {e}"),
    }
}

fn find_os_error(e: &(dyn std::error::Error + 'static)) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(code) = err
            .downcast_ref::<io::Error>()
            .and_then(io::Error::raw_os_error)
        {
            return Some(code);
        }
        cur = err.source();
    }
    None
}

impl Loaded {
    fn program<'p, T>(&'p mut self, name: &str) -> anyhow::Result<&'p mut T>
    where
        &'p mut T: TryFrom<&'p mut aya::programs::Program, Error = ProgramError>,
    {
        let prog = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no program {name}"))?;
        prog.try_into()
            .map_err(|e: ProgramError| anyhow!("program {name}: {e}"))
    }

    /// Loads programs `names` (those of them not loaded yet) on two threads at once, before
    /// they are attached: the kernel verifies each in the calling thread, and a tool's large
    /// programs (the capture's socket programs, 12 ms each) then take the time of one.
    /// A program that fails here is left unloaded: attaching it loads it again and reports
    /// the error with its hook.
    ///
    /// Meanwhile a third thread loads the programs of `uprobes` and attaches them (for every
    /// process that maps the file): the first probe on a file waits for the kernel to place
    /// its breakpoints in every process mapping it and for an RCU grace period (14 ms for
    /// libssl here), a wait that costs no CPU and so hides behind the verification. An error
    /// attaching them is returned, with the probe.
    pub fn preload(&mut self, names: &[&str], uprobes: &[UprobeSite]) -> anyhow::Result<()> {
        use aya::programs::Program;
        let verbose = self.verbose;
        let mut probe_programs: Vec<(&str, &mut Program)> = vec![];
        let mut todo: Vec<&mut Program> = vec![];
        for (name, p) in self.ebpf.programs_mut() {
            if uprobes.iter().any(|u| u.prog == name) {
                probe_programs.push((name, p));
            } else if names.contains(&name) && p.fd().is_err() {
                todo.push(p);
            }
        }
        // Each thread takes the next program when done with one: the large ones spread out.
        let queue = std::sync::Mutex::new(todo.into_iter());
        let work = || {
            loop {
                let Some(p) = queue.lock().ok().and_then(|mut q| q.next()) else {
                    return;
                };
                let _ = match p {
                    Program::TracePoint(p) => p.load(),
                    Program::RawTracePoint(p) => p.load(),
                    Program::UProbe(p) => p.load(),
                    Program::KProbe(p) => p.load(),
                    Program::PerfEvent(p) => p.load(),
                    _ => Ok(()),
                };
            }
        };
        let attach_probes = || -> anyhow::Result<Vec<String>> {
            let mut hooks = vec![];
            for site in uprobes {
                let location = UProbeAttachLocation::AbsoluteOffset(site.offset);
                let hook = format!("uprobe {}:{location:?}", site.binary.display());
                let p = probe_programs
                    .iter_mut()
                    .find(|(name, _)| *name == site.prog)
                    .map(|(_, p)| &mut **p)
                    .ok_or_else(|| anyhow!("the eBPF object has no program {}", site.prog))?;
                let p: &mut UProbe = p
                    .try_into()
                    .map_err(|e: ProgramError| anyhow!("program {}: {e}", site.prog))?;
                if p.fd().is_err() {
                    p.load()
                        .map_err(|e| explain_program_error(&hook, e, verbose))?;
                }
                p.attach([location], &site.binary, UProbeScope::AllProcesses)
                    .map_err(|e| explain_program_error(&hook, e, verbose))?;
                hooks.push(hook);
            }
            Ok(hooks)
        };
        let attached = std::thread::scope(|scope| {
            let probes = scope.spawn(attach_probes);
            scope.spawn(work);
            work();
            probes.join()
        })
        .map_err(|_| anyhow!("attaching the uprobes failed"))??;
        for hook in attached {
            self.note_attached(&hook);
        }
        Ok(())
    }

    /// Loads program `prog` (once: it may serve several tracepoints) and attaches it to the
    /// tracepoint `category:event`.
    pub fn attach_tracepoint(
        &mut self,
        prog: &str,
        category: &str,
        event: &str,
    ) -> anyhow::Result<()> {
        let verbose = self.verbose;
        let hook = format!("tracepoint {category}:{event}");
        let p: &mut TracePoint = self.program(prog)?;
        if p.fd().is_err() {
            p.load()
                .map_err(|e| explain_program_error(&hook, e, verbose))?;
        }
        p.attach(category, event)
            .map_err(|e| explain_program_error(&hook, e, verbose))?;
        self.note_attached(&hook);
        Ok(())
    }

    /// Loads program `prog` and attaches it to the raw tracepoint `event` (called with the
    /// tracepoint's arguments, without the perf record a classic attachment builds first).
    pub fn attach_raw_tracepoint(&mut self, prog: &str, event: &str) -> anyhow::Result<()> {
        let verbose = self.verbose;
        let hook = format!("raw tracepoint {event}");
        let p: &mut RawTracePoint = self.program(prog)?;
        if p.fd().is_err() {
            p.load()
                .map_err(|e| explain_program_error(&hook, e, verbose))?;
        }
        p.attach(event)
            .map_err(|e| explain_program_error(&hook, e, verbose))?;
        self.note_attached(&hook);
        Ok(())
    }

    /// Loads program `prog` (a uprobe or uretprobe) and attaches it to `location` in `binary`
    /// for every process that runs it (filtering is the kernel program's job).
    pub fn attach_uprobe(
        &mut self,
        prog: &str,
        binary: &std::path::Path,
        location: UProbeAttachLocation<'_>,
    ) -> anyhow::Result<()> {
        let verbose = self.verbose;
        let hook = format!("uprobe {}:{location:?}", binary.display());
        let p: &mut UProbe = self.program(prog)?;
        if p.fd().is_err() {
            p.load()
                .map_err(|e| explain_program_error(&hook, e, verbose))?;
        }
        p.attach([location], binary, UProbeScope::AllProcesses)
            .map_err(|e| explain_program_error(&hook, e, verbose))?;
        self.note_attached(&hook);
        Ok(())
    }

    /// Attaches program `prog` (a `#[uprobe]`) to one USDT probe site of `binary`, system-wide,
    /// with the kernel managing the probe's semaphore. `probe_id` is handed to the program in
    /// the site's [`UsdtSpec`] (read it with `pgbpf_common_ebpf::usdt::usdt_spec`).
    pub fn attach_usdt(
        &mut self,
        prog: &str,
        binary: &std::path::Path,
        probe: &UsdtProbe,
        probe_id: u32,
    ) -> anyhow::Result<()> {
        let hook = format!(
            "USDT {}:{} in {} at {:#x}",
            probe.provider,
            probe.name,
            binary.display(),
            probe.address
        );
        self.attach_site(prog, binary, probe, probe_id, false, &hook)
    }

    /// Like [`Loaded::attach_usdt`] for a plain function: a uprobe at its entry (`retprobe`
    /// false) or a uretprobe at its return. `site` describes it as a probe whose arguments
    /// are where the calling convention puts them; its address is the function's.
    pub fn attach_function(
        &mut self,
        prog: &str,
        binary: &std::path::Path,
        site: &UsdtProbe,
        probe_id: u32,
        retprobe: bool,
    ) -> anyhow::Result<()> {
        let kind = if retprobe { "uretprobe" } else { "uprobe" };
        let hook = format!(
            "{kind} {}:{} at {:#x}",
            binary.display(),
            site.name,
            site.address
        );
        self.attach_site(prog, binary, site, probe_id, retprobe, &hook)
    }

    fn attach_site(
        &mut self,
        prog: &str,
        binary: &std::path::Path,
        probe: &UsdtProbe,
        probe_id: u32,
        retprobe: bool,
        hook: &str,
    ) -> anyhow::Result<()> {
        let verbose = self.verbose;
        let hook = hook.to_string();
        let index = self.usdt_specs;
        if index >= USDT_MAX_SPECS {
            return Err(anyhow!(
                "too many USDT probe sites (at most {USDT_MAX_SPECS})"
            ));
        }
        let spec = usdt_spec(probe, probe_id);
        {
            let map = self
                .ebpf
                .map_mut("PGBPF_USDT_SPECS")
                .ok_or_else(|| anyhow!("the eBPF object has no PGBPF_USDT_SPECS map"))?;
            let mut specs: Array<_, UsdtSpec> = Array::try_from(map)?;
            specs
                .set(index, &spec, 0)
                .context("storing the USDT spec")?;
        }
        let p: &mut UProbe = self.program(prog)?;
        if p.fd().is_err() {
            p.load()
                .map_err(|e| explain_program_error(&hook, e, verbose))?;
        }
        let prog_fd = p
            .fd()
            .map_err(|e| anyhow!("program {prog}: {e}"))?
            .as_fd()
            .as_raw_fd();
        let event = perf::open_uprobe(binary, probe.offset, probe.semaphore_offset, retprobe)
            .with_context(|| format!("cannot attach {hook}"))?;
        let link = perf::link_with_cookie(prog_fd, &event, u64::from(index))
            .with_context(|| format!("cannot attach {hook}"))?;
        self.usdt_links.push(link);
        self.usdt_links.push(event);
        self.usdt_specs += 1;
        self.note_attached(&hook);
        Ok(())
    }

    /// Loads program `prog` and attaches it to `config` on every online CPU, for all processes.
    pub fn attach_perf_event_all_cpus(
        &mut self,
        prog: &str,
        what: &str,
        config: PerfEventConfig,
        policy: SamplePolicy,
    ) -> anyhow::Result<()> {
        let verbose = self.verbose;
        let hook = format!("perf event {what}");
        let cpus = online_cpus()
            .map_err(|(_, e)| e)
            .context("reading online CPUs")?;
        let p: &mut PerfEvent = self.program(prog)?;
        if p.fd().is_err() {
            p.load()
                .map_err(|e| explain_program_error(&hook, e, verbose))?;
        }
        for cpu in cpus {
            p.attach(
                config,
                PerfEventScope::AllProcessesOneCpu { cpu },
                policy,
                false,
            )
            .map_err(|e| explain_program_error(&hook, e, verbose))?;
        }
        self.note_attached(&hook);
        Ok(())
    }

    /// The tool's name, for messages.
    pub fn tool(&self) -> &str {
        &self.tool
    }

    /// `-v`: loader and attachment detail on stderr.
    pub fn verbose(&self) -> bool {
        self.verbose
    }

    fn note_attached(&self, hook: &str) {
        if self.verbose {
            eprintln!(
                "{}: attached {hook} at {:.1} ms",
                self.tool,
                ms(self.started.elapsed())
            );
        }
    }

    /// The map `name` of the object, for typed access (`HashMap::try_from(...)`).
    pub fn map_mut(&mut self, name: &str) -> anyhow::Result<&mut aya::maps::Map> {
        self.ebpf
            .map_mut(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
    }

    /// The tool's COUNTERS (a per-CPU u64 array of lost and other events, N slots), each
    /// summed over CPUs.
    pub fn counters<const N: usize>(&self) -> anyhow::Result<[u64; N]> {
        let map = self
            .ebpf
            .map("COUNTERS")
            .ok_or_else(|| anyhow!("the eBPF object has no map COUNTERS"))?;
        let map: aya::maps::PerCpuArray<_, u64> = aya::maps::PerCpuArray::try_from(map)?;
        let mut out = [0u64; N];
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = map.get(&(i as u32), 0)?.iter().sum();
        }
        Ok(out)
    }

    /// The ring buffer `name`, taken out of the object for the event loop to own (its items
    /// are read with [`record`]).
    pub fn take_ring_buffer(
        &mut self,
        name: &str,
    ) -> anyhow::Result<aya::maps::RingBuf<aya::maps::MapData>> {
        Ok(aya::maps::RingBuf::try_from(self.take_map(name)?)?)
    }

    /// The map `name`, taken out of the object for a report that reads it itself (a hash
    /// map summed in the kernel): `HashMap::try_from(loaded.take_map("BLOCKS")?)?`.
    pub fn take_map(&mut self, name: &str) -> anyhow::Result<aya::maps::Map> {
        self.ebpf
            .take_map(name)
            .ok_or_else(|| anyhow!("the eBPF object has no map {name}"))
    }

    /// Time from the start of `load` until now (call it once everything is attached).
    pub fn startup_ms(&self) -> f64 {
        ms(self.started.elapsed())
    }
}
