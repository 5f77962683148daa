//! The jobs of the embedded backend (see [`crate::storage::jobs`]): tables
//! keyed by byte strings that sort the way they are read.
//!
//! | table | key | value |
//! |---|---|---|
//! | `jobs` | ns, id | (the job's JSON, its payload) |
//! | `job_due` | lane, run-at, ns, id | (): scheduled jobs, earliest first, for the dispatcher |
//! | `job_ns_due` | ns, lane, run-at, id | (): the same per namespace, for `start` |
//! | `job_running` | ns, id | the token its attempt runs under: what a claim rescues |
//! | `job_unique` | ns, key | (job id, blocks until) |
//! | `job_counts` | ns | jobs not dead: the pending quota |
//! | `schedules`, `schedule_due` | ns, name / next, ns, name | the schedule's JSON / () |
//! | `webhook_endpoints`, `webhook_deliveries` | tenant, name / tenant, seq | JSON |
//!
//! `ns` is `tenant \0 plugin \0` (names hold no `\0`); numbers are
//! big-endian, so byte order is numeric order.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition, WriteTransaction};

use super::{Redb, fence, prefix};
use crate::storage::jobs::{Delivery, Endpoint, EnqueueError, Finish, Job, JobId, JobState, Lane, NewJob, Schedule};
use crate::storage::namespace::{Namespace, StorageError};

const JOBS: TableDefinition<&[u8], (&str, &[u8])> = TableDefinition::new("jobs");
const JOB_DUE: TableDefinition<&[u8], ()> = TableDefinition::new("job_due");
const JOB_NS_DUE: TableDefinition<&[u8], ()> = TableDefinition::new("job_ns_due");
const JOB_RUNNING: TableDefinition<&[u8], u64> = TableDefinition::new("job_running");
const JOB_UNIQUE: TableDefinition<&[u8], (u64, u64)> = TableDefinition::new("job_unique");
const JOB_COUNTS: TableDefinition<&[u8], u64> = TableDefinition::new("job_counts");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const SCHEDULES: TableDefinition<&[u8], &str> = TableDefinition::new("schedules");
const SCHEDULE_DUE: TableDefinition<&[u8], ()> = TableDefinition::new("schedule_due");
const ENDPOINTS: TableDefinition<&[u8], &str> = TableDefinition::new("webhook_endpoints");
const DELIVERIES: TableDefinition<&[u8], &str> = TableDefinition::new("webhook_deliveries");

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn job_key(ns: &[u8], id: JobId) -> Vec<u8> {
    cat(&[ns, &id.to_be_bytes()])
}

fn due_key(job: &Job, ns: &[u8]) -> Vec<u8> {
    cat(&[
        &[job.class.lane().number()],
        &job.run_at_ms.to_be_bytes(),
        ns,
        &job.id.to_be_bytes(),
    ])
}

fn ns_due_key(job: &Job, ns: &[u8]) -> Vec<u8> {
    cat(&[
        ns,
        &[job.class.lane().number()],
        &job.run_at_ms.to_be_bytes(),
        &job.id.to_be_bytes(),
    ])
}

/// The prefix of a tenant's keys: `tenant \0`.
fn tenant_prefix(tenant: &str) -> Vec<u8> {
    cat(&[tenant.as_bytes(), &[0]])
}

/// `(start, end)` of the keys starting with `prefix`.
fn span(prefix: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut end = prefix.to_vec();
    end.push(0xff);
    (prefix.to_vec(), end)
}

/// The namespace a key starts with, and the rest of the key.
fn split_ns(key: &[u8]) -> Option<(Namespace, &[u8])> {
    let t = key.iter().position(|b| *b == 0)?;
    let p = key[t + 1..].iter().position(|b| *b == 0)? + t + 1;
    let ns = Namespace::new(
        std::str::from_utf8(&key[..t]).ok()?,
        std::str::from_utf8(&key[t + 1..p]).ok()?,
    );
    Some((ns, &key[p + 1..]))
}

fn be(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&bytes[..8]);
    u64::from_be_bytes(b)
}

