//! The jobs of the PostgreSQL backend (see [`crate::storage::jobs`]), with
//! the same semantics as redb's (`redb/queue.rs`).
//!
//! | table | key | what |
//! |---|---|---|
//! | `jobs` | `id` (sequence `job_ids`) | a job: its columns, its payload as `bytea` |
//! | `job_counts` | tenant, plugin | jobs not dead: the pending quota |
//! | `job_uniques` | tenant, plugin, key | the job holding a unique key, and until when it blocks |
//! | `job_schedules` | tenant, plugin, name | a schedule and its next slot |
//! | `webhook_endpoints` | tenant, name | a tenant's endpoint |
//! | `webhook_deliveries` | tenant, seq | a delivery attempt's JSON, the last `keep` of a tenant |
//!
//! Ids come from one sequence, so they are unique across every host that
//! shares the database. `jobs` is indexed for the dispatcher (scheduled jobs
//! by lane and run-at), for `start` (scheduled jobs of a namespace by lane,
//! run-at and id), for a claim's rescue (running jobs of a namespace) and
//! for listing and erasing a tenant (tenant, id).
//!
//! **Not under row-level security.** These are the host's own tables, which
//! the dispatcher reads across tenants (due namespaces and schedules, totals);
//! they carry no per-namespace policy as `kv` does. Writes of one namespace
//! still run in its scoped transaction as `baton_kv` (the fenced ones, and a
//! claim's rescue and an erase, which share a transaction with `owners`), so
//! `baton_kv` is granted these tables plainly; every statement names its
//! tenant (and plugin) itself.
//!
//! **Fencing and locks.** Writes by a namespace's owner start with the
//! `owners` fence of every write (`Postgres::write`), which also locks the
//! owner row, so they are serialized per namespace. Writes without a token
//! (a schedule's slot, an operator's cancel or retry) are not; so every
//! write that inserts, removes or kills a job first takes the namespace's
//! `job_counts` row (`COUNT_LOCK`, an upsert: it exists from then on), and
//! only then locks job rows: the pending count, the unique keys and the
//! holder's state it reads hold until it commits. Locks are taken in one
//! order everywhere (the owner row, a schedule's row, the count, job rows;
//! each where the write takes it at all), so no two of these writes
//! deadlock.
//! `start` takes its job with `FOR UPDATE SKIP LOCKED`: starts of one
//! namespace are serialized by the fence already (a second host's start
//! waits on the owner row, then sees the first one's job running), and a job
//! a tokenless write holds at that moment is skipped rather than waited for
//! (it is about to be replaced, cancelled or is merely read as a key's holder;
//! the dispatcher comes back).
//!
//! Each call is one transaction. An insert is decided the way redb's
//! `Tx::insert` decides it, in Rust, on what the first round trip read
//! ([`plan_insert`]); the statements it decides go with the commit.

use std::collections::HashSet;

use deadpool_postgres::Transaction;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use super::{Param, Params, Postgres, params, pipeline};
use crate::storage::jobs::{
    Delivery, Endpoint, EnqueueError, Finish, Job, JobClass, JobId, JobState, Lane, NewJob, Schedule,
};
use crate::storage::namespace::{Namespace, StorageError};

/// The job tables, created at open after `super::SCHEMA` (which makes the
/// schema and `baton_kv`), in the same transaction.
const SCHEMA: &str = r#"
CREATE SEQUENCE IF NOT EXISTS baton.job_ids;
CREATE TABLE IF NOT EXISTS baton.jobs (
    id bigint PRIMARY KEY,
    tenant text NOT NULL, plugin text NOT NULL,
    class text NOT NULL, kind text NOT NULL, payload bytea NOT NULL,
    state text NOT NULL CHECK (state IN ('scheduled', 'running', 'dead')),
    lane smallint NOT NULL, run_at bigint NOT NULL,
    attempt bigint NOT NULL, max_attempts bigint NOT NULL,
    base_delay_ms bigint NOT NULL, max_delay_ms bigint NOT NULL, timeout_ms bigint,
    unique_key text, enqueued_ms bigint NOT NULL, last_error text,
    token bigint NOT NULL, schedule text);
CREATE INDEX IF NOT EXISTS jobs_due ON baton.jobs (lane, run_at) WHERE state = 'scheduled';
CREATE INDEX IF NOT EXISTS jobs_namespace_due ON baton.jobs (tenant, plugin, lane, run_at, id)
    WHERE state = 'scheduled';
CREATE INDEX IF NOT EXISTS jobs_running ON baton.jobs (tenant, plugin) WHERE state = 'running';
CREATE INDEX IF NOT EXISTS jobs_tenant ON baton.jobs (tenant, id);
CREATE TABLE IF NOT EXISTS baton.job_counts (
    tenant text NOT NULL, plugin text NOT NULL, pending bigint NOT NULL, PRIMARY KEY (tenant, plugin));
