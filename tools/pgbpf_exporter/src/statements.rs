//! Latency histograms per normalized statement and placement, with a bounded number of
//! series: Prometheus' cost grows with every label value, and a workload can have millions
//! of distinct statements.
//!
//! The first N statements seen get series of their own; later ones are counted in their
//! placement's `statement="other"` series and remembered as candidates with the time they
//! took. At each maintenance pass (every rescan, 10 s) a series without a call for the idle
//! time is retired (it goes stale in Prometheus) and its place goes to the candidate with
//! the most time; and a candidate that took more than twice the time of the least busy
//! series in the pass's window takes that one's place (so a burst of one-off statements,
//! initdb's or a migration's, does not hold the places for the idle time). Every series
//! only grows, so `rate()` and `increase()` stay right: nothing moves between series.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use pgbpf_common::cgroup::Placement;

use crate::families::Histogram;

/// What a series is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    pub statement: String,
    pub placement: Placement,
}

struct Series {
    histogram: Histogram,
    last_call: Instant,
    /// Nanoseconds of calls since the last maintenance pass.
    recent_ns: u64,
}

impl Series {
    fn new(now: Instant) -> Series {
        Series {
            histogram: Histogram::default(),
            last_call: now,
            recent_ns: 0,
        }
    }

    fn observe(&mut self, ns: u64, now: Instant) {
        self.histogram.observe_ns(ns);
        self.last_call = now;
        self.recent_ns += ns;
    }
}

/// The statement label of the series that counts what has no series of its own.
pub const OTHER: &str = "other";

pub struct StatementTable {
    capacity: usize,
    idle: Duration,
    series: HashMap<Key, Series>,
    /// Per placement: the statements without a series of their own.
    other: HashMap<Placement, Series>,
    /// Statements waiting for a place, with the nanoseconds they took meanwhile.
    candidates: HashMap<Key, u64>,
    /// Series retired (idle, or displaced by a busier statement) since start.
    pub retired: u64,
}

impl StatementTable {
    pub fn new(capacity: usize, idle: Duration) -> StatementTable {
        StatementTable {
            capacity: capacity.max(1),
            idle,
            series: HashMap::new(),
            other: HashMap::new(),
            candidates: HashMap::new(),
            retired: 0,
        }
    }

    /// One finished statement.
    pub fn record(&mut self, key: Key, ns: u64, now: Instant) {
        if let Some(s) = self.series.get_mut(&key) {
            s.observe(ns, now);
            return;
        }
        if self.series.len() < self.capacity {
            self.candidates.remove(&key);
            self.series
                .entry(key)
                .or_insert_with(|| Series::new(now))
                .observe(ns, now);
            return;
        }
        self.other
            .entry(key.placement.clone())
            .or_insert_with(|| Series::new(now))
            .observe(ns, now);
        if let Some(total) = self.candidates.get_mut(&key) {
            *total += ns;
            return;
        }
        // Candidates are bounded too: at four times the places, the half that took the
        // least time is forgotten (their time still counts in "other"), so that a burst of
        // one-off statements cannot keep a busy one out.
        let bound = self.capacity.saturating_mul(4).max(2);
        if self.candidates.len() >= bound {
            let mut totals: Vec<u64> = self.candidates.values().copied().collect();
            let (_, &mut median, _) = totals.select_nth_unstable(bound / 2);
            self.candidates.retain(|_, &mut t| t > median);
        }
        self.candidates.insert(key, ns);
    }

