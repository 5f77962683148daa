//! `baton:plugin/storage`: the tenant's durable key-value store. Each call
//! runs on tokio's blocking pool (redb waits for the disk) while the guest's
//! fiber is suspended, so no worker thread serving sessions ever blocks on it.

use crate::bindings::baton::plugin::storage::{Error, Host};
use crate::instance::state::InstanceState;
use crate::storage::{Storage, StorageError};

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Error {
        match e {
            StorageError::InvalidKey => Error::InvalidKey,
            StorageError::TooLarge => Error::TooLarge,
            StorageError::QuotaExceeded => Error::QuotaExceeded,
            StorageError::Unavailable(why) => Error::Unavailable(why),
        }
    }
}

impl InstanceState {
    /// Runs `f` against the tenant's namespace on the blocking pool. (Not an
    /// `async fn`: the future must not borrow the store's data.)
    fn with_storage<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Storage, &crate::storage::Namespace) -> Result<T, StorageError> + Send + 'static,
    ) -> impl Future<Output = Result<T, Error>> + Send + 'static {
        let storage = self.tenant.storage.clone();
        let namespace = self.tenant.namespace.clone();
        async move {
            let Some(storage) = storage else {
                return Err(Error::Unavailable(
                    "storage is not available while a deploy is checked".into(),
                ));
            };
            tokio::task::spawn_blocking(move || f(&storage, &namespace))
                .await
                .map_err(|e| Error::Unavailable(format!("storage task failed: {e}")))?
                .map_err(Error::from)
        }
    }
}

impl Host for InstanceState {
    async fn get(&mut self, key: String) -> Result<Option<Vec<u8>>, Error> {
        self.with_storage(move |s, ns| s.get(ns, &key)).await
    }

    async fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), Error> {
        let limits = self.limits.storage();
        self.with_storage(move |s, ns| s.set(ns, &key, &value, limits)).await
    }

    async fn delete(&mut self, key: String) -> Result<bool, Error> {
        self.with_storage(move |s, ns| s.delete(ns, &key)).await
    }

    async fn list(&mut self, prefix: String, limit: u32) -> Result<Vec<String>, Error> {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX).min(10_000);
        self.with_storage(move |s, ns| s.list(ns, &prefix, limit)).await
    }
}
