//! `chaos`: a deliberately misbehaving plugin, for limit, supervision and
//! isolation tests and demos. See README.md for every command it obeys.

use std::hash::{BuildHasher, RandomState};
use std::hint::black_box;
use std::time::{Duration, Instant};

use baton_sdk::state::VersionedState;
use baton_sdk::{
    Config, ConnectRequest, Frame, HttpRequest, HttpResponse, Plugin, Session, presence, storage, timers, topics,
};
use serde::{Deserialize, Serialize};

#[derive(Deserialize, Default)]
#[serde(default)]
struct Settings {
    fail_init: Option<String>,
    panic_in_init: bool,
    refuse_import: bool,
    /// Panic in every this many frames (0: never): a version that fails on
    /// a share of its traffic, for rollout tests.
    trap_every: u64,
}

/// What the plugin remembers (carried across swaps, lost in a crash).
#[derive(Serialize, Deserialize, Default)]
struct State {
    frames: u64,
    connects: Vec<(u64, bool)>,
    disconnects: Vec<u64>,
    /// Presence changes seen: (topic, joined keys, left keys).
    presence: Vec<(String, Vec<String>, Vec<String>)>,
}

impl VersionedState for State {
    const LAYOUT: u32 = 1;
}

struct Chaos {
    state: State,
    /// Random per instance: tells instances apart.
    instance: u64,
    refuse_import: bool,
    trap_every: u64,
}

