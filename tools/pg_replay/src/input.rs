//! The input files: what kind each is (recognised from its first bytes unless `--format`
//! says), and several files read one after the other as one time line (a day of rotated
//! logs, consecutive captures), their sessions kept apart.

use std::{
    io::Read as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;

use crate::{
    capture::CaptureSource,
    source::{Event, InputStats, Source, Window},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Recognised from the content
    Auto,
    /// A pgwire_trace --record file
    Capture,
    /// A server log in the stderr format (log_destination = 'stderr', with --log-line-prefix)
    Stderr,
    /// A csvlog file
    Csvlog,
    /// A jsonlog file (PostgreSQL 15)
    Jsonlog,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Capture => "capture",
            Format::Stderr => "stderr",
            Format::Csvlog => "csvlog",
            Format::Jsonlog => "jsonlog",
        }
    }
}

/// What the file's first bytes say it is.
pub fn detect(path: &Path) -> anyhow::Result<Format> {
    let mut head = [0u8; 512];
    let mut file = pgbpf_common::cli::open_input(path)?;
    let n = file
        .read(&mut head)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let head = &head[..n];
    if head.starts_with(pgbpf_capture::file::MAGIC) {
        return Ok(Format::Capture);
    }
    if head.first() == Some(&b'{') {
        return Ok(Format::Jsonlog);
    }
    // csvlog lines begin with the timestamp and a comma: `2026-12-02 07:00:00.123 UTC,`.
    let first_line = head.split(|&b| b == b'\n').next().unwrap_or(&[]);
    let text = String::from_utf8_lossy(first_line);
    if let Some((stamp, _)) = text.split_once(',')
        && crate::logs::prefix::timestamp(stamp, true).is_some_and(|(_, len)| len == stamp.len())
    {
        return Ok(Format::Csvlog);
    }
    Ok(Format::Stderr)
}

/// How to read the log inputs.
#[derive(Clone, Debug)]
pub struct LogOptions {
    pub log_line_prefix: String,
    pub strict: bool,
    /// Whom sessions log in as (the parameter types of a statement are asked of the target
    /// as that login).
    pub replay: crate::replay::Options,
    pub target: crate::conninfo::Target,
    pub passwords: crate::conninfo::Passwords,
    /// Ask the target for parameter types (not with `--check`, which connects nowhere).
    pub probe_types: bool,
}

/// One input of several files, read in the order given.
pub struct Inputs {
    files: Vec<(PathBuf, Format)>,
    window: Window,
    logs: LogOptions,
    current: Option<Box<dyn Source>>,
    index: usize,
    /// Stats of the files read to their end.
    stats: InputStats,
}

impl Inputs {
    /// Checks every file's kind now (a bad file is an error before anything is replayed).
    pub fn open(
        paths: &[PathBuf],
        format: Format,
        window: Window,
        logs: LogOptions,
    ) -> anyhow::Result<Inputs> {
        let mut files = vec![];
        for p in paths {
            let f = match format {
                Format::Auto => detect(p)?,
                f => f,
            };
            files.push((p.clone(), f));
        }
        let mut inputs = Inputs {
            files,
            window,
            logs,
            current: None,
            index: 0,
            stats: InputStats::default(),
        };
        // The first file is opened now: a file that is not what it seems is an error before
        // anything is replayed.
        if let Some((path, format)) = inputs.files.first().cloned() {
            inputs.current = Some(inputs.open_file(&path, format)?);
        }
        Ok(inputs)
    }

    /// The kinds of the files, for messages ("capture", "csvlog", ...).
    pub fn format_name(&self) -> &'static str {
        let first = self.files.first().map_or(Format::Auto, |f| f.1);
        if self.files.iter().all(|f| f.1 == first) {
            first.name()
        } else {
            "mixed"
        }
    }

    fn open_file(&self, path: &Path, format: Format) -> anyhow::Result<Box<dyn Source>> {
        Ok(match format {
            Format::Capture | Format::Auto => Box::new(CaptureSource::open(path, self.window)?),
            f => Box::new(crate::logs::LogSource::open(
                path,
                f,
                self.window,
                &self.logs,
            )?),
        })
    }
}

/// Sessions of different files never share a key: the file's number is in the top bits.
const FILE_SHIFT: u32 = 48;

impl Source for Inputs {
    fn next_event(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            if self.current.is_none() {
                let Some((path, format)) = self.files.get(self.index).cloned() else {
                    return Ok(None);
                };
                self.current = Some(self.open_file(&path, format)?);
            }
            let source = self.current.as_mut().expect("opened above");
            if let Some(mut e) = source.next_event()? {
                let tag = (self.index as u64) << FILE_SHIFT;
                match &mut e {
                    Event::Begin { key, .. }
                    | Event::Send { key, .. }
                    | Event::Original { key, .. }
                    | Event::End { key, .. } => *key |= tag,
                }
                return Ok(Some(e));
            }
            self.stats = add(&self.stats, &source.stats());
            self.current = None;
            self.index += 1;
        }
    }

    fn stats(&mut self) -> InputStats {
        match &mut self.current {
            Some(current) => add(&self.stats, &current.stats()),
            None => self.stats.clone(),
        }
    }
}

fn add(a: &InputStats, b: &InputStats) -> InputStats {
    let mut examples = a.bad_line_examples.clone();
    examples.extend(b.bad_line_examples.iter().cloned());
    examples.truncate(crate::source::BAD_LINE_EXAMPLES);
    InputStats {
        sessions: a.sessions + b.sessions,
        encrypted_sessions: a.encrypted_sessions + b.encrypted_sessions,
        incomplete_sessions: a.incomplete_sessions + b.incomplete_sessions,
        skipped_unprepared: a.skipped_unprepared + b.skipped_unprepared,
        skipped_copy: a.skipped_copy + b.skipped_copy,
        bad_lines: a.bad_lines + b.bad_lines,
        bad_line_examples: examples,
        bytes: a.bytes + b.bytes,
    }
}
