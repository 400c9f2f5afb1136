//! Shared command-line arguments (`[INTERVAL [COUNT]]`, `-d`, `-T`, `--json`, `-v`) and the
//! clock that paces a trace (intervals, COUNT, `--duration`, Ctrl-C and SIGTERM).

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

/// `--redact`, for the tools that show statements.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct RedactArg {
    /// Show every statement normalized (literals as $n: the lines of single statements
    /// too, which otherwise show them as they ran) and without comments
    #[arg(long)]
    pub redact: bool,
}

impl RedactArg {
    /// How statements are shown.
    pub fn shown(&self) -> crate::sql::Shown {
        crate::sql::Shown::redacted_if(self.redact)
    }
}

/// Output and timing arguments shared by every tool.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OutputArgs {
    /// Print a report every INTERVAL seconds (default: only at the end)
    #[arg(value_name = "INTERVAL", value_parser = clap::value_parser!(u64).range(1..))]
    pub interval: Option<u64>,
    /// Stop after COUNT reports
    #[arg(value_name = "COUNT", value_parser = clap::value_parser!(u64).range(1..), requires = "interval")]
    pub count: Option<u64>,
    /// Same as the INTERVAL argument
    #[arg(short = 'i', long = "interval", value_name = "SECS", conflicts_with = "interval",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub interval_opt: Option<u64>,
    /// Stop after this long: seconds, or with a unit (90s, 5m, 1h)
    #[arg(short = 'd', long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Prefix output lines with the time (HH:MM:SS)
    #[arg(short = 'T', long)]
    pub timestamp: bool,
    /// Print NDJSON (one JSON object a line, stable field names) instead of tables
    #[arg(long)]
    pub json: bool,
    /// Show loader and verifier detail on stderr
    #[arg(short = 'v', long)]
    pub verbose: bool,
}

impl OutputArgs {
    pub fn interval(&self) -> Option<Duration> {
        self.interval.or(self.interval_opt).map(Duration::from_secs)
    }
}

/// Opens an input file (a capture, a log) for reading, saying so when the path is a
/// directory (reading one fails with EISDIR only at the first read, in words about the
/// format).
pub fn open_input(path: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context as _;
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    if file.metadata().is_ok_and(|m| m.is_dir()) {
        anyhow::bail!("cannot read {}: it is a directory", path.display());
    }
    Ok(file)
}

/// Parses "10", "10s", "5m" or "1h" into a non-zero duration.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.starts_with('-') {
        return Err("a duration cannot be negative".into());
    }
    let (digits, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1),
        Some((i, _)) => (
            &s[..i],
            match &s[i..] {
                "s" => 1,
                "m" => 60,
                "h" => 3600,
                other => return Err(format!("unknown unit {other:?} (use s, m or h)")),
            },
        ),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 30, 90s or 5m"))?;
    if n == 0 {
        return Err("the duration must be at least 1 second".into());
    }
    n.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| "duration too long".into())
}

/// What the loop wants the tool to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// Nothing due: drain buffers, then call `next` again.
    Idle,
    /// An interval ended: print its report.
    Interval,
    /// Ctrl-C, SIGTERM, the end of `--duration` or of COUNT: print the summary and exit.
    Final,
}

/// Paces a tool: interval reports, COUNT, `--duration`, Ctrl-C and SIGTERM.
pub struct Ticker {
    interval: Option<Duration>,
    next_due: Option<Instant>,
    remaining: Option<u64>,
    deadline: Option<Instant>,
    stop: Arc<AtomicBool>,
    done: bool,
}

impl Ticker {
    /// Starts the clock now and installs the SIGINT/SIGTERM handlers (a second Ctrl-C kills).
    pub fn start(args: &OutputArgs) -> anyhow::Result<Ticker> {
        let stop = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&stop))?;
            signal_hook::flag::register(sig, Arc::clone(&stop))?;
        }
        let now = Instant::now();
        let interval = args.interval();
        Ok(Ticker {
            interval,
            next_due: interval.map(|i| now + i),
            remaining: args.count,
            deadline: args.duration.map(|d| now + d),
            stop,
            done: false,
        })
    }

    /// Asks the loop to end at the next call (e.g. stdout was closed).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    /// Waits at most `max_wait` for something to do.
    pub fn next(&mut self, max_wait: Duration) -> Tick {
        if self.done {
            return Tick::Final;
        }
        let until = Instant::now() + max_wait;
        loop {
            let now = Instant::now();
            if self.stop.load(Ordering::SeqCst) || self.deadline.is_some_and(|d| now >= d) {
                self.done = true;
                return Tick::Final;
            }
            if let (Some(due), Some(interval)) = (self.next_due, self.interval)
                && now >= due
            {
                self.next_due = Some(due + interval);
                if let Some(r) = self.remaining.as_mut() {
                    *r -= 1;
                    if *r == 0 {
                        // The last interval's report is this one; then the summary.
                        self.stop.store(true, Ordering::SeqCst);
                    }
                }
                return Tick::Interval;
            }
            if now >= until {
                return Tick::Idle;
            }
            let mut wake = until;
            if let Some(d) = self.next_due {
                wake = wake.min(d);
            }
            if let Some(d) = self.deadline {
                wake = wake.min(d);
            }
            // Short naps so Ctrl-C is noticed promptly.
            std::thread::sleep(
                wake.saturating_duration_since(now)
                    .min(Duration::from_millis(50)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        out: OutputArgs,
    }

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tool").chain(args.iter().copied()))
    }

    #[test]
    fn interval_and_count() {
        let c = parse(&["5", "3"]).unwrap();
        assert_eq!(c.out.interval(), Some(Duration::from_secs(5)));
        assert_eq!(c.out.count, Some(3));
        assert_eq!(
            parse(&["--interval", "2"]).unwrap().out.interval(),
            Some(Duration::from_secs(2))
        );
        assert_eq!(parse(&[]).unwrap().out.interval(), None);
    }

    #[test]
    fn zero_interval_and_bad_durations_are_usage_errors() {
        for bad in [
            &["0"][..],
            &["--interval", "0"],
            &["1", "0"],
            &["-d", "0"],
            &["-d", "5x"],
            &["-d", "abc"],
        ] {
            let e = parse(bad).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
        }
        assert!(parse(&["3", "--interval", "2"]).is_err());
    }

    #[test]
    fn durations_with_units() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn count_ends_after_that_many_intervals() {
        let args = OutputArgs {
            interval: Some(1),
            count: Some(1),
            ..Default::default()
        };
        let mut t = Ticker::start(&args).unwrap();
        let mut ticks = vec![];
        loop {
            let tick = t.next(Duration::from_millis(300));
            ticks.push(tick);
            if tick == Tick::Final {
                break;
            }
        }
        assert_eq!(ticks.iter().filter(|t| **t == Tick::Interval).count(), 1);
        assert_eq!(ticks.last(), Some(&Tick::Final));
    }
}
