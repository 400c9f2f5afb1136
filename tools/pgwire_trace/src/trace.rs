//! Live tracing: the shared capture (`pgbpf_capture`) of PostgreSQL connections, its records
//! into the decoder (and `--record`), requests into the report.

use std::{fs::File, io::BufWriter, time::Duration};

use anyhow::Context;
use pgbpf_capture::{Capture, Options, POSTGRES, Record, Writer};
use pgbpf_common::{
    output::{self, Output},
    records::Scope,
    runtime::{Attached, Trace},
};

use crate::{
    Args,
    decode::{Decoder, Event},
    report::Reporter,
};

/// Decoding, reporting and recording of records, shared by the live loop's steps.
struct Sink {
    decoder: Decoder,
    reporter: Reporter,
    recorder: Option<Writer<BufWriter<File>>>,
    /// What the record being fed completed (kept to reuse its memory).
    events: Vec<Event>,
}

impl Sink {
    /// Records `r` (with `--record`), then decodes and reports it; without an output (stdout
    /// closed) it is only recorded.
    fn feed(&mut self, out: Option<&mut Output>, r: &Record) -> anyhow::Result<()> {
        if let Some(w) = &mut self.recorder {
            w.write(r).context("writing the capture file")?;
        }
        let Some(out) = out else {
            return Ok(());
        };
        self.decoder.feed_into(r, &mut self.events);
        for e in self.events.drain(..) {
            self.reporter.event(out, &e)?;
        }
        Ok(())
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

/// Attaches the capture, joins the connections open now.
pub fn start<'a>(args: &'a Args, out: &mut Output) -> anyhow::Result<Attached<'a>> {
    let capture = Capture::start(
        &POSTGRES,
        &args.target,
        &Options {
            ports: args.port.clone(),
            capture: args.capture,
            buffer_mb: args.buffer_mb,
            syscall_hooks: args.syscall_hooks,
            verbose: args.out.verbose,
        },
    )?;
    let wall = output::wall_offset_ns();
    let mut sink = Sink {
        decoder: Decoder::new(wall),
        reporter: Reporter::new(crate::style(args)),
        recorder: match &args.record {
            Some(path) => Some(Writer::new(
                BufWriter::new(
                    File::create(path).with_context(|| format!("creating {}", path.display()))?,
                ),
                &POSTGRES,
                wall,
            )?),
            None => None,
        },
        events: vec![],
    };
    for r in &capture.existing {
        sink.feed(Some(out), r)?;
    }
    Ok(Attached {
        what: capture.what(),
        details: capture.details(),
        started: capture.started(),
        watch: capture.target.roots(),
        trace: Box::new(WireTrace { capture, sink }),
    })
}

/// Every read and write of a traced connection is a ring buffer record.
struct WireTrace {
    capture: Capture,
    sink: Sink,
}

impl Trace for WireTrace {
    fn wait(&mut self, timeout: Duration) {
        self.capture.wait(timeout);
    }

    fn drain(&mut self, out: &mut Output) -> anyhow::Result<()> {
        // Processes gone before this drain have sent all they will send.
        let alive_before = self.capture.prune_due();
        let sink = &mut self.sink;
        self.capture.drain(|r| sink.feed(Some(out), r))?;
        let encrypted = std::mem::take(&mut sink.decoder.stop_capturing);
        self.capture.forget(&encrypted)?;
        if let Some((sampled_ns, alive)) = alive_before {
            let (events, gone) = sink
                .decoder
                .close_exited(sampled_ns, |pid| alive.contains(&pid));
            for e in events {
                sink.reporter.event(out, &e)?;
            }
            self.capture.forget(&gone)?;
        }
        Ok(())
    }

    fn interval(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let kernel = self.capture.counters()?;
        let sink = &mut self.sink;
        Ok(sink
            .reporter
            .report(out, Scope::Interval, &sink.decoder.stats, &kernel)?)
    }

    fn finish(&mut self, out: &mut Output) -> anyhow::Result<()> {
        let kernel = self.capture.counters()?;
        let sink = &mut self.sink;
        for e in sink.decoder.finish() {
            sink.reporter.event(out, &e)?;
        }
        sink.finish_recording(&kernel)?;
        Ok(sink
            .reporter
            .report(out, Scope::Total, &sink.decoder.stats, &kernel)?)
    }

    /// stdout is gone: what the kernel still holds goes to the capture file, which is then
    /// ended as at a normal finish (readable to its end, with the counters).
    fn output_gone(&mut self) -> anyhow::Result<()> {
        if self.sink.recorder.is_none() {
            return Ok(());
        }
        let sink = &mut self.sink;
        self.capture.drain(|r| sink.feed(None, r))?;
        let kernel = self.capture.counters()?;
        self.sink.finish_recording(&kernel)
    }
}
