//! Dry runs: a version tried on the live state of a plugin's tenants without
//! switching anyone (`baton check FILE --against NAME`, and before every
//! step of a rollout); and a file vetted before `baton deploy` places it
//! ([`Deployer::vet`]).
//!
//! Each tenant with a task exports the state of its live (or hibernated)
//! instance, and a scratch instance of the version runs `init` and
//! `import-state` on it, then is dropped (`Command::Try`). The scratch
//! instance is the deploy check's: no sessions, no storage, no SQL (every
//! such call answers `unavailable`), so trying has no effect on anything.
//! Tenants are tried a few at a time (`runtime.migration_concurrency`),
//! each scratch instance taking a slot of the pool's reserve.
//!
//! Beside the tenants' verdicts, a check reports how the file's interface
//! differs from the current version's: imports and exports added or
//! removed, and capabilities it needs that the plugin's settings do not
//! grant.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use crate::deploy::{DeployError, Deployer, DryRun, InterfaceDiff, TenantTrial, Vetted};
use crate::registry::PluginEntry;
use crate::tenant::{Command, Trial};
use crate::version::{Version, VersionId};

/// How long one tenant's trial may take.
const TRIAL_WITHIN: Duration = Duration::from_secs(30);

impl Deployer {
    /// Tries `version` on the live state of `tenants` of `entry` (those
    /// with a task; the others have no live state), a few at a time.
    pub(super) async fn try_tenants(&self, entry: &PluginEntry, version: &Arc<Version>, tenants: &[String]) -> DryRun {
        let handles: Vec<_> = self
            .tenants
            .of_plugin(&entry.name)
            .into_iter()
            .filter(|h| tenants.contains(&h.shared().name))
            .collect();
        let trials = futures_util::stream::iter(handles.into_iter().map(|handle| {
            let version = version.clone();
            async move {
                let tenant = handle.shared().name.clone();
                let (reply, answer) = tokio::sync::oneshot::channel();
                // The whole exchange is bounded: a tenant whose mailbox is
                // full (waiting for a seat in the pool, say) is skipped
                // rather than holding up the deploy lock.
                let asked = async {
                    handle
                        .mailbox()
                        .send(Command::Try { version, reply })
                        .await
                        .map_err(|_| "its task ended".to_owned())?;
                    answer.await.map_err(|_| "its task ended".to_owned())
                };
                let trial = tokio::time::timeout(TRIAL_WITHIN, asked)
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {} s", TRIAL_WITHIN.as_secs())))
                    .unwrap_or_else(Trial::Skipped);
                let (outcome, detail) = trial.parts();
                TenantTrial {
                    tenant,
                    outcome: outcome.to_owned(),
                    detail,
                }
            }
        }))
        .buffer_unordered(self.config.runtime.migrations_at_once().max(1))
        .collect::<Vec<_>>()
        .await;
        let mut trials = trials;
        trials.sort_by(|a, b| a.tenant.cmp(&b.tenant));
        DryRun {
            version: version.id.hex(),
            tenants: trials,
            interface: None,
        }
    }

    /// `baton deploy`, before it places a file: checks `bytes` as a version
    /// of `name` with the settings of the deploy folder, as the deploy will
    /// (compile, link, `init` in a fresh instance), without activating it.
    /// The compile lands in the artifact cache, so the deploy that follows
    /// loads it instead of compiling again. Returns its interface.
    pub async fn vet(&self, name: &str, bytes: Vec<u8>) -> Result<Vetted, DeployError> {
        if !crate::names::is_plugin(name) {
            return Err(DeployError::Invalid(format!("{name:?} is not a plugin name")));
        }
        let max = self.config.swap.max_file_mib << 20;
        if bytes.len() as u64 > max {
            return Err(DeployError::TooLarge {
                path: format!("{name}.wasm").into(),
                size: bytes.len() as u64,
                max,
            });
        }
        let settings_path = self.config.deploy_dir.join(format!("{name}.toml"));
        super::refuse_links(&settings_path).await?;
        let settings_text = super::read_settings(&settings_path).await?;
        let settings =
            crate::config::PluginSettings::parse(&settings_text).map_err(|message| DeployError::Settings {
                path: settings_path,
                message,
            })?;
        let id = VersionId::of(&bytes);
        let candidate = self.prepare(name, id, Some(bytes), settings, settings_text, 0).await?;
        let (imports, exports) = self.runtime.interface(candidate.version.pre.instance_pre().component());
        Ok(Vetted {
            hash: id.hex(),
            seats: candidate.version.seats,
            imports: imports.into_iter().collect(),
            exports: exports.into_iter().collect(),
        })
    }

