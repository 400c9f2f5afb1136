//! Server logs → replay events, streamed in constant memory: entries of any format
//! ([`formats`]) are read one at a time, each session's statements turned into the
//! messages that run them again ([`statement`]), with the original's durations when the log
//! has them (`log_min_duration_statement = 0`) and its errors.
//!
//! What each setting writes, and how it is read:
//! - `log_statement = 'all'`: `statement: SQL` and `execute <name>: SQL` (+ `DETAIL:
//!   parameters: …`) as each statement starts; a following `duration: X ms` (with
//!   `log_min_duration_statement = 0` too) is its duration.
//! - `log_min_duration_statement = 0` alone: `duration: X ms  statement: SQL` as it ends;
//!   it started X earlier.
//! - an `ERROR` with `STATEMENT: SQL`: the statement logged before it failed; when none
//!   was logged (it failed before `log_min_duration_statement` could log it) the statement
//!   is replayed from the STATEMENT line.
//! - `connection authorized` / `disconnection` (log_connections, log_disconnections) begin
//!   and end sessions; without them a session begins at its first statement and ends with
//!   the log.
//!
//! Statements logged at their end are placed at their start; a small window of events is
//! held and sorted so that they go out in time order ([`REORDER_NS`]), within a memory
//! bound ([`HELD_BYTES_LIMIT`]).

mod formats;
mod held;
pub mod prefix;
mod statement;
mod types;

use std::{
    fs::File,
    io::{BufRead, BufReader},
    path::Path,
};

use anyhow::Context as _;
use bytes::BytesMut;
use foldhash::{HashMap, HashMapExt as _, HashSet};
use pgbpf_pgwire::conn::Completed;

use crate::{
    client::Login,
    input::{Format, LogOptions},
    source::{Event, InputStats, Place, Source, Window},
};
use formats::{Entries, Entry};
use statement::{Logged, Message};

/// Events are held until the log is this far past them, so that statements logged at
/// their end (and placed at their start) go out in order.
pub const REORDER_NS: u64 = 2_000_000_000;
/// ... unless they hold more than this: then the earliest go out sooner (a busy server's two
/// seconds of log can be hundreds of MB). Sessions stay in order either way, since the
/// earliest held event always goes first; only a statement that ran longer than the log
/// held may then go out a little late.
pub const HELD_BYTES_LIMIT: usize = 8 << 20;

/// A statement waiting for its `duration:` line (log_statement logged it as it started).
struct Pending {
    ts_ns: u64,
    sql: String,
    execute: Option<(String, Vec<Option<String>>)>,
    error: Option<(String, String)>,
}

/// One session of the log.
struct SessionState {
    key: u64,
    begun: bool,
    login: Login,
    pending: Option<Pending>,
    /// Time of its last event: its events never go back in time.
    last_ns: u64,
    /// Answers its statements asked for so far (each waits for the ones before).
    asked: u64,
    /// Named statements already prepared in the replay's session.
    prepared: HashSet<String>,
}

/// A server log being read.
pub struct LogSource {
    entries: Box<dyn Entries>,
    path: String,
    sessions: HashMap<String, SessionState>,
    next_key: u64,
    held: held::Held,
    /// The latest time a line carried.
    latest_ns: u64,
    window: Window,
    first_ns: Option<u64>,
    /// Sessions given a Begin and no End yet (for the end of the window).
    open: HashSet<u64>,
    stats: InputStats,
    prober: types::Prober,
    options: crate::replay::Options,
    target: crate::conninfo::Target,
    done: bool,
    buf: BytesMut,
    format: Format,
    /// Entries that parsed (none in a file that is not such a log: an error).
    entries_read: u64,
}

impl LogSource {
    pub fn open(
        path: &Path,
        format: Format,
        window: Window,
        opts: &LogOptions,
    ) -> anyhow::Result<LogSource> {
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let input = Box::new(BufReader::with_capacity(1 << 20, file));
        LogSource::from_reader(&path.display().to_string(), input, format, window, opts)
    }

