//! shmem's NDJSON records (docs/schema/shmem.json): the `snapshot` of each PostgreSQL
//! instance (or other process) at start, an `event` per traced call, each interval's
//! `interval` and the run's `summary`. Field names follow `pgbpf_common::records`.

use schemars::JsonSchema;
use serde::Serialize;

/// Every line shmem prints with `--json`.
#[derive(Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record<'a> {
    /// What shared memory there is at start: a PostgreSQL instance, or another process.
    Snapshot(Snapshot<'a>),
    /// One traced call (syscall or PostgreSQL function) and how it ended.
    Event(Event<'a>),
    /// The end of an interval report: what the interval's calls made.
    Interval(Totals<'a>),
    /// The end of the run.
    Summary(Totals<'a>),
}

/// A snapshot of an instance (`postgres: true`) or of another process (`postgres: false`).
#[derive(Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Snapshot<'a> {
    Instance(InstanceSnapshot<'a>),
    Process(ProcessSnapshot<'a>),
}

/// A PostgreSQL instance: its postmaster and the processes below it (`postgres: true`).
#[derive(Serialize, JsonSchema)]
pub struct InstanceSnapshot<'a> {
    pub ts_ns: u64,
    /// Always true: a PostgreSQL instance.
    pub postgres: bool,
    /// The postmaster.
    pub pid: u32,
    /// The postmaster's working directory: its data directory.
    pub data_dir: &'a str,
    /// The anonymous shared mapping that holds PostgreSQL's main shared memory.
    pub main_segment: MainSegment,
    /// The SysV header segment (id and attach count only when in shmem's IPC namespace).
    pub sysv: Option<Sysv>,
    /// DSM segments in the /dev/shm the instance sees.
    pub dsm: Vec<DsmSegment<'a>>,
    /// The instance's /dev/shm (its own mount namespace), when readable.
    pub dev_shm: Option<Space>,
    pub huge_pages: HugePages,
    /// The postmaster first, then its children.
    pub processes: Vec<ProcessShared<'a>>,
}

/// A process that is not part of a PostgreSQL instance (`postgres: false`).
#[derive(Serialize, JsonSchema)]
pub struct ProcessSnapshot<'a> {
    pub ts_ns: u64,
    /// Always false: a process that is not part of a PostgreSQL instance.
    pub postgres: bool,
    pub pid: u32,
    /// What is and is not shown for such a process.
    pub note: String,
    pub process: ProcessShared<'a>,
    /// Its shared mappings (smaps entries with the `s` permission).
    pub mappings: Vec<Mapping<'a>>,
    /// The /dev/shm the process sees, when readable.
    pub dev_shm: Option<Space>,
}

#[derive(Serialize, JsonSchema)]
pub struct MainSegment {
    /// Its size.
    pub size_bytes: u64,
    /// The size of its pages (2 MiB or more with huge pages).
    pub page_size_bytes: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct Sysv {
    /// The key, as hex (0x0052e2c1).
    pub key: String,
    /// The shmid.
    pub id: Option<u64>,
    /// Its size.
    pub size_bytes: u64,
    /// Processes attached to it (nattch).
    pub attached: Option<u64>,
}

#[derive(Serialize, JsonSchema)]
pub struct DsmSegment<'a> {
    /// As PostgreSQL names it: /PostgreSQL.123.
    pub name: &'a str,
    /// Its size.
    pub size_bytes: u64,
    /// Blocks the file has (its real use of /dev/shm).
    pub allocated_bytes: u64,
}

/// A filesystem's size and use (statvfs).
#[derive(Serialize, JsonSchema)]
pub struct Space {
    /// The filesystem's size (a container's /dev/shm: 64 MiB unless set).
    pub size_bytes: u64,
    /// In use.
    pub used_bytes: u64,
    /// Available to unprivileged users.
    pub free_bytes: u64,
}

/// The machine's huge pages (/proc/meminfo).
#[derive(Serialize, JsonSchema)]
pub struct HugePages {
    /// HugePages_Total: huge pages set aside.
    pub total: u64,
    /// HugePages_Free.
    pub free: u64,
    /// HugePages_Rsvd: promised to a mapping, not yet faulted in.
    pub reserved: u64,
    /// Hugepagesize.
    pub page_size_bytes: u64,
    /// Shared memory backed by transparent huge pages.
    pub shmem_huge_bytes: u64,
}

/// A process's resident shared memory (smaps).
#[derive(Serialize, JsonSchema)]
pub struct ProcessShared<'a> {
    pub pid: u32,
    pub backend_type: &'a str,
    /// Resident shared memory (RSS of its shared mappings).
    pub shared_rss_bytes: u64,
    /// Its proportional share (PSS): shared pages divided among the processes mapping them.
    pub shared_pss_bytes: u64,
    /// Resident part of the main segment.
    pub main_rss_bytes: u64,
    /// Resident part of DSM segments.
    pub dsm_rss_bytes: u64,
    /// Resident part of the SysV segment.
    pub sysv_rss_bytes: u64,
}

/// One shared mapping of a process.
#[derive(Serialize, JsonSchema)]
pub struct Mapping<'a> {
    /// What is mapped: a file, /dev/zero, [anon_shmem], /SYSV..., memfd:...
    pub path: &'a str,
    /// The mapping's length.
    pub size_bytes: u64,
    /// Resident.
    pub rss_bytes: u64,
    /// Proportional share of the resident pages (PSS).
    pub pss_bytes: u64,
    /// The size of its pages.
    pub page_size_bytes: u64,
}

