//! The life of a wire-protocol tool over the capture, one piece for every protocol: records
//! from the ring buffer (or a `--read` file) into the tool's decoder, the events it completes
//! into its report, every record into the `--record` file with its secrets overwritten, and
//! the end: connections of exited processes closed, the file ended with the kernel's
//! counters, the final report. A tool supplies a [`Wire`]: its decoder and its reporter.

use std::{
    fs::File,
    io::{self, BufWriter},
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, anyhow};
use pgbpf_common::{
    output::{self, Output},
    records::Scope,
    runtime::{Attached, Trace},
    target::TargetArgs,
};

use crate::{Capture, Protocol, Reader, Record, Writer, cli::CaptureArgs, mapped::Input};

/// A protocol's decoder and report, as the capture drives them.
pub trait Wire {
    type Event;
    /// Decodes one record; appends what it completed to `out`.
    fn feed(&mut self, r: &Record, out: &mut Vec<Self::Event>);
    /// Byte ranges of the payload of the record fed last that hold secrets (passwords): the
    /// capture file gets them overwritten.
    fn secrets(&self) -> &[(usize, usize)] {
        &[]
    }
    /// Ends every connection still open.
    fn finish(&mut self, out: &mut Vec<Self::Event>);
    /// Ends the connections of processes gone at `sampled_ns` (not `alive` then); returns
    /// their (tgid, fd).
    fn close_exited(
        &mut self,
        sampled_ns: u64,
        alive: &dyn Fn(u32) -> bool,
        out: &mut Vec<Self::Event>,
    ) -> Vec<(u32, u32)>;
    /// Connections the kernel should stop copying (encrypted ones): (tgid, fd).
    fn stop_capturing(&mut self) -> Vec<(u32, u32)> {
        vec![]
    }
    /// What the live capture probes for TLS plaintext, for why a TLS connection is not
    /// decoded.
    fn tls_probed(&mut self, _probed: crate::tls::Probed) {}
    /// Reports one event (a line, a record, or a count for the summary).
    fn event(&mut self, out: &mut Output, e: &Self::Event) -> io::Result<()>;
    /// The report of an interval or of the whole trace; `kernel`: the kernel's counters.
    fn report(&mut self, out: &mut Output, scope: Scope, kernel: &[u64]) -> io::Result<()>;
    /// The kernel's counters a capture file carried (`--read`).
    fn kernel_counters(&self) -> Option<&[u64]>;
    /// `--read` may share a capture's connections among threads, a wire each, folded into
    /// one ([`Wire::absorb`]) before the report: where events print nothing as they come (a
    /// summary table) and the wire can take another's figures.
    fn shardable(&self, _out: &Output) -> bool {
        false
    }
    /// Adds the figures of `other`, which decoded the other connections of the same capture
    /// (called only where [`Wire::shardable`]).
    fn absorb(&mut self, _other: Self)
    where
        Self: Sized,
    {
    }
}

/// A protocol's decoder, as [`Decoded`] drives it (pgwire_trace's and redis_trace's).
pub trait Decode {
    type Event;
    /// Totals over the whole trace, for the report.
    type Stats;
    /// Decodes one record; appends what it completed to `out`.
    fn feed_into(&mut self, r: &Record, out: &mut Vec<Self::Event>);
    /// Secret ranges of the payload of the record fed last.
    fn secrets(&self) -> &[(usize, usize)];
    /// Ends every connection still open.
    fn finish_into(&mut self, out: &mut Vec<Self::Event>);
    /// Ends the connections of processes gone at `sampled_ns`; returns their (tgid, fd).
    fn close_exited_into(
        &mut self,
        sampled_ns: u64,
        alive: &dyn Fn(u32) -> bool,
        out: &mut Vec<Self::Event>,
    ) -> Vec<(u32, u32)>;
    /// Connections the kernel should stop copying (encrypted ones), taken.
    fn take_stop_capturing(&mut self) -> Vec<(u32, u32)>;
    /// What the live capture probes for TLS plaintext.
    fn set_tls_probed(&mut self, probed: crate::tls::Probed);
    /// The kernel's counters a capture file carried.
    fn kernel_counters(&self) -> Option<&[u64]>;
    fn stats(&self) -> &Self::Stats;
    /// Adds the totals of `other`, which decoded other connections of the same capture.
    fn absorb(&mut self, other: Self)
    where
        Self: Sized;
}

