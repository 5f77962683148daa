//! What clients are told when something goes wrong, in one place: the HTTP
//! statuses of rejected requests (client and admin listeners alike, through
//! [`Rejection`]) and the WebSocket close codes of ended sessions
//! ([`close`]). No other module names a status or a close code number.

use bytes::Bytes;
use http::{Response, StatusCode, header};
use http_body_util::Full;

/// WebSocket close codes the host sends (RFC 6455, section 7.4.1).
pub mod close {
    /// The plugin or the client ended the session normally.
    pub const NORMAL: u16 = 1000;
    /// The host is shutting down, the plugin was removed, or the session was
    /// idle past `sessions.idle_timeout_secs`.
    pub const GOING_AWAY: u16 = 1001;
    /// The client broke the protocol.
    pub const PROTOCOL: u16 = 1002;
    /// A text frame was not valid UTF-8.
    pub const INVALID_DATA: u16 = 1007;
    /// The client did not read its frames and its outbound queue filled up, or
    /// the plugin refused a session re-announced after a crash.
    pub const SLOW_CONSUMER: u16 = 1008;
    /// The plugin refused a resumed session (same code as other policy closes).
    pub const POLICY: u16 = 1008;
    /// A frame above `limits.max_frame_bytes`.
    pub const TOO_BIG: u16 = 1009;
    /// The host restarts: a session that could not be handed to the new
    /// process (its client did not take what was queued for it in time).
    pub const SERVICE_RESTART: u16 = 1012;
    /// The tenant's instance could not take frames for
    /// `sessions.mailbox_wait_secs` (overloaded, or backing off after crashes).
    pub const TRY_AGAIN_LATER: u16 = 1013;

    /// Longest close reason RFC 6455 allows: a control frame carries 125
    /// bytes, two of which are the code.
    pub const MAX_REASON_BYTES: usize = 123;

    /// Whether a plugin may close a session with `code`: a normal close or
    /// one of the codes reserved for applications (3000–4999).
    pub fn allowed_for_plugins(code: u16) -> bool {
        code == NORMAL || (3000..=4999).contains(&code)
    }

    /// `reason` cut to fit a close frame.
    pub fn bounded_reason(reason: &str) -> String {
        crate::text::prefix(reason, MAX_REASON_BYTES).to_owned()
    }
}

/// A request the host answers itself, without the plugin.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
pub enum Rejection {
    /// No such route, plugin or tenant: 404.
    #[error("{0}")]
    NotFound(String),
    /// The plugin refused the connection: 403 with its reason.
    #[error("{0}")]
    Refused(String),
    /// Malformed request (bad WebSocket handshake, bad method): 400.
    #[error("{0}")]
    BadRequest(String),
    /// Request body above `http.max_body_bytes`: 413.
    #[error("{0}")]
    TooLarge(String),
    /// The request body did not arrive within `http.body_read_timeout_ms`: 408.
    #[error("{0}")]
    Timeout(String),
    /// A limit on sessions was hit: 429.
    #[error("{0}")]
    TooMany(String),
    /// The plugin failed (its own error or a crash): 500.
    #[error("{0}")]
    PluginFailed(String),
    /// The tenant's instance is backing off after crashes, or the host is
    /// shutting down: 503.
    #[error("{0}")]
    Unavailable(String),
    /// A capacity of the host is exhausted (the instance pool): 503. Never a
    /// fault of the plugin.
    #[error("{0}")]
    AtCapacity(String),
    /// Too many new tenants at once (`admission`): 429.
    #[error("{0}")]
    RateLimited(String),
    /// Admin: no or a wrong bearer token: 401.
    #[error("{0}")]
    Unauthorized(String),
    /// Admin: a browser request from another site: 403.
    #[error("{0}")]
    Forbidden(String),
    /// Admin: the `Host` does not name this listener (DNS rebinding): 421.
    #[error("{0}")]
    Misdirected(String),
    /// Admin: a known path with another method: 405.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// Admin: the request conflicts with the plugin's state (nothing to roll
    /// back to): 409.
    #[error("{0}")]
    Conflict(String),
    /// The host failed to do what it was asked: 500.
    #[error("{0}")]
    Internal(String),
}

impl Rejection {
    /// The HTTP status for this rejection.
    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::NotFound(_) => StatusCode::NOT_FOUND,
            Rejection::Refused(_) => StatusCode::FORBIDDEN,
            Rejection::BadRequest(_) => StatusCode::BAD_REQUEST,
            Rejection::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::Timeout(_) => StatusCode::REQUEST_TIMEOUT,
            Rejection::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
            Rejection::PluginFailed(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Rejection::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::AtCapacity(_) => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Rejection::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Rejection::Forbidden(_) => StatusCode::FORBIDDEN,
            Rejection::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            Rejection::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Rejection::Conflict(_) => StatusCode::CONFLICT,
            Rejection::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The answer while a tenant backs off after a crash loop.
    pub fn backing_off() -> Rejection {
        Rejection::Unavailable("the tenant's plugin instance is restarting after crashes; try again later".into())
    }

    /// The response: the status with a JSON body `{"error": "..."}`.
    /// A 503 says when to try again (`Retry-After`, in seconds).
    pub fn into_response(self) -> Response<Full<Bytes>> {
        let mut response = json_error(self.status(), &self.to_string());
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
        }
        response
    }
}

/// A JSON response with `status`.
pub fn json_response<T: serde::Serialize>(status: StatusCode, value: &T) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => with_json_body(status, body),
        Err(e) => Rejection::Internal(e.to_string()).into_response(),
    }
}

/// A JSON error response: `{"error": message}`.
fn json_error(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({ "error": message }).to_string();
    with_json_body(status, body.into_bytes())
}

fn with_json_body(status: StatusCode, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejections_are_json_with_their_status() {
        let response = Rejection::Refused("no room".into()).into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        let long = "é".repeat(100);
        let reason = close::bounded_reason(&long);
        assert!(reason.len() <= close::MAX_REASON_BYTES && reason.len() >= close::MAX_REASON_BYTES - 1);
        assert!(close::allowed_for_plugins(close::NORMAL) && close::allowed_for_plugins(4000));
        assert!(!close::allowed_for_plugins(close::GOING_AWAY));
    }
}
