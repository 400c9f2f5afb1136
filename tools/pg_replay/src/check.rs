//! `--check`: the inputs read to their end as a replay would read them, without connecting
//! anywhere, and summed up: sessions, statements with their original times, what could not
//! be parsed. A 100 GB log is checked before an hour of replay; the bench times the parser
//! with it.

use std::time::{Duration, Instant};

use foldhash::{HashSet, HashSetExt as _};
use pgbpf_common::{
    output::Output,
    runtime::{Attached, Trace},
};

use crate::{
    Args,
    input::Inputs,
    replay::{Options, Outcome, login_of},
    report::{Report, Run},
    source::{Event, Source as _},
};

/// How long one turn of the loop reads before it lets the runtime look at Ctrl-C and `-d`.
const TURN: Duration = Duration::from_millis(50);

pub fn start(
    args: &Args,
    inputs: Inputs,
    target: crate::conninfo::Target,
    started: Instant,
) -> Attached<'static> {
    let format = inputs.format_name();
    Attached {
        trace: Box::new(Check {
            format,
            inputs,
            options: crate::run::options(args),
            target,
            open: HashSet::new(),
            filtered: 0,
            first_ns: None,
            last_ns: 0,
            report: Report::new(args.top, args.redact.shown()),
            failed: None,
            ended: false,
            started,
        }),
        what: format!("Checking {}", crate::run::files_of(args)),
        details: vec![format.to_string()],
        started,
        watch: Default::default(),
    }
}

struct Check {
    format: &'static str,
    inputs: Inputs,
    options: Options,
    target: crate::conninfo::Target,
    /// Sessions begun and not ended that the filters keep.
    open: HashSet<u64>,
    filtered: u64,
    first_ns: Option<u64>,
    last_ns: u64,
    report: Report,
    /// The input failed midway: reported after what was read before.
    failed: Option<anyhow::Error>,
    ended: bool,
    started: Instant,
}

impl Check {
    fn take(&mut self, e: Event) {
        let ts = e.ts_ns();
        self.first_ns.get_or_insert(ts);
        self.last_ns = self.last_ns.max(ts);
        match e {
            Event::Begin { key, startup, .. } => {
                if login_of(&self.options, &self.target, &startup).is_some() {
                    self.open.insert(key);
                    self.report.sessions += 1;
                } else {
                    self.filtered += 1;
                }
            }
            Event::Original {
                key,
                completed,
                timed,
            } if self.open.contains(&key) => self.report.add(Outcome::Original {
                key,
                completed,
                timed,
            }),
            Event::End { key, .. } => {
                self.open.remove(&key);
            }
            Event::Send { .. } | Event::Original { .. } => {}
        }
    }
}

impl Trace for Check {
    fn wait(&mut self, timeout: Duration) {
        let until = Instant::now() + timeout.min(TURN);
        while !self.ended && Instant::now() < until {
            // Many events between clock reads: reading the clock costs more than an event.
            for _ in 0..1024 {
                match self.inputs.next_event() {
                    Ok(Some(e)) => self.take(e),
                    Ok(None) => {
                        self.ended = true;
                        break;
                    }
                    Err(e) => {
                        self.failed = Some(e);
                        self.ended = true;
                        break;
                    }
                }
            }
        }
    }

    fn drain(&mut self, _out: &mut Output) -> anyhow::Result<()> {
        Ok(())
    }

    fn interval(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let stats = self.inputs.stats();
        let line = format!(
            "{}read {:.1} MB: {} sessions, {} statements\n",
            out.prefix(),
            stats.bytes as f64 / 1e6,
            self.report.sessions,
            self.report.statements_read()
        );
        Ok(out.text(&line)?)
    }

    fn done(&self) -> bool {
        self.ended
    }

    fn finish(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let stats = self.inputs.stats();
        let run = Run {
            check: true,
            elapsed_ns: self.started.elapsed().as_nanos() as u64,
            input_ns: self.last_ns.saturating_sub(self.first_ns.unwrap_or(0)),
            speed: f64::INFINITY,
            filtered: self.filtered,
            format: self.format,
            input: &stats,
        };
        self.report.finish(out, &run)?;
        match self.failed.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
