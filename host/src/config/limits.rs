//! The limits of an instance ([`Limits`]), and the one way to change some of
//! them: a partial `[limits]` table ([`LimitsOverride`]) merged key by key
//! over the limits it applies to. A plugin's `<name>.toml` applies one over
//! the host's defaults, `tenant_limits.<tenant>` one over the plugin's.
//!
//! An override is checked against `Limits` itself when it is read, so an
//! unknown key or a wrong type is refused with its name, and the field list
//! is written once.

use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize};
use std::time::Duration;

use crate::config::layers::merge;

/// Limits applied to every instance (one plugin, one tenant).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Linear memory per instance, in MiB. Default 64.
    pub memory_mib: u64,
    /// CPU time one call may use before it is interrupted, in ms. Default 2000.
    pub call_timeout_ms: u64,
    /// Elements per table. Default 10000.
    pub table_elements: usize,
    /// Core instances per component instance. Default 32.
    pub instances: usize,
    /// Tables per component instance. Default 32.
    pub tables: usize,
    /// Linear memories per component instance. Default 4.
    pub memories: usize,
    /// Largest frame a client may send or a plugin may queue, in bytes. Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Longest log line a plugin may write, in bytes; longer ones are cut. Default 4096.
    pub max_log_bytes: usize,
    /// Open sessions per tenant and plugin. Default 10000.
    pub max_sessions: usize,
    /// Topics one session may be subscribed to. Default 100.
    pub max_topics_per_session: usize,
    /// Pending unnamed (in-memory) timers per tenant and plugin. Default 10000.
    pub max_timers: usize,
    /// Jobs not dead (pending or running; named timers and webhooks count)
    /// per tenant and plugin. Default 10000.
    pub max_jobs: u64,
    /// Largest presence key plus metadata, in bytes. Default 4096.
    pub max_presence_bytes: usize,
    /// Largest stored value, in bytes. Default 1 MiB.
    pub max_value_bytes: usize,
    /// Stored keys and values per tenant and plugin, in MiB. Default 64.
    pub max_storage_mib: u64,
}

/// A partial [`Limits`]: the keys present replace those of the limits it is
/// applied over ([`Limits::with`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct LimitsOverride(toml::Table);

impl<'de> Deserialize<'de> for LimitsOverride {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<LimitsOverride, D::Error> {
        let table = toml::Table::deserialize(deserializer)?;
        Limits::deserialize(toml::Value::Table(table.clone())).map_err(serde::de::Error::custom)?;
        Ok(LimitsOverride(table))
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mib: 64,
            call_timeout_ms: 2000,
            table_elements: 10_000,
            instances: 32,
            tables: 32,
            memories: 4,
            max_frame_bytes: 1 << 20,
            max_log_bytes: 4096,
            max_sessions: 10_000,
            max_topics_per_session: 100,
            max_timers: 10_000,
            max_jobs: 10_000,
            max_presence_bytes: 4096,
            max_value_bytes: 1 << 20,
            max_storage_mib: 64,
        }
    }
}

impl Limits {
    /// These limits with the keys of `o` replaced.
    pub fn with(&self, o: &LimitsOverride) -> Limits {
        if o.0.is_empty() {
            return self.clone();
        }
        let merged = toml::Table::try_from(self).and_then(|mut table| {
            merge(&mut table, o.0.clone());
            Limits::deserialize(toml::Value::Table(table)).map_err(|e| toml::ser::Error::custom(e.to_string()))
        });
        // Cannot fail: both tables were checked against `Limits` when read.
        merged.unwrap_or_else(|e| {
            tracing::error!("limits override not applied: {e}");
            self.clone()
        })
    }

    /// Linear memory per instance, in bytes.
    pub fn memory_bytes(&self) -> usize {
        usize::try_from(self.memory_mib << 20).unwrap_or(usize::MAX)
    }

    /// Storage limits of one namespace.
    pub fn storage(&self) -> crate::storage::namespace::StorageLimits {
        crate::storage::namespace::StorageLimits {
            max_value_bytes: self.max_value_bytes,
            max_bytes: self.max_storage_mib << 20,
        }
    }

    /// CPU time per call.
    pub fn call_timeout(&self) -> Duration {
        Duration::from_millis(self.call_timeout_ms)
    }

    /// Checks the limits against the runtime's memory ceiling
    /// (`runtime.max_memory_mib`).
    pub fn check(&self, max_memory_mib: u64) -> Result<(), String> {
        if self.memory_mib > max_memory_mib {
            return Err(format!(
                "limits.memory_mib = {} is above the host's runtime.max_memory_mib = {max_memory_mib}",
                self.memory_mib
            ));
        }
        if self.call_timeout_ms == 0 || self.max_frame_bytes == 0 || self.max_sessions == 0 {
            return Err("limits.call_timeout_ms, max_frame_bytes and max_sessions must be > 0".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_replaces_only_its_keys() {
        let o: LimitsOverride = toml::from_str("memory_mib = 8\nmax_sessions = 3").expect("valid");
        let limits = Limits::default().with(&o);
        assert_eq!((limits.memory_mib, limits.max_sessions), (8, 3));
        assert_eq!(limits.call_timeout_ms, Limits::default().call_timeout_ms);
        assert_eq!(Limits::default().with(&LimitsOverride::default()), Limits::default());
    }

    #[test]
    fn an_override_names_its_unknown_or_mistyped_key() {
        let err = toml::from_str::<LimitsOverride>("memroy_mib = 8").expect_err("unknown key");
        assert!(err.to_string().contains("memroy_mib"), "{err}");
        let err = toml::from_str::<LimitsOverride>("memory_mib = 'big'").expect_err("wrong type");
        assert!(err.to_string().contains("invalid type"), "{err}");
    }
}
