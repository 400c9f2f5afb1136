//! Latencies of one group (a statement, a backend): calls, total, max and percentiles from a
//! log-linear histogram (buckets under 1 % wide), so memory stays bounded however many calls;
//! and [`WaitTimes`], the count, total, max and log2 histogram (bcc's) of waits.

use foldhash::HashMap;

/// Sub-buckets per power of two: values within 1/128 (0.8 %) of each other share a bucket.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;

/// The bucket of a value: exact below 128 ns, then 128 buckets per power of two, found from
/// the leading bit and the 7 bits after it (integer only: a logarithm per call showed in
/// redis_trace's profile at half a million commands a second).
fn bucket(ns: u64) -> u32 {
    let v = ns.saturating_add(1);
    let e = 63 - v.leading_zeros();
    if e < SUB_BITS {
        return v as u32;
    }
    let m = (v >> (e - SUB_BITS)) & (SUB - 1);
    ((e - SUB_BITS + 1) as u64 * SUB + m) as u32
}

/// The middle of a bucket's values.
fn bucket_value(b: u32) -> f64 {
    let b = u64::from(b);
    if b < SUB {
        return b.saturating_sub(1) as f64;
    }
    let shift = b / SUB - 1;
    let low = (SUB + b % SUB) << shift;
    let width = 1u64 << shift;
    low as f64 + (width as f64 - 1.0) / 2.0 - 1.0
}

/// Latencies of one statement.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    pub calls: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub truncated: bool,
    /// Calls per bucket. Hashed rather than ordered: adding is what runs per call (a B-tree
    /// search showed in profiles), sorting happens only when a percentile is asked for.
    buckets: HashMap<u32, u64>,
}

impl Latencies {
    pub fn add(&mut self, ns: u64) {
        self.calls += 1;
        self.total_ns = self.total_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
        *self.buckets.entry(bucket(ns)).or_default() += 1;
    }

