//! Configuration: the host's settings and each plugin's `<name>.toml`.
//!
//! Host settings are layered: the defaults documented on each field, then a
//! TOML file, then `BATON_*` environment variables, then command-line flags.
//! Every layer is turned into a TOML table and merged key by key before one
//! typed deserialization, so a key unknown at any layer is rejected with its
//! name, and tests can feed a layer as a plain map ([`Config::from_layers`]).
//!
//! Environment variables name a key by its path, upper-case, with `__`
//! between a section and its key: `BATON_LISTEN=0.0.0.0:8080`,
//! `BATON_LIMITS__MEMORY_MIB=128`. Their values are read as TOML values when
//! they parse as one (numbers, booleans, arrays) and as strings otherwise.

mod cluster;
mod jobs;
mod layers;
mod limits;
mod plugin;
mod runtime;
mod sessions;
mod storage;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use cluster::ClusterConfig;
pub use jobs::{JobsConfig, WebhooksConfig};
use layers::{env_layer, merge};
pub use limits::{Limits, LimitsOverride};
pub use plugin::{Capabilities, PluginSettings, RolloutSettings};
pub use runtime::RuntimeConfig;
pub use sessions::SessionConfig;
pub use storage::{SqlConfig, StorageBackend, StorageConfig};

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A layer is not valid TOML or has a key or value the host does not know.
    #[error("{origin}: {message}")]
    Invalid {
        /// Which layer: a file path, "environment" or "flags".
        origin: String,
        /// What is wrong, naming the key.
        message: String,
    },
}

/// Everything `baton serve` needs. Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Client listener (WebSocket sessions and plugin HTTP). Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Admin listener (API, metrics, dashboard). Default `127.0.0.1:8081`.
    pub admin_listen: SocketAddr,
    /// Bearer token required by the admin listener. Default: none, which is
    /// allowed only while `admin_listen` is a loopback address. An empty or
    /// blank token counts as none.
    pub admin_token: Option<String>,
    /// More bearer tokens for the admin listener, by name (the audit log
    /// records which one asked for a change; `admin_token` is named
    /// `admin`). Default: none.
    pub admin_tokens: BTreeMap<String, String>,
    /// Names the admin listener answers to besides `localhost`, `127.0.0.1`,
    /// `[::1]` and its own address (e.g. the name a proxy forwards). Other
    /// `Host`s get 421. Default: none.
    pub admin_hosts: Vec<String>,
    /// Folder watched for `<name>.wasm` plugins. Default `./deploy`.
    pub deploy_dir: PathBuf,
    /// Folder for compiled artifacts, stored versions and tenant data. Default `./data`.
    pub data_dir: PathBuf,
    /// Tenants allowed to connect. Default: empty, meaning any tenant whose
    /// name matches `[a-z0-9][a-z0-9_-]{0,62}`.
    pub tenants: Vec<String>,
    /// The WebAssembly engine.
    pub runtime: RuntimeConfig,
    /// Default limits of every instance; a plugin's `<name>.toml` may lower or
    /// raise them up to the runtime's ceilings.
    pub limits: Limits,
    /// Per-tenant limit overrides, applied over the plugin's limits.
    pub tenant_limits: BTreeMap<String, LimitsOverride>,
    /// Client sessions (WebSockets).
    pub sessions: SessionConfig,
    /// Plain HTTP requests routed to plugins.
    pub http: HttpConfig,
    /// Hot swaps.
    pub swap: SwapConfig,
    /// Restarting crashed instances.
    pub supervision: SupervisionConfig,
    /// Graceful shutdown (SIGTERM, SIGINT).
    pub shutdown: ShutdownConfig,
    /// Handing over to a new baton process (`baton upgrade`).
    pub upgrade: UpgradeConfig,
    /// Dropping the instances of idle tenants.
    pub hibernation: HibernationConfig,
    /// Admitting new tenants.
    pub admission: AdmissionConfig,
    /// Keeping plugin state between shutdowns.
    pub persist: PersistConfig,
    /// Where tenants' data is kept, and plugins' SQL.
    pub storage: StorageConfig,
    /// Several hosts serving as one, on NATS.
    pub cluster: ClusterConfig,
    /// Sessions that survive a lost socket (`baton.v1`).
    pub resume: ResumeConfig,
    /// Tenants' durable jobs.
    pub jobs: JobsConfig,
    /// Delivery of tenants' webhooks.
    pub webhooks: WebhooksConfig,
    /// Log format: `text` (default) or `json`.
    pub log_format: LogFormat,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Admitting new tenants: a token bucket of tenant tasks created per second,