impl Plugin for Chaos {
    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        if settings.panic_in_init {
            panic!("chaos: configured to panic in init");
        }
        if let Some(reason) = settings.fail_init {
            return Err(reason);
        }
        Ok(Chaos {
            state: State::default(),
            instance: RandomState::new().hash_one(0u8),
            refuse_import: settings.refuse_import,
            trap_every: settings.trap_every,
        })
    }

    fn on_connect(&mut self, session: Session, request: &ConnectRequest) -> Result<(), String> {
        if let Some(reason) = baton_sdk::query_param(&request.query, "refuse") {
            return Err(reason.replace('+', " "));
        }
        self.state.connects.push((session.id(), request.resumed));
        Ok(())
    }

    fn on_disconnect(&mut self, session: Session) {
        self.state.disconnects.push(session.id());
    }

    fn on_frame(&mut self, session: Session, frame: Frame) {
        self.state.frames += 1;
        if self.trap_every > 0 && self.state.frames % self.trap_every == 0 {
            panic!("chaos: configured to panic in every {} frames", self.trap_every);
        }
        let text = match &frame {
            Frame::Text(text) => text.as_str(),
            Frame::Binary(_) => {
                let _ = session.send(&frame);
                return;
            }
        };
        let (command, argument) = text.split_once(':').unwrap_or((text, ""));
        let reply = match command {
            "panic" => panic!("chaos: asked to panic"),
            "oom" => {
                let mut hold = Vec::new();
                loop {
                    hold.push(black_box(vec![1u8; 1 << 20]));
                }
            }
            "recurse" => format!("{}", recurse(0)),
            "spin" => loop {
                black_box(());
            },
            "sleep" => {
                let ms = argument.parse().unwrap_or(0);
                let start = Instant::now();
                while start.elapsed() < Duration::from_millis(ms) {
                    black_box(());
                }
                format!("slept:{ms}")
            }
            "echo" => argument.to_owned(),
            "whoami" => format!("instance:{}", self.instance),
            "session" => format!("session:{}", session.id()),
            "count" => format!("count:{}", self.state.frames),
            "send" => {
                // send:<session id>:<text>, to any session id.
                let (id, text) = argument.split_once(':').unwrap_or((argument, ""));
                let target = Session::from_id(id.parse().unwrap_or(0));
                match target.send_text(text) {
                    Ok(()) => "sent".into(),
                    Err(e) => format!("error:{e}"),
                }
            }
            "close-other" => {
                let target = Session::from_id(argument.parse().unwrap_or(0));
                match target.close(4000, "closed by another session") {
                    Ok(()) => "closed".into(),
                    Err(e) => format!("error:{e}"),
                }
            }
            "close" => {
                // close:<code>:<reason>, this session.
                let (code, reason) = argument.split_once(':').unwrap_or((argument, ""));
                match session.close(code.parse().unwrap_or(1000), reason) {
                    Ok(()) => return,
                    Err(e) => format!("error:{e}"),
                }
            }
            "files" => match std::fs::read_dir("/") {
                Ok(_) => "files:allowed".into(),
                Err(e) => format!("files:denied:{e}"),
            },
            "env" => match std::env::var(argument) {
                Ok(value) => format!("env:{argument}={value}"),
                Err(_) => format!("env:{argument}:unset:{}", std::env::vars().count()),
            },
            "net" => match std::net::TcpStream::connect(argument) {
                Ok(_) => "net:allowed".into(),
                Err(e) => format!("net:denied:{e}"),
            },
            "log" => {
                baton_sdk::log::info(argument);
                "logged".into()
            }
            "print" => {
                println!("{argument}");
                "printed".into()
            }
            "big" => "x".repeat(argument.parse().unwrap_or(0)),
            "sub" => match topics::subscribe(session, argument) {
                Ok(()) => "subscribed".into(),
                Err(e) => format!("error:{e}"),
            },
            "pub" | "pub-others" => {
                let (topic, text) = argument.split_once(':').unwrap_or((argument, ""));
                let frame = Frame::Text(text.to_owned());
                let sent = if command == "pub" {
                    topics::publish(topic, &frame)
                } else {
                    topics::publish_except(topic, &frame, session)
                };
                match sent {
                    Ok(n) => format!("published:{n}"),
                    Err(e) => format!("error:{e}"),
                }
            }
            "track" => {
                let (topic, key) = argument.split_once(':').unwrap_or((argument, ""));
                match presence::track(session, topic, key, "{}") {
                    Ok(()) => "tracked".into(),
                    Err(e) => format!("error:{e}"),
                }
            }
            "untrack" => match presence::untrack(session, argument) {
                Ok(()) => "untracked".into(),
                Err(e) => format!("error:{e}"),
            },
            "members" => {
                let keys: Vec<String> = presence::list(argument).into_iter().map(|e| e.key).collect();
                format!("members:{}", keys.join(","))
            }
            "timer" => {
                // timer:<ms>:<text>: later, <text> is sent to this session.
                let (ms, text) = argument.split_once(':').unwrap_or((argument, ""));
                let payload = format!("{}:{text}", session.id());
                match timers::set(ms.parse().unwrap_or(0), payload.as_bytes()) {
                    Ok(id) => format!("timer:{id}"),
                    Err(e) => format!("error:{e}"),
                }
            }
            "put" => {
                let (key, value) = argument.split_once(':').unwrap_or((argument, ""));
                match storage::set(key, value.as_bytes()) {
                    Ok(()) => "stored".into(),
                    Err(e) => format!("error:{e}"),
                }
            }
            "get" => match storage::get(argument) {
                Ok(Some(value)) => format!("value:{}", String::from_utf8_lossy(&value)),
                Ok(None) => "none".into(),
                Err(e) => format!("error:{e}"),
            },
            _ => text.to_owned(),
        };
        let _ = session.send_text(reply);
    }

    fn on_timer(&mut self, _timer: u64, payload: Vec<u8>) {
        let payload = String::from_utf8_lossy(&payload);
        if let Some((session, text)) = payload.split_once(':') {
            let _ = Session::from_id(session.parse().unwrap_or(0)).send_text(text);
        }
    }

    fn on_presence(&mut self, topic: &str, joins: &[presence::Entry], leaves: &[presence::Entry]) {
        let keys = |entries: &[presence::Entry]| entries.iter().map(|e| e.key.clone()).collect();
        self.state.presence.push((topic.to_owned(), keys(joins), keys(leaves)));
    }

    fn on_http(&mut self, request: HttpRequest) -> Result<HttpResponse, String> {
        match request.path.as_str() {
            "/events" => HttpResponse::json(
                200,
                &serde_json::json!({
                    "instance": self.instance,
                    "frames": self.state.frames,
                    "connects": self.state.connects,
                    "disconnects": self.state.disconnects,
                    "presence": self.state.presence,
                }),
            ),
            "/panic" => panic!("chaos: asked to panic over HTTP"),
            "/error" => Err("chaos: asked to fail".into()),
            "/spin" => loop {
                black_box(());
            },
            _ => Ok(HttpResponse::text(200, "chaos")),
        }
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

/// Recurses until the WebAssembly stack overflows. Nothing here lives in
/// linear memory, so it is the engine's stack limit that is hit, not the
/// shadow stack in linear memory.
#[inline(never)]
#[expect(unconditional_recursion, reason = "overflowing the stack is the point")]
fn recurse(depth: u64) -> u64 {
    recurse(depth + 1).rotate_left((depth & 63) as u32) ^ depth
}

baton_sdk::export!(Chaos);
