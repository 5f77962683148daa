//! The slot of a tenant task: the tenant's one instance, or the state of the
//! instance it hibernated, or nothing; and how an instance is brought up in
//! it.
//!
//! ```text
//!            start / restore                 hibernate (export-state)
//!   Empty ───────────────────▶ Running ─────────────────────────▶ Hibernated
//!     ▲                          │  ▲                                 │
//!     └──── take (a trap) ───────┘  └──── wake (import-state) ────────┘
//! ```
//!
//! A live instance holds a *seat* (`TenantEnv::seats`): the pool's room for
//! tenant instances, which leaves its reserve to migrations and deploy
//! checks. No seat, or a pool that refuses the instance anyway, is
//! [`Failure::Capacity`]: the plugin did nothing wrong, so it is never a
//! restart, and hibernated state is kept.
//!
//! The slot does the mechanics and says what happened ([`Up`], [`Failure`]);
//! the tenant task keeps the policy: what to report, when a failure counts as
//! a restart, re-announcing sessions to a fresh instance. Every instance the
//! slot starts gets the next number of the tenant. The state kept at the last
//! host shutdown is looked for once, before the tenant's first instance.
//!
//! Files: `kept.rs` (the state kept in the storage and carried by a
//! handover), `trial.rs` (a version tried on the tenant's state: a dry run).

mod kept;
mod trial;

use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::bindings::ConnectRequest;
use crate::error::close;
use crate::instance::{Instance, StartError, Trap};
use crate::session::link::SessionId;
use crate::tenant::env::TenantEnv;
use crate::tenant::state::{Status, TenantShared};
use crate::version::Version;

/// Rounds of `on-presence` delivered after one call at most (a callback that
/// itself changes presence causes another round).
const PRESENCE_ROUNDS: usize = 8;

/// What the slot holds.
enum Held {
    /// No instance (not started yet, or it crashed).
    Empty,
    /// A live instance (boxed: it is large, and the slot moves between states).
    Running(Box<Instance>),
    /// The state of a hibernated instance, and the version that exported it
    /// (kept loaded, so the tenant can always wake on it).
    Hibernated { version: Arc<Version>, state: Vec<u8> },
}

/// How an instance came up.
pub enum Up {
    /// There already was one.
    AlreadyRunning,
    /// A fresh instance of the current version (`init` only), to which every
    /// open session was re-announced.
    Started,
    /// The hibernated instance's version, with its state back.
    Woke,
    /// The current version with the state kept at the last shutdown; `refused`
    /// when it would not take that state and started fresh.
    Restored {
        /// The plugin's reason for refusing the kept state.
        refused: Option<String>,
    },
}

/// Why no instance came up. The slot is empty afterwards (or still
/// hibernated, after [`Failure::Capacity`]).
pub enum Failure {
    /// No room in the pool for another tenant instance.
    Capacity {
        /// What is full.
        why: String,
    },
    /// The instance could not start (or, `waking`, could not take its own
    /// hibernated state back: that state is lost, as after a crash).
    Start {
        /// The version it tried.
        version: Arc<Version>,
        /// Whether it was waking from hibernation.
        waking: bool,
        /// Why.
        error: String,
    },
    /// It trapped while taking the state kept at shutdown, or while open
    /// sessions were re-announced to it.
    Trap {
        /// The version it tried.
        version: Arc<Version>,
        /// The trap.
        trap: Trap,
    },
}

impl Failure {
    /// The failure of a start of `version`: capacity, or the version's own.
    fn of(version: &Arc<Version>, waking: bool, error: StartError) -> Failure {
        match error {
            StartError::Capacity(why) => Failure::Capacity { why },
            error => Failure::Start {
                version: version.clone(),
                waking,
                error: error.to_string(),
            },
        }
    }
}

/// Why a migration did not happen. The old instance is still live, except
/// after [`Refusal::Trapped`], where it is still in the slot for the caller to
/// handle as a crash.
pub enum Refusal {
    /// The old instance trapped exporting its state.
    Trapped(Trap),
    /// The pool has no room for the new instance now (the old one is live).
    NoRoom(String),
    /// Anything else: the tenant stays on its version, for this reason.
    Stays(String),
}

/// The tenant's instance, or what stands for it.
pub struct Slot {
    held: Held,
    shared: Arc<TenantShared>,
    env: Arc<TenantEnv>,
    /// The pool seat of the live instance (or of the one being brought up).
    seat: Option<OwnedSemaphorePermit>,
    /// Instances started so far (numbers them).
    started: u64,
    /// Whether state kept at the last shutdown was looked for.
    persisted_checked: bool,
    /// State kept at the last shutdown that no instance has taken yet: its
    /// first instance could not start (a full pool, a failed `init`), so
    /// the next one gets it, instead of starting fresh and losing it.
    unrestored: Option<(String, Vec<u8>)>,
}

