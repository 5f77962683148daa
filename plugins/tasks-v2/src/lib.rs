//! `tasks` version 2: version 1 with priorities. Its migration adds a
//! column (and a length check on titles) while clients stay connected;
//! version 1 runs on the new schema too (expand only). See README.md.

use baton_sdk::sql::{self, Migration, Value};
use baton_sdk::{Config, ConnectRequest, Frame, HttpRequest, HttpResponse, Plugin, Session, topics};
use serde::Deserialize;
use serde_json::{Value as Json, json};

const TOPIC: &str = "tasks";

#[derive(Deserialize, Default)]
#[serde(default)]
struct Settings {
    /// Refuse every predecessor (tests: a move that must roll back).
    refuse_import: bool,
}

#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Add {
        title: String,
        #[serde(default)]
        priority: i64,
    },
    Done {
        id: i64,
    },
    List,
}

struct Tasks {
    refuse_import: bool,
}

fn task(row: &[Value]) -> Json {
    json!({
        "id": row[0].as_i64(),
        "title": row[1].as_str(),
        "done": row[2].as_bool(),
        "priority": row[3].as_i64(),
    })
}

fn list() -> Result<Json, sql::Error> {
    let rows = sql::query(
        "SELECT id, title, done, priority FROM tasks ORDER BY priority DESC, id",
        &[],
    )?;
    Ok(json!(rows.rows.iter().map(|r| task(r)).collect::<Vec<_>>()))
}

fn reply(session: Session, value: Json) {
    let _ = session.send(&Frame::Text(value.to_string()));
}

impl Plugin for Tasks {
    fn migrations() -> Vec<Migration> {
        vec![
            sql::migration(
                "001_tasks",
                "CREATE TABLE tasks (
                     id bigserial PRIMARY KEY,
                     title text NOT NULL,
                     done boolean NOT NULL DEFAULT false,
                     created_at timestamptz NOT NULL DEFAULT now())",
            ),
            sql::migration(
                "002_priority",
                "ALTER TABLE tasks ADD COLUMN priority integer NOT NULL DEFAULT 0;
                 ALTER TABLE tasks ADD CONSTRAINT title_length CHECK (length(title) <= 200);",
            ),
        ]
    }

    fn init(config: Config) -> Result<Self, String> {
        let settings: Settings = config.parse()?;
        Ok(Tasks {
            refuse_import: settings.refuse_import,
        })
    }

    fn on_connect(&mut self, session: Session, _request: &ConnectRequest) -> Result<(), String> {
        topics::subscribe(session, TOPIC).map_err(|e| e.to_string())
    }

    fn on_frame(&mut self, session: Session, frame: Frame) {
        let Frame::Text(text) = frame else {
            return reply(session, json!({"v": 2, "error": "send JSON text frames"}));
        };
        let request: Request = match serde_json::from_str(&text) {
            Ok(request) => request,
            Err(e) => return reply(session, json!({"v": 2, "error": e.to_string()})),
        };
        let result = match request {
            Request::Add { title, priority } => sql::query(
                "INSERT INTO tasks (title, priority) VALUES ($1, $2) RETURNING id, title, done, priority",
                &[Value::Text(title), Value::Int64(priority)],
            )
            .map(|rows| {
                let added = json!({"v": 2, "added": task(&rows.rows[0])});
                let _ = topics::publish(TOPIC, &Frame::Text(added.to_string()));
            }),
            Request::Done { id } => sql::query(
                "UPDATE tasks SET done = true WHERE id = $1 RETURNING id, title, done, priority",
                &[Value::Int64(id)],
            )
            .map(|rows| match rows.rows.first() {
                Some(row) => {
                    let done = json!({"v": 2, "done": task(row)});
                    let _ = topics::publish(TOPIC, &Frame::Text(done.to_string()));
                }
                None => reply(session, json!({"v": 2, "error": format!("no task {id}")})),
            }),
            Request::List => list().map(|tasks| reply(session, json!({"v": 2, "tasks": tasks}))),
        };
        if let Err(e) = result {
            reply(session, json!({"v": 2, "error": e.to_string()}));
        }
    }

    fn on_http(&mut self, _request: HttpRequest) -> Result<HttpResponse, String> {
        let tasks = list().map_err(|e| e.to_string())?;
        HttpResponse::json(200, &json!({"v": 2, "tasks": tasks}))
    }

    fn import_state(&mut self, from_version: &str, _state: &[u8]) -> Result<(), String> {
        if self.refuse_import {
            return Err(format!("configured to refuse {from_version}"));
        }
        // Runs inside the move's transaction, after the migrations: the new
        // column is there, and this write commits or rolls back with them.
        sql::execute("UPDATE tasks SET priority = 1 WHERE NOT done AND priority = 0", &[])
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

baton_sdk::export!(Tasks);
