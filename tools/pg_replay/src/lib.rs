//! pg_replay: replays captured PostgreSQL traffic (pgwire_trace `--record` files) or server
//! logs into another server, each session on its own connection at its original pace, and
//! reports per statement how the replay compares with the original. Manual:
//! docs/pg_replay.md.
//!
//! - [`source`]: the events every input turns into; [`capture`]: capture files;
//!   [`logs`]: stderr, csvlog and jsonlog server logs; [`input`]: which is which.
//! - [`replay`]: the dispatcher and the session tasks; [`client`]: logging in;
//!   [`conninfo`]: the target and passwords.
//! - [`report`]: the regression report and the progress line; [`records`]: NDJSON.
//! - [`run`]: the replay as the shared runtime drives it; [`check`]: `--check`, the inputs
//!   read and summed up without a replay.

pub mod capture;
// The client side lives in common/pgclient (locks --dsn uses it too).
pub use pgbpf_pgclient::{client, conninfo};
pub mod check;
pub mod input;
pub mod logs;
pub mod records;
pub mod replay;
pub mod report;
pub mod run;
pub mod source;

use std::{path::PathBuf, sync::OnceLock, time::Duration};

use clap::Parser;
use pgbpf_common::cli::{OutputArgs, parse_duration};

const EXAMPLES: &str = "\
Examples:
  pgwire_trace --record cap.pgw -d 60     # capture a minute of traffic, then:
  pg_replay --target 'host=newdb port=5432' cap.pgw
  pg_replay --target postgresql://replay@10.0.0.7/app --speed 2 cap.pgw
  pg_replay --target 'host=/tmp port=5433' --max-idle 5 postgresql-15-main.log
  pg_replay --target 'host=newdb' --only-database app --start 10m --end 20m cap.pgw
  pg_replay --target 'host=newdb' --speed max --json cap.pgw   # as fast as it answers
  pg_replay --check --log-line-prefix '%m [%p] %q%u@%d ' postgresql-15-main.log";

/// Replay PostgreSQL sessions from a pgwire_trace capture or a server log into another
/// server, each session on its own connection with its original timing, and report per
/// statement the original's and the replay's latencies and errors: how the workload fares
/// on the new server.
#[derive(Parser, Debug)]
#[command(name = "pg_replay", version, after_help = EXAMPLES)]
pub struct Args {
    /// The server to replay into: 'host=… port=… user=… dbname=…' or postgresql://…
    /// (sessions log in as their original user to their original database; user and
    /// dbname here serve those whose start-up the input lacks)
    #[arg(long, value_name = "CONNINFO", required_unless_present = "check")]
    pub target: Option<String>,
    /// Only read the inputs and report what they hold (sessions, statements with their
    /// original times, lines that did not parse) without connecting anywhere: a log checked
    /// before a long replay
    #[arg(long, conflicts_with_all = ["target", "speed", "max_idle", "max_connections"])]
    pub check: bool,
    /// Capture files (pgwire_trace --record) or server logs, replayed as one time line
    #[arg(value_name = "FILE", required = true)]
    pub files: Vec<PathBuf>,
    /// What the files are (default: recognised from their content)
    #[arg(long, value_enum, default_value_t = input::Format::Auto)]
    pub format: input::Format,
    /// Replay this many times faster than the original (0.5 is half speed); `max`: each
    /// session as fast as its answers come
    #[arg(long, value_name = "X", default_value = "1", value_parser = parse_speed)]
    pub speed: f64,
    /// Cut pauses of the whole input longer than this to this (seconds, or 500ms, 2m)
    #[arg(long, value_name = "SECS", value_parser = parse_offset)]
    pub max_idle: Option<Duration>,
    /// Replay from this far into the input (seconds, or 90s, 10m)
    #[arg(long, value_name = "OFFSET", value_parser = parse_offset)]
    pub start: Option<Duration>,
    /// Replay up to this far into the input
    #[arg(long, value_name = "OFFSET", value_parser = parse_offset)]
    pub end: Option<Duration>,
    /// Log every session in as this user instead of the original's
    #[arg(long, value_name = "NAME")]
    pub user: Option<String>,
    /// Log every session in to this database instead of the original's
    #[arg(long, value_name = "NAME")]
    pub database: Option<String>,
    /// Replay only sessions of this database (repeatable)
    #[arg(long, value_name = "NAME")]
    pub only_database: Vec<String>,
    /// Replay only sessions of this user (repeatable)
    #[arg(long, value_name = "NAME")]
    pub only_user: Vec<String>,
    /// Replay only sessions with this application_name (repeatable)
    #[arg(long, value_name = "NAME")]
    pub only_application: Vec<String>,
    /// Open at most N connections at once; later sessions wait for a free one
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,
    /// Passwords: `.pgpass` lines (host:port:database:user:password), or one line holding
    /// only the password; else PGPASSWORD, then ~/.pgpass
    #[arg(long, value_name = "PATH")]
    pub password_file: Option<PathBuf>,
    /// The server's log_line_prefix, for stderr logs
    #[arg(long, value_name = "PREFIX", default_value = "%m [%p] %q%u@%d ")]
    pub log_line_prefix: String,
    /// End with an error at the first log line that does not parse (default: count them)
    #[arg(long)]
    pub strict: bool,
    /// Show at most this many statements in the report
    #[arg(long, value_name = "N", default_value_t = 20)]
    pub top: usize,
    /// Print a progress report every SECS seconds (on a terminal a live line is always shown)
    #[arg(short = 'i', long = "interval", value_name = "SECS",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub interval: Option<u64>,
    /// Stop after this long: seconds, or with a unit (90s, 5m, 1h)
    #[arg(short = 'd', long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Prefix output lines with the time (HH:MM:SS)
    #[arg(short = 'T', long)]
    pub timestamp: bool,
    /// Print NDJSON (one JSON object a line, stable field names) instead of tables
    #[arg(long)]
    pub json: bool,
    /// Show each session's connection errors as they happen
    #[arg(short = 'v', long)]
    pub verbose: bool,
    #[command(flatten)]
    pub redact: pgbpf_common::cli::RedactArg,
    /// The shared output arguments, built from the ones above.
    #[arg(skip)]
    out: OnceLock<OutputArgs>,
}

