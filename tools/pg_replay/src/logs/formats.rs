//! The three log formats read into one kind of entry, streamed (one line or record at a
//! time, buffers reused): stderr with its `log_line_prefix` (DETAIL and STATEMENT lines
//! joined to the message they belong to, tab-indented continuation lines to the field they
//! continue), csvlog (quoted multi-line fields, by the `csv` crate) and jsonlog.

use std::{borrow::Cow, io::BufRead};

use anyhow::Context as _;
use serde::Deserialize;

use super::prefix::{Prefix, severity, timestamp};
use crate::source::{BAD_LINE_EXAMPLES, InputStats};

/// One log message with what came with it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Entry {
    pub line: u64,
    pub ts_ns: u64,
    /// The session id (`%c`, csvlog's and jsonlog's session_id), else `pid N`.
    pub session: String,
    pub user: String,
    pub database: String,
    pub application: String,
    pub severity: String,
    pub sqlstate: Option<String>,
    pub message: String,
    pub detail: Option<String>,
    /// The statement an error happened in (`STATEMENT:`).
    pub statement: Option<String>,
}

/// A reader of one format.
pub trait Entries: Send {
    /// The next entry; lines that do not parse are counted in `stats` (an error with
    /// `strict`).
    fn next_entry(&mut self, stats: &mut InputStats) -> anyhow::Result<Option<Entry>>;
}

/// Counts a line that did not parse and keeps the first few; with `--strict` it is an error.
pub fn bad_line(stats: &mut InputStats, strict: bool, line: u64, text: &str) -> anyhow::Result<()> {
    if strict {
        anyhow::bail!(
            "line {line} does not parse (--strict): {}",
            text.chars().take(200).collect::<String>()
        );
    }
    stats.bad_lines += 1;
    if stats.bad_line_examples.len() < BAD_LINE_EXAMPLES {
        stats
            .bad_line_examples
            .push((line, text.chars().take(200).collect()));
    }
    Ok(())
}

/// Which field a continuation line continues.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Open {
    Message,
    Detail,
    Statement,
    Other,
}

/// A stderr log.
pub struct Stderr<R> {
    input: R,
    prefix: Prefix,
    strict: bool,
    buf: Vec<u8>,
    line: u64,
    current: Option<Entry>,
    open: Open,
}

impl<R: BufRead> Stderr<R> {
    pub fn new(input: R, prefix: Prefix, strict: bool) -> Stderr<R> {
        Stderr {
            input,
            prefix,
            strict,
            buf: Vec::with_capacity(4096),
            line: 0,
            current: None,
            open: Open::Other,
        }
    }
}

impl<R: BufRead + Send> Entries for Stderr<R> {
    fn next_entry(&mut self, stats: &mut InputStats) -> anyhow::Result<Option<Entry>> {
        loop {
            self.buf.clear();
            let n = self
                .input
                .read_until(b'\n', &mut self.buf)
                .with_context(|| format!("reading line {}", self.line + 1))?;
            if n == 0 {
                return Ok(self.current.take());
            }
            stats.bytes += n as u64;
            self.line += 1;
            // Checked as UTF-8 first: the lossy conversion is slower on the valid lines
            // that nearly all are.
            let text = match std::str::from_utf8(&self.buf) {
                Ok(t) => Cow::Borrowed(t),
                Err(_) => String::from_utf8_lossy(&self.buf),
            };
            let text = text.trim_end_matches(['\n', '\r']);
            if let Some(more) = text.strip_prefix('\t')
                && let Some(e) = &mut self.current
            {
                let field = match self.open {
                    Open::Message => Some(&mut e.message),
                    Open::Detail => e.detail.as_mut(),
                    Open::Statement => e.statement.as_mut(),
                    Open::Other => None,
                };
                if let Some(f) = field {
                    f.push('\n');
                    f.push_str(more);
                }
                continue;
            }
            let Some((fields, rest)) = self.prefix.parse(text) else {
                if !text.is_empty() {
                    bad_line(stats, self.strict, self.line, text)?;
                }
                continue;
            };
            let Some((sev, body)) = severity(rest) else {
                continue;
            };
            let session = fields
                .session
                .map(str::to_string)
                .or_else(|| fields.pid.map(|p| format!("pid {p}")))
                .unwrap_or_default();
            // Lines that belong to the message before (same process).
            let belongs = self.current.as_ref().is_some_and(|c| c.session == session);
            if belongs
                && matches!(
                    sev,
                    "DETAIL" | "HINT" | "CONTEXT" | "STATEMENT" | "QUERY" | "LOCATION"
                )
            {
                let e = self.current.as_mut().expect("checked above");
                self.open = match sev {
                    "DETAIL" => {
                        e.detail = Some(body.to_string());
                        Open::Detail
                    }
                    "STATEMENT" => {
                        e.statement = Some(body.to_string());
                        Open::Statement
                    }
                    _ => Open::Other,
                };
                continue;
            }
            let entry = Entry {
                line: self.line,
                ts_ns: fields.ts_ns.unwrap_or(0),
                session,
                user: fields.user.unwrap_or_default().to_string(),
                database: fields.database.unwrap_or_default().to_string(),
                application: fields.application.unwrap_or_default().to_string(),
                severity: sev.to_string(),
                sqlstate: fields.sqlstate.map(str::to_string),
                message: body.to_string(),
                detail: None,
                statement: None,
            };
            self.open = Open::Message;
            if let Some(done) = self.current.replace(entry) {
                return Ok(Some(done));
            }
        }
    }
}

