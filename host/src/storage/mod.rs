//! Durable storage of tenants: the plugin-facing key-value store (one
//! namespace per (tenant, plugin)), the plugin states kept at checkpoints and
//! shutdown, and the owner token of each namespace. One interface, two
//! backends (`storage.backend`):
//!
//! - `redb.rs`: the embedded default, one file in the data folder; no
//!   database to run, but one host only.
//! - `postgres.rs`: shared tables in PostgreSQL under row-level security, so
//!   that any host pointed at the same database can take a tenant over;
//! - `namespace.rs`: what both share (a namespace, its limits, the errors);
//! - `jobs.rs`: durable jobs, schedules and webhook endpoints as both keep
//!   them (each backend's side is `redb/queue.rs`, `postgres/queue.rs`).
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

pub mod jobs;
pub mod namespace;
mod postgres;
mod redb;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::{StorageBackend, StorageConfig};
pub use jobs::{Delivery, Endpoint, EnqueueError, Finish, Job, JobId, Lane, NewJob, Schedule};
pub use namespace::{Namespace, StorageError, StorageLimits, TenantData};

/// Runs one call on whichever backend: redb's on the blocking pool, with
/// the arguments moved in; PostgreSQL's awaited.
macro_rules! on_backend {
    ($self:ident, ($($arg:ident),*), |$db:ident| $redb:expr, |$pg:ident| $postgres:expr) => {
        match &$self.backend {
            Backend::Redb { db, .. } => {
                $(let $arg = $arg.to_owned();)*
                blocking(db, move |$db| $redb).await
            }
            Backend::Postgres($pg) => $postgres.await,
        }
    };
}

/// The storage of one host.
pub struct Storage {
    backend: Backend,
    /// How often it was reopened: owner tokens claimed before are claimed again.
    epoch: std::sync::atomic::AtomicU64,
    /// Told when a job may have become due sooner (an enqueue, a retry):
    /// the dispatcher waits on it.
    jobs_changed: tokio::sync::Notify,
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
            jobs_changed: Default::default(),
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
            jobs_changed: Default::default(),
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

    /// Told when a job may have become due sooner on this host.
    pub fn jobs_changed(&self) -> &tokio::sync::Notify {
        &self.jobs_changed
    }

    /// Enqueues a job as owner `token`, within `max_pending` jobs not dead.
    pub async fn enqueue(
        &self,
        ns: &Namespace,
        token: u64,
        job: NewJob,
        max_pending: u64,
    ) -> Result<JobId, EnqueueError> {
        let now = crate::clock::unix_ms();
        let id = match &self.backend {
            Backend::Redb { db, .. } => {
                let (db, ns) = (db.clone(), ns.clone());
                tokio::task::spawn_blocking(move || db.enqueue(&ns, token, job, max_pending, now))
                    .await
                    .map_err(|e| StorageError::Unavailable(format!("storage task failed: {e}")))?
            }
            Backend::Postgres(pg) => pg.enqueue(ns, token, job, max_pending, now).await,
        }?;
        self.jobs_changed.notify_one();
        Ok(id)
    }

    /// Cancels a scheduled job (`dead_too`: or a dead one) as owner `token`
    /// (`None`: an operator); `false` if there is no such job.
    pub async fn cancel_job(
        &self,
        ns: &Namespace,
        token: Option<u64>,
        id: JobId,
        dead_too: bool,
    ) -> Result<bool, StorageError> {
        let now = crate::clock::unix_ms();
        on_backend!(self, (ns), |db| db.cancel_job(&ns, token, id, dead_too, now), |pg| pg
            .cancel_job(ns, token, id, dead_too, now))
    }

    /// Makes a dead job due now with fresh attempts (an operator's retry).
    pub async fn retry_dead(&self, ns: &Namespace, id: JobId) -> Result<bool, StorageError> {
        let now = crate::clock::unix_ms();
        on_backend!(self, (ns), |db| db.retry_dead(&ns, id, now), |pg| pg
            .retry_dead(ns, id, now))
    }

    /// The scheduled job of `ns` that holds unique `key`.
    pub async fn scheduled_with_key(&self, ns: &Namespace, key: &str) -> Result<Option<JobId>, StorageError> {
        on_backend!(self, (ns, key), |db| db.scheduled_with_key(&ns, &key), |pg| pg
            .scheduled_with_key(ns, key))
    }

    /// Namespaces with a job of `lane` due now, earliest first, but those in
    /// `busy`, at most `limit`.
    pub async fn due_namespaces(
        &self,
        lane: Lane,
        busy: std::collections::HashSet<Namespace>,
        limit: usize,
    ) -> Result<Vec<Namespace>, StorageError> {
        let now = crate::clock::unix_ms();
        on_backend!(
            self,
            (),
            |db| db.due_namespaces(lane, now, &|ns| busy.contains(ns), limit),
            |pg| pg.due_namespaces(lane, now, &busy, limit)
        )
    }

    /// Namespaces with a job running (on this host or another), at most `limit`.
    pub async fn running_namespaces(&self, limit: usize) -> Result<Vec<Namespace>, StorageError> {
        on_backend!(self, (), |db| db.running_namespaces(limit), |pg| pg
            .running_namespaces(limit))
    }

    /// When the earliest job of `lane` is due (ms since the epoch).
    pub async fn next_due(&self, lane: Lane) -> Result<Option<u64>, StorageError> {
        on_backend!(self, (), |db| db.next_due(lane), |pg| pg.next_due(lane))
    }

