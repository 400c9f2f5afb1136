//! The life cycle every tool shares: parse the arguments, start (resolve the target, load and
//! attach, print "Tracing ... (attached in N ms)... Hit Ctrl-C to end."), run the live loop
//! (drain the kernel's buffers and maps, INTERVAL/COUNT reports, `-d`, Ctrl-C and SIGTERM,
//! the end of every traced process), print the final report, exit.
//!
//! A tool supplies what differs: its arguments ([`Tool`]) and, once attached, a [`Trace`]
//! (drain, interval report, final report). Errors end the tool with `tool: error: ...` and
//! exit 1, except a closed stdout (`tool | head -3`), which is a normal end: exit 0, quietly.

use std::{
    io,
    process::ExitCode,
    time::{Duration, Instant},
};

use crate::{
    cli::{OutputArgs, Tick, Ticker},
    output::{self, Output},
    procs,
    server::Server,
    target::{self, TgidMap},
};

/// A tool's command line, and how it starts.
pub trait Tool: clap::Parser {
    /// The binary's name, as error messages and notes begin.
    const NAME: &'static str;

    /// The output arguments every tool has (`[INTERVAL [COUNT]]`, `-d`, `-T`, `--json`, `-v`).
    fn output_args(&self) -> &OutputArgs;

    /// Resolves the target, loads and attaches the kernel programs. `None` when the tool has
    /// done all it was asked without tracing (a snapshot, decoding a file).
    fn start(&self, out: &mut Output) -> anyhow::Result<Option<Attached<'_>>>;
}

/// Implements [`Tool`] for a tool's clap arguments, whose output arguments are in a field
/// named `out`: `pgbpf_common::tool!(Args, "page_reclaim", trace::start)`, where `start` is
/// `fn(&Args, &mut Output) -> anyhow::Result<Option<Attached<'_>>>`.
#[macro_export]
macro_rules! tool {
    ($args:ty, $name:literal, $start:path) => {
        impl $crate::runtime::Tool for $args {
            const NAME: &'static str = $name;

            fn output_args(&self) -> &$crate::cli::OutputArgs {
                &self.out
            }

            fn start(
                &self,
                out: &mut $crate::output::Output,
            ) -> ::anyhow::Result<Option<$crate::runtime::Attached<'_>>> {
                $start(self, out)
            }
        }
    };
}

/// What a tool does once attached. The runtime calls `drain` whenever the kernel may have
/// something (at least every [`Trace::drain_every`]), `interval` at each INTERVAL and
/// `finish` once at the end, each time after a last `drain`.
pub trait Trace {
    /// Waits up to `timeout` for the kernel to have something (a ring buffer's fd); without
    /// a buffer to wait on, sleeps.
    fn wait(&mut self, timeout: Duration) {
        std::thread::sleep(timeout);
    }

    /// The longest the kernel's maps may go undrained (ring buffers: drain at every wake).
    fn drain_every(&self) -> Duration {
        Duration::ZERO
    }

    /// Takes what the kernel gathered (ring buffer records, map entries) into the report.
    fn drain(&mut self, out: &mut Output) -> anyhow::Result<()>;

    /// Prints the report of the interval that just ended.
    fn interval(&mut self, out: &mut Output) -> anyhow::Result<()>;

    /// Prints the final report: what the whole run saw, and what was lost.
    fn finish(&mut self, out: &mut Output) -> anyhow::Result<()>;

    /// True once the tool has done all it was asked (a replay at the end of its input): the
    /// loop then ends as at Ctrl-C, with the final report.
    fn done(&self) -> bool {
        false
    }

    /// The loaded objects, for what reads their programs' statistics and counters (the
    /// exporter's self-metrics). None by default.
    fn objects(&self) -> Vec<&crate::loader::Loaded> {
        vec![]
    }

    /// The target gained these processes (a server named by `--pgdata` or `--port` is back
    /// after a restart: its new main process and the ones it forked already), added to the
    /// kernel's filter already. For a tool that learned something of its processes at start
    /// (their sockets) to learn it of these. Nothing by default.
    fn followed(&mut self, _out: &mut Output, _pids: &[u32]) -> anyhow::Result<()> {
        Ok(())
    }

