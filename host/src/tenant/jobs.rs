//! The tenant task's side of durable jobs: a `Command::Job` runs one
//! attempt on the instance (`on-job`, `on-timer` for a named timer,
//! `on-webhook-result`) and answers how it ended; the dispatcher
//! (`crate::jobs`) keeps that in the storage. A job never waits in the task:
//! with no instance to run on (backing off, the plugin gone, the pool full)
//! it is answered "not now" and the dispatcher brings it back later.

use std::time::Duration;

use tokio::sync::oneshot;

use crate::bindings::baton::plugin::jobs::{JobInfo, JobOutcome};
use crate::bindings::baton::plugin::webhooks::WebhookResult;
use crate::instance::{Trap, TrapKind};
use crate::jobs::outbox::Outcome;
use crate::jobs::policy::{DURABLE_TIMER, Ended, NOT_RUN_DELAY_MS};
use crate::storage::Job;
use crate::storage::jobs::JobClass;
use crate::tenant::actor::{Actor, Ready};

/// A job's wall-clock bound when it sets none.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(30);

/// The longest wall-clock bound a job may set.
pub const MAX_JOB_TIMEOUT_MS: u32 = 60_000;

impl Actor {
    pub(super) async fn on_job(&mut self, job: Job, reply: oneshot::Sender<Ended>) {
        let not_now = Ended::Snooze(NOT_RUN_DELAY_MS);
        if self.incidents.supervisor.backing_off() || !matches!(self.ensure_instance().await, Ready::Yes) {
            let _ = reply.send(not_now);
            return;
        }
        let Some(instance) = self.slot.instance() else {
            let _ = reply.send(not_now);
            return;
        };
        let payload = job.payload.clone();
        let ran = match job.class {
            JobClass::Plugin => {
                let info = JobInfo {
                    id: job.id,
                    kind: job.kind.clone(),
                    attempt: job.attempt,
                    max_attempts: job.max_attempts,
                    enqueued_ms: job.enqueued_ms,
                    scheduled_ms: job.run_at_ms,
                    schedule: job.schedule.clone(),
                };
                let bound = job.timeout_ms.map_or(DEFAULT_JOB_TIMEOUT, |ms| {
                    Duration::from_millis(u64::from(ms.min(MAX_JOB_TIMEOUT_MS)))
                });
                match tokio::time::timeout(bound, instance.on_job(info, payload)).await {
                    Ok(Ok(Some(outcome))) => Ok(ended(outcome)),
                    Ok(Ok(None)) => Ok(Ended::Discard(
                        "the plugin does not export on-job (built against baton:plugin 0.1.3 or earlier)".into(),
                    )),
                    Ok(Err(trap)) => Err(trap),
                    Err(_) => Err(Trap {
                        kind: TrapKind::Deadline,
                        message: format!("the job ran past its timeout of {} ms", bound.as_millis()),
                        backtrace: String::new(),
                    }),
                }
            }
            JobClass::Timer => instance
                .on_timer(job.id | DURABLE_TIMER, &payload)
                .await
                .map(|()| Ended::Done),
            JobClass::WebhookResult => match serde_json::from_slice::<Outcome>(&payload) {
                Ok(o) => {
                    let delivery = WebhookResult {
                        id: o.id,
                        endpoint: o.endpoint,
                        event_type: o.event_type,
                        delivered: o.delivered,
                        attempts: o.attempts,
                        last_status: o.last_status,
                        last_error: o.last_error,
                    };
                    instance.on_webhook_result(delivery).await.map(|()| Ended::Done)
                }
                Err(e) => Ok(Ended::Discard(format!("an unreadable webhook result: {e}"))),
            },
            JobClass::Webhook => Ok(Ended::Discard("a delivery is not run on the instance".into())),
        };
        match ran {
            Ok(ended) => {
                let _ = reply.send(ended);
                self.deliver_presence().await;
            }
            Err(trap) => {
                let failed = format!("{}: {}", trap.kind.as_str(), trap.message);
                // A timer fired, as an unnamed one that traps does: it is not
                // fired again (nor kept as dead).
                let ended = match job.class {
                    JobClass::Timer => Ended::Done,
                    _ => Ended::Failed(failed),
                };
                let _ = reply.send(ended);
                self.crashed(trap).await;
            }
        }
    }
}

/// The host's side of what `on-job` answered.
fn ended(outcome: JobOutcome) -> Ended {
    match outcome {
        JobOutcome::Done => Ended::Done,
        JobOutcome::Failed(error) => Ended::Failed(error),
        JobOutcome::Snooze(ms) => Ended::Snooze(ms),
        JobOutcome::Discard(reason) => Ended::Discard(reason),
    }
}
