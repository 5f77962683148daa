//! `metering`: a metered echo service that counts usage per tenant and per
//! user for billing. See README.md for the contract.

use std::collections::BTreeMap;

use baton_sdk::jobs::{self, Info, Outcome};
use baton_sdk::state::VersionedState;
use baton_sdk::webhooks::{self, Delivery};
use baton_sdk::{
    Config, ConnectRequest, Frame, HttpRequest, HttpResponse, Plugin, Session, query_param, storage, timers,
};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(default)]
struct Settings {
    /// How often counts are flushed to storage.
    flush_ms: u64,
    /// When usage is billed (cron, UTC).
    bill_cron: String,
    /// The tenant's webhook endpoint that receives `usage.reported`.
    endpoint: String,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            flush_ms: 5000,
            bill_cron: "5 0 * * *".into(),
            endpoint: "billing".into(),
        }
    }
}

#[derive(Serialize, Deserialize, Default, Clone, Copy)]
struct Usage {
    frames: u64,
    bytes: u64,
}

impl Usage {
    fn add(&mut self, other: Usage) {
        self.frames += other.frames;
        self.bytes += other.bytes;
    }
}

/// Counts not yet flushed, and who each session is: carried across swaps.
#[derive(Serialize, Deserialize, Default)]
struct State {
    tenant: Usage,
    users: BTreeMap<String, Usage>,
    sessions: BTreeMap<u64, String>,
}

impl VersionedState for State {
    const LAYOUT: u32 = 1;
}

/// What is kept in storage.
#[derive(Serialize, Deserialize, Default)]
struct Totals {
    tenant: Usage,
    users: BTreeMap<String, Usage>,
    flushed_at: u64,
}

const TOTALS: &str = "usage/totals";
const FLUSH: &str = "flush";
/// What was billed so far: the totals at the last report.
const BILLED: &str = "usage/billed";
/// The last webhook's outcome.
const LAST_REPORT: &str = "usage/last-report";
const BILL: &str = "bill";

/// A bill: usage between two reports (`usage.reported`'s data).
#[derive(Serialize, Deserialize, Default, Clone)]
struct Billed {
    tenant: Usage,
    users: BTreeMap<String, Usage>,
    at: u64,
}

struct Metering {
    state: State,
    flush_ms: u64,
    endpoint: String,
}

impl Metering {
    fn arm(&self) {
        if let Err(e) = timers::set_named(FLUSH, self.flush_ms, FLUSH.as_bytes()) {
            baton_sdk::log::error(&format!("cannot arm the flush timer: {e}"));
        }
    }

    /// Reports the usage since the last report as a `usage.reported`
    /// webhook, then records it as billed. The idempotency key is the
    /// slot, so a retried job (or a second host) never bills a slot twice.
    fn bill(&mut self, job: &Info) -> Result<(), String> {
        self.flush()?;
        let totals: Totals = storage::get_json(TOTALS)?.unwrap_or_default();
        let billed: Billed = storage::get_json(BILLED)?.unwrap_or_default();
        let since = |now: Usage, then: Usage| Usage {
            frames: now.frames.saturating_sub(then.frames),
            bytes: now.bytes.saturating_sub(then.bytes),
        };
        let users: BTreeMap<String, Usage> = totals
            .users
            .iter()
            .map(|(user, usage)| (user.clone(), since(*usage, billed.users.get(user).copied().unwrap_or_default())))
            .filter(|(_, usage)| usage.frames > 0)
            .collect();
        let report = serde_json::json!({
            "tenant": baton_sdk::tenant_name(),
            "from_ms": billed.at,
            "to_ms": job.scheduled_ms,
            "usage": since(totals.tenant, billed.tenant),
            "users": users,
        });
        let key = format!("usage-{}", job.scheduled_ms);
        webhooks::send_json(&self.endpoint, "usage.reported", &report, Some(&key))?;
        let now = Billed {
            tenant: totals.tenant,
            users: totals.users,
            at: job.scheduled_ms,
        };
        storage::set_json(BILLED, &now)
    }

    fn flush(&mut self) -> Result<(), String> {
        let mut totals: Totals = storage::get_json(TOTALS)?.unwrap_or_default();
        totals.tenant.add(self.state.tenant);
        for (user, usage) in &self.state.users {
            totals.users.entry(user.clone()).or_default().add(*usage);
        }
        totals.flushed_at = baton_sdk::now_ms();
        storage::set_json(TOTALS, &totals)?;
        self.state.tenant = Usage::default();
        self.state.users.clear();
        Ok(())
    }
}