    /// Called instead of `finish` when stdout was closed (`tool | head`): keeps complete what
    /// does not need stdout (a capture file). Nothing by default.
    fn output_gone(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// A tool that is attached and ready for the live loop.
pub struct Attached<'a> {
    pub trace: Box<dyn Trace + Send + 'a>,
    /// The start-up line's beginning: "Tracing memory reclaim of PID 4242".
    pub what: String,
    /// Facts for the start-up line's parentheses, before "attached in N ms".
    pub details: Vec<String>,
    /// When loading began (the start-up time is measured from it).
    pub started: Instant,
    /// What ends the trace when it is gone: the `--pid`s given, the cgroup of `--cgroup`,
    /// `--container` or `--pod`.
    pub watch: Watched,
}

/// How long the loop sleeps at most: short, so Ctrl-C and reports are prompt.
const WAKE: Duration = Duration::from_millis(50);
/// How often watched processes are checked.
const WATCH_EVERY: Duration = Duration::from_millis(250);
/// How often a server that exited is looked for (`--pgdata`, `--port`).
const AWAY_LOOK_EVERY: Duration = Duration::from_millis(10);

/// A tool's `main`: parse, start, trace, report; the exit code (2 for usage errors, from clap).
pub fn main<T: Tool>() -> ExitCode {
    let args = match parse_args::<T>(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(code) => return code,
    };
    let mut out = Output::stdout(args.output_args());
    let result = run(&args, &mut out);
    // What was gathered before an error is printed before the error.
    let flushed = out.flush();
    exit_code(T::NAME, result.and_then(|()| Ok(flushed?)))
}

/// The tool's arguments; a usage error is one line naming the option, `TOOL: error: ...`,
/// and exit 2 (clap's own message without its usage block: a script's log gets one line);
/// `--help` and `--version` print as clap does. Negative numbers reach the option's parser,
/// so `--pid -1` is an invalid pid rather than an unknown option `-1`; a value that is not
/// UTF-8 is named with its option (clap's message names neither).
pub fn parse_args<T: Tool>(argv: Vec<std::ffi::OsString>) -> Result<T, ExitCode> {
    parse_command_line(T::NAME, argv)
}

/// [`parse_args`] for a binary that is not a [`Tool`] (the exporter), named `name`.
pub fn parse_command_line<T: clap::Parser>(
    name: &str,
    argv: Vec<std::ffi::OsString>,
) -> Result<T, ExitCode> {
    use clap::error::ErrorKind;
    let matches = T::command()
        .allow_negative_numbers(true)
        .try_get_matches_from(&argv)
        .and_then(|m| T::from_arg_matches(&m));
    let e = match matches {
        Ok(args) => return Ok(args),
        Err(e) => e,
    };
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            return Err(ExitCode::SUCCESS);
        }
        ErrorKind::InvalidUtf8 => {
            eprintln!("{}: error: {}", name, not_utf8(&argv));
        }
        _ => eprintln!("{}: error: {}", name, usage_error_line(&e.to_string())),
    }
    Err(ExitCode::from(2))
}

/// clap's message on one line: its lines before the usage block, tips left out.
fn usage_error_line(message: &str) -> String {
    let lines: Vec<&str> = message
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    let line = lines.join(" ");
    format!(
        "{} (see --help)",
        line.strip_prefix("error: ").unwrap_or(&line)
    )
}

/// Which argument of `argv` is not UTF-8, named by its option when it is one's value.
fn not_utf8(argv: &[std::ffi::OsString]) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let Some(i) = argv
        .iter()
        .skip(1)
        .position(|a| a.to_str().is_none())
        .map(|i| i + 1)
    else {
        return "an argument is not UTF-8".into();
    };
    let bad = argv[i].as_bytes();
    if bad.starts_with(b"--")
        && let Some(eq) = bad.iter().position(|&b| b == b'=')
    {
        let option = String::from_utf8_lossy(&bad[..eq]);
        return format!("the value of {option} is not UTF-8");
    }
    match argv[i - 1].to_str() {
        Some(option) if i > 1 && option.starts_with('-') => {
            format!("the value of {option} is not UTF-8")
        }
        _ => format!("argument {i} is not UTF-8"),
    }
}