fn json<T: serde::Serialize>(value: &T) -> Result<String, StorageError> {
    serde_json::to_string(value).map_err(|e| StorageError::Unavailable(format!("cannot encode: {e}")))
}

fn parse<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StorageError> {
    serde_json::from_str(text).map_err(|e| StorageError::Unavailable(format!("a stored job is unreadable: {e}")))
}

/// One write transaction's view of the job tables.
struct Tx<'t> {
    txn: &'t WriteTransaction,
}

impl Tx<'_> {
    fn load(&self, ns: &[u8], id: JobId) -> Result<Option<Job>, StorageError> {
        let jobs = self.txn.open_table(JOBS)?;
        let Some(entry) = jobs.get(job_key(ns, id).as_slice())? else {
            return Ok(None);
        };
        let (meta, payload) = entry.value();
        let mut job: Job = parse(meta)?;
        job.payload = payload.to_vec();
        Ok(Some(job))
    }

    /// Writes `job` and keeps the indexes in step with its state.
    fn store(&self, job: &Job, ns: &[u8]) -> Result<(), StorageError> {
        let key = job_key(ns, job.id);
        self.txn
            .open_table(JOBS)?
            .insert(key.as_slice(), (json(job)?.as_str(), job.payload.as_slice()))?;
        if job.state == JobState::Scheduled {
            self.txn.open_table(JOB_DUE)?.insert(due_key(job, ns).as_slice(), ())?;
            self.txn
                .open_table(JOB_NS_DUE)?
                .insert(ns_due_key(job, ns).as_slice(), ())?;
        }
        if job.state == JobState::Running {
            self.txn.open_table(JOB_RUNNING)?.insert(key.as_slice(), job.token)?;
        }
        Ok(())
    }

    /// Removes `job`'s index entries (before its state changes or it goes).
    fn unindex(&self, job: &Job, ns: &[u8]) -> Result<(), StorageError> {
        self.txn.open_table(JOB_DUE)?.remove(due_key(job, ns).as_slice())?;
        self.txn
            .open_table(JOB_NS_DUE)?
            .remove(ns_due_key(job, ns).as_slice())?;
        self.txn
            .open_table(JOB_RUNNING)?
            .remove(job_key(ns, job.id).as_slice())?;
        Ok(())
    }

    fn count(&self, ns: &[u8], delta: i64) -> Result<u64, StorageError> {
        let mut counts = self.txn.open_table(JOB_COUNTS)?;
        let now = counts.get(ns)?.map_or(0, |c| c.value());
        let next = now.saturating_add_signed(delta);
        counts.insert(ns, next)?;
        Ok(next)
    }

    /// Drops the unique key of a job that ended (or died), unless it still
    /// blocks for a while.
    fn release_unique(&self, job: &Job, ns: &[u8], now_ms: u64) -> Result<(), StorageError> {
        let Some(key) = &job.unique_key else {
            return Ok(());
        };
        let full = cat(&[ns, key.as_bytes()]);
        let mut uniques = self.txn.open_table(JOB_UNIQUE)?;
        let held = uniques.get(full.as_slice())?.map(|v| v.value());
        if let Some((id, until)) = held
            && id == job.id
            && until <= now_ms
        {
            uniques.remove(full.as_slice())?;
        }
        Ok(())
    }

    /// Removes a job that is not running.
    fn remove(&self, job: &Job, ns: &[u8], now_ms: u64) -> Result<(), StorageError> {
        self.unindex(job, ns)?;
        self.txn.open_table(JOBS)?.remove(job_key(ns, job.id).as_slice())?;
        if job.state != JobState::Dead {
            self.count(ns, -1)?;
        }
        self.release_unique(job, ns, now_ms)
    }

    /// Inserts a job, checking its unique key and (with `max_pending`) the
    /// quota: the inner error is the refusal.
    fn insert(
        &self,
        ns: &Namespace,
        new: NewJob,
        max_pending: Option<u64>,
        now_ms: u64,
    ) -> Result<Result<JobId, EnqueueError>, StorageError> {
        let space = prefix(ns);
        // Everything is decided before anything is written: a refusal
        // leaves the transaction as it was (`fire_schedule` and
        // `finish_job` commit it all the same).
        let mut replaced = None;
        if let Some(unique) = &new.unique {
            let full = cat(&[&space, unique.key.as_bytes()]);
            let held = self
                .txn
                .open_table(JOB_UNIQUE)?
                .get(full.as_slice())?
                .map(|v| v.value());
            if let Some((id, until)) = held {
                match self.load(&space, id)? {
                    Some(old) if unique.replace && old.state == JobState::Scheduled => replaced = Some(old),
                    // Running (a timer set again from its own `on-timer`):
                    // the key moves on to the new job.
                    Some(_) if unique.replace => {}
                    Some(old) if old.state != JobState::Dead => return Ok(Err(EnqueueError::Duplicate(id))),
                    _ if until > now_ms && !unique.replace => return Ok(Err(EnqueueError::Duplicate(id))),
                    _ => {}
                }
            }
        }
        let pending = self
            .txn
            .open_table(JOB_COUNTS)?
            .get(space.as_slice())?
            .map_or(0, |c| c.value());
        // The job it replaces makes room for it.
        let pending = pending.saturating_sub(u64::from(replaced.is_some()));
        if max_pending.is_some_and(|max| pending >= max) {
            return Ok(Err(EnqueueError::TooMany));
        }
        if let Some(old) = replaced {
            self.remove(&old, &space, now_ms)?;
        }
        let id = {
            let mut counters = self.txn.open_table(COUNTERS)?;
            let id = counters.get("job")?.map_or(0, |c| c.value()) + 1;
            counters.insert("job", id)?;
            id
        };
        let unique = new.unique.clone();
        let job = Job::from_new(id, &ns.tenant, &ns.plugin, new, now_ms);
        self.store(&job, &space)?;
        self.count(&space, 1)?;
        if let Some(unique) = unique {
            let full = cat(&[&space, unique.key.as_bytes()]);
            self.txn
                .open_table(JOB_UNIQUE)?
                .insert(full.as_slice(), (id, unique.until_ms))?;
        }
        Ok(Ok(id))
    }

    /// Puts the jobs of `ns` running under a token older than `token` (all
    /// of them without one) back to due now.
    fn rescue(&self, ns: Option<&[u8]>, token: Option<u64>, now_ms: u64) -> Result<usize, StorageError> {
        let running: Vec<(Vec<u8>, u64)> = {
            let table = self.txn.open_table(JOB_RUNNING)?;
            let entries: Vec<_> = match ns {
                Some(ns) => {
                    let (start, end) = span(ns);
                    table.range(start.as_slice()..end.as_slice())?.collect()
                }
                None => table.iter()?.collect(),
            };
            entries
                .into_iter()
                .map(|e| e.map(|(k, v)| (k.value().to_vec(), v.value())))
                .collect::<Result<_, _>>()?
        };
        let mut rescued = 0;
        for (key, held) in running {
            if token.is_some_and(|t| held >= t) {
                continue;
            }
            let Some((ns, rest)) = split_ns(&key) else {
                continue;
            };
            let space = prefix(&ns);
            if let Some(mut job) = self.load(&space, be(rest))? {
                self.unindex(&job, &space)?;
                job.state = JobState::Scheduled;
                job.run_at_ms = now_ms;
                job.last_error = Some("its owner ended during the attempt".into());
                self.store(&job, &space)?;
                rescued += 1;
            }
        }
        Ok(rescued)
    }
}

