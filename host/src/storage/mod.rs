//! Durable storage of tenants: the plugin-facing key-value store (one
//! namespace per (tenant, plugin)), the plugin states kept at checkpoints and
//! shutdown, and the owner token of each namespace. One interface, two
//! backends (`storage.backend`):
//!
//! - `redb.rs`: the embedded default, one file in the data folder; no
//!   database to run, but one host only.
//! - `postgres.rs`: shared tables in PostgreSQL under row-level security, so
//!   that any host pointed at the same database can take a tenant over;
//! - `namespace.rs`: what both share (a namespace, its limits, the errors).
//!
//! **Fencing.** A tenant task claims its namespace when it starts
//! ([`Storage::claim`]): the namespace's owner token goes up by one and the
//! task keeps the new value. Every write carries the token and is refused
//! ([`StorageError::Fenced`]) when the namespace has a newer owner, checked in
//! the write's own transaction: a host that lost a tenant to another cannot
//! overwrite what the new owner wrote, whatever it still believes.
//!
//! Every call is async: redb's run on tokio's blocking pool, PostgreSQL's
//! wait on the network; none blocks a worker thread that serves sessions.

pub mod namespace;
mod postgres;
mod redb;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{StorageBackend, StorageConfig};
pub use namespace::{Namespace, StorageError, StorageLimits, TenantData};

/// The storage of one host.
pub struct Storage {
    backend: Backend,
    /// How often it was reopened: owner tokens claimed before are claimed again.
    epoch: std::sync::atomic::AtomicU64,
}

enum Backend {
    Redb { db: Arc<redb::Redb>, path: PathBuf },
    Postgres(postgres::Postgres),
}

/// Runs `f` on the redb database on the blocking pool.
async fn blocking<T: Send + 'static>(
    db: &Arc<redb::Redb>,
    f: impl FnOnce(&redb::Redb) -> Result<T, StorageError> + Send + 'static,
) -> Result<T, StorageError> {
    let db = db.clone();
    tokio::task::spawn_blocking(move || f(&db))
        .await
        .map_err(|e| StorageError::Unavailable(format!("storage task failed: {e}")))?
}

impl Storage {
    /// Opens the storage `config` names (redb: `<data_dir>/storage.redb`).
    pub async fn open(config: &StorageConfig, data_dir: &Path) -> Result<Storage, StorageError> {
        let backend = match config.backend {
            StorageBackend::Redb => {
                let path = data_dir.join("storage.redb");
                let db = redb::Redb::open(&path)?;
                Backend::Redb { db: Arc::new(db), path }
            }
            StorageBackend::Postgres => {
                let url = config.postgres_url.as_deref().ok_or_else(|| {
                    StorageError::Unavailable("storage.backend = \"postgres\" needs storage.postgres_url".into())
                })?;
                Backend::Postgres(postgres::Postgres::open(url, config.pool_size.get()).await?)
            }
        };
        Ok(Storage {
            backend,
            epoch: Default::default(),
        })
    }

    /// Opens a redb file at `path` (tests and tools).
    pub fn open_redb(path: &Path) -> Result<Storage, StorageError> {
        Ok(Storage {
            backend: Backend::Redb {
                db: Arc::new(redb::Redb::open(path)?),
                path: path.to_owned(),
            },
            epoch: Default::default(),
        })
    }

