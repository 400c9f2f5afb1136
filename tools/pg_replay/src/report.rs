//! The regression report: per normalized statement (as pgwire_trace's summary groups them)
//! calls, errors, mean/p50/p99 of the original and of the replay, their ratio, sorted by the
//! time the replay added; the errors that are new in the replay; the sessions that fell
//! furthest behind their schedule; the progress line while it runs.

use std::io;

use foldhash::{HashMap, HashMapExt as _};
use pgbpf_common::{
    latency::Latencies,
    output::{self, Output},
    sql::Shown,
};
use pgbpf_pgwire::conn::Completed;

use crate::{
    records::{self as rec, Record},
    replay::{Outcome, SessionSummary},
    source::InputStats,
};

/// Sessions listed in the report (the furthest behind, and those that failed).
const SESSIONS_SHOWN: usize = 10;

/// One side (original or replay) of a statement.
#[derive(Debug, Default)]
struct Side {
    calls: u64,
    /// Of the calls with a known duration.
    latency: Latencies,
    errors: u64,
    first_error: Option<String>,
}

impl Side {
    /// `redact`: an error is its SQLSTATE only (messages quote values).
    fn add(&mut self, c: &Completed, timed: bool, redact: bool) {
        self.calls += 1;
        if timed {
            self.latency.add(c.finished_ns.saturating_sub(c.started_ns));
        }
        if let Some(code) = &c.sqlstate {
            self.errors += 1;
            if self.first_error.is_none() {
                self.first_error = Some(if redact {
                    code.to_string()
                } else {
                    format!("{code}: {}", c.error.as_deref().unwrap_or_default())
                });
            }
        }
    }

    fn record(&self) -> rec::Side<'_> {
        let l = &self.latency;
        rec::Side {
            calls: self.calls,
            timed_calls: l.calls,
            errors: self.errors,
            total_ns: l.total_ns,
            mean_ns: l.mean_ns() as u64,
            p50_ns: l.percentile_ns(50.0) as u64,
            p99_ns: l.percentile_ns(99.0) as u64,
            max_ns: l.max_ns,
            first_error: self.first_error.as_deref(),
        }
    }
}

#[derive(Debug, Default)]
struct Statement {
    original: Side,
    replay: Side,
    truncated: bool,
}

impl Statement {
    /// Replay total minus original total; without original durations, nothing.
    fn added_ns(&self) -> i64 {
        if self.original.latency.calls == 0 {
            return 0;
        }
        self.replay.latency.total_ns as i64 - self.original.latency.total_ns as i64
    }

    fn ratio(&self) -> Option<f64> {
        let (o, r) = (
            self.original.latency.mean_ns(),
            self.replay.latency.mean_ns(),
        );
        (o > 0.0 && r > 0.0).then(|| r / o)
    }

    /// Errors of the replay beyond the original's.
    fn new_errors(&self) -> u64 {
        self.replay.errors.saturating_sub(self.original.errors)
    }
}

/// Everything the replay told so far.
pub struct Report {
    statements: HashMap<String, Statement>,
    key: String,
    /// Lag of every write of every session.
    lag: Latencies,
    pub sessions: u64,
    pub failed: u64,
    pub first_session_error: Option<String>,
    queued: u64,
    unsent: u64,
    /// The sessions worth showing: failed, or furthest behind.
    shown: Vec<SessionSummary>,
    /// Statements completed by the replay and of them errors, for the progress line.
    pub replayed: u64,
    pub replay_errors: u64,
    pub top: usize,
    /// `--redact`.
    statements_shown: Shown,
}

impl Report {
    pub fn new(top: usize, shown: Shown) -> Report {
        Report {
            statements: HashMap::new(),
            key: String::new(),
            lag: Latencies::default(),
            sessions: 0,
            failed: 0,
            first_session_error: None,
            queued: 0,
            unsent: 0,
            shown: vec![],
            replayed: 0,
            replay_errors: 0,
            top,
            statements_shown: shown,
        }
    }