/// on top of the `tenants` allow-list, so that requests for made-up tenant
/// names cannot make the host create tasks without bound. A request for a
/// new tenant beyond it gets 429.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdmissionConfig {
    /// New tenants per second, sustained. Default 200.
    pub new_tenants_per_second: u32,
    /// New tenants at once, after a quiet period. Default 2000.
    pub new_tenants_burst: u32,
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        AdmissionConfig {
            new_tenants_per_second: 200,
            new_tenants_burst: 2000,
        }
    }
}

/// Plain HTTP settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Largest request body handed to a plugin, in bytes (413 above). Default 1 MiB.
    pub max_body_bytes: usize,
    /// A client must send its request headers within this time, in ms. Default 10000.
    pub header_read_timeout_ms: u64,
    /// A client must send its whole request body within this time, in ms
    /// (408 beyond). Default 10000.
    pub body_read_timeout_ms: u64,
}

/// Hot swap settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SwapConfig {
    /// How long a call that started on a replaced version may keep running;
    /// also how long sessions of a removed plugin stay open. In seconds. Default 30.
    pub drain_deadline_secs: u64,
    /// A file in the deploy folder is read once its size and modification time
    /// have not changed for this long, in ms. Default 200.
    pub settle_ms: u64,
    /// Largest plugin file accepted, in MiB; a larger one is refused before
    /// it is read (Python and JavaScript components are 12–20 MB). Default 64.
    pub max_file_mib: u64,
}

/// Supervision settings (OTP's restart intensity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisionConfig {
    /// Restarts of one tenant's instance allowed within `window_secs`; one more
    /// puts the instance in back-off. Default 5.
    pub max_restarts: usize,
    /// The window of `max_restarts`, in seconds. Default 30.
    pub window_secs: u64,
    /// First back-off, doubled on each further one up to `max_backoff_ms`. Default 1000.
    pub backoff_ms: u64,
    /// Longest back-off. Default 10000.
    pub max_backoff_ms: u64,
}

/// Checkpoints: an active tenant's plugin state is exported to the storage
/// at most this often after it handled something, and when it hibernates,
/// so that a crash of the host (`kill -9`, power loss) loses at most that
/// window; the next start imports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PersistConfig {
    /// Seconds between checkpoints of a tenant that changed; 0 turns them
    /// off (state is then kept at graceful shutdowns only). Default 30.
    pub checkpoint_secs: u64,
}

impl Default for PersistConfig {
    fn default() -> Self {
        PersistConfig { checkpoint_secs: 30 }
    }
}

/// Sessions of clients that speak `baton.v1` (`docs/protocol.md`): when
/// such a session loses its socket, its tenant keeps it (presence,
/// subscriptions, the frames its client has not acknowledged) for the client
/// to resume.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResumeConfig {
    /// Seconds a session without a socket is kept; then it ends (the plugin
    /// hears `on-disconnect`). Default 120.
    pub window_secs: u32,
    /// Bytes of unacknowledged frames kept per session (each frame counts
    /// 64 bytes besides its payload). Beyond, a session with a socket is
    /// closed as a slow consumer (1008) and one without ends. Default 1 MiB.
    pub max_bytes: usize,
}

impl Default for ResumeConfig {
    fn default() -> Self {
        ResumeConfig {
            window_secs: 120,
            max_bytes: 1 << 20,
        }
    }
}