#[derive(Clone, Serialize, JsonSchema)]
pub struct Event<'a> {
    /// When the call began.
    pub ts_ns: u64,
    pub pid: u32,
    pub tid: u32,
    /// The pid inside the target's pid namespace (a container's own numbering).
    pub ns_pid: Option<u32>,
    pub backend_type: &'a str,
    /// A parallel worker's leader.
    pub leader_pid: Option<u32>,
    /// open, ftruncate, fallocate, mmap, unlink, memfd_create, shmget, shmat, shmdt, shmctl,
    /// dsm_create, PGSharedMemoryCreate.
    pub call: &'a str,
    /// The segment: /PostgreSQL.N, anonymous, SysV key ..., main segment, ...
    pub segment: &'a str,
    /// The size asked for (ftruncate, fallocate, mmap, shmget, dsm_create).
    pub size_bytes: u64,
    /// create or attach (open), offset and mode (fallocate), the command (shmctl).
    pub detail: &'a str,
    /// ok, fd N, an address, id N, an errno name (ENOSPC), or - for function calls.
    pub result: String,
    /// The raw result: negative errno, or the fd, address or id.
    pub ret: i64,
    /// The error number of a failed syscall.
    pub errno: Option<i64>,
    /// A syscall that returned an error.
    pub failed: bool,
    pub duration_ns: u64,
    /// The size of the tmpfs written to, when the call began.
    pub dev_shm_size_bytes: Option<u64>,
    /// Its free space then.
    pub dev_shm_free_bytes: Option<u64>,
    pub query: &'a str,
    /// The caller's user stack, innermost frame first: `function+0xoffset (file)`, or
    /// `file+0xoffset` where no symbol covers the address (`--stack`; null without it).
    pub user_stack: Option<Vec<&'a str>>,
}

#[derive(Serialize, JsonSchema)]
pub struct Totals<'a> {
    pub ts_ns: u64,
    /// The report's period: the interval, or the whole run in the summary.
    pub interval_ns: u64,
    /// Calls seen in the period.
    pub events: u64,
    /// MAP_SHARED mappings made, by process.
    pub mmap: Vec<ProcessBytes<'a>>,
    /// SysV segments created, by process.
    pub anon_shm: Vec<ProcessBytes<'a>>,
    /// POSIX segments: the largest size each was given.
    pub shm: Vec<SegmentBytes<'a>>,
    /// The failed calls of the period.
    pub failures: Vec<Event<'a>>,
    pub lost: Lost,
}

#[derive(Serialize, JsonSchema)]
pub struct ProcessBytes<'a> {
    pub pid: u32,
    pub backend_type: &'a str,
    /// Their sizes together.
    pub bytes: u64,
    pub calls: u64,
}

#[derive(Serialize, JsonSchema)]
pub struct SegmentBytes<'a> {
    /// The segment, as PostgreSQL names it.
    pub segment: &'a str,
    /// The largest size it was given.
    pub bytes: u64,
}

/// Calls not seen completely since the tool attached.
#[derive(Serialize, JsonSchema)]
pub struct Lost {
    /// The ring buffer was full.
    pub ringbuf_full: u64,
    /// The table of calls in flight was full.
    pub pending_full: u64,
    /// The table of file names was full (the call is shown without its segment name).
    pub fds_full: u64,
    /// Stacks the kernel could not store (`--stack`).
    pub stacks: u64,
}
