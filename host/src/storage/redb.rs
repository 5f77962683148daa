//! The embedded backend: one [redb](https://www.redb.org) database in the
//! data folder (`storage.redb`) holds every namespace. A key is stored as
//! `tenant \0 plugin \0 key`; tenant and plugin names cannot contain `\0`, so a
//! plugin can only ever name keys of its own namespace. A second table keeps
//! each namespace's size (keys plus values, in bytes), updated in the same
//! transaction as the data, so quotas hold across crashes; a third the owner
//! token of each namespace, checked in the transaction of every write. Every
//! write is committed durably before the call returns.
//!
//! redb waits for the disk: [`super::Storage`] runs these calls on tokio's
//! blocking pool, never on a worker thread that serves sessions.

use std::path::Path;
use std::sync::{RwLock, RwLockReadGuard};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition, WriteTransaction};

use super::namespace::{Namespace, StorageError, StorageLimits, TenantData, check_key, size_after};

mod queue;

const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
const USAGE: TableDefinition<&[u8], u64> = TableDefinition::new("usage");
/// Plugin states kept at checkpoints and shutdown: namespace → (version hash, state).
const STATES: TableDefinition<&[u8], (&str, &[u8])> = TableDefinition::new("states");
/// The owner token of each namespace (see [`super`]'s fencing).
const OWNERS: TableDefinition<&[u8], u64> = TableDefinition::new("owners");

/// redb's errors, each an unavailable storage.
macro_rules! unavailable_on {
    ($($error:ty),*) => {
        $(impl From<$error> for StorageError {
            fn from(e: $error) -> StorageError {
                StorageError::Unavailable(redb::Error::from(e).to_string())
            }
        })*
    };
}

unavailable_on!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// The database file of one host.
pub(super) struct Redb {
    /// `None` once closed: the host closes it when it stops, so that the file
    /// (which redb locks) is free for the next host at once, whatever still
    /// holds a reference.
    db: RwLock<Option<Database>>,
}

/// The open database, read-locked for one call.
struct DbGuard<'a>(RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for DbGuard<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        self.0.as_ref().expect("checked when the guard was made")
    }
}

/// The prefix of every key of `ns`: `tenant \0 plugin \0`.
fn prefix(ns: &Namespace) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(ns.tenant.len() + ns.plugin.len() + 2);
    prefix.extend_from_slice(ns.tenant.as_bytes());
    prefix.push(0);
    prefix.extend_from_slice(ns.plugin.as_bytes());
    prefix.push(0);
    prefix
}

fn full_key(ns: &Namespace, key: &str) -> Result<Vec<u8>, StorageError> {
    check_key(key)?;
    let mut full = prefix(ns);
    full.extend_from_slice(key.as_bytes());
    Ok(full)
}

/// Refuses a write by an owner older than the namespace's current one, and
/// records a newer one.
fn fence(txn: &WriteTransaction, ns: &Namespace, token: u64) -> Result<(), StorageError> {
    let mut owners = txn.open_table(OWNERS)?;
    let key = prefix(ns);
    let current = owners.get(key.as_slice())?.map(|t| t.value());
    match current {
        Some(current) if current > token => Err(StorageError::Fenced),
        None => Err(StorageError::Fenced),
        Some(current) if current < token => {
            owners.insert(key.as_slice(), token)?;
            Ok(())
        }
        Some(_) => Ok(()),
    }
}