impl pgbpf_common::runtime::Tool for Args {
    const NAME: &'static str = "pg_replay";

    fn output_args(&self) -> &OutputArgs {
        self.out.get_or_init(|| OutputArgs {
            interval_opt: self.interval,
            duration: self.duration,
            timestamp: self.timestamp,
            json: self.json,
            verbose: self.verbose,
            ..OutputArgs::default()
        })
    }

    fn start(
        &self,
        out: &mut pgbpf_common::output::Output,
    ) -> anyhow::Result<Option<pgbpf_common::runtime::Attached<'_>>> {
        run::start(self, out)
    }
}

/// `--speed`: a positive number, or `max`/`inf` for no pacing.
fn parse_speed(s: &str) -> Result<f64, String> {
    if matches!(s, "max" | "inf" | "unbounded") {
        return Ok(f64::INFINITY);
    }
    match s.parse::<f64>() {
        Ok(x) if x > 0.0 => Ok(x),
        _ => Err(format!("{s:?} is not a positive number (or max)")),
    }
}

/// An offset or pause: seconds (fractions allowed), or with a unit (500ms, 90s, 10m, 1h).
fn parse_offset(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("{s:?}: the unit is ms, s, m or h")),
    };
    match number.parse::<f64>() {
        Ok(x) if x >= 0.0 && (x * scale) < 1e9 => Ok(Duration::from_secs_f64(x * scale)),
        _ => Err(format!("{s:?} is not a duration")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speeds_and_offsets_parse() {
        assert_eq!(parse_speed("2.5"), Ok(2.5));
        assert_eq!(parse_speed("max"), Ok(f64::INFINITY));
        for bad in ["0", "-1", "fast", "NaN"] {
            assert!(parse_speed(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_offset("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_offset("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_offset("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_offset("0"), Ok(Duration::ZERO));
        for bad in ["", "1x", "-3", "1.2.3", "1e99"] {
            assert!(parse_offset(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_command_line_parses_with_files_and_options() {
        let a = Args::try_parse_from([
            "pg_replay",
            "--target",
            "host=x",
            "--speed",
            "2",
            "a.pgw",
            "b.pgw",
            "-i",
            "5",
        ])
        .unwrap();
        assert_eq!(a.files.len(), 2);
        assert_eq!(a.speed, 2.0);
        use pgbpf_common::runtime::Tool as _;
        assert_eq!(a.output_args().interval(), Some(Duration::from_secs(5)));
        assert!(Args::try_parse_from(["pg_replay", "a.pgw"]).is_err());
        assert!(Args::try_parse_from(["pg_replay", "--target", "x"]).is_err());
        // --check needs no target and takes no replay options.
        assert!(
            Args::try_parse_from(["pg_replay", "--check", "a.log"])
                .unwrap()
                .check
        );
        for bad in [
            &["--target", "x"][..],
            &["--speed", "2"],
            &["--max-connections", "3"],
        ] {
            let argv = ["pg_replay", "--check", "a.log"].iter().chain(bad);
            assert!(Args::try_parse_from(argv).is_err(), "{bad:?}");
        }
    }
}
