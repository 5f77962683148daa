//! Pins (`baton pin NAME TENANT [VERSION]`, `baton unpin`): a tenant held on
//! a version through deploys, rollouts, rollbacks and restarts (a customer
//! in its quarter-end freeze). A pinned version stays loaded while a tenant
//! is pinned to it; pins are kept with the plugin's history.
//!
//! Also what comes back from that history at a start
//! ([`Deployer::start_from_history`]) or after a handover: pins, a rollout
//! that was running (with its gate), and the version that was current when
//! the folder's file is one this host rolled back. Placement goes in before
//! the current version, so that no tenant starts where it should not run.

use std::path::Path;
use std::sync::Arc;

use crate::audit::{Action, Record};
use crate::deploy::artifacts::History;
use crate::deploy::{DeployError, Deployer};
use crate::registry::{Activation, Canary, Placement, PluginEntry};
use crate::version::{Version, VersionId};

impl Deployer {
    /// Holds `tenant` of `name` on `version` (a hash, or its first digits,
    /// or a generation; by default the version it runs now, else the
    /// current one), asked by `who`.
    pub async fn pin(
        &self,
        name: &str,
        tenant: &str,
        version: Option<&str>,
        who: &str,
    ) -> Result<Arc<Version>, DeployError> {
        if !crate::names::is_tenant(tenant) {
            return Err(DeployError::Invalid(format!("{tenant:?} is not a tenant name")));
        }
        self.known(name)?;
        let _held = self.hold(name).await;
        let entry = self
            .registry
            .deployed(name)
            .ok_or_else(|| DeployError::NotFound(format!("no plugin named {name:?} is deployed")))?;
        let version = match version {
            Some(wanted) => self.find_version(&entry, wanted).await?,
            None => self
                .running_version(&entry, tenant)
                .or_else(|| entry.current())
                .ok_or_else(|| DeployError::Rollback(format!("{name} is not deployed")))?,
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
        self.known(name)?;
        let _held = self.hold(name).await;
        let entry = self
            .registry
            .get(name)
            .ok_or_else(|| DeployError::NotFound(format!("no plugin named {name:?}")))?;
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
            .ok_or_else(|| DeployError::NotFound(format!("{} has no version {wanted:?}", entry.name)))?;
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
            .ok_or_else(|| DeployError::NotFound(format!("{} has no version {hash}", entry.name)))?;
        let id = VersionId::parse(hash).ok_or_else(|| DeployError::Invalid(format!("bad version hash {hash:?}")))?;
        let settings =
            crate::config::PluginSettings::parse(&record.settings).map_err(|message| DeployError::Settings {
                path: format!("{}.toml", entry.name).into(),
                message,
            })?;
        let candidate = self
            .prepare(
                &entry.name,
                id,
                None,
                settings,
                record.settings.clone(),
                record.generation,
            )
            .await?;
        entry.add_live(&candidate.version);
        Ok(candidate.version)
    }

    /// At a start, before the folder's file of `name` is deployed: the
    /// pins that were in place come back, and when the file is one this host
    /// ran but did not keep (the canary of a rollout that was running, a
    /// canary that ended without promotion, a version rolled back or
    /// withdrawn), the version that was current comes back instead of the
    /// file going to every tenant (with the rollout that was running, if the
    /// file is its canary). Placement goes in before the current version, so
    /// that no tenant starts on a version it should not run. `true` when the
    /// folder's file is to be deployed.
    pub(super) async fn start_from_history(&self, name: &str, path: &Path) -> bool {
        let _held = self.hold(name).await;
        let entry = self.entry(name);
        let kept = self.artifacts.history(name);
        let Ok(bytes) = tokio::fs::read(path).await else {
            return true; // The deploy reports it.
        };
        let hash = VersionId::of(&bytes).hex();
        let running_canary = kept.canary.as_ref().is_some_and(|c| c.version.hash == hash);
        let not_kept = kept
            .records
            .iter()
            .rev()
            .find(|r| r.hash == hash)
            .is_some_and(|r| r.failed.is_some() || r.rolled_back || r.activation == Activation::Canary);
        let base = match running_canary || not_kept {
            true => kept
                .records
                .iter()
                .rev()
                .find(|r| r.activation.is_current() && r.hash != hash && r.failed.is_none() && !r.rolled_back)
                .cloned(),
            false => None,
        };
        let base = match base {
            Some(record) => match self.load_version(&entry, &record.hash, Some(record.generation)).await {
                Ok(version) => Some(version),
                Err(e) => {
                    tracing::warn!(plugin = name, "the version that was current cannot be loaded: {e}");
                    None
                }
            },
            None => None,
        };
        let placement = self
            .kept_placement(&entry, &kept, running_canary && base.is_some())
            .await;
        self.install_placement(&entry, placement).await;
        let Some(base) = base else {
            return true;
        };
        if !running_canary {
            tracing::warn!(
                plugin = name,
                file = %path.display(),
                "the folder's file is a version this host rolled back or withdrew; version {} (generation {}) \
                 serves, as before the restart; drop a new file to deploy",
                base.id.short(),
                base.generation
            );
        }
        entry.adopt(Some(base), Vec::new(), None);
        self.resume_gate(&entry);
        false
    }

    /// After a handover, once the old process's current version is adopted:
    /// its pins and rollout (kept in the history it wrote), before any
    /// tenant is installed.
    pub async fn restore_after_handover(&self, name: &str) {
        let entry = self.entry(name);
        let kept = self.artifacts.history(name);
        let with_canary = match (&kept.canary, entry.current()) {
            (Some(canary), Some(current)) => canary.version.hash != current.id.hex(),
            _ => false,
        };
        let placement = self.kept_placement(&entry, &kept, with_canary).await;
        self.install_placement(&entry, placement).await;
        self.resume_gate(&entry);
    }

    /// The pins `kept` in a plugin's history, and `with_canary` its rollout,
    /// their versions loaded. A pin whose version cannot be loaded any more
    /// is dropped, with a log line and an audit entry.
    async fn kept_placement(&self, entry: &PluginEntry, kept: &History, with_canary: bool) -> Placement {
        let mut placement = Placement::default();
        if let Some(canary) = kept.canary.as_ref().filter(|_| with_canary) {
            match self
                .load_version(entry, &canary.version.hash, Some(canary.version.generation))
                .await
            {
                Ok(version) => {
                    placement.canary = Some(Canary {
                        version,
                        selection: canary.selection.clone(),
                        since_ms: crate::clock::unix_ms(),
                    });
                }
                Err(e) => tracing::warn!(plugin = %entry.name, "the rollout that ran is not resumed: {e}"),
            }
        }
        for (tenant, pinned) in &kept.pins {
            match self.load_version(entry, &pinned.hash, Some(pinned.generation)).await {
                Ok(version) => {
                    placement.pins.insert(tenant.clone(), version);
                }
                Err(e) => {
                    tracing::error!(plugin = %entry.name, %tenant, "a pin is dropped: its version cannot be loaded: {e}");
                    let record = Record {
                        who: "baton".into(),
                        plugin: Some(entry.name.clone()),
                        version: Some(pinned.hash.clone()),
                        tenants: vec![tenant.clone()],
                        outcome: "failed".into(),
                        detail: format!("the pinned version cannot be loaded: {e}"),
                        ..Record::default()
                    };
                    self.audit.record(Action::Unpin, record).await;
                }
            }
        }
        placement
    }

    /// Puts `placement` in place (and in the history) if it holds anything.
    async fn install_placement(&self, entry: &PluginEntry, placement: Placement) {
        if placement.canary.is_none() && placement.pins.is_empty() {
            return;
        }
        tracing::info!(
            plugin = %entry.name,
            rollout = placement.canary.is_some(),
            pins = placement.pins.len(),
            "the rollout and pins that ran are back"
        );
        entry.restore_placement(placement);
        self.persist(entry);
    }

    /// Starts the health gate of `entry`'s automatic rollout, if one runs.
    fn resume_gate(&self, entry: &Arc<PluginEntry>) {
        let Some(canary) = entry.canary() else { return };
        if let Some(plan) = canary.version.settings.rollout.clone().filter(|r| r.auto) {
            self.start_gate(entry, canary.version.generation, plan);
        }
    }
}