impl Redb {
    /// Opens (creating) the database at `path`.
    pub(super) fn open(path: &Path) -> Result<Redb, StorageError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(DATA)?;
        txn.open_table(USAGE)?;
        txn.open_table(STATES)?;
        txn.open_table(OWNERS)?;
        txn.commit()?;
        let redb = Redb {
            db: RwLock::new(Some(db)),
        };
        redb.open_jobs(crate::clock::unix_ms())?;
        Ok(redb)
    }

    /// Opens the database at `path` again after [`Redb::close`].
    pub(super) fn reopen(&self, path: &Path) -> Result<(), StorageError> {
        let fresh = Redb::open(path)?;
        let db = fresh.db.into_inner().unwrap_or_else(|p| p.into_inner());
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = db;
        Ok(())
    }

    /// Closes the database; later calls fail with `Unavailable`.
    pub(super) fn close(&self) {
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn db(&self) -> Result<DbGuard<'_>, StorageError> {
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(StorageError::Unavailable("the host is shutting down".into()));
        }
        Ok(DbGuard(guard))
    }

    /// A claim is not made durable at once (no sync of its own): it becomes
    /// durable with the next durable commit. That costs a new tenant no disk
    /// wait, and loses nothing that matters: only one process opens the file
    /// at a time, so a claim a crash loses belonged to a process that is gone.
    pub(super) fn claim(&self, ns: &Namespace) -> Result<u64, StorageError> {
        let mut txn = self.db()?.begin_write()?;
        txn.set_durability(redb::Durability::None)?;
        let token = {
            let mut owners = txn.open_table(OWNERS)?;
            let key = prefix(ns);
            let token = owners.get(key.as_slice())?.map_or(0, |t| t.value()) + 1;
            owners.insert(key.as_slice(), token)?;
            token
        };
        self.rescue_jobs(&txn, ns, token, crate::clock::unix_ms())?;
        txn.commit()?;
        Ok(token)
    }

    pub(super) fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let full = full_key(ns, key)?;
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(DATA)?;
        Ok(table.get(full.as_slice())?.map(|v| v.value().to_vec()))
    }

    pub(super) fn set(
        &self,
        ns: &Namespace,
        token: u64,
        key: &str,
        value: &[u8],
        limits: StorageLimits,
    ) -> Result<(), StorageError> {
        let full = full_key(ns, key)?;
        if value.len() > limits.max_value_bytes {
            return Err(StorageError::TooLarge);
        }
        let txn = self.db()?.begin_write()?;
        fence(&txn, ns, token)?;
        {
            let mut data = txn.open_table(DATA)?;
            let mut usage = txn.open_table(USAGE)?;
            let space = prefix(ns);
            let used = usage.get(space.as_slice())?.map_or(0, |u| u.value());
            let old = data
                .get(full.as_slice())?
                .map_or(0, |v| (key.len() + v.value().len()) as u64);
            let total = size_after(used, old, (key.len() + value.len()) as u64, limits)?;
            data.insert(full.as_slice(), value)?;
            usage.insert(space.as_slice(), total)?;
        }
        txn.commit()?;
        Ok(())
    }

    pub(super) fn delete(&self, ns: &Namespace, token: u64, key: &str) -> Result<bool, StorageError> {
        let full = full_key(ns, key)?;
        let txn = self.db()?.begin_write()?;
        fence(&txn, ns, token)?;
        let existed = {
            let mut data = txn.open_table(DATA)?;
            let removed = data
                .remove(full.as_slice())?
                .map(|v| (key.len() + v.value().len()) as u64);
            if let Some(freed) = removed {
                let mut usage = txn.open_table(USAGE)?;
                let space = prefix(ns);
                let used = usage.get(space.as_slice())?.map_or(0, |u| u.value());
                usage.insert(space.as_slice(), used.saturating_sub(freed))?;
            }
            removed.is_some()
        };
        txn.commit()?;
        Ok(existed)
    }

    pub(super) fn list(&self, ns: &Namespace, prefix_of_keys: &str, limit: usize) -> Result<Vec<String>, StorageError> {
        let space = prefix(ns);
        let mut start = space.clone();
        start.extend_from_slice(prefix_of_keys.as_bytes());
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(DATA)?;
        let mut keys = Vec::new();
        for entry in table.range(start.as_slice()..)? {
            let (key, _) = entry?;
            let key = key.value();
            if !key.starts_with(&start) || keys.len() >= limit {
                break;
            }
            keys.push(String::from_utf8_lossy(&key[space.len()..]).into_owned());
        }
        Ok(keys)
    }

    pub(super) fn save_state(
        &self,
        ns: &Namespace,
        token: u64,
        version: &str,
        state: &[u8],
    ) -> Result<(), StorageError> {
        let txn = self.db()?.begin_write()?;
        fence(&txn, ns, token)?;
        txn.open_table(STATES)?
            .insert(prefix(ns).as_slice(), (version, state))?;
        txn.commit()?;
        Ok(())
    }

    pub(super) fn kept_state(&self, ns: &Namespace) -> Result<Option<(String, Vec<u8>)>, StorageError> {
        let txn = self.db()?.begin_read()?;
        let kept = txn.open_table(STATES)?.get(prefix(ns).as_slice())?.map(|v| {
            let (version, state) = v.value();
            (version.to_owned(), state.to_vec())
        });
        Ok(kept)
    }

    pub(super) fn used(&self, ns: &Namespace) -> Result<u64, StorageError> {
        let txn = self.db()?.begin_read()?;
        let usage = txn.open_table(USAGE)?;
        Ok(usage.get(prefix(ns).as_slice())?.map_or(0, |u| u.value()))
    }

    /// Everything kept for `tenant`, plugin by plugin.
    pub(super) fn export(&self, tenant: &str) -> Result<Vec<TenantData>, StorageError> {
        let mut start = tenant.as_bytes().to_vec();
        start.push(0);
        let txn = self.db()?.begin_read()?;
        let mut out: Vec<TenantData> = Vec::new();
        for entry in txn.open_table(DATA)?.range(start.as_slice()..)? {
            let (key, value) = entry?;
            let key = key.value();
            let Some(rest) = key.strip_prefix(start.as_slice()) else {
                break;
            };
            let Some(split) = rest.iter().position(|b| *b == 0) else {
                continue;
            };
            let plugin = String::from_utf8_lossy(&rest[..split]);
            let name = String::from_utf8_lossy(&rest[split + 1..]).into_owned();
            TenantData::of(&mut out, &plugin)
                .keys
                .push((name, value.value().to_vec()));
        }
        for entry in txn.open_table(STATES)?.range(start.as_slice()..)? {
            let (key, value) = entry?;
            let key = key.value();
            let Some(rest) = key.strip_prefix(start.as_slice()) else {
                break;
            };
            let plugin = String::from_utf8_lossy(rest.strip_suffix(&[0]).unwrap_or(rest));
            let (version, state) = value.value();
            TenantData::of(&mut out, &plugin).state = Some((version.to_owned(), state.to_vec()));
        }
        out.sort_by(|a, b| a.plugin.cmp(&b.plugin));
        Ok(out)
    }

    /// Erases everything kept for `tenant`; its owner tokens go up, so that
    /// no task that owned it before can write it back.
    pub(super) fn erase(&self, tenant: &str) -> Result<(), StorageError> {
        let mut start = tenant.as_bytes().to_vec();
        start.push(0);
        let mut end = tenant.as_bytes().to_vec();
        end.push(1);
        let txn = self.db()?.begin_write()?;
        txn.open_table(DATA)?
            .retain_in(start.as_slice()..end.as_slice(), |_, _| false)?;
        txn.open_table(USAGE)?
            .retain_in(start.as_slice()..end.as_slice(), |_, _| false)?;
        txn.open_table(STATES)?
            .retain_in(start.as_slice()..end.as_slice(), |_, _| false)?;
        {
            let mut owners = txn.open_table(OWNERS)?;
            let claimed: Vec<(Vec<u8>, u64)> = owners
                .range(start.as_slice()..end.as_slice())?
                .map(|entry| entry.map(|(k, v)| (k.value().to_vec(), v.value())))
                .collect::<Result<_, _>>()?;
            for (key, token) in claimed {
                owners.insert(key.as_slice(), token + 1)?;
            }
        }
        self.erase_jobs(&txn, tenant)?;
        txn.commit()?;
        Ok(())
    }
}
