//! Durable jobs: plugins' jobs (`baton:plugin/jobs`), named timers and
//! webhook deliveries, run by one [`Dispatcher`] per host from the storage
//! (`crate::storage::jobs` keeps them; `policy.rs` holds the rules;
//! `outbox.rs` queues a webhook, `webhooks.rs` signs and delivers it).
//!
//! - **Where a job runs.** A plugin's job, a durable timer and a webhook's
//!   result run on the tenant's instance: the dispatcher sends the tenant
//!   task a `Command::Job`, so the call waits its turn in the mailbox with
//!   the frames and runs under the same limits, swaps and supervision. A
//!   webhook delivery runs beside it, in the dispatcher, so a slow endpoint
//!   never holds up the tenant.
//! - **Fairness.** Each (tenant, plugin) runs one job of each lane at a time,
//!   and the dispatcher fills its free places (`jobs.max_running`,
//!   `jobs.max_deliveries`) round-robin: of the namespaces with a job due
//!   (and none running), those served least recently go first. A tenant with
//!   ten thousand jobs due takes one place, and takes it again only after
//!   every other tenant with a due job had its turn.
//! - **At least once, fenced.** A job is started and finished under the
//!   owner token of the tenant's task (the storage's fencing): a host that
//!   lost the tenant can neither start nor finish its jobs, and the new
//!   owner's claim puts a job left running back to due at once.
//! - **In a cluster**, every node's dispatcher reads the shared tables and
//!   runs only the jobs of tenants it owns (opening a tenant nobody owns
//!   makes this node its owner); a schedule's slot is enqueued once by a
//!   compare-and-set, whichever node gets there first. A job left running by
//!   a node that died belongs to a tenant nobody may own for a while: every
//!   few polls the dispatcher opens the tenants of running jobs it is not
//!   running itself, so that once the dead owner's lease is gone, a live
//!   node takes the tenant and its claim rescues the job at once.

pub mod outbox;
pub mod policy;
pub mod signing;
mod webhooks;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, oneshot, watch};
use tokio::time::Instant;

use crate::config::Config;
use crate::storage::jobs::{JobClass, Lane, NewJob};
use crate::storage::{Job, Namespace, Storage, StorageError};
use crate::tenant::{Command, TenantHandle};
use policy::Ended;
pub use webhooks::{EndpointError, EndpointView, Webhooks};

/// Opens a tenant's task on this host, or `None` when another node owns it
/// (or it cannot be opened: no such plugin, a tenant not allowed).
pub type Open = Arc<dyn Fn(String, String) -> Pin<Box<dyn Future<Output = Option<TenantHandle>> + Send>> + Send + Sync>;

/// A namespace that could not be opened is left alone this long.
const COOL_DOWN: Duration = Duration::from_secs(5);

/// Schedules fired per pass.
const SCHEDULES_PER_PASS: usize = 64;

/// Namespaces with due jobs looked at per pass and lane (the least recently
/// served of them get the free places).
const CANDIDATES: usize = 512;

/// Namespaces whose last turn is remembered; beyond, the memory starts over.
const REMEMBERED: usize = 100_000;

/// Every this many passes, the tenants of jobs running elsewhere are
/// opened (see "In a cluster" above).
const ORPHAN_PASSES: u64 = 3;

/// Namespaces of jobs running elsewhere looked at per look.
const ORPHANS_PER_LOOK: usize = 64;

/// Runs the host's due jobs.
pub struct Dispatcher {
    storage: Arc<Storage>,
    config: Arc<Config>,
    open: Open,
    webhooks: Arc<Webhooks>,
    /// Namespaces running a job, per lane.
    running: Mutex<HashMap<Lane, HashSet<Namespace>>>,
    /// Namespaces that could not be opened, until when.
    cooling: Mutex<HashMap<Namespace, Instant>>,
    /// When each namespace was last given a place (a count of turns).
    served: Mutex<(u64, HashMap<Namespace, u64>)>,
    /// Told when a job ended (a place is free).
    freed: Notify,
}