    pub fn add(&mut self, outcome: Outcome) {
        let redact = self.statements_shown == Shown::Redacted;
        match outcome {
            Outcome::Original {
                completed, timed, ..
            } => self
                .statement(&completed)
                .original
                .add(&completed, timed, redact),
            Outcome::Replayed { completed, .. } => {
                self.replayed += 1;
                self.replay_errors += u64::from(completed.sqlstate.is_some());
                self.statement(&completed)
                    .replay
                    .add(&completed, true, redact);
            }
            Outcome::SessionEnded(s) => self.session(*s),
        }
    }

    /// Original statements taken so far.
    pub fn statements_read(&self) -> u64 {
        self.statements.values().map(|s| s.original.calls).sum()
    }

    fn statement(&mut self, c: &Completed) -> &mut Statement {
        self.statements_shown.text_into(&c.sql, &mut self.key);
        // Look up before inserting: a statement seen before costs no key copy.
        if !self.statements.contains_key(self.key.as_str()) {
            self.statements
                .insert(self.key.clone(), Statement::default());
        }
        let s = self
            .statements
            .get_mut(self.key.as_str())
            .expect("inserted above");
        s.truncated |= c.truncated;
        s
    }

    fn session(&mut self, s: SessionSummary) {
        self.sessions += 1;
        self.failed += u64::from(s.error.is_some());
        if self.first_session_error.is_none() {
            self.first_session_error.clone_from(&s.error);
        }
        self.queued += u64::from(s.queued);
        self.unsent += s.unsent;
        self.lag.merge(&s.lag);
        let worth = s.error.is_some() || s.unsent > 0 || s.lag.max_ns > 0;
        if !worth {
            return;
        }
        self.shown.push(s);
        // Failed first, then by how far behind; keep the first few.
        self.shown.sort_by_key(|s| {
            (
                std::cmp::Reverse(s.error.is_some()),
                std::cmp::Reverse(s.lag.max_ns),
            )
        });
        self.shown.truncate(SESSIONS_SHOWN);
    }

    /// The statements, by time added (most first); with `--check`, by original total time
    /// and then calls.
    fn sorted(&self, check: bool) -> Vec<(&String, &Statement)> {
        let mut v: Vec<_> = self.statements.iter().collect();
        if check {
            let key = |s: &Statement| (s.original.latency.total_ns, s.original.calls);
            v.sort_by(|a, b| key(b.1).cmp(&key(a.1)).then(a.0.cmp(b.0)));
        } else {
            v.sort_by(|a, b| b.1.added_ns().cmp(&a.1.added_ns()).then(a.0.cmp(b.0)));
        }
        v
    }

    /// The final report: text tables, or `statement`, `session` and `summary` records.
    pub fn finish(&self, out: &mut Output, run: &Run<'_>) -> io::Result<()> {
        let summary = self.summary(run);
        if out.json {
            for (sql, s) in self.sorted(run.check) {
                out.record(&Record::Statement(rec::StatementRow {
                    query: sql,
                    truncated: s.truncated,
                    original: s.original.record(),
                    replay: s.replay.record(),
                    ratio: s.ratio(),
                    added_ns: s.added_ns(),
                }))?;
            }
            for s in &self.shown {
                out.record(&Record::Session(session_row(s)))?;
            }
            return out.record(&Record::Summary(summary));
        }
        out.text(&self.text(out.width, &summary, run))
    }

