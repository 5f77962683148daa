//! `counter` version 1: counts the frames of each session. See README.md.

use std::collections::BTreeMap;

use baton_sdk::state::{Saved, VersionedState};
use baton_sdk::{Config, Frame, HttpRequest, HttpResponse, Plugin, Session};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Settings {
    /// Refuse to start (tests use it to deploy a version whose init fails).
    fail_init: Option<String>,
    /// Refuse every predecessor's state (a version that cannot migrate).
    refuse_import: bool,
}

/// State layout 1: frames per session, and the tenant's total.
#[derive(Serialize, Deserialize, Default)]
struct State {
    counts: BTreeMap<u64, u64>,
    total: u64,
}

/// Layout 2, written by counter-v2 (read here on a rollback).
#[derive(Deserialize)]
struct StateV2 {
    sessions: BTreeMap<u64, SessionV2>,
    total: u64,
}

#[derive(Deserialize)]
struct SessionV2 {
    frames: u64,
}

impl VersionedState for State {
    const LAYOUT: u32 = 1;

    fn from_layout(saved: Saved) -> Result<Self, String> {
        match saved.layout() {
            2 => {
                let v2: StateV2 = saved.decode()?;
                let counts = v2.sessions.into_iter().map(|(id, s)| (id, s.frames)).collect();
                Ok(State {
                    counts,
                    total: v2.total,
                })
            }
            other => Err(format!("counter v1 cannot read state layout {other}")),
        }
    }
}

struct Counter {
    state: State,
    refuse_import: bool,
}

impl Plugin for Counter {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if let Some(reason) = settings.fail_init {
            return Err(reason);
        }
        Ok(Counter {
            state: State::default(),
            refuse_import: settings.refuse_import,
        })
    }

    fn on_frame(&mut self, session: Session, frame: Frame) {
        let count = self.state.counts.entry(session.id()).or_default();
        *count += 1;
        self.state.total += 1;
        let echo = match frame {
            Frame::Text(text) => text,
            Frame::Binary(bytes) => format!("{} bytes", bytes.len()),
        };
        let reply = serde_json::json!({ "v": 1, "n": *count, "total": self.state.total, "echo": echo });
        let _ = session.send_text(reply.to_string());
    }

    fn on_disconnect(&mut self, session: Session) {
        self.state.counts.remove(&session.id());
    }

    fn on_http(&mut self, _request: HttpRequest) -> Result<HttpResponse, String> {
        HttpResponse::json(
            200,
            &serde_json::json!({ "plugin": "counter", "v": 1, "total": self.state.total, "sessions": self.state.counts.len() }),
        )
    }

    fn export_state(&mut self) -> Result<Vec<u8>, String> {
        self.state.save()
    }

    fn import_state(&mut self, from_version: &str, state: &[u8]) -> Result<(), String> {
        if self.refuse_import {
            return Err(format!("configured to refuse the state of {from_version}"));
        }
        self.state.restore_into(state)
    }
}

baton_sdk::export!(Counter);
