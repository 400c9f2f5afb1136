//! `--stack`: stacks the kernel stored in the shared stack map (`pgbpf_common_ebpf::stacks`),
//! read by id and symbolized by blazesym (user frames from /proc/PID/maps and the mapped
//! files' .symtab/.dynsym, or debug files found by build-id or .gnu_debuglink; kernel frames
//! from kallsyms), and the waits of a report summed per stack ([`StackWaits`]).
//!
//! A user frame that no symbol covers (a static function of a stripped binary) is shown as
//! `file+0xOFFSET`, the file offset `addr2line` or `gdb` take with the debug file.

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, mpsc},
};

use anyhow::Context as _;
use aya::maps::{MapData, StackTraceMap};
use blazesym::symbolize::{
    Symbolized, Symbolizer,
    source::{Kernel, Process, Source},
};
pub use pgbpf_common_ebpf::stacks::{LOST, NONE, mode};
use schemars::JsonSchema;
use serde::Serialize;

use crate::{latency::WaitTimes, loader::Loaded, output, records::Scope};

/// Stacks kept in the kernel's map: distinct stacks, not events (each is stored once).
const MAP_ENTRIES: u32 = 16384;

/// A symbolized stack, innermost frame first ("name+0xoff (module)").
pub type Frames = Arc<[String]>;

/// A symbolized stack and its number: stacks with the same frames (from processes with other
/// layouts, or stored twice) have the same number, which is what reports sum by (hashing a
/// number per event, not the frames).
#[derive(Clone, Debug)]
pub struct Stack {
    pub id: u32,
    pub frames: Frames,
}

impl Stack {
    pub fn new(id: u32, frames: Frames) -> Stack {
        Stack { id, frames }
    }
}

impl PartialEq for Stack {
    fn eq(&self, other: &Stack) -> bool {
        self.id == other.id
    }
}

impl Eq for Stack {}

impl std::hash::Hash for Stack {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.id.hash(h);
    }
}

impl PartialOrd for Stack {
    fn partial_cmp(&self, other: &Stack) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Stack {
    fn cmp(&self, other: &Stack) -> std::cmp::Ordering {
        self.id.cmp(&other.id)
    }
}

/// Sizes the stack map and turns stack taking on (`mode` bits: [`mode::USER`],
/// [`mode::KERNEL`]); without it the map has one entry and no program takes a stack.
pub fn configure(loader: &mut aya::EbpfLoader<'_>, mode: u32) {
    // The loader keeps a reference to a global's value until it loads.
    static MODES: [u32; 4] = [0, 1, 2, 3];
    if mode != 0 {
        loader
            .map_max_entries(pgbpf_common_ebpf::stacks::MAP, MAP_ENTRIES)
            .override_global(
                pgbpf_common_ebpf::stacks::MODE_GLOBAL,
                &MODES[(mode & 3) as usize],
                true,
            );
    } else {
        loader.map_max_entries(pgbpf_common_ebpf::stacks::MAP, 1);
    }
}

/// The stacks of a loaded object, read and symbolized once per stack id.
pub struct Stacks {
    map: StackTraceMap<MapData>,
    symbolizer: SymbolizerThread,
    user: HashMap<u32, Stack>,
    kernel: HashMap<u32, Stack>,
    /// Each distinct list of frames and its number.
    numbers: HashMap<Frames, u32>,
    /// Stacks the kernel could not store (map full, or no stack to walk).
    pub lost: u64,
}

impl Stacks {
    /// Takes the stack map out of `loaded` (configured with [`configure`]).
    pub fn take(loaded: &mut Loaded) -> anyhow::Result<Stacks> {
        let map = loaded.take_map(pgbpf_common_ebpf::stacks::MAP)?;
        Ok(Stacks {
            map: StackTraceMap::try_from(map).context("the stack map")?,
            symbolizer: SymbolizerThread::default(),
            user: HashMap::new(),
            kernel: HashMap::new(),
            numbers: HashMap::new(),
            lost: 0,
        })
    }

    /// The user stack `id` of process `tgid` (symbolized at its first sighting, while the
    /// process is alive); None when no stack was taken.
    pub fn user(&mut self, tgid: u32, id: i32) -> Option<Stack> {
        let id = self.usable(id)?;
        if let Some(f) = self.user.get(&id) {
            return Some(f.clone());
        }
        let addrs = self.addresses(id)?;
        // A process gone by now (a parallel worker that failed) is read through another
        // with the same layout.
        let pid = if crate::procs::alive(tgid) {
            tgid
        } else {
            stand_in(&addrs).unwrap_or(tgid)
        };
        let frames = self.symbolizer.symbolize(Side::User(pid), addrs);
        let stack = self.number(frames);
        self.user.insert(id, stack.clone());
        Some(stack)
    }

