//! What each tool is benchmarked under: the PostgreSQL set-up that makes its hooks fire, the
//! tool's arguments and the equivalent bpftrace script.

use pgbpf_testkit::{container::ContainerSpec, postgres::PgOptions};

use crate::server::Server;

/// A measurement of a scenario's own after the repetitions: markdown for its section.
pub type ExtraMeasurement =
    fn(&Server, &crate::Args, &std::path::Path, &Scenario) -> anyhow::Result<String>;

/// The server a scenario measures.
pub enum Setup {
    /// PostgreSQL with these options, `pgbench -i -s scale`, under pgbench.
    Postgres { pg: fn() -> PgOptions, scale: u32 },
    /// A redis-server under redis-benchmark (over its TLS port when `tls`).
    Redis { tls: bool },
}

/// One benchmark scenario.
pub struct Scenario {
    /// What `pgbpf-bench NAME` runs and its section in docs/PERFORMANCE.md: the tool's name,
    /// or the tool's name and what sets the scenario apart.
    pub name: &'static str,
    /// The binary measured.
    pub tool: &'static str,
    /// Said in docs/PERFORMANCE.md: what load and why.
    pub description: &'static str,
    /// The server measured and how it is set up.
    pub server: Setup,
    /// The measured load: pgbench's script option (-S select-only, -N simple-update, ...), or
    /// redis-benchmark's arguments.
    pub workload: &'static str,
    /// Field of the tool's `--json` summary that counts the events it handled (empty for
    /// the exporter, which prints no summary: see [`Scenario::is_exporter`]).
    pub events_field: &'static str,
    /// The tool's arguments for a running server.
    pub tool_args: fn(&Server) -> anyhow::Result<Vec<String>>,
    /// The bpftrace script, with placeholders filled in for a running server.
    pub bpftrace: fn(&Server) -> anyhow::Result<String>,
    /// A measurement of its own after the repetitions (markdown for the section).
    pub extra: Option<ExtraMeasurement>,
}

fn container_cgroup(server: &Server) -> anyhow::Result<(String, String)> {
    let c = server
        .pg()?
        .container
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("scenario needs a container"))?;
    let path = c.cgroup_path()?;
    let mount = pgbpf_common::cgroup::v2_mount()?;
    let dir = mount
        .join(path.trim_start_matches('/'))
        .display()
        .to_string();
    Ok((path, dir))
}

/// `-p POSTMASTER`.
fn postmaster_args(s: &Server) -> anyhow::Result<Vec<String>> {
    Ok(vec!["-p".into(), s.pg()?.postmaster_pid()?.to_string()])
}

/// The arguments with `--stack` added.
fn with_stack(args: anyhow::Result<Vec<String>>) -> anyhow::Result<Vec<String>> {
    let mut args = args?;
    args.push("--stack".into());
    Ok(args)
}

/// A bpftrace script with the server's postgres binary in place of `@POSTGRES@`.
fn postgres_script(s: &Server, script: &str) -> anyhow::Result<String> {
    let postgres = s.pg()?.bin_dir.join("postgres");
    Ok(script.replace("@POSTGRES@", &postgres.display().to_string()))
}

/// A server whose commits reach the disk (the harness turns fsync off for speed otherwise).
fn fsync_on() -> PgOptions {
    PgOptions {
        settings: vec![("fsync".into(), "on".into())],
        ..Default::default()
    }
}

pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "page_reclaim",
        tool: "page_reclaim",
        description: "PostgreSQL in a podman container limited to 160 MB, pgbench scale 20 (about \
                  300 MB): every pgbench -S read that misses the page cache makes the container \
                  reclaim, so reclaim episodes (two tracepoint hits each) run hundreds of times a \
                  second.",
        server: Setup::Postgres {
            pg: || PgOptions {
                container: Some(ContainerSpec {
                    memory: Some("160m".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            scale: 20,
        },
        workload: "-S",
        events_field: "episodes",
        tool_args: |s| Ok(vec!["--cgroup".into(), container_cgroup(s)?.0]),
        bpftrace: |s| {
            let (path, dir) = container_cgroup(s)?;
            Ok(include_str!("../bpftrace/page_reclaim.bt")
                .replace("@CGROUP_DIR@", &dir)
                .replace("@CGROUP@", &path))
        },
        extra: None,
    },
    Scenario {
        name: "query_latency",
        tool: "query_latency",
        description: "PostgreSQL on the host, pgbench scale 10, pgbench -S (simple protocol): every \
                  statement fires query__start and query__done (and PortalRun's \
                  query__execute__start/done), four USDT hits per statement for query_latency; \
                  the bpftrace script attaches query__start/done only, with \
                  --usdt-file-activation to raise the semaphores.",
        server: Setup::Postgres {
            pg: PgOptions::default,
            scale: 10,
        },
        workload: "-S",
        events_field: "calls",
        tool_args: postmaster_args,
        bpftrace: |s| postgres_script(s, include_str!("../bpftrace/query_latency.bt")),
        extra: None,
    },
    Scenario {
        name: "query_latency_extended",
        tool: "query_latency",
        description: "As query_latency, over the extended protocol (pgbench -S -M extended: \
                  Parse, Bind, Describe, Execute and Sync per statement): PortalRun's \
                  query__execute__start/done, two USDT hits per statement, for query_latency and \
                  for the bpftrace script, which keys nothing by statement: bpftrace cannot read \
                  debug_query_string in a position-independent postgres.",
        server: Setup::Postgres {
            pg: PgOptions::default,
            scale: 10,
        },
        workload: "-S -M extended",
        events_field: "calls",
        tool_args: postmaster_args,
        bpftrace: |s| postgres_script(s, include_str!("../bpftrace/query_latency_extended.bt")),
        extra: None,
    },
    Scenario {
        name: "pgwire_trace",
        tool: "pgwire_trace",
        description: "PostgreSQL on the host, pgbench scale 10, pgbench -S (simple protocol, one \
                  Query and one response per transaction, over the Unix socket): pgwire_trace -p \
                  POSTMASTER --summary copies every request and response to userspace and \
                  decodes it; the bpftrace script copies the first 64 bytes of every recvfrom/\
                  sendto of postgres processes to userspace (printf) without decoding.",
        server: Setup::Postgres {
            pg: PgOptions::default,
            scale: 10,
        },
        workload: "-S",
        events_field: "requests",
        tool_args: postmaster_summary_args,
        bpftrace: |_| Ok(include_str!("../bpftrace/pgwire_trace.bt").to_string()),
        extra: Some(crate::measure::decoder_throughput),
    },
    Scenario {
        name: "pgwire_trace_tls",
        tool: "pgwire_trace",
        description: "As pgwire_trace, over TCP with TLS (`ssl = on`, pgbench with \
                  `sslmode=require`): pgwire_trace reads the plaintext through uprobes on \
                  libssl's internal read and write functions (entry and return; their first \
                  instruction is one the kernel emulates) and copies none of the encrypted \
                  socket bytes; the bpftrace script attaches uprobes to SSL_read and SSL_write \
                  (whose first instruction is stepped) and copies the first 64 bytes of each \
                  call's plaintext. pgbench shares the server's libssl on this host, so its own \
                  TLS calls hit the breakpoints too.",
        server: Setup::Postgres {
            pg: || PgOptions {
                tls: true,
                ..Default::default()
            },
            scale: 10,
        },
        workload: "-S",
        events_field: "requests",
        tool_args: postmaster_summary_args,
        bpftrace: |s| tls_plaintext_script(s.pg()?.postmaster_pid()?, "postgres"),
        extra: None,
    },
    Scenario {
        name: "shmem",
        tool: "shmem",
        description: "PostgreSQL on the host with force_parallel_mode = on and parallel costs 0, \
                  pgbench scale 10, pgbench -S: every SELECT runs under a Gather, so every \
                  transaction creates a DSM segment (dsm_create, open, ftruncate, fallocate, \
                  mmap, unlink) and starts a parallel worker that attaches it: shmem's worst \
                  case, dozens of events per transaction. shmem -p POSTMASTER --json prints \
                  every event with backend type and statement; the bpftrace script prints the \
                  same calls with pid and size.",
        server: Setup::Postgres {
            pg: || PgOptions {
                settings: [
                    ("force_parallel_mode", "on"),
                    ("parallel_setup_cost", "0"),
                    ("parallel_tuple_cost", "0"),
                ]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
                ..Default::default()
            },
            scale: 10,
        },
        workload: "-S",
        events_field: "events",
        tool_args: postmaster_args,
        bpftrace: |s| postgres_script(s, include_str!("../bpftrace/shmem.bt")),
        extra: None,
    },
    Scenario {
        name: "llcache_per_query",
        tool: "llcache_per_query",
        description: "PostgreSQL on the host, pgbench scale 10, pgbench -S (simple protocol): \
                  llcache_per_query -p POSTMASTER -e cpu-clock takes a cpu-clock sample every ms \
                  on each CPU and charges it in the kernel to (process, statement, CPU), reading \
                  the statement from the sampled backend's debug_query_string: nothing runs per \
                  statement (this VM has no PMU, so cpu-clock stands in for the cache events: \
                  the same program per sample). The bpftrace script keeps the text from \
                  query__start/done (two USDT hits per statement) and counts profile:hz:1000 \
                  samples of postgres processes by pid, text and CPU.",
        server: Setup::Postgres {
            pg: PgOptions::default,
            scale: 10,
        },
        workload: "-S",
        events_field: "samples",
        tool_args: |s| {
            let pg = s.pg()?;
            Ok(vec![
                "-p".into(),
                pg.postmaster_pid()?.to_string(),
                "-e".into(),
                "cpu-clock".into(),
            ])
        },
        bpftrace: |s| postgres_script(s, include_str!("../bpftrace/llcache_per_query.bt")),
        extra: None,
    },
    Scenario {
        name: "io_timeouts",
        tool: "io_timeouts",
        description: "PostgreSQL on the host, pgbench scale 10, pgbench -N (simple-update: an \
                  UPDATE, a SELECT and an INSERT per transaction, fsync on: each commit a WAL write and flush): \
                  io_timeouts -p POSTMASTER --block follows every block request the backends \
                  issue to its completion, besides the dirty-throttling, reclaim and writeback \
                  tracepoints (which fire rarely at the default vm.dirty_* settings); the \
                  bpftrace script does the same per process, without statements.",
        server: Setup::Postgres {
            pg: fsync_on,
            scale: 10,
        },
        workload: "-N",
        events_field: "events",
        tool_args: |s| {
            let pg = s.pg()?;
            Ok(vec![
                "-p".into(),
                pg.postmaster_pid()?.to_string(),
                "--block".into(),
            ])
        },
        bpftrace: |_| Ok(include_str!("../bpftrace/io_timeouts.bt").to_string()),
        extra: None,
    },
    Scenario {
        name: "lwlocks",
        tool: "lwlocks",
        description: "PostgreSQL on the host, pgbench scale 10, pgbench -N with fsync on (each \
                  commit a WAL flush the other client may queue behind on WALWrite): lwlocks -p \
                  POSTMASTER attaches the lwlock__wait__start/done USDT sites (two traps per \
                  sleep, none on the fast path) and reads the statement per wait; the bpftrace \
                  script keeps a histogram per tranche name and mode in the kernel.",
        server: Setup::Postgres {
            pg: fsync_on,
            scale: 10,
        },
        workload: "-N",
        events_field: "events",
        tool_args: postmaster_args,
        bpftrace: |s| postgres_script(s, include_str!("../bpftrace/lwlocks.bt")),
        extra: None,
    },
    Scenario {
        name: "lwlocks_stack",
        tool: "lwlocks",
        description: "As lwlocks, with --stack: each wait's user stack taken in the kernel \
                  (a frame-pointer walk into the stack map) and symbolized once per distinct \
                  stack by blazesym; the bpftrace script sums the time asleep per tranche and \
                  user stack (ustack) in the kernel.",
        server: Setup::Postgres {
            pg: fsync_on,
            scale: 10,
        },
        workload: "-N",
        events_field: "events",
        tool_args: |s| with_stack(postmaster_args(s)),
        bpftrace: |s| postgres_script(s, include_str!("../bpftrace/lwlocks_stack.bt")),
        extra: None,
    },
    Scenario {
        name: "lwlocks_hold",
        tool: "lwlocks",
        description: "As lwlocks, with --hold: also the lwlock__acquire, __condacquire, \
                  __acquire__or__wait and __release USDT sites, a trap at every LWLock \
                  acquisition and release (fast path included), the holds paired per thread \
                  and summed per tranche and mode in the kernel; the bpftrace script adds the \
                  same probes with a histogram per tranche.",
        server: Setup::Postgres {
            pg: fsync_on,
            scale: 10,
        },
        workload: "-N",
        events_field: "events",
        tool_args: |s| {
            let mut args = postmaster_args(s)?;
            args.push("--hold".into());
            Ok(args)
        },
        bpftrace: |s| postgres_script(s, include_str!("../bpftrace/lwlocks_hold.bt")),
        extra: None,
    },
    Scenario {
        name: "wal_per_query",
        tool: "wal_per_query",
        description: "PostgreSQL on the host, pgbench scale 10, pgbench -N (an UPDATE and an \
                  INSERT per transaction, each writing WAL): wal_per_query -p POSTMASTER \
                  attaches query__execute__start/done (two traps per statement, reading the \
                  process's pgWalUsage at each) and wal__insert (a trap per WAL record), and \
                  sends an event per statement that wrote WAL; the bpftrace script attaches the \
                  same probes and counts executions and records per resource manager in the \
                  kernel.",
        server: Setup::Postgres {
            pg: PgOptions::default,
            scale: 10,
        },
        workload: "-N",
        events_field: "events",
        tool_args: postmaster_args,
        bpftrace: |s| postgres_script(s, include_str!("../bpftrace/wal_per_query.bt")),
        extra: None,
    },
    Scenario {
        name: "working_set",
        tool: "working_set",
        description: "PostgreSQL on the host, pgbench scale 10, pgbench -S (an index lookup per \
                  transaction: some four buffer accesses): working_set -p POSTMASTER attaches \
                  buffer__read__done (a trap per buffer access) and adds each access to its \
                  block's and its relation's counts in kernel hash maps; the bpftrace script \
                  attaches the same probe and counts per block and per relation in its maps.",
        server: Setup::Postgres {
            pg: PgOptions::default,
            scale: 10,
        },
        workload: "-S",
        events_field: "accesses",
        tool_args: postmaster_args,
        bpftrace: |s| postgres_script(s, include_str!("../bpftrace/working_set.bt")),
        extra: None,
    },
    Scenario {
        name: "write_per_type",
        tool: "write_per_type",
        description: "PostgreSQL on the host with fsync on, pgbench scale 10, pgbench -N (each \
                  commit writes and fdatasyncs the WAL; the checkpointer and background writer \
                  write relation data): write_per_type -p POSTMASTER attaches the openat, close, \
                  write/pwrite64/writev/pwritev/pwritev2 and fsync/fdatasync tracepoints and sums \
                  bytes and sync time per open file in a kernel hash map, an event per open; the \
                  bpftrace script attaches the same tracepoints and sums per process and \
                  descriptor, keeping each open's path.",
        server: Setup::Postgres {
            pg: fsync_on,
            scale: 10,
        },
        workload: "-N",
        events_field: "writes",
        tool_args: postmaster_args,
        bpftrace: |s| postgres_script(s, include_str!("../bpftrace/write_per_type.bt")),
        extra: None,
    },
    Scenario {
        name: "net_per_query",
        tool: "net_per_query",
        description: "PostgreSQL on the host, pgbench scale 10, pgbench -S (a one-row SELECT \
                  per transaction: one request and one response each): net_per_query -p \
                  POSTMASTER attaches query__start and query__done (two traps per statement) \
                  and the socket layer's sock_recv_length/sock_send_length (every socket call \
                  on the machine, filtered in the kernel), counts per thread and sends an event \
                  per statement; the bpftrace script attaches the same probes and sums bytes per \
                  statement text in its maps.",
        server: Setup::Postgres {
            pg: PgOptions::default,
            scale: 10,
        },
        workload: "-S",
        events_field: "events",
        tool_args: postmaster_args,
        bpftrace: |s| postgres_script(s, include_str!("../bpftrace/net_per_query.bt")),
        extra: None,
    },
    Scenario {
        name: "net_per_query_dev",
        tool: "net_per_query",
        description: "As net_per_query, with pgbench over TCP on the loopback device and \
                  --dev: net_dev_start_xmit, net_dev_xmit and netif_receive_skb too (each \
                  packet counted per device, direction and CPU, its TCP port read from its \
                  headers and looked up among the server's listening ports); the bpftrace \
                  script adds net_dev_xmit and netif_receive_skb to net_per_query's, summing \
                  the tracepoints' lengths per device name.",
        server: Setup::Postgres {
            pg: PgOptions::default,
            scale: 10,
        },
        workload: "-S -h 127.0.0.1",
        events_field: "events",
        tool_args: |s| {
            let mut args = postmaster_args(s)?;
            args.push("--dev".into());
            Ok(args)
        },
        bpftrace: |s| {
            postgres_script(
                s,
                concat!(
                    include_str!("../bpftrace/net_per_query.bt"),
                    include_str!("../bpftrace/net_per_query_dev.bt")
                ),
            )
        },
        extra: None,
    },
    Scenario {
        name: "working_set_sample",
        tool: "working_set",
        description: "As working_set, with --sample 10: the program counts one access in ten \
                  per CPU and returns at once for the others (the trap remains); the bpftrace \
                  script counts every access.",
        server: Setup::Postgres {
            pg: PgOptions::default,
            scale: 10,
        },
        workload: "-S",
        events_field: "accesses",
        tool_args: |s| {
            let mut args = postmaster_args(s)?;
            args.extend(["--sample".into(), "10".into()]);
            Ok(args)
        },
        bpftrace: |s| postgres_script(s, include_str!("../bpftrace/working_set.bt")),
        extra: None,
    },
    Scenario {
        name: "wal_per_query_system",
        tool: "wal_per_query",
        description: "As wal_per_query, with fsync on and --system: the openat, close, write \
                  and fsync syscall tracepoints too, the writes and syncs of pg_wal descriptors \
                  timed and summed per process in the kernel; the bpftrace script adds the same \
                  tracepoints to wal_per_query's.",
        server: Setup::Postgres {
            pg: fsync_on,
            scale: 10,
        },
        workload: "-N",
        events_field: "events",
        tool_args: |s| {
            let mut args = postmaster_args(s)?;
            args.push("--system".into());
            Ok(args)
        },
        bpftrace: |s| postgres_script(s, include_str!("../bpftrace/wal_per_query_system.bt")),
        extra: None,
    },
    Scenario {
        name: "locks",
        tool: "locks",
        description: "PostgreSQL on the host, pgbench scale 1, the default TPC-B-like script \
                  (each transaction updates the one branch row: the other client waits for it, \
                  a ShareLock on the holder's transaction id): locks -p POSTMASTER attaches the \
                  lock__wait__start/done and deadlock__found USDT sites (two traps per wait) and \
                  reads the statement at both ends; the bpftrace script keeps a histogram per \
                  lock type and mode in the kernel.",
        server: Setup::Postgres {
            pg: PgOptions::default,
            scale: 1,
        },
        workload: "-b tpcb-like",
        events_field: "events",
        tool_args: postmaster_args,
        bpftrace: |s| postgres_script(s, include_str!("../bpftrace/locks.bt")),
        extra: None,
    },
    Scenario {
        name: "cpu_wait",
        tool: "cpu_wait",
        description: "PostgreSQL on the host, pgbench scale 1, pgbench -S with 2 clients (each \
                  select a wakeup of the backend, a run-queue wait and a sleep waiting for the \
                  client: the most context switches per second of any load here): cpu_wait -p \
                  POSTMASTER attaches the scheduler's raw tracepoints for the whole machine, \
                  reads the statement and wait event at each switch of a backend and sends one \
                  event per stretch off the CPU; the bpftrace script keeps a run-queue histogram \
                  per pid and migrations in the kernel from the classic sched tracepoints.",
        server: Setup::Postgres {
            pg: PgOptions::default,
            scale: 1,
        },
        workload: "-S",
        events_field: "events",
        tool_args: postmaster_args,
        bpftrace: |_| Ok(include_str!("../bpftrace/cpu_wait.bt").to_string()),
        extra: None,
    },
    Scenario {
        name: "cpu_wait_stack",
        tool: "cpu_wait",
        description: "As cpu_wait, with --stack: the kernel and user stacks of each backend \
                  leaving the CPU taken at the switch (two stack walks) and symbolized once per \
                  distinct stack; the bpftrace script is bcc's offcputime: time off the CPU per \
                  kernel and user stack summed in the kernel (a sched_switch tracepoint and a \
                  kprobe on finish_task_switch).",
        server: Setup::Postgres {
            pg: PgOptions::default,
            scale: 1,
        },
        workload: "-S",
        events_field: "events",
        tool_args: |s| with_stack(postmaster_args(s)),
        bpftrace: |_| Ok(include_str!("../bpftrace/cpu_wait_stack.bt").to_string()),
        extra: None,
    },
    Scenario {
        name: "spin_sema",
        tool: "spin_sema",
        description: "PostgreSQL on the host, pgbench scale 1, the default TPC-B-like script \
                  (each transaction updates the one branch row: backends queue for its buffer \
                  lock and the WAL locks and sleep on their semaphores): spin_sema -p \
                  POSTMASTER puts uprobes at the entry and return of s_lock and \
                  PGSemaphoreLock and times futex waits from the syscall tracepoints, with the \
                  statement per wait; the bpftrace script keeps a histogram per kind in the \
                  kernel.",
        server: Setup::Postgres {
            pg: PgOptions::default,
            scale: 1,
        },
        workload: "-b tpcb-like",
        events_field: "events",
        tool_args: postmaster_args,
        bpftrace: |s| postgres_script(s, include_str!("../bpftrace/spin_sema.bt")),
        extra: None,
    },
    Scenario {
        name: "redis_trace",
        tool: "redis_trace",
        description: "redis-server on the host, redis-benchmark -t set,get with 2 clients, no \
                  pipelining (one request and one reply per round trip over TCP): redis_trace -p \
                  PID --summary copies every command and reply to userspace and decodes it; the \
                  bpftrace script copies the first 64 bytes of every read and write of \
                  redis-server to userspace (printf) without decoding. Rates are requests per \
                  second (the tps column).",
        server: Setup::Redis { tls: false },
        workload: "-t set,get -P 1",
        events_field: "commands",
        tool_args: redis_summary_args,
        bpftrace: |_| Ok(include_str!("../bpftrace/redis_trace.bt").to_string()),
        extra: Some(crate::measure::decoder_throughput),
    },
    Scenario {
        name: "redis_trace_pipelined",
        tool: "redis_trace",
        description: "As redis_trace, with 16 requests pipelined per round trip \
                  (redis-benchmark -P 16): a read carries 16 commands and a write their 16 \
                  replies, so the rate is ten times higher and the cost is mostly the decoding \
                  in userspace, which competes with redis-server and redis-benchmark for this \
                  machine's two cores.",
        server: Setup::Redis { tls: false },
        workload: "-t set,get -P 16",
        events_field: "commands",
        tool_args: redis_summary_args,
        bpftrace: |_| Ok(include_str!("../bpftrace/redis_trace.bt").to_string()),
        extra: Some(crate::measure::decoder_throughput),
    },
    Scenario {
        name: "redis_trace_tls",
        tool: "redis_trace",
        description: "As redis_trace, over redis-server's TLS port (`--tls-port`, redis-benchmark \
                  --tls): redis_trace reads the plaintext through uprobes on libssl's internal \
                  read and write functions (entry and return) and copies none of the encrypted \
                  socket bytes; the bpftrace script attaches uprobes to SSL_read and SSL_write of \
                  redis-server and copies the first 64 bytes of each call's plaintext. \
                  redis-benchmark shares the server's libssl on this host, so its own TLS calls \
                  hit the breakpoints too.",
        server: Setup::Redis { tls: true },
        workload: "-t set,get -P 1",
        events_field: "commands",
        tool_args: redis_summary_args,
        bpftrace: |s| tls_plaintext_script(s.redis()?.pid(), "redis-server"),
        extra: None,
    },
    Scenario {
        name: "pgbpf_exporter",
        tool: "pgbpf_exporter",
        description: "PostgreSQL on the host, pgbench scale 10, pgbench -S (simple protocol): \
                  pgbpf_exporter with its default collectors (query_latency: four USDT hits per \
                  statement, an event per statement into a per-statement histogram; \
                  page_reclaim and io_timeouts: vmscan and writeback tracepoints, quiet under this \
                  load; shmem: shared-memory syscall tracepoints, filtered to postgres in the \
                  kernel) and its default BPF run-time statistics on; the bpftrace script keeps a \
                  histogram per statement text and cgroup from query__start/done, the same \
                  reclaim and throttling sums per cgroup and postgres' shared-memory syscall \
                  counts per cgroup and result in the kernel.",
        server: Setup::Postgres {
            pg: PgOptions::default,
            scale: 10,
        },
        workload: "-S",
        events_field: "",
        tool_args: |_| {
            let port = pgbpf_testkit::postgres::free_port()?;
            Ok(vec!["--listen".into(), format!("127.0.0.1:{port}")])
        },
        bpftrace: |s| postgres_script(s, include_str!("../bpftrace/pgbpf_exporter.bt")),
        extra: Some(crate::measure::exporter_collectors),
    },
];

/// The scenarios and pg_replay's benchmark (of its own: it traces nothing).
pub fn names() -> Vec<&'static str> {
    SCENARIOS
        .iter()
        .map(|s| s.name)
        .chain(["pg_replay"])
        .collect()
}

impl Scenario {
    /// The exporter serves metrics instead of printing records: it has no `--json` and says
    /// [`EXPORTER_READY`] once attached.
    pub fn is_exporter(&self) -> bool {
        self.tool == "pgbpf_exporter"
    }
}

/// What pgbpf_exporter prints on stderr once its collectors are attached.
pub const EXPORTER_READY: &str = "serving http";

pub fn find(tool: &str) -> Option<&'static Scenario> {
    SCENARIOS.iter().find(|s| s.name == tool)
}

/// The bpftrace script of the TLS scenarios: SSL_read/SSL_write of the libssl that server
/// process `pid` maps, in the processes named `comm`.
fn tls_plaintext_script(pid: u32, comm: &str) -> anyhow::Result<String> {
    let lib = pgbpf_capture::tls::libssl_of(pid)
        .ok_or_else(|| anyhow::anyhow!("PID {pid} ({comm}) maps no libssl"))?;
    Ok(include_str!("../bpftrace/tls_plaintext.bt")
        .replace("@LIBSSL@", &lib)
        .replace("@COMM@", comm))
}

/// `pgwire_trace -p POSTMASTER --summary` for the bench's PostgreSQL.
fn postmaster_summary_args(s: &Server) -> anyhow::Result<Vec<String>> {
    Ok(vec![
        "-p".into(),
        s.pg()?.postmaster_pid()?.to_string(),
        "--summary".into(),
    ])
}

/// `redis_trace -p PID --summary` for the bench's redis-server.
fn redis_summary_args(s: &Server) -> anyhow::Result<Vec<String>> {
    Ok(vec![
        "-p".into(),
        s.redis()?.pid().to_string(),
        "--summary".into(),
    ])
}
