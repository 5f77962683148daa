//! What the storage backends share: a (tenant, plugin) namespace, its size
//! limits, the errors of a call, and a tenant's data as exported.

use serde::{Deserialize, Serialize};

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
    /// The namespace has a newer owner than the writer: the write is refused.
    #[error("fenced: this tenant has a newer owner")]
    Fenced,
    /// The database failed.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
}

/// Size limits of every namespace.
#[derive(Debug, Clone, Copy)]
pub struct StorageLimits {
    /// Largest value.
    pub max_value_bytes: usize,
    /// Largest total of keys and values per namespace.
    pub max_bytes: u64,
}

/// One (tenant, plugin) namespace.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Namespace {
    /// The tenant (a valid name: see [`crate::names`]).
    pub tenant: String,
    /// The plugin (a valid name).
    pub plugin: String,
}

impl Namespace {
    /// The namespace of a tenant's plugin.
    pub fn new(tenant: &str, plugin: &str) -> Namespace {
        Namespace {
            tenant: tenant.to_owned(),
            plugin: plugin.to_owned(),
        }
    }
}

/// The namespace's size once a key and value of `old` bytes (0: none) are
/// replaced by `new` bytes, when `used` now: refused as over the quota when
/// it grows past it (shrinking is always allowed).
pub(super) fn size_after(used: u64, old: u64, new: u64, limits: StorageLimits) -> Result<u64, StorageError> {
    let total = used - old.min(used) + new;
    if new > old && total > limits.max_bytes {
        return Err(StorageError::QuotaExceeded);
    }
    Ok(total)
}

pub(super) fn check_key(key: &str) -> Result<(), StorageError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(StorageError::InvalidKey);
    }
    Ok(())
}

/// What is kept for one plugin of a tenant (`baton tenant export`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantData {
    /// The plugin.
    pub plugin: String,
    /// Its key-value data, in key order.
    pub keys: Vec<(String, Vec<u8>)>,
    /// Its kept state: (version hash, bytes).
    pub state: Option<(String, Vec<u8>)>,
}

impl TenantData {
    /// `plugin`'s entry in `all`, added if it has none yet.
    pub(super) fn of<'a>(all: &'a mut Vec<TenantData>, plugin: &str) -> &'a mut TenantData {
        let i = match all.iter().position(|d| d.plugin == plugin) {
            Some(i) => i,
            None => {
                all.push(TenantData {
                    plugin: plugin.to_owned(),
                    keys: Vec::new(),
                    state: None,
                });
                all.len() - 1
            }
        };
        &mut all[i]
    }
}
