//! `baton:plugin/storage`: the tenant's durable key-value store (see
//! [`crate::storage`]). Each call waits for the disk (redb, on the blocking
//! pool) or the database (PostgreSQL) while the guest's fiber is suspended,
//! so no worker thread serving sessions ever blocks on it. Writes carry the
//! task's owner token.

use crate::bindings::baton::plugin::storage::{Error, Host};
use crate::instance::state::InstanceState;
use crate::storage::StorageError;

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Error {
        match e {
            StorageError::InvalidKey => Error::InvalidKey,
            StorageError::TooLarge => Error::TooLarge,
            StorageError::QuotaExceeded => Error::QuotaExceeded,
            StorageError::Fenced => Error::Unavailable("fenced: this tenant has a newer owner".into()),
            StorageError::Unavailable(why) => Error::Unavailable(why),
        }
    }
}

impl Host for InstanceState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, Error> {
        let (storage, _) = self.tenant.owned_storage().await?;
        Ok(storage.get(&self.tenant.namespace, key).await?)
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), Error> {
        let limits = self.limits.storage();
        let (storage, token) = self.tenant.owned_storage().await?;
        Ok(storage.set(&self.tenant.namespace, token, key, value, limits).await?)
    }

    async fn delete(&mut self, key: String) -> Result<bool, Error> {
        let (storage, token) = self.tenant.owned_storage().await?;
        Ok(storage.delete(&self.tenant.namespace, token, key).await?)
    }

    async fn list(&mut self, prefix: String, limit: u32) -> Result<Vec<String>, Error> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(10_000);
        let (storage, _) = self.tenant.owned_storage().await?;
        Ok(storage.list(&self.tenant.namespace, prefix, limit).await?)
    }
}