impl Redb {
    /// Creates the job tables and rescues what a previous process left
    /// running (only one process opens the file).
    pub(crate) fn open_jobs(&self, now_ms: u64) -> Result<(), StorageError> {
        let txn = self.db()?.begin_write()?;
        for table in [JOB_DUE, JOB_NS_DUE, SCHEDULE_DUE] {
            txn.open_table(table)?;
        }
        txn.open_table(JOBS)?;
        txn.open_table(JOB_RUNNING)?;
        txn.open_table(JOB_UNIQUE)?;
        txn.open_table(JOB_COUNTS)?;
        txn.open_table(COUNTERS)?;
        for table in [SCHEDULES, ENDPOINTS, DELIVERIES] {
            txn.open_table(table)?;
        }
        let rescued = Tx { txn: &txn }.rescue(None, None, now_ms)?;
        txn.commit()?;
        if rescued > 0 {
            tracing::info!(rescued, "jobs left running by the previous process are due again");
        }
        Ok(())
    }

    /// Rescues the jobs of `ns` running under tokens before `token` (a claim).
    pub(crate) fn rescue_jobs(
        &self,
        txn: &WriteTransaction,
        ns: &Namespace,
        token: u64,
        now_ms: u64,
    ) -> Result<(), StorageError> {
        Tx { txn }.rescue(Some(&prefix(ns)), Some(token), now_ms).map(|_| ())
    }