    fn summary<'a>(&self, run: &Run<'a>) -> rec::Summary<'a> {
        let (mut so, mut sr, mut eo, mut er, mut new) = (0, 0, 0, 0, 0);
        for s in self.statements.values() {
            so += s.original.calls;
            sr += s.replay.calls;
            eo += s.original.errors;
            er += s.replay.errors;
            new += s.new_errors();
        }
        let i = run.input;
        rec::Summary {
            ts_ns: output::unix_ns(),
            check: run.check,
            elapsed_ns: run.elapsed_ns,
            input_ns: run.input_ns,
            speed: run.speed.is_finite().then_some(run.speed),
            sessions: self.sessions,
            sessions_failed: self.failed,
            sessions_queued: self.queued,
            sessions_filtered: run.filtered,
            statements_original: so,
            statements_replay: sr,
            errors_original: eo,
            errors_replay: er,
            new_errors: new,
            lag_p50_ns: self.lag.percentile_ns(50.0) as u64,
            lag_p99_ns: self.lag.percentile_ns(99.0) as u64,
            lag_max_ns: self.lag.max_ns,
            unsent: self.unsent,
            input: rec::InputCounts {
                format: run.format,
                bytes: i.bytes,
                encrypted_sessions: i.encrypted_sessions,
                incomplete_sessions: i.incomplete_sessions,
                skipped_unprepared: i.skipped_unprepared,
                skipped_copy: i.skipped_copy,
                bad_lines: i.bad_lines,
            },
        }
    }

    fn text(&self, width: Option<usize>, s: &rec::Summary<'_>, run: &Run<'_>) -> String {
        let mut t = if run.check {
            check_header(s)
        } else {
            replay_header(s, run)
        };
        t += &input_notes(run.input);
        t.push('\n');
        if run.check {
            t += &self.check_table(width);
        } else {
            t += &self.replay_tables(width);
        }
        t
    }

    /// `--check`: the statements as the input holds them, by total time.
    fn check_table(&self, width: Option<usize>) -> String {
        let sorted = self.sorted(true);
        let ms_of = |l: &Latencies, ns: f64| {
            if l.calls == 0 {
                "-".to_string()
            } else {
                format!("{:.3}", ns / 1e6)
            }
        };
        let rows: Vec<Vec<String>> = sorted
            .iter()
            .take(self.top)
            .map(|(sql, st)| {
                let o = &st.original.latency;
                vec![
                    st.original.calls.to_string(),
                    st.original.errors.to_string(),
                    ms_of(o, o.total_ns as f64),
                    ms_of(o, o.mean_ns()),
                    ms_of(o, o.percentile_ns(50.0)),
                    ms_of(o, o.percentile_ns(99.0)),
                    output::one_line(sql),
                ]
            })
            .collect();
        let mut t = "Per statement, by total time:\n".to_string();
        t += &output::table(
            &[
                "CALLS",
                "ERRORS",
                "TOTAL_MS",
                "MEAN_MS",
                "P50_MS",
                "P99_MS",
                "STATEMENT",
            ],
            &rows,
            width,
        );
        t.push('\n');
        if sorted.len() > self.top {
            t += &format!(
                "({} more statements; --top N shows more)\n",
                sorted.len() - self.top
            );
        }
        t
    }

    /// The regression tables: per statement, new errors, sessions behind.
    fn replay_tables(&self, width: Option<usize>) -> String {
        let mut t = String::new();
        let sorted = self.sorted(false);
        let ms = |ns: f64| format!("{:.3}", ns / 1e6);
        // A side without durations (a log without log_min_duration_statement) shows none.
        let ms_of = |l: &Latencies, ns: f64| {
            if l.calls == 0 {
                "-".to_string()
            } else {
                ms(ns)
            }
        };
        let rows: Vec<Vec<String>> = sorted
            .iter()
            .take(self.top)
            .map(|(sql, st)| {
                let (o, r) = (&st.original.latency, &st.replay.latency);
                vec![
                    format!("{}/{}", st.original.calls, st.replay.calls),
                    format!("{}/{}", st.original.errors, st.replay.errors),
                    ms_of(o, o.mean_ns()),
                    ms_of(r, r.mean_ns()),
                    ms_of(o, o.percentile_ns(50.0)),
                    ms_of(r, r.percentile_ns(50.0)),
                    ms_of(o, o.percentile_ns(99.0)),
                    ms_of(r, r.percentile_ns(99.0)),
                    st.ratio().map_or_else(|| "-".into(), |x| format!("{x:.2}")),
                    ms(st.added_ns() as f64),
                    output::one_line(sql),
                ]
            })
            .collect();
        t += "Per statement (original/replay), by time added:\n";
        t += &output::table(
            &[
                "CALLS",
                "ERRORS",
                "MEAN_MS",
                "REPLAY",
                "P50_MS",
                "REPLAY",
                "P99_MS",
                "REPLAY",
                "RATIO",
                "ADDED_MS",
                "STATEMENT",
            ],
            &rows,
            width,
        );
        t.push('\n');
        if sorted.len() > self.top {
            t += &format!(
                "({} more statements; --top N shows more)\n",
                sorted.len() - self.top
            );
        }
        let new: Vec<Vec<String>> = sorted
            .iter()
            .filter(|(_, st)| st.new_errors() > 0)
            .map(|(sql, st)| {
                vec![
                    st.new_errors().to_string(),
                    st.replay.first_error.clone().unwrap_or_default(),
                    output::one_line(sql),
                ]
            })
            .collect();
        if !new.is_empty() {
            t += "\nErrors new in the replay:\n";
            t += &output::table(&["COUNT", "FIRST_ERROR", "STATEMENT"], &new, width);
            t.push('\n');
        }
        if !self.shown.is_empty() {
            let rows: Vec<Vec<String>> = self
                .shown
                .iter()
                .map(|s| {
                    vec![
                        s.key.to_string(),
                        format!("{}@{}", s.login.user, s.login.database),
                        s.lag.calls.to_string(),
                        output::human_ns(s.lag.percentile_ns(50.0) as u64),
                        output::human_ns(s.lag.percentile_ns(99.0) as u64),
                        output::human_ns(s.lag.max_ns),
                        s.unsent.to_string(),
                        s.error.clone().unwrap_or_default(),
                    ]
                })
                .collect();
            t += "\nSessions furthest behind (and those that failed):\n";
            t += &output::table(
                &[
                    "SESSION", "LOGIN", "WRITES", "LAG_P50", "LAG_P99", "LAG_MAX", "UNSENT",
                    "ERROR",
                ],
                &rows,
                width,
            );
            t.push('\n');
        }
        t
    }
}

