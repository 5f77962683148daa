//! Rollouts: a new version for some tenants first (a *canary*), then for
//! everyone, by hand (`baton promote`) or step by step while it stays healthy
//! (`[rollout] auto`), and back when it is not (`baton rollback`, or the
//! health gate); and *pins*, tenants held on a version whatever is deployed.
//!
//! A deploy whose settings have a `[rollout]` table becomes a canary when
//! there is a current version to compare it with (else it is simply
//! current): the tenants it selects migrate to it with their state, the
//! others never run it. With `auto`, a gate task compares the canary with
//! the current version over every step (`step_secs`): traps, plugin errors
//! and restarts per call, and call latency p99, within the thresholds of
//! the table. Healthy, the canary takes the next step's share of tenants
//! (after a dry run of the tenants it is about to take, on their live
//! state) and, at 100 %, becomes current; unhealthy, it is rolled back for
//! its tenants, with the figures in the timeline and the audit log. A
//! canary that crash-loops or that a tenant cannot migrate to is rolled back
//! the same way, at once, by the reports of tenants.
//!
//! Rollouts, pins and promotions act on this host's tenants (in a cluster,
//! on the tenants each node owns: a `[rollout]` table spreads with the file,
//! and selections are the same on every node; the CLI asks each node to
//! promote, pin, unpin or end a rollout, and the end of a rollout publishes
//! the current version again).

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use crate::audit::{Action, Record};
use crate::config::RolloutSettings;
use crate::deploy::{Candidate, DeployError, Deployer, Outcome};
use crate::health::Snapshot;
use crate::registry::{Activation, EventKind, PluginEntry, Selection};
use crate::version::Version;

/// How long the gate waits for a judgement before it looks again, when the
/// canary had too few calls in a step.
const RECHECK: Duration = Duration::from_secs(5);

impl Deployer {
    /// Makes a checked candidate current for everyone, or a canary when its
    /// settings ask for a rollout and there is another current version to
    /// compare it with. `who` asked for it.
    pub(super) async fn place(
        &self,
        entry: &Arc<PluginEntry>,
        candidate: Candidate,
        activation: Activation,
        who: &str,
    ) -> Outcome {
        let rollout = candidate.version.settings.rollout.clone();
        let current = entry.current();
        let canary = match (&rollout, &current) {
            (Some(rollout), Some(current)) if current.id != candidate.version.id => Some(rollout),
            _ => None,
        };
        let Some(rollout) = canary else {
            let from = current.map(|v| v.id.hex());
            let outcome = self.activate(entry, candidate.clone(), activation);
            // A deploy for everyone ends a rollout that ran (after the
            // activation: its tenants go straight to the new version).
            if let Some(canary) = entry.end_canary(EventKind::Swap, "a version for every tenant was deployed".into()) {
                tracing::info!(plugin = %entry.name, canary = %canary.version.id, "the rollout ends: a version for every tenant");
                self.persist(entry);
            }
            let action = match activation {
                Activation::Rollback => Action::Rollback,
                Activation::AutoRollback => Action::AutoRollback,
                Activation::Withdrawal => Action::Withdrawal,
                _ => Action::Deploy,
            };
            self.audit_version(action, who, entry, &candidate.version, from, Vec::new(), String::new())
                .await;
            return outcome;
        };
        let Candidate { version, settings_text } = candidate;
        let selection = selection_of(rollout);
        tracing::info!(plugin = %entry.name, %version.id, tenants = %selection.describe(), "deployed as a canary");
        let from = current.map(|v| v.id.hex());
        let tenants = rollout.tenants.clone();
        let detail = format!(
            "{}{}",
            selection.describe(),
            if rollout.auto { ", automatic" } else { "" }
        );
        entry.start_canary(version.clone(), selection, settings_text);
        self.persist(entry);
        self.audit_version(Action::Canary, who, entry, &version, from, tenants, detail)
            .await;
        if rollout.auto {
            self.start_gate(entry, version.generation, rollout.clone());
        }
        Outcome::Canary {
            version: version.id.short(),
            generation: version.generation,
        }
    }