/// Graceful shutdown settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Sessions closed (with 1001) per second at most, so that clients do not
    /// all reconnect elsewhere at the same instant. Default 5000.
    pub close_per_second: usize,
    /// The host exits within this time after the signal, in seconds, whatever
    /// is still open. Default 30.
    pub deadline_secs: u64,
    /// Export every tenant's plugin state to the data folder at shutdown and
    /// import it at the tenant's first instance after the next start, so
    /// plugin state survives host restarts. Default true.
    pub persist_state: bool,
}

/// `baton upgrade`: handing every listener, session and tenant to a new
/// process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpgradeConfig {
    /// Each step of a handover (the new process connecting, loading every
    /// plugin, the cut-over, its confirmation) must finish within this, in
    /// seconds, or the old process calls it off and serves on. Default 120.
    pub timeout_secs: u64,
}

impl Default for UpgradeConfig {
    fn default() -> Self {
        UpgradeConfig { timeout_secs: 120 }
    }
}

/// Hibernation: an instance idle this long exports its state and is dropped
/// (its memory returns to the pool); the next event for the tenant starts a
/// new one that imports the state. Open sessions stay open meanwhile.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HibernationConfig {
    /// Idle time before hibernating, in seconds; 0 turns hibernation off.
    /// Default 300.
    pub idle_secs: u64,
}

impl Default for HibernationConfig {
    fn default() -> Self {
        HibernationConfig { idle_secs: 300 }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig {
            close_per_second: 5000,
            deadline_secs: 30,
            persist_state: true,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            admin_token: None,
            admin_tokens: BTreeMap::new(),
            admin_hosts: Vec::new(),
            deploy_dir: PathBuf::from("deploy"),
            data_dir: PathBuf::from("data"),
            tenants: Vec::new(),
            runtime: RuntimeConfig::default(),
            limits: Limits::default(),
            tenant_limits: BTreeMap::new(),
            sessions: SessionConfig::default(),
            http: HttpConfig::default(),
            swap: SwapConfig::default(),
            supervision: SupervisionConfig::default(),
            shutdown: ShutdownConfig::default(),
            upgrade: UpgradeConfig::default(),
            hibernation: HibernationConfig::default(),
            admission: AdmissionConfig::default(),
            persist: PersistConfig::default(),
            storage: StorageConfig::default(),
            cluster: ClusterConfig::default(),
            resume: ResumeConfig::default(),
            jobs: JobsConfig::default(),
            webhooks: WebhooksConfig::default(),
            log_format: LogFormat::Text,
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_body_bytes: 1 << 20,
            header_read_timeout_ms: 10_000,
            body_read_timeout_ms: 10_000,
        }
    }
}

impl Default for SwapConfig {
    fn default() -> Self {
        SwapConfig {
            drain_deadline_secs: 30,
            settle_ms: 200,
            max_file_mib: 64,
        }
    }
}

impl Default for SupervisionConfig {
    fn default() -> Self {
        SupervisionConfig {
            max_restarts: 5,
            window_secs: 30,
            backoff_ms: 1000,
            max_backoff_ms: 10_000,
        }
    }
}