/// The replay's first lines: sessions, statements on both sides, how far behind.
fn replay_header(s: &rec::Summary<'_>, run: &Run<'_>) -> String {
    let secs = |ns: u64| ns as f64 / 1e9;
    let speed = if run.speed.is_finite() {
        format!("speed {}", run.speed)
    } else {
        "speed unbounded".to_string()
    };
    let mut t = format!(
        "Replayed {} sessions in {:.1} s of {:.1} s of the original ({speed}): {} failed, {} waited for a connection{}\n",
        s.sessions,
        secs(s.elapsed_ns),
        secs(s.input_ns),
        s.sessions_failed,
        s.sessions_queued,
        filtered(s)
    );
    t += &format!(
        "Statements: {} original, {} replayed; errors: {} original, {} replayed, {} new\n",
        s.statements_original,
        s.statements_replay,
        s.errors_original,
        s.errors_replay,
        s.new_errors
    );
    if run.speed.is_finite() {
        t += &format!(
            "Behind schedule: p50 {}, p99 {}, max {}; {} writes not sent\n",
            output::human_ns(s.lag_p50_ns),
            output::human_ns(s.lag_p99_ns),
            output::human_ns(s.lag_max_ns),
            s.unsent
        );
    } else {
        t += &format!("No schedule (--speed max); {} writes not sent\n", s.unsent);
    }
    t
}

/// `--check`'s first lines: what the input holds and how fast it was read.
fn check_header(s: &rec::Summary<'_>) -> String {
    let secs = s.elapsed_ns as f64 / 1e9;
    let mb = s.input.bytes as f64 / 1e6;
    format!(
        "Read {} sessions and {} statements ({} errors) over {:.1} s of the original{}\n\
         Input: {} ({mb:.1} MB in {secs:.2} s, {:.0} MB/s)\n",
        s.sessions,
        s.statements_original,
        s.errors_original,
        s.input_ns as f64 / 1e9,
        filtered(s),
        s.input.format,
        mb / secs.max(1e-6)
    )
}

