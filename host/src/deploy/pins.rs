//! Pins (`baton pin NAME TENANT [VERSION]`, `baton unpin`): a tenant held on
//! a version through deploys, rollouts, rollbacks and restarts (a customer
//! in its quarter-end freeze). A pinned version stays loaded while a tenant
//! is pinned to it; pins are kept with the plugin's history and come back
//! at the next start, as does a rollout that was running.

use std::sync::Arc;

use crate::audit::{Action, Record};
use crate::deploy::artifacts::History;
use crate::deploy::{DeployError, Deployer};
use crate::registry::{Canary, PluginEntry};
use crate::version::{Version, VersionId};

impl Deployer {
    /// Holds `tenant` of `name` on `version` (a hash, or its first digits,
    /// or a generation; by default the version it runs now, else the
    /// current one), asked by `who`.
    pub async fn pin(&self, name: &str, tenant: &str, version: Option<&str>, who: &str) -> Result<Arc<Version>, DeployError> {
        if !crate::names::is_tenant(tenant) {
            return Err(DeployError::Rollback(format!("{tenant:?} is not a tenant name")));
        }
        let _thawed = self.frozen.read().await;
        let lock = self.lock(name);
        let _guard = lock.lock().await;
        let entry = self
            .registry
            .deployed(name)
            .ok_or_else(|| DeployError::Rollback(format!("no plugin named {name:?} is deployed")))?;
        let version = match version {
            Some(wanted) => self.find_version(&entry, wanted).await?,
            None => self.running_version(&entry, tenant).or_else(|| entry.current()).ok_or_else(|| {
                DeployError::Rollback(format!("{name} is not deployed"))
            })?,
        };
        entry.pin(tenant, version.clone());
        self.persist(&entry);
        let record = Record {
            who: who.to_owned(),
            plugin: Some(name.to_owned()),
            version: Some(version.id.hex()),
            tenants: vec![tenant.to_owned()],
            detail: format!("generation {}", version.generation),
            ..Record::default()
        };
        self.audit.record(Action::Pin, record).await;
        Ok(version)
    }

    /// Lets `tenant` of `name` follow deploys again, asked by `who`;
    /// `false` if it was not pinned.
    pub async fn unpin(&self, name: &str, tenant: &str, who: &str) -> Result<bool, DeployError> {
        let _thawed = self.frozen.read().await;
        let lock = self.lock(name);
        let _guard = lock.lock().await;
        let entry = self
            .registry
            .get(name)
            .ok_or_else(|| DeployError::Rollback(format!("no plugin named {name:?}")))?;
        let was = entry.placement().pins.get(tenant).map(|v| v.id.hex());
        if !entry.unpin(tenant) {
            return Ok(false);
        }
        self.persist(&entry);
        let record = Record {
            who: who.to_owned(),
            plugin: Some(name.to_owned()),
            version: was,
            tenants: vec![tenant.to_owned()],
            ..Record::default()
        };
        self.audit.record(Action::Unpin, record).await;
        Ok(true)
    }

    /// The version `tenant`'s task runs now, if it has one.
    fn running_version(&self, entry: &PluginEntry, tenant: &str) -> Option<Arc<Version>> {
        let generation = self.tenants.get(&entry.name, tenant)?.shared().generation();
        entry.live_versions().into_iter().find(|v| v.generation == generation)
    }

    /// A version of `entry` by hash (or its first digits) or generation: a
    /// live one, else loaded from the artifact cache with the settings its
    /// history records.
    async fn find_version(&self, entry: &PluginEntry, wanted: &str) -> Result<Arc<Version>, DeployError> {
        let history = entry.history();
        let record = history
            .iter()
            .rev()
            .find(|r| {
                r.hash.starts_with(&wanted.to_ascii_lowercase()) && wanted.len() >= 6
                    || wanted.parse::<u64>().is_ok_and(|g| g == r.generation)
            })
            .cloned()
            .ok_or_else(|| DeployError::Rollback(format!("{} has no version {wanted:?}", entry.name)))?;
        self.load_version(entry, &record.hash, Some(record.generation)).await
    }

    /// Version `hash` of `entry`: a live one, else loaded from the artifact
    /// cache (or compiled from the kept original) with the settings of its
    /// history record of `generation` (by default its newest).
    pub(super) async fn load_version(
        &self,
        entry: &PluginEntry,
        hash: &str,
        generation: Option<u64>,
    ) -> Result<Arc<Version>, DeployError> {
        if let Some(live) = entry.live_versions().into_iter().find(|v| v.id.hex() == hash) {
            return Ok(live);
        }
        let history = entry.history();
        let of_hash = || history.iter().rev().filter(|r| r.hash == hash);
        let record = of_hash()
            .find(|r| generation.is_none_or(|g| r.generation == g))
            .or_else(|| of_hash().next())
            .cloned()
            .ok_or_else(|| DeployError::Rollback(format!("{} has no version {hash}", entry.name)))?;
        let id = VersionId::parse(hash).ok_or_else(|| DeployError::Rollback(format!("bad version hash {hash:?}")))?;
        let settings = crate::config::PluginSettings::parse(&record.settings).map_err(|message| {
            DeployError::Settings {
                path: format!("{}.toml", entry.name).into(),
                message,
            }
        })?;
        let candidate = self
            .prepare(entry, id, None, settings, record.settings.clone(), record.generation)
            .await?;
        entry.add_live(&candidate.version);
        Ok(candidate.version)
    }

    /// At a start (or after a handover): the pins the plugin's history
    /// `kept`, and `with_canary` the rollout it kept, back in place over its
    /// current version; a version that cannot be loaded any more is left
    /// out, with a log line.
    pub(super) async fn restore_placement(&self, entry: &Arc<PluginEntry>, kept: History, with_canary: bool) {
        let History { canary, pins, .. } = kept;
        let mut restored = crate::registry::Placement::default();
        if let Some(kept) = canary.filter(|_| with_canary)
            && entry.current().is_some_and(|c| c.id.hex() != kept.version.hash)
        {
            match self.load_version(entry, &kept.version.hash, Some(kept.version.generation)).await {
                Ok(version) => {
                    restored.canary = Some(Canary {
                        version,
                        selection: kept.selection,
                        since_ms: crate::clock::unix_ms(),
                    });
                }
                Err(e) => tracing::warn!(plugin = %entry.name, "the rollout that ran is not resumed: {e}"),
            }
        }
        for (tenant, kept) in pins {
            match self.load_version(entry, &kept.hash, Some(kept.generation)).await {
                Ok(version) => {
                    restored.pins.insert(tenant, version);
                }
                Err(e) => tracing::warn!(plugin = %entry.name, %tenant, "a pin is not restored: {e}"),
            }
        }
        let auto = restored
            .canary
            .as_ref()
            .and_then(|c| c.version.settings.rollout.clone().filter(|r| r.auto).map(|r| (c.version.generation, r)));
        if restored.canary.is_some() || !restored.pins.is_empty() {
            entry.restore_placement(restored);
            self.persist(entry);
            tracing::info!(plugin = %entry.name, "the rollout and pins that ran are back");
        }
        if let Some((generation, plan)) = auto {
            self.start_gate(entry, generation, plan);
        }
    }
}
