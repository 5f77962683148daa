//! Durable key-value storage of this tenant (for this plugin), kept by the
//! host across hot swaps, crashes and restarts. Another tenant's keys cannot
//! be named. Values are bytes; [`get_json`] and [`set_json`] store serde types.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::__private::baton::plugin::storage as host;

/// Why a storage operation failed.
pub type Error = host::Error;

/// The value of `key`.
pub fn get(key: &str) -> Result<Option<Vec<u8>>, Error> {
    host::get(key)
}

/// Sets `key` (durably, before returning).
pub fn set(key: &str, value: &[u8]) -> Result<(), Error> {
    host::set(key, value)
}

/// Deletes `key`; `false` if it was not set.
pub fn delete(key: &str) -> Result<bool, Error> {
    host::delete(key)
}

/// Keys starting with `prefix`, in order, at most `limit`.
pub fn list(prefix: &str, limit: u32) -> Result<Vec<String>, Error> {
    host::list(prefix, limit)
}

/// The value of `key`, decoded from JSON.
pub fn get_json<T: DeserializeOwned>(key: &str) -> Result<Option<T>, String> {
    match get(key).map_err(|e| e.to_string())? {
        Some(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("{key}: {e}")),
        None => Ok(None),
    }
}

/// Sets `key` to `value` encoded as JSON.
pub fn set_json<T: Serialize>(key: &str, value: &T) -> Result<(), String> {
    let bytes = serde_json::to_vec(value).map_err(|e| e.to_string())?;
    set(key, &bytes).map_err(|e| e.to_string())
}
