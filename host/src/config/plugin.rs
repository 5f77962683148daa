//! A plugin's settings: `<deploy-dir>/<name>.toml` beside `<name>.wasm`.
//! Unknown keys are refused with their name; an absent file means defaults.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::limits::LimitsOverride;

/// A plugin's settings: `<deploy-dir>/<name>.toml` beside `<name>.wasm`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PluginSettings {
    /// Limits for this plugin's instances, over the host's defaults.
    pub limits: LimitsOverride,
    /// Handed to the plugin's `init` as JSON.
    pub config: toml::Table,
    /// What the plugin may reach beyond the baton API. Default: nothing.
    pub capabilities: Capabilities,
}

/// Capabilities granted to a plugin. Everything is denied unless listed here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Capabilities {
    /// Environment variables the plugin sees (these exact values; nothing is
    /// inherited from the host's environment).
    pub env: BTreeMap<String, String>,
    /// SQL in the tenant's own PostgreSQL schema (`baton:plugin/sql`; needs
    /// `storage.postgres_url`). A plugin that imports it without this grant
    /// is refused at deploy.
    pub sql: bool,
}

impl PluginSettings {
    /// Parses a plugin's settings file text.
    pub fn parse(text: &str) -> Result<PluginSettings, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The `[config]` table as JSON, for `init`.
    pub fn config_json(&self) -> String {
        serde_json::to_string(&self.config).unwrap_or_else(|_| "{}".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::limits::Limits;

    #[test]
    fn plugin_settings_parse_and_reject_unknown_keys() {
        let s = PluginSettings::parse("[limits]\nmemory_mib = 8\n[config]\ngreeting = 'hi'\n").expect("valid");
        assert_eq!(Limits::default().with(&s.limits).memory_mib, 8);
        assert_eq!(s.config_json(), r#"{"greeting":"hi"}"#);
        let err = PluginSettings::parse("[limit]\nmemory_mib = 8").expect_err("typo");
        assert!(err.contains("limit"), "{err}");
    }
}
