//! `baton:plugin/log`: a plugin's log lines into the host's log, tagged,
//! bounded and sanitized as its stdout/stderr are (`instance::output`).

use tracing::Level;

use crate::bindings::baton::plugin::log::{Host, Level as PluginLevel};
use crate::instance::output::emit;
use crate::instance::state::InstanceState;

impl Host for InstanceState {
    fn log(&mut self, level: PluginLevel, message: String) {
        let level = match level {
            PluginLevel::Trace => Level::TRACE,
            PluginLevel::Debug => Level::DEBUG,
            PluginLevel::Info => Level::INFO,
            PluginLevel::Warn => Level::WARN,
            PluginLevel::Error => Level::ERROR,
        };
        emit(level, &self.tags, &message);
    }
}
