//! Timers: [`crate::Plugin::on_timer`] later, on whatever version is current
//! then. Every timer survives hot swaps and crashes; a named one
//! ([`set_named`]) is durable and survives a host restart too (it fires at
//! least once), while an unnamed one is gone with the host process. Arm
//! named timers in `init` only when [`pending`] has none.

use crate::__private::baton::plugin::timers as host;
use crate::TimerId;

/// Why a timer could not be set.
pub type Error = host::Error;

/// Fires `on_timer(id, payload)` after `delay_ms`.
pub fn set(delay_ms: u64, payload: &[u8]) -> Result<TimerId, Error> {
    host::set(None, delay_ms, payload)
}

/// Like [`set`], replacing the pending timer named `name` if there is one.
pub fn set_named(name: &str, delay_ms: u64, payload: &[u8]) -> Result<TimerId, Error> {
    host::set(Some(name), delay_ms, payload)
}

/// Cancels a timer; `false` if it already fired.
pub fn cancel(timer: TimerId) -> bool {
    host::cancel(timer)
}

/// The pending timer named `name`.
pub fn pending(name: &str) -> Option<TimerId> {
    host::pending(name)
}
