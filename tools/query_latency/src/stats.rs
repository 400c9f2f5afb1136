//! Latency aggregation: per statement (or per backend and statement) [`Latencies`], and the
//! overall log2 histogram.

use std::collections::HashMap;

pub use pgbpf_common::latency::Latencies;

/// What a report groups by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    /// 0 unless per-backend.
    pub pid: u32,
    pub statement: String,
}

/// All statements seen in one period.
#[derive(Clone, Debug, Default)]
pub struct Period {
    pub by_key: HashMap<Key, Latencies>,
    /// log2 histogram of microseconds.
    pub log2_us: Vec<u64>,
    pub calls: u64,
}

impl Period {
    pub fn add(&mut self, key: Key, ns: u64, truncated: bool) {
        // Folded per backend too (--per-backend) the rows would stay one per process.
        let l = pgbpf_common::bounded::row(&mut self.by_key, key, |k| Key {
            pid: 0,
            statement: pgbpf_common::bounded::folded(&k.statement),
        });
        l.add(ns);
        l.truncated |= truncated;
        let slot = pgbpf_common::output::log2_slot(ns / 1000);
        if self.log2_us.len() <= slot {
            self.log2_us.resize(slot + 1, 0);
        }
        self.log2_us[slot] += 1;
        self.calls += 1;
    }

    /// Statements by total time, largest first.
    pub fn sorted(&self) -> Vec<(&Key, &Latencies)> {
        let mut v: Vec<_> = self.by_key.iter().collect();
        v.sort_by(|a, b| b.1.total_ns.cmp(&a.1.total_ns).then(a.0.cmp(b.0)));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_within_one_percent() {
        let mut l = Latencies::default();
        for v in 1..=1000u64 {
            l.add(v * 1000);
        }
        assert_eq!(l.calls, 1000);
        assert!((l.mean_ns() - 500_500.0).abs() < 1.0);
        for (p, want) in [(50.0, 500_000.0), (95.0, 950_000.0), (99.0, 990_000.0)] {
            let got = l.percentile_ns(p);
            assert!((got - want).abs() <= 0.011 * want, "p{p}: {got} vs {want}");
        }
        assert_eq!(l.percentile_ns(100.0), 1_000_000.0);
        assert_eq!(Latencies::default().percentile_ns(50.0), 0.0);
    }

    #[test]
    fn a_50ms_sleep_lands_in_the_32_to_64ms_bucket() {
        let mut p = Period::default();
        p.add(
            Key {
                pid: 0,
                statement: "select pg_sleep($1)".into(),
            },
            50_300_000,
            false,
        );
        // bucket i holds [2^i, 2^(i+1)) microseconds; 32768..65535 us is i = 15
        assert_eq!(p.log2_us.iter().position(|&c| c == 1), Some(15));
    }
}
