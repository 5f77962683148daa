//! `jobs-probe`: a test fixture of durable jobs, named timers and webhooks.
//! Its HTTP routes enqueue, schedule, set timers and send webhooks; what
//! runs is written to storage under `log/`, read back by `GET /log`.
//!
//! - `POST /enqueue` `{"kind","payload","delay_ms","attempts","base_ms","unique_key","unique_for_ms","timeout_ms"}`
//! - `POST /cancel` `{"id"}`, `POST /schedule` `{"name","cron","kind","payload"}`, `POST /unschedule` `{"name"}`
//! - `POST /timer` `{"name","delay_ms","payload"}` (a named, durable timer; with
//!   `"name": null` an unnamed, in-memory one, answering its `due_ms` too), `GET /timer?name=`
//! - `POST /webhook` `{"endpoint","event","payload","key"}`
//!
//! Jobs: kind `flaky` fails until its attempt number exceeds the payload's
//! `fails`; `spin` loops for ever (a timeout); `slow` runs for the
//! payload's `ms`; any
//! other kind is done at once. Each attempt logs `job <id> <kind> <attempt> <ms> <scheduled-ms>`,
//! each timer (named or not) `timer <id> <payload> <ms>`.
//! Frames are echoed.

use baton_sdk::jobs::{self, Info, Outcome, RetryPolicy};
use baton_sdk::webhooks::{self, Delivery};
use baton_sdk::{Config, Frame, HttpRequest, HttpResponse, Plugin, Session, storage, timers};
use serde::Deserialize;
use serde_json::{Value, json};

struct Probe {
    seq: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Enqueue {
    kind: String,
    payload: Value,
    delay_ms: u64,
    attempts: Option<u32>,
    base_ms: u64,
    unique_key: Option<String>,
    unique_for_ms: u64,
    timeout_ms: Option<u32>,
}

impl Probe {
    fn log(&mut self, line: String) {
        self.seq += 1;
        // Ordered by time, then a counter (two instances never share a ms
        // and a counter value: the counter starts over only with a new one).
        let key = format!("log/{:016}-{:08}", baton_sdk::now_ms(), self.seq);
        let _ = storage::set(&key, line.as_bytes());
    }

    fn route(&mut self, request: &HttpRequest) -> Result<Value, String> {
        let body: Value = if request.body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&request.body).map_err(|e| e.to_string())?
        };
        let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        Ok(match (request.method.as_str(), request.path.as_str()) {
            ("POST", "/enqueue") => {
                let e: Enqueue = serde_json::from_value(body).map_err(|e| e.to_string())?;
                let options = jobs::Options {
                    delay_ms: e.delay_ms,
                    retry: e.attempts.map(|max_attempts| RetryPolicy {
                        max_attempts,
                        base_delay_ms: e.base_ms,
                        max_delay_ms: 60_000,
                    }),
                    unique_key: e.unique_key,
                    unique_for_ms: e.unique_for_ms,
                    timeout_ms: e.timeout_ms,
                };
                match jobs::enqueue(&e.kind, e.payload.to_string().as_bytes(), options) {
                    Ok(id) => json!({ "id": id }),
                    Err(err) => json!({ "err": format!("{err:?}") }),
                }
            }
            ("POST", "/cancel") => json!({ "cancelled": jobs::cancel(body["id"].as_u64().unwrap_or(0)).map_err(|e| format!("{e:?}"))? }),
            ("POST", "/schedule") => {
                let payload = body["payload"].to_string();
                match jobs::schedule(&text(&body, "name"), &text(&body, "cron"), &text(&body, "kind"), payload.as_bytes()) {
                    Ok(()) => json!({ "ok": true }),
                    Err(err) => json!({ "err": format!("{err:?}") }),
                }
            }
            ("POST", "/unschedule") => json!({ "removed": jobs::unschedule(&text(&body, "name")).map_err(|e| format!("{e:?}"))? }),
            // `"name": null`: an unnamed (in-memory) timer, with when it is due.
            ("POST", "/timer") if body.get("name") == Some(&Value::Null) => {
                let delay = body["delay_ms"].as_u64().unwrap_or(0);
                let due_ms = baton_sdk::now_ms() + delay;
                match timers::set(delay, text(&body, "payload").as_bytes()) {
                    Ok(id) => json!({ "id": id, "due_ms": due_ms }),
                    Err(err) => json!({ "err": format!("{err:?}") }),
                }
            }
            ("POST", "/timer") => {
                let delay = body["delay_ms"].as_u64().unwrap_or(0);
                match timers::set_named(&text(&body, "name"), delay, text(&body, "payload").as_bytes()) {
                    Ok(id) => json!({ "id": id }),
                    Err(err) => json!({ "err": format!("{err:?}") }),
                }
            }
            ("GET", "/timer") => {
                let name = request.query_param("name").unwrap_or_default();
                json!({ "pending": timers::pending(name) })
            }
            ("POST", "/webhook") => {
                let payload = body["payload"].to_string();
                let key = body["key"].as_str();
                match webhooks::send(&text(&body, "endpoint"), &text(&body, "event"), payload.as_bytes(), key) {
                    Ok(id) => json!({ "id": id }),
                    Err(err) => json!({ "err": format!("{err:?}") }),
                }
            }
            ("GET", "/log") => {
                let keys = storage::list("log/", 10_000).map_err(|e| e.to_string())?;
                let lines: Vec<String> = keys
                    .iter()
                    .filter_map(|k| storage::get(k).ok().flatten())
                    .map(|v| String::from_utf8_lossy(&v).into_owned())
                    .collect();
                json!({ "log": lines })
            }
            _ => return Err(format!("no route {} {}", request.method, request.path)),
        })
    }
}

impl Plugin for Probe {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Probe { seq: 0 })
    }

    fn on_frame(&mut self, session: Session, frame: Frame) {
        let _ = session.send(&frame);
    }

    fn on_http(&mut self, request: HttpRequest) -> Result<HttpResponse, String> {
        match self.route(&request) {
            Ok(value) => HttpResponse::json(200, &value),
            Err(e) => Ok(HttpResponse::text(400, e)),
        }
    }

    fn on_job(&mut self, job: &Info, payload: Vec<u8>) -> Outcome {
        let payload: Value = serde_json::from_slice(&payload).unwrap_or(Value::Null);
        self.log(format!("job {} {} {} {} {}", job.id, job.kind, job.attempt, baton_sdk::now_ms(), job.scheduled_ms));
        match job.kind.as_str() {
            "flaky" if u64::from(job.attempt) <= payload["fails"].as_u64().unwrap_or(0) => {
                Outcome::Failed(format!("attempt {} fails on purpose", job.attempt))
            }
            "spin" => loop {
                std::hint::spin_loop();
            },
            "slow" => {
                let until = baton_sdk::now_ms() + payload["ms"].as_u64().unwrap_or(1000);
                while baton_sdk::now_ms() < until {
                    std::hint::spin_loop();
                }
                Outcome::Done
            }
            _ => Outcome::Done,
        }
    }

    fn on_timer(&mut self, timer: u64, payload: Vec<u8>) {
        self.log(format!("timer {timer} {} {}", String::from_utf8_lossy(&payload), baton_sdk::now_ms()));
    }

    fn on_webhook_result(&mut self, d: &Delivery) {
        self.log(format!(
            "webhook {} {} delivered={} attempts={} status={:?}",
            d.id, d.event_type, d.delivered, d.attempts, d.last_status
        ));
    }
}

baton_sdk::export!(Probe);