impl Dispatcher {
    /// Starts the dispatcher; it ends when `stopped` turns true.
    pub fn start(
        storage: Arc<Storage>,
        config: Arc<Config>,
        webhooks: Arc<Webhooks>,
        open: Open,
        mut stopped: watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let dispatcher = Arc::new(Dispatcher {
            storage,
            config,
            open,
            webhooks,
            running: Mutex::default(),
            cooling: Mutex::default(),
            served: Mutex::default(),
            freed: Notify::new(),
        });
        tokio::spawn(async move {
            tokio::select! {
                () = dispatcher.run() => {}
                _ = stopped.wait_for(|stopped| *stopped) => {}
            }
        })
    }

    async fn run(self: &Arc<Self>) {
        let poll = Duration::from_millis(self.config.jobs.poll_ms.max(10));
        let mut failing = false;
        let mut passes: u64 = 0;
        loop {
            passes += 1;
            if passes.is_multiple_of(ORPHAN_PASSES) {
                self.claim_orphans().await;
            }
            // Registered before looking, so that nothing enqueued meanwhile
            // is missed.
            let changed = self.storage.jobs_changed().notified();
            let freed = self.freed.notified();
            tokio::pin!(changed, freed);
            changed.as_mut().enable();
            freed.as_mut().enable();
            let wake = match self.pass().await {
                Ok(wake) => {
                    if failing {
                        tracing::info!("the job store answers again");
                    }
                    failing = false;
                    wake
                }
                Err(e) => {
                    if !failing {
                        tracing::warn!("cannot read the job store (tried again every {poll:?}): {e}");
                    }
                    failing = true;
                    None
                }
            };
            let until = wake.map_or(Instant::now() + poll, |at| at.min(Instant::now() + poll));
            tokio::select! {
                () = changed => {}
                () = freed => {}
                () = tokio::time::sleep_until(until) => {}
            }
        }
    }