    /// A log read from `input` (`name` is how messages call it).
    pub fn from_reader(
        name: &str,
        input: Box<dyn BufRead + Send>,
        format: Format,
        window: Window,
        opts: &LogOptions,
    ) -> anyhow::Result<LogSource> {
        let entries: Box<dyn Entries> = match format {
            Format::Csvlog => Box::new(formats::Csv::new(input, opts.strict)),
            Format::Jsonlog => Box::new(formats::Json::new(input, opts.strict)),
            _ => Box::new(formats::Stderr::new(
                input,
                prefix::Prefix::compile(&opts.log_line_prefix)?,
                opts.strict,
            )),
        };
        let prober = types::Prober::new(
            opts.probe_types.then(|| opts.target.clone()),
            opts.passwords.clone(),
        )?;
        Ok(LogSource {
            entries,
            path: name.to_string(),
            sessions: HashMap::new(),
            next_key: 1,
            held: held::Held::default(),
            latest_ns: 0,
            window,
            first_ns: None,
            open: HashSet::default(),
            stats: InputStats::default(),
            prober,
            options: opts.replay.clone(),
            target: opts.target.clone(),
            done: false,
            buf: BytesMut::new(),
            format: match format {
                Format::Csvlog | Format::Jsonlog => format,
                _ => Format::Stderr,
            },
            entries_read: 0,
        })
    }

    fn hold(&mut self, ts_ns: u64, event: Event) {
        self.held.push(ts_ns, event);
    }

    /// Reads one entry into held events; false at the end of the log.
    fn read_entry(&mut self) -> anyhow::Result<bool> {
        let Some(e) = self
            .entries
            .next_entry(&mut self.stats)
            .with_context(|| self.path.clone())?
        else {
            if self.entries_read == 0 && self.stats.bad_lines > 0 {
                let first = self
                    .stats
                    .bad_line_examples
                    .first()
                    .map(|(_, t)| t.as_str())
                    .unwrap_or_default();
                anyhow::bail!(
                    "{}: no line is a log line of the {} format{} (the first: {first:?})",
                    self.path,
                    self.format.name(),
                    if self.format == Format::Stderr {
                        " with this --log-line-prefix"
                    } else {
                        ""
                    }
                );
            }
            self.end_all();
            return Ok(false);
        };
        self.entries_read += 1;
        self.latest_ns = self.latest_ns.max(e.ts_ns);
        if e.session.is_empty() {
            return Ok(true);
        }
        match e.severity.as_str() {
            "LOG" => self.on_log(&e),
            "ERROR" | "FATAL" => self.on_error(&e),
            _ => {}
        }
        Ok(true)
    }

    fn session(&mut self, e: &Entry) -> &mut SessionState {
        if !self.sessions.contains_key(&e.session) {
            let key = self.next_key;
            self.next_key += 1;
            let mut params = vec![];
            for (k, v) in [
                ("user", &e.user),
                ("database", &e.database),
                ("application_name", &e.application),
            ] {
                if !v.is_empty() && !v.starts_with('[') {
                    params.push((k.to_string(), v.clone()));
                }
            }
            let login =
                crate::replay::login_of(&self.options, &self.target, &params).unwrap_or_default();
            self.sessions.insert(
                e.session.clone(),
                SessionState {
                    key,
                    begun: false,
                    login: Login { params, ..login },
                    pending: None,
                    last_ns: 0,
                    asked: 0,
                    prepared: HashSet::default(),
                },
            );
        }
        self.sessions.get_mut(&e.session).expect("inserted above")
    }

    fn on_log(&mut self, e: &Entry) {
        match statement::classify(&e.message) {
            Message::Authorized {
                user,
                database,
                application,
            } => {
                // A new session on a key in use (a pid reused without a disconnection line).
                if self.sessions.get(&e.session).is_some_and(|s| s.begun) {
                    self.end_session(&e.session, e.ts_ns);
                }
                let mut entry = e.clone();
                entry.user = user.to_string();
                entry.database = database.to_string();
                entry.application = application.to_string();
                self.begin(&entry);
            }
            Message::Disconnection => self.end_session(&e.session, e.ts_ns),
            Message::Statement {
                duration_ns,
                logged,
            } => {
                self.flush(&e.session);
                let pending = self.pending_of(e, &logged);
                match duration_ns {
                    None => {
                        self.session(e).pending = Some(pending);
                    }
                    Some(d) => {
                        let start = e.ts_ns.saturating_sub(d);
                        self.emit(
                            e,
                            Pending {
                                ts_ns: start,
                                ..pending
                            },
                            Some(d),
                        );
                    }
                }
            }
            Message::Duration(d) => {
                if let Some(p) = self
                    .sessions
                    .get_mut(&e.session)
                    .and_then(|s| s.pending.take())
                {
                    self.emit(e, p, Some(d));
                }
            }
            Message::Other => {}
        }
    }

