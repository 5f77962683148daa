//! `counter` version 2: counts the frames of each session, with a new state
//! layout that also remembers when each session was first seen. Reads
//! version 1's state. See README.md.

use std::collections::BTreeMap;

use baton_sdk::state::{Saved, VersionedState};
use baton_sdk::{Config, Frame, HttpRequest, HttpResponse, Plugin, Session};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Settings {
    fail_init: Option<String>,
    refuse_import: bool,
    /// Refuse the state of a tenant that counted more frames than this.
    refuse_total_above: Option<u64>,
}

/// State layout 2.
#[derive(Serialize, Deserialize, Default)]
struct State {
    sessions: BTreeMap<u64, SessionState>,
    total: u64,
}

#[derive(Serialize, Deserialize, Default)]
struct SessionState {
    frames: u64,
    first_seen_ms: u64,
}

/// Layout 1, written by counter-v1.
#[derive(Deserialize)]
struct StateV1 {
    counts: BTreeMap<u64, u64>,
    total: u64,
}

impl VersionedState for State {
    const LAYOUT: u32 = 2;

    fn from_layout(saved: Saved) -> Result<Self, String> {
        match saved.layout() {
            1 => {
                let v1: StateV1 = saved.decode()?;
                let now = baton_sdk::now_ms();
                let sessions = v1
                    .counts
                    .into_iter()
                    .map(|(id, frames)| {
                        (
                            id,
                            SessionState {
                                frames,
                                first_seen_ms: now,
                            },
                        )
                    })
                    .collect();
                Ok(State {
                    sessions,
                    total: v1.total,
                })
            }
            other => Err(format!("counter v2 cannot read state layout {other}")),
        }
    }
}

struct Counter {
    state: State,
    refuse_import: bool,
    refuse_total_above: Option<u64>,
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
            refuse_total_above: settings.refuse_total_above,
        })
    }

    fn on_frame(&mut self, session: Session, frame: Frame) {
        let entry = self.state.sessions.entry(session.id()).or_insert_with(|| SessionState {
            frames: 0,
            first_seen_ms: baton_sdk::now_ms(),
        });
        entry.frames += 1;
        let count = entry.frames;
        self.state.total += 1;
        let echo = match frame {
            Frame::Text(text) => text,
            Frame::Binary(bytes) => format!("{} bytes", bytes.len()),
        };
        let reply = serde_json::json!({ "v": 2, "n": count, "total": self.state.total, "echo": echo });
        let _ = session.send_text(reply.to_string());
    }

    fn on_disconnect(&mut self, session: Session) {
        self.state.sessions.remove(&session.id());
    }

    fn on_http(&mut self, _request: HttpRequest) -> Result<HttpResponse, String> {
        HttpResponse::json(
            200,
            &serde_json::json!({ "plugin": "counter", "v": 2, "total": self.state.total, "sessions": self.state.sessions.len() }),
        )
    }

    fn export_state(&mut self) -> Result<Vec<u8>, String> {
        self.state.save()
    }

    fn import_state(&mut self, from_version: &str, state: &[u8]) -> Result<(), String> {
        if self.refuse_import {
            return Err(format!("configured to refuse the state of {from_version}"));
        }
        self.state.restore_into(state)?;
        if let Some(limit) = self.refuse_total_above.filter(|limit| self.state.total > *limit) {
            return Err(format!("a total of {} frames is above {limit}", self.state.total));
        }
        Ok(())
    }
}

baton_sdk::export!(Counter);
