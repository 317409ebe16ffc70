//! A bounded, adaptive spin before a thread parks to wait for an object.
//!
//! A synchronous call (`get` right after a submit) is a chain of wake-ups: the waiting
//! thread parks, and the thread that learns the result must wake it. In a virtual
//! machine that wake costs tens of microseconds (an inter-processor interrupt and a
//! futex), a large part of a whole actor call. When the waits of this thread have
//! lately been short, it first polls for the answer for at most [`SPIN_LIMIT`]; when
//! they have been long, it parks at once, so a thread waiting on slow work burns no CPU.
//! A task's thread spins while still holding its CPU; it tells the node it is blocked
//! (lending the CPU) only once it parks.
//!
//! Spinning needs a second core for the thread that brings the answer: on a machine
//! with one CPU it is off.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Duration;

/// The longest a thread polls before it parks.
pub const SPIN_LIMIT: Duration = Duration::from_micros(200);

/// A wait longer than this counts as long: the next wait of the thread parks at once.
const SHORT_WAIT: Duration = Duration::from_micros(500);

thread_local! {
    /// How long this thread's last wait for an object took (zero before any).
    static LAST_WAIT: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

fn machine_allows() -> bool {
    static MANY_CPUS: OnceLock<bool> = OnceLock::new();
    *MANY_CPUS.get_or_init(|| std::thread::available_parallelism().is_ok_and(|n| n.get() > 1))
}

/// How long the calling thread should poll before parking, given its recent waits and
/// the time left before the caller's deadline.
pub fn budget(left: Option<Duration>) -> Duration {
    if !machine_allows() {
        return Duration::ZERO;
    }
    budget_after(LAST_WAIT.with(Cell::get), left)
}

/// The rule behind [`budget`]: spin only after a short wait, never past the deadline.
fn budget_after(last_wait: Duration, left: Option<Duration>) -> Duration {
    if last_wait > SHORT_WAIT {
        return Duration::ZERO;
    }
    left.map_or(SPIN_LIMIT, |left| left.min(SPIN_LIMIT))
}

/// Records how long the calling thread's wait took, for its next [`budget`].
pub fn record(waited: Duration) {
    LAST_WAIT.with(|l| l.set(waited));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spins_after_short_waits_only_and_never_past_the_deadline() {
        let us = Duration::from_micros;
        assert_eq!(budget_after(Duration::ZERO, None), SPIN_LIMIT);
        assert_eq!(budget_after(us(80), None), SPIN_LIMIT);
        assert_eq!(budget_after(us(80), Some(us(30))), us(30));
        assert_eq!(budget_after(us(80), Some(Duration::ZERO)), Duration::ZERO);
        assert_eq!(budget_after(Duration::from_millis(3), None), Duration::ZERO);
    }

    #[test]
    fn a_thread_s_last_wait_decides_its_next_budget() {
        std::thread::spawn(|| {
            let allowed = machine_allows();
            record(Duration::from_secs(2));
            assert_eq!(budget(None), Duration::ZERO);
            record(Duration::from_micros(40));
            assert_eq!(budget(None) > Duration::ZERO, allowed);
        })
        .join()
        .expect("the probe thread");
    }
}
