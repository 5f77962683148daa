//! `chat`: rooms with history and presence. See README.md for the contract.

use std::collections::BTreeMap;

use baton_sdk::state::VersionedState;
use baton_sdk::{
    Config, ConnectRequest, Frame, HttpRequest, HttpResponse, Plugin, Session, presence, query_param, storage, topics,
};
use serde::{Deserialize, Serialize};

/// Messages kept per room.
const HISTORY: usize = 50;

/// A chat message, as stored and as sent.
#[derive(Serialize, Deserialize, Clone)]
struct Message {
    user: String,
    text: String,
    at: u64,
}

#[derive(Serialize, Deserialize, Clone)]
struct Member {
    room: String,
    user: String,
}

/// Who is who, carried across hot swaps (subscriptions and presence are the host's).
#[derive(Serialize, Deserialize, Default)]
struct State {
    members: BTreeMap<u64, Member>,
}

impl VersionedState for State {
    const LAYOUT: u32 = 1;
}

struct Chat {
    state: State,
}

fn topic(room: &str) -> String {
    format!("room:{room}")
}

fn history_key(room: &str) -> String {
    format!("rooms/{room}/messages")
}

fn valid(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && !name.contains('/')
}

fn send_json(session: Session, value: &serde_json::Value) {
    let _ = session.send_text(value.to_string());
}

impl Plugin for Chat {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Chat {
            state: State::default(),
        })
    }

    fn on_connect(&mut self, session: Session, request: &ConnectRequest) -> Result<(), String> {
        let room = query_param(&request.query, "room").unwrap_or("");
        let user = query_param(&request.query, "user").unwrap_or("");
        if !valid(room) || !valid(user) {
            return Err("join with ?room=<room>&user=<user> (1-64 characters, no '/')".into());
        }
        let member = Member {
            room: room.to_owned(),
            user: user.to_owned(),
        };
        self.state.members.insert(session.id(), member.clone());
        if request.resumed {
            // The host kept the subscription and presence; only our memory was lost.
            return Ok(());
        }
        let history: Vec<Message> = storage::get_json(&history_key(room))?.unwrap_or_default();
        for message in history {
            send_json(
                session,
                &serde_json::json!({ "type": "message", "user": message.user, "text": message.text, "at": message.at, "history": true }),
            );
        }
        topics::subscribe(session, &topic(room)).map_err(|e| e.to_string())?;
        let meta = serde_json::json!({ "user": user, "joined_at": baton_sdk::now_ms() }).to_string();
        presence::track(session, &topic(room), user, &meta).map_err(|e| e.to_string())?;
        Ok(())
    }

    fn on_frame(&mut self, session: Session, frame: Frame) {
        let Some(member) = self.state.members.get(&session.id()).cloned() else {
            return;
        };
        let Frame::Text(text) = frame else {
            send_json(
                session,
                &serde_json::json!({ "type": "error", "error": "send text frames" }),
            );
            return;
        };
        if text == "/leave" {
            // Leave the room but stay connected.
            let _ = presence::untrack(session, &topic(&member.room));
            let _ = topics::unsubscribe(session, &topic(&member.room));
            self.state.members.remove(&session.id());
            send_json(session, &serde_json::json!({ "type": "left", "room": member.room }));
            return;
        }
        let message = Message {
            user: member.user.clone(),
            text,
            at: baton_sdk::now_ms(),
        };
        let frame =
            serde_json::json!({ "type": "message", "user": message.user, "text": message.text, "at": message.at });
        // Everyone gets it first; then it is kept.
        let _ = topics::publish(&topic(&member.room), &Frame::Text(frame.to_string()));
        let key = history_key(&member.room);
        let mut history: Vec<Message> = storage::get_json(&key).ok().flatten().unwrap_or_default();
        history.push(message);
        let excess = history.len().saturating_sub(HISTORY);
        history.drain(..excess);
        if let Err(e) = storage::set_json(&key, &history) {
            baton_sdk::log::error(&format!("cannot keep the history of {}: {e}", member.room));
        }
    }

    fn on_presence(&mut self, topic: &str, joins: &[presence::Entry], leaves: &[presence::Entry]) {
        let users = |entries: &[presence::Entry]| entries.iter().map(|e| e.key.clone()).collect::<Vec<_>>();
        let frame = serde_json::json!({ "type": "presence", "joins": users(joins), "leaves": users(leaves) });
        let _ = topics::publish(topic, &Frame::Text(frame.to_string()));
    }

    fn on_disconnect(&mut self, session: Session) {
        self.state.members.remove(&session.id());
    }

    fn on_http(&mut self, request: HttpRequest) -> Result<HttpResponse, String> {
        match (request.method.as_str(), request.segments().as_slice()) {
            ("GET", ["rooms", room, "messages"]) => {
                let history: Vec<Message> = storage::get_json(&history_key(room))?.unwrap_or_default();
                HttpResponse::json(200, &history)
            }
            ("GET", ["rooms", room, "members"]) => {
                let members: Vec<String> = presence::list(&topic(room)).into_iter().map(|e| e.key).collect();
                HttpResponse::json(200, &members)
            }
            _ => Ok(HttpResponse::text(404, "not found")),
        }
    }

    fn export_state(&mut self) -> Result<Vec<u8>, String> {
        self.state.save()
    }

    fn import_state(&mut self, _from_version: &str, state: &[u8]) -> Result<(), String> {
        self.state.restore_into(state)
    }
}

baton_sdk::export!(Chat);