    /// Starts the health gate of the automatic rollout of `generation`.
    pub(super) fn start_gate(&self, entry: &Arc<PluginEntry>, generation: u64, plan: RolloutSettings) {
        tokio::spawn(gate(self.me.clone(), entry.clone(), generation, plan));
    }

    /// `baton promote NAME`: the canary becomes every tenant's version,
    /// after a dry run of the tenants not on it yet (any that would refuse
    /// its state makes the promotion fail, and the rollout stays as it is).
    pub async fn promote(&self, name: &str, who: &str) -> Result<Outcome, DeployError> {
        self.known(name)?;
        let _held = self.hold(name).await;
        let entry = self
            .registry
            .get(name)
            .ok_or_else(|| DeployError::NotFound(format!("no plugin named {name:?} is deployed")))?;
        let canary = entry
            .canary()
            .ok_or_else(|| DeployError::Rollback(format!("{name} has no rollout to promote")))?;
        self.promote_locked(&entry, &canary.version, who, String::new()).await
    }

    async fn promote_locked(
        &self,
        entry: &Arc<PluginEntry>,
        canary: &Arc<Version>,
        who: &str,
        detail: String,
    ) -> Result<Outcome, DeployError> {
        let joining = self.joining(entry, &Selection::Percent(100));
        let trial = self.try_tenants(entry, canary, &joining).await;
        if let Some(refusal) = trial.refusal() {
            let why = format!("not promoted: {refusal}");
            self.audit_version(Action::Promote, who, entry, canary, None, joining, why.clone())
                .await;
            return Err(DeployError::Rollback(why));
        }
        let from = entry.current().map(|v| v.id.hex());
        let settings = entry
            .history()
            .into_iter()
            .rev()
            .find(|r| r.hash == canary.id.hex())
            .map(|r| r.settings)
            .unwrap_or_default();
        entry.promote(settings);
        self.persist(entry);
        self.publish_current(entry, self.artifacts.original_path(&canary.id));
        tracing::info!(plugin = %entry.name, version = %canary.id, "promoted: every tenant");
        let detail = match detail.is_empty() {
            true => format!("{} tenants tried first on their live state", joining.len()),
            false => detail,
        };
        self.audit_version(Action::Promote, who, entry, canary, from, Vec::new(), detail)
            .await;
        Ok(Outcome::Activated {
            version: canary.id.short(),
            generation: canary.generation,
        })
    }

    /// Ends the rollout of `entry` (the caller holds the plugin's lock): its
    /// tenants go back to the current version. `activation` says why: an
    /// operator's rollback, or an automatic one (`failed`: the canary is
    /// marked failed, so nothing rolls back to it).
    pub(super) async fn end_rollout(
        &self,
        entry: &Arc<PluginEntry>,
        activation: Activation,
        why: &str,
        who: &str,
    ) -> Option<Outcome> {
        let canary = entry.canary()?;
        let hash = canary.version.id.hex();
        let (kind, action) = match activation {
            Activation::Rollback => (EventKind::Rollback, Action::Rollback),
            Activation::Withdrawal => (EventKind::Withdrawal, Action::Withdrawal),
            _ => (EventKind::AutoRollback, Action::AutoRollback),
        };
        match activation {
            Activation::Rollback => entry.mark_rolled_back(&hash),
            _ => entry.mark_failed(&hash, why),
        }
        let detail = format!("rollout of generation {} ended: {why}", canary.version.generation);
        if activation != Activation::Rollback {
            entry.report_error(
                kind,
                Some(canary.version.id.short()),
                format!(
                    "canary {} (generation {})",
                    canary.version.id.short(),
                    canary.version.generation
                ),
                format!("{why}; its tenants go back to the current version"),
            );
        }
        entry.end_canary(kind, detail);
        self.persist(entry);
        tracing::warn!(plugin = %entry.name, canary = %canary.version.id, "rollout rolled back: {why}");
        // What every tenant runs is the current version again: a node of a
        // cluster that starts now must not join the ended rollout.
        if let Some(current) = entry.current() {
            self.publish_current(entry, self.artifacts.original_path(&current.id));
        }
        let current = entry.current().map(|v| v.id.hex());
        let tenants = self.holders(entry, &canary.selection);
        let record = Record {
            who: who.to_owned(),
            plugin: Some(entry.name.clone()),
            version: current.clone(),
            from: Some(hash),
            tenants,
            outcome: String::new(),
            detail: why.to_owned(),
        };
        self.audit.record(action, record).await;
        entry.current().map(|v| Outcome::Activated {
            version: v.id.short(),
            generation: v.generation,
        })
    }

