//! Durable key-value storage for plugins, one namespace per (tenant, plugin).
//!
//! One [redb](https://www.redb.org) database in the data folder
//! (`storage.redb`) holds every namespace. A key is stored as
//! `tenant \0 plugin \0 key`; tenant and plugin names cannot contain `\0`, so a
//! plugin can only ever name keys of its own namespace. A second table keeps
//! each namespace's size (keys plus values, in bytes), updated in the same
//! transaction as the data, so quotas hold across crashes. Every write is
//! committed durably before the call returns.
//!
//! Calls block on disk: the host functions run them on tokio's blocking pool,
//! never on a worker thread that serves sessions.

use std::path::Path;

use std::sync::{RwLock, RwLockReadGuard};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

const DATA: TableDefinition<&[u8], &[u8]> = TableDefinition::new("data");
const USAGE: TableDefinition<&[u8], u64> = TableDefinition::new("usage");
/// Plugin states exported at shutdown: namespace → (version hash, state).
const STATES: TableDefinition<&[u8], (&str, &[u8])> = TableDefinition::new("states");

/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 1024;

/// Why a storage call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StorageError {
    /// Empty or too long key.
    #[error("invalid key")]
    InvalidKey,
    /// Value over the value limit.
    #[error("value too large")]
    TooLarge,
    /// The namespace would exceed its quota.
    #[error("quota exceeded")]
    QuotaExceeded,
    /// The database failed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

impl<E: Into<redb::Error>> From<E> for StorageError {
    fn from(e: E) -> StorageError {
        StorageError::Unavailable(e.into().to_string())
    }
}

/// Size limits of every namespace.
#[derive(Debug, Clone, Copy)]
pub struct StorageLimits {
    /// Largest value.
    pub max_value_bytes: usize,
    /// Largest total of keys and values per namespace.
    pub max_bytes: u64,
}

/// The storage of one host.
pub struct Storage {
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

/// One (tenant, plugin) namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace(Vec<u8>);

impl Namespace {
    /// The namespace of a tenant's plugin.
    pub fn new(tenant: &str, plugin: &str) -> Namespace {
        let mut prefix = Vec::with_capacity(tenant.len() + plugin.len() + 2);
        prefix.extend_from_slice(tenant.as_bytes());
        prefix.push(0);
        prefix.extend_from_slice(plugin.as_bytes());
        prefix.push(0);
        Namespace(prefix)
    }

    fn key(&self, key: &str) -> Result<Vec<u8>, StorageError> {
        if key.is_empty() || key.len() > MAX_KEY_BYTES {
            return Err(StorageError::InvalidKey);
        }
        let mut full = self.0.clone();
        full.extend_from_slice(key.as_bytes());
        Ok(full)
    }
}

impl Storage {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Storage, StorageError> {
        let db = Database::create(path)?;
        let txn = db.begin_write()?;
        txn.open_table(DATA)?;
        txn.open_table(USAGE)?;
        txn.open_table(STATES)?;
        txn.commit()?;
        Ok(Storage {
            db: RwLock::new(Some(db)),
        })
    }

    /// Opens the database at `path` again after [`Storage::close`] (a
    /// handover to a new process was called off).
    pub fn reopen(&self, path: &Path) -> Result<(), StorageError> {
        let fresh = Storage::open(path)?;
        let db = fresh.db.into_inner().unwrap_or_else(|p| p.into_inner());
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = db;
        Ok(())
    }

    /// Closes the database; later calls fail with `Unavailable`.
    pub fn close(&self) {
        *self.db.write().unwrap_or_else(|p| p.into_inner()) = None;
    }

