//! What ends a trace, or moves it on, when what it traces goes away: the processes given with
//! `--pid` (the trace ends when all have exited), a server named by `--pgdata` or `--port`
//! (followed to its new postmaster after a restart or a crash), the cgroup of `--cgroup`,
//! `--container` or `--pod` (followed to its new cgroup when a restarted container gets one;
//! the trace ends when none comes back). Checked by the runtime's live loop.

use std::{
    os::unix::fs::MetadataExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    cgroup::Named,
    output, procs,
    server::Server,
    target::{self, CgroupMap, TgidMap},
};

/// How long the live loop sleeps at most: short, so Ctrl-C and reports are prompt.
pub const WAKE: Duration = Duration::from_millis(50);
/// How often watched processes and cgroups are checked (a read of /proc/PID/stat each, a
/// stat of the cgroup's directory): at every wake, so that a restarted server's new
/// postmaster is followed before it accepts its first connection.
const WATCH_EVERY: Duration = WAKE;
/// How often a server that exited is looked for: before its new postmaster accepts its first
/// connection (a restarted server takes 100 ms or more to get there).
const SERVER_LOOK_EVERY: Duration = Duration::from_millis(10);
/// How long after a server's exit it is looked for that often (then every [`WATCH_EVERY`]):
/// a restart is quick; a server stopped for good should not cost a /proc scan every 10 ms.
const SERVER_LOOK_FAST_FOR: Duration = Duration::from_secs(10);
/// How long a restarted server is waited for to say it is ready before the tools that read
/// what it set up (shared memory, listening ports) look anyway.
const SERVER_READY_WITHIN: Duration = Duration::from_secs(30);
/// How long a removed cgroup is waited for: a restarted container's new one comes within a
/// second or two of the old one's removal.
const CGROUP_BACK_WITHIN: Duration = Duration::from_secs(5);

/// What a trace watches, from [`crate::target::Target::watched`].
#[derive(Clone, Debug, Default)]
pub struct Watched {
    /// The processes given with `--pid`: the trace ends when all have exited.
    pub pids: Vec<u32>,
    pub cgroup: Option<WatchedCgroup>,
    /// The servers followed, each with its main process now.
    pub servers: Vec<(u32, Server)>,
    /// The kernel's tgid filter, where a restarted server's processes are added.
    pub tgid_map: Option<TgidMap>,
}

/// The cgroup of `--cgroup`, `--container` or `--pod`.
#[derive(Clone, Debug)]
pub struct WatchedCgroup {
    /// Its directory and id (the directory's inode): removed, or replaced by a new one of the
    /// same path, the id no longer matches.
    pub dir: PathBuf,
    pub id: u64,
    /// Its depth, which the kernel filter compares at: a new cgroup must be as deep.
    pub level: u32,
    /// How to name it: "container 3f2a1b2c3d4e's cgroup", "cgroup /x".
    pub what: String,
    /// How to find it again, and the kernel's map to write its new id in (None: not followed).
    pub named: Option<Named>,
    pub map: Option<CgroupMap>,
}

impl WatchedCgroup {
    fn present(&self) -> bool {
        std::fs::metadata(&self.dir).is_ok_and(|m| m.ino() == self.id)
    }
}

/// A followed server's main process while it is away, and after it failed to be followed.
const SERVER_AWAY: u32 = 0;
const SERVER_LOST: u32 = u32::MAX;

/// The live loop's view of [`Watched`].
pub(crate) struct Watch<'t> {
    tool: &'t str,
    watched: Watched,
    gone: Vec<u32>,
    last_check: Instant,
    /// Since when the cgroup has been missing (waiting for it to be back).
    cgroup_away: Option<Instant>,
    /// When a server last went away.
    servers_away: Option<Instant>,
    cgroup_gone: bool,
    /// Processes added to the filter since the loop last looked (a restarted server's, a
    /// restarted container's).
    pub followed: Vec<u32>,
    /// Restarted servers' main processes followed, not ready yet, and since when.
    starting: Vec<(u32, Instant)>,
    /// Restarted servers that became ready since the loop last looked (or were waited for
    /// long enough): each main process, with it and its descendants then.
    pub ready: Vec<ServerReady>,
}

/// A restarted server to read again.
#[derive(Debug)]
pub struct ServerReady {
    pub main: u32,
    /// The main process and those it runs.
    pub processes: Vec<u32>,
    /// It said it is ready (false: not within [`SERVER_READY_WITHIN`]).
    pub said: bool,
}