    /// A step of an automatic rollout: the canary takes `selection`, after
    /// a dry run of the tenants it is about to take (a refusal rolls it
    /// back). `false` when the rollout ended.
    async fn step(&self, entry: &Arc<PluginEntry>, generation: u64, selection: Selection, figures: String) -> bool {
        let _held = self.hold(&entry.name).await;
        let Some(canary) = entry.canary().filter(|c| c.version.generation == generation) else {
            return false;
        };
        let joining = self.joining(entry, &selection);
        let trial = self.try_tenants(entry, &canary.version, &joining).await;
        if let Some(refusal) = trial.refusal() {
            let why = format!("a dry run before the next step failed: {refusal}");
            self.end_rollout(entry, Activation::AutoRollback, &why, "baton").await;
            return false;
        }
        let detail = format!("{}; healthy: {figures}", selection.describe());
        entry.widen_canary(selection);
        self.persist(entry);
        self.audit_version(
            Action::RolloutStep,
            "baton",
            entry,
            &canary.version,
            None,
            joining,
            detail,
        )
        .await;
        true
    }

    /// The tenants with a task that `selection` takes and that run neither
    /// the canary nor a pinned version yet.
    fn joining(&self, entry: &PluginEntry, selection: &Selection) -> Vec<String> {
        let placement = entry.placement();
        let before = placement.canary.as_ref().map(|c| c.selection.clone());
        self.tenants
            .of_plugin(&entry.name)
            .into_iter()
            .map(|t| t.shared().name.clone())
            .filter(|t| selection.contains(t) && !placement.pins.contains_key(t))
            .filter(|t| !before.as_ref().is_some_and(|b| b.contains(t)))
            .collect()
    }

    /// The tenants with a task that `selection` takes (for the audit log).
    fn holders(&self, entry: &PluginEntry, selection: &Selection) -> Vec<String> {
        let mut tenants: Vec<String> = self
            .tenants
            .of_plugin(&entry.name)
            .into_iter()
            .map(|t| t.shared().name.clone())
            .filter(|t| selection.contains(t))
            .collect();
        tenants.sort();
        tenants
    }

    /// Appends what happened to `version` of `entry` to the audit log.
    #[expect(clippy::too_many_arguments, reason = "an audit record has that many parts")]
    pub(super) async fn audit_version(
        &self,
        action: Action,
        who: &str,
        entry: &PluginEntry,
        version: &Version,
        from: Option<String>,
        tenants: Vec<String>,
        detail: String,
    ) {
        let outcome = if detail.starts_with("not ") {
            detail.clone()
        } else {
            String::new()
        };
        let record = Record {
            who: who.to_owned(),
            plugin: Some(entry.name.clone()),
            version: Some(version.id.hex()),
            from,
            tenants,
            outcome,
            detail,
        };
        self.audit.record(action, record).await;
    }
}

/// The first tenants of a rollout.
fn selection_of(rollout: &RolloutSettings) -> Selection {
    let named: BTreeSet<String> = rollout.tenants.iter().cloned().collect();
    match (named.is_empty(), rollout.percent) {
        (false, 0) => Selection::Tenants(named),
        (true, percent) => Selection::Percent(percent),
        (false, percent) => Selection::Both(named, percent),
    }
}

