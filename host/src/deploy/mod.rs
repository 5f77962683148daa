//! Deploying: turning files into current versions, and taking them back.
//!
//! The [`Deployer`] is the only writer of the registry. A version becomes
//! current only after every check passed, in this order: the file is read
//! whole and hashed; its compiled code is loaded from the artifact cache or
//! compiled by a compiler process under a memory and time budget (see
//! [`crate::compiler`]; at most `runtime.compile_concurrency` at a time); it
//! is linked against the world (imports provided, exports present
//! with the right types); and `init` succeeds in a fresh instance. Any failure
//! leaves the current version serving and is reported: a log line naming the
//! file and the reason, the plugin's `last_error`, and
//! `baton_deploys_total{outcome="failed"}`.
//!
//! Deploys, rollbacks and removals of one plugin are serialized by a
//! per-plugin lock; different plugins proceed in parallel.
//!
//! The deployer also acts on what tenants report:
//! - **Withdrawal**: a deployed version that a tenant cannot migrate to
//!   (`import-state` refused or trapped, `init` failed) is withdrawn: marked
//!   failed and the version before it is made current again, so one tenant's
//!   refusal stops the rollout for all (tenants already moved go back the same
//!   way, and may stay if the older version refuses their state).
//! - **Automatic rollback**: a version whose instances crash-loop while an
//!   earlier version worked is marked failed and the earlier one made current.
//!
//! A version whose settings have a `[rollout]` table reaches some tenants
//! first (`rollout.rs`: canaries, promotion, the health gate, pins), tried
//! beforehand on their live state (`dry_run.rs`). Every change of what runs
//! goes into the audit log (`crate::audit`) with who asked for it.
//!
//! What runs is also kept in the plugin's history file (current version,
//! rollout, pins), so a restart brings back what ran before it: the rollout
//! and pins, and the version that was current rather than a folder file
//! this host rolled back, withdrew or ended as a canary (`pins.rs`). After a
//! handover, only folder files new to the history are deployed.

pub mod artifacts;
mod dry_run;
pub mod folder;
mod outcome;
mod pins;
mod rollout;
pub mod watch;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::audit::{Action, Audit, Record};
use crate::compiler::Compiler;
use crate::config::{Config, PluginSettings};
use crate::instance::Instance;
use crate::registry::{Activation, EventKind, PluginEntry, Registry};
use crate::runtime::{LoadError, Runtime};
use crate::tenant::{Report, TenantShared, Tenants};
use crate::version::{Build, Origin, Version, VersionId};
use artifacts::{Artifacts, CanaryRecord, History, KeptVersion};
pub use outcome::{DeployError, DryRun, InterfaceDiff, Outcome, TenantTrial, Vetted};

/// Held while a plugin changes ([`Deployer::hold`]).
struct Held {
    _thawed: tokio::sync::OwnedRwLockReadGuard<()>,
    _plugin: tokio::sync::OwnedMutexGuard<()>,
}

/// A change of what is deployed from the deploy folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    /// The file at `source` became the current version of `name` (a deploy
    /// from the folder, or a rollback to an earlier version).
    Activated {
        /// The plugin.
        name: String,
        /// The version's bytes: the folder's file, or the kept original.
        source: PathBuf,
        /// Its SHA-256 (hex): a source changed since is not spread.
        sha256: String,
        /// The text of its `<name>.toml` (empty: none).
        settings: String,
    },
    /// `name` was removed.
    Removed {
        /// The plugin.
        name: String,
    },
}

/// Loads, checks, activates, rolls back and removes plugin versions.
pub struct Deployer {
    runtime: Arc<Runtime>,
    registry: Arc<Registry>,
    config: Arc<Config>,
    artifacts: Artifacts,
    compiler: Compiler,
    compiling: Semaphore,
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Held for writing while baton hands over to a new process: deploys,
    /// rollbacks and removals wait meanwhile (see [`Deployer::freeze`]).
    frozen: Arc<tokio::sync::RwLock<()>>,
    /// Told of every file that became current and every removal (a
    /// cluster spreads them to its other nodes).
    published: std::sync::OnceLock<mpsc::UnboundedSender<Published>>,
    /// The tenant tasks (for dry runs, and to name a rollout's tenants).
    tenants: Arc<Tenants>,
    /// Where every change of what runs is recorded.
    audit: Arc<Audit>,
    /// Itself, for the tasks it starts (a rollout's health gate).
    me: std::sync::Weak<Deployer>,
}

