//! `[jobs]` and `[webhooks]`: how the host runs tenants' durable jobs and
//! delivers their webhooks.

use serde::{Deserialize, Serialize};

/// `[jobs]`: the dispatcher of durable jobs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobsConfig {
    /// Tenants running a job (`on-job`, a durable timer, a webhook result)
    /// at once; each tenant runs one at a time. Default 64.
    pub max_running: usize,
    /// Webhook deliveries in flight at once; each (tenant, plugin) has one
    /// at a time. Default 32.
    pub max_deliveries: usize,
    /// How often the storage is looked at for jobs other hosts enqueued
    /// (this host's own enqueues wake it at once), in ms. Default 1000.
    pub poll_ms: u64,
}

impl Default for JobsConfig {
    fn default() -> Self {
        JobsConfig {
            max_running: 64,
            max_deliveries: 32,
            poll_ms: 1000,
        }
    }
}

/// `[webhooks]`: delivery of tenants' webhooks to their endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Which endpoint URLs may be configured, as `scheme://host:port`
    /// patterns (as a plugin's `[capabilities] http`); loopback, private and
    /// link-local addresses only when listed by address. Default: any
    /// `https` and `http` host on a public address.
    pub allow: Vec<String>,
    /// The delays between attempts, in seconds: the first attempt is at
    /// once, attempt n+1 waits the n-th delay; after the last, the message
    /// is dead. Default Svix's: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
    pub retry_secs: Vec<u64>,
    /// How long an attempt may take for a 2xx to count, in seconds. Default 15.
    pub timeout_secs: u64,
    /// An endpoint whose deliveries have all failed for this long is
    /// disabled (with an event in the log and the audit), in seconds.
    /// Default 5 days.
    pub disable_after_secs: u64,
    /// Delivery attempts kept per tenant in its log. Default 200.
    pub log_entries: usize,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            allow: vec!["https://*:*".into(), "http://*:*".into()],
            retry_secs: vec![5, 300, 1800, 7200, 18000, 36000, 36000],
            timeout_secs: 15,
            disable_after_secs: 5 * 24 * 3600,
            log_entries: 200,
        }
    }
}
