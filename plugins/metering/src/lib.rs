//! `metering`: a metered echo service that counts usage per tenant and per
//! user for billing. See README.md for the contract.

use std::collections::BTreeMap;

use baton_sdk::state::VersionedState;
use baton_sdk::{
    Config, ConnectRequest, Frame, HttpRequest, HttpResponse, Plugin, Session, query_param, storage, timers,
};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(default)]
struct Settings {
    /// How often counts are flushed to storage.
    flush_ms: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { flush_ms: 5000 }
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

struct Metering {
    state: State,
    flush_ms: u64,
}

impl Metering {
    fn arm(&self) {
        if let Err(e) = timers::set_named(FLUSH, self.flush_ms, FLUSH.as_bytes()) {
            baton_sdk::log::error(&format!("cannot arm the flush timer: {e}"));
        }
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
        };
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

    fn on_http(&mut self, request: HttpRequest) -> Result<HttpResponse, String> {
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