    /// Whether a second host can share this storage (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Postgres(_))
    }

    /// Opens the storage again after [`Storage::close`] (a handover to a new
    /// process was called off).
    pub fn reopen(&self) -> Result<(), StorageError> {
        match &self.backend {
            Backend::Redb { db, path } => db.reopen(path)?,
            Backend::Postgres(pg) => pg.reopen()?,
        }
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// How often the storage was reopened (see [`Storage::reopen`]).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Closes the storage (redb: frees the file for the next process); later
    /// calls fail with `Unavailable`.
    pub fn close(&self) {
        match &self.backend {
            Backend::Redb { db, .. } => db.close(),
            Backend::Postgres(pg) => pg.close(),
        }
    }

    /// Makes the caller the owner of `ns`: the token its writes must carry.
    /// `lease` is the revision of the cluster's ownership record the caller
    /// holds (0 outside a cluster): a claim under an older lease than the
    /// last one is refused as [`StorageError::Fenced`], so a node that lost
    /// a tenant cannot take its storage back by claiming again. (redb is
    /// one host's only: it has no leases.)
    pub async fn claim(&self, ns: &Namespace, lease: u64) -> Result<u64, StorageError> {
        match &self.backend {
            Backend::Redb { db, .. } => {
                let ns = ns.clone();
                blocking(db, move |db| db.claim(&ns)).await
            }
            Backend::Postgres(pg) => pg.claim(ns, lease).await,
        }
    }

    /// The value of `key`.
    pub async fn get(&self, ns: &Namespace, key: String) -> Result<Option<Vec<u8>>, StorageError> {
        match &self.backend {
            Backend::Redb { db, .. } => {
                let ns = ns.clone();
                blocking(db, move |db| db.get(&ns, &key)).await
            }
            Backend::Postgres(pg) => pg.get(ns, &key).await,
        }
    }

    /// Sets `key` durably, within the namespace's `limits`, as owner `token`.
    pub async fn set(
        &self,
        ns: &Namespace,
        token: u64,
        key: String,
        value: Vec<u8>,
        limits: StorageLimits,
    ) -> Result<(), StorageError> {
        match &self.backend {
            Backend::Redb { db, .. } => {
                let ns = ns.clone();
                blocking(db, move |db| db.set(&ns, token, &key, &value, limits)).await
            }
            Backend::Postgres(pg) => pg.set(ns, token, &key, &value, limits).await,
        }
    }

    /// Deletes `key` as owner `token`; `false` if it was not set.
    pub async fn delete(&self, ns: &Namespace, token: u64, key: String) -> Result<bool, StorageError> {
        match &self.backend {
            Backend::Redb { db, .. } => {
                let ns = ns.clone();
                blocking(db, move |db| db.delete(&ns, token, &key)).await
            }
            Backend::Postgres(pg) => pg.delete(ns, token, &key).await,
        }
    }

    /// Keys starting with `prefix`, in byte order, at most `limit`.
    pub async fn list(&self, ns: &Namespace, prefix: String, limit: usize) -> Result<Vec<String>, StorageError> {
        match &self.backend {
            Backend::Redb { db, .. } => {
                let ns = ns.clone();
                blocking(db, move |db| db.list(&ns, &prefix, limit)).await
            }
            Backend::Postgres(pg) => pg.list(ns, &prefix, limit).await,
        }
    }

    /// Keeps a plugin state (host-internal: plugins cannot reach it), as
    /// owner `token`.
    pub async fn save_state(
        &self,
        ns: &Namespace,
        token: u64,
        version: String,
        state: Vec<u8>,
    ) -> Result<(), StorageError> {
        match &self.backend {
            Backend::Redb { db, .. } => {
                let ns = ns.clone();
                blocking(db, move |db| db.save_state(&ns, token, &version, &state)).await
            }
            Backend::Postgres(pg) => pg.save_state(ns, token, &version, &state).await,
        }
    }

    /// The state kept for a namespace (the last checkpoint, or what was
    /// kept at the last shutdown). It stays until the next one replaces it,
    /// so a crash right after a restart loses nothing.
    pub async fn kept_state(&self, ns: &Namespace) -> Result<Option<(String, Vec<u8>)>, StorageError> {
        match &self.backend {
            Backend::Redb { db, .. } => {
                let ns = ns.clone();
                blocking(db, move |db| db.kept_state(&ns)).await
            }
            Backend::Postgres(pg) => pg.kept_state(ns).await,
        }
    }

    /// Bytes used by a namespace.
    pub async fn used(&self, ns: &Namespace) -> Result<u64, StorageError> {
        match &self.backend {
            Backend::Redb { db, .. } => {
                let ns = ns.clone();
                blocking(db, move |db| db.used(&ns)).await
            }
            Backend::Postgres(pg) => pg.used(ns).await,
        }
    }

    /// Everything kept for `tenant`, plugin by plugin.
    pub async fn export(&self, tenant: &str) -> Result<Vec<TenantData>, StorageError> {
        match &self.backend {
            Backend::Redb { db, .. } => {
                let tenant = tenant.to_owned();
                blocking(db, move |db| db.export(&tenant)).await
            }
            Backend::Postgres(pg) => pg.export(tenant).await,
        }
    }

    /// Erases everything kept for `tenant`; its owner tokens go up, so that
    /// a task that owned it before cannot write it back.
    pub async fn erase(&self, tenant: &str) -> Result<(), StorageError> {
        match &self.backend {
            Backend::Redb { db, .. } => {
                let tenant = tenant.to_owned();
                blocking(db, move |db| db.erase(&tenant)).await
            }
            Backend::Postgres(pg) => pg.erase(tenant).await,
        }
    }
}
