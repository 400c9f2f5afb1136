//! A report's two periods: what happened since the last interval report (INTERVAL), and
//! since the tool attached (the final report). A reporter adds each event to both, takes the
//! interval's figures at each tick and the whole run's at the end.

use std::time::{Duration, Instant};

use crate::records::Scope;

/// When the run and the current interval began.
#[derive(Clone, Copy, Debug)]
pub struct ReportClock {
    started: Instant,
    interval_started: Instant,
}

impl Default for ReportClock {
    fn default() -> Self {
        let now = Instant::now();
        ReportClock {
            started: now,
            interval_started: now,
        }
    }
}

impl ReportClock {
    /// Ends the current interval: how long it lasted (the next one starts now).
    pub fn end_interval(&mut self) -> Duration {
        let now = Instant::now();
        let lasted = now.duration_since(self.interval_started);
        self.interval_started = now;
        lasted
    }

    /// How long the run has lasted.
    pub fn run(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Figures `T` of the current interval and of the whole run.
#[derive(Debug, Default)]
pub struct Periods<T> {
    interval: T,
    total: T,
    clock: ReportClock,
}

impl<T: Default> Periods<T> {
    pub fn new() -> Periods<T> {
        Periods::default()
    }

    /// Both periods, to add what happened to each: `for p in periods.each() { p.add(..) }`.
    pub fn each(&mut self) -> [&mut T; 2] {
        [&mut self.interval, &mut self.total]
    }

    /// The periods reported: both with intervals, the run's alone without them (adding to an
    /// interval nobody reports is wasted work per event).
    pub fn each_reported(&mut self, intervals: bool) -> impl Iterator<Item = &mut T> {
        let [interval, total] = self.each();
        intervals.then_some(interval).into_iter().chain([total])
    }

    /// The current interval's figures (e.g. to add to it alone).
    pub fn interval_mut(&mut self) -> &mut T {
        &mut self.interval
    }

    /// The whole run's figures so far.
    pub fn total(&self) -> &T {
        &self.total
    }

    /// Ends the interval: its figures and how long it lasted; the next one starts empty.
    pub fn end_interval(&mut self) -> (T, Duration) {
        (
            std::mem::take(&mut self.interval),
            self.clock.end_interval(),
        )
    }

    /// The whole run's figures and how long it has lasted (for the final report).
    pub fn end_run(&mut self) -> (T, Duration) {
        (std::mem::take(&mut self.total), self.clock.run())
    }

    /// The figures a report of `scope` shows: [`Periods::end_interval`] or
    /// [`Periods::end_run`].
    pub fn end(&mut self, scope: Scope) -> (T, Duration) {
        match scope {
            Scope::Interval => self.end_interval(),
            Scope::Total => self.end_run(),
        }
    }
}

/// How a report header names its period: "in the last 5s" or, for the run, "in 12s".
pub fn period_text(scope: Scope, period: Duration) -> String {
    match scope {
        Scope::Interval => format!("in the last {:.0}s", period.as_secs_f64()),
        Scope::Total => format!("in {:.0}s", period.as_secs_f64()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals_start_empty_and_the_run_keeps_everything() {
        let mut p: Periods<Vec<u32>> = Periods::new();
        for v in p.each() {
            v.push(1);
        }
        let (first, _) = p.end_interval();
        p.interval_mut().push(2);
        assert_eq!(first, vec![1]);
        let (second, _) = p.end_interval();
        assert_eq!(second, vec![2]);
        assert_eq!(p.total(), &vec![1]);
        let (run, lasted) = p.end_run();
        assert_eq!(run, vec![1]);
        assert!(lasted < Duration::from_secs(5));
        assert_eq!(
            period_text(Scope::Interval, Duration::from_secs(5)),
            "in the last 5s"
        );
        assert_eq!(
            period_text(Scope::Total, Duration::from_millis(12_400)),
            "in 12s"
        );
    }
}
