//! The wall clock a request's phases read (`expires_at`, `not_after`), taken from the monotonic
//! reading the request starts with instead of a second clock read per request.
//!
//! The offset between the two clocks is read from the system once a second at most (the first
//! request after a second has passed reads both clocks again), so a step of the system's wall
//! clock is followed within a second, and the slew in between (NTP's is at most 0.05%) is under
//! a millisecond. Key expiries are written to the second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::upstream::deadline_nanos as nanos;

/// Re-read the offset after this many nanoseconds.
const REFRESH: u64 = 1_000_000_000;

/// Unix time in nanoseconds minus [`nanos`] at the last reading; 0: never read.
static OFFSET: AtomicU64 = AtomicU64::new(0);
/// [`nanos`] at the last reading.
static READ_AT: AtomicU64 = AtomicU64::new(0);

/// The wall-clock time of the monotonic reading `at`.
pub(super) fn wall(at: Instant) -> SystemTime {
    let mono = nanos(at);
    let mut offset = OFFSET.load(Ordering::Relaxed);
    if offset == 0 || mono.saturating_sub(READ_AT.load(Ordering::Relaxed)) > REFRESH {
        let (now, read_at) = (SystemTime::now(), nanos(Instant::now()));
        let Some(unix) = now
            .duration_since(UNIX_EPOCH)
            .ok()
            .and_then(|d| u64::try_from(d.as_nanos()).ok())
            .and_then(|unix| unix.checked_sub(read_at))
            .filter(|&offset| offset != 0)
        else {
            // A clock before 1970: no offset to keep, read it as it is.
            return now;
        };
        offset = unix;
        // Two stores that a reader may see apart: either offset is right to the slew.
        OFFSET.store(offset, Ordering::Relaxed);
        READ_AT.store(read_at, Ordering::Relaxed);
    }
    UNIX_EPOCH + Duration::from_nanos(offset.saturating_add(mono))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wall_clock_of_a_reading_is_the_system_s_to_a_millisecond() {
        for _ in 0..3 {
            let before = SystemTime::now();
            let at = Instant::now();
            let wall = wall(at);
            let after = SystemTime::now();
            let slack = Duration::from_millis(1);
            assert!(
                wall + slack >= before && wall <= after + slack,
                "{wall:?} not in {before:?}..{after:?}"
            );
        }
        // A reading taken earlier is earlier.
        let earlier = Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        let later = Instant::now();
        assert!(wall(later).duration_since(wall(earlier)).unwrap() >= Duration::from_millis(5));
    }
}