/// What is done with a decoder's events: printed and summed (a tool's report), or counted
/// (pgbpf_exporter's wire collectors).
pub trait Report<E, S> {
    /// Sees each record before the decoder does (the exporter learns from the open records
    /// which process accepted each connection). Nothing by default.
    fn record(&mut self, _r: &Record) {}
    fn event(&mut self, out: &mut Output, e: &E) -> io::Result<()>;
    /// The report of an interval or of the whole trace.
    fn report(
        &mut self,
        out: &mut Output,
        scope: Scope,
        stats: &S,
        kernel: &[u64],
    ) -> io::Result<()>;
    /// Whether events print nothing as they come (`--read` may then decode on several
    /// threads, a report each, folded with [`Report::absorb`]).
    fn shardable(&self, _out: &Output) -> bool {
        false
    }
    /// Adds the figures of `other` (called only where [`Report::shardable`]).
    fn absorb(&mut self, _other: Self)
    where
        Self: Sized,
    {
    }
}

/// A decoder and what is done with its events: the [`Wire`] of every decoding tool.
pub struct Decoded<D, R> {
    pub decoder: D,
    pub report: R,
}

impl<D: Decode, R: Report<D::Event, D::Stats>> Wire for Decoded<D, R> {
    type Event = D::Event;

    fn feed(&mut self, r: &Record, out: &mut Vec<D::Event>) {
        self.report.record(r);
        self.decoder.feed_into(r, out);
    }

    fn secrets(&self) -> &[(usize, usize)] {
        self.decoder.secrets()
    }

    fn finish(&mut self, out: &mut Vec<D::Event>) {
        self.decoder.finish_into(out);
    }

    fn close_exited(
        &mut self,
        sampled_ns: u64,
        alive: &dyn Fn(u32) -> bool,
        out: &mut Vec<D::Event>,
    ) -> Vec<(u32, u32)> {
        self.decoder.close_exited_into(sampled_ns, alive, out)
    }

    fn stop_capturing(&mut self) -> Vec<(u32, u32)> {
        self.decoder.take_stop_capturing()
    }

    fn tls_probed(&mut self, probed: crate::tls::Probed) {
        self.decoder.set_tls_probed(probed);
    }

    fn event(&mut self, out: &mut Output, e: &D::Event) -> io::Result<()> {
        self.report.event(out, e)
    }

    fn report(&mut self, out: &mut Output, scope: Scope, kernel: &[u64]) -> io::Result<()> {
        self.report.report(out, scope, self.decoder.stats(), kernel)
    }

    fn kernel_counters(&self) -> Option<&[u64]> {
        self.decoder.kernel_counters()
    }

    fn shardable(&self, out: &Output) -> bool {
        self.report.shardable(out)
    }

    fn absorb(&mut self, other: Self) {
        self.decoder.absorb(other.decoder);
        self.report.absorb(other.report);
    }
}

/// Reports `events` and empties it, reading each in place (not moved out as a drain does:
/// an event is a few hundred bytes).
fn report_all<W: Wire>(
    wire: &mut W,
    out: &mut Output,
    events: &mut Vec<W::Event>,
) -> io::Result<()> {
    let result = events.iter().try_for_each(|e| wire.event(out, e));
    events.clear();
    result
}

/// Decoding, reporting and recording, shared by the live loop's steps.
struct Sink<W: Wire> {
    wire: W,
    recorder: Option<Writer<BufWriter<File>>>,
    /// The `--record` file's path and the tool's name, for a failure's message.
    record_path: String,
    tool: &'static str,
    /// Why recording stopped (a full disk): tracing went on; the run ends with it.
    record_failure: Option<String>,
    events: Vec<W::Event>,
    /// A record's copy with its secrets overwritten (memory reused).
    scrubbed: Record,
}

