//! Rate-limited warnings about peers: a flood of bad packets or refused handshakes
//! must not become a flood of log lines (an attacker could fill the disk with them).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many distinct peers are tracked before they share one line.
const MAX_TRACKED: usize = 1024;

/// A peer address and a kind of complaint about it.
type PeerKind = (IpAddr, &'static str);

/// Lets one line per peer address and kind of complaint through per interval; the
/// next line after an interval says how many were held back meanwhile.
pub struct LogLimiter {
    interval: Duration,
    seen: Mutex<BTreeMap<Option<PeerKind>, (Instant, u64)>>,
}

impl LogLimiter {
    /// One line per peer per `interval` (`const`: a limiter can be a `static`).
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    /// Whether to log a line of `kind` about `peer` at `now`: `Some(n)` with the
    /// number of such lines held back since the last one, or `None` to stay silent.
    pub fn admit(&self, peer: IpAddr, kind: &'static str, now: Instant) -> Option<u64> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let key = Some((peer, kind));
        if seen.len() >= MAX_TRACKED && !seen.contains_key(&key) {
            seen.retain(|_, (at, _)| now.saturating_duration_since(*at) < self.interval);
        }
        // Past the cap, every new address counts under one shared entry.
        let key = if seen.len() >= MAX_TRACKED && !seen.contains_key(&key) {
            None
        } else {
            key
        };
        match seen.get_mut(&key) {
            Some((at, held)) if now.saturating_duration_since(*at) < self.interval => {
                *held += 1;
                None
            }
            Some((at, held)) => {
                let n = *held;
                *at = now;
                *held = 0;
                Some(n)
            }
            None => {
                seen.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

/// Logs a warning of kind `$kind` about `$peer` through `$limiter`, with the count
/// held back.
#[macro_export]
#[doc(hidden)]
macro_rules! warn_limited {
    ($limiter:expr, $peer:expr, $kind:expr, $($arg:tt)+) => {
        if let Some(held) = $limiter.admit($peer, $kind, std::time::Instant::now()) {
            if held > 0 {
                tracing::warn!(peer = %$peer, held_back = held, $($arg)+);
            } else {
                tracing::warn!(peer = %$peer, $($arg)+);
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_peer_per_interval_with_the_count_held_back() {
        let limiter = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert_eq!(limiter.admit(a, "x", t0), Some(0));
        for i in 0..1000 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(limiter.admit(a, "x", at), None);
        }
        assert_eq!(
            limiter.admit(b, "x", t0),
            Some(0),
            "another peer: its own line"
        );
        assert_eq!(
            limiter.admit(a, "y", t0),
            Some(0),
            "another kind: its own line"
        );
        let later = t0 + Duration::from_secs(11);
        assert_eq!(limiter.admit(a, "x", later), Some(1000));
        assert_eq!(limiter.admit(a, "x", later + Duration::from_secs(1)), None);
    }

    #[test]
    fn many_addresses_cannot_grow_the_table_or_the_log_without_bound() {
        let limiter = LogLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let admitted = (0..100_000u32)
            .filter(|i| {
                limiter
                    .admit(IpAddr::from(i.to_be_bytes()), "x", t0)
                    .is_some()
            })
            .count();
        assert!(admitted <= MAX_TRACKED + 1, "{admitted}");
        assert!(limiter.seen.lock().unwrap().len() <= MAX_TRACKED + 1);
    }
}
