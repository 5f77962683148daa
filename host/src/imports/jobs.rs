//! `baton:plugin/jobs`: the tenant's durable jobs (see [`crate::jobs`]).
//! Each call waits for the storage; writes carry the task's owner token.

use crate::bindings::baton::plugin::jobs::{Error, Host, Options};
use crate::instance::state::InstanceState;
use crate::jobs::policy::{self, Cron, JOB_KEY, MAX_NAME, MAX_PAYLOAD, Retry};
use crate::storage::StorageError;
use crate::storage::jobs::{EnqueueError, JobClass, NewJob, Schedule, Unique};

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Error {
        match e {
            StorageError::Fenced => Error::Unavailable("fenced: this tenant has a newer owner".into()),
            e => Error::Unavailable(e.to_string()),
        }
    }
}

impl From<EnqueueError> for Error {
    fn from(e: EnqueueError) -> Error {
        match e {
            EnqueueError::TooMany => Error::TooMany,
            EnqueueError::Duplicate(id) => Error::Duplicate(id),
            EnqueueError::Storage(e) => e.into(),
        }
    }
}

/// A name (kind, key, schedule) a plugin gave: 1 to 256 bytes.
fn check_name(name: &str) -> Result<(), Error> {
    match name.len() {
        0 => Err(Error::Invalid("a kind, key or name is not empty".into())),
        1..=MAX_NAME => Ok(()),
        _ => Err(Error::TooLarge),
    }
}

impl Host for InstanceState {
    async fn enqueue(&mut self, kind: String, payload: Vec<u8>, options: Options) -> Result<u64, Error> {
        check_name(&kind)?;
        if payload.len() > MAX_PAYLOAD {
            return Err(Error::TooLarge);
        }
        if let Some(key) = &options.unique_key {
            check_name(key)?;
        }
        let retry = options.retry.map_or(policy::DEFAULT_RETRY, |r| {
            Retry {
                max_attempts: r.max_attempts,
                base_delay_ms: r.base_delay_ms,
                max_delay_ms: r.max_delay_ms,
            }
            .bounded()
        });
        let now = crate::clock::unix_ms();
        let job = NewJob {
            class: JobClass::Plugin,
            kind,
            payload,
            run_at_ms: now.saturating_add(options.delay_ms),
            max_attempts: retry.max_attempts,
            base_delay_ms: retry.base_delay_ms,
            max_delay_ms: retry.max_delay_ms,
            timeout_ms: options.timeout_ms,
            unique: options.unique_key.map(|key| Unique {
                key: format!("{JOB_KEY}{key}"),
                until_ms: now.saturating_add(options.unique_for_ms),
                replace: false,
            }),
            schedule: None,
        };
        let max = self.limits.max_jobs;
        let (storage, token) = self.tenant.owned_storage().await?;
        Ok(storage.enqueue(&self.tenant.namespace, token, job, max).await?)
    }

    async fn cancel(&mut self, job: u64) -> Result<bool, Error> {
        let (storage, token) = self.tenant.owned_storage().await?;
        Ok(storage
            .cancel_job(&self.tenant.namespace, Some(token), job, false)
            .await?)
    }

    async fn schedule(&mut self, name: String, cron: String, kind: String, payload: Vec<u8>) -> Result<(), Error> {
        check_name(&name)?;
        check_name(&kind)?;
        if payload.len() > MAX_PAYLOAD {
            return Err(Error::TooLarge);
        }
        let parsed = Cron::parse(&cron).map_err(Error::Invalid)?;
        let next_ms = parsed
            .next_after(crate::clock::unix_ms())
            .ok_or_else(|| Error::Invalid(format!("{cron:?} has no future slot")))?;
        let schedule = Schedule {
            name,
            cron,
            kind,
            payload,
            next_ms,
        };
        let (storage, token) = self.tenant.owned_storage().await?;
        Ok(storage.put_schedule(&self.tenant.namespace, token, schedule).await?)
    }

    async fn unschedule(&mut self, name: String) -> Result<bool, Error> {
        let (storage, token) = self.tenant.owned_storage().await?;
        Ok(storage.remove_schedule(&self.tenant.namespace, token, &name).await?)
    }
}