/// csvlog's columns (PostgreSQL 9.0 to 15; later versions add columns at the end).
mod col {
    pub const TIME: usize = 0;
    pub const USER: usize = 1;
    pub const DATABASE: usize = 2;
    pub const PID: usize = 3;
    pub const SESSION: usize = 5;
    pub const SEVERITY: usize = 11;
    pub const SQLSTATE: usize = 12;
    pub const MESSAGE: usize = 13;
    pub const DETAIL: usize = 14;
    pub const QUERY: usize = 19;
    pub const APPLICATION: usize = 22;
    pub const AT_LEAST: usize = 23;
}

/// A csvlog file.
pub struct Csv<R: std::io::Read> {
    reader: csv::Reader<R>,
    record: csv::ByteRecord,
    strict: bool,
}

impl<R: std::io::Read> Csv<R> {
    pub fn new(input: R, strict: bool) -> Csv<R> {
        Csv {
            reader: csv::ReaderBuilder::new()
                .has_headers(false)
                .flexible(true)
                .buffer_capacity(1 << 20)
                .from_reader(input),
            record: csv::ByteRecord::new(),
            strict,
        }
    }
}

impl<R: std::io::Read + Send> Entries for Csv<R> {
    fn next_entry(&mut self, stats: &mut InputStats) -> anyhow::Result<Option<Entry>> {
        loop {
            let before = self.reader.position().byte();
            let more = match self.reader.read_byte_record(&mut self.record) {
                Ok(more) => more,
                Err(e) if e.is_io_error() => return Err(e).context("reading the csvlog"),
                Err(e) => {
                    let line = self.reader.position().line();
                    bad_line(stats, self.strict, line, &e.to_string())?;
                    continue;
                }
            };
            stats.bytes += self.reader.position().byte() - before;
            if !more {
                return Ok(None);
            }
            let r = &self.record;
            let line = r.position().map_or(0, |p| p.line());
            let field = |i: usize| String::from_utf8_lossy(r.get(i).unwrap_or_default());
            let ts = timestamp(&field(col::TIME), true).map(|(ns, _)| ns);
            let (Some(ts_ns), true) = (ts, r.len() >= col::AT_LEAST) else {
                let text = String::from_utf8_lossy(r.as_slice()).into_owned();
                bad_line(stats, self.strict, line, &text)?;
                continue;
            };
            let optional = |i: usize| Some(field(i).into_owned()).filter(|s| !s.is_empty());
            let session =
                optional(col::SESSION).unwrap_or_else(|| format!("pid {}", field(col::PID)));
            return Ok(Some(Entry {
                line,
                ts_ns,
                session,
                user: field(col::USER).into_owned(),
                database: field(col::DATABASE).into_owned(),
                application: field(col::APPLICATION).into_owned(),
                severity: field(col::SEVERITY).into_owned(),
                sqlstate: optional(col::SQLSTATE),
                message: field(col::MESSAGE).into_owned(),
                detail: optional(col::DETAIL),
                statement: optional(col::QUERY),
            }));
        }
    }
}

/// One jsonlog line: the keys a replay reads (PostgreSQL 15 writes more).
#[derive(Deserialize)]
struct JsonLine<'a> {
    #[serde(borrow)]
    timestamp: Option<Cow<'a, str>>,
    #[serde(borrow)]
    user: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dbname: Option<Cow<'a, str>>,
    pid: Option<u32>,
    #[serde(borrow)]
    session_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    error_severity: Option<Cow<'a, str>>,
    #[serde(borrow)]
    state_code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow)]
    detail: Option<Cow<'a, str>>,
    #[serde(borrow)]
    statement: Option<Cow<'a, str>>,
    #[serde(borrow)]
    application_name: Option<Cow<'a, str>>,
}

/// A jsonlog file.
pub struct Json<R> {
    input: R,
    strict: bool,
    buf: Vec<u8>,
    line: u64,
}

impl<R: BufRead> Json<R> {
    pub fn new(input: R, strict: bool) -> Json<R> {
        Json {
            input,
            strict,
            buf: Vec::with_capacity(4096),
            line: 0,
        }
    }
}

