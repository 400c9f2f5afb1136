//! pgbpf's userspace library, shared by every tool.
//!
//! - [`loader`]: load the embedded eBPF object, set globals, attach hooks, explain failures.
//! - [`tracefs`]: find or mount tracefs, read tracepoint field offsets.
//! - [`cgroup`]: cgroup v2 mount, ids, paths and container lookup.
//! - [`target`]: `--pid` / `--container` / `--cgroup` / `--comm` → the in-kernel filter.
//! - [`output`]: where data goes (stdout, buffered), sizes, durations, log2 histograms, tables, timestamps.
//! - [`kernel_btf`]: offsets of kernel struct members, from the running kernel's BTF.
//! - [`elf`]: symbols (also from separate debug files), file offsets, build-ids.
//! - [`globals`]: a PostgreSQL process's global variables, read from its memory.
//! - [`periods`]: a report's interval and whole-run figures, and their clock.
//! - [`perf`]: uprobe perf events with semaphores and BPF links with cookies (for USDT).
//! - [`usdt`]: USDT notes, semaphores and argument specs.
//! - [`query`]: userspace view of the query context (each backend's current statement).
//! - [`query_probes`]: the PostgreSQL probe sites that keep the query context, and attaching them.
//! - [`query_string`]: where each PostgreSQL process keeps `debug_query_string`, for reading the statement at an event.
//! - [`postgres`]: finding the postgres binary of a process or of the machine; backend types.
//! - [`pg_probes`]: the start and drain of a tool built on PostgreSQL's USDT probes and a ring buffer.
//! - [`procs`]: what /proc says about processes (through procfs).
//! - [`system`]: page size and other facts about this machine.
//! - [`stacks`]: `--stack`: stack ids read from the kernel's stack map, symbolized by blazesym, waits per stack.
//! - [`sql`]: statement normalization (constants → `$n`), as pg_stat_statements does.
//! - [`latency`]: latency aggregation with percentiles.
//! - [`cli`]: shared command-line arguments and the interval clock.
//! - [`runtime`]: the life cycle every tool shares (start, live loop, final report, exit).
//! - [`records`]: the NDJSON vocabulary every tool's records follow.
pub mod bounded;
pub mod cgroup;
pub mod cli;
pub mod elf;
pub mod globals;
pub mod kernel_btf;
pub mod latency;
pub mod loader;
pub mod map_memory;
pub mod output;
pub mod perf;
pub mod periods;
pub mod pg_probes;
pub mod postgres;
pub mod procs;
pub mod query;
pub mod query_probes;
pub mod query_string;
pub mod records;
pub mod runtime;
pub mod server;
pub mod sql;
pub mod stacks;
pub mod system;
pub mod target;
pub mod tracefs;
pub mod usdt;
pub mod watch;