    pub(crate) fn enqueue(
        &self,
        ns: &Namespace,
        token: u64,
        new: NewJob,
        max_pending: u64,
        now_ms: u64,
    ) -> Result<JobId, EnqueueError> {
        let txn = self.db()?.begin_write().map_err(StorageError::from)?;
        fence(&txn, ns, token)?;
        let id = Tx { txn: &txn }.insert(ns, new, Some(max_pending), now_ms)??;
        txn.commit().map_err(StorageError::from)?;
        Ok(id)
    }

    /// Cancels a job that is scheduled (or, with `dead_too`, dead); `token`
    /// `None` is an operator's cancel.
    pub(crate) fn cancel_job(
        &self,
        ns: &Namespace,
        token: Option<u64>,
        id: JobId,
        dead_too: bool,
        now_ms: u64,
    ) -> Result<bool, StorageError> {
        let txn = self.db()?.begin_write()?;
        if let Some(token) = token {
            fence(&txn, ns, token)?;
        }
        let tx = Tx { txn: &txn };
        let space = prefix(ns);
        let cancelled = match tx.load(&space, id)? {
            Some(job) if job.state == JobState::Scheduled || (dead_too && job.state == JobState::Dead) => {
                tx.remove(&job, &space, now_ms)?;
                true
            }
            _ => false,
        };
        txn.commit()?;
        Ok(cancelled)
    }

    /// A dead job due again now, with its attempts renewed.
    pub(crate) fn retry_dead(&self, ns: &Namespace, id: JobId, now_ms: u64) -> Result<bool, StorageError> {
        let txn = self.db()?.begin_write()?;
        let tx = Tx { txn: &txn };
        let space = prefix(ns);
        let retried = match tx.load(&space, id)? {
            Some(mut job) if job.state == JobState::Dead => {
                job.state = JobState::Scheduled;
                job.attempt = 0;
                job.run_at_ms = now_ms;
                tx.store(&job, &space)?;
                tx.count(&space, 1)?;
                // It holds its unique key again, unless a newer job took it.
                if let Some(key) = &job.unique_key {
                    let full = cat(&[&space, key.as_bytes()]);
                    let mut uniques = txn.open_table(JOB_UNIQUE)?;
                    let held = uniques.get(full.as_slice())?.map(|v| v.value());
                    if held.is_none_or(|(holder, _)| holder == id) {
                        uniques.insert(full.as_slice(), (id, 0))?;
                    }
                }
                true
            }
            _ => false,
        };
        txn.commit()?;
        Ok(retried)
    }

    /// The job of `ns` holding unique `key`, if it is scheduled.
    pub(crate) fn scheduled_with_key(
        &self,
        ns: &Namespace,
        key: &str,
    ) -> Result<Option<JobId>, StorageError> {
        let txn = self.db()?.begin_read()?;
        let space = prefix(ns);
        let full = cat(&[&space, key.as_bytes()]);
        let Some((id, _)) = txn.open_table(JOB_UNIQUE)?.get(full.as_slice())?.map(|v| v.value()) else {
            return Ok(None);
        };
        let jobs = txn.open_table(JOBS)?;
        let Some(entry) = jobs.get(job_key(&space, id).as_slice())? else {
            return Ok(None);
        };
        let job: Job = parse(entry.value().0)?;
        Ok((job.state == JobState::Scheduled).then_some(id))
    }