    /// One look at the store: fire due schedules, start what is due and has
    /// a free place; returns when the next job is due, if known.
    async fn pass(self: &Arc<Self>) -> Result<Option<Instant>, StorageError> {
        self.fire_schedules().await?;
        let mut wake: Option<Instant> = None;
        for lane in Lane::ALL {
            let places = match lane {
                Lane::Instance => self.config.jobs.max_running,
                Lane::Delivery => self.config.jobs.max_deliveries,
            };
            let busy = self.busy(lane);
            let free = places.saturating_sub(self.running_in(lane));
            // What is due by now is seen by the look below; what falls due
            // after it must wake the next pass.
            let looked_at = crate::clock::unix_ms();
            if free > 0 {
                let due = self.storage.due_namespaces(lane, busy, CANDIDATES).await?;
                for ns in self.turns(due, free) {
                    self.lock_running().entry(lane).or_default().insert(ns.clone());
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.run_one(&ns, lane).await;
                        if let Some(running) = me.lock_running().get_mut(&lane) {
                            running.remove(&ns);
                        }
                        me.freed.notify_one();
                    });
                }
            }
            if let Some(due) = self.storage.next_due(lane).await?
                && due > looked_at
            {
                // (Due before the look and not started: it waits for a free
                // place or its namespace's turn, and a finished job wakes
                // the next pass.)
                let now = crate::clock::unix_ms();
                let at = Instant::now() + Duration::from_millis(due.saturating_sub(now));
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
        }
        let (queued, running) = self.storage.job_totals().await?;
        metrics::gauge!("baton_jobs_queued").set(queued as f64);
        metrics::gauge!("baton_jobs_running").set(running as f64);
        Ok(wake)
    }

    /// The `free` namespaces of `due` served least recently (round-robin),
    /// marked as served now.
    fn turns(&self, mut due: Vec<Namespace>, free: usize) -> Vec<Namespace> {
        let mut served = self.served.lock().unwrap_or_else(|p| p.into_inner());
        let (turn, last) = &mut *served;
        // Stable: among those never served (or equally long ago), the oldest
        // due job first, as the storage listed them.
        due.sort_by_key(|ns| last.get(ns).copied().unwrap_or(0));
        due.truncate(free);
        if last.len() > REMEMBERED {
            last.clear();
        }
        for ns in &due {
            *turn += 1;
            last.insert(ns.clone(), *turn);
        }
        due
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<Lane, HashSet<Namespace>>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn running_in(&self, lane: Lane) -> usize {
        self.lock_running().get(&lane).map_or(0, HashSet::len)
    }

    /// What not to start now in `lane`: namespaces running one, or cooling down.
    fn busy(&self, lane: Lane) -> HashSet<Namespace> {
        let mut busy = self.lock_running().get(&lane).cloned().unwrap_or_default();
        let mut cooling = self.cooling.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        cooling.retain(|_, until| *until > now);
        busy.extend(cooling.keys().cloned());
        busy
    }

    fn cool(&self, ns: &Namespace) {
        self.cooling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ns.clone(), Instant::now() + COOL_DOWN);
    }

    /// Opens the tenants of jobs running but not here: on the tenant's
    /// owner nothing changes; a tenant whose owner died is taken by this
    /// node, whose claim puts the job back to due.
    async fn claim_orphans(&self) {
        let running = match self.storage.running_namespaces(ORPHANS_PER_LOOK).await {
            Ok(running) => running,
            Err(e) => {
                tracing::debug!("cannot list the jobs running: {e}");
                return;
            }
        };
        let here: HashSet<Namespace> = self.lock_running().values().flatten().cloned().collect();
        let cooling = self.busy(Lane::Delivery);
        for ns in running
            .into_iter()
            .filter(|ns| !here.contains(ns) && !cooling.contains(ns))
        {
            match (self.open)(ns.tenant.clone(), ns.plugin.clone()).await {
                Some(handle) => {
                    if let Err(e) = handle.shared().owned_storage().await {
                        tracing::debug!(tenant = %ns.tenant, plugin = %ns.plugin, "cannot claim a tenant with a job left running: {e}");
                    }
                }
                None => {
                    tracing::debug!(tenant = %ns.tenant, plugin = %ns.plugin, "a job runs elsewhere: its tenant's owner is another node");
                    self.cool(&ns);
                }
            }
        }
    }

    /// Enqueues each due schedule's slot (once, whichever host gets there
    /// first) and moves it on to its next slot.
    async fn fire_schedules(&self) -> Result<(), StorageError> {
        for (ns, schedule) in self.storage.due_schedules(SCHEDULES_PER_PASS).await? {
            let now = crate::clock::unix_ms();
            let next = policy::Cron::parse(&schedule.cron)
                .ok()
                .and_then(|cron| cron.next_after(now.max(schedule.next_ms)))
                // A slot that cannot be computed: never again (and said so).
                .unwrap_or(u64::MAX);
            if next == u64::MAX {
                tracing::warn!(tenant = %ns.tenant, plugin = %ns.plugin, schedule = %schedule.name, "the schedule has no next slot");
            }
            let retry = policy::DEFAULT_RETRY;
            let job = NewJob {
                class: JobClass::Plugin,
                kind: schedule.kind.clone(),
                payload: schedule.payload.clone(),
                run_at_ms: schedule.next_ms,
                max_attempts: retry.max_attempts,
                base_delay_ms: retry.base_delay_ms,
                max_delay_ms: retry.max_delay_ms,
                timeout_ms: None,
                unique: None,
                schedule: Some(schedule.name.clone()),
            };
            let fired = self
                .storage
                .fire_schedule(
                    &ns,
                    &schedule.name,
                    schedule.next_ms,
                    next,
                    job,
                    self.config.limits.max_jobs,
                )
                .await?;
            match fired {
                Ok(true) => metrics::counter!("baton_job_slots_total", "plugin" => ns.plugin.clone()).increment(1),
                Ok(false) => {}
                Err(e) => tracing::warn!(
                    tenant = %ns.tenant, plugin = %ns.plugin, schedule = %schedule.name,
                    "a slot of the schedule was skipped: {e}"
                ),
            }
        }
        Ok(())
    }

    /// Starts the earliest due job of `ns` in `lane`, runs it, and keeps how
    /// it ended.
    async fn run_one(&self, ns: &Namespace, lane: Lane) {
        let Some(handle) = (self.open)(ns.tenant.clone(), ns.plugin.clone()).await else {
            self.cool(ns);
            return;
        };
        let (storage, token) = match handle.shared().owned_storage().await {
            Ok(owned) => owned,
            Err(e) => {
                tracing::debug!(tenant = %ns.tenant, plugin = %ns.plugin, "cannot run jobs: {e}");
                self.cool(ns);
                return;
            }
        };
        let job = match storage.start_job(ns, token, lane).await {
            Ok(Some(job)) => job,
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(tenant = %ns.tenant, plugin = %ns.plugin, "cannot start a job: {e}");
                self.cool(ns);
                return;
            }
        };
        let started = std::time::Instant::now();
        let (ended, then) = match lane {
            Lane::Instance => (on_instance(&handle, &job).await, None),
            Lane::Delivery => self.webhooks.deliver(&job).await,
        };
        let outcome = match &ended {
            Ended::Done => "done",
            Ended::Failed(_) if job.attempt >= job.max_attempts => "dead",
            Ended::Failed(_) => "retried",
            Ended::Snooze(_) => "snoozed",
            Ended::Discard(_) => "dead",
        };
        if let Ended::Failed(why) | Ended::Discard(why) = &ended {
            tracing::debug!(tenant = %ns.tenant, plugin = %ns.plugin, job = job.id, kind = %job.kind, attempt = job.attempt, "{outcome}: {why}");
        }
        let now = crate::clock::unix_ms();
        let finish = match job.class {
            JobClass::Webhook => policy::finish(&job, ended, now, |attempt| self.webhooks.delay_after(attempt)),
            _ => policy::finish(&job, ended, now, |attempt| policy::job_delay(&job, attempt)),
        };
        let then = then.filter(|_| {
            matches!(
                finish,
                crate::storage::Finish::Done | crate::storage::Finish::Dead { .. }
            )
        });
        metrics::counter!("baton_jobs_total", "plugin" => ns.plugin.clone(), "class" => job.class.name(), "outcome" => outcome)
            .increment(1);
        metrics::histogram!("baton_job_seconds", "plugin" => ns.plugin.clone(), "class" => job.class.name())
            .record(started.elapsed().as_secs_f64());
        match storage.finish_job(ns, token, job.id, finish, then).await {
            Ok(true) => {}
            Ok(false) | Err(StorageError::Fenced) => {
                tracing::debug!(job = job.id, "the tenant has a newer owner, which runs the job again");
            }
            // Left running: the next owner's claim (or the next start of
            // the host) puts it back to due.
            Err(e) => {
                tracing::warn!(tenant = %ns.tenant, plugin = %ns.plugin, job = job.id, "cannot keep how a job ended: {e}")
            }
        }
    }
}

/// Runs `job` on the tenant's instance, through its mailbox.
async fn on_instance(handle: &TenantHandle, job: &Job) -> Ended {
    let (reply, answer) = oneshot::channel();
    let command = Command::Job {
        job: job.clone(),
        reply,
    };
    if handle.mailbox().send(command).await.is_err() {
        return Ended::Snooze(policy::NOT_RUN_DELAY_MS);
    }
    answer.await.unwrap_or(Ended::Snooze(policy::NOT_RUN_DELAY_MS))
}
