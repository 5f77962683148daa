//! `legacy-echo`: an echo plugin built against `baton:plugin@0.1.0` (the
//! frozen copy in `wit/`), with the bindings used directly. It proves that a
//! host of a later 0.1.x release still loads plugins built for 0.1.0.

wit_bindgen::generate!({ path: "wit", world: "plugin" });

use baton::plugin::session;

struct Legacy;

impl Guest for Legacy {
    fn init(_config: String) -> Result<(), String> {
        Ok(())
    }

    fn on_connect(_session: u64, _request: ConnectRequest) -> Result<(), String> {
        Ok(())
    }

    fn on_frame(session: u64, frame: Frame) {
        let _ = session::send(session, &frame);
    }

    fn on_disconnect(_session: u64) {}

    fn on_http(_request: HttpRequest) -> Result<HttpResponse, String> {
        Ok(HttpResponse {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: b"legacy-echo, built against baton:plugin@0.1.0".to_vec(),
        })
    }

    fn on_timer(_timer: u64, _payload: Vec<u8>) {}

    fn export_state() -> Result<Vec<u8>, String> {
        Ok(Vec::new())
    }

    fn import_state(_from_version: String, _state: Vec<u8>) -> Result<(), String> {
        Ok(())
    }
}

export!(Legacy);