    fn db(&self) -> Result<DbGuard<'_>, StorageError> {
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(StorageError::Unavailable("the host is shutting down".into()));
        }
        Ok(DbGuard(guard))
    }

    /// The value of `key`.
    pub fn get(&self, ns: &Namespace, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let full = ns.key(key)?;
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(DATA)?;
        Ok(table.get(full.as_slice())?.map(|v| v.value().to_vec()))
    }

    /// Sets `key` durably, within the namespace's `limits`.
    pub fn set(&self, ns: &Namespace, key: &str, value: &[u8], limits: StorageLimits) -> Result<(), StorageError> {
        let full = ns.key(key)?;
        if value.len() > limits.max_value_bytes {
            return Err(StorageError::TooLarge);
        }
        let txn = self.db()?.begin_write()?;
        {
            let mut data = txn.open_table(DATA)?;
            let mut usage = txn.open_table(USAGE)?;
            let used = usage.get(ns.0.as_slice())?.map_or(0, |u| u.value());
            let old = data
                .get(full.as_slice())?
                .map_or(0, |v| (key.len() + v.value().len()) as u64);
            let new = (key.len() + value.len()) as u64;
            let total = used - old.min(used) + new;
            if new > old && total > limits.max_bytes {
                return Err(StorageError::QuotaExceeded);
            }
            data.insert(full.as_slice(), value)?;
            usage.insert(ns.0.as_slice(), total)?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Deletes `key`; `false` if it was not set.
    pub fn delete(&self, ns: &Namespace, key: &str) -> Result<bool, StorageError> {
        let full = ns.key(key)?;
        let txn = self.db()?.begin_write()?;
        let existed = {
            let mut data = txn.open_table(DATA)?;
            let removed = data
                .remove(full.as_slice())?
                .map(|v| (key.len() + v.value().len()) as u64);
            if let Some(freed) = removed {
                let mut usage = txn.open_table(USAGE)?;
                let used = usage.get(ns.0.as_slice())?.map_or(0, |u| u.value());
                usage.insert(ns.0.as_slice(), used.saturating_sub(freed))?;
            }
            removed.is_some()
        };
        txn.commit()?;
        Ok(existed)
    }

    /// Keys starting with `prefix`, in order, at most `limit`.
    pub fn list(&self, ns: &Namespace, prefix: &str, limit: usize) -> Result<Vec<String>, StorageError> {
        let mut start = ns.0.clone();
        start.extend_from_slice(prefix.as_bytes());
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(DATA)?;
        let mut keys = Vec::new();
        for entry in table.range(start.as_slice()..)? {
            let (key, _) = entry?;
            let key = key.value();
            if !key.starts_with(&start) || keys.len() >= limit {
                break;
            }
            keys.push(String::from_utf8_lossy(&key[ns.0.len()..]).into_owned());
        }
        Ok(keys)
    }

    /// Keeps a plugin state exported at shutdown (host-internal: plugins cannot
    /// reach this table).
    pub fn save_state(&self, ns: &Namespace, version: &str, state: &[u8]) -> Result<(), StorageError> {
        let txn = self.db()?.begin_write()?;
        txn.open_table(STATES)?.insert(ns.0.as_slice(), (version, state))?;
        txn.commit()?;
        Ok(())
    }

    /// The state kept for a namespace (the last checkpoint, or what was
    /// exported at the last shutdown). It stays until the next one replaces
    /// it, so a crash right after a restart loses nothing.
    pub fn kept_state(&self, ns: &Namespace) -> Result<Option<(String, Vec<u8>)>, StorageError> {
        let txn = self.db()?.begin_read()?;
        let kept = txn.open_table(STATES)?.get(ns.0.as_slice())?.map(|v| {
            let (version, state) = v.value();
            (version.to_owned(), state.to_vec())
        });
        Ok(kept)
    }

    /// Bytes used by a namespace.
    pub fn used(&self, ns: &Namespace) -> Result<u64, StorageError> {
        let txn = self.db()?.begin_read()?;
        let usage = txn.open_table(USAGE)?;
        Ok(usage.get(ns.0.as_slice())?.map_or(0, |u| u.value()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: StorageLimits = StorageLimits {
        max_value_bytes: 100,
        max_bytes: 10_000,
    };

    fn storage() -> (tempfile::TempDir, Storage) {
        let dir = tempfile::tempdir().expect("temp dir");
        let storage = Storage::open(&dir.path().join("s.redb")).expect("open");
        (dir, storage)
    }

    #[test]
    fn namespaces_do_not_see_each_other() {
        let (_dir, s) = storage();
        let a = Namespace::new("acme", "chat");
        let b = Namespace::new("globex", "chat");
        let c = Namespace::new("acme", "metering");
        s.set(&a, "k", b"a", LIMITS).expect("set");
        s.set(&b, "k", b"b", LIMITS).expect("set");
        assert_eq!(s.get(&a, "k").expect("get"), Some(b"a".to_vec()));
        assert_eq!(s.get(&b, "k").expect("get"), Some(b"b".to_vec()));
        assert_eq!(s.get(&c, "k").expect("get"), None);
        assert_eq!(s.list(&a, "", 10).expect("list"), vec!["k".to_owned()]);
        // A key that looks like a path into another namespace is just a key.
        assert_eq!(s.get(&a, "\0globex\0chat\0k").expect("get"), None);
    }

    #[test]
    fn lists_by_prefix_in_order() {
        let (_dir, s) = storage();
        let ns = Namespace::new("t", "p");
        for key in ["rooms/b", "rooms/a", "users/x", "rooms/c"] {
            s.set(&ns, key, b"1", LIMITS).expect("set");
        }
        assert_eq!(s.list(&ns, "rooms/", 2).expect("list"), vec!["rooms/a", "rooms/b"]);
        assert!(s.delete(&ns, "rooms/a").expect("delete"));
        assert!(!s.delete(&ns, "rooms/a").expect("delete"));
        assert_eq!(s.list(&ns, "rooms/", 10).expect("list"), vec!["rooms/b", "rooms/c"]);
    }

    #[test]
    fn sizes_and_quotas_are_enforced() {
        let (_dir, s) = storage();
        let ns = Namespace::new("t", "p");
        let small = StorageLimits {
            max_value_bytes: 100,
            max_bytes: 20,
        };
        assert_eq!(s.set(&ns, "", b"x", small), Err(StorageError::InvalidKey));
        assert_eq!(s.set(&ns, "k", &[0; 101], small), Err(StorageError::TooLarge));
        s.set(&ns, "k", &[0; 15], small).expect("16 bytes fit");
        assert_eq!(s.set(&ns, "j", &[0; 5], small), Err(StorageError::QuotaExceeded));
        s.set(&ns, "k", &[0; 3], small).expect("shrinking is fine");
        assert_eq!(s.used(&ns).expect("used"), 4);
        s.set(&ns, "j", &[0; 5], small).expect("now it fits");
        s.delete(&ns, "k").expect("delete");
        assert_eq!(s.used(&ns).expect("used"), 6);
    }

    #[test]
    fn kept_states_stay_until_replaced() {
        let (_dir, s) = storage();
        let ns = Namespace::new("t", "p");
        assert_eq!(s.kept_state(&ns).expect("read"), None);
        s.save_state(&ns, "abc", b"state").expect("save");
        let kept = Some(("abc".to_owned(), b"state".to_vec()));
        assert_eq!(s.kept_state(&ns).expect("read"), kept);
        assert_eq!(s.kept_state(&ns).expect("read"), kept, "reading keeps it");
        s.save_state(&ns, "def", b"newer").expect("save");
        assert_eq!(s.kept_state(&ns).expect("read").map(|(v, _)| v), Some("def".to_owned()));
        assert_eq!(
            s.list(&ns, "", 10).expect("list"),
            Vec::<String>::new(),
            "not visible as data"
        );
    }

    #[test]
    fn data_survives_reopening() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("s.redb");
        let ns = Namespace::new("t", "p");
        Storage::open(&path)
            .expect("open")
            .set(&ns, "k", b"v", LIMITS)
            .expect("set");
        assert_eq!(
            Storage::open(&path).expect("reopen").get(&ns, "k").expect("get"),
            Some(b"v".to_vec())
        );
    }
}
