//! `fetcher`: sends the request it is given through the host's outbound
//! HTTP and answers with the response or the error, as JSON; echoes
//! WebSocket frames. A test plugin: the outbound HTTP tests drive it. See
//! README.md.

use baton_sdk::outbound::{self, Error, Request};
use baton_sdk::{Config, Frame, HttpRequest, HttpResponse, Plugin, Session};
use serde::Deserialize;
use serde_json::json;

struct Fetcher;

/// The body of `POST /fetch`.
#[derive(Deserialize)]
struct Fetch {
    #[serde(default = "get")]
    method: String,
    url: String,
    #[serde(default)]
    headers: Vec<(String, String)>,
    #[serde(default)]
    body: String,
    timeout_ms: Option<u32>,
}

fn get() -> String {
    "GET".into()
}

/// The error as `<variant>` or `<variant>: <text>`.
fn describe(e: &Error) -> String {
    match e {
        Error::NotAllowed(why) => format!("not-allowed: {why}"),
        Error::Invalid(why) => format!("invalid: {why}"),
        Error::Timeout => "timeout".into(),
        Error::TooLarge => "too-large".into(),
        Error::Failed(why) => format!("failed: {why}"),
    }
}

impl Plugin for Fetcher {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Fetcher)
    }

    fn on_frame(&mut self, session: Session, frame: Frame) {
        let _ = session.send(&frame);
    }

    fn on_http(&mut self, request: HttpRequest) -> Result<HttpResponse, String> {
        if (request.method.as_str(), request.path.as_str()) != ("POST", "/fetch") {
            return Ok(HttpResponse::text(404, "POST /fetch"));
        }
        let fetch: Fetch = match serde_json::from_slice(&request.body) {
            Ok(fetch) => fetch,
            Err(e) => return Ok(HttpResponse::text(400, format!("bad request: {e}"))),
        };
        let request = Request {
            method: fetch.method,
            url: fetch.url,
            headers: fetch.headers,
            body: fetch.body.into_bytes(),
            timeout_ms: fetch.timeout_ms,
        };
        let answer = match outbound::fetch(&request) {
            Ok(response) => json!({ "ok": {
                "status": response.status,
                "headers": response.headers,
                "body": String::from_utf8_lossy(&response.body),
            }}),
            Err(e) => json!({ "err": describe(&e) }),
        };
        HttpResponse::json(200, &answer)
    }
}

baton_sdk::export!(Fetcher);