    /// Adds every call of `other` (a session's lags into the whole replay's).
    pub fn merge(&mut self, other: &Latencies) {
        self.calls += other.calls;
        self.total_ns = self.total_ns.saturating_add(other.total_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        self.truncated |= other.truncated;
        for (&b, &n) in &other.buckets {
            *self.buckets.entry(b).or_default() += n;
        }
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
        let mut sorted: Vec<(u32, u64)> = self.buckets.iter().map(|(&b, &n)| (b, n)).collect();
        sorted.sort_unstable();
        for (b, n) in sorted {
            seen += n;
            if seen >= rank {
                return bucket_value(b).min(self.max_ns as f64);
            }
        }
        self.max_ns as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_narrow() {
        let mut values: Vec<u64> = (0..5000)
            .chain((13..64).flat_map(|s| [(1u64 << s) - 1, 1 << s, (1 << s) + 12345]))
            .chain([u64::MAX])
            .collect();
        values.sort_unstable();
        for w in values.windows(2) {
            assert!(bucket(w[0]) <= bucket(w[1]), "{} before {}", w[0], w[1]);
        }
        for ns in values {
            let mid = bucket_value(bucket(ns));
            assert!(
                (mid - ns as f64).abs() <= ns as f64 * 0.01 + 0.5,
                "{ns} in bucket {} with middle {mid}",
                bucket(ns)
            );
        }
        assert_eq!(bucket_value(bucket(100)), 100.0);
    }

    #[test]
    fn percentiles_within_one_percent() {
        let mut l = Latencies::default();
        for ns in 1..=10_000u64 {
            l.add(ns * 1000);
        }
        for (p, want) in [(50.0, 5_000_000.0), (99.0, 9_900_000.0), (1.0, 100_000.0)] {
            let got = l.percentile_ns(p);
            assert!((got - want).abs() / want < 0.01, "p{p}: {got} vs {want}");
        }
        assert_eq!(l.percentile_ns(100.0), 10_000_000.0);
    }
}

/// Waits of one group (a lock, a tranche): count, total, max, and a log2 histogram of
/// microseconds as the records carry it (`hist_log2_us`).
#[derive(Clone, Debug, Default)]
pub struct WaitTimes {
    pub count: u64,
    pub total_ns: u64,
    pub max_ns: u64,
    pub log2_us: Vec<u64>,
}

/// The head of a wait report, as lwlocks and spin_sema print it: one line, `{head}: {waits},
/// {total} {verb} {period}`, then a table of the groups (`column`: their name), by total time,
/// most first (ties by name). Returns the groups in that order, for the tables that follow.
pub struct WaitGroups<'a> {
    pub head: &'a str,
    pub verb: &'a str,
    pub column: &'a str,
    pub period: &'a str,
}

impl WaitGroups<'_> {
    pub fn text<'g, K: Ord + std::fmt::Display>(
        &self,
        out: &mut String,
        sink: &crate::output::Output,
        groups: impl IntoIterator<Item = (&'g K, &'g WaitTimes)>,
        top: usize,
    ) -> Vec<(&'g K, &'g WaitTimes)> {
        use crate::output::human_ns;
        let mut groups: Vec<_> = groups.into_iter().collect();
        groups.sort_by(|a, b| b.1.total_ns.cmp(&a.1.total_ns).then(a.0.cmp(b.0)));
        let waits: u64 = groups.iter().map(|(_, w)| w.count).sum();
        let total: u64 = groups.iter().map(|(_, w)| w.total_ns).sum();
        out.push_str(&format!(
            "{}{}: {waits}, {} {} {}\n",
            sink.prefix(),
            self.head,
            human_ns(total),
            self.verb,
            self.period
        ));
        crate::output::top_table(
            out,
            &[self.column, "WAITS", "TOTAL", "MEAN", "MAX"],
            &groups,
            top,
            sink.width,
            |(name, w)| {
                vec![
                    name.to_string(),
                    w.count.to_string(),
                    human_ns(w.total_ns),
                    human_ns(w.mean_ns()),
                    human_ns(w.max_ns),
                ]
            },
        );
        groups
    }
}

impl WaitTimes {
    pub fn add(&mut self, ns: u64) {
        self.count += 1;
        self.total_ns = self.total_ns.saturating_add(ns);
        self.max_ns = self.max_ns.max(ns);
        let slot = crate::output::log2_slot(ns / 1000);
        if self.log2_us.len() <= slot {
            self.log2_us.resize(slot + 1, 0);
        }
        self.log2_us[slot] += 1;
    }

    pub fn mean_ns(&self) -> u64 {
        self.total_ns / self.count.max(1)
    }

    /// Adds every wait of `other`.
    pub fn merge(&mut self, other: &WaitTimes) {
        self.count += other.count;
        self.total_ns = self.total_ns.saturating_add(other.total_ns);
        self.max_ns = self.max_ns.max(other.max_ns);
        if self.log2_us.len() < other.log2_us.len() {
            self.log2_us.resize(other.log2_us.len(), 0);
        }
        for (sum, n) in self.log2_us.iter_mut().zip(&other.log2_us) {
            *sum += n;
        }
    }
}

#[cfg(test)]
mod wait_tests {
    use super::*;

    #[test]
    fn waits_sum_and_bucket_by_microseconds() {
        let mut w = WaitTimes::default();
        for ns in [500, 1_500, 3_000, 1_000_000] {
            w.add(ns);
        }
        assert_eq!((w.count, w.total_ns, w.max_ns), (4, 1_005_000, 1_000_000));
        assert_eq!(w.mean_ns(), 251_250);
        // 0 us and 1 us in slot 0, 3 us in slot 1, 1000 us in slot 9.
        assert_eq!(w.log2_us, [2, 1, 0, 0, 0, 0, 0, 0, 0, 1]);
    }
}
