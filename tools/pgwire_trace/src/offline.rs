//! `--read FILE`: decode a capture written by `--record`, with the same decoder and report
//! as live tracing; no root, no kernel. A cut or corrupt file is reported after everything
//! before the damage has been decoded and printed.

use std::{fs::File, io::BufReader, path::Path};

use anyhow::Context;
use pgbpf_common::{output::Output, records::Scope};

use pgbpf_capture::{POSTGRES, Reader};

use crate::{Args, decode::Decoder, report::Reporter};

pub fn run(args: &Args, path: &Path, out: &mut Output) -> anyhow::Result<()> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut reader = Reader::new(BufReader::new(file), &POSTGRES)
        .with_context(|| format!("reading {}", path.display()))?;
    let mut decoder = Decoder::new(reader.wall_offset_ns);
    let mut reporter = Reporter::new(crate::style(args));
    let damage = loop {
        match reader.next_record() {
            Ok(Some(r)) => {
                for e in decoder.feed(&r) {
                    reporter.event(out, &e)?;
                }
            }
            Ok(None) => break None,
            Err(e) => break Some(e),
        }
    };
    for e in decoder.finish() {
        reporter.event(out, &e)?;
    }
    let kernel = decoder.kernel_counters.clone().unwrap_or_default();
    reporter.report(out, Scope::Total, &decoder.stats, &kernel)?;
    if damage.is_none() && decoder.kernel_counters.is_none() {
        // A capture ends with the kernel's counters; without them its losses are unknown.
        eprintln!(
            "pgwire_trace: note: {} ends without the kernel's counters (the trace that wrote \
             it did not finish): losses in the kernel are unknown, shown as 0",
            path.display()
        );
    }
    match damage {
        None => Ok(()),
        Some(e) => Err(e.context(format!(
            "{}: decoded the {} records before the damage",
            path.display(),
            reader.count
        ))),
    }
}
