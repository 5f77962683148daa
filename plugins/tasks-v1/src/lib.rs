//! `tasks` version 1: a task list shared by the users of each tenant, kept in
//! the tenant's own SQL schema. See README.md.

use baton_sdk::sql::{self, Migration, Value};
use baton_sdk::{Config, ConnectRequest, Frame, HttpRequest, HttpResponse, Plugin, Session, topics};
use serde::Deserialize;
use serde_json::{Value as Json, json};

const TOPIC: &str = "tasks";

/// What a client sends (one JSON text frame).
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Add { title: String },
    Done { id: i64 },
    List,
}

struct Tasks;

fn task(row: &[Value]) -> Json {
    json!({
        "id": row[0].as_i64(),
        "title": row[1].as_str(),
        "done": row[2].as_bool(),
    })
}

fn list() -> Result<Json, sql::Error> {
    let rows = sql::query("SELECT id, title, done FROM tasks ORDER BY id", &[])?;
    Ok(json!(rows.rows.iter().map(|r| task(r)).collect::<Vec<_>>()))
}

fn reply(session: Session, value: Json) {
    let _ = session.send(&Frame::Text(value.to_string()));
}

impl Plugin for Tasks {
    fn migrations() -> Vec<Migration> {
        vec![sql::migration(
            "001_tasks",
            "CREATE TABLE tasks (
                 id bigserial PRIMARY KEY,
                 title text NOT NULL,
                 done boolean NOT NULL DEFAULT false,
                 created_at timestamptz NOT NULL DEFAULT now())",
        )]
    }

    fn init(_config: Config) -> Result<Self, String> {
        Ok(Tasks)
    }

    fn on_connect(&mut self, session: Session, _request: &ConnectRequest) -> Result<(), String> {
        topics::subscribe(session, TOPIC).map_err(|e| e.to_string())
    }

    fn on_frame(&mut self, session: Session, frame: Frame) {
        let Frame::Text(text) = frame else {
            return reply(session, json!({"v": 1, "error": "send JSON text frames"}));
        };
        let request: Request = match serde_json::from_str(&text) {
            Ok(request) => request,
            Err(e) => return reply(session, json!({"v": 1, "error": e.to_string()})),
        };
        let result = match request {
            Request::Add { title } => sql::query(
                "INSERT INTO tasks (title) VALUES ($1) RETURNING id, title, done",
                &[Value::Text(title)],
            )
            .map(|rows| {
                let added = json!({"v": 1, "added": task(&rows.rows[0])});
                let _ = topics::publish(TOPIC, &Frame::Text(added.to_string()));
            }),
            Request::Done { id } => sql::query(
                "UPDATE tasks SET done = true WHERE id = $1 RETURNING id, title, done",
                &[Value::Int64(id)],
            )
            .map(|rows| match rows.rows.first() {
                Some(row) => {
                    let done = json!({"v": 1, "done": task(row)});
                    let _ = topics::publish(TOPIC, &Frame::Text(done.to_string()));
                }
                None => reply(session, json!({"v": 1, "error": format!("no task {id}")})),
            }),
            Request::List => list().map(|tasks| reply(session, json!({"v": 1, "tasks": tasks}))),
        };
        if let Err(e) = result {
            reply(session, json!({"v": 1, "error": e.to_string()}));
        }
    }

    fn on_http(&mut self, _request: HttpRequest) -> Result<HttpResponse, String> {
        let tasks = list().map_err(|e| e.to_string())?;
        HttpResponse::json(200, &json!({"v": 1, "tasks": tasks}))
    }

    // The tasks are in the tenant's schema: there is no state to carry.
    fn import_state(&mut self, _from_version: &str, _state: &[u8]) -> Result<(), String> {
        Ok(())
    }
}

baton_sdk::export!(Tasks);