/// A checked version, not yet current.
#[derive(Clone)]
struct Candidate {
    version: Arc<Version>,
    settings_text: String,
}

impl Deployer {
    /// A deployer over the host's runtime, registry and tenant tasks,
    /// recording to `audit`.
    pub fn new(
        runtime: Arc<Runtime>,
        registry: Arc<Registry>,
        tenants: Arc<Tenants>,
        audit: Arc<Audit>,
        config: Arc<Config>,
    ) -> std::io::Result<Arc<Deployer>> {
        let engine = runtime.compatibility_hash();
        let artifacts = Artifacts::open(&config.data_dir, engine.clone())?;
        Ok(Arc::new_cyclic(|me| Deployer {
            compiler: Compiler::new(&config.runtime, engine),
            compiling: Semaphore::new(config.runtime.compile_concurrency.get()),
            runtime,
            registry,
            config,
            artifacts,
            locks: Mutex::new(HashMap::new()),
            frozen: Arc::default(),
            published: std::sync::OnceLock::new(),
            tenants,
            audit,
            me: me.clone(),
        }))
    }

    /// The registry entry of `name`, with its persisted history restored the
    /// first time.
    fn entry(&self, name: &str) -> Arc<PluginEntry> {
        if let Some(entry) = self.registry.get(name) {
            return entry;
        }
        let entry = self.registry.entry(name);
        let History {
            generation, records, ..
        } = self.artifacts.history(name);
        entry.restore(generation, records);
        entry
    }

    /// Refuses a plugin the registry never heard of, before a lock is made
    /// for its name (the admin API passes names from its paths).
    fn known(&self, name: &str) -> Result<(), DeployError> {
        match self.registry.get(name) {
            Some(_) => Ok(()),
            None => Err(DeployError::NotFound(format!("no plugin named {name:?}"))),
        }
    }