    /// Namespaces with a job of `lane` due at `now_ms`, earliest first,
    /// leaving out `busy`, at most `limit`.
    pub(crate) fn due_namespaces(
        &self,
        lane: Lane,
        now_ms: u64,
        busy: &dyn Fn(&Namespace) -> bool,
        limit: usize,
    ) -> Result<Vec<Namespace>, StorageError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(JOB_DUE)?;
        let start = [lane.number()];
        let end = cat(&[&[lane.number()], &now_ms.to_be_bytes(), &[0xff]]);
        let mut out: Vec<Namespace> = Vec::new();
        for entry in table.range(start.as_slice()..end.as_slice())? {
            let (key, _) = entry?;
            let key = key.value();
            let Some((ns, _)) = split_ns(&key[9..]) else {
                continue;
            };
            if !busy(&ns) && !out.contains(&ns) {
                out.push(ns);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Namespaces with a job running, at most `limit`.
    pub(crate) fn running_namespaces(&self, limit: usize) -> Result<Vec<Namespace>, StorageError> {
        let txn = self.db()?.begin_read()?;
        let mut out: Vec<Namespace> = Vec::new();
        for entry in txn.open_table(JOB_RUNNING)?.iter()? {
            let (key, _) = entry?;
            if let Some((ns, _)) = split_ns(key.value())
                && !out.contains(&ns)
            {
                out.push(ns);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// When the earliest job of `lane` is due.
    pub(crate) fn next_due(&self, lane: Lane) -> Result<Option<u64>, StorageError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(JOB_DUE)?;
        let start = [lane.number()];
        let end = [lane.number() + 1];
        let first = table.range(start.as_slice()..end.as_slice())?.next().transpose()?;
        Ok(first.map(|(key, _)| be(&key.value()[1..9])))
    }

    /// Starts the earliest due job of `ns` in `lane` under `token`.
    pub(crate) fn start_job(
        &self,
        ns: &Namespace,
        token: u64,
        lane: Lane,
        now_ms: u64,
    ) -> Result<Option<Job>, StorageError> {
        let txn = self.db()?.begin_write()?;
        fence(&txn, ns, token)?;
        let tx = Tx { txn: &txn };
        let space = prefix(ns);
        let first = {
            let table = txn.open_table(JOB_NS_DUE)?;
            let start = cat(&[&space, &[lane.number()]]);
            let end = cat(&[&space, &[lane.number()], &now_ms.to_be_bytes(), &[0xff]]);
            let first = table.range(start.as_slice()..end.as_slice())?.next().transpose()?;
            first.map(|(key, _)| be(&key.value()[start.len() + 8..]))
        };
        let Some(id) = first else {
            return Ok(None);
        };
        let Some(mut job) = tx.load(&space, id)? else {
            return Ok(None);
        };
        tx.unindex(&job, &space)?;
        job.state = JobState::Running;
        job.attempt += 1;
        job.token = token;
        tx.store(&job, &space)?;
        txn.commit()?;
        Ok(Some(job))
    }

    /// Applies an attempt's outcome (and enqueues `then` with it); `false`
    /// if the job is no longer running under `token`.
    pub(crate) fn finish_job(
        &self,
        ns: &Namespace,
        token: u64,
        id: JobId,
        finish: Finish,
        then: Option<NewJob>,
        now_ms: u64,
    ) -> Result<bool, StorageError> {
        let txn = self.db()?.begin_write()?;
        fence(&txn, ns, token)?;
        let tx = Tx { txn: &txn };
        let space = prefix(ns);
        let Some(mut job) = tx.load(&space, id)? else {
            return Ok(false);
        };
        if job.state != JobState::Running || job.token != token {
            return Ok(false);
        }
        tx.unindex(&job, &space)?;
        match finish {
            Finish::Done => {
                job.state = JobState::Scheduled;
                tx.remove(&job, &space, now_ms)?;
            }
            Finish::Retry { run_at_ms, error } => {
                job.state = JobState::Scheduled;
                job.run_at_ms = run_at_ms;
                job.last_error = Some(error);
                tx.store(&job, &space)?;
            }
            Finish::Snooze { run_at_ms } => {
                job.state = JobState::Scheduled;
                job.run_at_ms = run_at_ms;
                job.attempt = job.attempt.saturating_sub(1);
                tx.store(&job, &space)?;
            }
            Finish::Dead { error } => {
                job.state = JobState::Dead;
                job.last_error = Some(error);
                tx.store(&job, &space)?;
                tx.count(&space, -1)?;
                tx.release_unique(&job, &space, now_ms)?;
            }
        }
        if let Some(then) = then
            && let Err(e) = tx.insert(ns, then, None, now_ms)?
        {
            tracing::warn!(job = id, "the job's follow-up was not enqueued: {e}");
        }
        txn.commit()?;
        Ok(true)
    }

    /// The jobs of `tenant` (every plugin), by id, at most `limit`.
    pub(crate) fn jobs_of(&self, tenant: &str, limit: usize) -> Result<Vec<Job>, StorageError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(JOBS)?;
        let (start, end) = span(&tenant_prefix(tenant));
        // Keys go plugin by plugin: the first by id are known once all are read.
        let mut out = Vec::new();
        for entry in table.range(start.as_slice()..end.as_slice())? {
            let (_, value) = entry?;
            let (meta, payload) = value.value();
            let mut job: Job = parse(meta)?;
            job.payload = payload.to_vec();
            out.push(job);
        }
        out.sort_by_key(|j| j.id);
        out.truncate(limit);
        Ok(out)
    }

    /// Counts of jobs per state over the whole storage (for metrics).
    pub(crate) fn job_totals(&self) -> Result<(u64, u64), StorageError> {
        let txn = self.db()?.begin_read()?;
        let due = txn.open_table(JOB_DUE)?.len()?;
        let running = txn.open_table(JOB_RUNNING)?.len()?;
        Ok((due, running))
    }

    /// Declares a schedule: an identical one is left as it is (its next
    /// slot too); a changed one replaces it.
    pub(crate) fn put_schedule(
        &self,
        ns: &Namespace,
        token: u64,
        schedule: Schedule,
    ) -> Result<(), StorageError> {
        let txn = self.db()?.begin_write()?;
        fence(&txn, ns, token)?;
        let space = prefix(ns);
        let key = cat(&[&space, schedule.name.as_bytes()]);
        {
            let mut schedules = txn.open_table(SCHEDULES)?;
            let old: Option<Schedule> = schedules.get(key.as_slice())?.map(|v| parse(v.value())).transpose()?;
            if let Some(old) = &old {
                if old.cron == schedule.cron && old.kind == schedule.kind && old.payload == schedule.payload {
                    return Ok(());
                }
                let old_due = cat(&[&old.next_ms.to_be_bytes(), &key]);
                txn.open_table(SCHEDULE_DUE)?.remove(old_due.as_slice())?;
            }
            schedules.insert(key.as_slice(), json(&schedule)?.as_str())?;
            let due = cat(&[&schedule.next_ms.to_be_bytes(), &key]);
            txn.open_table(SCHEDULE_DUE)?.insert(due.as_slice(), ())?;
        }
        txn.commit()?;
        Ok(())
    }

    pub(crate) fn remove_schedule(
        &self,
        ns: &Namespace,
        token: u64,
        name: &str,
    ) -> Result<bool, StorageError> {
        let txn = self.db()?.begin_write()?;
        fence(&txn, ns, token)?;
        let key = cat(&[&prefix(ns), name.as_bytes()]);
        let removed = {
            let old = txn
                .open_table(SCHEDULES)?
                .remove(key.as_slice())?
                .map(|v| parse::<Schedule>(v.value()));
            match old.transpose()? {
                Some(old) => {
                    let due = cat(&[&old.next_ms.to_be_bytes(), &key]);
                    txn.open_table(SCHEDULE_DUE)?.remove(due.as_slice())?;
                    true
                }
                None => false,
            }
        };
        txn.commit()?;
        Ok(removed)
    }

    /// Schedules whose next slot is due at `now_ms`, at most `limit`.
    pub(crate) fn due_schedules(
        &self,
        now_ms: u64,
        limit: usize,
    ) -> Result<Vec<(Namespace, Schedule)>, StorageError> {
        let txn = self.db()?.begin_read()?;
        let due = txn.open_table(SCHEDULE_DUE)?;
        let schedules = txn.open_table(SCHEDULES)?;
        let end = cat(&[&now_ms.to_be_bytes(), &[0xff]]);
        let mut out = Vec::new();
        for entry in due.range(..end.as_slice())? {
            let (key, _) = entry?;
            let key = key.value();
            let Some((ns, _)) = split_ns(&key[8..]) else {
                continue;
            };
            if let Some(text) = schedules.get(&key[8..])? {
                out.push((ns, parse(text.value())?));
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }

    /// Moves schedule `name` of `ns` from slot `slot_ms` to `next_ms`,
    /// enqueuing `job` for the slot; `false` (nothing done) if it is no
    /// longer at that slot.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn fire_schedule(
        &self,
        ns: &Namespace,
        name: &str,
        slot_ms: u64,
        next_ms: u64,
        job: NewJob,
        max_pending: u64,
        now_ms: u64,
    ) -> Result<Result<bool, EnqueueError>, StorageError> {
        let txn = self.db()?.begin_write()?;
        let key = cat(&[&prefix(ns), name.as_bytes()]);
        {
            let mut schedules = txn.open_table(SCHEDULES)?;
            let current: Option<Schedule> = schedules.get(key.as_slice())?.map(|v| parse(v.value())).transpose()?;
            let Some(mut schedule) = current.filter(|s| s.next_ms == slot_ms) else {
                return Ok(Ok(false));
            };
            let mut due = txn.open_table(SCHEDULE_DUE)?;
            due.remove(cat(&[&slot_ms.to_be_bytes(), &key]).as_slice())?;
            schedule.next_ms = next_ms;
            schedules.insert(key.as_slice(), json(&schedule)?.as_str())?;
            due.insert(cat(&[&next_ms.to_be_bytes(), &key]).as_slice(), ())?;
        }
        let enqueued = (Tx { txn: &txn })
            .insert(ns, job, Some(max_pending), now_ms)?
            .map(|_| true);
        txn.commit()?;
        Ok(enqueued)
    }

    /// The schedules of `tenant`.
    pub(crate) fn schedules_of(&self, tenant: &str) -> Result<Vec<(String, Schedule)>, StorageError> {
        let txn = self.db()?.begin_read()?;
        let (start, end) = span(&tenant_prefix(tenant));
        let mut out = Vec::new();
        for entry in txn.open_table(SCHEDULES)?.range(start.as_slice()..end.as_slice())? {
            let (key, value) = entry?;
            if let Some((ns, _)) = split_ns(key.value()) {
                out.push((ns.plugin, parse(value.value())?));
            }
        }
        Ok(out)
    }

    pub(crate) fn put_endpoint(&self, tenant: &str, endpoint: &Endpoint) -> Result<(), StorageError> {
        let txn = self.db()?.begin_write()?;
        let key = cat(&[&tenant_prefix(tenant), endpoint.name.as_bytes()]);
        txn.open_table(ENDPOINTS)?
            .insert(key.as_slice(), json(endpoint)?.as_str())?;
        txn.commit()?;
        Ok(())
    }

    pub(crate) fn remove_endpoint(&self, tenant: &str, name: &str) -> Result<bool, StorageError> {
        let txn = self.db()?.begin_write()?;
        let key = cat(&[&tenant_prefix(tenant), name.as_bytes()]);
        let removed = txn.open_table(ENDPOINTS)?.remove(key.as_slice())?.is_some();
        txn.commit()?;
        Ok(removed)
    }

    pub(crate) fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, StorageError> {
        let txn = self.db()?.begin_read()?;
        let (start, end) = span(&tenant_prefix(tenant));
        let table = txn.open_table(ENDPOINTS)?;
        let mut out = Vec::new();
        for entry in table.range(start.as_slice()..end.as_slice())? {
            out.push(parse(entry?.1.value())?);
        }
        Ok(out)
    }

    /// Appends to the tenant's delivery log, keeping its last `keep` entries.
    pub(crate) fn log_delivery(
        &self,
        tenant: &str,
        delivery: &Delivery,
        keep: usize,
    ) -> Result<(), StorageError> {
        let txn = self.db()?.begin_write()?;
        {
            let seq = {
                let mut counters = txn.open_table(COUNTERS)?;
                let seq = counters.get("delivery")?.map_or(0, |c| c.value()) + 1;
                counters.insert("delivery", seq)?;
                seq
            };
            let mut log = txn.open_table(DELIVERIES)?;
            let space = tenant_prefix(tenant);
            log.insert(cat(&[&space, &seq.to_be_bytes()]).as_slice(), json(delivery)?.as_str())?;
            let (start, end) = span(&space);
            let held = log.range(start.as_slice()..end.as_slice())?.count();
            if held > keep {
                let old: Vec<Vec<u8>> = log
                    .range(start.as_slice()..end.as_slice())?
                    .take(held - keep)
                    .map(|e| e.map(|(k, _)| k.value().to_vec()))
                    .collect::<Result<_, _>>()?;
                for key in old {
                    log.remove(key.as_slice())?;
                }
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// The tenant's delivery log, newest first, at most `limit`.
    pub(crate) fn deliveries(&self, tenant: &str, limit: usize) -> Result<Vec<Delivery>, StorageError> {
        let txn = self.db()?.begin_read()?;
        let (start, end) = span(&tenant_prefix(tenant));
        let table = txn.open_table(DELIVERIES)?;
        let mut out = Vec::new();
        for entry in table.range(start.as_slice()..end.as_slice())?.rev().take(limit) {
            out.push(parse(entry?.1.value())?);
        }
        Ok(out)
    }

    /// Erases the jobs, schedules, endpoints and log of `tenant` (in the
    /// transaction of [`Redb::erase`]).
    pub(crate) fn erase_jobs(&self, txn: &WriteTransaction, tenant: &str) -> Result<(), StorageError> {
        let (start, end) = span(&tenant_prefix(tenant));
        let range = start.as_slice()..end.as_slice();
        let jobs: Vec<Job> = txn
            .open_table(JOBS)?
            .range(range.clone())?
            .map(|e| e.map_err(StorageError::from).and_then(|(_, v)| parse(v.value().0)))
            .collect::<Result<_, _>>()?;
        let tx = Tx { txn };
        for job in &jobs {
            tx.unindex(job, &prefix(&Namespace::new(&job.tenant, &job.plugin)))?;
        }
        txn.open_table(JOBS)?.retain_in(range.clone(), |_, _| false)?;
        txn.open_table(JOB_UNIQUE)?.retain_in(range.clone(), |_, _| false)?;
        txn.open_table(JOB_COUNTS)?.retain_in(range.clone(), |_, _| false)?;
        let schedules: Vec<(Vec<u8>, Schedule)> = txn
            .open_table(SCHEDULES)?
            .range(range.clone())?
            .map(|e| {
                e.map_err(StorageError::from)
                    .and_then(|(k, v)| Ok((k.value().to_vec(), parse(v.value())?)))
            })
            .collect::<Result<_, _>>()?;
        for (key, schedule) in schedules {
            txn.open_table(SCHEDULE_DUE)?
                .remove(cat(&[&schedule.next_ms.to_be_bytes(), &key]).as_slice())?;
        }
        txn.open_table(SCHEDULES)?.retain_in(range.clone(), |_, _| false)?;
        txn.open_table(ENDPOINTS)?.retain_in(range.clone(), |_, _| false)?;
        txn.open_table(DELIVERIES)?.retain_in(range, |_, _| false)?;
        Ok(())
    }
}
