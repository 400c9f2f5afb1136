//! The decoder and report as the shared capture (`pgbpf_capture::wire`) drives them, live and
//! with `--read`: Redis commands into the report, passwords out of the capture file.

use pgbpf_capture::{
    Record,
    wire::{Decode, Decoded},
};

use crate::{
    Args,
    decode::{DecodeStats, Decoder, Event},
    report::Reporter,
};

/// redis_trace's decoder and what is done with its commands (by default its report).
pub type RedisWire<R = Reporter> = Decoded<Decoder, R>;

/// The tool's decoder and report; `wall_offset_ns`: wall-clock minus monotonic time of the
/// records.
pub fn redis_wire(args: &Args, wall_offset_ns: i64) -> RedisWire {
    Decoded {
        decoder: Decoder::new(wall_offset_ns),
        report: Reporter::new(crate::style(args)),
    }
}

impl Decode for Decoder {
    type Event = Event;
    type Stats = DecodeStats;

    fn feed_into(&mut self, r: &Record, out: &mut Vec<Event>) {
        Decoder::feed_into(self, r, out);
    }

    fn secrets(&self) -> &[(usize, usize)] {
        Decoder::secrets(self)
    }

    fn finish_into(&mut self, out: &mut Vec<Event>) {
        self.finish(out);
    }

    fn close_exited_into(
        &mut self,
        sampled_ns: u64,
        alive: &dyn Fn(u32) -> bool,
        out: &mut Vec<Event>,
    ) -> Vec<(u32, u32)> {
        self.close_exited(sampled_ns, alive, out)
    }

    /// Connections not decodable (TLS without plaintext): the kernel stops copying them.
    fn take_stop_capturing(&mut self) -> Vec<(u32, u32)> {
        std::mem::take(&mut self.stop_capturing)
    }

    fn set_tls_probed(&mut self, probed: pgbpf_capture::tls::Probed) {
        self.tls_probed = Some(probed);
    }

    fn kernel_counters(&self) -> Option<&[u64]> {
        Decoder::kernel_counters(self)
    }

    fn stats(&self) -> &DecodeStats {
        &self.stats
    }

    fn absorb(&mut self, other: Decoder) {
        Decoder::absorb(self, other);
    }
}