    fn pending_of(&mut self, e: &Entry, logged: &Logged<'_>) -> Pending {
        match logged {
            Logged::Simple { sql } => Pending {
                ts_ns: e.ts_ns,
                sql: sql.to_string(),
                execute: None,
                error: None,
            },
            Logged::Execute { name, sql } => {
                let params = e
                    .detail
                    .as_deref()
                    .and_then(statement::parameters)
                    .unwrap_or_default();
                Pending {
                    ts_ns: e.ts_ns,
                    sql: sql.to_string(),
                    execute: Some((name.to_string(), params)),
                    error: None,
                }
            }
        }
    }

    fn on_error(&mut self, e: &Entry) {
        let Some(stmt) = &e.statement else { return };
        let code = e.sqlstate.clone().unwrap_or_else(|| "?????".into());
        let error = Some((code, e.message.clone()));
        match self
            .sessions
            .get_mut(&e.session)
            .and_then(|s| s.pending.take())
        {
            Some(p) => self.emit(e, Pending { error, ..p }, None),
            None => {
                let p = Pending {
                    ts_ns: e.ts_ns,
                    sql: stmt.clone(),
                    execute: None,
                    error,
                };
                self.emit(e, p, None);
            }
        }
    }

    fn begin(&mut self, e: &Entry) {
        let ts = e.ts_ns;
        let s = self.session(e);
        if s.begun {
            return;
        }
        s.begun = true;
        s.last_ns = ts;
        let (key, startup) = (s.key, s.login.params.clone());
        self.stats.sessions += 1;
        self.hold(
            ts,
            Event::Begin {
                key,
                ts_ns: ts,
                startup,
            },
        );
    }

    /// A statement waiting for its duration goes out without one.
    fn flush(&mut self, session: &str) {
        let Some(p) = self
            .sessions
            .get_mut(session)
            .and_then(|s| s.pending.take())
        else {
            return;
        };
        let e = Entry {
            session: session.to_string(),
            ts_ns: p.ts_ns,
            ..Entry::default()
        };
        self.emit(&e, p, None);
    }

    fn end_session(&mut self, session: &str, ts_ns: u64) {
        self.flush(session);
        if let Some(s) = self.sessions.remove(session)
            && s.begun
        {
            let ts = ts_ns.max(s.last_ns);
            self.hold(
                ts,
                Event::End {
                    key: s.key,
                    ts_ns: ts,
                },
            );
        }
    }

    fn end_all(&mut self) {
        let names: Vec<String> = self.sessions.keys().cloned().collect();
        for n in names {
            let ts = self.sessions.get(&n).map_or(0, |s| s.last_ns);
            self.end_session(&n, ts);
        }
    }