fn run<T: Tool>(args: &T, out: &mut Output) -> anyhow::Result<()> {
    let Some(attached) = args.start(out)? else {
        return Ok(());
    };
    live(T::NAME, args.output_args(), attached, out)
}

/// The live loop, until Ctrl-C, SIGTERM, `-d`, COUNT reports or the end of every watched
/// process; then the final report.
pub fn live(
    tool: &str,
    args: &OutputArgs,
    attached: Attached<'_>,
    out: &mut Output,
) -> anyhow::Result<()> {
    let Attached {
        mut trace,
        what,
        mut details,
        started,
        watch,
    } = attached;
    // Output gathered while starting (a snapshot) goes first.
    out.flush()?;
    // The signal handlers are in place before the user is told to press Ctrl-C.
    let mut ticker = Ticker::start(args)?;
    details.push(format!(
        "attached in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    ));
    eprintln!("{what} ({})... Hit Ctrl-C to end.", details.join(", "));
    let mut watch = Watch::new(tool, watch);
    let result = run_loop(&mut *trace, &mut ticker, &mut watch, out);
    match result {
        Err(e) if is_broken_pipe(&e) => {
            trace.output_gone()?;
            Err(e)
        }
        other => other,
    }
}

/// Drains and reports until the ticker says the end has come, then the final report.
fn run_loop(
    trace: &mut dyn Trace,
    ticker: &mut Ticker,
    watch: &mut Watch<'_>,
    out: &mut Output,
) -> anyhow::Result<()> {
    let mut last_drain = Instant::now();
    loop {
        trace.wait(watch.next_look());
        if last_drain.elapsed() >= trace.drain_every() {
            trace.drain(out)?;
            out.flush()?;
            last_drain = Instant::now();
        }
        if watch.all_gone() || trace.done() {
            ticker.request_stop();
        }
        let followed = std::mem::take(&mut watch.followed);
        if !followed.is_empty() {
            trace.followed(out, &followed)?;
        }
        match ticker.next(Duration::ZERO) {
            Tick::Idle => {}
            Tick::Interval => {
                trace.drain(out)?;
                trace.interval(out)?;
                out.flush()?;
                last_drain = Instant::now();
            }
            Tick::Final => {
                trace.drain(out)?;
                trace.finish(out)?;
                return Ok(out.flush()?);
            }
        }
    }
}

/// What ends a trace when it is gone: the processes given with `--pid` (all of them), or the
/// cgroup of `--cgroup`, `--container` or `--pod` (removed, or replaced by a new one of the
/// same path: a restarted container's is a new cgroup, which the kernel filter, keyed by the
/// old one's id, would never match). A server named by `--pgdata` or `--port` never ends it:
/// when its main process exits the trace waits for the server to be back and follows it.
#[derive(Clone, Debug, Default)]
pub struct Watched {
    pub pids: Vec<u32>,
    /// The cgroup's directory, its id (the directory's inode) and how to name it.
    pub cgroup: Option<(std::path::PathBuf, u64, String)>,
    /// The servers followed, each with its main process now.
    pub servers: Vec<(u32, Server)>,
    /// The kernel's tgid filter, where a restarted server's processes are added.
    pub tgid_map: Option<TgidMap>,
}

impl Watched {
    /// Whether the cgroup watched is gone (or replaced).
    fn cgroup_gone(&self) -> Option<&str> {
        use std::os::unix::fs::MetadataExt as _;
        let (dir, id, what) = self.cgroup.as_ref()?;
        let same = std::fs::metadata(dir).is_ok_and(|m| m.ino() == *id);
        (!same).then_some(what.as_str())
    }
}

struct Watch<'t> {
    tool: &'t str,
    watched: Watched,
    gone: Vec<u32>,
    last_check: Instant,
    cgroup_gone: bool,
    /// Processes added to the filter since the loop last looked (a restarted server's).
    followed: Vec<u32>,
}

impl<'t> Watch<'t> {
    fn new(tool: &'t str, watched: Watched) -> Watch<'t> {
        Watch {
            tool,
            watched,
            gone: vec![],
            last_check: Instant::now(),
            cgroup_gone: false,
            followed: vec![],
        }
    }

    fn all_gone(&mut self) -> bool {
        let pids_gone =
            |w: &Self| !w.watched.pids.is_empty() && w.gone.len() == w.watched.pids.len();
        if self.cgroup_gone || self.last_check.elapsed() < WATCH_EVERY.min(self.next_look()) {
            return self.cgroup_gone || pids_gone(self);
        }
        self.last_check = Instant::now();
        self.follow_servers();
        if let Some(what) = self.watched.cgroup_gone() {
            eprintln!(
                "{}: the {what} was removed at {}; nothing left to trace: the summary of what \
                 was seen follows",
                self.tool,
                output::hms_now()
            );
            self.cgroup_gone = true;
            return true;
        }
        for &pid in &self.watched.pids {
            if self.gone.contains(&pid) || procs::alive(pid) {
                continue;
            }
            self.gone.push(pid);
            let next = if self.gone.len() == self.watched.pids.len() {
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
        pids_gone(self)
    }
}

/// A followed server's main process while it is away, and after it failed to be followed.
const SERVER_AWAY: u32 = 0;
const SERVER_LOST: u32 = u32::MAX;

impl Watch<'_> {
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
            }
            if *pid != SERVER_AWAY {
                continue;
            }
            let Ok(new) = server.main_process() else {
                continue;
            };
            let mut tgids = vec![new];
            tgids.extend(procs::descendants(&[new]));
            let added = match &self.watched.tgid_map {
                Some(map) => map
                    .lock()
                    .map_err(|_| anyhow::anyhow!("the filter's lock is poisoned"))
                    .and_then(|mut map| target::add_tgids(&mut map, &tgids)),
                None => Err(anyhow::anyhow!("this tool cannot add processes")),
            };
            match added {
                Ok(()) => {
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
                }
                Err(e) => {
                    eprintln!("{tool}: cannot follow the new PID {new} of {server}: {e:#}");
                    *pid = SERVER_LOST;
                }
            }
        }
    }

    /// How long the loop may wait before the next look: short while a server is away, so
    /// that its new postmaster is followed before it accepts its first connection (a
    /// restarted server takes 100 ms or more to get there).
    fn next_look(&self) -> Duration {
        if self
            .watched
            .servers
            .iter()
            .any(|(pid, _)| *pid == SERVER_AWAY)
        {
            AWAY_LOOK_EVERY
        } else {
            WAKE
        }
    }
}

/// `tool: error: <cause chain>` and exit 1; a closed stdout is a normal end (exit 0, quiet).
pub fn exit_code(tool: &str, result: anyhow::Result<()>) -> ExitCode {
    let Err(e) = result else {
        return ExitCode::SUCCESS;
    };
    if is_broken_pipe(&e) {
        return ExitCode::SUCCESS;
    }
    let chain: Vec<String> = e.chain().map(ToString::to_string).collect();
    eprintln!("{tool}: error: {}", chain.join(": "));
    ExitCode::FAILURE
}

/// True when the error (or any cause of it) is a write to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    #[test]
    fn a_closed_pipe_anywhere_in_the_chain_is_a_normal_end() {
        let pipe: anyhow::Result<()> = Err(io::Error::from(io::ErrorKind::BrokenPipe).into());
        let e = pipe.context("writing the report").unwrap_err();
        assert!(is_broken_pipe(&e));
        assert_eq!(exit_code("t", Err(e)), ExitCode::SUCCESS);
        let other = anyhow::anyhow!("no such process");
        assert!(!is_broken_pipe(&other));
        assert_eq!(exit_code("t", Err(other)), ExitCode::FAILURE);
    }
}