    /// The kernel stack `id`; None when no stack was taken.
    pub fn kernel(&mut self, id: i32) -> Option<Stack> {
        let id = self.usable(id)?;
        if let Some(f) = self.kernel.get(&id) {
            return Some(f.clone());
        }
        let addrs = self.addresses(id)?;
        let frames = self.symbolizer.symbolize(Side::Kernel, addrs);
        let stack = self.number(frames);
        self.kernel.insert(id, stack.clone());
        Some(stack)
    }

    /// The frames with their number (a new one for frames not met before).
    fn number(&mut self, frames: Vec<String>) -> Stack {
        let frames: Frames = frames.into();
        let next = self.numbers.len() as u32;
        let id = *self.numbers.entry(frames.clone()).or_insert(next);
        Stack { id, frames }
    }

    fn usable(&mut self, id: i32) -> Option<u32> {
        if id == LOST {
            self.lost += 1;
        }
        u32::try_from(id).ok()
    }

    fn addresses(&mut self, id: u32) -> Option<Vec<u64>> {
        match self.map.get(&id, 0) {
            Ok(trace) => Some(trace.frames().iter().map(|f| f.ip).collect()),
            Err(_) => {
                self.lost += 1;
                None
            }
        }
    }
}

/// Whose addresses.
#[derive(Clone, Copy)]
enum Side {
    User(u32),
    Kernel,
}

type Request = (Side, Vec<u64>, mpsc::SyncSender<Vec<String>>);

/// blazesym's symbolizer keeps its caches in `Rc`s (it is not `Send`) while the tools' traces
/// move between threads: it lives on a thread of its own, started at the first stack, and
/// answers one request at a time.
#[derive(Default)]
struct SymbolizerThread {
    requests: Option<mpsc::Sender<Request>>,
}

impl SymbolizerThread {
    fn symbolize(&mut self, side: Side, addrs: Vec<u64>) -> Vec<String> {
        let fallback = |addrs: &[u64]| addrs.iter().map(|a| format!("{a:#x}")).collect();
        let requests = self.requests.get_or_insert_with(|| {
            let (tx, rx) = mpsc::channel::<Request>();
            let _ = std::thread::Builder::new()
                .name("symbolizer".into())
                .spawn(move || serve(rx));
            tx
        });
        let (reply, answer) = mpsc::sync_channel(1);
        if requests.send((side, addrs.clone(), reply)).is_err() {
            return fallback(&addrs);
        }
        answer.recv().unwrap_or_else(|_| fallback(&addrs))
    }
}

/// Processes seen before the symbolizer is made anew: its per-process caches (maps, files)
/// would otherwise grow with every short-lived process met.
const PROCESSES_PER_SYMBOLIZER: usize = 256;

fn new_symbolizer() -> Symbolizer {
    Symbolizer::builder()
        .enable_code_info(false)
        .enable_inlined_fns(false)
        .build()
}

fn serve(rx: mpsc::Receiver<Request>) {
    // The kernel's symbols (all of kallsyms) are read once and kept.
    let kernel = new_symbolizer();
    let mut user = new_symbolizer();
    let mut processes = std::collections::HashSet::new();
    for (side, addrs, reply) in rx {
        let symbolizer = match side {
            Side::Kernel => &kernel,
            Side::User(pid) => {
                if processes.insert(pid) && processes.len() > PROCESSES_PER_SYMBOLIZER {
                    user = new_symbolizer();
                    processes.clear();
                    processes.insert(pid);
                }
                &user
            }
        };
        let _ = reply.send(symbolize(symbolizer, side, &addrs));
    }
}

/// One line per frame, innermost first. Return addresses are looked up one byte back, so a
/// call that is its function's last instruction is not put in the next function.
fn symbolize(symbolizer: &Symbolizer, side: Side, addrs: &[u64]) -> Vec<String> {
    let lookup: Vec<u64> = addrs
        .iter()
        .enumerate()
        .map(|(i, &a)| if i == 0 { a } else { a.saturating_sub(1) })
        .collect();
    let source = match side {
        Side::User(pid) => {
            let mut p = Process::new(pid.into());
            p.perf_map = false;
            Source::Process(p)
        }
        Side::Kernel => Source::Kernel(Kernel::default()),
    };
    let syms = symbolizer
        .symbolize(&source, blazesym::symbolize::Input::AbsAddr(&lookup))
        .unwrap_or_default();
    let mut maps = None;
    let mut frames: Vec<String> = addrs
        .iter()
        .enumerate()
        .map(|(i, &addr)| {
            let back = u64::from(i != 0);
            match syms.get(i) {
                Some(Symbolized::Sym(s)) => {
                    let module = s
                        .module
                        .as_deref()
                        .map(|m| format!(" ({})", base_name(Path::new(m))))
                        .unwrap_or_default();
                    format!("{}+{:#x}{module}", s.name, s.offset as u64 + back)
                }
                _ => match side {
                    Side::User(pid) => {
                        let maps = maps.get_or_insert_with(|| mappings(pid));
                        file_offset(maps, addr).unwrap_or_else(|| format!("{addr:#x}"))
                    }
                    Side::Kernel => format!("{addr:#x}"),
                },
            }
        })
        .collect();
    if let Side::Kernel = side {
        // The tracer's own frames on top: the BPF program, the tracepoint's runners.
        const OURS: [&str; 4] = ["bpf_prog_", "bpf_trace_run", "__bpf_trace_", "__traceiter_"];
        let ours = frames
            .iter()
            .take_while(|f| OURS.iter().any(|p| f.starts_with(p)))
            .count();
        frames.drain(..ours);
    }
    frames
}

fn base_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.to_string_lossy().into_owned())
}