    /// `baton check FILE --against NAME`: checks `bytes` as a version of
    /// `name` (compiled once: a deploy of the same file later loads it from
    /// the cache) with the plugin's current settings, tries it on the live
    /// state of every tenant with a task, and compares its interface with
    /// the current version's. Switches nobody.
    pub async fn check_against(&self, name: &str, bytes: Vec<u8>) -> Result<DryRun, DeployError> {
        let entry = self
            .registry
            .deployed(name)
            .ok_or_else(|| DeployError::NotFound(format!("no plugin named {name:?} is deployed")))?;
        let current = entry
            .current()
            .ok_or_else(|| DeployError::Rollback(format!("{name} is not deployed")))?;
        let settings_text = entry.last_record().map(|r| r.settings).unwrap_or_default();
        let settings =
            crate::config::PluginSettings::parse(&settings_text).map_err(|message| DeployError::Settings {
                path: format!("{name}.toml").into(),
                message,
            })?;
        let id = VersionId::of(&bytes);
        // A capability the settings do not grant is reported below, not
        // refused: the check is about the file.
        let mut lenient = settings.clone();
        lenient.capabilities.sql |= self.config.storage.postgres_url.is_some();
        if lenient.capabilities.http.is_empty() {
            // A stand-in sends no request (`imports::outbound_http`), and
            // `.invalid` never resolves.
            lenient.capabilities.http = vec!["https://dry-run.invalid".into()];
        }
        let candidate = self.prepare(name, id, Some(bytes), lenient, settings_text, 0).await?;
        let tenants: Vec<String> = self
            .tenants
            .of_plugin(name)
            .into_iter()
            .map(|t| t.shared().name.clone())
            .collect();
        let mut report = self.try_tenants(&entry, &candidate.version, &tenants).await;
        report.interface = Some(self.interface_diff(&current, &candidate.version, &settings));
        Ok(report)
    }

    fn interface_diff(
        &self,
        current: &Version,
        candidate: &Version,
        settings: &crate::config::PluginSettings,
    ) -> InterfaceDiff {
        let (old_imports, old_exports) = self.runtime.interface(current.pre.instance_pre().component());
        let (new_imports, new_exports) = self.runtime.interface(candidate.pre.instance_pre().component());
        let minus = |a: &BTreeSet<String>, b: &BTreeSet<String>| a.difference(b).cloned().collect::<Vec<_>>();
        let mut capabilities_missing = Vec::new();
        if new_imports.iter().any(|i| i.starts_with("baton:plugin/sql")) && !settings.capabilities.sql {
            capabilities_missing.push("sql (`[capabilities] sql = true`)".to_owned());
        }
        if new_imports.iter().any(|i| i.starts_with("baton:plugin/outbound-http"))
            && settings.capabilities.http.is_empty()
        {
            capabilities_missing.push("outbound HTTP (`[capabilities] http = [\"https://...\"]`)".to_owned());
        }
        InterfaceDiff {
            imports_added: minus(&new_imports, &old_imports),
            imports_removed: minus(&old_imports, &new_imports),
            exports_added: minus(&new_exports, &old_exports),
            exports_removed: minus(&old_exports, &new_exports),
            capabilities_missing,
        }
    }
}