CREATE TABLE IF NOT EXISTS baton.job_uniques (
    tenant text NOT NULL, plugin text NOT NULL, key text NOT NULL,
    id bigint NOT NULL, until_ms bigint NOT NULL, PRIMARY KEY (tenant, plugin, key));
CREATE TABLE IF NOT EXISTS baton.job_schedules (
    tenant text NOT NULL, plugin text NOT NULL, name text NOT NULL,
    cron text NOT NULL, kind text NOT NULL, payload bytea NOT NULL, next_ms bigint NOT NULL,
    PRIMARY KEY (tenant, plugin, name));
CREATE INDEX IF NOT EXISTS job_schedules_due ON baton.job_schedules (next_ms);
CREATE TABLE IF NOT EXISTS baton.webhook_endpoints (
    tenant text NOT NULL, name text NOT NULL, url text NOT NULL, secret text NOT NULL,
    enabled boolean NOT NULL, failing_since_ms bigint, disabled_reason text,
    PRIMARY KEY (tenant, name));
CREATE TABLE IF NOT EXISTS baton.webhook_deliveries (
    tenant text NOT NULL, seq bigint GENERATED ALWAYS AS IDENTITY, entry jsonb NOT NULL,
    PRIMARY KEY (tenant, seq));
GRANT SELECT, INSERT, UPDATE, DELETE ON baton.jobs, baton.job_counts, baton.job_uniques,
    baton.job_schedules, baton.webhook_endpoints, baton.webhook_deliveries TO baton_kv;
GRANT USAGE ON SEQUENCE baton.job_ids TO baton_kv;
"#;

/// The columns of a job, in [`job_of`]'s terms.
macro_rules! job_columns {
    () => {
        "id, tenant, plugin, class, kind, payload, state, run_at, attempt, max_attempts, base_delay_ms, \
         max_delay_ms, timeout_ms, unique_key, enqueued_ms, last_error, token, schedule"
    };
}

/// The namespace's job lock and its pending count (see the module doc).
const COUNT_LOCK: &str = "INSERT INTO baton.job_counts (tenant, plugin, pending) VALUES ($1, $2, 0)
     ON CONFLICT (tenant, plugin) DO UPDATE SET pending = baton.job_counts.pending RETURNING pending";
const COUNT_ADD: &str =
    "UPDATE baton.job_counts SET pending = greatest(pending + $3, 0) WHERE tenant = $1 AND plugin = $2";
/// The job holding a unique key, and until when.
const HOLDER: &str = "SELECT id, until_ms FROM baton.job_uniques WHERE tenant = $1 AND plugin = $2 AND key = $3";
/// The state of that job, locked.
const HOLDER_STATE: &str = "SELECT state FROM baton.jobs WHERE tenant = $1 AND plugin = $2
     AND id = (SELECT id FROM baton.job_uniques WHERE tenant = $1 AND plugin = $2 AND key = $3) FOR UPDATE";
const NEXT_ID: &str = "SELECT nextval('baton.job_ids')";
const TAKE_KEY: &str = "INSERT INTO baton.job_uniques (tenant, plugin, key, id, until_ms) VALUES ($1, $2, $3, $4, $5)
     ON CONFLICT (tenant, plugin, key) DO UPDATE SET id = EXCLUDED.id, until_ms = EXCLUDED.until_ms";
/// Drops the key of a job that ended, unless its period still runs.
const RELEASE_KEY: &str = "DELETE FROM baton.job_uniques
     WHERE tenant = $1 AND plugin = $2 AND key = $3 AND id = $4 AND until_ms <= $5";
const INSERT_JOB: &str = concat!(
    "INSERT INTO baton.jobs (",
    job_columns!(),
    ", lane) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19)"
);
const JOB_FOR_UPDATE: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM baton.jobs WHERE tenant = $1 AND plugin = $2 AND id = $3 FOR UPDATE"
);
/// Writes what an attempt's end or an operator's retry changes of a job.
const STORE_JOB: &str = "UPDATE baton.jobs SET state = $4, run_at = $5, attempt = $6, last_error = $7, token = $8
     WHERE tenant = $1 AND plugin = $2 AND id = $3";