impl Config {
    /// Loads the configuration: defaults, then `file` (if any), then the
    /// `BATON_*` variables of `env`, then `flags` (a TOML table of the keys
    /// given on the command line).
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: toml::Table,
    ) -> Result<Config, ConfigError> {
        let file = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Some((path.display().to_string(), text))
            }
            None => None,
        };
        Config::from_sources(file, env, flags)
    }

    /// Like [`Config::load`], with the file already read: `(origin, text)`.
    pub fn from_sources(
        file: Option<(String, String)>,
        env: impl IntoIterator<Item = (String, String)>,
        flags: toml::Table,
    ) -> Result<Config, ConfigError> {
        let mut layers = Vec::new();
        if let Some((origin, text)) = file {
            let table = text.parse::<toml::Table>().map_err(|e| ConfigError::Invalid {
                origin: origin.clone(),
                message: e.to_string(),
            })?;
            layers.push((origin, table));
        }
        layers.push(("environment".to_owned(), env_layer(env)));
        layers.push(("flags".to_owned(), flags));
        Config::from_layers(layers)
    }

    /// Builds the configuration from named layers, later ones winning.
    pub fn from_layers(layers: Vec<(String, toml::Table)>) -> Result<Config, ConfigError> {
        let mut merged = toml::Table::new();
        for (origin, layer) in layers {
            // Check each layer on its own first, so an unknown key is blamed on
            // the layer that has it.
            Config::deserialize(toml::Value::Table(layer.clone())).map_err(|e| ConfigError::Invalid {
                origin: origin.clone(),
                message: e.to_string(),
            })?;
            merge(&mut merged, layer);
        }
        let mut config = Config::deserialize(toml::Value::Table(merged)).map_err(|e| ConfigError::Invalid {
            origin: "configuration".into(),
            message: e.to_string(),
        })?;
        if config.admin_token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            config.admin_token = None;
        }
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: "configuration".into(),
            message,
        };
        self.limits.check(self.runtime.max_memory_mib).map_err(invalid)?;
        for (tenant, o) in &self.tenant_limits {
            self.limits
                .with(o)
                .check(self.runtime.max_memory_mib)
                .map_err(|e| invalid(format!("tenant_limits.{tenant}: {e}")))?;
        }
        if let Some((name, _)) = self
            .admin_tokens
            .iter()
            .find(|(name, token)| !crate::names::is_plugin(name) || token.trim().is_empty())
        {
            return Err(invalid(format!(
                "admin_tokens.{name}: a name of [a-z0-9_-] and a token that is not blank"
            )));
        }
        if self.admin_token.is_none() && self.admin_tokens.is_empty() && !self.admin_listen.ip().is_loopback() {
            return Err(invalid(format!(
                "admin_listen = {} is not a loopback address: set admin_token to expose the admin API",
                self.admin_listen
            )));
        }
        if self.runtime.epoch_tick_ms == 0 || self.runtime.max_instances < 2 {
            return Err(invalid(
                "runtime.epoch_tick_ms must be > 0 and runtime.max_instances at least 2".into(),
            ));
        }
        if self.runtime.compile_memory_mib < 128 || self.runtime.compile_timeout_secs == 0 {
            return Err(invalid(
                "runtime.compile_memory_mib must be at least 128 and runtime.compile_timeout_secs > 0".into(),
            ));
        }
        if self.resume.window_secs == 0 || self.resume.max_bytes == 0 {
            return Err(invalid("resume.window_secs and resume.max_bytes must be > 0".into()));
        }
        if self.admission.new_tenants_per_second == 0 || self.admission.new_tenants_burst == 0 {
            return Err(invalid(
                "admission.new_tenants_per_second and admission.new_tenants_burst must be > 0".into(),
            ));
        }
        if let Some(bad) = self.tenants.iter().find(|t| !crate::names::is_tenant(t)) {
            return Err(invalid(format!("tenants: {bad:?} is not a valid tenant name")));
        }
        if let Some(problem) = self.storage.problem() {
            return Err(invalid(problem));
        }
        let shared = self.storage.backend == StorageBackend::Postgres;
        self.cluster
            .problem(shared)
            .map_or(Ok(()), |problem| Err(invalid(problem)))
    }

    /// The limits of a plugin's instances under `settings` (its
    /// `<name>.toml`), or why they are not acceptable.
    pub fn plugin_limits(&self, settings: &PluginSettings) -> Result<Limits, String> {
        let limits = self.limits.with(&settings.limits);
        limits.check(self.runtime.max_memory_mib)?;
        Ok(limits)
    }

    /// The limits of one tenant's instance of a plugin whose settings are `plugin`.
    pub fn limits_for(&self, plugin: &Limits, tenant: &str) -> Limits {
        match self.tenant_limits.get(tenant) {
            Some(o) => plugin.with(o),
            None => plugin.clone(),
        }
    }

    /// The admin listener's bearer tokens by name (`admin_token` is
    /// `admin`); none: no token is required.
    pub fn admin_tokens(&self) -> Vec<(String, String)> {
        self.admin_token
            .iter()
            .map(|token| ("admin".to_owned(), token.clone()))
            .chain(self.admin_tokens.iter().map(|(n, t)| (n.clone(), t.clone())))
            .collect()
    }

    /// The effective configuration as TOML (for `--print-config`).
    /// The admin token and the passwords of the database and NATS are
    /// redacted.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.admin_token.is_some() {
            shown.admin_token = Some("(redacted)".into());
        }
        for token in shown.admin_tokens.values_mut() {
            *token = "(redacted)".into();
        }
        shown.storage.postgres_url = shown.storage.url_for_display();
        shown.cluster.nats_url = shown.cluster.url_for_display();
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot print: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().expect("valid TOML")
    }

    #[test]
    fn defaults_need_no_layer() {
        let config = Config::from_layers(vec![]).expect("defaults are valid");
        assert_eq!(config, Config::default());
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.admin_listen.to_string(), "127.0.0.1:8081");
        assert_eq!(config.limits.memory_mib, 64);
    }

    #[test]
    fn later_layers_win_key_by_key() {
        let config = Config::from_layers(vec![
            (
                "file".into(),
                table("listen = '0.0.0.0:9000'\n[limits]\nmemory_mib = 32\ncall_timeout_ms = 10"),
            ),
            (
                "environment".into(),
                env_layer([("BATON_LIMITS__MEMORY_MIB".into(), "16".into())]),
            ),
            ("flags".into(), table("listen = '127.0.0.1:1'")),
        ])
        .expect("valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:1");
        assert_eq!(config.limits.memory_mib, 16);
        assert_eq!(config.limits.call_timeout_ms, 10);
    }

    #[test]
    fn unknown_keys_are_named_with_their_layer() {
        let err = Config::from_layers(vec![("baton.toml".into(), table("[limits]\nmemroy_mib = 3"))])
            .expect_err("unknown key");
        let text = err.to_string();
        assert!(text.contains("baton.toml") && text.contains("memroy_mib"), "{text}");

        let err = Config::from_layers(vec![(
            "environment".into(),
            env_layer([("BATON_NOPE".into(), "1".into())]),
        )])
        .expect_err("unknown key");
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn env_values_are_typed_when_they_parse() {
        let t = env_layer([
            ("BATON_DEPLOY_DIR".into(), "/srv/plugins".into()),
            ("BATON_TENANTS".into(), "[\"a\", \"b\"]".into()),
            ("HOME".into(), "/root".into()),
        ]);
        let config = Config::from_layers(vec![("environment".into(), t)]).expect("valid");
        assert_eq!(config.deploy_dir, PathBuf::from("/srv/plugins"));
        assert_eq!(config.tenants, vec!["a".to_owned(), "b".to_owned()]);
    }

    #[test]
    fn public_admin_needs_a_token() {
        let err =
            Config::from_layers(vec![("flags".into(), table("admin_listen = '0.0.0.0:8081'"))]).expect_err("no token");
        assert!(err.to_string().contains("admin_token"), "{err}");
        Config::from_layers(vec![(
            "flags".into(),
            table("admin_listen = '0.0.0.0:8081'\nadmin_token = 's3cret'"),
        )])
        .expect("token given");
    }

    #[test]
    fn a_blank_token_is_no_token_and_a_token_is_never_printed() {
        let err = Config::from_layers(vec![(
            "environment".into(),
            env_layer([
                ("BATON_ADMIN_TOKEN".into(), " ".into()),
                ("BATON_ADMIN_LISTEN".into(), "0.0.0.0:8081".into()),
            ]),
        )])
        .expect_err("a blank token is none");
        assert!(err.to_string().contains("admin_token"), "{err}");
        let config = Config::from_layers(vec![("flags".into(), table("admin_token = 's3cret'"))]).expect("valid");
        let printed = config.to_toml();
        assert!(
            !printed.contains("s3cret") && printed.contains("(redacted)"),
            "{printed}"
        );
    }

    #[test]
    fn limits_above_the_ceiling_are_refused() {
        let err =
            Config::from_layers(vec![("f".into(), table("[limits]\nmemory_mib = 4096"))]).expect_err("above ceiling");
        assert!(err.to_string().contains("max_memory_mib"), "{err}");
    }
}
