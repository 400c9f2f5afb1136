//! The events a log source holds back to put them in time order: small keys (time,
//! arrival, slot) kept sorted over a slab of events. A log is nearly in order (only
//! statements placed at their start from a later `duration:` line are not), so a key goes
//! at the back nearly always; a heap's sifting cost more than reading the log.

use std::collections::VecDeque;

use crate::source::Event;

#[derive(Default)]
pub struct Held {
    /// Sorted by (time, arrival).
    keys: VecDeque<(u64, u64, u32)>,
    slots: Vec<Option<Event>>,
    free: Vec<u32>,
    seq: u64,
    /// What the held events take, about.
    bytes: usize,
}

impl Held {
    /// Holds `event` at `ts_ns`; events of the same time go out in the order they came.
    pub fn push(&mut self, ts_ns: u64, event: Event) {
        self.seq += 1;
        self.bytes += size_of_event(&event);
        let slot = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(event);
                i
            }
            None => {
                self.slots.push(Some(event));
                (self.slots.len() - 1) as u32
            }
        };
        let key = (ts_ns, self.seq, slot);
        if self.keys.back().is_none_or(|b| *b <= key) {
            self.keys.push_back(key);
        } else {
            let at = self.keys.partition_point(|k| *k <= key);
            self.keys.insert(at, key);
        }
    }

    /// The earliest held event's time.
    pub fn first_ns(&self) -> Option<u64> {
        self.keys.front().map(|(ts, ..)| *ts)
    }

    /// The earliest held event, with its time.
    pub fn pop(&mut self) -> Option<(u64, Event)> {
        let (ts, _, slot) = self.keys.pop_front()?;
        let event = self.slots[slot as usize].take()?;
        self.free.push(slot);
        self.bytes = self.bytes.saturating_sub(size_of_event(&event));
        Some((ts, event))
    }

    pub fn clear(&mut self) {
        self.keys.clear();
        self.slots.clear();
        self.free.clear();
        self.bytes = 0;
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

/// About what a held event takes in memory: its bytes and texts, its slot and heap key.
fn size_of_event(e: &Event) -> usize {
    let heap = match e {
        Event::Send { bytes, .. } => bytes.len(),
        Event::Original { completed, .. } => {
            completed.sql.len() + completed.error.as_ref().map_or(0, String::len)
        }
        Event::Begin { startup, .. } => startup.iter().map(|(k, v)| k.len() + v.len() + 48).sum(),
        Event::End { .. } => 0,
    };
    heap + std::mem::size_of::<Option<Event>>() + 24
}

#[cfg(test)]
mod tests {
    use super::*;

    fn end(key: u64) -> Event {
        Event::End { key, ts_ns: 0 }
    }

    #[test]
    fn events_come_out_by_time_then_arrival_and_slots_are_reused() {
        let mut h = Held::default();
        h.push(20, end(1));
        h.push(10, end(2));
        h.push(20, end(3));
        h.push(15, end(5));
        assert_eq!(h.first_ns(), Some(10));
        let keys: Vec<u64> = std::iter::from_fn(|| h.pop())
            .map(|(_, e)| match e {
                Event::End { key, .. } => key,
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(keys, [2, 5, 1, 3]);
        assert_eq!(h.bytes(), 0);
        h.push(5, end(4));
        assert_eq!(h.slots.len(), 4, "a freed slot is taken again");
    }
}