    /// The statement as messages to send and the original's completion.
    fn emit(&mut self, e: &Entry, p: Pending, duration_ns: Option<u64>) {
        if is_copy_from_stdin(&p.sql) {
            self.stats.skipped_copy += 1;
            return;
        }
        self.begin(e);
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        let s = self.sessions.get_mut(&e.session).expect("begun above");
        let start = p.ts_ns.max(s.last_ns);
        s.last_ns = start;
        let encoded = match &p.execute {
            None => statement::query(&p.sql, &mut buf),
            Some((name, values)) => {
                let parse = name.is_empty() || !s.prepared.contains(name);
                let types = if parse {
                    self.prober.types(&s.login, &p.sql, values)
                } else {
                    vec![]
                };
                if !name.is_empty() {
                    s.prepared.insert(name.clone());
                }
                statement::execute(name, &p.sql, parse, &types, values, &mut buf)
            }
        };
        if encoded.is_err() {
            // A statement the protocol cannot carry (a NUL byte in its text).
            self.stats.bad_lines += 1;
            self.buf = buf;
            return;
        }
        let (key, after_ready) = (s.key, s.asked);
        s.asked += 1;
        let bytes = buf.to_vec();
        self.buf = buf;
        self.hold(
            start,
            Event::Send {
                key,
                ts_ns: start,
                bytes,
                after_ready,
                answers: 1,
            },
        );
        let (sqlstate, error) = p.error.map_or((None, None), |(c, m)| (Some(c), Some(m)));
        // As the replay's decoder names them: a simple query's statements one by one, each
        // with its share of the duration; an error goes to the last (where it stopped).
        let extended = p.execute.is_some();
        let pieces = if extended {
            vec![p.sql]
        } else {
            pgbpf_pgwire::conn::statements_of(p.sql)
        };
        let n = pieces.len().max(1) as u64;
        let share = duration_ns.unwrap_or(0) / n;
        let last = pieces.len().saturating_sub(1);
        for (i, sql) in pieces.into_iter().enumerate() {
            let at = start + share * i as u64;
            let failed = i == last;
            let completed = Completed {
                sql,
                extended,
                started_ns: at,
                finished_ns: at + share,
                sqlstate: if failed { sqlstate.clone() } else { None },
                error: if failed { error.clone() } else { None },
                ..Completed::default()
            };
            self.hold(
                start,
                Event::Original {
                    key,
                    completed,
                    timed: duration_ns.is_some(),
                },
            );
        }
    }

    /// The next held event that may go out, through the window.
    fn release(&mut self) -> Option<Event> {
        loop {
            let ready = self.held.first_ns().is_some_and(|ts| {
                self.done
                    || ts + REORDER_NS <= self.latest_ns
                    || self.held.bytes() > HELD_BYTES_LIMIT
            });
            if !ready {
                return None;
            }
            let (ts_ns, event) = self.held.pop()?;
            let first = *self.first_ns.get_or_insert(ts_ns);
            let start = first + self.window.start_ns;
            match (self.window.place(first, ts_ns), event) {
                (Place::Inside, e @ Event::Begin { key, .. }) => {
                    self.open.insert(key);
                    return Some(e);
                }
                (Place::Before, Event::Begin { key, startup, .. }) => {
                    self.open.insert(key);
                    return Some(Event::Begin {
                        key,
                        ts_ns: start,
                        startup,
                    });
                }
                (Place::Inside, e @ Event::End { key, .. }) => {
                    self.open.remove(&key);
                    return Some(e);
                }
                (Place::Before, Event::End { key, .. }) => {
                    if self.open.remove(&key) {
                        return Some(Event::End { key, ts_ns: start });
                    }
                }
                (Place::Inside, e) => return Some(e),
                (Place::Before, _) => {}
                (Place::After, _) => {
                    // The window is over: the sessions still open end at its end.
                    let end = first + self.window.end_ns.unwrap_or(0);
                    self.held.clear();
                    self.sessions.clear();
                    self.done = true;
                    self.window.end_ns = None;
                    let open: Vec<u64> = self.open.drain().collect();
                    for key in open {
                        self.held.push(end, Event::End { key, ts_ns: end });
                    }
                }
            }
        }
    }
}

/// `COPY … FROM STDIN`: the server would wait for data the log does not have.
fn is_copy_from_stdin(sql: &str) -> bool {
    let lower = sql
        .trim_start()
        .get(..4)
        .is_some_and(|w| w.eq_ignore_ascii_case("copy"));
    lower
        && sql
            .to_ascii_lowercase()
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w == ["from", "stdin"] || w == ["from", "stdin;"])
}

impl Source for LogSource {
    fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            if let Some(e) = self.release() {
                return Ok(Some(e));
            }
            if self.done {
                return Ok(None);
            }
            self.done = !self.read_entry()?;
        }
    }

    fn stats(&mut self) -> InputStats {
        self.stats.clone()
    }
}
