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
    output::Output,
    watch::Watch,
};

pub use crate::watch::Watched;

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

    /// A restarted server among these processes (its main process and those it runs now) is
    /// ready: for a tool that read what a server sets up (its shared memory, the ports it
    /// listens on) to read it of the new one. Nothing by default.
    fn server_ready(&mut self, _out: &mut Output, _pids: &[u32]) -> anyhow::Result<()> {
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
        for server in std::mem::take(&mut watch.ready) {
            trace.server_ready(out, &server.processes)?;
            watch.said_ready(&server);
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
