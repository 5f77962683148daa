//! `baton:plugin/log`: a plugin's log lines, and its stdout/stderr, into the
//! host's log. Every line is tagged with tenant, plugin and version, cut at
//! `limits.max_log_bytes`, and stripped of control characters so that a
//! hostile plugin cannot forge log lines or terminal escapes.

use tracing::Level;

use crate::bindings::baton::plugin::log::{Host, Level as PluginLevel};
use crate::instance::InstanceState;

/// Who a plugin log line comes from.
#[derive(Debug)]
pub struct LogTags {
    /// The tenant.
    pub tenant: String,
    /// The plugin.
    pub plugin: String,
    /// The version (short hash).
    pub version: String,
    /// Longest line kept, in bytes.
    pub max_bytes: usize,
}

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

/// Logs one plugin line under the `plugin` target.
pub fn emit(level: Level, tags: &LogTags, message: &str) {
    let message = sanitize(message, tags.max_bytes);
    let (tenant, plugin, version) = (&tags.tenant, &tags.plugin, &tags.version);
    macro_rules! at {
        ($level:expr) => {
            tracing::event!(target: "plugin", $level, %tenant, %plugin, %version, "{message}")
        };
    }
    match level {
        Level::TRACE => at!(Level::TRACE),
        Level::DEBUG => at!(Level::DEBUG),
        Level::INFO => at!(Level::INFO),
        Level::WARN => at!(Level::WARN),
        _ => at!(Level::ERROR),
    }
}

/// Replaces control characters (newlines included) with `\u{fffd}` and cuts
/// the text at `max` bytes (on a character boundary), marking the cut with `…`.
pub fn sanitize(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max + 3));
    for c in text.chars() {
        if out.len() + c.len_utf8() > max {
            out.push('…');
            break;
        }
        out.push(if c.is_control() { '\u{fffd}' } else { c });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn control_characters_are_replaced() {
        assert_eq!(sanitize("a\nb\x1b[31mc\r", 100), "a\u{fffd}b\u{fffd}[31mc\u{fffd}");
    }

    #[test]
    fn long_lines_are_cut_on_a_char_boundary() {
        assert_eq!(sanitize("ééé", 5), "éé…");
        assert_eq!(sanitize("abc", 3), "abc");
    }
}