impl Slot {
    /// An empty slot for the tenant of `shared`.
    pub fn new(shared: Arc<TenantShared>, env: Arc<TenantEnv>) -> Slot {
        Slot {
            held: Held::Empty,
            shared,
            env,
            seat: None,
            started: 0,
            persisted_checked: false,
            unrestored: None,
        }
    }

    /// The live instance, if any.
    pub fn instance(&mut self) -> Option<&mut Instance> {
        match &mut self.held {
            Held::Running(instance) => Some(instance),
            _ => None,
        }
    }

    /// Whether an instance is live.
    pub fn is_running(&self) -> bool {
        matches!(self.held, Held::Running(_))
    }

    /// The version of the live or hibernated instance.
    pub fn version(&self) -> Option<&Arc<Version>> {
        match &self.held {
            Held::Running(instance) => Some(instance.version()),
            Held::Hibernated { version, .. } => Some(version),
            Held::Empty => None,
        }
    }

    /// The version of the live instance.
    pub fn running_version(&self) -> Option<&Arc<Version>> {
        match &self.held {
            Held::Running(instance) => Some(instance.version()),
            _ => None,
        }
    }

    /// The version the hibernated instance will wake on.
    pub fn hibernated_version(&self) -> Option<&Arc<Version>> {
        match &self.held {
            Held::Hibernated { version, .. } => Some(version),
            _ => None,
        }
    }

    /// The status this slot gives its tenant (when not backing off or closing).
    pub fn status(&self) -> Status {
        match self.held {
            Held::Empty => Status::Idle,
            Held::Running(_) => Status::Running,
            Held::Hibernated { .. } => Status::Hibernated,
        }
    }

    /// Generation and number of the live instance.
    pub fn installed(&self) -> Option<(u64, u64)> {
        match &self.held {
            Held::Running(instance) => Some((instance.version().generation, instance.number())),
            _ => None,
        }
    }

    /// Takes the live instance out (it trapped: it must never be called again).
    pub fn take(&mut self) -> Option<Instance> {
        self.seat = None;
        match std::mem::replace(&mut self.held, Held::Empty) {
            Held::Running(instance) => Some(*instance),
            other => {
                self.held = other;
                None
            }
        }
    }

    /// Drops whatever the slot holds.
    pub fn clear(&mut self) {
        self.held = Held::Empty;
        self.seat = None;
    }

    /// Hands the slot seats its task waited for.
    pub fn give_seat(&mut self, seat: OwnedSemaphorePermit) {
        match &mut self.seat {
            Some(held) => held.merge(seat),
            None => self.seat = Some(seat),
        }
    }

    /// The seats an instance of `version` needs beyond those the slot
    /// holds (0 when it holds enough).
    pub fn seats_missing(&self, version: &Version) -> u32 {
        let held = self.seat.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        (version.seats as usize).saturating_sub(held) as u32
    }

    /// Holds exactly the seats an instance of `version` takes.
    fn fit_seat(&mut self, version: &Version) -> Result<(), Failure> {
        self.grow_seat(version)?;
        self.shrink_seat(version);
        Ok(())
    }

    /// Takes the seats an instance of `version` needs beyond those held, if
    /// the pool has room.
    fn grow_seat(&mut self, version: &Version) -> Result<(), Failure> {
        let missing = self.seats_missing(version);
        if missing == 0 {
            return Ok(());
        }
        let more = self.env.seats.clone().try_acquire_many_owned(missing).map_err(|_| {
            let runtime = &self.env.config.runtime;
            Failure::Capacity {
                why: format!(
                    "the instance pool is full: {} of its {} seats hold tenant instances \
                     (runtime.max_instances = {}, {} kept for migrations and deploy checks; \
                     an instance of this plugin takes {})",
                    runtime.tenant_instances() - self.env.seats.available_permits(),
                    runtime.tenant_instances(),
                    runtime.max_instances,
                    runtime.reserved_instances(),
                    version.seats
                ),
            }
        })?;
        self.give_seat(more);
        Ok(())
    }

    /// Gives back the seats held beyond what an instance of `version` takes.
    fn shrink_seat(&mut self, version: &Version) {
        let wanted = version.seats as usize;
        if let Some(held) = &mut self.seat
            && held.num_permits() > wanted
        {
            drop(held.split(held.num_permits() - wanted));
        }
    }

    /// Starts (but does not install) the tenant's next instance of `version`.
    pub async fn start(&mut self, version: Arc<Version>) -> Result<Instance, StartError> {
        self.started += 1;
        let limits = self.env.limits(&version, &self.shared.name);
        Instance::start(version, self.shared.clone(), limits, self.started).await
    }