impl<W: Wire> Sink<W> {
    /// Decodes and reports `r` (without an output, stdout closed: decoded only, for the
    /// secrets), then records it.
    fn feed(&mut self, out: Option<&mut Output>, r: &Record) -> anyhow::Result<()> {
        self.wire.feed(r, &mut self.events);
        match out {
            Some(out) => self.report_events(out)?,
            None => self.events.clear(),
        }
        if let Some(w) = &mut self.recorder {
            let secrets = self.wire.secrets();
            let r = if secrets.is_empty() {
                r
            } else {
                self.scrubbed.clone_from(r);
                for &(from, to) in secrets {
                    if let Some(bytes) = self.scrubbed.payload.get_mut(from..to) {
                        bytes.fill(b'*');
                    }
                }
                &self.scrubbed
            };
            if let Err(e) = w.write(r) {
                // The file keeps the records written before (`--read` decodes them and says
                // where it ends); what was gathered is reported as usual.
                self.recorder = None;
                let why = format!("{e:#}");
                eprintln!(
                    "{}: error: writing {}: {why}: recording stopped, tracing goes on",
                    self.tool, self.record_path
                );
                self.record_failure = Some(why);
            }
        }
        Ok(())
    }

    /// The run's end: an error when recording stopped early.
    fn record_outcome(&mut self) -> anyhow::Result<()> {
        match self.record_failure.take() {
            Some(why) => Err(anyhow!(
                "{} holds the records up to its failure only ({why})",
                self.record_path
            )),
            None => Ok(()),
        }
    }

    fn report_events(&mut self, out: &mut Output) -> io::Result<()> {
        report_all(&mut self.wire, out, &mut self.events)
    }

    /// Ends the capture file (with `--record`): the kernel's counters, then the file flushed.
    fn finish_recording(&mut self, kernel: &[u64]) -> anyhow::Result<()> {
        if let Some(w) = self.recorder.take() {
            w.finish_with_counters(kernel)
                .context("writing the capture file")?;
        }
        Ok(())
    }
}

/// A wire tool's start: decodes the capture file of `--read`, or attaches live (with
/// `--record`). `make` builds the tool's decoder and report from the records' wall-clock
/// offset.
pub fn start<'a, W: Wire<Event: Send> + Send + 'a>(
    protocol: &'static Protocol,
    target: &TargetArgs,
    capture: &CaptureArgs,
    verbose: bool,
    out: &mut Output,
    make: impl Fn(i64) -> W + Sync,
) -> anyhow::Result<Option<Attached<'a>>> {
    match &capture.read {
        Some(path) => read(protocol, path, &make, out, verbose).map(|()| None),
        None => {
            // Opened before loading: a path that cannot be written fails at once. Emptied
            // (--force) only once tracing has started; made new and tracing fails to start:
            // removed again (a rerun with sudo is not refused for a file of no use).
            let record = capture
                .record
                .as_deref()
                .map(|path| Ok::<_, anyhow::Error>((path, open_capture_file(path, capture.force)?)))
                .transpose()?;
            let live = match Capture::start(protocol, target, &capture.options(target, verbose)) {
                Ok(live) => live,
                Err(e) => {
                    if let Some((path, (_, true))) = &record {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(e);
                }
            };
            let record = match record {
                Some((path, (file, _))) => {
                    file.set_len(0)
                        .with_context(|| format!("emptying {}", path.display()))?;
                    Some((path, file))
                }
                None => None,
            };
            attach(live, &make, record, out).map(Some)
        }
    }
}

/// The `--record` file, readable and writable by its owner only (a capture holds
/// statements, their values and keys), and whether it was made new; an existing file is
/// opened only with `--force` (made 0600 too; not emptied: the caller does that once
/// tracing starts), a symbolic link never (O_NOFOLLOW, O_EXCL).
pub fn open_capture_file(path: &Path, force: bool) -> anyhow::Result<(File, bool)> {
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    if path.is_dir() {
        anyhow::bail!("cannot record to {}: it is a directory", path.display());
    }
    let existed = std::fs::symlink_metadata(path).is_ok();
    let mut options = std::fs::OpenOptions::new();
    options
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW);
    if force {
        options.create(true);
    } else {
        options.create_new(true);
    }
    let file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow!(
                "{} exists: not overwritten (--force overwrites it)",
                path.display()
            )
        } else {
            anyhow::Error::new(e).context(format!("creating {}", path.display()))
        }
    })?;
    if existed {
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private", path.display()))?;
    }
    Ok((file, !existed))
}