/// A live process whose executable mappings cover all of `addrs`: another process of the same
/// PostgreSQL instance (its postmaster's children are forked, never exec'd, and share its
/// layout). Under address-space randomization another instance's layout does not cover a
/// stack of this one's.
fn stand_in(addrs: &[u64]) -> Option<u32> {
    crate::procs::all_pids().into_iter().find(|&pid| {
        crate::procs::comm_of(pid).as_deref() == Some("postgres") && {
            let maps = mappings(pid);
            addrs
                .iter()
                .all(|&a| maps.iter().any(|m| (m.0..m.1).contains(&a)))
        }
    })
}

/// Executable file-backed mappings of `pid`: (start, end, file offset, file name).
fn mappings(pid: u32) -> Vec<(u64, u64, u64, String)> {
    let Ok(maps) = procfs::process::Process::new(pid as i32).and_then(|p| p.maps()) else {
        return vec![];
    };
    maps.into_iter()
        .filter(|m| m.perms.contains(procfs::process::MMPermissions::EXECUTE))
        .filter_map(|m| match m.pathname {
            procfs::process::MMapPath::Path(p) => {
                Some((m.address.0, m.address.1, m.offset, base_name(&p)))
            }
            _ => None,
        })
        .collect()
}

/// `file+0xOFFSET` of an address no symbol covers.
fn file_offset(maps: &[(u64, u64, u64, String)], addr: u64) -> Option<String> {
    let (start, _, offset, name) = maps.iter().find(|m| (m.0..m.1).contains(&addr))?;
    Some(format!("{name}+{:#x}", addr - start + offset))
}

/// Waits summed per (what, user stack, kernel stack): the "where from" of a report.
#[derive(Debug, Default)]
pub struct StackWaits {
    /// what → (user, kernel) → waits: looked up without allocating per event.
    rows: HashMap<String, HashMap<StackPair, WaitTimes>>,
}

type StackPair = (Option<Stack>, Option<Stack>);

/// One stack's row (`--stack` with `--json`): a record of type `stack`.
#[derive(Serialize, JsonSchema)]
pub struct StackRow<'a> {
    pub scope: Scope,
    pub ts_ns: u64,
    pub interval_ns: u64,
    /// What was waited for (a tranche, a lock type, a kind of wait, a reason off the CPU).
    pub what: &'a str,
    /// Waits with this stack.
    pub waits: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    /// The user stack, innermost frame first: `function+0xoffset (file)`, or `file+0xoffset`
    /// where no symbol covers the address; empty when none was taken.
    pub user_stack: Vec<&'a str>,
    /// The kernel stack, innermost frame first; empty when none was taken.
    pub kernel_stack: Vec<&'a str>,
}

impl StackWaits {
    /// One wait of `ns` for `what`, from these stacks (nothing is added when neither is known).
    pub fn add(&mut self, what: &str, user: Option<Stack>, kernel: Option<Stack>, ns: u64) {
        if user.is_none() && kernel.is_none() {
            return;
        }
        let stacks = match self.rows.get_mut(what) {
            Some(s) => s,
            None => self.rows.entry(what.to_string()).or_default(),
        };
        stacks.entry((user, kernel)).or_default().add(ns);
    }

