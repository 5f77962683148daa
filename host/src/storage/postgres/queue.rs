//! The jobs of the PostgreSQL backend (see [`crate::storage::jobs`]).

use std::collections::HashSet;

use super::Postgres;
use crate::storage::jobs::{Delivery, Endpoint, EnqueueError, Finish, Job, JobId, Lane, NewJob, Schedule};
use crate::storage::namespace::{Namespace, StorageError};

fn not_yet() -> StorageError {
    StorageError::Unavailable("jobs on PostgreSQL are not built yet".into())
}

#[allow(clippy::too_many_arguments, unused_variables)]
impl Postgres {
    pub(in crate::storage) async fn enqueue(
        &self,
        ns: &Namespace,
        token: u64,
        job: NewJob,
        max_pending: u64,
        now_ms: u64,
    ) -> Result<JobId, EnqueueError> {
        Err(not_yet().into())
    }
    pub(in crate::storage) async fn cancel_job(
        &self,
        ns: &Namespace,
        token: Option<u64>,
        id: JobId,
        dead_too: bool,
        now_ms: u64,
    ) -> Result<bool, StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn retry_dead(
        &self,
        ns: &Namespace,
        id: JobId,
        now_ms: u64,
    ) -> Result<bool, StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn scheduled_with_key(
        &self,
        ns: &Namespace,
        key: &str,
    ) -> Result<Option<JobId>, StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn due_namespaces(
        &self,
        lane: Lane,
        now_ms: u64,
        busy: &HashSet<Namespace>,
        limit: usize,
    ) -> Result<Vec<Namespace>, StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn running_namespaces(&self, limit: usize) -> Result<Vec<Namespace>, StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn next_due(&self, lane: Lane) -> Result<Option<u64>, StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn start_job(
        &self,
        ns: &Namespace,
        token: u64,
        lane: Lane,
        now_ms: u64,
    ) -> Result<Option<Job>, StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn finish_job(
        &self,
        ns: &Namespace,
        token: u64,
        id: JobId,
        finish: Finish,
        then: Option<NewJob>,
        now_ms: u64,
    ) -> Result<bool, StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn jobs_of(&self, tenant: &str, limit: usize) -> Result<Vec<Job>, StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn job_totals(&self) -> Result<(u64, u64), StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn put_schedule(
        &self,
        ns: &Namespace,
        token: u64,
        schedule: Schedule,
    ) -> Result<(), StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn remove_schedule(
        &self,
        ns: &Namespace,
        token: u64,
        name: &str,
    ) -> Result<bool, StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn due_schedules(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(Namespace, Schedule)>, StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn fire_schedule(
        &self,
        ns: &Namespace,
        name: &str,
        slot_ms: u64,
        next_ms: u64,
        job: NewJob,
        max_pending: u64,
        now_ms: u64,
    ) -> Result<Result<bool, EnqueueError>, StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn schedules_of(&self, tenant: &str) -> Result<Vec<(String, Schedule)>, StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn put_endpoint(&self, tenant: &str, endpoint: &Endpoint) -> Result<(), StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn remove_endpoint(&self, tenant: &str, name: &str) -> Result<bool, StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn log_delivery(
        &self,
        tenant: &str,
        delivery: &Delivery,
        keep: usize,
    ) -> Result<(), StorageError> {
        Err(not_yet())
    }
    pub(in crate::storage) async fn deliveries(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<Delivery>, StorageError> {
        Err(not_yet())
    }
}
