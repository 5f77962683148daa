//! A small client of the admin API for the CLI (`status`, `rollback`,
//! `deploy`'s wait): HTTP/1.1 over plain TCP, one request per connection.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use clap::Args;

/// Where the admin API is and how to authenticate.
#[derive(Debug, Clone)]
pub struct AdminClient {
    /// `host:port`.
    authority: String,
    token: Option<String>,
}

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum Unreachable {
    /// Nothing listens there.
    #[error("no baton admin API at {0}: {1}")]
    Connect(String, std::io::Error),
}

impl AdminClient {
    /// A client of the admin API at `url` (`http://host:port`).
    pub fn new(url: &str, token: Option<String>) -> Result<AdminClient> {
        let authority = url
            .strip_prefix("http://")
            .with_context(|| format!("the admin URL must start with http:// (got {url})"))?
            .trim_end_matches('/')
            .to_owned();
        Ok(AdminClient { authority, token })
    }

    /// Sends a request; `Ok((status, body))` for any answer.
    pub async fn request(&self, method: &str, path: &str) -> Result<(u16, serde_json::Value)> {
        self.send(method, path, None).await
    }

    /// Sends a request with a JSON body; `Ok((status, body))` for any answer.
    pub async fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<(u16, serde_json::Value)> {
        let body = match body {
            Some(body) => Some(("application/json", Bytes::from(serde_json::to_vec(body)?))),
            None => None,
        };
        self.exchange(method, path, body).await
    }

    /// Sends a request with raw bytes (a `.wasm` file); `Ok((status,
    /// body))` for any answer.
    pub async fn send_bytes(&self, method: &str, path: &str, bytes: Vec<u8>) -> Result<(u16, serde_json::Value)> {
        self.exchange(method, path, Some(("application/wasm", Bytes::from(bytes))))
            .await
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        body: Option<(&'static str, Bytes)>,
    ) -> Result<(u16, serde_json::Value)> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&self.authority))
            .await
            .map_err(|_| Unreachable::Connect(self.authority.clone(), std::io::ErrorKind::TimedOut.into()))?
            .map_err(|e| Unreachable::Connect(self.authority.clone(), e))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let mut request = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, &self.authority)
            // The audit log says the command line asked.
            .header("x-baton-client", "cli");
        if let Some(token) = &self.token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let bytes = match body {
            Some((kind, bytes)) => {
                request = request.header(http::header::CONTENT_TYPE, kind);
                bytes
            }
            None => Bytes::new(),
        };
        let response = sender.send_request(request.body(Full::new(bytes))?).await?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await?.to_bytes();
        let json = serde_json::from_slice(&body)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&body).into_owned()));
        Ok((status, json))
    }

    /// `GET` of a view, failing on anything but 200.
    pub async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let (status, body) = self.request("GET", path).await?;
        if status != 200 {
            bail!("{path}: {status}: {}", error_text(&body));
        }
        serde_json::from_value(body).with_context(|| format!("{path}: not the answer this baton expects"))
    }
}

/// The `error` of a JSON error body, or the body.
pub fn error_text(body: &serde_json::Value) -> String {
    body["error"].as_str().map_or_else(|| body.to_string(), str::to_owned)
}

/// How a command reaches the running host's admin API.
#[derive(Debug, Args)]
pub(super) struct AdminArgs {
    /// The host's admin API.
    #[arg(
        long,
        value_name = "URL",
        env = "BATON_ADMIN",
        default_value = "http://127.0.0.1:8081"
    )]
    pub(super) admin: String,
    /// Bearer token of the admin API.
    #[arg(long, env = "BATON_ADMIN_TOKEN", hide_env_values = true)]
    pub(super) token: Option<String>,
}

impl AdminArgs {
    pub(super) fn client(&self) -> Result<AdminClient> {
        AdminClient::new(&self.admin, self.token.clone())
    }
}