    /// Starts the earliest due job of `ns` in `lane` as owner `token`.
    pub async fn start_job(&self, ns: &Namespace, token: u64, lane: Lane) -> Result<Option<Job>, StorageError> {
        let now = crate::clock::unix_ms();
        on_backend!(self, (ns), |db| db.start_job(&ns, token, lane, now), |pg| pg
            .start_job(ns, token, lane, now))
    }

    /// Applies how an attempt of job `id` ended, with `then` enqueued in the
    /// same transaction; `false` if it no longer runs under `token`.
    pub async fn finish_job(
        &self,
        ns: &Namespace,
        token: u64,
        id: JobId,
        finish: Finish,
        then: Option<NewJob>,
    ) -> Result<bool, StorageError> {
        let now = crate::clock::unix_ms();
        on_backend!(
            self,
            (ns),
            |db| db.finish_job(&ns, token, id, finish, then, now),
            |pg| pg.finish_job(ns, token, id, finish, then, now)
        )
    }

    /// The jobs of `tenant`, by id, at most `limit`.
    pub async fn jobs_of(&self, tenant: &str, limit: usize) -> Result<Vec<Job>, StorageError> {
        on_backend!(self, (tenant), |db| db.jobs_of(&tenant, limit), |pg| pg
            .jobs_of(tenant, limit))
    }

    /// Jobs due or waiting, and jobs running, over the whole storage.
    pub async fn job_totals(&self) -> Result<(u64, u64), StorageError> {
        on_backend!(self, (), |db| db.job_totals(), |pg| pg.job_totals())
    }

    /// Declares a schedule as owner `token` (an identical one is kept as is).
    pub async fn put_schedule(&self, ns: &Namespace, token: u64, schedule: Schedule) -> Result<(), StorageError> {
        on_backend!(self, (ns), |db| db.put_schedule(&ns, token, schedule), |pg| pg
            .put_schedule(ns, token, schedule))?;
        self.jobs_changed.notify_one();
        Ok(())
    }

    /// Removes a schedule as owner `token`.
    pub async fn remove_schedule(&self, ns: &Namespace, token: u64, name: &str) -> Result<bool, StorageError> {
        on_backend!(self, (ns, name), |db| db.remove_schedule(&ns, token, &name), |pg| pg
            .remove_schedule(ns, token, name))
    }

    /// Schedules whose next slot is due now, at most `limit`.
    pub async fn due_schedules(&self, limit: usize) -> Result<Vec<(Namespace, Schedule)>, StorageError> {
        let now = crate::clock::unix_ms();
        on_backend!(self, (), |db| db.due_schedules(now, limit), |pg| pg
            .due_schedules(now, limit))
    }

    /// Enqueues `job` for slot `slot_ms` of schedule `name` and moves it on
    /// to `next_ms`, unless another host did already (`Ok(false)`).
    pub async fn fire_schedule(
        &self,
        ns: &Namespace,
        name: &str,
        slot_ms: u64,
        next_ms: u64,
        job: NewJob,
        max_pending: u64,
    ) -> Result<Result<bool, EnqueueError>, StorageError> {
        let now = crate::clock::unix_ms();
        on_backend!(
            self,
            (ns, name),
            |db| db.fire_schedule(&ns, &name, slot_ms, next_ms, job, max_pending, now),
            |pg| pg.fire_schedule(ns, name, slot_ms, next_ms, job, max_pending, now)
        )
    }

    /// The schedules of `tenant`, with their plugins.
    pub async fn schedules_of(&self, tenant: &str) -> Result<Vec<(String, Schedule)>, StorageError> {
        on_backend!(self, (tenant), |db| db.schedules_of(&tenant), |pg| pg
            .schedules_of(tenant))
    }

    /// Adds or replaces a webhook endpoint of `tenant`.
    pub async fn put_endpoint(&self, tenant: &str, endpoint: Endpoint) -> Result<(), StorageError> {
        on_backend!(self, (tenant), |db| db.put_endpoint(&tenant, &endpoint), |pg| pg
            .put_endpoint(tenant, &endpoint))
    }

    /// Removes a webhook endpoint of `tenant`.
    pub async fn remove_endpoint(&self, tenant: &str, name: &str) -> Result<bool, StorageError> {
        on_backend!(self, (tenant, name), |db| db.remove_endpoint(&tenant, &name), |pg| pg
            .remove_endpoint(tenant, name))
    }

    /// The webhook endpoints of `tenant`.
    pub async fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, StorageError> {
        on_backend!(self, (tenant), |db| db.endpoints(&tenant), |pg| pg.endpoints(tenant))
    }

    /// Appends to `tenant`'s delivery log, which keeps its last `keep` entries.
    pub async fn log_delivery(&self, tenant: &str, delivery: Delivery, keep: usize) -> Result<(), StorageError> {
        on_backend!(self, (tenant), |db| db.log_delivery(&tenant, &delivery, keep), |pg| pg
            .log_delivery(tenant, &delivery, keep))
    }

    /// `tenant`'s delivery log, newest first.
    pub async fn deliveries(&self, tenant: &str, limit: usize) -> Result<Vec<Delivery>, StorageError> {
        on_backend!(self, (tenant), |db| db.deliveries(&tenant, limit), |pg| pg
            .deliveries(tenant, limit))
    }
}
