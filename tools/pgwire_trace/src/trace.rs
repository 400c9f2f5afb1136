//! The decoder and report as the shared capture (`pgbpf_capture::wire`) drives them, live and
//! with `--read`: PostgreSQL requests into the report.

use std::io;

use pgbpf_capture::{Record, wire::Wire};
use pgbpf_common::{output::Output, records::Scope};

use crate::{
    Args,
    decode::{DecodeStats, Decoder, Event},
    report::Reporter,
};

/// What is done with the decoded requests: printed and summed (the tool's [`Reporter`]), or
/// counted (pgbpf_exporter's wire collector).
pub trait Requests {
    fn event(&mut self, out: &mut Output, e: &Event) -> io::Result<()>;
    fn report(
        &mut self,
        out: &mut Output,
        scope: Scope,
        stats: &DecodeStats,
        kernel: &[u64],
    ) -> io::Result<()>;
}

/// pgwire_trace's decoder and what is done with its requests, as the capture drives them.
pub struct PgWire<R = Reporter> {
    decoder: Decoder,
    requests: R,
}

impl PgWire {
    /// `wall_offset_ns`: wall-clock minus monotonic time of the records.
    pub fn new(args: &Args, wall_offset_ns: i64) -> PgWire {
        PgWire::with(Reporter::new(crate::style(args)), wall_offset_ns)
    }
}

impl<R: Requests> PgWire<R> {
    /// The decoder handing its requests to `requests`.
    pub fn with(requests: R, wall_offset_ns: i64) -> PgWire<R> {
        PgWire {
            decoder: Decoder::new(wall_offset_ns),
            requests,
        }
    }
}

impl<R: Requests> Wire for PgWire<R> {
    type Event = Event;

    fn feed(&mut self, r: &Record, out: &mut Vec<Event>) {
        self.decoder.feed_into(r, out);
    }

    /// Password messages: overwritten in a capture file.
    fn secrets(&self) -> &[(usize, usize)] {
        self.decoder.secrets()
    }

    fn finish(&mut self, out: &mut Vec<Event>) {
        out.extend(self.decoder.finish());
    }

    fn close_exited(
        &mut self,
        sampled_ns: u64,
        alive: &dyn Fn(u32) -> bool,
        out: &mut Vec<Event>,
    ) -> Vec<(u32, u32)> {
        let (events, gone) = self.decoder.close_exited(sampled_ns, alive);
        out.extend(events);
        gone
    }

    /// Encrypted connections: nothing to decode, so the kernel stops copying them.
    fn stop_capturing(&mut self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.decoder.stop_capturing)
    }

    fn tls_probed(&mut self, probed: pgbpf_capture::tls::Probed) {
        self.decoder.tls_probed = Some(probed);
    }

    fn event(&mut self, out: &mut Output, e: &Event) -> io::Result<()> {
        self.requests.event(out, e)
    }

    fn report(&mut self, out: &mut Output, scope: Scope, kernel: &[u64]) -> io::Result<()> {
        self.requests
            .report(out, scope, &self.decoder.stats, kernel)
    }

    fn kernel_counters(&self) -> Option<&[u64]> {
        self.decoder.kernel_counters()
    }
}