/// Starts tracing: the capture is attached; the connections open now go to the decoder (and
/// the file `record`, when given) first. `make` builds the decoder from the wall-clock offset
/// of the records' times (the one the file is written with).
pub fn attach<'a, W: Wire<Event: Send> + Send + 'a>(
    capture: Capture,
    make: impl FnOnce(i64) -> W,
    record: Option<(&Path, File)>,
    out: &mut Output,
) -> anyhow::Result<Attached<'a>> {
    let wall = output::wall_offset_ns();
    let mut wire = make(wall);
    wire.tls_probed(capture.tls_probed());
    let record_path = record.as_ref().map(|(p, _)| p.display().to_string());
    let recorder = match record {
        Some((_, file)) => Some(Writer::new(BufWriter::new(file), capture.protocol, wall)?),
        None => None,
    };
    let mut sink = Sink {
        wire,
        recorder,
        record_path: record_path.unwrap_or_default(),
        tool: capture.protocol.tool,
        record_failure: None,
        events: vec![],
        scrubbed: Record::default(),
    };
    for r in &capture.existing {
        sink.feed(Some(out), r)?;
    }
    Ok(Attached {
        what: capture.what(),
        details: capture.details(),
        started: capture.started(),
        watch: capture.target.watched(),
        trace: Box::new(WireTrace { capture, sink }),
    })
}

/// Every read and write of a traced connection is a ring buffer record.
struct WireTrace<W: Wire> {
    capture: Capture,
    sink: Sink<W>,
}

impl<W: Wire> Trace for WireTrace<W> {
    fn wait(&mut self, timeout: Duration) {
        self.capture.wait(timeout);
    }

    fn objects(&self) -> Vec<&pgbpf_common::loader::Loaded> {
        vec![self.capture.loaded()]
    }

    fn drain(&mut self, out: &mut Output) -> anyhow::Result<()> {
        // Processes gone before this drain have sent all they will send.
        let alive_before = self.capture.prune_due();
        let sink = &mut self.sink;
        self.capture.drain(|r| sink.feed(Some(out), r))?;
        let stop = sink.wire.stop_capturing();
        self.capture.forget(&stop)?;
        if let Some((sampled_ns, alive)) = alive_before {
            let gone =
                sink.wire
                    .close_exited(sampled_ns, &|pid| alive.contains(&pid), &mut sink.events);
            sink.report_events(out)?;
            self.capture.forget(&gone)?;
        }
        Ok(())
    }

    fn followed(&mut self, out: &mut Output, pids: &[u32]) -> anyhow::Result<()> {
        for r in self.capture.learn(pids)? {
            self.sink.feed(Some(out), &r)?;
        }
        Ok(())
    }

    fn interval(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let kernel = self.capture.counters()?;
        Ok(self.sink.wire.report(out, Scope::Interval, &kernel)?)
    }

    fn finish(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let kernel = self.capture.counters()?;
        let sink = &mut self.sink;
        sink.wire.finish(&mut sink.events);
        sink.report_events(out)?;
        if let Err(e) = sink.finish_recording(&kernel) {
            sink.record_failure.get_or_insert(format!("{e:#}"));
        }
        sink.wire.report(out, Scope::Total, &kernel)?;
        // After the summary (printed before the error line): a recording that stopped early
        // is the run's error.
        sink.record_outcome()
    }

    /// stdout is gone: what the kernel still holds goes to the capture file, which is then
    /// ended as at a normal finish (readable to its end, with the counters).
    fn output_gone(&mut self) -> anyhow::Result<()> {
        if self.sink.recorder.is_some() {
            let sink = &mut self.sink;
            self.capture.drain(|r| sink.feed(None, r))?;
            let kernel = self.capture.counters()?;
            if let Err(e) = self.sink.finish_recording(&kernel) {
                self.sink.record_failure.get_or_insert(format!("{e:#}"));
            }
        }
        // A recording that stopped early is the run's error, even with stdout gone.
        self.sink.record_outcome()
    }
}

