//! `--hold`: LWLock hold times per tranche and mode, summed in the kernel (every acquisition
//! and release is a probe hit: events to userspace would cost more than the locks), read at
//! each report; an interval's figures are the difference from the previous report's.

use std::collections::HashMap;

use aya::maps::{HashMap as BpfHashMap, MapData};
use lwlocks_ebpf::{HoldKey, HoldStats};
use pgbpf_common::{loader::Loaded, output, records::trim_hist};

use crate::report::mode_name;

/// The kernel's map name.
pub const MAP: &str = "HOLDS";
/// Maps only `--hold` uses, made with one entry without it.
pub const MAPS: [&str; 2] = ["HELD", "HOLDS"];

/// Hold times of one tranche and mode.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HoldTimes {
    pub holds: u64,
    pub total_ns: u64,
    /// The longest since the tool attached (the kernel keeps no per-interval maximum).
    pub max_ns: u64,
    pub log2_us: Vec<u64>,
}

impl HoldTimes {
    pub fn mean_ns(&self) -> u64 {
        self.total_ns / self.holds.max(1)
    }

    /// `self` minus an earlier reading of the same counters.
    fn since(&self, earlier: &HoldTimes) -> HoldTimes {
        HoldTimes {
            holds: self.holds.saturating_sub(earlier.holds),
            total_ns: self.total_ns.saturating_sub(earlier.total_ns),
            max_ns: self.max_ns,
            log2_us: self
                .log2_us
                .iter()
                .enumerate()
                .map(|(i, n)| n.saturating_sub(earlier.log2_us.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }
}

/// (tranche, mode) → hold times.
pub type HoldTable = HashMap<(String, &'static str), HoldTimes>;

/// The kernel's hold times.
pub struct Holds {
    map: BpfHashMap<MapData, HoldKey, HoldStats>,
    /// The totals at the previous interval report.
    previous: HoldTable,
}

impl Holds {
    pub fn take(loaded: &mut Loaded) -> anyhow::Result<Holds> {
        Ok(Holds {
            map: BpfHashMap::try_from(loaded.take_map(MAP)?)?,
            previous: HoldTable::new(),
        })
    }

    /// Every tranche and mode's hold times since attach (tranches of the same name in
    /// different processes together).
    fn totals(&self) -> HoldTable {
        let mut table = HoldTable::new();
        for (key, stats) in self.map.iter().flatten() {
            let name = output::c_str(&stats.tranche);
            let name = if name.is_empty() {
                "unknown".to_string()
            } else {
                name
            };
            let t = table.entry((name, mode_name(key.mode))).or_default();
            t.holds += stats.count;
            t.total_ns += stats.total_ns;
            t.max_ns = t.max_ns.max(stats.max_ns);
            if t.log2_us.len() < stats.log2_us.len() {
                t.log2_us.resize(stats.log2_us.len(), 0);
            }
            for (sum, n) in t.log2_us.iter_mut().zip(stats.log2_us) {
                *sum += n;
            }
        }
        for t in table.values_mut() {
            t.log2_us = trim_hist(&t.log2_us);
        }
        table
    }

    /// The interval's hold times (since the previous interval report).
    pub fn interval(&mut self) -> HoldTable {
        let now = self.totals();
        let delta = now
            .iter()
            .map(|(k, t)| {
                let d = match self.previous.get(k) {
                    Some(before) => t.since(before),
                    None => t.clone(),
                };
                (k.clone(), d)
            })
            .filter(|(_, d)| d.holds > 0)
            .collect();
        self.previous = now;
        delta
    }

    /// The whole run's hold times.
    pub fn total(&self) -> HoldTable {
        self.totals()
    }
}

#[cfg(test)]
mod tests {
    use lwlocks_ebpf::{HELD_CAP, Held};

    use super::*;

    const WAL: u64 = 0x1000;
    const BUF: u64 = 0x2000;
    const LOCKMGR: u64 = 0x3000;

    #[test]
    fn nested_holds_end_innermost_first() {
        let mut h = Held::default();
        assert!(h.acquire(WAL, 0, 100));
        assert!(h.acquire(BUF, 1, 110));
        assert!(h.acquire(LOCKMGR, 0, 120));
        assert_eq!(h.release(LOCKMGR, 125), Some((0, 5)));
        assert_eq!(h.release(BUF, 140), Some((1, 30)));
        assert_eq!(h.release(WAL, 200), Some((0, 100)));
        assert_eq!(h.n, 0);
        assert_eq!(h.release(WAL, 210), None, "nothing open");
    }

    #[test]
    fn a_release_out_of_order_takes_its_own_tranche_and_keeps_the_rest() {
        let mut h = Held::default();
        h.acquire(WAL, 0, 0);
        h.acquire(BUF, 1, 10);
        h.acquire(LOCKMGR, 0, 20);
        // The middle one first: the others stay, in order.
        assert_eq!(h.release(BUF, 50), Some((1, 40)));
        assert_eq!(h.n, 2);
        assert_eq!(h.locks[0].name, WAL);
        assert_eq!(h.locks[1].name, LOCKMGR);
        assert_eq!(h.release(WAL, 60), Some((0, 60)));
        assert_eq!(h.release(LOCKMGR, 70), Some((0, 50)));
    }

    #[test]
    fn two_locks_of_one_tranche_keep_the_tranches_total_exact() {
        // Two buffer content locks, released in the order taken (not nested): the release
        // probe names only the tranche, so the later hold ends first; each gets the other's
        // duration, their sum is right.
        let mut h = Held::default();
        h.acquire(BUF, 1, 0);
        h.acquire(BUF, 1, 10);
        let a = h.release(BUF, 15).unwrap().1;
        let b = h.release(BUF, 40).unwrap().1;
        assert_eq!((a, b), (5, 40));
        assert_eq!(a + b, 15 + 30, "the true holds: 0..15 and 10..40");
    }

    #[test]
    fn past_the_capacity_holds_are_not_timed_and_the_rest_still_pair() {
        let mut h = Held::default();
        for i in 0..HELD_CAP as u64 {
            assert!(h.acquire(0x100 + i, 0, i));
        }
        assert!(!h.acquire(WAL, 0, 99), "full");
        assert_eq!(h.release(WAL, 100), None, "its release has no open hold");
        assert_eq!(h.release(0x100, 100), Some((0, 100)));
        assert!(h.acquire(WAL, 0, 101), "room again");
    }

    #[test]
    fn an_interval_is_the_difference_from_the_previous_reading() {
        let before = HoldTimes {
            holds: 10,
            total_ns: 1_000,
            max_ns: 300,
            log2_us: vec![4, 6],
        };
        let now = HoldTimes {
            holds: 15,
            total_ns: 1_800,
            max_ns: 500,
            log2_us: vec![5, 9, 1],
        };
        assert_eq!(
            now.since(&before),
            HoldTimes {
                holds: 5,
                total_ns: 800,
                max_ns: 500,
                log2_us: vec![1, 3, 1],
            }
        );
    }
}
