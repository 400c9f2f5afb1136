//! Latencies of one group (a statement, a backend): calls, total, max and percentiles from a
//! log-linear histogram (1 % wide buckets), so memory stays bounded however many calls.

use std::collections::BTreeMap;

/// Width of a percentile bucket: values within 1 % share one.
const GROWTH: f64 = 1.01;

fn bucket(ns: u64) -> u32 {
    ((ns as f64 + 1.0).ln() / GROWTH.ln()) as u32
}

fn bucket_value(b: u32) -> f64 {
    GROWTH.powf(b as f64 + 0.5) - 1.0
}

/// Latencies of one statement.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    pub calls: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub truncated: bool,
    buckets: BTreeMap<u32, u64>,
}

impl Latencies {
    pub fn add(&mut self, ns: u64) {
        self.calls += 1;
        self.total_ns = self.total_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
        *self.buckets.entry(bucket(ns)).or_default() += 1;
    }

    pub fn mean_ns(&self) -> f64 {
        if self.calls == 0 {
            0.0
        } else {
            self.total_ns as f64 / self.calls as f64
        }
    }

    /// The `p`-th percentile (0..=100), within 1 %; the maximum for p = 100.
    pub fn percentile_ns(&self, p: f64) -> f64 {
        if self.calls == 0 {
            return 0.0;
        }
        if p >= 100.0 {
            return self.max_ns as f64;
        }
        let rank = ((p / 100.0) * self.calls as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (&b, &n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return bucket_value(b).min(self.max_ns as f64);
            }
        }
        self.max_ns as f64
    }
}