    /// Makes `instance` the live one, replacing whatever was there.
    pub fn install(&mut self, instance: Instance) {
        self.held = Held::Running(Box::new(instance));
    }

    /// Brings an instance up: wakes the hibernated one, or starts one of
    /// `current` (with the state kept at the last shutdown, the first time).
    /// `None` when there is nothing to start: no hibernated state and no
    /// current version (the plugin was removed).
    pub async fn bring_up(&mut self, current: Option<Arc<Version>>) -> Option<Result<Up, Failure>> {
        let result = match std::mem::replace(&mut self.held, Held::Empty) {
            Held::Running(instance) => {
                self.held = Held::Running(instance);
                return Some(Ok(Up::AlreadyRunning));
            }
            Held::Hibernated { version, state } => match self.fit_seat(&version) {
                Ok(()) => self.wake(version, state).await,
                Err(full) => {
                    self.held = Held::Hibernated { version, state };
                    Err(full)
                }
            },
            Held::Empty => {
                let Some(version) = current else {
                    self.seat = None;
                    return None;
                };
                match self.fit_seat(&version) {
                    Ok(()) => match self.take_persisted().await {
                        Some((from, state)) => {
                            let restored = self.restore(version, &from, &state).await;
                            // Not the state's fault: keep it for the next try.
                            if matches!(restored, Err(Failure::Capacity { .. } | Failure::Start { .. })) {
                                self.unrestored = Some((from, state));
                            }
                            restored
                        }
                        None => self.start_fresh(version).await,
                    },
                    Err(full) => Err(full),
                }
            }
        };
        if result.is_err() {
            self.seat = None;
        }
        Some(result)
    }

    async fn start_fresh(&mut self, version: Arc<Version>) -> Result<Up, Failure> {
        let mut instance = self
            .start(version.clone())
            .await
            .map_err(|error| Failure::of(&version, false, error))?;
        commit_schema(&mut instance, &version).await?;
        self.install(instance);
        if let Err(trap) = self.reannounce().await {
            self.clear();
            return Err(Failure::Trap { version, trap });
        }
        Ok(Up::Started)
    }

    /// Tells a fresh instance about every open session (`on-connect` with
    /// `resumed`); a session it refuses now is closed with 1008.
    async fn reannounce(&mut self) -> Result<(), Trap> {
        let sessions: Vec<(SessionId, ConnectRequest)> = self
            .shared
            .state()
            .sessions
            .iter()
            .map(|(id, entry)| {
                (
                    *id,
                    ConnectRequest {
                        resumed: true,
                        ..entry.request.clone()
                    },
                )
            })
            .collect();
        for (id, request) in sessions {
            let Held::Running(instance) = &mut self.held else {
                return Ok(());
            };
            if let Err(reason) = instance.on_connect(id, &request).await?
                && let Some(link) = self.shared.session(id)
            {
                link.close(close::POLICY, format!("refused on resume: {reason}"));
            }
        }
        Ok(())
    }

    /// Hands pending presence changes to the plugin's `on-presence` callback
    /// (if it has one), a few rounds at most.
    pub async fn deliver_presence(&mut self) -> Result<(), Trap> {
        for _ in 0..PRESENCE_ROUNDS {
            let diffs = std::mem::take(&mut self.shared.state().diffs);
            if diffs.is_empty() {
                return Ok(());
            }
            for (topic, diff) in diffs {
                if diff.joins.is_empty() && diff.leaves.is_empty() {
                    continue;
                }
                let Held::Running(instance) = &mut self.held else {
                    return Ok(());
                };
                instance.on_presence(&topic, diff).await?;
            }
        }
        let dropped = std::mem::take(&mut self.shared.state().diffs).len();
        tracing::warn!(
            dropped,
            "on-presence keeps changing presence; later changes not delivered"
        );
        Ok(())
    }

    async fn wake(&mut self, version: Arc<Version>, state: Vec<u8>) -> Result<Up, Failure> {
        let started = Instant::now();
        let result = match self.start(version.clone()).await {
            Ok(mut instance) => match instance.import_state(&version.id.hex(), &state).await {
                Ok(Ok(())) => instance.commit_schema().await.map(|()| instance),
                Ok(Err(reason)) => Err(format!("import-state refused its own state: {reason}")),
                Err(trap) => Err(format!("import-state trapped: {trap}")),
            },
            Err(StartError::Capacity(why)) => {
                // Not the plugin's doing: keep its state for the next try.
                self.held = Held::Hibernated { version, state };
                return Err(Failure::Capacity { why });
            }
            Err(error) => Err(error.to_string()),
        };
        match result {
            Ok(instance) => {
                self.install(instance);
                metrics::histogram!("baton_wake_seconds", "plugin" => self.shared.plugin.clone())
                    .record(started.elapsed().as_secs_f64());
                Ok(Up::Woke)
            }
            Err(error) => Err(Failure::Start {
                version,
                waking: true,
                error,
            }),
        }
    }