/// Whether the canary's window is healthy next to the current version's:
/// the figures either way, for the timeline.
fn judge(canary: &Snapshot, current: &Snapshot, plan: &RolloutSettings) -> Result<String, String> {
    let figures = format!(
        "{} canary calls: traps/call {:.4} vs {:.4}, errors/call {:.4} vs {:.4}, restarts {} vs {}, \
         p99 {:.1} ms vs {:.1} ms",
        canary.calls,
        canary.trap_rate(),
        current.trap_rate(),
        canary.error_rate(),
        current.error_rate(),
        canary.restarts,
        current.restarts,
        canary.p99().as_secs_f64() * 1000.0,
        current.p99().as_secs_f64() * 1000.0,
    );
    let restarts = |s: &Snapshot| {
        if s.calls == 0 {
            0.0
        } else {
            s.restarts as f64 / s.calls as f64
        }
    };
    let slower = current.calls > 0
        && canary.p99() > (current.p99().mul_f64(plan.max_p99_ratio)).max(current.p99() + Duration::from_millis(5));
    let unhealthy = if canary.trap_rate() > current.trap_rate() + plan.max_trap_rate {
        Some("it traps more")
    } else if canary.error_rate() > current.error_rate() + plan.max_error_rate {
        Some("it fails more")
    } else if restarts(canary) > restarts(current) + plan.max_trap_rate {
        Some("it restarts more")
    } else if slower {
        Some("it is slower")
    } else {
        None
    };
    match unhealthy {
        Some(why) => Err(format!("unhealthy, {why}: {figures}")),
        None => Ok(figures),
    }
}

/// The health gate of the automatic rollout of `generation` of `entry`:
/// judges every step, moves on or rolls back; ends when the rollout does.
async fn gate(deployer: Weak<Deployer>, entry: Arc<PluginEntry>, generation: u64, plan: RolloutSettings) {
    // A rollout resumed after a restart goes on from the share it had.
    let had = entry.canary().map_or(0, |c| c.selection.percent());
    let mut steps = plan.steps.iter().copied().filter(|percent| *percent > had);
    let mut next = steps.next();
    let mut waited = Duration::ZERO;
    let mut start: Option<(Arc<Version>, Snapshot, Arc<Version>, Snapshot)> = None;
    loop {
        let (Some(canary), Some(current)) = (entry.canary(), entry.current()) else {
            return;
        };
        if canary.version.generation != generation {
            return;
        }
        let (c0, b0) = match &start {
            Some((c, c0, b, b0)) if Arc::ptr_eq(c, &canary.version) && Arc::ptr_eq(b, &current) => {
                (c0.clone(), b0.clone())
            }
            _ => {
                let snapshots = (canary.version.health.snapshot(), current.health.snapshot());
                start = Some((
                    canary.version.clone(),
                    snapshots.0.clone(),
                    current.clone(),
                    snapshots.1.clone(),
                ));
                waited = Duration::ZERO;
                snapshots
            }
        };
        let period = match waited < Duration::from_secs(plan.step_secs) {
            true => Duration::from_secs(plan.step_secs) - waited,
            false => RECHECK,
        };
        // A change of placement or current version (the rollout ended, say)
        // wakes the gate early: it does not keep the versions alive idly.
        let slept = std::time::Instant::now();
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = entry.changed() => {}
        }
        waited += slept.elapsed();
        let Some(this) = deployer.upgrade() else { return };
        if entry.canary().is_none_or(|c| c.version.generation != generation) {
            return;
        }
        if slept.elapsed() < period {
            continue;
        }
        let canary_window = canary.version.health.snapshot().since(&c0);
        let current_window = current.health.snapshot().since(&b0);
        if canary_window.calls < plan.min_calls {
            tracing::debug!(plugin = %entry.name, calls = canary_window.calls, "the canary's step waits for more calls");
            continue;
        }
        let verdict = judge(&canary_window, &current_window, &plan);
        match verdict {
            Err(why) => {
                let _held = this.hold(&entry.name).await;
                if entry.canary().is_some_and(|c| c.version.generation == generation) {
                    this.end_rollout(&entry, Activation::AutoRollback, &why, "baton").await;
                }
                return;
            }
            Ok(figures) => match next {
                Some(percent) if percent < 100 => {
                    let widened = canary.selection.widened(percent);
                    if !this.step(&entry, generation, widened, figures).await {
                        return;
                    }
                    next = steps.next();
                    start = None;
                }
                _ => {
                    let _held = this.hold(&entry.name).await;
                    if entry.canary().is_some_and(|c| c.version.generation == generation) {
                        let detail = format!("healthy: {figures}");
                        if let Err(e) = this.promote_locked(&entry, &canary.version, "baton", detail).await {
                            let why = e.to_string();
                            this.end_rollout(&entry, Activation::AutoRollback, &why, "baton").await;
                        }
                    }
                    return;
                }
            },
        }
    }
}
