//! The replay as the shared runtime drives it: start (open the inputs, check the target
//! answers, start the dispatcher), then the runtime's loop takes the outcomes into the
//! report, shows the progress (a live line on a terminal, a report at each INTERVAL), and
//! ends at the end of the input, `-d` or Ctrl-C with the regression report.

use std::{
    io::{IsTerminal as _, Write as _},
    sync::{atomic::Ordering::Relaxed, mpsc},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use pgbpf_common::{
    output::{self, Output},
    runtime::{Attached, Trace},
};

use crate::{
    Args, client,
    conninfo::{self, Passwords},
    input::{Inputs, LogOptions},
    records::{self as rec, Record},
    replay::{Options, Outcome, Replay},
    report::{Report, Run},
    source::{InputStats, Window},
};

/// How often the outcomes of the sessions are taken into the report.
const BATCH_EVERY: Duration = Duration::from_millis(20);
/// How often the live line on a terminal is redrawn.
const LIVE_EVERY: Duration = Duration::from_millis(500);

pub fn start<'a>(args: &'a Args, _out: &mut Output) -> anyhow::Result<Option<Attached<'a>>> {
    let started = Instant::now();
    let window = window(args)?;
    let options = options(args);
    let Some(conninfo) = &args.target else {
        // --check: sessions without a start-up are named after the local defaults.
        let target = conninfo::parse("")?;
        let logs = log_options(args, &options, target.clone(), Passwords::default(), false);
        let inputs = Inputs::open(&args.files, args.format, window, logs)?;
        return Ok(Some(crate::check::start(args, inputs, target, started)));
    };
    let target = conninfo::parse(conninfo).context("--target")?;
    let passwords = Passwords::load(&target, args.password_file.as_deref())?;
    client::check_reachable(&target)?;
    let inputs = Inputs::open(
        &args.files,
        args.format,
        window,
        log_options(args, &options, target.clone(), passwords.clone(), true),
    )?;
    let format = inputs.format_name();
    let what = format!("Replaying {} into {}", files_of(args), target.describe());
    let mut details = vec![format.to_string()];
    details.push(if args.speed.is_finite() {
        format!("speed {}", args.speed)
    } else {
        "speed unbounded".into()
    });
    if let Some(n) = args.max_connections {
        details.push(format!("at most {n} connections"));
    }
    let (tx, rx) = mpsc::channel();
    let replay = Replay::start(Box::new(inputs), target, passwords, options, tx)?;
    Ok(Some(Attached {
        trace: Box::new(ReplayTrace {
            args,
            format,
            replay,
            rx,
            report: Report::new(args.top, args.redact.shown()),
            started,
            live: std::io::stderr().is_terminal(),
            last_live: Instant::now(),
            shown_errors: 0,
        }),
        what,
        details,
        started,
        watch: Default::default(),
    }))
}

/// The input files as messages name them.
pub(crate) fn files_of(args: &Args) -> String {
    args.files
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn log_options(
    args: &Args,
    options: &Options,
    target: conninfo::Target,
    passwords: Passwords,
    probe_types: bool,
) -> LogOptions {
    LogOptions {
        log_line_prefix: args.log_line_prefix.clone(),
        strict: args.strict,
        replay: options.clone(),
        target,
        passwords,
        probe_types,
    }
}

/// `--start`/`--end` as a window of the input's time line.
fn window(args: &Args) -> anyhow::Result<Window> {
    let window = Window {
        start_ns: args.start.map_or(0, |d| d.as_nanos() as u64),
        end_ns: args.end.map(|d| d.as_nanos() as u64),
    };
    if let (Some(s), Some(e)) = (args.start, args.end)
        && e <= s
    {
        anyhow::bail!("--end ({e:?}) is not after --start ({s:?})");
    }
    Ok(window)
}

pub(crate) fn options(args: &Args) -> Options {
    Options {
        speed: args.speed,
        max_idle: args.max_idle,
        max_connections: args.max_connections.map(|n| n as usize),
        user: args.user.clone(),
        database: args.database.clone(),
        only_databases: args.only_database.clone(),
        only_users: args.only_user.clone(),
        only_applications: args.only_application.clone(),
    }
}

struct ReplayTrace<'a> {
    args: &'a Args,
    format: &'static str,
    replay: Replay,
    rx: mpsc::Receiver<Outcome>,
    report: Report,
    started: Instant,
    /// stderr is a terminal: a live progress line is drawn there.
    live: bool,
    last_live: Instant,
    /// Session errors shown so far with `-v` (and the first few without).
    shown_errors: u64,
}