/// `--read FILE`: decodes a capture written by `--record` with the same decoder and report as
/// live tracing; no root, no kernel. A cut or corrupt file is reported after everything
/// before the damage has been decoded and printed.
/// `make` builds a decoder from the file's wall-clock offset (to print record times); a
/// mapped file whose report is a summary ([`Wire::shardable`]) is decoded on a thread per
/// core, each taking every n-th connection (connection ids are given in order of arrival).
pub fn read<W: Wire + Send>(
    protocol: &Protocol,
    path: &Path,
    make: &(impl Fn(i64) -> W + Sync),
    out: &mut Output,
    verbose: bool,
) -> anyhow::Result<()> {
    let input = Input::new(pgbpf_common::cli::open_input(path)?);
    let reading = || format!("reading {}", path.display());
    let (mut wire, damage, count, shards) = match input {
        Input::Buffered(file) => {
            let mut reader = Reader::new(file, protocol).with_context(reading)?;
            let mut wire = make(reader.wall_offset_ns);
            let damage = decode_all(&mut reader, &mut wire, out, |_| true)?;
            (wire, damage, reader.count, 1)
        }
        Input::Mapped(map) => {
            let mut reader = Reader::new(map.view(), protocol).with_context(reading)?;
            let mut wire = make(reader.wall_offset_ns);
            let shards = if wire.shardable(out) {
                std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_SHARDS))
            } else {
                1
            } as u64;
            let (json, width) = (out.json, out.width);
            let damage = std::thread::scope(|s| {
                let others: Vec<_> = (1..shards)
                    .map(|shard| {
                        let map = &map;
                        s.spawn(move || -> anyhow::Result<W> {
                            let mut reader = Reader::new(map.view(), protocol)?;
                            let mut wire = make(reader.wall_offset_ns);
                            // Prints nothing (shardable); shaped as the real one.
                            let mut quiet = Output::to_writer(Box::new(io::sink()), json);
                            quiet.width = width;
                            // The damage, if any, is the same record in every share: the
                            // first share reports it.
                            decode_all(&mut reader, &mut wire, &mut quiet, |conn| {
                                conn % shards == shard
                            })?;
                            Ok(wire)
                        })
                    })
                    .collect();
                let damage = decode_all(&mut reader, &mut wire, out, |conn| conn % shards == 0);
                for other in others {
                    let other = other
                        .join()
                        .map_err(|_| anyhow!("a decoding thread ended abnormally"))??;
                    wire.absorb(other);
                }
                anyhow::Ok(damage?)
            })?;
            (wire, damage, reader.count, shards)
        }
    };
    if verbose {
        eprintln!(
            "{}: read {count} records on {shards} thread{}",
            protocol.tool,
            if shards == 1 {
                ""
            } else {
                "s, each decoding every n-th connection"
            }
        );
    }
    let kernel = wire.kernel_counters().unwrap_or_default().to_vec();
    wire.report(out, Scope::Total, &kernel)?;
    if damage.is_none() && wire.kernel_counters().is_none() {
        // A capture ends with the kernel's counters; without them its losses are unknown.
        eprintln!(
            "{}: note: {} ends without the kernel's counters (the trace that wrote it did not \
             finish): losses in the kernel are unknown, shown as 0",
            protocol.tool,
            path.display()
        );
    }
    match damage {
        None => Ok(()),
        Some(e) if crate::mapped::shrank() => Err(e.context(format!(
            "{} was shortened while being read (another process truncated or rewrote it): \
             decoded the {count} records before",
            path.display(),
        ))),
        Some(e) => Err(e.context(format!(
            "{}: decoded the {count} records before the damage",
            path.display(),
        ))),
    }
}

/// `--read` of as many threads at most (each reads every record's header).
const MAX_SHARDS: usize = 8;

/// Decodes and reports the records of `reader` whose connection `keep` takes, then ends the
/// connections still open; the damage that ended the reading, if any.
fn decode_all<R: io::BufRead, W: Wire>(
    reader: &mut Reader<R>,
    wire: &mut W,
    out: &mut Output,
    keep: impl Fn(u64) -> bool,
) -> io::Result<Option<anyhow::Error>> {
    let mut events = vec![];
    let mut r = Record::default();
    let damage = loop {
        match reader.next_kept_into(&mut r, &keep) {
            Ok(true) => {
                wire.feed(&r, &mut events);
                report_all(wire, out, &mut events)?;
            }
            Ok(false) => break None,
            Err(e) => break Some(e),
        }
    };
    wire.finish(&mut events);
    report_all(wire, out, &mut events)?;
    Ok(damage)
}