    /// The maintenance pass: retires series idle for longer than the idle time, gives free
    /// places to the candidates that took the most time, lets a candidate busier than twice
    /// the least busy series take its place; then starts a new window.
    pub fn maintain(&mut self, now: Instant) {
        let before = self.series.len();
        let idle = self.idle;
        self.series
            .retain(|_, s| now.saturating_duration_since(s.last_call) <= idle);
        self.retired += (before - self.series.len()) as u64;
        // A placement's "other" goes too when idle (a removed container's): nothing can be
        // lost, it had no call for that long.
        self.other
            .retain(|_, s| now.saturating_duration_since(s.last_call) <= idle);
        let mut waiting: Vec<(Key, u64)> = self.candidates.drain().collect();
        waiting.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for (key, waited_ns) in waiting {
            if self.series.len() >= self.capacity {
                let Some((least, least_ns)) = self
                    .series
                    .iter()
                    .min_by_key(|(k, s)| (s.recent_ns, *k))
                    .map(|(k, s)| (k.clone(), s.recent_ns))
                else {
                    break;
                };
                if waited_ns <= least_ns.saturating_mul(2) {
                    break;
                }
                self.series.remove(&least);
                self.retired += 1;
            }
            // A new series starts empty: what the statement took while waiting stays in
            // "other", where it was counted. For the rest of this pass it weighs what it
            // took, so that a less busy candidate does not displace it in turn.
            let mut promoted = Series::new(now);
            promoted.recent_ns = waited_ns;
            self.series.insert(key, promoted);
        }
        for s in self.series.values_mut() {
            s.recent_ns = 0;
        }
    }

    /// Every series: its statement and placement, and its histogram; "other" last.
    pub fn each(&self) -> impl Iterator<Item = (&str, &Placement, &Histogram)> {
        let own = self
            .series
            .iter()
            .map(|(k, s)| (k.statement.as_str(), &k.placement, &s.histogram));
        let other = self.other.iter().map(|(p, s)| (OTHER, p, &s.histogram));
        own.chain(other)
    }

    /// Statements with series of their own now.
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Key {
        Key {
            statement: s.into(),
            placement: Placement::default(),
        }
    }

    fn total(t: &StatementTable) -> u64 {
        t.each().map(|(_, _, h)| h.count).sum()
    }

    #[test]
    fn beyond_the_places_statements_count_as_other_and_nothing_is_lost() {
        let now = Instant::now();
        let mut t = StatementTable::new(2, Duration::from_secs(600));
        for (s, n) in [("a", 3), ("b", 2), ("c", 5), ("d", 1)] {
            for _ in 0..n {
                t.record(key(s), 1_000, now);
            }
        }
        assert_eq!(t.len(), 2);
        assert_eq!(total(&t), 11);
        let other = t.each().find(|(s, ..)| *s == OTHER).unwrap().2.count;
        assert_eq!(other, 6);
    }

    fn count(t: &StatementTable, statement: &str) -> Option<u64> {
        t.each()
            .find(|(s, ..)| *s == statement)
            .map(|(_, _, h)| h.count)
    }

    #[test]
    fn a_busier_candidate_displaces_the_least_busy_series_and_counts_only_grow() {
        let t0 = Instant::now();
        let at = |s| t0 + Duration::from_secs(s);
        let mut t = StatementTable::new(1, Duration::from_secs(600));
        for _ in 0..5 {
            t.record(key("a"), 1_000, t0);
        }
        for _ in 0..3 {
            t.record(key("b"), 1_000, t0);
        }
        // b took 3 µs while a took 5: a keeps its place.
        t.maintain(at(10));
        assert_eq!((count(&t, "a"), count(&t, OTHER)), (Some(5), Some(3)));
        // Next window: a 1 µs, b 5 µs, more than twice a's: b takes the place.
        t.record(key("a"), 1_000, at(11));
        for _ in 0..5 {
            t.record(key("b"), 1_000, at(11));
        }
        t.maintain(at(20));
        assert_eq!(t.retired, 1);
        assert_eq!(count(&t, "a"), None, "a displaced");
        assert_eq!(count(&t, OTHER), Some(8), "other never shrinks");
        assert_eq!(count(&t, "b"), Some(0), "a promoted series starts empty");
        t.record(key("b"), 1_000, at(21));
        assert_eq!(count(&t, "b"), Some(1));
    }

    #[test]
    fn idle_series_and_an_idle_other_are_retired() {
        let t0 = Instant::now();
        let mut t = StatementTable::new(1, Duration::from_secs(60));
        t.record(key("a"), 1_000, t0);
        t.record(key("b"), 1_000, t0);
        t.maintain(t0 + Duration::from_secs(5));
        assert_eq!((count(&t, "a"), count(&t, OTHER)), (Some(1), Some(1)));
        t.maintain(t0 + Duration::from_secs(61));
        assert!(t.is_empty() && t.each().next().is_none());
        assert_eq!(t.retired, 1);
    }
}
