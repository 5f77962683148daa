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
    /// How a new version reaches the tenants: with this table, some tenants
    /// first (a canary); without it, all at once.
    pub rollout: Option<RolloutSettings>,
}

/// A rollout: which tenants get a new version first, and (with `auto`) how
/// it moves on to the others, gated on its health compared with the
/// current version's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RolloutSettings {
    /// Tenants that get the new version first.
    pub tenants: Vec<String>,
    /// This percent of the tenants get it first (a stable hash of each
    /// name, so the same ones stay in), besides `tenants`.
    pub percent: u8,
    /// Move on by itself: every `step_secs` that the canary was healthy, to
    /// the next of `steps`, then promote; roll the canary back when it is
    /// not.
    pub auto: bool,
    /// The percent of tenants at each later step (the last 100: promote).
    pub steps: Vec<u8>,
    /// How long each step must stay healthy, in seconds.
    pub step_secs: u64,
    /// The canary is judged only once its tenants made this many calls in a
    /// step (fewer: the step waits).
    pub min_calls: u64,
    /// Traps per call the canary may have beyond the current version's (and
    /// restarts per call, likewise).
    pub max_trap_rate: f64,
    /// Plugin errors per call (HTTP 5xx from `on-http`, refused connects)
    /// the canary may have beyond the current version's.
    pub max_error_rate: f64,
    /// The canary's call latency p99 may be at most this times the current
    /// version's (and 5 ms more).
    pub max_p99_ratio: f64,
}

impl Default for RolloutSettings {
    fn default() -> Self {
        RolloutSettings {
            tenants: Vec::new(),
            percent: 0,
            auto: false,
            steps: vec![25, 100],
            step_secs: 60,
            min_calls: 20,
            max_trap_rate: 0.001,
            max_error_rate: 0.01,
            max_p99_ratio: 2.0,
        }
    }
}

impl RolloutSettings {
    /// Checks what a settings file cannot express in types.
    fn check(&self) -> Result<(), String> {
        if self.tenants.is_empty() && self.percent == 0 {
            return Err("[rollout] needs tenants or a percent: which tenants get a new version first".into());
        }
        if self.percent > 100 || self.steps.iter().any(|s| *s > 100) {
            return Err("[rollout] percents are at most 100".into());
        }
        if !self.steps.windows(2).all(|w| w[0] < w[1]) {
            return Err("[rollout] steps must grow".into());
        }
        if self.auto && self.steps.last() != Some(&100) {
            return Err("[rollout] steps must end at 100 with auto (the last step promotes)".into());
        }
        if let Some(bad) = self.tenants.iter().find(|t| !crate::names::is_tenant(t)) {
            return Err(format!("[rollout] tenant {bad:?} is not a tenant name"));
        }
        if self.step_secs == 0 || self.max_p99_ratio < 1.0 || self.max_trap_rate < 0.0 || self.max_error_rate < 0.0 {
            return Err("[rollout] step_secs > 0, max_p99_ratio ≥ 1, rates ≥ 0".into());
        }
        Ok(())
    }
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
    /// Outbound HTTP (`baton:plugin/outbound-http`): the URLs the plugin may
    /// request, as `scheme://host[:port]` entries (see `outbound::AllowList`).
    /// A plugin that imports it without an entry is refused at deploy.
    pub http: Vec<String>,
}

impl PluginSettings {
    /// Parses a plugin's settings file text.
    pub fn parse(text: &str) -> Result<PluginSettings, String> {
        let settings: PluginSettings = toml::from_str(text).map_err(|e| e.to_string())?;
        if let Some(rollout) = &settings.rollout {
            rollout.check()?;
        }
        crate::outbound::AllowList::parse(&settings.capabilities.http)
            .map_err(|e| format!("[capabilities] http: {e}"))?;
        Ok(settings)
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

    #[test]
    fn an_http_grant_is_checked_entry_by_entry() {
        let s =
            PluginSettings::parse("[capabilities]\nhttp = ['https://api.example.com', 'http://*:*']\n").expect("valid");
        assert_eq!(s.capabilities.http.len(), 2);
        let err = PluginSettings::parse("[capabilities]\nhttp = ['https://api.example.com/v1']\n").expect_err("a path");
        assert!(
            err.starts_with("[capabilities] http: \"https://api.example.com/v1\""),
            "{err}"
        );
    }

    #[test]
    fn a_rollout_needs_its_first_tenants_and_growing_steps() {
        let s = PluginSettings::parse("[rollout]\npercent = 5\nauto = true\n").expect("valid");
        let rollout = s.rollout.expect("a rollout");
        assert_eq!((rollout.percent, rollout.steps.as_slice()), (5, &[25, 100][..]));
        for bad in [
            "[rollout]\nauto = true\n",
            "[rollout]\npercent = 5\nsteps = [50, 25, 100]\n",
            "[rollout]\npercent = 5\nauto = true\nsteps = [50]\n",
            "[rollout]\ntenants = ['Bad Name']\n",
        ] {
            assert!(PluginSettings::parse(bad).is_err(), "{bad}");
        }
    }
}
