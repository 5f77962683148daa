//! One module per figure of the report. Each runs its servers, measures side
//! by side in the same run, and adds a section to the [`Report`].

pub mod cluster;
pub mod echo;
pub mod fanout;
pub mod frames;
pub mod hibernation;
pub mod http;
pub mod instances;
pub mod jobs;
pub mod languages;
pub mod memory;
pub mod noisy;
pub mod resume;
pub mod storage;
pub mod swap;
pub mod upgrade;

/// How long and how big: a quick run or the full one.
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    /// Measured seconds of a throughput or latency run.
    pub seconds: u64,
    /// Whether this is the full run (largest counts).
    pub full: bool,
}

/// A copy of a component with other bytes (a custom section appended) and so
/// another version, behaving the same.
pub fn variant(bytes: &[u8], tag: u32) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let payload = tag.to_le_bytes();
    out.extend_from_slice(&[0, 9, 4, b'b', b'e', b'n', b'c']);
    out.extend_from_slice(&payload);
    out
}

/// Waits until every tenant of `plugin` runs a generation above `above`;
/// returns that generation.
pub async fn all_migrated(server: &crate::servers::Server, plugin: &str, above: u64) -> anyhow::Result<u64> {
    loop {
        let view = server.admin_json(&format!("/api/plugins/{plugin}")).await?;
        let current = view["current"]["generation"].as_u64().unwrap_or(0);
        if current > above
            && view["tenants"]
                .as_array()
                .is_some_and(|t| t.iter().all(|t| t["generation"] == current))
        {
            return Ok(current);
        }
        // Seldom: the figures read the host's own stamps, and a poll costs CPU.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