fn filtered(s: &rec::Summary<'_>) -> String {
    if s.sessions_filtered > 0 {
        format!(", {} left out by the filters", s.sessions_filtered)
    } else {
        String::new()
    }
}

/// What the input could not give: one line per kind, and the first bad lines.
fn input_notes(i: &InputStats) -> String {
    let notes = [
        (
            i.encrypted_sessions,
            "sessions were encrypted (TLS) and could not be replayed",
        ),
        (
            i.incomplete_sessions,
            "sessions were cut short where a message was not captured whole",
        ),
        (
            i.skipped_unprepared,
            "messages used statements prepared before the input began and were skipped",
        ),
        (
            i.skipped_copy,
            "COPY ... FROM STDIN statements were skipped (a log does not hold their data)",
        ),
        (i.bad_lines, "lines of the input did not parse"),
    ];
    let mut t = String::new();
    for (n, what) in notes.iter().filter(|(n, _)| *n > 0) {
        t += &format!("Input: {n} {what}\n");
    }
    for (line, text) in &i.bad_line_examples {
        t += &format!("  line {line}: {}\n", output::cut_to_width(text, Some(100)));
    }
    t
}

/// What the report says about the run as a whole.
pub struct Run<'a> {
    /// `--check`: the input only read.
    pub check: bool,
    pub elapsed_ns: u64,
    pub input_ns: u64,
    pub speed: f64,
    pub filtered: u64,
    pub format: &'a str,
    pub input: &'a InputStats,
}

fn session_row(s: &SessionSummary) -> rec::SessionRow<'_> {
    rec::SessionRow {
        session: s.key,
        user: &s.login.user,
        database: &s.login.database,
        application_name: &s.application,
        writes: s.lag.calls,
        lag_p50_ns: s.lag.percentile_ns(50.0) as u64,
        lag_p99_ns: s.lag.percentile_ns(99.0) as u64,
        lag_max_ns: s.lag.max_ns,
        unsent: s.unsent,
        queued: s.queued,
        error: s.error.as_deref(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(sql: &str, ns: u64, error: bool) -> Completed {
        Completed {
            sql: sql.into(),
            started_ns: 1_000,
            finished_ns: 1_000 + ns,
            sqlstate: error.then(|| "42883".into()),
            error: error.then(|| "operator is not unique".into()),
            ..Completed::default()
        }
    }

    #[test]
    fn statements_group_by_normalized_text_and_sort_by_time_added() {
        let mut r = Report::new(20, Shown::Normalized);
        for i in 0..10 {
            let q = format!("select * from t where id = {i}");
            r.add(Outcome::Original {
                key: 1,
                completed: done(&q, 1_000_000, false),
                timed: true,
            });
            r.add(Outcome::Replayed {
                key: 1,
                completed: done(&q, 3_000_000, false),
            });
        }
        r.add(Outcome::Original {
            key: 1,
            completed: done("select 1", 5_000_000, false),
            timed: true,
        });
        r.add(Outcome::Replayed {
            key: 1,
            completed: done("select 1", 1_000_000, true),
        });
        let sorted = r.sorted(false);
        assert_eq!(sorted.len(), 2);
        assert_eq!(sorted[0].0, "select * from t where id = $1");
        assert_eq!(sorted[0].1.added_ns(), 20_000_000);
        assert!((sorted[0].1.ratio().unwrap() - 3.0).abs() < 0.01);
        assert_eq!(sorted[1].1.new_errors(), 1);
        let input = InputStats::default();
        let run = Run {
            check: false,
            elapsed_ns: 1,
            input_ns: 1,
            speed: 1.0,
            filtered: 0,
            format: "capture",
            input: &input,
        };
        let summary = r.summary(&run);
        let text = r.text(None, &summary, &run);
        assert!(
            text.contains(
                "Statements: 11 original, 11 replayed; errors: 0 original, 1 replayed, 1 new"
            ),
            "{text}"
        );
        assert!(text.contains("Errors new in the replay:"), "{text}");
        assert!(text.contains("42883: operator is not unique"), "{text}");
    }
}
