//! Logging into the host's log, tagged by the host with tenant, plugin and
//! version. Anything printed to stdout or stderr lands there too, at `info`
//! and `warn`.

use crate::__private::baton::plugin::log::{self as host, Level};

/// Logs at `trace` level.
pub fn trace(message: &str) {
    host::log(Level::Trace, message)
}

/// Logs at `debug` level.
pub fn debug(message: &str) {
    host::log(Level::Debug, message)
}

/// Logs at `info` level.
pub fn info(message: &str) {
    host::log(Level::Info, message)
}

/// Logs at `warn` level.
pub fn warn(message: &str) {
    host::log(Level::Warn, message)
}

/// Logs at `error` level.
pub fn error(message: &str) {
    host::log(Level::Error, message)
}
