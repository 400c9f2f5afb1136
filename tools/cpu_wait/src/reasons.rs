//! Why a task was off the CPU: preempted (waiting for a CPU all along), a new process's first
//! wait, or a sleep, named by the class of the wait event PostgreSQL had set (what
//! pg_stat_activity's wait_event_type shows) or, without one, by the kernel's sleep state.

use cpu_wait_ebpf::{RunEvent, STATE_NEW, STATE_PREEMPTED, TASK_UNINTERRUPTIBLE};

/// The reason of one stretch off the CPU.
pub fn reason(e: &RunEvent) -> &'static str {
    match e.state {
        STATE_PREEMPTED => "preempted",
        STATE_NEW => "new process",
        state => match wait_event_class(e.wait_event) {
            Some(class) => class,
            None if state & TASK_UNINTERRUPTIBLE != 0 => "uninterruptible sleep",
            None => "sleep",
        },
    }
}

/// The class of a PostgreSQL wait_event_info (src/include/utils/wait_event.h: the top byte),
/// as pg_stat_activity's wait_event_type names it; None for no wait event (0) or a value that
/// is not one.
pub fn wait_event_class(info: u32) -> Option<&'static str> {
    Some(match info >> 24 {
        0x01 => "LWLock",
        0x03 => "Lock",
        0x04 => "BufferPin",
        0x05 => "Activity",
        0x06 => "Client",
        0x07 => "Extension",
        0x08 => "IPC",
        0x09 => "Timeout",
        0x0A => "IO",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(state: u32, wait_event: u32) -> RunEvent {
        // SAFETY: RunEvent is plain data; all zeroes is a valid value.
        let mut e: RunEvent = unsafe { std::mem::zeroed() };
        e.state = state;
        e.wait_event = wait_event;
        e
    }

    #[test]
    fn preemption_wins_over_a_wait_event_and_sleeps_are_named_by_class() {
        assert_eq!(reason(&event(STATE_PREEMPTED, 0x0600_0000)), "preempted");
        assert_eq!(reason(&event(STATE_NEW, 0)), "new process");
        // ClientRead, WALWrite (an LWLock), DataFileRead, a heavyweight lock.
        assert_eq!(reason(&event(1, 0x0600_0000)), "Client");
        assert_eq!(reason(&event(1, 0x0100_0021)), "LWLock");
        assert_eq!(reason(&event(2, 0x0A00_0004)), "IO");
        assert_eq!(reason(&event(1, 0x0300_0004)), "Lock");
        assert_eq!(reason(&event(2, 0)), "uninterruptible sleep");
        assert_eq!(reason(&event(1, 0)), "sleep");
        // Not a class (garbage read from a process that is not PostgreSQL).
        assert_eq!(reason(&event(1, 0x4200_0000)), "sleep");
    }
}
