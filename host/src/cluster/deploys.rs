//! Deploys across the cluster: a plugin file dropped on any node (or
//! `baton deploy`ed to it) reaches every node.
//!
//! A file that became current from a node's deploy folder goes into the
//! object store `baton_artifacts` (named by its SHA-256) and its record
//! into the bucket `baton_versions` (`{plugin}` → hash and settings). Every
//! node watches the bucket and writes a version it does not run into its
//! own deploy folder, settings first, the file by rename, so its folder
//! watcher deploys it with every check, as if it had been dropped there: a
//! node that cannot compile it reports so and keeps its previous version.
//! Each node migrates the tenants it owns. A rollback is spread the same
//! way (the version rolled back to becomes the record). A removal deletes
//! the record and the file on every node. A node that joins writes the cluster's versions
//! into its folder before it scans it, so a stale file there cannot
//! overwrite what the cluster runs.

use std::path::{Path, PathBuf};

use async_nats::jetstream::{kv, object_store};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;

use crate::deploy::Published;
use crate::version::VersionId;

/// A plugin's current version, as the cluster records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// SHA-256 of the file, hex: its name in the object store.
    pub sha256: String,
    /// The text of its `<name>.toml`, if it had one.
    pub settings: Option<String>,
    /// The node it was deployed on.
    pub from: String,
}

/// Where the cluster keeps versions, and this node's deploy folder.
pub struct Deploys {
    /// `baton_versions`.
    pub versions: kv::Store,
    /// `baton_artifacts`.
    pub artifacts: object_store::ObjectStore,
    /// This node's deploy folder.
    pub folder: PathBuf,
    /// This node's name.
    pub node: String,
}

impl Deploys {
    /// Opens the bucket and the object store, creating them if need be.
    pub async fn open(js: &async_nats::jetstream::Context, folder: PathBuf, node: String) -> anyhow::Result<Deploys> {
        let versions = super::members::bucket(js, "baton_versions", std::time::Duration::ZERO)
            .await
            .map_err(|e| anyhow::anyhow!("cannot open the NATS bucket baton_versions: {e}"))?;
        let artifacts = match js.get_object_store("baton_artifacts").await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: "baton_artifacts".into(),
                    ..Default::default()
                })
                .await
                .map_err(|e| anyhow::anyhow!("cannot create the NATS object store baton_artifacts: {e}"))?,
        };
        Ok(Deploys {
            versions,
            artifacts,
            folder,
            node,
        })
    }

    /// Writes every version the cluster records into the deploy folder.
    pub async fn pull_all(&self) -> anyhow::Result<()> {
        let mut keys = self.versions.keys().await?;
        while let Some(name) = keys.next().await {
            let name = name?;
            if let Some(value) = self.versions.get(&name).await?
                && let Ok(record) = serde_json::from_slice::<VersionRecord>(&value)
            {
                self.write(&name, &record).await?;
            }
        }
        Ok(())
    }

    /// Writes `record`'s file into the folder as `<name>.wasm`, unless the
    /// file there has its bytes already.
    async fn write(&self, name: &str, record: &VersionRecord) -> anyhow::Result<()> {
        if !crate::names::is_plugin(name) {
            anyhow::bail!("the cluster records a version of {name:?}, which is not a plugin name");
        }
        let wasm = self.folder.join(format!("{name}.wasm"));
        if sha_of(&wasm).await.as_deref() == Some(record.sha256.as_str()) {
            return Ok(());
        }
        let mut object = self.artifacts.get(&record.sha256).await?;
        let mut bytes = Vec::new();
        object.read_to_end(&mut bytes).await?;
        if VersionId::of(&bytes).hex() != record.sha256 {
            anyhow::bail!("the cluster's copy of {name} does not match its hash");
        }
        let settings = self.folder.join(format!("{name}.toml"));
        match &record.settings {
            Some(text) => tokio::fs::write(&settings, text).await?,
            None => {
                let _ = tokio::fs::remove_file(&settings).await;
            }
        }
        // Hidden while written: the folder watcher ignores it until renamed.
        let partial = self.folder.join(format!(".{name}.wasm.cluster"));
        tokio::fs::write(&partial, &bytes).await?;
        tokio::fs::rename(&partial, &wasm).await?;
        tracing::info!(plugin = name, from = %record.from, "a version deployed on another node arrived");
        Ok(())
    }

    /// Records a change of this node's folder for the others.
    async fn publish(&self, change: Published) -> anyhow::Result<()> {
        match change {
            Published::Activated {
                name,
                source,
                sha256,
                settings,
            } => {
                let known = self.versions.get(&name).await?;
                let known = known.and_then(|v| serde_json::from_slice::<VersionRecord>(&v).ok());
                if known.is_some_and(|k| k.sha256 == sha256) {
                    return Ok(());
                }
                let bytes = tokio::fs::read(&source).await?;
                if VersionId::of(&bytes).hex() != sha256 {
                    anyhow::bail!("{} changed since it was activated", source.display());
                }
                if self.artifacts.info(&sha256).await.is_err() {
                    self.artifacts.put(sha256.as_str(), &mut bytes.as_slice()).await?;
                }
                let record = VersionRecord {
                    sha256,
                    settings: Some(settings).filter(|s| !s.is_empty()),
                    from: self.node.clone(),
                };
                self.versions.put(&name, serde_json::to_vec(&record)?.into()).await?;
                tracing::info!(plugin = %name, "deployed to the cluster");
            }
            Published::Removed { name } => {
                if self.versions.get(&name).await?.is_some() {
                    self.versions.delete(&name).await?;
                }
            }
        }
        Ok(())
    }

    /// Spreads this node's changes and follows the others', until `changes`
    /// ends.
    pub async fn run(self, mut changes: mpsc::UnboundedReceiver<Published>) {
        let mut watch = match self.versions.watch_all().await {
            Ok(watch) => Some(watch),
            Err(e) => {
                tracing::warn!("cannot follow the cluster's deploys: {e}");
                None
            }
        };
        loop {
            tokio::select! {
                change = changes.recv() => match change {
                    Some(change) => {
                        if let Err(e) = self.publish(change).await {
                            tracing::warn!("cannot deploy to the cluster: {e}");
                        }
                    }
                    None => return,
                },
                entry = next(&mut watch) => match entry {
                    Some(entry) => self.follow(entry).await,
                    None => {
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                        watch = self.versions.watch_all().await.ok();
                    }
                },
            }
        }
    }

    async fn follow(&self, entry: kv::Entry) {
        match entry.operation {
            kv::Operation::Put => {
                let Ok(record) = serde_json::from_slice::<VersionRecord>(&entry.value) else {
                    return;
                };
                if let Err(e) = self.write(&entry.key, &record).await {
                    tracing::warn!(plugin = %entry.key, "cannot take a version deployed on another node: {e}");
                }
            }
            kv::Operation::Delete | kv::Operation::Purge => {
                let wasm = self.folder.join(format!("{}.wasm", entry.key));
                if crate::names::is_plugin(&entry.key) && tokio::fs::remove_file(&wasm).await.is_ok() {
                    tracing::info!(plugin = %entry.key, "removed on another node: removed here");
                }
            }
        }
    }
}

async fn next(watch: &mut Option<kv::Watch>) -> Option<kv::Entry> {
    match watch {
        Some(watch) => watch.next().await?.ok(),
        None => std::future::pending().await,
    }
}

async fn sha_of(path: &Path) -> Option<String> {
    let bytes = tokio::fs::read(path).await.ok()?;
    Some(VersionId::of(&bytes).hex())
}
