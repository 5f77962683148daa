//! `echo`: sends every frame back to the session it came from, unchanged.
//! See README.md for its contract.

use baton_sdk::{Config, Frame, HttpRequest, HttpResponse, Plugin, Session};

struct Echo;

impl Plugin for Echo {
    fn init(_config: Config) -> Result<Self, String> {
        Ok(Echo)
    }

    fn on_frame(&mut self, session: Session, frame: Frame) {
        // A session that closed meanwhile has nobody to echo to.
        let _ = session.send(&frame);
    }

    fn on_http(&mut self, request: HttpRequest) -> Result<HttpResponse, String> {
        match request.method.as_str() {
            "GET" => HttpResponse::json(
                200,
                &serde_json::json!({ "name": "echo", "version": env!("CARGO_PKG_VERSION") }),
            ),
            _ => Ok(HttpResponse::text(405, "method not allowed")),
        }
    }
}

baton_sdk::export!(Echo);