    async fn restore(&mut self, version: Arc<Version>, from: &str, state: &[u8]) -> Result<Up, Failure> {
        let mut instance = self
            .start(version.clone())
            .await
            .map_err(|error| Failure::of(&version, false, error))?;
        let refused = match instance.import_state(from, state).await {
            Ok(Ok(())) => None,
            Ok(Err(reason)) => Some(reason),
            Err(trap) => return Err(Failure::Trap { version, trap }),
        };
        // The instance serves this version either way (fresh, if it refused
        // the kept state), so its schema must be this version's.
        commit_schema(&mut instance, &version).await?;
        self.install(instance);
        Ok(Up::Restored { refused })
    }

    /// Moves the live instance to `target`, carrying its state (OTP's
    /// `code_change`): `export-state` on the old instance, a new instance of
    /// `target` (`init`), `import-state` on it, then the old one is dropped.
    /// The new instance is started under `permits`, which bounds how many
    /// tenants hold two instances at once.
    pub async fn migrate(&mut self, target: Arc<Version>, permits: &tokio::sync::Semaphore) -> Result<(), Refusal> {
        let Held::Running(old) = &mut self.held else {
            return Ok(());
        };
        let from = old.version().clone();
        let state = match old.export_state().await {
            Ok(Ok(state)) => state,
            Ok(Err(reason)) => return Err(Refusal::Stays(format!("export-state of {} refused: {reason}", from.id))),
            Err(trap) => return Err(Refusal::Trapped(trap)),
        };
        // A version that takes more seats than the old one needs them now;
        // the old one keeps its own until it is replaced.
        self.grow_seat(&target).map_err(|failure| match failure {
            Failure::Capacity { why } => Refusal::NoRoom(why),
            _ => Refusal::Stays("no seat".into()),
        })?;
        // The reserve is counted in seats too (a version never takes more
        // than it holds: see `deploy::Deployer::prepare`).
        let _permits = permits.acquire_many(target.seats).await;
        let moved = match self.start(target.clone()).await {
            Ok(mut fresh) => match fresh.import_state(&from.id.hex(), &state).await {
                // The switch and the schema change are one: a commit that
                // fails keeps the tenant where it was.
                Ok(Ok(())) => match fresh.commit_schema().await {
                    Ok(()) => {
                        self.install(fresh);
                        Ok(())
                    }
                    Err(reason) => Err(Refusal::Stays(reason)),
                },
                Ok(Err(reason)) => Err(Refusal::Stays(format!("import-state refused: {reason}"))),
                Err(trap) => Err(Refusal::Stays(format!("import-state trapped: {trap}"))),
            },
            Err(StartError::Capacity(why)) => Err(Refusal::NoRoom(why)),
            Err(error) => Err(Refusal::Stays(error.to_string())),
        };
        // Whichever version runs now keeps its seats; the rest go back.
        self.shrink_seat(if moved.is_ok() { &target } else { &from });
        moved
    }

    /// Exports the live instance's state and drops the instance. `Ok(Err)`
    /// when the plugin cannot export (it stays awake); a trap leaves the
    /// instance in place for the caller to handle as a crash.
    pub async fn hibernate(&mut self) -> Result<Result<(), String>, Trap> {
        let Held::Running(instance) = &mut self.held else {
            return Ok(Ok(()));
        };
        let state = match instance.export_state().await? {
            Ok(state) => state,
            Err(reason) => return Ok(Err(reason)),
        };
        let version = instance.version().clone();
        tracing::debug!(bytes = state.len(), "hibernated");
        metrics::counter!("baton_hibernations_total", "plugin" => self.shared.plugin.clone()).increment(1);
        // Kept in the storage too: a hibernated tenant's state survives a
        // crash of the host.
        if self.env.config.shutdown.persist_state {
            self.keep(version.id.hex(), state.clone()).await;
        }
        self.held = Held::Hibernated { version, state };
        self.seat = None;
        Ok(Ok(()))
    }

    /// Instances started so far.
    pub fn started(&self) -> u64 {
        self.started
    }
}

/// Commits the schema change `instance`'s start opened; a commit that fails
/// is a failed start of `version`.
async fn commit_schema(instance: &mut Instance, version: &Arc<Version>) -> Result<(), Failure> {
    instance.commit_schema().await.map_err(|error| Failure::Start {
        version: version.clone(),
        waking: false,
        error,
    })
}