    /// The rows (what, stacks, waits) by total wait time, longest first.
    fn ranked(&self) -> Vec<(&str, &StackPair, &WaitTimes)> {
        let mut rows: Vec<_> = self
            .rows
            .iter()
            .flat_map(|(what, m)| m.iter().map(move |(k, w)| (what.as_str(), k, w)))
            .collect();
        rows.sort_by(|a, b| {
            b.2.total_ns
                .cmp(&a.2.total_ns)
                .then(a.0.cmp(b.0))
                .then(a.1.cmp(b.1))
        });
        rows
    }

    /// The `top` stacks by wait time, each with its frames, as text under `title` ("Top
    /// stacks by wait time").
    pub fn text(&self, out: &mut String, title: &str, top: usize) {
        if self.rows.is_empty() {
            return;
        }
        out.push_str(&format!("\n{title}:\n"));
        for (what, (user, kernel), w) in self.ranked().into_iter().take(top) {
            out.push_str(&format!(
                "  {what}: {} waits, {} (mean {}, max {})\n",
                w.count,
                output::human_ns(w.total_ns),
                output::human_ns(w.mean_ns()),
                output::human_ns(w.max_ns)
            ));
            for f in kernel.iter().flat_map(|s| s.frames.iter()) {
                out.push_str(&format!("      [k] {f}\n"));
            }
            for f in user.iter().flat_map(|s| s.frames.iter()) {
                out.push_str(&format!("      {f}\n"));
            }
        }
    }

    /// Every stack's row, for `--json`.
    pub fn rows(&self, scope: Scope, ts_ns: u64, interval_ns: u64) -> Vec<StackRow<'_>> {
        self.ranked()
            .into_iter()
            .map(|(what, (user, kernel), w)| StackRow {
                scope,
                ts_ns,
                interval_ns,
                what,
                waits: w.count,
                total_ns: w.total_ns,
                max_ns: w.max_ns,
                user_stack: frames(user),
                kernel_stack: frames(kernel),
            })
            .collect()
    }
}

fn frames(s: &Option<Stack>) -> Vec<&str> {
    s.iter()
        .flat_map(|s| s.frames.iter().map(String::as_str))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stack(id: u32, frames: &[&str]) -> Option<Stack> {
        Some(Stack::new(
            id,
            frames.iter().map(|f| f.to_string()).collect(),
        ))
    }

    #[test]
    fn waits_sum_per_stack_and_rank_by_total_time() {
        let mut w = StackWaits::default();
        w.add(
            "WALWrite",
            stack(1, &["LWLockAcquire+0x10", "XLogFlush+0x20"]),
            None,
            5_000,
        );
        w.add(
            "WALWrite",
            stack(1, &["LWLockAcquire+0x10", "XLogFlush+0x20"]),
            None,
            7_000,
        );
        w.add(
            "WALWrite",
            stack(2, &["LWLockAcquire+0x10", "XLogInsert+0x8"]),
            None,
            20_000,
        );
        w.add("WALWrite", None, None, 1_000_000);
        let rows = w.rows(Scope::Total, 1, 2);
        assert_eq!(rows.len(), 2, "a wait without a stack is not a row");
        assert_eq!(rows[0].user_stack[1], "XLogInsert+0x8");
        assert_eq!((rows[0].waits, rows[0].total_ns), (1, 20_000));
        assert_eq!(
            (rows[1].waits, rows[1].total_ns, rows[1].max_ns),
            (2, 12_000, 7_000)
        );
        let mut text = String::new();
        w.text(&mut text, "Top stacks", 1);
        assert!(
            text.contains("XLogInsert+0x8") && !text.contains("XLogFlush"),
            "{text}"
        );
    }

    #[test]
    fn an_address_without_a_symbol_is_its_file_offset() {
        let maps = vec![(0x1000, 0x3000, 0x400, "postgres".to_string())];
        assert_eq!(
            file_offset(&maps, 0x1010).as_deref(),
            Some("postgres+0x410")
        );
        assert_eq!(file_offset(&maps, 0x3000), None);
    }

    #[test]
    fn this_process_symbolizes_its_own_stack() {
        // The address of a function of this test binary, symbolized through /proc/self.
        let addr = an_address_of_this_binary as *const () as u64;
        let s = new_symbolizer();
        let frames = symbolize(&s, Side::User(std::process::id()), &[addr]);
        assert!(
            frames[0].contains("an_address_of_this_binary"),
            "{frames:?}"
        );
    }

    #[inline(never)]
    fn an_address_of_this_binary() {}
}