/// Session errors shown on stderr as they happen without `-v`.
const ERRORS_SHOWN: u64 = 3;

impl ReplayTrace<'_> {
    fn take(&mut self, o: Outcome) {
        if let Outcome::SessionEnded(s) = &o
            && let Some(e) = &s.error
            && (self.args.verbose || self.shown_errors < ERRORS_SHOWN)
        {
            self.clear_live();
            eprintln!(
                "pg_replay: session {} ({}@{}): {e}",
                s.key, s.login.user, s.login.database
            );
            self.shown_errors += 1;
        }
        self.report.add(o);
    }

    fn progress(&self) -> rec::Progress {
        let p = &self.replay.progress;
        rec::Progress {
            ts_ns: output::unix_ns(),
            elapsed_ns: self.started.elapsed().as_nanos() as u64,
            input_ns: p.input_ns.load(Relaxed),
            sessions_open: p.sessions_open.load(Relaxed),
            sessions_queued: p.sessions_queued.load(Relaxed),
            sessions_done: p.sessions_done.load(Relaxed),
            sessions_failed: p.sessions_failed.load(Relaxed),
            statements: self.report.replayed,
            errors: self.report.replay_errors,
            max_lag_ns: p.max_lag_ns.load(Relaxed),
        }
    }

    fn progress_line(&self) -> String {
        let p = self.progress();
        let secs = p.elapsed_ns as f64 / 1e9;
        format!(
            "{:.1} s, original clock {:.1} s: {} sessions open, {} queued, {} done ({} failed); {} statements ({:.0}/s), {} errors; max lag {}",
            secs,
            p.input_ns as f64 / 1e9,
            p.sessions_open,
            p.sessions_queued,
            p.sessions_done,
            p.sessions_failed,
            p.statements,
            p.statements as f64 / secs.max(1e-3),
            p.errors,
            output::human_ns(p.max_lag_ns)
        )
    }

    fn clear_live(&self) {
        if self.live {
            eprint!("\r\x1b[K");
        }
    }
}

impl Trace for ReplayTrace<'_> {
    fn wait(&mut self, timeout: Duration) {
        // Outcomes are taken in batches (drain): waking up for each of tens of thousands a
        // second cost the replay's threads more than the aggregation itself.
        std::thread::sleep(timeout.min(BATCH_EVERY));
    }

    fn drain(&mut self, _out: &mut Output) -> anyhow::Result<()> {
        while let Ok(o) = self.rx.try_recv() {
            self.take(o);
        }
        if self.live && self.last_live.elapsed() >= LIVE_EVERY {
            self.last_live = Instant::now();
            let line = output::cut_to_width(&self.progress_line(), Some(terminal_columns()));
            eprint!("\r\x1b[K{line}");
            let _ = std::io::stderr().flush();
        }
        Ok(())
    }

    fn interval(&mut self, out: &mut Output) -> anyhow::Result<()> {
        if out.json {
            return Ok(out.record(&Record::Progress(self.progress()))?);
        }
        let line = format!("{}{}\n", out.prefix(), self.progress_line());
        Ok(out.text(&line)?)
    }

    fn done(&self) -> bool {
        self.replay.progress.finished()
    }

    fn finish(&mut self, out: &mut Output) -> anyhow::Result<()> {
        self.replay.stop();
        let input = self.replay.join();
        while let Ok(o) = self.rx.try_recv() {
            self.take(o);
        }
        self.clear_live();
        let empty = InputStats::default();
        let stats = input.as_ref().unwrap_or(&empty);
        let p = &self.replay.progress;
        let run = Run {
            check: false,
            elapsed_ns: self.started.elapsed().as_nanos() as u64,
            input_ns: p.input_ns.load(Relaxed),
            speed: self.args.speed,
            filtered: p.sessions_filtered.load(Relaxed),
            format: self.format,
            input: stats,
        };
        self.report.finish(out, &run)?;
        // An input that failed midway: the report of what was replayed first, then why.
        input?;
        match &self.report.first_session_error {
            Some(e) => anyhow::bail!(
                "{} of {} sessions failed (the first: {e})",
                self.report.failed,
                self.report.sessions
            ),
            None => Ok(()),
        }
    }
}

fn terminal_columns() -> usize {
    terminal_size::terminal_size_of(std::io::stderr()).map_or(100, |(w, _)| w.0 as usize)
}