impl<'t> Watch<'t> {
    pub fn new(tool: &'t str, watched: Watched) -> Watch<'t> {
        Watch {
            tool,
            watched,
            gone: vec![],
            last_check: Instant::now(),
            cgroup_away: None,
            servers_away: None,
            cgroup_gone: false,
            followed: vec![],
            starting: vec![],
            ready: vec![],
        }
    }

    /// True once nothing is left to trace (said on stderr, with the time).
    pub fn all_gone(&mut self) -> bool {
        if self.cgroup_gone || self.last_check.elapsed() < self.look_every() {
            return self.cgroup_gone || self.processes_gone();
        }
        self.last_check = Instant::now();
        self.follow_servers();
        self.servers_ready();
        if self.cgroup_ended() {
            self.cgroup_gone = true;
            return true;
        }
        for &pid in &self.watched.pids {
            if self.gone.contains(&pid) || procs::alive(pid) {
                continue;
            }
            self.gone.push(pid);
            let next = if self.processes_gone() {
                "nothing left to trace: the summary of what was seen follows"
            } else {
                "still tracing the others"
            };
            eprintln!(
                "{}: PID {pid} exited at {}; {next}",
                self.tool,
                output::hms_now()
            );
        }
        self.processes_gone()
    }

    /// Every `--pid` exited and every server lost (one followed, away or not, keeps the
    /// trace going), when there were any.
    fn processes_gone(&self) -> bool {
        let servers = &self.watched.servers;
        (!self.watched.pids.is_empty() || !servers.is_empty())
            && self.gone.len() == self.watched.pids.len()
            && servers.iter().all(|(pid, _)| *pid == SERVER_LOST)
    }

    /// How long the loop may wait before the next look: short while a server went away not
    /// long ago (a restart).
    pub fn next_look(&self) -> Duration {
        self.look_every().min(WAKE)
    }

    fn look_every(&self) -> Duration {
        if self
            .servers_away
            .is_some_and(|since| since.elapsed() < SERVER_LOOK_FAST_FOR)
        {
            SERVER_LOOK_EVERY
        } else {
            WATCH_EVERY
        }
    }

    /// Whether the cgroup is gone for good: removed and not back (a new cgroup of the same
    /// name, as deep) within [`CGROUP_BACK_WITHIN`]. A new one is followed: its id written
    /// to the kernel's filter, its processes handed on in `followed`.
    fn cgroup_ended(&mut self) -> bool {
        let tool = self.tool;
        let Some(cg) = self.watched.cgroup.as_mut() else {
            return false;
        };
        if cg.present() {
            return false;
        }
        let followable = cg.named.is_some() && cg.map.is_some();
        let since = *self.cgroup_away.get_or_insert_with(|| {
            let next = if followable {
                format!(
                    "waiting up to {} s for it to be back",
                    CGROUP_BACK_WITHIN.as_secs()
                )
            } else {
                "nothing left to trace: the summary of what was seen follows".into()
            };
            eprintln!(
                "{tool}: the {} was removed at {}; {next}",
                cg.what,
                output::hms_now()
            );
            Instant::now()
        });
        let (Some(named), Some(map)) = (&cg.named, &cg.map) else {
            return true;
        };
        match named.find() {
            Ok(new) if new.id != cg.id && new.level == cg.level => {
                if let Err(e) = map.set(new.id) {
                    eprintln!("{tool}: cannot follow the new cgroup {}: {e:#}", new.path);
                    return true;
                }
                eprintln!(
                    "{tool}: the {} is back at {}: following its new cgroup {}",
                    cg.what,
                    output::hms_now(),
                    new.path
                );
                cg.dir = new.dir;
                cg.id = new.id;
                self.cgroup_away = None;
                self.followed.extend(crate::postgres::procs_below(&cg.dir));
                false
            }
            Ok(new) if new.id != cg.id => {
                eprintln!(
                    "{tool}: the {} is back at another depth ({}); the kernel filter cannot \
                     follow it: the summary of what was seen follows",
                    cg.what, new.path
                );
                true
            }
            _ if since.elapsed() < CGROUP_BACK_WITHIN => false,
            _ => {
                eprintln!(
                    "{tool}: the {} did not come back within {} s; the summary of what was \
                     seen follows",
                    cg.what,
                    CGROUP_BACK_WITHIN.as_secs()
                );
                true
            }
        }
    }

    /// Moves the restarted servers that are ready (or gone, or waited for long enough) from
    /// `starting` to `ready`, with the processes they run now.
    fn servers_ready(&mut self) {
        let mut i = 0;
        while let Some(&(pid, since)) = self.starting.get(i) {
            let alive = procs::alive(pid);
            let said = alive && crate::server::ready(pid);
            if alive && !said && since.elapsed() < SERVER_READY_WITHIN {
                i += 1;
                continue;
            }
            self.starting.swap_remove(i);
            if alive {
                let mut processes = vec![pid];
                processes.extend(procs::descendants(&[pid]));
                self.ready.push(ServerReady {
                    main: pid,
                    processes,
                    said,
                });
            }
        }
    }

    /// Says that a restarted server is ready and was read again (after the trace's
    /// [`Trace::server_ready`](crate::runtime::Trace::server_ready)).
    pub fn said_ready(&self, server: &ServerReady) {
        let (tool, pid, now) = (self.tool, server.main, output::hms_now());
        if server.said {
            eprintln!("{tool}: the server's new main process PID {pid} is ready at {now}");
        } else {
            eprintln!(
                "{tool}: the server's new main process PID {pid} has not said it is ready \
                 within {} s (its postmaster.pid); read as it is at {now}",
                SERVER_READY_WITHIN.as_secs()
            );
        }
    }

    /// Says when a followed server's main process exits, and when the server is back adds
    /// its new main process and those it forked already to the kernel's filter (the ones it
    /// forks later are followed by the kernel's fork hook).
    fn follow_servers(&mut self) {
        let tool = self.tool;
        for (pid, server) in &mut self.watched.servers {
            if *pid != SERVER_AWAY && *pid != SERVER_LOST && !procs::alive(*pid) {
                eprintln!(
                    "{tool}: PID {pid}, the server of {server}, exited at {}; waiting for it \
                     to be back (the totals so far are kept)",
                    output::hms_now()
                );
                *pid = SERVER_AWAY;
                self.servers_away = Some(Instant::now());
            }
            if *pid != SERVER_AWAY {
                continue;
            }
            let Ok(new) = server.main_process() else {
                continue;
            };
            let added = match &self.watched.tgid_map {
                Some(map) => add_with_descendants(map, new),
                None => Err(anyhow::anyhow!("this tool cannot add processes")),
            };
            match added {
                Ok(tgids) => {
                    // How long the new postmaster ran unfollowed: what it forked meanwhile
                    // was found in /proc, unless it had ended already.
                    let age = procs::age_of(new)
                        .map(|a| format!(" (started {} ms before)", a.as_millis()))
                        .unwrap_or_default();
                    eprintln!(
                        "{tool}: the server of {server} is back at {}: following its new main \
                         process PID {new}{age}",
                        output::hms_now()
                    );
                    *pid = new;
                    self.followed.extend(tgids);
                    // Two servers named that are one (its data directory and its port) are
                    // waited for once.
                    if !self.starting.iter().any(|&(p, _)| p == new) {
                        self.starting.push((new, Instant::now()));
                    }
                }
                Err(e) => {
                    eprintln!(
                        "{tool}: cannot follow the new PID {new} of {server}: {e:#}; it is no \
                         longer traced"
                    );
                    *pid = SERVER_LOST;
                }
            }
        }
    }
}

/// Adds `root` to the kernel's tgid filter, then the processes it forked already: first the
/// root, so that a child forked meanwhile is added by the kernel's fork hook; then /proc's
/// view of its descendants, again until a pass finds none new (one forked during a pass is
/// in the filter or in the next pass). The tgids added.
fn add_with_descendants(map: &TgidMap, root: u32) -> anyhow::Result<Vec<u32>> {
    let mut map = map
        .lock()
        .map_err(|_| anyhow::anyhow!("the filter's lock is poisoned"))?;
    let mut added = vec![root];
    target::add_tgids(&mut map, &added)?;
    loop {
        let new: Vec<u32> = procs::descendants(&[root])
            .into_iter()
            .filter(|p| !added.contains(p))
            .collect();
        if new.is_empty() {
            return Ok(added);
        }
        target::add_tgids(&mut map, &new)?;
        added.extend(new);
    }
}