    /// Holds what a change of `name` needs: the deployer not frozen (see
    /// `frozen`) and `name`'s lock (one change of a plugin at a time).
    async fn hold(&self, name: &str) -> Held {
        let thawed = self.frozen.clone().read_owned().await;
        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(|p| p.into_inner());
            locks.entry(name.to_owned()).or_default().clone()
        };
        Held {
            _thawed: thawed,
            _plugin: lock.lock_owned().await,
        }
    }

    /// Deploys `<deploy-dir>/<name>.wasm` with its `<name>.toml`, if any.
    /// Failures are reported (log, `last_error`, metric) and returned.
    pub async fn deploy_file(&self, name: &str, wasm: &Path) -> Result<Outcome, DeployError> {
        let result = self.try_deploy_file(name, wasm).await;
        if let Err(error) = &result {
            self.report_failure(name, wasm, error).await;
        }
        result
    }

    /// Like [`Deployer::deploy_file`], leaving a failure for the caller to
    /// report (the folder watcher waits to see whether the file is still
    /// being written).
    pub async fn try_deploy_file(&self, name: &str, wasm: &Path) -> Result<Outcome, DeployError> {
        let _held = self.hold(name).await;
        let entry = self.entry(name);
        entry.set_loading(true);
        let result = self.deploy_locked(&entry, wasm).await;
        entry.set_loading(false);
        match &result {
            Ok(Outcome::Activated { version, generation }) => {
                metrics::counter!("baton_deploys_total", "plugin" => name.to_owned(), "outcome" => "activated")
                    .increment(1);
                tracing::info!(plugin = name, %version, generation, file = %wasm.display(), "version activated");
                self.publish_current(&entry, wasm.to_owned());
            }
            Ok(Outcome::Canary { version, generation }) => {
                metrics::counter!("baton_deploys_total", "plugin" => name.to_owned(), "outcome" => "canary")
                    .increment(1);
                tracing::info!(plugin = name, %version, generation, file = %wasm.display(), "deployed as a canary");
                // Spread with its settings: every node starts the same rollout.
                self.publish_canary(&entry, wasm.to_owned());
            }
            Ok(Outcome::Unchanged) => {
                tracing::debug!(plugin = name, file = %wasm.display(), "unchanged, ignored");
            }
            Err(_) => {}
        }
        result
    }

    /// Reports a failed deploy of `wasm`: the current version keeps serving.
    pub async fn report_failure(&self, name: &str, wasm: &Path, error: &DeployError) {
        metrics::counter!("baton_deploys_total", "plugin" => name.to_owned(), "outcome" => "failed").increment(1);
        tracing::error!(plugin = name, file = %wasm.display(), "deploy failed, current version keeps serving: {error}");
        self.entry(name).report_error(
            EventKind::DeployFailed,
            None,
            wasm.display().to_string(),
            error.to_string(),
        );
        let hash = tokio::fs::read(wasm).await.ok().map(|b| VersionId::of(&b).hex());
        let record = Record {
            who: "deploy folder".into(),
            plugin: Some(name.to_owned()),
            version: hash,
            outcome: format!("refused: {error}"),
            ..Record::default()
        };
        self.audit.record(Action::DeployFailed, record).await;
    }

    async fn deploy_locked(&self, entry: &Arc<PluginEntry>, wasm: &Path) -> Result<Outcome, DeployError> {
        let settings_path = wasm.with_extension("toml");
        refuse_links(wasm).await?;
        refuse_links(&settings_path).await?;
        let max = self.config.swap.max_file_mib << 20;
        let size = tokio::fs::metadata(wasm).await.map_or(0, |m| m.len());
        if size > max {
            return Err(DeployError::TooLarge {
                path: wasm.to_owned(),
                size,
                max,
            });
        }
        let bytes = tokio::fs::read(wasm).await.map_err(|source| DeployError::Read {
            path: wasm.to_owned(),
            source,
        })?;
        let settings_text = read_settings(&settings_path).await?;
        let id = VersionId::of(&bytes);
        let running = |version: &Version| {
            version.id == id
                && entry
                    .history()
                    .iter()
                    .rev()
                    .find(|r| r.hash == version.id.hex())
                    .is_some_and(|r| r.settings == settings_text)
        };
        if entry.current().is_some_and(|v| running(&v)) || entry.canary().is_some_and(|c| running(&c.version)) {
            return Ok(Outcome::Unchanged);
        }
        let settings = PluginSettings::parse(&settings_text).map_err(|message| DeployError::Settings {
            path: settings_path.clone(),
            message,
        })?;
        let generation = entry.next_generation();
        let candidate = self
            .prepare(&entry.name, id, Some(bytes), settings, settings_text, generation)
            .await?;
        Ok(self.place(entry, candidate, Activation::Deploy, "deploy folder").await)
    }

    /// Compiles (or loads from cache), links, and checks `init`.
    async fn prepare(
        &self,
        name: &str,
        id: VersionId,
        bytes: Option<Vec<u8>>,
        settings: PluginSettings,
        settings_text: String,
        generation: u64,
    ) -> Result<Candidate, DeployError> {
        let limits = self
            .config
            .plugin_limits(&settings)
            .map_err(|message| DeployError::Settings {
                path: PathBuf::from(format!("{}.toml", name)),
                message,
            })?;
        let started = Instant::now();
        let (component, origin) = self.compiled(id, bytes).await?;
        let load_time = started.elapsed();
        if origin == Origin::Compiled {
            metrics::histogram!("baton_compile_seconds", "plugin" => name.to_owned()).record(load_time.as_secs_f64());
        }
        if self.runtime.imports(&component, "baton:plugin/sql") {
            let missing = if !settings.capabilities.sql {
                Some("the plugin imports baton:plugin/sql: grant it with `[capabilities] sql = true`")
            } else if self.config.storage.postgres_url.is_none() {
                Some("the plugin imports baton:plugin/sql, which needs the host's storage.postgres_url")
            } else {
                None
            };
            if let Some(message) = missing {
                return Err(DeployError::Settings {
                    path: PathBuf::from(format!("{}.toml", name)),
                    message: message.into(),
                });
            }
        }
        if self.runtime.imports(&component, "baton:plugin/outbound-http") && settings.capabilities.http.is_empty() {
            return Err(DeployError::Settings {
                path: PathBuf::from(format!("{}.toml", name)),
                message: "the plugin imports baton:plugin/outbound-http: grant it the URLs it may request with \
                          `[capabilities] http = [\"https://api.example.com\"]`"
                    .into(),
            });
        }
        let pre = self.runtime.prepare(&component)?;
        let seats = self.runtime.seats_for(&component)?;
        // Its tenants need the seats, and a migration to it or a deploy check
        // of it needs them from the reserve.
        let runtime = &self.config.runtime;
        let room = runtime.tenant_instances().min(runtime.migrations_at_once());
        if seats as usize > room {
            return Err(DeployError::Load(LoadError::Pool(format!(
                "one instance needs {seats} seats of the pool, and a migration gets {room} \
                 (runtime.max_instances = {}, runtime.migration_concurrency = {})",
                runtime.max_instances, runtime.migration_concurrency
            ))));
        }
        let build = Build {
            seats,
            plugin: name.to_owned(),
            id,
            generation,
            pre,
            settings,
            limits: limits.clone(),
            origin,
            load_time,
        };
        let drain = std::time::Duration::from_secs(self.config.swap.drain_deadline_secs);
        let version = Arc::new(Version::new(build, drain, self.runtime.ticker().clone()));
        // `init` must succeed in a fresh instance before anyone is moved.
        let check = TenantShared::for_check(name);
        drop(Instance::start(version.clone(), check, Arc::new(limits), 0).await?);
        Ok(Candidate { version, settings_text })
    }

    /// The compiled component of `id`: from the cache, or compiled from
    /// `bytes` (or the stored original) and cached.
    async fn compiled(
        &self,
        id: VersionId,
        bytes: Option<Vec<u8>>,
    ) -> Result<(wasmtime::component::Component, Origin), DeployError> {
        let _permit = self
            .compiling
            .acquire()
            .await
            .map_err(|_| DeployError::Load(LoadError::Compiler("the host is shutting down".into())))?;
        let cached = self.artifacts.compiled_path(&id);
        if cached.exists() {
            let runtime = self.runtime.clone();
            let path = cached.clone();
            match blocking(move || runtime.deserialize(&path)).await {
                Ok(component) => return Ok((component, Origin::Cache)),
                // The artifact is fine; the component is too large for the pool.
                Err(error @ LoadError::Pool(_)) => return Err(error.into()),
                Err(error) => {
                    tracing::warn!(path = %cached.display(), "recompiling: {error}");
                    self.artifacts.discard_compiled(&id);
                }
            }
        }
        let bytes = match bytes {
            Some(bytes) => bytes,
            None => self.artifacts.original(&id).map_err(|source| DeployError::Read {
                path: PathBuf::from(format!("artifacts/{}.wasm", id.hex())),
                source,
            })?,
        };
        let compiling = self.artifacts.compiling_path(&id);
        self.compiler.compile(&bytes, &compiling).await?;
        self.artifacts.store_original(&id, &bytes).map_err(DeployError::Data)?;
        self.artifacts
            .commit_compiled(&id, &compiling)
            .map_err(DeployError::Data)?;
        let runtime = self.runtime.clone();
        let component = blocking(move || runtime.deserialize(&cached)).await?;
        Ok((component, Origin::Compiled))
    }

    fn activate(&self, entry: &PluginEntry, candidate: Candidate, activation: Activation) -> Outcome {
        let Candidate { version, settings_text } = candidate;
        let outcome = Outcome::Activated {
            version: version.id.short(),
            generation: version.generation,
        };
        entry.activate(version, activation, settings_text);
        self.persist(entry);
        outcome
    }

    /// Keeps `entry`'s history, rollout and pins in the data folder.
    fn persist(&self, entry: &PluginEntry) {
        let (generation, records) = entry.snapshot();
        let placement = entry.placement();
        let history = History {
            generation,
            records,
            canary: placement.canary.as_ref().map(|c| CanaryRecord {
                version: KeptVersion::of(&c.version),
                selection: c.selection.clone(),
            }),
            pins: placement
                .pins
                .iter()
                .map(|(tenant, version)| (tenant.clone(), KeptVersion::of(version)))
                .collect(),
        };
        if let Err(e) = self.artifacts.save_history(&entry.name, &history) {
            tracing::warn!(plugin = %entry.name, "cannot save history: {e}");
        }
    }

    /// `baton rollback NAME`, asked by `who`: ends a rollout that runs (its
    /// tenants go back to the current version), or makes the version before
    /// the current one current. With `only_rollout` (a canary's hash), ends
    /// the rollout of that version and nothing else (another node of a
    /// cluster ending the same rollout).
    pub async fn rollback(&self, name: &str, only_rollout: Option<&str>, who: &str) -> Result<Outcome, DeployError> {
        self.known(name)?;
        let _held = self.hold(name).await;
        let entry = self
            .registry
            .get(name)
            .filter(|e| e.current().is_some())
            .ok_or_else(|| DeployError::NotFound(format!("no plugin named {name:?} is deployed")))?;
        let Some(current) = entry.current() else {
            return Err(DeployError::Rollback(format!("{name} is not deployed")));
        };
        if let Some(hash) = only_rollout
            && entry.canary().is_none_or(|c| c.version.id.hex() != hash)
        {
            return Err(DeployError::Rollback(format!(
                "{name} has no rollout of version {hash}"
            )));
        }
        if entry.canary().is_some() {
            let why = "an operator rolled the rollout back";
            return self
                .end_rollout(&entry, Activation::Rollback, why, who)
                .await
                .ok_or_else(|| DeployError::Rollback(format!("{name} has no rollout")));
        }
        let result = self.roll_back_to_previous(&entry, Activation::Rollback).await;
        let mut record = Record {
            who: who.to_owned(),
            plugin: Some(name.to_owned()),
            from: Some(current.id.hex()),
            ..Record::default()
        };
        match &result {
            Ok(_) => {
                entry.mark_rolled_back(&current.id.hex());
                self.persist(&entry);
                if let Some(now) = entry.current() {
                    self.publish_current(&entry, self.artifacts.original_path(&now.id));
                    record.version = Some(now.id.hex());
                }
            }
            Err(e) => record.outcome = format!("failed: {e}"),
        }
        self.audit.record(Action::Rollback, record).await;
        result
    }

    async fn roll_back_to_previous(
        &self,
        entry: &Arc<PluginEntry>,
        activation: Activation,
    ) -> Result<Outcome, DeployError> {
        let target = entry
            .rollback_target(activation != Activation::Rollback)
            .ok_or_else(|| DeployError::Rollback(format!("{} has no previous version to roll back to", entry.name)))?;
        let id = VersionId::parse(&target.hash)
            .ok_or_else(|| DeployError::Rollback(format!("corrupt history record {:?}", target.hash)))?;
        let settings = PluginSettings::parse(&target.settings).map_err(|message| DeployError::Settings {
            path: PathBuf::from(format!("{}.toml", entry.name)),
            message,
        })?;
        let generation = entry.next_generation();
        let candidate = self
            .prepare(&entry.name, id, None, settings, target.settings.clone(), generation)
            .await?;
        let outcome = self.activate(entry, candidate, activation);
        tracing::warn!(plugin = %entry.name, ?activation, ?outcome, "rolled back");
        Ok(outcome)
    }

    /// Sends every later [`Published`] change to `to`.
    pub fn publish_to(&self, to: mpsc::UnboundedSender<Published>) {
        let _ = self.published.set(to);
    }

    /// Tells whoever listens that `entry`'s current version, whose bytes
    /// are at `source`, is the one to run.
    fn publish_current(&self, entry: &PluginEntry, source: PathBuf) {
        if let Some(current) = entry.current() {
            self.publish_version(entry, &current, source);
        }
    }

    /// As [`Deployer::publish_current`], for the canary of a rollout.
    fn publish_canary(&self, entry: &PluginEntry, source: PathBuf) {
        if let Some(canary) = entry.canary() {
            self.publish_version(entry, &canary.version, source);
        }
    }

    fn publish_version(&self, entry: &PluginEntry, version: &Version, source: PathBuf) {
        let hash = version.id.hex();
        let settings = entry
            .history()
            .into_iter()
            .rev()
            .find(|r| r.hash == hash)
            .map(|r| r.settings);
        self.publish(Published::Activated {
            name: entry.name.clone(),
            source,
            sha256: hash,
            settings: settings.unwrap_or_default(),
        });
    }

    fn publish(&self, change: Published) {
        if let Some(to) = self.published.get() {
            let _ = to.send(change);
        }
    }

    /// Removes `name`: no new sessions; its tenants drain, then close.
    pub async fn remove(&self, name: &str) {
        let _held = self.hold(name).await;
        if let Some(entry) = self.registry.get(name)
            && entry.current().is_some()
        {
            let from = entry.current().map(|v| v.id.hex());
            entry.end_canary(EventKind::Removed, "the plugin was removed".into());
            entry.remove();
            tracing::info!(
                plugin = name,
                "plugin removed; its sessions close after the drain deadline"
            );
            self.publish(Published::Removed { name: name.to_owned() });
            self.persist(&entry);
            let record = Record {
                who: "deploy folder".into(),
                plugin: Some(name.to_owned()),
                from,
                ..Record::default()
            };
            self.audit.record(Action::Remove, record).await;
        }
    }

    /// Acts on what tenants report, in order, until every sender is gone.
    pub fn handle_reports(self: &Arc<Self>, mut reports: mpsc::UnboundedReceiver<Report>) -> JoinHandle<()> {
        let deployer = self.clone();
        tokio::spawn(async move {
            while let Some(report) = reports.recv().await {
                deployer.handle(report).await;
            }
        })
    }

    /// Acts on a tenant's report (withdrawal, automatic rollback).
    async fn handle(&self, report: Report) {
        let (entry, generation, activation, why) = match report {
            Report::MigrationFailed {
                plugin,
                tenant,
                generation,
                from,
                reason,
            } => {
                // Only a move forward from the version this one replaced is
                // the deploy's (or the rollout's) doing: a tenant that cannot
                // go back after a rollout ends, or forward from a pin, stays
                // where it is, reported, and the version serves the others.
                let backwards = from >= generation;
                let not_from_replaced = matches!(
                    (plugin.replaced(generation), plugin.hash_of(from)),
                    (Some(replaced), Some(ran)) if replaced != ran
                );
                if backwards || not_from_replaced {
                    return;
                }
                (
                    plugin,
                    generation,
                    Activation::Withdrawal,
                    format!("tenant {tenant} could not migrate: {reason}"),
                )
            }
            Report::CrashLoop {
                plugin,
                tenant,
                generation,
            } => (
                plugin,
                generation,
                Activation::AutoRollback,
                format!("crash loop in tenant {tenant}"),
            ),
        };
        let _held = self.hold(&entry.name).await;
        if entry.canary().is_some_and(|c| c.version.generation == generation) {
            // A canary that fails: its tenants go back, nobody else ever ran it.
            self.end_rollout(&entry, activation, &why, "baton").await;
            return;
        }
        let Some(current) = entry.current().filter(|v| v.generation == generation) else {
            return; // Already dealt with, or superseded.
        };
        if activation == Activation::Withdrawal
            && !matches!(
                entry.activation_of(generation),
                Some(Activation::Deploy | Activation::Promote)
            )
        {
            // Only forward rollouts are withdrawn; a rollback that a tenant
            // refuses leaves that tenant where it is.
            return;
        }
        // Marked before anything else, so that whoever sees the rollback also
        // sees why.
        entry.mark_failed(&current.id.hex(), &why);
        let what = format!("version {} (generation {generation})", current.id.short());
        let kind = EventKind::from(activation);
        entry.report_error(
            kind,
            Some(current.id.short()),
            what.clone(),
            format!("{why}; rolling back to the previous version"),
        );
        let rolled = self.roll_back_to_previous(&entry, activation).await;
        if let Err(error) = &rolled {
            let consequence = match activation {
                Activation::Withdrawal => "the tenant stays on its version",
                _ => "the tenant is backing off",
            };
            entry.report_error(
                kind,
                Some(current.id.short()),
                what,
                format!("{why}; cannot roll back ({error}), so {consequence}"),
            );
        }
        self.persist(&entry);
        let record = Record {
            who: "baton".into(),
            plugin: Some(entry.name.clone()),
            version: entry.current().map(|v| v.id.hex()),
            from: Some(current.id.hex()),
            outcome: rolled.err().map(|e| format!("failed: {e}")).unwrap_or_default(),
            detail: why,
            ..Record::default()
        };
        let action = match activation {
            Activation::Withdrawal => Action::Withdrawal,
            _ => Action::AutoRollback,
        };
        self.audit.record(action, record).await;
    }

    /// Stops every deploy, rollback and removal until the guard is dropped
    /// (they wait, they do not fail): what a handover to a new process
    /// holds, so that the versions it hands over stay the current ones.
    pub async fn freeze(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.frozen.clone().write_owned().await
    }

    /// In a process taking over from another: loads version `hash` of
    /// `name` (from the compiled-artifact cache, or compiled from the kept
    /// original) with the generation it had there and the settings its
    /// history records. As `current`, it becomes the plugin's current
    /// version; otherwise it is listed as live (a tenant is on it).
    pub async fn adopt(
        &self,
        name: &str,
        hash: &str,
        generation: u64,
        current: bool,
    ) -> Result<Arc<Version>, DeployError> {
        let entry = self.entry(name);
        let id = VersionId::parse(hash).ok_or_else(|| DeployError::Invalid(format!("bad version hash {hash:?}")))?;
        let settings_text = entry
            .history()
            .into_iter()
            .rev()
            .find(|r| r.hash == hash)
            .map(|r| r.settings)
            .unwrap_or_default();
        let settings = PluginSettings::parse(&settings_text).map_err(|message| DeployError::Settings {
            path: PathBuf::from(format!("{name}.toml")),
            message,
        })?;
        let candidate = self
            .prepare(&entry.name, id, None, settings, settings_text, generation)
            .await?;
        match current {
            true => entry.adopt(Some(candidate.version.clone()), Vec::new(), None),
            false => entry.add_live(&candidate.version),
        }
        Ok(candidate.version)
    }

    /// The registry entry of `name` (restoring its persisted history).
    pub fn plugin(&self, name: &str) -> Arc<PluginEntry> {
        self.entry(name)
    }

    /// Deploys every `*.wasm` of the deploy folder (at start). Invalid files
    /// are reported and skipped.
    pub async fn deploy_all(self: &Arc<Self>) {
        self.deploy_folder(false).await;
    }

    /// Deploys the files of the deploy folder that no version in their
    /// plugin's history came from: after a handover, what was dropped while
    /// the old process no longer watched (the others it had dealt with).
    pub async fn deploy_unseen(self: &Arc<Self>) {
        self.deploy_folder(true).await;
    }

    async fn deploy_folder(self: &Arc<Self>, unseen_only: bool) {
        let dir = &self.config.deploy_dir;
        let files = match folder::plugin_files(dir) {
            Ok(files) => files,
            Err(e) => {
                tracing::warn!(dir = %dir.display(), "cannot read the deploy folder: {e}");
                return;
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        for (name, path) in files {
            let deployer = self.clone();
            tasks.spawn(async move {
                // After a handover the old process's versions (and pins and
                // rollouts) are in place already; at a start, what ran comes
                // back from the history first.
                let deploy = match unseen_only {
                    true => !deployer.seen(&name, &path).await,
                    false => deployer.start_from_history(&name, &path).await,
                };
                if deploy {
                    let _ = deployer.deploy_file(&name, &path).await;
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    }
}

impl Deployer {
    /// Whether a version of `name` in its history came from the file at `path`.
    async fn seen(&self, name: &str, path: &Path) -> bool {
        let Ok(bytes) = tokio::fs::read(path).await else {
            return false;
        };
        let hash = VersionId::of(&bytes).hex();
        self.entry(name).history().iter().any(|r| r.hash == hash)
    }
}

/// Refuses a symbolic link at `path` (an absent file is fine).
/// The text of a plugin's `<name>.toml`: empty when there is none.
async fn read_settings(path: &Path) -> Result<String, DeployError> {
    match tokio::fs::read_to_string(path).await {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(DeployError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

async fn refuse_links(path: &Path) -> Result<(), DeployError> {
    match tokio::fs::symlink_metadata(path).await {
        Ok(meta) if meta.file_type().is_symlink() => Err(DeployError::Link { path: path.to_owned() }),
        _ => Ok(()),
    }
}

/// Runs blocking work (compiling, loading code) off the async runtime.
async fn blocking<T: Send + 'static, E: From<LoadError> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(E::from(LoadError::Compile(format!("compiler thread failed: {e}")))))
}