impl Plugin for Metering {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        let metering = Metering {
            state: State::default(),
            flush_ms: settings.flush_ms.max(10),
            endpoint: settings.endpoint,
        };
        // Idempotent: the same schedule declared by every instance is one.
        match jobs::schedule("daily-bill", &settings.bill_cron, BILL, b"") {
            Ok(()) => {}
            Err(e @ jobs::Error::Invalid(_)) => return Err(format!("[config] bill_cron: {e}")),
            // A deploy check's instance has no job store; a tenant's retries
            // at its next instance.
            Err(e) => baton_sdk::log::warn(&format!("cannot schedule billing now: {e}")),
        }
        // Named, so re-arming on every new instance never doubles it.
        if timers::pending(FLUSH).is_none() {
            metering.arm();
        }
        Ok(metering)
    }

    fn on_connect(&mut self, session: Session, request: &ConnectRequest) -> Result<(), String> {
        let user = query_param(&request.query, "user")
            .filter(|u| !u.is_empty())
            .unwrap_or("anonymous");
        self.state.sessions.insert(session.id(), user.to_owned());
        Ok(())
    }

    fn on_frame(&mut self, session: Session, frame: Frame) {
        let bytes = match &frame {
            Frame::Text(text) => text.len(),
            Frame::Binary(bytes) => bytes.len(),
        } as u64;
        let usage = Usage { frames: 1, bytes };
        self.state.tenant.add(usage);
        let user = self
            .state
            .sessions
            .get(&session.id())
            .cloned()
            .unwrap_or_else(|| "anonymous".into());
        self.state.users.entry(user).or_default().add(usage);
        let _ = session.send(&frame);
    }

    fn on_disconnect(&mut self, session: Session) {
        self.state.sessions.remove(&session.id());
    }

    fn on_timer(&mut self, _timer: u64, payload: Vec<u8>) {
        if payload == FLUSH.as_bytes() {
            if let Err(e) = self.flush() {
                baton_sdk::log::error(&format!("flush failed, will retry: {e}"));
            }
            self.arm();
        }
    }

    fn on_job(&mut self, job: &Info, _payload: Vec<u8>) -> Outcome {
        match job.kind.as_str() {
            BILL => match self.bill(job) {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Failed(e),
            },
            other => Outcome::Discard(format!("unknown job kind {other:?}")),
        }
    }

    fn on_webhook_result(&mut self, delivery: &Delivery) {
        let report = serde_json::json!({
            "id": delivery.id,
            "delivered": delivery.delivered,
            "attempts": delivery.attempts,
            "status": delivery.last_status,
            "error": delivery.last_error,
        });
        if let Err(e) = storage::set_json(LAST_REPORT, &report) {
            baton_sdk::log::error(&format!("cannot keep the report's outcome: {e}"));
        }
    }

    fn on_http(&mut self, request: HttpRequest) -> Result<HttpResponse, String> {
        if request.method == "POST" && request.path == "/bill" {
            // Bill now (what the daily schedule does), e.g. before a plan change.
            let options = jobs::Options {
                unique_key: Some("bill-now".into()),
                ..Default::default()
            };
            return match jobs::enqueue(BILL, b"", options) {
                Ok(id) => HttpResponse::json(202, &serde_json::json!({ "job": id })),
                Err(e) => Ok(HttpResponse::text(503, format!("cannot bill now: {e}"))),
            };
        }
        if request.method == "GET" && request.path == "/report" {
            let last: Option<serde_json::Value> = storage::get_json(LAST_REPORT)?;
            return HttpResponse::json(200, &last);
        }
        if request.method != "GET" || request.path != "/usage" {
            return Ok(HttpResponse::text(404, "not found"));
        }
        let mut totals: Totals = storage::get_json(TOTALS)?.unwrap_or_default();
        let flushed =
            serde_json::json!({ "tenant": totals.tenant, "users": totals.users, "flushed_at": totals.flushed_at });
        totals.tenant.add(self.state.tenant);
        for (user, usage) in &self.state.users {
            totals.users.entry(user.clone()).or_default().add(*usage);
        }
        HttpResponse::json(
            200,
            &serde_json::json!({ "tenant": totals.tenant, "users": totals.users, "flushed": flushed }),
        )
    }

    fn export_state(&mut self) -> Result<Vec<u8>, String> {
        self.state.save()
    }

    fn import_state(&mut self, _from_version: &str, state: &[u8]) -> Result<(), String> {
        self.state.restore_into(state)
    }
}

baton_sdk::export!(Metering);