const DELETE_JOB: &str = "DELETE FROM baton.jobs WHERE tenant = $1 AND plugin = $2 AND id = $3";
/// Starts the namespace's earliest due job of a lane.
const START: &str = concat!(
    "UPDATE baton.jobs SET state = 'running', attempt = attempt + 1, token = $4
     WHERE id = (SELECT id FROM baton.jobs
                 WHERE tenant = $1 AND plugin = $2 AND lane = $3 AND state = 'scheduled' AND run_at <= $5
                 ORDER BY run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
     RETURNING ",
    job_columns!()
);
/// What a claim does to the jobs an older owner left running.
const RESCUE: &str = "UPDATE baton.jobs SET state = 'scheduled', run_at = $4, last_error = $5
     WHERE tenant = $1 AND plugin = $2 AND state = 'running' AND token < $3";
const SCHEDULED_WITH_KEY: &str = "SELECT u.id FROM baton.job_uniques u JOIN baton.jobs j ON j.id = u.id
     WHERE u.tenant = $1 AND u.plugin = $2 AND u.key = $3 AND j.state = 'scheduled'";
/// Namespaces with a due job of a lane, earliest first (ties in redb's key
/// order), but the busy ones (`$3`, `$4`: their tenants and plugins).
const DUE_NAMESPACES: &str = r#"SELECT tenant, plugin FROM baton.jobs
     WHERE lane = $1 AND state = 'scheduled' AND run_at <= $2
       AND (tenant, plugin) NOT IN (SELECT * FROM unnest($3::text[], $4::text[]))
     GROUP BY tenant, plugin
     ORDER BY min(run_at), tenant COLLATE "C", plugin COLLATE "C" LIMIT $5"#;
const RUNNING_NAMESPACES: &str = "SELECT DISTINCT tenant, plugin FROM baton.jobs WHERE state = 'running' LIMIT $1";
const NEXT_DUE: &str = "SELECT min(run_at) FROM baton.jobs WHERE lane = $1 AND state = 'scheduled'";
const JOBS_OF: &str = concat!(
    "SELECT ",
    job_columns!(),
    " FROM baton.jobs WHERE tenant = $1 ORDER BY id LIMIT $2"
);
const JOB_TOTALS: &str = "SELECT (SELECT count(*) FROM baton.jobs WHERE state = 'scheduled'),
     (SELECT count(*) FROM baton.jobs WHERE state = 'running')";
/// Declares a schedule: an identical one (cron, kind, payload) keeps its slot.
const PUT_SCHEDULE: &str = "INSERT INTO baton.job_schedules (tenant, plugin, name, cron, kind, payload, next_ms)
     VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (tenant, plugin, name) DO UPDATE
     SET cron = EXCLUDED.cron, kind = EXCLUDED.kind, payload = EXCLUDED.payload, next_ms = EXCLUDED.next_ms
     WHERE (baton.job_schedules.cron, baton.job_schedules.kind, baton.job_schedules.payload)
           IS DISTINCT FROM (EXCLUDED.cron, EXCLUDED.kind, EXCLUDED.payload)";
const REMOVE_SCHEDULE: &str =
    "DELETE FROM baton.job_schedules WHERE tenant = $1 AND plugin = $2 AND name = $3 RETURNING name";
const DUE_SCHEDULES: &str = r#"SELECT tenant, plugin, name, cron, kind, payload, next_ms FROM baton.job_schedules
     WHERE next_ms <= $1
     ORDER BY next_ms, tenant COLLATE "C", plugin COLLATE "C", name COLLATE "C" LIMIT $2"#;
/// A schedule's slot, taken: compare-and-set on `next_ms`.
const FIRE: &str = "UPDATE baton.job_schedules SET next_ms = $5
     WHERE tenant = $1 AND plugin = $2 AND name = $3 AND next_ms = $4 RETURNING name";
const SCHEDULES_OF: &str = r#"SELECT tenant, plugin, name, cron, kind, payload, next_ms FROM baton.job_schedules
     WHERE tenant = $1 ORDER BY plugin COLLATE "C", name COLLATE "C""#;
const PUT_ENDPOINT: &str = "INSERT INTO baton.webhook_endpoints
     (tenant, name, url, secret, enabled, failing_since_ms, disabled_reason) VALUES ($1, $2, $3, $4, $5, $6, $7)
     ON CONFLICT (tenant, name) DO UPDATE SET url = EXCLUDED.url, secret = EXCLUDED.secret,
     enabled = EXCLUDED.enabled, failing_since_ms = EXCLUDED.failing_since_ms,
     disabled_reason = EXCLUDED.disabled_reason";
const REMOVE_ENDPOINT: &str = "DELETE FROM baton.webhook_endpoints WHERE tenant = $1 AND name = $2 RETURNING name";
const ENDPOINTS: &str = r#"SELECT name, url, secret, enabled, failing_since_ms, disabled_reason
     FROM baton.webhook_endpoints WHERE tenant = $1 ORDER BY name COLLATE "C""#;
const LOG_DELIVERY: &str = "INSERT INTO baton.webhook_deliveries (tenant, entry) VALUES ($1, $2::text::jsonb)";
/// Drops all but the last `$2` deliveries of a tenant.
const TRIM_DELIVERIES: &str = "DELETE FROM baton.webhook_deliveries WHERE tenant = $1 AND seq <=
     (SELECT seq FROM baton.webhook_deliveries WHERE tenant = $1 ORDER BY seq DESC OFFSET $2 LIMIT 1)";
const DELIVERIES: &str =
    "SELECT entry::text FROM baton.webhook_deliveries WHERE tenant = $1 ORDER BY seq DESC LIMIT $2";

/// Why a rescued job's attempt ended.
const ORPHANED: &str = "its owner ended during the attempt";

/// A statement a write decides on.
type Write = (&'static str, Vec<Param>);

/// A `u64` as a `bigint`: times, delays, ids and tokens stay far below
/// `i64::MAX`; a larger one is kept as that.
fn big(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A `bigint` column as a `u64` (never negative: see [`big`]).
fn unsigned(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A `bigint` column that holds a `u32`.
fn small(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn sql_limit(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

fn unreadable(what: impl std::fmt::Display) -> StorageError {
    StorageError::Unavailable(format!("a stored job is unreadable: {what}"))
}

fn job_of(row: &Row) -> Result<Job, StorageError> {
    let class: &str = row.get("class");
    let state: &str = row.get("state");
    Ok(Job {
        id: unsigned(row.get("id")),
        tenant: row.get("tenant"),
        plugin: row.get("plugin"),
        class: JobClass::parse(class).ok_or_else(|| unreadable(format!("class {class:?}")))?,
        kind: row.get("kind"),
        payload: row.get("payload"),
        state: state_of(state)?,
        run_at_ms: unsigned(row.get("run_at")),
        attempt: small(row.get("attempt")),
        max_attempts: small(row.get("max_attempts")),
        base_delay_ms: unsigned(row.get("base_delay_ms")),
        max_delay_ms: unsigned(row.get("max_delay_ms")),
        timeout_ms: row.get::<_, Option<i64>>("timeout_ms").map(small),
        unique_key: row.get("unique_key"),
        enqueued_ms: unsigned(row.get("enqueued_ms")),
        last_error: row.get("last_error"),
        token: unsigned(row.get("token")),
        schedule: row.get("schedule"),
    })
}

fn state_of(name: &str) -> Result<JobState, StorageError> {
    JobState::parse(name).ok_or_else(|| unreadable(format!("state {name:?}")))
}

fn schedule_of(row: &Row) -> Schedule {
    Schedule {
        name: row.get("name"),
        cron: row.get("cron"),
        kind: row.get("kind"),
        payload: row.get("payload"),
        next_ms: unsigned(row.get("next_ms")),
    }
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, StorageError> {
    serde_json::to_string(value).map_err(|e| StorageError::Unavailable(format!("cannot encode: {e}")))
}

/// `job`'s row as [`INSERT_JOB`] takes it.
fn insert_job(job: &Job) -> Write {
    let params = params![
        big(job.id),
        job.tenant.clone(),
        job.plugin.clone(),
        job.class.name(),
        job.kind.clone(),
        job.payload.clone(),
        job.state.name(),
        big(job.run_at_ms),
        i64::from(job.attempt),
        i64::from(job.max_attempts),
        big(job.base_delay_ms),
        big(job.max_delay_ms),
        job.timeout_ms.map(i64::from),
        job.unique_key.clone(),
        big(job.enqueued_ms),
        job.last_error.clone(),
        big(job.token),
        job.schedule.clone(),
        i16::from(job.class.lane().number()),
    ];
    (INSERT_JOB, params)
}

/// What [`STORE_JOB`] writes of `job`.
fn store_job(job: &Job) -> Write {
    let params = params![
        job.tenant.clone(),
        job.plugin.clone(),
        big(job.id),
        job.state.name(),
        big(job.run_at_ms),
        i64::from(job.attempt),
        job.last_error.clone(),
        big(job.token),
    ];
    (STORE_JOB, params)
}

fn count_add(ns: &Namespace, delta: i64) -> Write {
    (COUNT_ADD, params![ns.tenant.clone(), ns.plugin.clone(), delta])
}

/// Drops `job`'s unique key if it still holds it and its period is over.
fn release_key(job: &Job, now_ms: u64) -> Option<Write> {
    let key = job.unique_key.clone()?;
    let params = params![job.tenant.clone(), job.plugin.clone(), key, big(job.id), big(now_ms)];
    Some((RELEASE_KEY, params))
}

/// Removes a job that is not running (redb's `Tx::remove`).
fn remove_job(ns: &Namespace, job: &Job, now_ms: u64) -> Vec<Write> {
    let mut writes = vec![(DELETE_JOB, params![ns.tenant.clone(), ns.plugin.clone(), big(job.id)])];
    if job.state != JobState::Dead {
        writes.push(count_add(ns, -1));
    }
    writes.extend(release_key(job, now_ms));
    writes
}

/// What an insert knows of its namespace, read after `COUNT_LOCK`.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// Jobs not dead.
    pending: u64,
    /// The job holding the new job's unique key.
    holder: Option<Holder>,
}

#[derive(Debug, Clone, Copy)]
struct Holder {
    id: JobId,
    until_ms: u64,
    /// `None`: the job is gone (its key blocks until `until_ms`).
    state: Option<JobState>,
}

/// The reads an insert of a job with a unique key decides on, in this
/// order: `COUNT_LOCK` (first: it is the lock), the key's holder and its
/// state (locked), a new id.
struct InsertReads<'a> {
    namespace: [&'a (dyn ToSql + Sync); 2],
    key: [&'a (dyn ToSql + Sync); 3],
}

impl<'a> InsertReads<'a> {
    fn new(ns: &'a Namespace, key: &'a Option<String>) -> InsertReads<'a> {
        InsertReads {
            namespace: [&ns.tenant, &ns.plugin],
            key: [&ns.tenant, &ns.plugin, key],
        }
    }

    fn statements(&self) -> [(&'static str, Params<'_>); 4] {
        [
            (COUNT_LOCK, &self.namespace),
            (HOLDER, &self.key),
            (HOLDER_STATE, &self.key),
            (NEXT_ID, &[]),
        ]
    }
}

/// What [`InsertReads`] read: `count` is `COUNT_LOCK`'s rows, `rest` the
/// others'.
fn seen(count: &[Row], rest: &[Vec<Row>]) -> Result<(Seen, JobId), StorageError> {
    let pending = count.first().map_or(0, |r| unsigned(r.get(0)));
    let holder = match rest[0].first() {
        Some(row) => Some(Holder {
            id: unsigned(row.get(0)),
            until_ms: unsigned(row.get(1)),
            state: rest[1].first().map(|r| state_of(r.get(0))).transpose()?,
        }),
        None => None,
    };
    let id = rest[2]
        .first()
        .map(|r| unsigned(r.get(0)))
        .ok_or_else(|| StorageError::Unavailable("no job id".into()))?;
    Ok((Seen { pending, holder }, id))
}

/// Decides an insert as redb's `Tx::insert` does, before anything is
/// written: the statements that make it, or why it is refused (which then
/// writes nothing). `max_pending` `None`: no quota (a finished job's
/// follow-up).
fn plan_insert(
    ns: &Namespace,
    new: NewJob,
    id: JobId,
    seen: Seen,
    max_pending: Option<u64>,
    now_ms: u64,
) -> Result<Vec<Write>, EnqueueError> {
    let mut replaced = None;
    if let (Some(unique), Some(held)) = (&new.unique, seen.holder) {
        match held.state {
            Some(JobState::Scheduled) if unique.replace => replaced = Some(held.id),
            // Running (a timer set again from its own `on-timer`): the key
            // moves on to the new job.
            Some(_) if unique.replace => {}
            Some(state) if state != JobState::Dead => return Err(EnqueueError::Duplicate(held.id)),
            _ if held.until_ms > now_ms && !unique.replace => return Err(EnqueueError::Duplicate(held.id)),
            _ => {}
        }
    }
    // The job it replaces makes room for it.
    let pending = seen.pending.saturating_sub(u64::from(replaced.is_some()));
    if max_pending.is_some_and(|max| pending >= max) {
        return Err(EnqueueError::TooMany);
    }
    let mut writes = Vec::new();
    if let Some(old) = replaced {
        // Its key is taken over below.
        writes.push((DELETE_JOB, params![ns.tenant.clone(), ns.plugin.clone(), big(old)]));
    } else {
        writes.push(count_add(ns, 1));
    }
    let unique = new.unique.clone();
    let job = Job::from_new(id, &ns.tenant, &ns.plugin, new, now_ms);
    writes.push(insert_job(&job));
    if let Some(unique) = unique {
        let params = params![
            ns.tenant.clone(),
            ns.plugin.clone(),
            unique.key,
            big(id),
            big(unique.until_ms)
        ];
        writes.push((TAKE_KEY, params));
    }
    Ok(writes)
}

/// Puts the jobs of `ns` running under a token older than `token` back to
/// due now, in a claim's transaction.
async fn rescue(txn: &Transaction<'_>, ns: &Namespace, token: u64) -> Result<(), StorageError> {
    let now = big(crate::clock::unix_ms());
    let statement = txn.prepare_cached(RESCUE).await?;
    txn.execute(&statement, &[&ns.tenant, &ns.plugin, &big(token), &now, &ORPHANED])
        .await?;
    Ok(())
}

/// Erases the jobs, schedules, endpoints and delivery log of `tenant`, in
/// an erase's transaction (in the lock order of the module doc).
async fn erase(txn: &Transaction<'_>, tenant: &str) -> Result<(), StorageError> {
    for table in [
        "job_schedules",
        "job_counts",
        "job_uniques",
        "jobs",
        "webhook_endpoints",
        "webhook_deliveries",
    ] {
        txn.execute(&format!("DELETE FROM baton.{table} WHERE tenant = $1"), &[&tenant])
            .await?;
    }
    Ok(())
}

impl Postgres {
    /// One statement outside any namespace's scope (the host's role: these
    /// tables have no row-level security).
    async fn query(&self, sql: &str, params: Params<'_>) -> Result<Vec<Row>, StorageError> {
        let client = self.client().await?;
        let mut rows = pipeline(&client, None, &[(sql, params)], None).await?;
        Ok(rows.pop().unwrap_or_default())
    }

    pub(crate) async fn enqueue(
        &self,
        ns: &Namespace,
        token: u64,
        job: NewJob,
        max_pending: u64,
        now_ms: u64,
    ) -> Result<JobId, EnqueueError> {
        let key = job.unique.as_ref().map(|u| u.key.clone());
        let reads = InsertReads::new(ns, &key);
        let id = self
            .write(ns, token, &reads.statements(), |rows| {
                let (seen, id) = seen(&rows[0], &rows[1..])?;
                Ok(match plan_insert(ns, job, id, seen, Some(max_pending), now_ms) {
                    Ok(writes) => (Ok(id), writes),
                    Err(refused) => (Err(refused), Vec::new()),
                })
            })
            .await??;
        Ok(id)
    }

    pub(crate) async fn cancel_job(
        &self,
        ns: &Namespace,
        token: Option<u64>,
        id: JobId,
        dead_too: bool,
        now_ms: u64,
    ) -> Result<bool, StorageError> {
        let id = big(id);
        let first: [(&str, Params<'_>); 2] = [
            (COUNT_LOCK, &[&ns.tenant, &ns.plugin]),
            (JOB_FOR_UPDATE, &[&ns.tenant, &ns.plugin, &id]),
        ];
        self.transact(ns, token, &first, |rows| {
            match rows[1].first().map(job_of).transpose()? {
                Some(job) if job.state == JobState::Scheduled || (dead_too && job.state == JobState::Dead) => {
                    Ok((true, remove_job(ns, &job, now_ms)))
                }
                _ => Ok((false, Vec::new())),
            }
        })
        .await
    }

    pub(crate) async fn retry_dead(
        &self,
        ns: &Namespace,
        id: JobId,
        now_ms: u64,
    ) -> Result<bool, StorageError> {
        let id = big(id);
        let first: [(&str, Params<'_>); 2] = [
            (COUNT_LOCK, &[&ns.tenant, &ns.plugin]),
            (JOB_FOR_UPDATE, &[&ns.tenant, &ns.plugin, &id]),
        ];
        self.transact(ns, None, &first, |rows| {
            match rows[1].first().map(job_of).transpose()? {
                Some(mut job) if job.state == JobState::Dead => {
                    job.state = JobState::Scheduled;
                    job.attempt = 0;
                    job.run_at_ms = now_ms;
                    Ok((true, vec![store_job(&job), count_add(ns, 1)]))
                }
                _ => Ok((false, Vec::new())),
            }
        })
        .await
    }

    pub(crate) async fn scheduled_with_key(
        &self,
        ns: &Namespace,
        key: &str,
    ) -> Result<Option<JobId>, StorageError> {
        let rows = self
            .read(ns, &[(SCHEDULED_WITH_KEY, &[&ns.tenant, &ns.plugin, &key])])
            .await?;
        Ok(rows[0].first().map(|r| unsigned(r.get(0))))
    }

    pub(crate) async fn due_namespaces(
        &self,
        lane: Lane,
        now_ms: u64,
        busy: &HashSet<Namespace>,
        limit: usize,
    ) -> Result<Vec<Namespace>, StorageError> {
        let tenants: Vec<&str> = busy.iter().map(|ns| ns.tenant.as_str()).collect();
        let plugins: Vec<&str> = busy.iter().map(|ns| ns.plugin.as_str()).collect();
        let lane = i16::from(lane.number());
        let rows = self
            .query(
                DUE_NAMESPACES,
                &[&lane, &big(now_ms), &tenants, &plugins, &sql_limit(limit)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Namespace::new(r.get("tenant"), r.get("plugin")))
            .collect())
    }

    pub(crate) async fn running_namespaces(&self, limit: usize) -> Result<Vec<Namespace>, StorageError> {
        let rows = self.query(RUNNING_NAMESPACES, &[&sql_limit(limit)]).await?;
        Ok(rows
            .iter()
            .map(|r| Namespace::new(r.get("tenant"), r.get("plugin")))
            .collect())
    }

    pub(crate) async fn next_due(&self, lane: Lane) -> Result<Option<u64>, StorageError> {
        let rows = self.query(NEXT_DUE, &[&i16::from(lane.number())]).await?;
        Ok(rows.first().and_then(|r| r.get::<_, Option<i64>>(0)).map(unsigned))
    }

    pub(crate) async fn start_job(
        &self,
        ns: &Namespace,
        token: u64,
        lane: Lane,
        now_ms: u64,
    ) -> Result<Option<Job>, StorageError> {
        let (lane, held, now) = (i16::from(lane.number()), big(token), big(now_ms));
        let first: [(&str, Params<'_>); 1] = [(START, &[&ns.tenant, &ns.plugin, &lane, &held, &now])];
        self.write(ns, token, &first, |rows| {
            let job = rows[0].first().map(job_of).transpose()?;
            Ok((job, Vec::new()))
        })
        .await
    }

    pub(crate) async fn finish_job(
        &self,
        ns: &Namespace,
        token: u64,
        id: JobId,
        finish: Finish,
        then: Option<NewJob>,
        now_ms: u64,
    ) -> Result<bool, StorageError> {
        let job_id = big(id);
        let key = then.as_ref().and_then(|t| t.unique.as_ref()).map(|u| u.key.clone());
        let reads = InsertReads::new(ns, &key);
        let reads = reads.statements();
        let job_params: [&(dyn ToSql + Sync); 3] = [&ns.tenant, &ns.plugin, &job_id];
        // The count lock comes before any job row is locked.
        let mut first = vec![reads[0], (JOB_FOR_UPDATE, &job_params[..])];
        if then.is_some() {
            first.extend_from_slice(&reads[1..]);
        }
        self.write(ns, token, &first, |rows| {
            let Some(mut job) = rows[1].first().map(job_of).transpose()? else {
                return Ok((false, Vec::new()));
            };
            if job.state != JobState::Running || job.token != token {
                return Ok((false, Vec::new()));
            }
            let mut writes = Vec::new();
            // What the job is once this commits (`None`: gone), and
            // whether it gives its unique key up.
            let (after, gives_up_key) = match finish {
                Finish::Done => {
                    job.state = JobState::Scheduled;
                    writes.extend(remove_job(ns, &job, now_ms));
                    (None, true)
                }
                Finish::Retry { run_at_ms, error } => {
                    job.state = JobState::Scheduled;
                    job.run_at_ms = run_at_ms;
                    job.last_error = Some(error);
                    writes.push(store_job(&job));
                    (Some(JobState::Scheduled), false)
                }
                Finish::Snooze { run_at_ms } => {
                    job.state = JobState::Scheduled;
                    job.run_at_ms = run_at_ms;
                    job.attempt = job.attempt.saturating_sub(1);
                    writes.push(store_job(&job));
                    (Some(JobState::Scheduled), false)
                }
                Finish::Dead { error } => {
                    job.state = JobState::Dead;
                    job.last_error = Some(error);
                    writes.push(store_job(&job));
                    writes.push(count_add(ns, -1));
                    writes.extend(release_key(&job, now_ms));
                    (Some(JobState::Dead), true)
                }
            };
            if let Some(then) = then {
                let (mut seen, then_id) = seen(&rows[0], &rows[2..])?;
                // The follow-up sees the job as this attempt's end leaves it.
                if let Some(held) = seen.holder.as_mut().filter(|h| h.id == job.id) {
                    if gives_up_key && held.until_ms <= now_ms {
                        seen.holder = None;
                    } else {
                        held.state = after;
                    }
                }
                match plan_insert(ns, then, then_id, seen, None, now_ms) {
                    Ok(more) => writes.extend(more),
                    Err(e) => tracing::warn!(job = id, "the job's follow-up was not enqueued: {e}"),
                }
            }
            Ok((true, writes))
        })
        .await
    }

    pub(crate) async fn jobs_of(&self, tenant: &str, limit: usize) -> Result<Vec<Job>, StorageError> {
        let rows = self.query(JOBS_OF, &[&tenant, &sql_limit(limit)]).await?;
        rows.iter().map(job_of).collect()
    }

    pub(crate) async fn job_totals(&self) -> Result<(u64, u64), StorageError> {
        let rows = self.query(JOB_TOTALS, &[]).await?;
        let row = rows
            .first()
            .ok_or_else(|| StorageError::Unavailable("no totals".into()))?;
        Ok((unsigned(row.get(0)), unsigned(row.get(1))))
    }

    pub(crate) async fn put_schedule(
        &self,
        ns: &Namespace,
        token: u64,
        schedule: Schedule,
    ) -> Result<(), StorageError> {
        self.write(ns, token, &[], |_| {
            let params = params![
                ns.tenant.clone(),
                ns.plugin.clone(),
                schedule.name,
                schedule.cron,
                schedule.kind,
                schedule.payload,
                big(schedule.next_ms),
            ];
            Ok(((), vec![(PUT_SCHEDULE, params)]))
        })
        .await
    }

    pub(crate) async fn remove_schedule(
        &self,
        ns: &Namespace,
        token: u64,
        name: &str,
    ) -> Result<bool, StorageError> {
        let first: [(&str, Params<'_>); 1] = [(REMOVE_SCHEDULE, &[&ns.tenant, &ns.plugin, &name])];
        self.write(ns, token, &first, |rows| Ok((!rows[0].is_empty(), Vec::new())))
            .await
    }

    pub(crate) async fn due_schedules(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(Namespace, Schedule)>, StorageError> {
        let rows = self.query(DUE_SCHEDULES, &[&big(now_ms), &sql_limit(limit)]).await?;
        Ok(rows
            .iter()
            .map(|r| (Namespace::new(r.get("tenant"), r.get("plugin")), schedule_of(r)))
            .collect())
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn fire_schedule(
        &self,
        ns: &Namespace,
        name: &str,
        slot_ms: u64,
        next_ms: u64,
        job: NewJob,
        max_pending: u64,
        now_ms: u64,
    ) -> Result<Result<bool, EnqueueError>, StorageError> {
        let (slot, next) = (big(slot_ms), big(next_ms));
        let key = job.unique.as_ref().map(|u| u.key.clone());
        let reads = InsertReads::new(ns, &key);
        // The schedule's row first, then the count: the lock order.
        let cas: (&str, Params<'_>) = (FIRE, &[&ns.tenant, &ns.plugin, &name, &slot, &next]);
        let first: Vec<(&str, Params<'_>)> = std::iter::once(cas).chain(reads.statements()).collect();
        self.transact(ns, None, &first, |rows| {
            if rows[0].is_empty() {
                return Ok((Ok(false), Vec::new()));
            }
            let (seen, id) = seen(&rows[1], &rows[2..])?;
            Ok(match plan_insert(ns, job, id, seen, Some(max_pending), now_ms) {
                Ok(writes) => (Ok(true), writes),
                // The slot is taken all the same.
                Err(refused) => (Err(refused), Vec::new()),
            })
        })
        .await
    }

    pub(crate) async fn schedules_of(&self, tenant: &str) -> Result<Vec<(String, Schedule)>, StorageError> {
        let rows = self.query(SCHEDULES_OF, &[&tenant]).await?;
        Ok(rows.iter().map(|r| (r.get("plugin"), schedule_of(r))).collect())
    }

    pub(crate) async fn put_endpoint(&self, tenant: &str, endpoint: &Endpoint) -> Result<(), StorageError> {
        let failing_since = endpoint.failing_since_ms.map(big);
        let params: [&(dyn ToSql + Sync); 7] = [
            &tenant,
            &endpoint.name,
            &endpoint.url,
            &endpoint.secret,
            &endpoint.enabled,
            &failing_since,
            &endpoint.disabled_reason,
        ];
        self.query(PUT_ENDPOINT, &params).await?;
        Ok(())
    }

    pub(crate) async fn remove_endpoint(&self, tenant: &str, name: &str) -> Result<bool, StorageError> {
        let rows = self.query(REMOVE_ENDPOINT, &[&tenant, &name]).await?;
        Ok(!rows.is_empty())
    }

    pub(crate) async fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, StorageError> {
        let rows = self.query(ENDPOINTS, &[&tenant]).await?;
        Ok(rows
            .iter()
            .map(|r| Endpoint {
                name: r.get("name"),
                url: r.get("url"),
                secret: r.get("secret"),
                enabled: r.get("enabled"),
                failing_since_ms: r.get::<_, Option<i64>>("failing_since_ms").map(unsigned),
                disabled_reason: r.get("disabled_reason"),
            })
            .collect())
    }

    pub(crate) async fn log_delivery(
        &self,
        tenant: &str,
        delivery: &Delivery,
        keep: usize,
    ) -> Result<(), StorageError> {
        let entry = json(delivery)?;
        let keep = sql_limit(keep);
        let client = self.client().await?;
        let statements: [(&str, Params<'_>); 2] =
            [(LOG_DELIVERY, &[&tenant, &entry]), (TRIM_DELIVERIES, &[&tenant, &keep])];
        pipeline(&client, Some("BEGIN"), &statements, Some("COMMIT")).await?;
        Ok(())
    }

    pub(crate) async fn deliveries(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<Delivery>, StorageError> {
        let rows = self.query(DELIVERIES, &[&tenant, &sql_limit(limit)]).await?;
        rows.iter()
            .map(|r| {
                serde_json::from_str(r.get(0))
                    .map_err(|e| StorageError::Unavailable(format!("a stored delivery is unreadable: {e}")))
            })
            .collect()
    }
}

/// What `postgres.rs` calls, as associated items of [`Postgres`]: it names
/// no path into this file, which names its `Postgres` (no circle).
impl Postgres {
    /// The job tables, created at open after the others.
    pub(super) const JOB_SCHEMA: &str = SCHEMA;

    /// Puts the jobs of `ns` running under a token older than `token` back
    /// to due now, in a claim's transaction.
    pub(super) async fn rescue_jobs(txn: &Transaction<'_>, ns: &Namespace, token: u64) -> Result<(), StorageError> {
        rescue(txn, ns, token).await
    }

    /// Erases the jobs, schedules, endpoints and delivery log of `tenant`,
    /// in an erase's transaction.
    pub(super) async fn erase_jobs(txn: &Transaction<'_>, tenant: &str) -> Result<(), StorageError> {
        erase(txn, tenant).await
    }
}
