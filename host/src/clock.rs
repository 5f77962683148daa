//! Wall-clock time as Unix milliseconds: what version records, events, error
//! reports and the plugins' `clock` import carry. (Deadlines and durations
//! use monotonic `Instant`s instead.)

use std::sync::OnceLock;
use std::time::SystemTime;

/// When this process started serving, in Unix ms: the first call fixes it
/// (`run` makes it at start).
pub fn started_ms() -> u64 {
    static STARTED: OnceLock<u64> = OnceLock::new();
    *STARTED.get_or_init(unix_ms)
}

/// Now, in milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    unix_ms_of(SystemTime::now())
}

/// `at` in milliseconds since the Unix epoch (0 before it).
pub fn unix_ms_of(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
