//! The decoder and report as the shared capture (`pgbpf_capture::wire`) drives them, live and
//! with `--read`: Redis commands into the report, passwords out of the capture file.

use std::io;

use pgbpf_capture::{Record, wire::Wire};
use pgbpf_common::{output::Output, records::Scope};

use crate::{
    Args,
    decode::{Decoder, Event},
    report::Reporter,
};

/// redis_trace's decoder and report, as the capture drives them.
pub struct RedisWire {
    decoder: Decoder,
    reporter: Reporter,
}

impl RedisWire {
    /// `wall_offset_ns`: wall-clock minus monotonic time of the records.
    pub fn new(args: &Args, wall_offset_ns: i64) -> RedisWire {
        RedisWire {
            decoder: Decoder::new(wall_offset_ns),
            reporter: Reporter::new(crate::style(args)),
        }
    }
}

impl Wire for RedisWire {
    type Event = Event;

    fn feed(&mut self, r: &Record, out: &mut Vec<Event>) {
        self.decoder.feed_into(r, out);
    }

    fn secrets(&self) -> &[(usize, usize)] {
        self.decoder.secrets()
    }

    fn finish(&mut self, out: &mut Vec<Event>) {
        self.decoder.finish(out);
    }

    fn close_exited(
        &mut self,
        sampled_ns: u64,
        alive: &dyn Fn(u32) -> bool,
        out: &mut Vec<Event>,
    ) -> Vec<(u32, u32)> {
        self.decoder.close_exited(sampled_ns, alive, out)
    }

    /// Connections not decodable (TLS without plaintext): the kernel stops copying them.
    fn stop_capturing(&mut self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.decoder.stop_capturing)
    }

    fn tls_probed(&mut self, probed: pgbpf_capture::tls::Probed) {
        self.decoder.tls_probed = Some(probed);
    }

    fn event(&mut self, out: &mut Output, e: &Event) -> io::Result<()> {
        self.reporter.event(out, e)
    }

    fn report(&mut self, out: &mut Output, scope: Scope, kernel: &[u64]) -> io::Result<()> {
        self.reporter
            .report(out, scope, &self.decoder.stats, kernel)
    }

    fn kernel_counters(&self) -> Option<&[u64]> {
        self.decoder.kernel_counters()
    }
}
