//! What a plugin writes to the host's log: its `log` calls and its
//! stdout/stderr, one log event per line, tagged with tenant, plugin and
//! version. Every line is cut at `limits.max_log_bytes` and stripped of
//! control characters, so a hostile plugin cannot forge log lines or
//! terminal escapes, nor flood the log with one endless line.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use tracing::Level;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};

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
    let clean: String = text
        .chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect();
    crate::text::ellipsized(clean, max)
}

/// A plugin's stdout or stderr: each line becomes a log event.
#[derive(Clone)]
pub struct PluginOutput {
    tags: Arc<LogTags>,
    level: tracing::Level,
}

impl PluginOutput {
    /// Output logged at `level` with `tags`.
    pub fn new(tags: Arc<LogTags>, level: Level) -> PluginOutput {
        PluginOutput { tags, level }
    }
}

impl IsTerminal for PluginOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(LineWriter::new(self.clone()))
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(LineWriter::new(self.clone()))
    }
}

/// Splits written bytes into lines and logs each (bounded: a line longer
/// than the log limit is cut).
struct LineWriter {
    output: PluginOutput,
    line: Vec<u8>,
}

impl LineWriter {
    fn new(output: PluginOutput) -> LineWriter {
        LineWriter {
            output,
            line: Vec::new(),
        }
    }

    fn write_bytes(&mut self, mut bytes: &[u8]) {
        let max = self.output.tags.max_bytes;
        while let Some(newline) = bytes.iter().position(|b| *b == b'\n') {
            self.push(&bytes[..newline], max);
            self.flush_line();
            bytes = &bytes[newline + 1..];
        }
        self.push(bytes, max);
    }

    fn push(&mut self, bytes: &[u8], max: usize) {
        let room = (max + 1).saturating_sub(self.line.len());
        self.line.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    fn flush_line(&mut self) {
        if !self.line.is_empty() {
            let text = String::from_utf8_lossy(&self.line);
            emit(self.output.level, &self.output.tags, &text);
            self.line.clear();
        }
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.flush_line();
    }
}

#[async_trait::async_trait]
impl Pollable for LineWriter {
    async fn ready(&mut self) {}
}

impl OutputStream for LineWriter {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 << 10)
    }
}

impl tokio::io::AsyncWrite for LineWriter {
    fn poll_write(mut self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.flush_line();
        Poll::Ready(Ok(()))
    }
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
