//! What every input (capture file, server log) turns into: one stream of events in time
//! order, read as the replay goes (constant memory however long the input), each event
//! naming its session. The replay schedules them; the report keeps the originals.

use pgbpf_pgwire::conn::Completed;

/// One thing that happened in the original traffic.
#[derive(Debug)]
pub enum Event {
    /// A session starts: connect and log in at `ts_ns`.
    Begin {
        key: u64,
        ts_ns: u64,
        /// The start-up parameters (user, database, application_name, ...); empty when the
        /// input does not hold them (joined midway).
        startup: Vec<(String, String)>,
    },
    /// Bytes the client sent in one write: whole frontend messages.
    Send {
        key: u64,
        ts_ns: u64,
        bytes: Vec<u8>,
        /// The original client had received this many ReadyForQuery (since the session
        /// began) when it sent them: the replay waits for as many, so a client that waited
        /// for its answers waits in the replay too, and one that pipelined pipelines.
        after_ready: u64,
        /// ReadyForQuery answers these bytes ask for (each Query, Sync and FunctionCall).
        answers: u64,
    },
    /// A statement of the original session completed: the baseline of the report. `timed`:
    /// its duration is known (a log without `log_min_duration_statement` has none).
    Original {
        key: u64,
        completed: Completed,
        timed: bool,
    },
    /// The session ends: terminate and close at `ts_ns`.
    End { key: u64, ts_ns: u64 },
}

impl Event {
    pub fn ts_ns(&self) -> u64 {
        match self {
            Event::Begin { ts_ns, .. } | Event::Send { ts_ns, .. } | Event::End { ts_ns, .. } => {
                *ts_ns
            }
            Event::Original { completed, .. } => completed.started_ns,
        }
    }
}

/// A part of the input's time line, as offsets from its first event (`--start`/`--end`).
#[derive(Clone, Copy, Debug, Default)]
pub struct Window {
    pub start_ns: u64,
    pub end_ns: Option<u64>,
}

impl Window {
    /// Where `ts_ns` falls, given the input's first timestamp.
    pub fn place(&self, first_ns: u64, ts_ns: u64) -> Place {
        let offset = ts_ns.saturating_sub(first_ns);
        if offset < self.start_ns {
            Place::Before
        } else if self.end_ns.is_some_and(|e| offset >= e) {
            Place::After
        } else {
            Place::Inside
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Place {
    Before,
    Inside,
    After,
}

/// Bad lines shown with their line numbers (the rest are counted).
pub const BAD_LINE_EXAMPLES: usize = 5;

/// What an input could not give to the replay, counted as it is read.
#[derive(Clone, Debug, Default)]
pub struct InputStats {
    pub sessions: u64,
    /// Sessions that switched to TLS: nothing of them is visible in a socket capture.
    pub encrypted_sessions: u64,
    /// Sessions cut short because a message was not captured whole (the capture limit, or
    /// bytes lost in the kernel): nothing after it is replayed.
    pub incomplete_sessions: u64,
    /// Binds, Executes and Describes of statements prepared before the input began,
    /// skipped (one prepared before `--start` is prepared again at its first use).
    pub skipped_unprepared: u64,
    /// `COPY … FROM STDIN` statements of a log, skipped: their data is not in it.
    pub skipped_copy: u64,
    /// Log lines that did not parse, and the first few of them with their line numbers.
    pub bad_lines: u64,
    pub bad_line_examples: Vec<(u64, String)>,
    /// Bytes read so far.
    pub bytes: u64,
}

/// An input being read.
pub trait Source: Send {
    /// The next event in time order; `None` at the end of the input.
    fn next_event(&mut self) -> anyhow::Result<Option<Event>>;
    /// What was counted so far.
    fn stats(&mut self) -> InputStats;
}

/// How many ReadyForQuery answers a client's messages ask for: one per Query ('Q'), Sync
/// ('S') and FunctionCall ('F').
pub fn answers_asked(bytes: &[u8]) -> u64 {
    let mut n = 0;
    let mut i = 0;
    while i + 5 <= bytes.len() {
        if matches!(bytes[i], b'Q' | b'S' | b'F') {
            n += 1;
        }
        let len = u32::from_be_bytes([bytes[i + 1], bytes[i + 2], bytes[i + 3], bytes[i + 4]]);
        i += 1 + len.max(4) as usize;
    }
    n
}