impl<R: BufRead + Send> Entries for Json<R> {
    fn next_entry(&mut self, stats: &mut InputStats) -> anyhow::Result<Option<Entry>> {
        loop {
            self.buf.clear();
            let n = self
                .input
                .read_until(b'\n', &mut self.buf)
                .with_context(|| format!("reading line {}", self.line + 1))?;
            if n == 0 {
                return Ok(None);
            }
            stats.bytes += n as u64;
            self.line += 1;
            let text = self.buf.trim_ascii();
            if text.is_empty() {
                continue;
            }
            let parsed: Option<JsonLine<'_>> = serde_json::from_slice(text).ok();
            let ts = parsed
                .as_ref()
                .and_then(|j| j.timestamp.as_deref())
                .and_then(|t| timestamp(t, true))
                .map(|(ns, _)| ns);
            let (Some(j), Some(ts_ns)) = (parsed, ts) else {
                let shown = String::from_utf8_lossy(text).into_owned();
                bad_line(stats, self.strict, self.line, &shown)?;
                continue;
            };
            let own = |v: Option<Cow<'_, str>>| v.map(Cow::into_owned).unwrap_or_default();
            let session = j
                .session_id
                .map(Cow::into_owned)
                .unwrap_or_else(|| format!("pid {}", j.pid.unwrap_or(0)));
            return Ok(Some(Entry {
                line: self.line,
                ts_ns,
                session,
                user: own(j.user),
                database: own(j.dbname),
                application: own(j.application_name),
                severity: own(j.error_severity),
                sqlstate: j.state_code.map(Cow::into_owned),
                message: own(j.message),
                detail: j.detail.map(Cow::into_owned),
                statement: j.statement.map(Cow::into_owned),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(e: &mut dyn Entries) -> (Vec<Entry>, InputStats) {
        let mut stats = InputStats::default();
        let mut v = vec![];
        while let Some(x) = e.next_entry(&mut stats).unwrap() {
            v.push(x);
        }
        (v, stats)
    }

    #[test]
    fn stderr_joins_details_statements_and_continuation_lines() {
        let log = "\
2026-12-02 08:01:46.220 UTC [15225] postgres@postgres LOG:  execute <unnamed>: select $1
2026-12-02 08:01:46.220 UTC [15225] postgres@postgres DETAIL:  parameters: $1 = 'multi
\tline'
2026-12-02 08:01:46.222 UTC [15225] postgres@postgres LOG:  statement: select
\t  2
not a log line
2026-12-02 08:01:46.027 UTC [15221] postgres@postgres ERROR:  division by zero
2026-12-02 08:01:46.027 UTC [15221] postgres@postgres STATEMENT:  select 1/0
";
        let prefix = Prefix::compile("%m [%p] %q%u@%d ").unwrap();
        let (v, stats) = all(&mut Stderr::new(log.as_bytes(), prefix, false));
        assert_eq!(v.len(), 3);
        assert_eq!(
            v[0].detail.as_deref(),
            Some("parameters: $1 = 'multi\nline'")
        );
        assert_eq!(v[1].message, "statement: select\n  2");
        assert_eq!(v[2].severity, "ERROR");
        assert_eq!(v[2].statement.as_deref(), Some("select 1/0"));
        assert_eq!(v[2].session, "pid 15221");
        assert_eq!(stats.bad_lines, 1);
        assert_eq!(stats.bad_line_examples, [(6, "not a log line".to_string())]);
        let strict = Prefix::compile("%m [%p] %q%u@%d ").unwrap();
        let mut s = Stderr::new(log.as_bytes(), strict, true);
        let mut st = InputStats::default();
        let err = loop {
            match s.next_entry(&mut st) {
                Err(e) => break e,
                Ok(None) => panic!("--strict let a bad line through"),
                Ok(Some(_)) => {}
            }
        };
        assert!(err.to_string().contains("line 6"), "{err}");
    }

    #[test]
    fn csvlog_records_with_quoted_newlines_parse() {
        let log = "2026-12-02 08:01:45.971 UTC,\"postgres\",\"app\",15219,\"[local]\",6b0fd069.3b73,5,\"SELECT\",2026-12-02 08:01:45 UTC,3/31,0,LOG,00000,\"execute <unnamed>: select $1\",\"parameters: $1 = 'a \"\"quoted\"\"\nline'\",,,,,,,,\"pgbench\",\"client backend\",,0\nbroken,line\n";
        let (v, stats) = all(&mut Csv::new(log.as_bytes(), false));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].session, "6b0fd069.3b73");
        assert_eq!(v[0].database, "app");
        assert_eq!(v[0].application, "pgbench");
        assert_eq!(v[0].sqlstate.as_deref(), Some("00000"));
        assert_eq!(
            v[0].detail.as_deref(),
            Some("parameters: $1 = 'a \"quoted\"\nline'")
        );
        assert_eq!(stats.bad_lines, 1);
    }

    #[test]
    fn jsonlog_lines_parse_and_bad_ones_are_counted() {
        let log = "{\"timestamp\":\"2026-12-02 08:01:45.963 UTC\",\"user\":\"postgres\",\"dbname\":\"postgres\",\"pid\":15218,\"session_id\":\"6b0fd069.3b72\",\"error_severity\":\"LOG\",\"message\":\"statement: select 'x\\ny'\",\"application_name\":\"pgbench\"}\n{\"timestamp\": 5}\n\n{oops\n";
        let (v, stats) = all(&mut Json::new(log.as_bytes(), false));
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].message, "statement: select 'x\ny'");
        assert_eq!(stats.bad_lines, 2);
    }
}
